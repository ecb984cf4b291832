"""Input checks and option parsing shared by ``odeint`` and ``odeint_adjoint``."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .._backend import (
    BackendUnavailableError,
    _check_name,
    get_backend,
    triton_reason,
)

_TORCHDIFFEQ_METHODS = (
    "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "euler", "midpoint", "heun2", "heun3",
    "rk4", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver",
)  # fmt: skip
# torchdiffeq options that this dopri5 does not implement
_UNSUPPORTED = ("norm", "step_t", "jump_t", "grid_constructor", "step_size", "perturb", "interp")
_SUPPORTED = (
    "first_step", "min_step", "max_step", "safety", "ifactor", "dfactor", "max_num_steps",
    "dtype", "check_every",
)  # fmt: skip
_USE_TORCHDIFFEQ = "use torchdiffeq.odeint / torchdiffeq.odeint_adjoint for it"


@dataclass(frozen=True)
class Dopri5Options:
    """Parsed dopri5 options (torchdiffeq's names and defaults, plus ``check_every``)."""

    first_step: float | None = None
    min_step: float = 0.0
    max_step: float = math.inf
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    max_num_steps: int = 2**31 - 1
    check_every: int | None = None


def _number(v, name: str) -> float:
    if isinstance(v, Tensor):
        if v.numel() != 1 or v.requires_grad:
            raise ValueError(f"{name}: got a tensor of shape {tuple(v.shape)}, expected a number")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: got {type(v).__name__}, expected a number")
    return float(v)


def check_method(method, what: str = "method") -> None:
    """dopri5 (or None) passes; torchdiffeq's other methods and unknown names raise."""
    if method is None or method == "dopri5":
        return
    if method in _TORCHDIFFEQ_METHODS:
        raise NotImplementedError(
            f"{what}: got {method!r}; timeaware's solver implements dopri5 only, {_USE_TORCHDIFFEQ}"
        )
    raise ValueError(f"{what}: got {method!r}, expected 'dopri5' (or None)")


def parse_options(options, what: str = "options") -> Dopri5Options:
    """Check a torchdiffeq-style options dict for dopri5 and return the parsed values.

    Raises:
        TypeError: options is not a dict or a value has the wrong type.
        ValueError: unknown option or out-of-range value.
        NotImplementedError: a torchdiffeq option this solver does not implement.
    """
    if options is None:
        return Dopri5Options()
    if not isinstance(options, dict):
        raise TypeError(f"{what}: got {type(options).__name__}, expected a dict or None")
    for k in options:
        if k in _UNSUPPORTED:
            raise NotImplementedError(
                f"{what}[{k!r}] is not implemented by timeaware's dopri5; {_USE_TORCHDIFFEQ}"
            )
        if k not in _SUPPORTED:
            raise ValueError(f"{what}: unknown option {k!r}, expected some of {_SUPPORTED}")
    kw = {}
    for k in ("first_step", "min_step", "max_step", "safety", "ifactor", "dfactor"):
        if options.get(k) is not None:
            kw[k] = _number(options[k], f"{what}[{k!r}]")
    if "first_step" in kw and not (0 < kw["first_step"] < math.inf):
        raise ValueError(f"{what}['first_step']: got {kw['first_step']}, expected > 0")
    lo, hi = kw.get("min_step", 0.0), kw.get("max_step", math.inf)
    if not (0 <= lo <= hi) or hi <= 0:
        raise ValueError(
            f"{what}: got min_step={lo}, max_step={hi}, expected 0 <= min_step <= max_step, "
            "max_step > 0"
        )
    for k in ("safety", "ifactor", "dfactor"):
        if k in kw and not (0 < kw[k] < math.inf):
            raise ValueError(f"{what}[{k!r}]: got {kw[k]}, expected a positive number")
    for k in ("max_num_steps", "check_every"):
        v = options.get(k)
        if v is None:
            continue
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{what}[{k!r}]: got {v!r}, expected an integer >= 1")
        kw[k] = int(v)
    dtype = options.get("dtype")
    if dtype is not None and dtype != torch.float64:
        raise NotImplementedError(
            f"{what}['dtype']: got {dtype}; timeaware's dopri5 keeps times in float64 only, "
            f"{_USE_TORCHDIFFEQ}"
        )
    return Dopri5Options(**kw)


def check_tol(v, name: str) -> float:
    """A scalar tolerance >= 0 (per-element tolerance tensors are not implemented)."""
    if isinstance(v, Tensor) and v.numel() != 1:
        raise NotImplementedError(
            f"{name}: got a tensor of shape {tuple(v.shape)}; per-element tolerances are not "
            f"implemented, {_USE_TORCHDIFFEQ}"
        )
    if isinstance(v, Tensor) and v.requires_grad:
        raise ValueError(f"{name}: got a tensor that requires grad, expected a number")
    x = _number(v, name)
    if not x >= 0 or x == math.inf:
        raise ValueError(f"{name}: got {x}, expected a finite number >= 0")
    return x


_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def check_state(func, y0, t) -> Tensor:
    """Check func, y0 and t; returns t on y0's device (with torchdiffeq's warning if moved)."""
    if not callable(func):
        raise TypeError(f"func: got {type(func).__name__}, expected a callable func(t, y)")
    for name in (*_CALLBACKS, *(c + "_adjoint" for c in _CALLBACKS)):
        if getattr(func, name, None) is not None:
            raise NotImplementedError(
                f"func.{name}: torchdiffeq's step callbacks are not implemented by timeaware's "
                f"dopri5 (the steps are decided on the device); {_USE_TORCHDIFFEQ}"
            )
    if isinstance(y0, tuple):
        raise NotImplementedError(
            f"y0: got a tuple; timeaware's solver takes a single tensor state, {_USE_TORCHDIFFEQ}"
        )
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0: got {type(y0).__name__}, expected a torch.Tensor")
    if not y0.is_floating_point():
        raise TypeError(f"y0: got dtype {y0.dtype}, expected a floating-point tensor")
    if not isinstance(t, Tensor):
        raise TypeError(f"t: got {type(t).__name__}, expected a 1-D torch.Tensor of times")
    if not t.is_floating_point():
        raise TypeError(f"t: got dtype {t.dtype}, expected a floating-point tensor")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"t: got shape {tuple(t.shape)}, expected a non-empty 1-D tensor")
    if t.device != y0.device:
        warnings.warn("t is not on the same device as y0. Coercing to y0.device.", stacklevel=3)
        t = t.to(y0.device)
    return t


