"""Trainers through the Python API: exact resume, divergence/solver failures, checkpoints.

Tiny models on the digits data, reference backend, one CPU thread: each run takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal

import pytest
import torch
from helpers import DDPM_TINY, NODE_TINY

from timeaware.train import (
    DDPMConfig,
    NodeConfig,
    SolverFailed,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    load_checkpoint,
    train_ddpm,
    train_node,
)
from timeaware.train.common import atomic_save
from timeaware.train.ddpm import ddpm_config_from_dict
from timeaware.train.node import node_config_from_dict


def _sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _interrupt_at(step_to_stop: int):
    def hook(step: int) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)  # the real handler path

    return hook


def _assert_same_state(a: dict, b: dict, keys=("model",)) -> None:
    for k in keys:
        assert a[k].keys() == b[k].keys()
        for name in a[k]:
            assert torch.equal(a[k][name], b[k][name]), f"{k}.{name} differs"


def test_node_interrupt_and_resume_matches_uninterrupted(tmp_path):
    full = train_node(NodeConfig(**NODE_TINY, augment="paper", out=str(tmp_path / "full")))
    cfg = NodeConfig(**NODE_TINY, augment="paper", out=str(tmp_path / "part"))
    with pytest.raises(TrainingInterrupted) as e:
        train_node(cfg, on_step=_interrupt_at(3))  # mid-epoch 1
    assert e.value.step == 3 and "--resume" in str(e.value)
    ck = load_checkpoint(tmp_path / "part", "node")
    assert ck["progress"]["step"] == 3 and ck["progress"]["batch"] == 3
    resumed = train_node(node_config_from_dict(ck["config"]), resume=ck)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    _assert_same_state(a, b, ("model",))
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert torch.equal(
            a["optimizer"]["state"][k]["momentum_buffer"],
            b["optimizer"]["state"][k]["momentum_buffer"],
        )
    assert a["scheduler"] == b["scheduler"]
    keys = ("train_loss", "train_acc", "test_acc", "nfe_f", "nfe_b", "step", "lr")
    for ra, rb in zip(a["history"], b["history"]):
        assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}
    assert resumed["final_test_acc"] == full["final_test_acc"]
    assert full["mean_nfe_f"] > 0 and full["mean_nfe_b"] > 0  # dopri5 + adjoint counted
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_ddpm_interrupt_and_resume_matches_uninterrupted(tmp_path):
    train_ddpm(DDPMConfig(**DDPM_TINY, augment="flip", out=str(tmp_path / "full")))
    cfg = DDPMConfig(**DDPM_TINY, augment="flip", out=str(tmp_path / "part"))
    with pytest.raises(TrainingInterrupted):
        train_ddpm(cfg, on_step=_interrupt_at(4))  # between checkpoints (every 3)
    ck = load_checkpoint(tmp_path / "part", "ddpm")
    assert ck["progress"]["step"] == 4
    train_ddpm(ddpm_config_from_dict(ck["config"]), resume=ck)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    _assert_same_state(a, b, ("model", "ema"))
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


def test_node_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    seen = {}

    def remember(step):
        if step == 4:
            seen["sha"] = _sha(tmp_path / "last.pt")

    cfg = NodeConfig(
        **NODE_TINY,
        out=str(tmp_path),
        ckpt_every_steps=2,
        ckpt_every_epochs=9,
        inject_nan_at_step=6,
    )
    with pytest.raises(TrainingDiverged) as e:
        train_node(cfg, on_step=remember)
    msg = str(e.value)
    assert "step 6" in msg and "NFE-F" in msg and "not finite" in msg
    assert "step 4" in msg and "intact" in msg
    assert _sha(tmp_path / "last.pt") == seen["sha"]
    ck = load_checkpoint(tmp_path, "node")
    assert ck["progress"]["step"] == 4 and all(
        bool(torch.isfinite(v).all()) for v in ck["model"].values() if v.is_floating_point()
    )


def test_ddpm_nan_loss_stops(tmp_path):
    cfg = DDPMConfig(**{**DDPM_TINY, "ckpt_every": 2}, out=str(tmp_path), inject_nan_at_step=3)
    with pytest.raises(TrainingDiverged, match="step 3"):
        train_ddpm(cfg)
    assert load_checkpoint(tmp_path, "ddpm")["progress"]["step"] == 2


def test_node_solver_failure_names_step_and_nfe(tmp_path):
    cfg = NodeConfig(**NODE_TINY, out=str(tmp_path), max_num_steps=1)
    with pytest.raises(SolverFailed) as e:
        train_node(cfg)
    msg = str(e.value)
    assert "step 1" in msg and "function evaluations" in msg and "max_num_steps" in msg
    assert not (tmp_path / "last.pt").exists()  # nothing half-written


def test_groups_must_divide_channels(tmp_path):
    with pytest.raises(TrainingError, match="does not divide"):
        train_node(NodeConfig(**{**NODE_TINY, "groups": 3}, out=str(tmp_path)))
    with pytest.raises(TrainingError, match="does not divide"):
        train_ddpm(DDPMConfig(**{**DDPM_TINY, "groups": 3}, out=str(tmp_path)))


def test_compare_backends_on_cpu_reports_reference_only(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine both backends run")
    # conftest.py turns the Triton interpreter on for the kernel tests; a plain CPU machine has not
    monkeypatch.setattr("timeaware._backend.triton_interpreted", lambda: False)
    cfg = NodeConfig(
        **NODE_TINY, out=str(tmp_path), compare_backends=True, compare_steps=2, compare_warmup=1
    )
    rep = train_node(cfg)
    assert list(rep["backends"]) == ["reference"]
    assert "needs a CUDA GPU" in rep["note"] and "speedup" not in rep
    r = rep["backends"]["reference"]
    assert r["seconds_per_step"] > 0 and r["nfe_f"] > 0 and len(r["losses"]) == 3
    assert json.loads((tmp_path / "compare.json").read_text())["note"] == rep["note"]


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": 1, "x": torch.ones(3)}, path)
    before = _sha(path)

    def boom(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_save({"format": 1, "x": torch.zeros(3)}, path)
    assert _sha(path) == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_resume_rejects_a_foreign_or_missing_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"format": 1, "kind": "ddpm"}, tmp_path / "last.pt")
    with pytest.raises(TrainingError, match="'ddpm' checkpoint"):
        load_checkpoint(tmp_path, "node")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="not a timeaware checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
