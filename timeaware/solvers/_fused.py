"""The fused stepper: dopri5 with the Triton kernels of ``kernels/dopri5.py``.

Per attempted step: 8 launches (begin, 5 stage inputs, error, update) beside the 6 function
evaluations, and no host sync. All buffers are allocated once per solve, so the sequence of
launches of an attempt touches the same addresses every time (what a CUDA graph needs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..kernels import dopri5 as K
from . import tableau as tab
from ._spec import Dopri5Options

_TABLEAU = K.Dopri5Tableau(tab.ORDER, tab.ALPHA, tab.BETA, tab.C_ERROR, tab.C_MID)
_USE_ROWS, _USE_ERROR, _USE_MID = _TABLEAU.use_rows, _TABLEAU.use_error, _TABLEAU.use_mid
_C_TS, _C_PT = int(K.C_TS), int(K.C_PT)
_ST_POLL, _ST_ACC, _ST_DTFAIL = int(K.ST_POLL), int(K.ST_ACC), int(K.ST_DTFAIL)
_ST_NSTEPS, _ST_SIGN, _ST_T0 = int(K.ST_NSTEPS), int(K.ST_SIGN), int(K.ST_T0)


class NeedsAutograd(RuntimeError):
    """The function's output requires grad while grad mode is on: the kernels cannot carry it.
    ``f0`` is the derivative at (t[0], y0) when that was the evaluation (the reference stepper
    reuses it), else None (found later: the solve restarts)."""

    def __init__(self, f0: Tensor | None) -> None:
        super().__init__("the ODE function's output requires grad")
        self.f0 = f0


class _Aliased(Exception):
    pass


class FusedStepper:
    """dopri5 on a flat contiguous float32/float64 state with the Triton kernels.

    Args:
        fn: ``fn(t, y)`` -> raw derivative (n,) contiguous, y's dtype (t: 0-dim, y's dtype).
        y0: (n,) contiguous initial state.
        t: (T,) requested times, increasing or decreasing, on y0's device.
        rtol, atol: tolerances.
        opts: parsed options.
        sizes, normed: segments of the state and whether each enters the error norm
            (``((n,), (True,))`` for a plain solve).
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        y0: Tensor,
        t: Tensor,
        rtol: float,
        atol: float,
        opts: Dopri5Options,
        sizes: tuple[int, ...],
        normed: tuple[bool, ...],
    ) -> None:
        dev, dt = y0.device, y0.dtype
        n, T = y0.numel(), t.numel()
        self.fn, self.y0, self.t, self.opts, self.T, self.n = fn, y0, t, opts, T, n
        self.plan = K.make_plan(sizes, normed, dev)
        self.params = K.make_params(
            _TABLEAU, rtol, atol, opts.safety, opts.ifactor, opts.dfactor, opts.min_step,
            opts.max_step, opts.max_num_steps, opts.first_step, dev,
        )  # fmt: skip
        self.sc = K.new_scratch(n, T, self.plan.P, dt, dev)
        self.times = t.detach().to(dtype=torch.float64).contiguous()
        self.Y = torch.empty(n, dtype=dt, device=dev)
        self.F = torch.empty(n, dtype=dt, device=dev)
        self.Yin = [torch.empty(n, dtype=dt, device=dev) for _ in range(6)]
        self.Out = torch.empty(T, n, dtype=dt, device=dev)
        self.ts = [self.sc["ScC"][_C_TS + i] for i in range(6)]  # 0-dim views: stage times
        own = (self.Y, self.F, self.Out)
        self._own = {x.untyped_storage().data_ptr() for x in own}
        self._yin = [x.untyped_storage().data_ptr() for x in self.Yin]
        self.nfe0 = 1 if opts.first_step is not None else 2
        self.copy_all = False
        self.exact_graph = False
        self.evals = 0

    def _eval(self, t: Tensor, yin: Tensor, stage: int, ks: list[Tensor]) -> Tensor:
        """fn(t, yin), checked for aliasing: a result that shares storage with an earlier k of
        this attempt (a function that reuses one output buffer) or with the solver's state
        means an earlier value was overwritten; then every result is copied from now on and
        the attempt is redone (nothing is updated before its last launch)."""
        self.evals += 1
        k = self.fn(t, yin)
        if k.requires_grad and torch.is_grad_enabled():
            raise NeedsAutograd(None)
        if self.copy_all:
            return k.clone()
        p = k.untyped_storage().data_ptr()
        alias = p in self._own or any(p == q for i, q in enumerate(self._yin) if i != stage)
        if alias or any(p == x.untyped_storage().data_ptr() for x in ks[1:]):
            raise _Aliased
        return k

    def init(self) -> None:
        """f0, the initial step and the initial state: 4 launches, 2 evaluations."""
        sc, plan, params = self.sc, self.plan, self.params
        self.evals += 1
        f0 = self.fn(self.t[0].to(self.y0.dtype), self.y0)
        if f0.requires_grad and torch.is_grad_enabled():
            raise NeedsAutograd(f0)
        K.dp5_init(self.y0, f0, self.Y, self.F, self.Out, self.times, sc, params, plan)
        first = self.opts.first_step is not None
        if not first:
            K.dp5_probe(self.Y, self.F, self.Yin[0], sc, params, plan)
            f1 = self.fn(sc["ScC"][_C_PT], self.Yin[0])  # F holds a copy of f0
            self.evals += 1
            if f1.requires_grad and torch.is_grad_enabled():
                raise NeedsAutograd(None)
            K.dp5_probe_diff(self.Y, self.F, f1, sc, params, plan)
        K.dp5_init_finish(sc, params, plan, self.T, first)

    def attempt(self) -> None:
        """One attempted step: 8 launches, 6 evaluations, no host sync."""
        try:
            self._attempt()
        except _Aliased:
            self.copy_all = True
            self._attempt()

    def _attempt(self) -> None:
        sc, plan, params, Y, F, Yin = self.sc, self.plan, self.params, self.Y, self.F, self.Yin
        K.dp5_begin(Y, F, Yin[0], sc, params, plan)
        ks = [F]
        for s in range(6):
            ks.append(self._eval(self.ts[s], Yin[s], s, ks))
            if s < 5:
                K.dp5_stage(s + 2, Y, ks, Yin[s + 1], sc, plan, _USE_ROWS[s + 1])
        K.dp5_error(Y, Yin[5], ks, sc, params, plan, _USE_ERROR)
        K.dp5_update(Y, F, Yin[5], ks[1:], self.Out, sc, params, plan, _USE_MID)

    def poll(self) -> float:
        """The one host sync of a check."""
        return float(self.sc["State"][_ST_POLL].item())

    def settle(self, accepted: bool) -> None:  # pragma: no cover - never in exact-graph mode
        pass

    def result(self) -> Tensor:
        """(T, n) solution."""
        return self.Out

    def accepted_tensor(self) -> Tensor:
        return self.sc["State"][_ST_ACC]

    def failure_info(self) -> dict:
        """Host copies of the values a failure message needs (syncs; failure path only)."""
        st = self.sc["State"].tolist()
        return {
            "dt": st[_ST_DTFAIL],
            "nsteps": int(st[_ST_NSTEPS]),
            "t": st[_ST_SIGN] * st[_ST_T0],
        }
