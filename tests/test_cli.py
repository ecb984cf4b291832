"""The ``timeaware`` command line: end-to-end runs, bad input, resume, presets, torchrun, signals.

Tiny models on the digits data, reference backend, one CPU thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from timeaware.data import load_digits
from timeaware.train.cli import build_parser, main, resolve_config
from timeaware.train.ddpm import build_unet
from timeaware.train.node import build_node_model
from timeaware.train.presets import PRESETS

NODE_ARGS = [
    "--channels", "4", "--groups", "2", "--image-size", "8", "--batch-size", "256",
    "--backend", "reference", "--threads", "1", "--no-progress",
]  # fmt: skip
DDPM_ARGS = [
    "--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "4",
    "--groups", "4", "--image-size", "8", "--timesteps", "10", "--batch-size", "32",
    "--warmup", "2", "--log-every", "2", "--backend", "reference", "--threads", "1",
    "--no-progress",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _subparsers(parser: argparse.ArgumentParser):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.items()


def test_help_explains_every_option():
    top = build_parser()
    train = dict(_subparsers(top))["train"]
    trainers = dict(_subparsers(train))
    assert set(trainers) == {"node", "ddpm"}
    for name, p in trainers.items():
        for a in p._actions:
            if a.option_strings and a.dest != "help":
                assert a.help and a.help != argparse.SUPPRESS, f"{name} {a.option_strings}"
    out = subprocess.run(
        [sys.executable, "-m", "timeaware", "train", "node", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout
    assert "--groups" in out and "--resume" in out and "--compare-backends" in out


def test_node_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "node", *NODE_ARGS, "--epochs", "2", "--out", str(out)]) == 0
    for f in ("last.pt", "metrics.jsonl", "curves.png", "summary.json", "config.json"):
        assert (out / f).is_file(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["test_acc"] <= 100 and r["nfe_f"] > 0 and r["nfe_b"] > 0
        assert r["epoch_seconds"] > 0
    text = capsys.readouterr().out
    assert "| epoch |" in text and "NFE-F" in text and "summary:" in text
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["finished"]


def test_ddpm_end_to_end_with_samplers_and_quality(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train", "ddpm", *DDPM_ARGS, "--steps", "4", "--sample-every", "2", "--sample-grid", "4",
        "--eval-samples", "8", "--eval-batch-size", "8", "--ddim-steps", "3",
        "--classifier-epochs", "1", "--classifier-cache", str(tmp_path / "cache"),
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    for f in ("last.pt", "metrics.jsonl", "curves.png", "summary.json", "samples_step0000002.png"):
        assert (out / f).is_file(), f
    for s in ("ancestral", "ddim", "pf-ode"):
        assert (out / f"samples_{s}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    nfe = {r["sampler"]: r["nfe"] for r in summary["sampling"]}
    assert nfe["ancestral"] == 10 and nfe["ddim"] == 3 and nfe["pf-ode"] > 0
    for r in summary["sampling"]:
        assert r["classifier_fd"] >= 0 and r["classifier_is"] >= 1.0 - 1e-4
    assert "NOT the Inception network" in summary["quality_note"]
    text = capsys.readouterr().out
    assert "NOT the Inception network" in text and "real test split" in text
    assert len(list((tmp_path / "cache").glob("classifier-*.pt"))) == 1


def test_bad_input_gives_clear_errors(tmp_path, capsys, monkeypatch):
    rc = main(["train", "node", *NODE_ARGS, "--dataset", "cifar10", "--data-root",
               str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "cifar-10-batches-py" in err and "--data-root" in err

    with pytest.raises(SystemExit) as e:
        main(["train", "node", "--preset", "table9-nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown node preset 'table9-nope'" in err and "table1-bn" in err
    with pytest.raises(SystemExit):
        main(["train", "node", "--preset", "table3-set"])  # a ddpm preset
    assert "'ddpm' preset" in capsys.readouterr().err

    rc = main(["train", "node", "--channels", "64", "--groups", "5", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1 and "--groups: got 5, which does not divide --channels 64" in err
    rc = main(["train", "ddpm", "--groups", "48", "--out", str(tmp_path / "c")])
    assert rc == 1 and "does not divide every U-Net width" in capsys.readouterr().err

    rc = main(["train", "ddpm", *DDPM_ARGS, "--inception-weights", str(tmp_path / "no.pth"),
               "--out", str(tmp_path / "d")])  # fmt: skip
    assert rc == 1 and "--inception-weights: no file" in capsys.readouterr().err

    if not torch.cuda.is_available():
        monkeypatch.setattr("timeaware._backend.triton_interpreted", lambda: False)
        rc = main(
            ["train", "node", *NODE_ARGS, "--backend", "triton", "--out", str(tmp_path / "e")]
        )
        assert rc == 1 and "--backend triton cannot run here" in capsys.readouterr().err


def test_nan_via_cli_keeps_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "node", *NODE_ARGS, "--out", str(out)]
    assert main([*common, "--epochs", "1"]) == 0
    before = _sha(out / "last.pt")
    capsys.readouterr()
    rc = main(["train", "node", "--resume", str(out), "--epochs", "2", "--inject-nan-at-step", "7"])
    err = capsys.readouterr().err
    assert rc == 1 and "step 7" in err and "not finite" in err and "intact" in err
    assert _sha(out / "last.pt") == before


def test_resume_rules(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "node", *NODE_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    rc = main(["train", "node", *NODE_ARGS, "--epochs", "1", "--out", str(out)])
    assert rc == 1 and "already holds a run" in capsys.readouterr().err
    rc = main(["train", "node", "--resume", str(out), "--momentum", "0.5"])
    assert rc == 1 and "--momentum cannot change when resuming" in capsys.readouterr().err
    # a finished run can be extended
    assert main(["train", "node", "--resume", str(out), "--epochs", "2"]) == 0
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_presets_resolve_and_build(capsys):
    cfg, _ = resolve_config("node", {"preset": "table1-bn"})
    assert cfg.norm == "batch" and cfg.preset == "table1-bn"
    cfg, _ = resolve_config("node", {"preset": "fig7-c64-g1", "groups": 2})
    assert cfg.channels == 64 and cfg.groups == 2  # explicit option wins
    cfg, _ = resolve_config("ddpm", {"preset": "table3-set"})
    assert (cfg.inject, cfg.zero_bias, cfg.groups) == ("mlp", "operand", 1)
    data = load_digits(image_size=8)
    for p in PRESETS.values():
        cfg, _ = resolve_config(p.kind, {"preset": p.name})
        if p.kind == "node":
            build_node_model(cfg, data)
        else:  # narrow but with the preset's options
            cfg.ch, cfg.ch_mult, cfg.attn_resolutions = 32, (1, 2), (4,)
            build_unet(cfg, data)
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PRESETS)


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*torchrun, "-m", "timeaware", "train", "node", *NODE_ARGS, "--epochs", "1",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["max_param_diff_across_ranks"] == 0.0  # both ranks hold the same weights
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["nfe_f"] > 0 and row["nfe_b"] > 0
    assert torch.load(out / "last.pt", weights_only=True)["world_size"] == 2


def test_sigterm_writes_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "timeaware", "train", "node", *NODE_ARGS, "--epochs", "50",
           "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.time() < deadline, "run ended or hung"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "--resume" in err
    ck = torch.load(out / "last.pt", weights_only=True)
    assert 1 <= ck["progress"]["epoch"] < 50 and not ck["progress"]["finished"]
    done = ck["progress"]["epoch"] + (1 if ck["progress"]["batch"] else 0)
    assert main(["train", "node", "--resume", str(out), "--epochs", str(done)]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["finished"]


def test_compare_backends_through_the_triton_interpreter(tmp_path):
    """The two-backend path on CPU: same weights, batches and RNG -> the same losses and NFE."""
    if torch.cuda.is_available():
        pytest.skip("covered by the GPU run")
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "timeaware", "train", "node", "--channels", "4", "--groups", "2",
           "--image-size", "8", "--batch-size", "8", "--threads", "1", "--no-progress",
           "--compare-backends", "--compare-steps", "1", "--compare-warmup", "0",
           "--out", str(out)]  # fmt: skip
    env = {**ENV, "TRITON_INTERPRET": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((out / "compare.json").read_text())
    ref, fused = rep["backends"]["reference"], rep["backends"]["triton"]
    assert "speedup" not in rep and "interpreter" in rep["note"]
    assert rep["max_abs_loss_diff"] < 1e-4
    assert ref["nfe_f"] == fused["nfe_f"]


def test_resume_at_an_epoch_boundary_marks_the_run_finished(tmp_path):
    """A stop between two epochs leaves (epoch=e, batch=0, finished=False); resuming with
    --epochs e has nothing left to run and must still mark the run finished."""
    out = tmp_path / "run"
    assert main(["train", "node", *NODE_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["progress"]["epoch"] == 1 and ck["progress"]["batch"] == 0
    ck["progress"]["finished"] = False  # the state a SIGTERM between epochs leaves
    torch.save(ck, out / "last.pt")
    assert main(["train", "node", "--resume", str(out), "--epochs", "1"]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["finished"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only machine")
def test_cuda_graphs_option_on_cpu_and_with_batch_norm(tmp_path, capsys):
    rc = main(["train", "node", *NODE_ARGS, "--cuda-graphs", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 1 and "--cuda-graphs needs a CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()  # stopped before the run folder was made
    rc = main(["train", "node", "--cuda-graphs", "--norm", "batch", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1 and "--cuda-graphs: not with --norm batch" in err


def test_cuda_graphs_reaches_the_model():
    cfg, _ = resolve_config("node", {"preset": None, "cuda_graphs": False})
    data = load_digits(image_size=16)
    assert build_node_model(cfg, data).odeblock.odefunc.cuda_graphs is False
    if torch.cuda.is_available():
        cfg, _ = resolve_config("node", {"preset": None, "cuda_graphs": True})
        assert build_node_model(cfg, data).odeblock.odefunc.cuda_graphs is True
