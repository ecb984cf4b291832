"""The reference stepper: dopri5 in plain PyTorch ops, torchdiffeq's arithmetic op for op.

The state machine is the kernels' (``kernels/dopri5.py``): every decision is a tensor, the
updates are masked with ``torch.where``, and the host reads one value per check. It runs on any
device and dtype, and autograd sees through it. When the graph matters (something requires
grad), the loop checks after every attempt and :meth:`RefStepper.settle` keeps a rejected
attempt out of the graph, so the graph is torchdiffeq's (a rejected step with an overflow
cannot leak 0 * inf into the gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import tableau as tab
from ._spec import Dopri5Options

_F64 = torch.float64


class _Stitch(torch.autograd.Function):
    """Value of ``out``, gradient of ``x`` (for the perturbed stage times)."""

    @staticmethod
    def forward(ctx, x, out):
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _prev_float(t: Tensor) -> Tensor:
    """torch.nextafter(t, t - 1), with the gradient of t."""
    with torch.no_grad():
        out = torch.nextafter(t, t - 1)
    return _Stitch.apply(t, out)


def _rms(x: Tensor) -> Tensor:
    return x.abs().pow(2).mean().sqrt()


class RefStepper:
    """dopri5 on a tensor state with torch ops.

    Args:
        fn: ``fn(t, y)`` -> raw derivative, y's shape and dtype (t: 0-dim, y's dtype, the time
            as the user's function sees it).
        y0: initial state (any shape).
        t: (T,) requested times, increasing or decreasing.
        rtol, atol: tolerances.
        opts: parsed options.
        segments: None (the error norm is the RMS over all of y) or a list of
            ``(start, end, kind, shape)`` slices of ``y.reshape(-1)`` whose norms (``"abs"`` or
            ``"rms"``) are combined by max (the adjoint's default norm).
        f0: the derivative at (t[0], y0) when already computed.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        y0: Tensor,
        t: Tensor,
        rtol: float,
        atol: float,
        opts: Dopri5Options,
        segments: list | None = None,
        f0: Tensor | None = None,
    ) -> None:
        dev, ydt = y0.device, y0.dtype
        self.fn = fn
        self.y0 = y0
        self.t = t
        self.T = t.numel()
        self.opts = opts
        self.segments = segments
        self.f0_given = f0
        c = dict(dtype=_F64, device=dev)
        self.rtol = torch.tensor(rtol, **c)
        self.atol = torch.tensor(atol, **c)
        self.min_step = torch.tensor(opts.min_step, **c)
        self.max_step = torch.tensor(opts.max_step, **c)
        self.safety = torch.tensor(opts.safety, **c)
        self.ifactor = torch.tensor(opts.ifactor, **c)
        self.dfactor = torch.tensor(opts.dfactor, **c)
        self.exponent = torch.tensor(tab.ORDER, **c).reciprocal()
        yc = dict(dtype=ydt, device=dev)
        self.alpha = torch.tensor(tab.ALPHA, dtype=_F64).to(**yc)
        self.beta = [torch.tensor(b, dtype=_F64).to(**yc) for b in tab.BETA]
        self.c_error = torch.tensor(tab.C_ERROR, dtype=_F64).to(**yc)
        self.mid = torch.tensor(tab.C_MID, dtype=_F64).to(**yc)
        self.exact_graph = False
        self.evals = 0

    # -- helpers ---------------------------------------------------------------------------

    def _norm(self, x: Tensor) -> Tensor:
        if self.segments is None:
            return _rms(x)
        flat = x.reshape(-1)
        out = None
        for a, b, kind, shape in self.segments:
            v = flat[a:b].view(shape)
            v = v.abs() if kind == "abs" else _rms(v)
            out = v if out is None else torch.maximum(out, v)
        return out

    def _k(self, t: Tensor, y: Tensor, perturb: bool = False) -> Tensor:
        """torchdiffeq's _PerturbFunc(_ReverseFunc(func)): t cast to y's dtype, moved just
        below itself for the stages at the end of a step, flipped back, result times sign."""
        t = t.to(y.dtype)
        if perturb:
            t = _prev_float(t)
        self.evals += 1
        return self.sign_y * self.fn(self.sign_y * t, y)

    # -- the solve -------------------------------------------------------------------------

    def init(self) -> None:
        """f0, the initial step (``_select_initial_step``) and the initial state."""
        y0, ydt, dev = self.y0, self.y0.dtype, self.y0.device
        t64 = self.t.to(dtype=_F64)
        T = self.T
        with torch.no_grad():
            if T > 1:
                sign = torch.where(t64[1] < t64[0], -1.0, 1.0).to(_F64)
            else:
                sign = torch.ones((), dtype=_F64, device=dev)
        self.sign_y = sign.to(ydt)
        self.tau = sign * t64
        if self.f0_given is not None:
            f0 = self.sign_y * self.f0_given
        else:
            f0 = self._k(self.tau[0], y0)
        t0 = self.tau[0]
        if self.opts.first_step is None:
            scale = self.atol + torch.abs(y0) * self.rtol
            d0 = self._norm(y0 / scale).abs()
            d1 = self._norm(f0 / scale).abs()
            one = torch.ones((), dtype=ydt, device=dev)
            small = (d0 < 1e-5) | (d1 < 1e-5)
            h0 = 0.01 * d0 / torch.where(small, one, d1)
            h0 = torch.where(small, torch.tensor(1e-6, dtype=ydt, device=dev), h0).abs()
            y1 = y0 + h0 * f0
            f1 = self._k(t0 + h0, y1)
            d2 = torch.abs(self._norm((f1 - f0) / scale) / h0)
            tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
            h1a = torch.max(torch.tensor(1e-6, dtype=ydt, device=dev), h0 * 1e-3)
            dmax = torch.where(d2 > d1, d2, d1)  # Python's max(d1, d2)
            # torchdiffeq passes order - 1 and raises to 1 / (order - 1 + 1)
            h1b = (0.01 / torch.where(tiny, one, dmax)) ** (1.0 / float(tab.ORDER - 1 + 1))
            h1 = torch.where(tiny, h1a, h1b).abs()
            first = torch.min(100 * h0, h1).to(_F64)
            nfe0 = 2
        else:
            first = torch.tensor(self.opts.first_step, dtype=_F64, device=dev)
            nfe0 = 1
        self.nfe0 = nfe0
        i64 = dict(dtype=torch.int64, device=dev)
        with torch.no_grad():
            ok = (self.tau[1:] > self.tau[:-1]).all() if T > 1 else torch.ones((), dtype=bool)
            self.status = torch.where(ok.to(dev), 0, 4).to(**i64)
            self.done = torch.tensor(T <= 1, device=dev)
            self.ybad = ~torch.isfinite(y0).all()
            self.nsteps = torch.zeros((), **i64)
            self.out = torch.ones((), **i64)
            self.nfe = torch.full((), nfe0, **i64)
            self.att = torch.zeros((), **i64)
            self.acc = torch.zeros((), **i64)
            self.dtfail = torch.zeros((), dtype=_F64, device=dev)
        self.y, self.f, self.t0, self.dt = y0, f0, t0, first
        self.sol = y0.unsqueeze(0).expand(T, *y0.shape)
        with torch.no_grad():
            self.poll_t = self._poll_value(
                self.done, self.status, self.nfe, t0, first.detach(), 0.0, False
            )
        self.exact_graph = torch.is_grad_enabled() and (
            y0.requires_grad or f0.requires_grad or self.t.requires_grad
        )

    def _poll_value(self, done, status, nfe, t0, dt, growth, accept) -> Tensor:
        """The kernels' _poll_value (see kernels/dopri5.py)."""
        fin = done | (status != 0)
        q = ((self.tau[-1] - t0) / dt).detach()
        q = torch.where(q > 0, q, 0.0)  # NaN -> 0
        lim = 1048575.0
        ks = torch.log(1.0 + (self.ifactor - 1.0) * q) / torch.log(self.ifactor)
        ks = torch.where(self.ifactor > 1.0001, ks, q)
        ks = torch.floor(ks - 1e-9) + 1.0
        ks = torch.where(torch.isnan(ks), 1.0, ks.clamp(1.0, lim))
        ke = torch.floor(q * 0.5)
        settled = (growth >= 0.5) & (growth <= 2.0)
        ke = torch.where(~torch.isnan(ke) & settled, ke.clamp(0.0, lim), 0.0)
        acc = torch.as_tensor(accept, device=q.device).to(_F64)
        run = 2 * (ks + 1048576.0 * ke) + acc
        return torch.where(fin, -(nfe.to(_F64) * 8 + status.to(_F64)), run)

    def attempt(self) -> None:
        """One attempted step (``_adaptive_step``), masked: no effect once the solve is over."""
        y0, f0, t0, ydt = self.y, self.f, self.t0, self.y.dtype
        with torch.no_grad():
            run = (~self.done) & (self.status == 0)
            fail = torch.where(run & (self.nsteps >= self.opts.max_num_steps), 1, 0)
        dt = torch.where(torch.isfinite(self.dt), self.dt, self.min_step)
        dt = dt.clamp(self.min_step, self.max_step)
        t1 = t0 + dt
        with torch.no_grad():
            fail = torch.where(run & (fail == 0) & ~(t1 > t0), 2, fail)
            fail = torch.where(run & (fail == 0) & self.ybad, 3, fail)
            active = run & (fail == 0)
        # rk_common._runge_kutta_step
        t0y, dty, t1y = t0.to(ydt), dt.to(ydt), t1.to(ydt)
        ks = [f0]
        yi = y0
        for i in range(6):
            if tab.ALPHA[i] == 1.0:
                ti, perturb = t1y, True
            else:
                ti, perturb = t0y + self.alpha[i] * dty, False
            k = torch.stack(ks, dim=-1)
            yi = y0 + torch.sum(k * (self.beta[i] * dty), dim=-1)
            ks.append(self._k(ti, yi, perturb))
        y1, f1 = yi, ks[-1]
        k = torch.stack(ks, dim=-1)
        y1_error = torch.sum(k * (dty * self.c_error), dim=-1)
        # misc._compute_error_ratio
        error_tol = self.atol + self.rtol * torch.max(y0.abs(), y1.abs())
        ratio = self._norm(y1_error / error_tol).abs()
        with torch.no_grad():
            accept = ratio <= 1
            accept = torch.where(dt > self.max_step, False, accept)
            accept = torch.where(dt <= self.min_step, True, accept) & active
            # misc._optimal_step_size, then the clamp
            dfactor = torch.where(ratio < 1, 1.0, self.dfactor).to(_F64)
            r64 = ratio.type_as(dt)
            factor = torch.min(self.ifactor, torch.max(self.safety / r64**self.exponent, dfactor))
            dt_next = torch.where(ratio == 0, dt * self.ifactor, dt * factor)
            dt_next = dt_next.clamp(self.min_step, self.max_step)
        # interp._interp_fit / _interp_evaluate at every requested time inside the step
        y_mid = y0 + torch.sum(k * (dty * self.mid), dim=-1)
        a = 2 * dty * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
        b = dty * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
        c = dty * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
        d = dty * f0
        bshape = (self.T,) + (1,) * y0.dim()
        x = ((self.tau - t0) / (t1 - t0)).to(ydt).view(bshape)
        total = y0 + x * d
        xp = x * x
        total = total + xp * c
        xp = xp * x
        total = total + xp * b
        xp = xp * x
        total = total + xp * a
        with torch.no_grad():
            mask = accept & (self.tau > t0) & (self.tau <= t1)
            cnt = mask.sum()
        sol = torch.where(mask.view(bshape), total, self.sol)
        # masked state update
        self.prev = (self.y, self.f, self.t0, self.sol)
        self.pure = (y1, f1, t1, sol)
        self.y = torch.where(accept, y1, y0)
        self.f = torch.where(accept, f1, f0)
        self.t0 = torch.where(accept, t1, t0)
        self.sol = sol
        with torch.no_grad():
            self.dt = torch.where(active, dt_next, self.dt)
            self.nsteps = torch.where(active, torch.where(cnt > 0, 0, self.nsteps + 1), self.nsteps)
            self.out = self.out + cnt
            self.nfe = self.nfe + 6 * active
            self.att = self.att + active
            self.acc = self.acc + accept
            failing = run & (fail != 0)
            self.status = torch.where(failing, fail, self.status)
            self.dtfail = torch.where(failing, dt.to(_F64), self.dtfail)
            self.ybad = torch.where(accept, ~torch.isfinite(y1).all(), self.ybad)
            self.done = self.out >= self.T
            growth = self.dt / dt.detach()
            self.poll_t = self._poll_value(
                self.done, self.status, self.nfe, self.t0.detach(), self.dt, growth, accept
            )

    def settle(self, accepted: bool) -> None:
        """Exact-graph mode, after a check: keep only the branch that was taken."""
        y, f, t0, sol = self.pure if accepted else self.prev
        self.y, self.f, self.t0, self.sol = y, f, t0, sol

    def poll(self) -> float:
        """The one host sync of a check."""
        return float(self.poll_t.item())

    def result(self) -> Tensor:
        """(T, *y0.shape) solution (a new tensor, never a view of y0)."""
        return self.sol if self.T > 1 else self.sol.clone()

    def accepted_tensor(self) -> Tensor:
        return self.acc

    def failure_info(self) -> dict:
        """Host copies of the values a failure message needs (syncs; failure path only)."""
        return {
            "dt": float(self.dtfail.item()),
            "nsteps": int(self.nsteps.item()),
            "t": float((self.sign_y.to(_F64) * self.t0).item()),
        }
