"""``timeaware.odeint``: torchdiffeq's dopri5 with fused stage kernels and no host sync per step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._backend import BackendUnavailableError
from . import _loop, _spec
from ._reference import RefStepper
from .stats import SolveCounts, SolverStats

__all__ = ["odeint"]


class _Shaped:
    """The user's function on the solver's side: checks what it returns, casts its dtype, and
    (``flat=True``) hands out and takes back flat views."""

    def __init__(self, func: Callable, shape: torch.Size, dtype: torch.dtype, flat: bool):
        self.func, self.shape, self.dtype, self.flat = func, shape, dtype, flat

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        out = self.func(t, y.view(self.shape) if self.flat else y)
        if not isinstance(out, Tensor):
            raise TypeError(f"func: returned {type(out).__name__}, expected a torch.Tensor")
        if out.shape != self.shape:
            raise ValueError(
                f"func: returned shape {tuple(out.shape)}, expected the state's shape "
                f"{tuple(self.shape)}"
            )
        if out.dtype != self.dtype:
            out = out.to(self.dtype)
        return out.reshape(-1) if self.flat else out


def solve(
    fn: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    rtol: float,
    atol: float,
    opts: _spec.Dopri5Options,
    backend: str,
    may_fall_back: bool,
    counts: SolveCounts | None,
    segments: list | None = None,
) -> Tensor:
    """Solve with checked inputs. ``fn(t, y)`` takes and returns y0's shape; with
    ``segments`` (the adjoint) y0 is flat and the norm is the max over the segments'
    ``(start, end, kind, shape, normed)``. Returns (T, *y0.shape)."""
    T = t.numel()
    if y0.numel() == 0:  # nothing to integrate: no evaluation, an empty result
        if counts is not None:
            counts.solves += 1
        return y0.unsqueeze(0).expand(T, *y0.shape).clone()
    shape = y0.shape
    if backend == "triton":
        from ._fused import FusedStepper, NeedsAutograd

        if segments is None:
            sizes, normed = (y0.numel(),), (True,)
        else:
            sizes = tuple(b - a for a, b, *_ in segments)
            normed = tuple(s[4] for s in segments)
        flat_fn = _Shaped(fn, shape, y0.dtype, flat=True)
        stepper = FusedStepper(
            flat_fn, y0.detach().reshape(-1).contiguous(), t, rtol, atol, opts, sizes, normed
        )
        try:
            _loop.run(stepper, opts.check_every, counts, opts.max_num_steps)
            return stepper.result().view(T, *shape)
        except NeedsAutograd as e:
            if not may_fall_back:
                raise BackendUnavailableError(_spec.GRAD_MESSAGE) from None
            f0 = None if e.f0 is None else e.f0.view(shape)
        evals = stepper.evals
    else:
        f0, evals = None, 0
    ref_segments = None if segments is None else [s[:4] for s in segments if s[4]]
    stepper = RefStepper(_Shaped(fn, shape, y0.dtype, flat=False), y0, t, rtol, atol, opts,
                         ref_segments, f0)  # fmt: skip
    stepper.evals = evals
    _loop.run(stepper, opts.check_every, counts, opts.max_num_steps)
    return stepper.result()


def odeint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict | None = None,
    event_fn=None,
    backend: str | None = None,
    stats: SolverStats | None = None,
) -> Tensor:
    """Integrate ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, with dopri5: torchdiffeq's odeint.

    The same algorithm, defaults and results as ``torchdiffeq.odeint(..., method="dopri5")``:
    the same initial step selection, RMS error norm with ``atol + rtol * max(|y0|, |y1|)``,
    step-size controller (safety 0.9, ifactor 10, dfactor 0.2), FSAL, 4th-order dense output
    at the requested times, and decreasing ``t`` by integrating the flipped system; so the same
    number of function evaluations and the same solution up to rounding. What differs is the
    cost: on the Triton backend each attempted step is 8 fused kernels beside the function's
    six evaluations, and every decision stays on the device (one host sync per check for the
    end of the solve, see ``check_every``).

    Args:
        func: ``func(t, y)`` -> dy/dt with y's shape. ``t`` is a 0-dim tensor of y's dtype; on
            the Triton backend it is a view of a solver buffer, valid during the call (clone it
            to keep it).
        y0: (any shape) floating initial state.
        t: (T,) times, strictly increasing or decreasing; ``t[0]`` is the initial time.
        rtol, atol: relative and absolute tolerance (scalars; torchdiffeq's defaults).
        method: ``None`` or ``"dopri5"``; torchdiffeq's other methods raise
            ``NotImplementedError`` (use torchdiffeq for them).
        options: torchdiffeq's dopri5 options ``first_step``, ``min_step``, ``max_step``,
            ``safety``, ``ifactor``, ``dfactor``, ``max_num_steps``, ``dtype`` (float64
            only), plus ``check_every`` (int: check for the end every k attempts; default
            adaptive). ``norm``, ``step_t``, ``jump_t`` raise ``NotImplementedError``.
        event_fn: not implemented (raises ``NotImplementedError``).
        backend: ``"auto"`` (kernels for a CUDA float32/float64 state that needs no gradient
            through the solver, plain PyTorch otherwise), ``"triton"`` or ``"reference"``; None
            follows :func:`timeaware.use_backend` / ``TIMEAWARE_BACKEND``.
        stats: a :class:`SolverStats`; ``stats.forward`` gets this solve's exact NFE, steps,
            calls and host syncs.

    Returns:
        (T, *y0.shape) solution at the times ``t``; ``[0]`` is ``y0``.

    Raises:
        TypeError, ValueError: bad arguments (naming the argument); ``t`` not strictly
            monotonic (found on the device, after the first check).
        NotImplementedError: tuple states, per-element tolerances, other methods, events,
            unsupported options.
        SolverError: max_num_steps exceeded, underflow in dt, non-finite state (torchdiffeq's
            messages; also an AssertionError, as torchdiffeq raises).
        BackendUnavailableError: ``backend="triton"`` where the kernels cannot run, or when
            gradients must flow through the solver (use :func:`odeint_adjoint` or the
            reference backend).

    Differentiation: on the reference backend autograd goes through the steps (as with
    torchdiffeq's odeint); on the Triton backend it cannot, and ``auto`` picks the reference
    whenever grad mode is on and ``y0``, ``t`` or the function's output requires grad.
    """
    t = _spec.check_state(func, y0, t)
    if event_fn is not None:
        raise NotImplementedError(
            "event_fn: event handling is not implemented by timeaware's dopri5; "
            + _spec._USE_TORCHDIFFEQ
        )
    _spec.check_method(method)
    rtol = _spec.check_tol(rtol, "rtol")
    atol = _spec.check_tol(atol, "atol")
    opts = _spec.parse_options(options)
    if stats is not None and not isinstance(stats, SolverStats):
        raise TypeError(f"stats: got {type(stats).__name__}, expected a SolverStats or None")
    needs_grad = torch.is_grad_enabled() and (y0.requires_grad or t.requires_grad)
    be, may_fall_back = _spec.resolve(backend, y0, needs_grad)
    counts = stats.forward if stats is not None else None
    return solve(func, y0, t, rtol, atol, opts, be, may_fall_back, counts)