def kernel_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the solver's Triton kernels cannot run here, or None when they can."""
    dtypes = (torch.float32, torch.float64)
    return triton_reason(device, dtype, dtypes, "the solver kernels support float32/float64 states")


def resolve(requested: str | None, y0: Tensor, needs_grad: bool) -> tuple[str, bool]:
    """(backend, may_fall_back): ``"triton"`` or ``"reference"`` for this solve.

    ``auto`` takes the kernels for a CUDA state that needs no gradient through the solver, and
    may still fall back to the reference when the function's output turns out to require grad.
    A forced ``"triton"`` that cannot run raises :class:`BackendUnavailableError`.
    """
    name = get_backend() if requested is None else _check_name(requested, "backend")
    if name == "reference":
        return "reference", False
    reason = kernel_reason(y0.device, y0.dtype)
    if name == "auto":
        if y0.device.type == "cuda" and reason is None and not needs_grad:
            return "triton", True
        return "reference", False
    if reason is not None:
        raise BackendUnavailableError(f"backend='triton' cannot run the solver: {reason}")
    if needs_grad:
        raise BackendUnavailableError(GRAD_MESSAGE)
    return "triton", False


GRAD_MESSAGE = (
    "backend='triton' cannot differentiate through the solver (its kernels have no autograd): "
    "use timeaware.odeint_adjoint, or backend='reference' to backpropagate through the steps"
)
