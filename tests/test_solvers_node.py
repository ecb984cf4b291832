"""ODEBlock(solver="timeaware") and the NODE trainer's --solver option.

On CPU the solver's ``auto`` backend is its reference (torch ops in torchdiffeq's order), so a
block or a training run with ``solver="timeaware"`` reproduces the torchdiffeq one; the Triton
solver is forced with ``timeaware.use_backend("triton")`` (the ODE function keeps its own
reference backend, so only the solver runs under the interpreter).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import NODE_TINY as _NODE
from helpers import tiny
from torch import nn

import timeaware
from timeaware.models import ODEBlock, ODEFunc, ODESolverError
from timeaware.train import NodeConfig, SolverFailed, TrainingError, train_node
from timeaware.train.cli import main

CLI_TINY = ["--channels", "4", "--groups", "2", "--image-size", "8", "--batch-size", "256",
            "--epochs", "1", "--backend", "reference", "--threads", "1",
            "--no-progress"]  # fmt: skip
NODE_TINY = tiny(_NODE, epochs=1)


def _run_block(solver: str, adjoint: bool, backend: str | None = None, tol: float = 1e-5):
    torch.manual_seed(0)
    f = ODEFunc(4, groups=2, backend="reference").double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    block = ODEBlock(f, rtol=tol, atol=tol, adjoint=adjoint, solver=solver)
    if backend is None:
        y = block(x)
    else:
        with timeaware.use_backend(backend):
            y = block(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    grads = [x.grad] + [p.grad for p in f.parameters()]
    return y.detach(), grads, block.nfe_forward, block.nfe_backward, f.nfe


@pytest.mark.parametrize("adjoint", [True, False])
def test_odeblock_timeaware_equals_torchdiffeq(adjoint):
    y0, g0, nf0, nb0, _ = _run_block("torchdiffeq", adjoint)
    y1, g1, nf1, nb1, calls = _run_block("timeaware", adjoint)
    assert (nf1, nb1) == (nf0, nb0) and nf1 > 2
    assert nb1 == (nb0 if adjoint else 0)
    assert calls == nf1 + nb1  # no masked attempt on CPU's reference path here
    assert torch.equal(y1, y0)
    for a, b in zip(g1, g0):
        if adjoint:
            assert torch.equal(a, b)
        else:  # backprop through the steps: the same graph, summed in another order
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_odeblock_triton_solver_matches_and_reports_exact_nfe():
    # the paper's tolerance (1e-3): few steps under the interpreter
    y0, g0, nf0, nb0, _ = _run_block("torchdiffeq", True, tol=1e-3)
    y1, g1, nf1, nb1, _ = _run_block("timeaware", True, backend="triton", tol=1e-3)
    assert (nf1, nb1) == (nf0, nb0)
    torch.testing.assert_close(y1, y0, rtol=1e-12, atol=1e-14)
    for a, b in zip(g1, g0):
        assert (a - b).abs().max() <= 1e-9 * b.abs().max()


def test_odeblock_nfe_is_exact_when_attempts_are_masked():
    # check_every=5: attempts after the end still call the function (ODEFunc.nfe counts them)
    # but the block's NFE is the device count, torchdiffeq's number
    torch.manual_seed(0)
    f = ODEFunc(4, groups=2, backend="reference")
    x = torch.randn(2, 4, 3, 3)
    ref = ODEBlock(f, rtol=1e-3, atol=1e-3, adjoint=False)
    with torch.no_grad():
        ref(x)
    f.reset_nfe()
    block = ODEBlock(f, rtol=1e-3, atol=1e-3, adjoint=False, solver="timeaware",
                     options={"check_every": 5})  # fmt: skip
    with torch.no_grad(), timeaware.use_backend("triton"):
        block(x)
    assert block.nfe_forward == ref.nfe_forward
    assert f.nfe > block.nfe_forward and (f.nfe - block.nfe_forward) % 6 == 0


class Blowup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, t, x):
        return self.a * x / (1.0001 - t) ** 3


def test_odeblock_maps_solver_failures_with_exact_nfe():
    block = ODEBlock(Blowup(), options=dict(max_num_steps=2), solver="timeaware")
    with pytest.raises(ODESolverError, match="max_num_steps exceeded") as info:
        block(torch.ones(2))
    assert info.value.nfe == 2 + 6 * 2 == block.nfe_forward
    ref = ODEBlock(Blowup(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ODESolverError) as td:
        ref(torch.ones(2))
    block = ODEBlock(Blowup(), rtol=1e-6, atol=1e-6, solver="timeaware")
    with pytest.raises(ODESolverError, match="underflow in dt|non-finite") as info:
        block(torch.ones(2))
    assert info.value.nfe == td.value.nfe


def test_odeblock_solver_argument_is_checked():
    with pytest.raises(ValueError, match="solver: got 'scipy'"):
        ODEBlock(ODEFunc(4), solver="scipy")
    with pytest.raises(ValueError, match="method: got 'rk4' with solver='timeaware'"):
        ODEBlock(ODEFunc(4), method="rk4", solver="timeaware")
    assert "solver='timeaware'" in repr(ODEBlock(ODEFunc(4), solver="timeaware"))


def test_node_trainer_solver_option(tmp_path):
    runs = {}
    for solver in ("torchdiffeq", "timeaware"):
        out = tmp_path / solver
        args = [*CLI_TINY, "--solver", solver, "--out", str(out)]
        assert main(["train", "node", *args]) == 0
        assert json.loads((out / "config.json").read_text())["solver"] == solver
        runs[solver] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    a, b = runs["torchdiffeq"], runs["timeaware"]
    for k in ("train_loss", "test_loss", "test_acc", "nfe_f", "nfe_b", "test_nfe_f"):
        assert a[k] == b[k], k


def test_node_trainer_solver_failure_and_bad_method(tmp_path):
    cfg = NodeConfig(**NODE_TINY, out=str(tmp_path / "a"), max_num_steps=1, solver="timeaware")
    with pytest.raises(SolverFailed, match="max_num_steps"):
        train_node(cfg)
    cfg = NodeConfig(**NODE_TINY, out=str(tmp_path / "b"), method="rk4", solver="timeaware")
    with pytest.raises(TrainingError, match="--method: got 'rk4', expected dopri5"):
        train_node(cfg)
    cfg = NodeConfig(**NODE_TINY, out=str(tmp_path / "c"), solver="nope")
    with pytest.raises(TrainingError, match="--solver: got 'nope'"):
        train_node(cfg)
