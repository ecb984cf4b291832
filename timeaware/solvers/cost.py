"""What the solver itself costs per step: launches and host syncs beyond the function's own work.

Used by the solver budget test and meant for the bench's ``node-step`` / ``ode-solve`` rows:
:func:`solve_cost` runs one solve (and optionally its adjoint backward) of ``timeaware`` or
``torchdiffeq`` under :func:`timeaware.profiling.count_launches` and subtracts the function's
own launches, measured on one call. Under ``TRITON_INTERPRET=1`` the interpreter copies every
kernel argument through torch ops; those copies exist only on the CPU and are excluded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import Tensor

from ..profiling import _patch_triton_run, count_launches
from .adjoint import odeint_adjoint
from .odeint import odeint
from .stats import SolverStats

__all__ = ["solve_cost"]

SOLVERS = ("timeaware", "torchdiffeq")


@contextlib.contextmanager
def _interpreter_ops() -> Iterator[list]:
    """Collect the aten ops dispatched inside each Triton launch (the interpreter's copies)."""
    inner: list = []

    def wrapper(orig):
        def run(self, *args, grid, warmup, **kwargs):
            with count_launches() as c:
                out = orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            inner.append(c.aten)
            return out

        return run

    with _patch_triton_run(wrapper):
        yield inner


def _counted(fn) -> tuple[object, int, int, int, float]:
    """(result, triton launches, aten ops outside Triton launches, syncs, seconds)."""
    with count_launches() as c, _interpreter_ops() as inner:
        t0 = time.perf_counter()
        out = fn()
        sec = time.perf_counter() - t0
    return out, c.triton, c.aten - sum(inner), c.syncs, sec


class _Calls(torch.nn.Module):
    def __init__(self, func) -> None:
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.func(t, y)


def solve_cost(
    solver: str,
    func,
    y0: Tensor,
    t: Tensor,
    *,
    adjoint: bool = False,
    **kwargs,
) -> dict:
    """One solve of ``dy/dt = func(t, y)`` counted: NFE, steps, launches and syncs per step.

    Args:
        solver: ``"timeaware"`` or ``"torchdiffeq"``.
        func: the ODE function (an ``nn.Module`` for ``adjoint=True``); every call after the
            first must cost the same launches (true for the models here: a first call may fill
            a cache, and one uncounted call is made before the function's cost is measured).
        y0: (any shape) initial state; t: (T,) times.
        adjoint: also run ``sum(out).backward()`` through ``odeint_adjoint`` and count the
            backward solves; the augmented function's own work per call (``func`` forward, its
            VJP with cotangent ``-adj``, one ``cat``) is measured once and subtracted. The
            parameters' ``.grad`` are set aside for the measurement and put back after it.
        **kwargs: passed to ``odeint``/``odeint_adjoint`` (rtol, atol, options, backend, ...).

    Returns:
        A dict with, for ``"forward"`` (and ``"backward"``): ``nfe``, ``attempted`` (steps),
        ``launches`` (the solver's own over the whole solve), ``launches_per_step``,
        ``syncs``, ``syncs_per_step``, ``func_launches_per_call``, ``seconds``; and for the
        timeaware solver ``calls`` and ``masked`` (attempts run after the end).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver: got {solver!r}, expected one of {SOLVERS}")
    if not callable(func):
        raise TypeError(f"func: got {type(func).__name__}, expected a callable func(t, y)")
    if not isinstance(y0, Tensor) or not isinstance(t, Tensor):
        raise TypeError(f"y0, t: got {type(y0).__name__}, {type(t).__name__}, expected tensors")
    if adjoint and not isinstance(func, torch.nn.Module):
        raise TypeError(f"func: got {type(func).__name__}, expected an nn.Module for adjoint=True")
    calls = _Calls(func)
    # the function's own cost per call, with the same interpreter exclusion, after one call
    # outside the count (a first call may fill caches, e.g. ConcatConv2d's time map)
    with torch.no_grad():
        func(t[0].to(y0.dtype), y0)
        _, ft, fa, fs, _ = _counted(lambda: func(t[0].to(y0.dtype), y0))
    per_call = ft + fa
    stats = SolverStats()
    y = y0.detach().requires_grad_(adjoint)
    if solver == "timeaware":
        fn = odeint_adjoint if adjoint else odeint
        kw = dict(kwargs, stats=stats)
        if adjoint:
            kw.setdefault("adjoint_params", tuple(func.parameters()))
    else:
        import torchdiffeq

        fn = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        kw = {k: v for k, v in kwargs.items() if k != "backend"}
        if adjoint:
            kw.setdefault("adjoint_params", tuple(func.parameters()))
    grad = torch.enable_grad() if adjoint else torch.no_grad()
    with grad:
        out, tri, aten, syncs, sec = _counted(lambda: fn(calls, y, t, **kw))
    n_fwd = calls.n
    res = {"forward": _row(solver, stats.forward, n_fwd, 1, tri, aten, syncs, sec, per_call)}
    if adjoint:
        # the augmented function's own work per call: func forward, the VJP of (t, y, params)
        # with cotangent -adj, and the concatenation of the results into one state derivative
        params = tuple(p for p in func.parameters() if p.requires_grad)
        adj = torch.ones_like(y0)

        def aug_once():
            with torch.enable_grad():
                tt = t[0].to(y0.dtype).detach().requires_grad_(True)
                yy = y0.detach().requires_grad_(True)
                f = func(tt, yy)
                g = torch.autograd.grad(f, (tt, yy, *params), -adj, allow_unused=True)
            return torch.cat([f.detach().reshape(-1)] + [x.reshape(-1) for x in g])

        aug_once()  # warm, as above
        _, at, aa, _, _ = _counted(aug_once)
        calls.n = 0
        # .grad set aside: accumulating into an existing gradient would count as solver work
        all_params = list(func.parameters())
        saved = [q.grad for q in all_params]
        for q in all_params:
            q.grad = None
        try:
            _, tri, aten, syncs, sec = _counted(lambda: out.sum().backward())
        finally:
            for q, g in zip(all_params, saved):
                q.grad = g
        solves = t.numel() - 1
        res["backward"] = _row(solver, stats.backward, calls.n, solves, tri, aten, syncs, sec,
                               at + aa)  # fmt: skip
    return res


def _row(solver, counts, n_calls, n_solves, tri, aten, syncs, sec, per_call) -> dict:
    if solver == "timeaware":
        nfe, attempted = counts.nfe, counts.attempted
    else:
        nfe, attempted = n_calls, max(0, (n_calls - 2 * n_solves) // 6)
    own = tri + aten - n_calls * per_call
    row = {
        "nfe": nfe,
        "attempted": attempted,
        "launches": own,
        "launches_per_step": own / max(attempted, 1),
        "syncs": syncs,
        "syncs_per_step": syncs / max(attempted, 1),
        "func_launches_per_call": per_call,
        "seconds": sec,
    }
    if solver == "timeaware":
        row["calls"] = counts.calls
        row["masked"] = counts.masked
    return row
