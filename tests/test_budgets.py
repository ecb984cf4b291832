"""Launch, host-sync and host-time budgets (DESIGN section 8), counted on a CPU.

At NODE sizes a kernel runs for microseconds, so what a call costs on the host decides the
speed: launches per call, host syncs, Python time. These tests count them with
:mod:`timeaware.profiling` (aten ops that compute plus Triton launches; Triton launches stubbed,
so the kernels do not run and the count is exact and fast).

Budgets here: the fused op (forward = 1 launch in the fused regime, forward + backward <= 3,
0 host syncs; host time per call within 1.5x of the eager ops it replaces). Other budgets (the
ODE function, the solver) belong here too: use :func:`count` and :func:`assert_budget`, and
:func:`host_time_ratio` for a host-time goal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import timeaware
from timeaware.profiling import LaunchCount, count_launches, stub_triton_launches


# ---------------------------------------------------------------------------------- helpers
def count(fn: Callable[[], object]) -> LaunchCount:
    """Launches and host syncs of one call of ``fn`` (Triton launches stubbed: not run)."""
    with count_launches(stub_triton=True) as c:
        fn()
    return c


def assert_budget(c: LaunchCount, what: str, *, launches: int, syncs: int = 0, exact=False):
    """``c`` within ``launches`` (exactly, if ``exact``) and ``syncs``; the failure message
    lists every op and kernel counted."""
    ok = c.launches == launches if exact else c.launches <= launches
    assert ok and c.syncs <= syncs, (
        f"{what}: budget {'==' if exact else '<='} {launches} launches, <= {syncs} syncs; "
        f"got {c.summary()}"
    )


def host_time_ratio(
    fused: Callable[[], object], eager: Callable[[], object], rounds: int = 15, calls: int = 50
) -> tuple[float, float]:
    """(fused, eager) host seconds per call, Triton launches stubbed.

    The two are timed in alternation, ``calls`` calls at a time, and the best of ``rounds`` is
    kept for each: on a shared machine the minimum is the least disturbed measurement, and
    alternating puts both under the same load.
    """
    best = {"fused": float("inf"), "eager": float("inf")}
    with stub_triton_launches():
        for fn in (fused, eager):
            for _ in range(10):
                fn()
        for _ in range(rounds):
            for name, fn in (("fused", fused), ("eager", eager)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best["fused"], best["eager"]


def _leaf(*shape, loc=0.0):
    return (torch.randn(*shape) + loc).requires_grad_()


def _op_args(n, c, h, w):
    """Every addend and the affine, all requiring grad (time per sample)."""
    return {
        "weight": _leaf(c, loc=1.0),
        "bias": _leaf(c),
        "conv_bias": _leaf(c),
        "emb": _leaf(n, c),
        "time": _leaf(n),
        "time_map": _leaf(c, h, w),
        "pos": _leaf(n, h, w),
    }


# ------------------------------------------------------------------- op: launch counts
# (N, C, H, W, G), all in the fused regime: NODE-like scaled down, G = C, G = 1 small, and
# C/G = 3 (the unpacked kernels)
OP_SHAPES = [(4, 64, 8, 8, 32), (4, 64, 8, 8, 64), (2, 8, 4, 4, 1), (2, 12, 4, 4, 4)]
IDS = [f"N{n}-C{c}-{h}x{w}-G{g}" for n, c, h, w, g in OP_SHAPES]


@pytest.mark.parametrize("shape", OP_SHAPES, ids=IDS)
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_op_forward_is_one_launch(shape, act):
    n, c, h, w, g = shape
    x = _leaf(n, c, h, w)
    a = _op_args(n, c, h, w)

    def fwd():
        return timeaware.group_norm_act(x, g, act=act, backend="triton", **a)

    fwd()  # plans and validation cached, as in a training loop
    assert_budget(count(fwd), "op forward (grad mode)", launches=1, exact=True)
    with torch.no_grad():
        assert_budget(count(fwd), "op forward (no_grad)", launches=1, exact=True)


@pytest.mark.parametrize("shape", OP_SHAPES, ids=IDS)
@pytest.mark.parametrize("time_kind", ["tensor", "0-d", "float"])
def test_op_forward_backward_at_most_three_launches(shape, time_kind):
    n, c, h, w, g = shape
    x = _leaf(n, c, h, w)
    a = _op_args(n, c, h, w)
    a["time"] = {"tensor": a["time"], "0-d": torch.tensor(0.3, requires_grad=True), "float": 0.5}[
        time_kind
    ]
    leaves = [x, *[v for v in a.values() if isinstance(v, torch.Tensor)]]
    dy = torch.randn(n, c, h, w)  # made outside the counted block: the loss is not counted

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        y = timeaware.group_norm_act(x, g, act="silu", backend="triton", **a)
        torch.autograd.backward(y, dy)

    fwd_bwd()
    c_ = count(fwd_bwd)
    assert_budget(c_, "op forward+backward", launches=3)
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)


def test_op_backward_of_x_only_is_one_launch():
    # dx alone needs no reduction over the batch: no finalize kernel
    x = _leaf(4, 64, 8, 8)
    dy = torch.randn(4, 64, 8, 8)

    def fwd_bwd():
        x.grad = None
        y = timeaware.group_norm_act(x, 32, act="relu", backend="triton")
        torch.autograd.backward(y, dy)

    fwd_bwd()
    assert_budget(count(fwd_bwd), "op forward+backward, dx only", launches=2, exact=True)


def test_op_split_regime_launches():
    # G = 1 on a group larger than the fused regime takes (N1 C64 8x16: 8192 values): forward
    # = stats + apply (each apply program combines its group's partials: no finalize launch),
    # backward = reduce + dx + finalize
    x = _leaf(1, 64, 8, 16)
    a = _op_args(1, 64, 8, 16)
    leaves = [x, *a.values()]
    dy = torch.randn(1, 64, 8, 16)

    def fwd():
        return timeaware.group_norm_act(x, 1, act="silu", backend="triton", **a)

    def fwd_bwd():
        for t in leaves:
            t.grad = None
        torch.autograd.backward(fwd(), dy)

    fwd_bwd()
    assert_budget(count(fwd), "split forward", launches=2, exact=True)
    assert_budget(count(fwd_bwd), "split forward+backward", launches=5)


# ---------------------------------------------------------------------- op: host time
# The goal is fused <= 1.0x the eager ops it replaces; the test allows 1.5x so that a
# loaded CI machine does not fail it, and still fails on a regression of the host path (the op
# used to take 4-6x).
HOST_BUDGET = 1.5


@pytest.fixture(scope="module")
def host_case():
    n, c, h, w, g = 2, 8, 4, 4, 4  # tiny: host time only
    t = torch.tensor(0.5)
    x, wt, b = torch.randn(n, c, h, w), torch.randn(c), torch.randn(c)
    cb, tm = torch.randn(c), torch.randn(c, h, w)
    plain = (x, wt, b, cb, tm)
    grads = tuple(v.clone().requires_grad_() for v in plain)
    dy = torch.randn(n, c, h, w)

    def fused(x, wt, b, cb, tm):
        return timeaware.group_norm_act(x, g, wt, b, act="relu", conv_bias=cb, time=t,
                                        time_map=tm, backend="triton")  # fmt: skip

    def eager(x, wt, b, cb, tm):
        return F.relu(F.group_norm(x + cb.view(1, -1, 1, 1) + t * tm, g, wt, b))

    def modes(f):
        def fwd():
            with torch.no_grad():
                f(*plain)

        def fwd_grad():
            f(*grads)

        def fwd_bwd():
            for v in grads:
                v.grad = None
            torch.autograd.backward(f(*grads), dy)

        return {"fwd": fwd, "fwd_grad": fwd_grad, "fwd_bwd": fwd_bwd}

    return modes(fused), modes(eager)


@pytest.mark.parametrize("mode", ["fwd", "fwd_grad", "fwd_bwd"])
def test_op_host_time_within_budget_of_eager(host_case, mode):
    fused, eager = host_case
    assert_budget(count(fused[mode]), f"fused {mode}", launches=3)  # and 0 syncs
    t_fused, t_eager = host_time_ratio(fused[mode], eager[mode])
    ratio = t_fused / t_eager
    assert ratio <= HOST_BUDGET, (
        f"{mode}: fused {t_fused * 1e6:.1f} us vs eager {t_eager * 1e6:.1f} us per call "
        f"(ratio {ratio:.2f} > {HOST_BUDGET})"
    )
