"""``timeaware.odeint_adjoint``: torchdiffeq's adjoint method over the same dopri5 machinery.

The backward pass integrates torchdiffeq's augmented state ``(vjp_t, y, adj_y, *adj_params)``
from each output time to the previous one, flattened into one vector whose error norm is
torchdiffeq's default adjoint norm: ``max(|vjp_t|, rms(y), rms(adj_y), max_p rms(adj_p))`` (or
without the parameters for ``adjoint_options={"norm": "seminorm"}``). The kernels take the max
over these segments themselves, so a backward step costs what a forward step costs, plus the
augmented function (one forward and one vector-Jacobian product of ``func``, and one ``cat``).

Like torchdiffeq, the augmented function always differentiates ``func`` with respect to ``t``
(torchdiffeq's ``t_ = t.detach(); t = t_.requires_grad_(True)`` makes both names the same
tensor), so ``vjp_t`` enters the norm even when ``t`` does not require grad; doing the same
keeps the backward NFE equal to torchdiffeq's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import _spec
from .odeint import solve
from .stats import SolverStats

__all__ = ["odeint_adjoint"]


class _Run:
    """Everything the forward and the backward solves need, kept on the autograd context."""

    def __init__(self, func, shape, rtol, atol, opts, adj_rtol, adj_atol, adj_opts, seminorm,
                 backend, may_fall_back, stats):  # fmt: skip
        self.func, self.shape = func, shape
        self.rtol, self.atol, self.opts = rtol, atol, opts
        self.adj_rtol, self.adj_atol, self.adj_opts = adj_rtol, adj_atol, adj_opts
        self.seminorm, self.backend, self.may_fall_back = seminorm, backend, may_fall_back
        self.stats = stats

    def forward(self, y0: Tensor, t: Tensor) -> Tensor:
        counts = self.stats.forward if self.stats is not None else None
        return solve(self.func, y0, t, self.rtol, self.atol, self.opts, self.backend,
                     self.may_fall_back, counts)  # fmt: skip

    def backward(self, t: Tensor, sol: Tensor, grad_y: Tensor, params: tuple, t_grad: bool):
        shape, dtype, dev = self.shape, sol.dtype, sol.device
        n = math.prod(shape)
        T = t.numel()
        sizes = [p.numel() for p in params]
        m = 1 + 2 * n + sum(sizes)
        segments = [(0, 1, "abs", (), True), (1, 1 + n, "rms", shape, True),
                    (1 + n, 1 + 2 * n, "rms", shape, True)]  # fmt: skip
        a = 1 + 2 * n
        for p, s in zip(params, sizes):
            segments.append((a, a + s, "rms", p.shape, s > 0 and not self.seminorm))
            a += s
        segments = [s for s in segments if s[1] > s[0]]
        counts = self.stats.backward if self.stats is not None else None
        zeros = {}

        def zero(size: int) -> Tensor:
            if size not in zeros:
                zeros[size] = torch.zeros(size, dtype=dtype, device=dev)
            return zeros[size]

        func = self.func

        def augmented(tt: Tensor, ya: Tensor) -> Tensor:
            y = ya[1 : 1 + n].view(shape)
            adj = ya[1 + n : 1 + 2 * n].view(shape)
            with torch.enable_grad():
                tg = tt.detach().requires_grad_(True)
                yg = y.detach().requires_grad_(True)
                fe = func(tg, yg)
                if not isinstance(fe, Tensor) or fe.shape != shape:
                    got = tuple(fe.shape) if isinstance(fe, Tensor) else type(fe).__name__
                    raise ValueError(f"func: returned {got}, expected shape {tuple(shape)}")
                if fe.requires_grad:
                    grads = torch.autograd.grad(fe, (tg, yg, *params), -adj, allow_unused=True)
                else:
                    grads = (None,) * (2 + len(params))
            vt, vy, *vp = grads
            parts = [zero(1) if vt is None else vt.reshape(1), fe.detach().reshape(-1),
                     zero(n) if vy is None else vy.reshape(-1)]  # fmt: skip
            parts += [zero(s) if g is None else g.reshape(-1) for g, s in zip(vp, sizes)]
            return torch.cat(parts).to(dtype)

        aug = torch.zeros(m, dtype=dtype, device=dev)
        aug[1 : 1 + n] = sol[-1].reshape(-1)
        aug[1 + n : 1 + 2 * n] = grad_y[-1].reshape(-1)
        time_vjps = torch.empty(T, dtype=t.dtype, device=t.device) if t_grad else None
        t_rev = t.detach().flip(0).to(torch.float64)
        for i in range(T - 1, 0, -1):
            if t_grad:  # the effect of moving output time t[i]
                fe = func(t[i].to(dtype), sol[i])
                dl = fe.reshape(-1).dot(grad_y[i].reshape(-1))
                aug[0] -= dl
                time_vjps[i] = dl
                if counts is not None:
                    counts.nfe += 1
                    counts.calls += 1
            pair = t_rev[T - 1 - i : T + 1 - i]  # (t[i], t[i - 1]): a view, no copy
            out = solve(augmented, aug, pair, self.adj_rtol, self.adj_atol, self.adj_opts,
                        self.backend, False, counts, segments)  # fmt: skip
            aug = out[1]  # out is this solve's own buffer
            aug[1 : 1 + n] = sol[i - 1].reshape(-1)
            aug[1 + n : 1 + 2 * n] += grad_y[i - 1].reshape(-1)
        if t_grad:
            time_vjps[0] = aug[0]
        adj_y = aug[1 + n : 1 + 2 * n].view(shape)
        adj_params, a = [], 1 + 2 * n
        for p, s in zip(params, sizes):
            adj_params.append(aug[a : a + s].view(p.shape).to(p.dtype))
            a += s
        return adj_y, time_vjps, adj_params


class _AdjointFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run: _Run, y0: Tensor, t: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            sol = run.forward(y0, t)
        ctx.run = run
        ctx.save_for_backward(t, sol, *params)
        return sol

    @staticmethod
    def backward(ctx, grad_sol: Tensor):
        t, sol, *params = ctx.saved_tensors
        with torch.no_grad():
            adj_y, time_vjps, adj_params = ctx.run.backward(
                t, sol, grad_sol, tuple(params), ctx.needs_input_grad[2]
            )
        return (None, adj_y, time_vjps, *adj_params)


def odeint_adjoint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn=None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params=None,
    backend: str | None = None,
    stats: SolverStats | None = None,
) -> Tensor:
    """:func:`timeaware.odeint` with gradients by the adjoint method: torchdiffeq's
    ``odeint_adjoint`` for dopri5.

    The forward solve runs without autograd; ``backward()`` solves torchdiffeq's augmented
    system backwards between consecutive output times with the same fused dopri5, so the
    gradients of ``y0``, ``t`` and the parameters, and the backward NFE, are torchdiffeq's.

    Args:
        func, y0, t, rtol, atol, method, options, event_fn, backend: as :func:`odeint`.
        adjoint_rtol, adjoint_atol: tolerances of the backward solves (default rtol, atol).
        adjoint_method: ``None`` or ``"dopri5"``.
        adjoint_options: options of the backward solves (default: ``options`` without
            ``norm``); ``{"norm": "seminorm"}`` leaves the parameter adjoints out of the
            error norm (fewer backward steps), as in torchdiffeq; other norms are not
            implemented.
        adjoint_params: the tensors to differentiate (default: ``func.parameters()``, which
            needs ``func`` to be an ``nn.Module``); those not requiring grad are dropped.
        stats: a :class:`SolverStats`; ``.forward`` gets the forward solve, ``.backward`` the
            backward solves (NFE-B) when ``backward()`` runs.

    Returns:
        (T, *y0.shape) solution at the times ``t``.

    Raises:
        As :func:`odeint`; ValueError when ``adjoint_params`` is None and ``func`` is not an
        ``nn.Module``, or when ``adjoint_method != method`` with ``options`` but no
        ``adjoint_options``. A failure of a backward solve raises :class:`SolverError` from
        ``backward()``.
    """
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError(
            "func: must be an nn.Module to find the adjoint parameters; pass them as "
            "adjoint_params (adjoint_params=() when there are none)"
        )
    t = _spec.check_state(func, y0, t)
    if event_fn is not None:
        raise NotImplementedError(
            "event_fn: event handling is not implemented by timeaware's dopri5; "
            + _spec._USE_TORCHDIFFEQ
        )
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    adjoint_method = method if adjoint_method is None else adjoint_method
    _spec.check_method(method)
    _spec.check_method(adjoint_method, "adjoint_method")
    if adjoint_method != method and options is not None and adjoint_options is None:
        raise ValueError(
            "adjoint_options: must be given when adjoint_method != method and options are"
        )
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in (options or {}).items() if k != "norm"}
    elif not isinstance(adjoint_options, dict):
        raise TypeError(
            f"adjoint_options: got {type(adjoint_options).__name__}, expected a dict or None"
        )
    else:
        adjoint_options = dict(adjoint_options)
    norm = adjoint_options.pop("norm", None)
    if norm is not None and norm != "seminorm":
        raise NotImplementedError(
            f"adjoint_options['norm']: got {norm!r}; only 'seminorm' (or the default) is "
            f"implemented, {_spec._USE_TORCHDIFFEQ}"
        )
    rtol = _spec.check_tol(rtol, "rtol")
    atol = _spec.check_tol(atol, "atol")
    adjoint_rtol = _spec.check_tol(adjoint_rtol, "adjoint_rtol")
    adjoint_atol = _spec.check_tol(adjoint_atol, "adjoint_atol")
    opts = _spec.parse_options(options)
    adj_opts = _spec.parse_options(adjoint_options, "adjoint_options")
    if adjoint_params is None:
        adjoint_params = tuple(func.parameters())
    else:
        adjoint_params = tuple(adjoint_params)
    for i, p in enumerate(adjoint_params):
        if not isinstance(p, Tensor):
            raise TypeError(f"adjoint_params[{i}]: got {type(p).__name__}, expected a Tensor")
    adjoint_params = tuple(p for p in adjoint_params if p.requires_grad)
    if stats is not None and not isinstance(stats, SolverStats):
        raise TypeError(f"stats: got {type(stats).__name__}, expected a SolverStats or None")
    backend, may_fall_back = _spec.resolve(backend, y0, needs_grad=False)
    run = _Run(func, y0.shape, rtol, atol, opts, adjoint_rtol, adjoint_atol, adj_opts,
               norm == "seminorm", backend, may_fall_back, stats)  # fmt: skip
    return _AdjointFn.apply(run, y0, t, *adjoint_params)
