"""Trainers when something goes wrong: non-finite gradients, non-finite weights at a checkpoint,
a learning rate changed on resume, a failed final evaluation, a corrupt classifier cache.

Tiny models on the digits data, reference backend, one CPU thread (seconds per test).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import DDPM_TINY as _DDPM
from helpers import NODE_TINY as _NODE
from helpers import tiny

from timeaware.data import load_digits
from timeaware.train import (
    DDPMConfig,
    NodeConfig,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    load_checkpoint,
    train_ddpm,
    train_node,
)
from timeaware.train import ddpm as ddpm_mod
from timeaware.train import node as node_mod
from timeaware.train.cli import main
from timeaware.train.common import DistInfo
from timeaware.train.ddpm import ddpm_config_from_dict
from timeaware.train.node import node_config_from_dict
from timeaware.train.quality import _cache_file, get_classifier

NODE_TINY = tiny(_NODE, epochs=1)
DDPM_TINY = tiny(_DDPM, ckpt_every=2)
NODE_ARGS = [
    "--channels", "4", "--groups", "2", "--image-size", "8", "--batch-size", "256",
    "--backend", "reference", "--threads", "1", "--no-progress",
]  # fmt: skip


def _capture_models(monkeypatch, module, builder: str, inf_at_backward: int = 0) -> list:
    """Wrap the trainer's model builder: remember every model it builds and, when
    ``inf_at_backward`` > 0, make one entry of the last parameter's gradient +inf in that
    backward pass (counted from the first backward of the run)."""
    real = getattr(module, builder)
    models: list = []

    def build(cfg, data):
        m = real(cfg, data)
        models.append(m)
        if inf_at_backward:
            calls = [0]

            def hook(g):
                calls[0] += 1
                if calls[0] == inf_at_backward:
                    g = g.clone()
                    g.view(-1)[0] = float("inf")
                return g

            list(m.parameters())[-1].register_hook(hook)
        return m

    monkeypatch.setattr(module, builder, build)
    return models


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _all_finite(sd: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in sd.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- item 10


def test_node_inf_gradient_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    # uninterrupted reference: the weights after step 2 and at the end of the epoch
    models = _capture_models(monkeypatch, node_mod, "build_node_model")
    at_two = {}

    def remember(step):
        if step == 2:
            at_two.update(_snapshot(models[-1]))

    train_node(NodeConfig(**NODE_TINY, out=str(tmp_path / "ref")), on_step=remember)
    ref_end = load_checkpoint(tmp_path / "ref", "node")["model"]

    # the same run with one +inf gradient entry in step 4; checkpoints every 2 steps
    _capture_models(monkeypatch, node_mod, "build_node_model", inf_at_backward=4)
    out = tmp_path / "bad"
    with pytest.raises(TrainingDiverged) as e:
        train_node(NodeConfig(**NODE_TINY, ckpt_every_steps=2, out=str(out)))
    msg = str(e.value)
    assert "gradient norm is inf" in msg and "step 4" in msg and "before the update" in msg
    assert "(step 2) is intact" in msg and "--lr" in msg
    ck = load_checkpoint(out, "node")
    assert ck["progress"]["step"] == 2
    assert _all_finite(ck["model"])
    _assert_equal_states(ck["model"], at_two)

    # resuming from it (no more inf) ends where the uninterrupted run ended
    monkeypatch.undo()
    train_node(node_config_from_dict(ck["config"]), resume=ck)
    _assert_equal_states(load_checkpoint(out, "node")["model"], ref_end)


def test_ddpm_inf_gradient_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    # uninterrupted references: 2 steps (the last checkpoint before the bad step) and 4 steps
    train_ddpm(DDPMConfig(**{**DDPM_TINY, "steps": 2}, out=str(tmp_path / "ref2")))
    train_ddpm(DDPMConfig(**{**DDPM_TINY, "steps": 4}, out=str(tmp_path / "ref4")))
    ref2 = load_checkpoint(tmp_path / "ref2", "ddpm")
    ref4 = load_checkpoint(tmp_path / "ref4", "ddpm")

    # step 4 gets one +inf gradient entry; a checkpoint is due right after step 4
    _capture_models(monkeypatch, ddpm_mod, "build_unet", inf_at_backward=4)
    out = tmp_path / "bad"
    with pytest.raises(TrainingDiverged) as e:
        train_ddpm(DDPMConfig(**DDPM_TINY, out=str(out)))
    msg = str(e.value)
    assert "gradient norm is inf" in msg and "step 4" in msg and "(step 2) is intact" in msg
    ck = load_checkpoint(out, "ddpm")
    assert ck["progress"]["step"] == 2
    for k in ("model", "ema"):
        assert _all_finite(ck[k])
        _assert_equal_states(ck[k], ref2[k])

    monkeypatch.undo()
    cfg = ddpm_config_from_dict({**ck["config"], "steps": 4})
    train_ddpm(cfg, resume=ck)
    done = load_checkpoint(out, "ddpm")
    for k in ("model", "ema"):
        _assert_equal_states(done[k], ref4[k])


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path, monkeypatch):
    """Weights that went non-finite by any route (here: set by hand) are never saved, even
    on the SIGINT path, which saves before stopping."""
    models = _capture_models(monkeypatch, ddpm_mod, "build_unet")

    def poison_then_stop(step):
        if step == 3:
            with torch.no_grad():
                next(models[-1].parameters()).view(-1)[0] = float("nan")
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingDiverged) as e:
        train_ddpm(DDPMConfig(**DDPM_TINY, out=str(tmp_path)), on_step=poison_then_stop)
    assert "not finite after step 3" in str(e.value) and "no checkpoint written" in str(e.value)
    ck = load_checkpoint(tmp_path, "ddpm")
    assert ck["progress"]["step"] == 2 and _all_finite(ck["model"]) and _all_finite(ck["ema"])


# ----------------------------------------------------------------------------- item 12


def test_lr_can_change_on_resume_as_the_divergence_advice_says(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "node", *NODE_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["train", "node", "--resume", str(out), "--epochs", "2", "--inject-nan-at-step", "7"])
    err = capsys.readouterr().err
    assert rc == 1 and "with a lower --lr" in err
    # follow the advice
    rc = main(["train", "node", "--resume", str(out), "--epochs", "2", "--lr", "0.03"])
    assert rc == 0, capsys.readouterr().err
    ck = load_checkpoint(out, "node")
    assert ck["config"]["lr"] == 0.03
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == [0.03]
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.03
    assert config["resumed"][-1]["step"] == 5
    assert config["resumed"][-1]["changed"]["lr"] == [0.1, 0.03]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [0.1, 0.03]
    assert rows[1]["lr_set_at_step"] == 5 and rows[1]["lr_before"] == 0.1


def test_ddpm_lr_on_resume_sets_the_base_of_the_warmup(tmp_path):
    cfg = dict(DDPM_TINY, warmup=8, steps=4, out=str(tmp_path))
    train_ddpm(DDPMConfig(**cfg))
    ck = load_checkpoint(tmp_path, "ddpm")
    train_ddpm(DDPMConfig(**{**cfg, "steps": 6, "lr": 1e-4}), resume=ck)
    done = load_checkpoint(tmp_path, "ddpm")
    # after s scheduler steps the warm-up gives lr = base * min(s + 1, 8) / 8
    assert done["scheduler"]["base_lrs"] == [1e-4]
    assert done["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 7 / 8, rel=1e-12)
    rows = {r["step"]: r for r in done["history"]}
    assert rows[4]["lr"] == pytest.approx(2e-4 * 5 / 8, rel=1e-12)  # before the resume
    assert rows[6]["lr"] == pytest.approx(1e-4 * 7 / 8, rel=1e-12)
    assert rows[6]["lr_set_at_step"] == 4
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 1e-4


# ----------------------------------------------------------------------------- item 13


def test_a_failed_final_evaluation_can_be_run_again_by_resuming(tmp_path, monkeypatch):
    cfg = DDPMConfig(
        **{**DDPM_TINY, "steps": 4, "eval_samples": 4},
        eval_batch_size=4,
        eval_samplers=("ddim",),
        ddim_steps=2,
        classifier_epochs=1,
        classifier_cache=str(tmp_path / "cache"),
        out=str(tmp_path / "run"),
    )

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(ddpm_mod, "get_classifier", out_of_memory)
    with pytest.raises(TrainingError) as e:
        train_ddpm(cfg)
    msg = str(e.value)
    assert "final evaluation failed" in msg and "out of memory" in msg
    assert f"--resume {tmp_path / 'run'}" in msg
    ck = load_checkpoint(tmp_path / "run", "ddpm")
    assert ck["progress"]["step"] == 4 and not ck["progress"]["finished"]
    # failing again on resume: the trained checkpoint is not rewritten (it can be 557 MB)
    st = os.stat(tmp_path / "run" / "last.pt")
    with pytest.raises(TrainingError, match="final evaluation failed"):
        train_ddpm(ddpm_config_from_dict(ck["config"]), resume=ck)
    again = os.stat(tmp_path / "run" / "last.pt")  # atomic_save would make a new inode
    assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    ck = load_checkpoint(tmp_path / "run", "ddpm")

    monkeypatch.undo()
    summary = train_ddpm(ddpm_config_from_dict(ck["config"]), resume=ck)
    assert [r["sampler"] for r in summary["sampling"]] == ["ddim", "real test split"]
    done = load_checkpoint(tmp_path / "run", "ddpm")
    assert done["progress"]["finished"] and done["eval"] == summary["sampling"]
    assert [r["step"] for r in done["history"]] == [2, 4]  # no row repeated by the resume


def test_a_corrupt_classifier_cache_is_reported_and_rebuilt(tmp_path):
    data = load_digits(image_size=8)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    said: list[str] = []
    clf, meta = get_classifier(data, info, str(tmp_path), epochs=1, say=said.append)
    path = _cache_file(data, str(tmp_path), 1, 0)
    assert meta["cache_file"] == path
    with open(path, "rb") as fh:
        blob = fh.read()
    with open(path, "wb") as fh:
        fh.write(blob[: len(blob) // 2])  # truncated, as by a full disk
    said.clear()
    clf2, meta2 = get_classifier(data, info, str(tmp_path), epochs=1, say=said.append)
    assert any("is unreadable" in s and "rebuilding" in s for s in said), said
    assert torch.load(path, weights_only=True)["meta"]["test_acc"] == meta2["test_acc"]
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(clf2(x), clf(x))  # the same seed rebuilds the same network


# ----------------------------------------------------------------------------- item 17


def test_summary_lists_the_sample_grids_of_a_resumed_run(tmp_path):
    cfg = dict(DDPM_TINY, steps=6, sample_every=2, ckpt_every=3, out=str(tmp_path))

    def stop_at_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train_ddpm(DDPMConfig(**cfg), on_step=stop_at_3)
    assert (tmp_path / "samples_step0000002.png").is_file()
    ck = load_checkpoint(tmp_path, "ddpm")
    train_ddpm(ddpm_config_from_dict(ck["config"]), resume=ck)
    grids = json.loads((tmp_path / "summary.json").read_text())["sample_grids"]
    assert grids["during_training"] == ["samples_step0000002.png", "samples_step0000004.png"]
    assert grids["final"] == "samples_final.png"
    for name in (*grids["during_training"], grids["final"]):
        assert (tmp_path / name).is_file()
