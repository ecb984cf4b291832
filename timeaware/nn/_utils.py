"""Small private helpers shared by :mod:`timeaware.nn` and :mod:`timeaware.models`.

Activation lookup and the argument checks that every public module runs before it touches a
tensor (DESIGN section 5: name the argument, what it got, and what was expected).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from timeaware.reference import ACTIVATIONS as FUSED_ACTIVATIONS
from timeaware.reference import apply_act

#: FUSED_ACTIVATIONS (imported above): the activations the fused op applies inside its kernel.
#: Every activation a module accepts; the ones not in :data:`FUSED_ACTIVATIONS` run eagerly after
#: an identity-activation fused normalisation (paper Appendix A uses softplus, elu and sigmoid).
ACTIVATIONS = ("identity", "relu", "silu", "softplus", "elu", "sigmoid")
_ALIASES = {"swish": "silu", "none": "identity", "linear": "identity"}


def canonical_act(act: str, name: str = "act") -> str:
    """Return the canonical activation name (``"swish"`` -> ``"silu"``) or raise ValueError."""
    if not isinstance(act, str):
        raise TypeError(f"{name}: got {type(act).__name__}, expected a string in {ACTIVATIONS}")
    key = _ALIASES.get(act.lower(), act.lower())
    if key not in ACTIVATIONS:
        raise ValueError(f"{name}: got {act!r}, expected one of {ACTIVATIONS} (or 'swish')")
    return key


def eager_act(y: Tensor, act: str) -> Tensor:
    """Apply any of :data:`ACTIVATIONS` (canonical name) with eager PyTorch."""
    if act in FUSED_ACTIVATIONS:
        return apply_act(y, act)
    if act == "softplus":
        return F.softplus(y)
    if act == "elu":
        return F.elu(y)
    if act == "sigmoid":
        return torch.sigmoid(y)
    raise ValueError(f"act: got {act!r}, expected one of {ACTIVATIONS}")


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return ``value`` as int if it is an integer >= ``minimum``; raise TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: got {type(value).__name__} {value!r}, expected an int")
    if value < minimum:
        raise ValueError(f"{name}: got {value}, expected an int >= {minimum}")
    return int(value)


def check_feature_map(x, name: str, channels: int | None = None) -> None:
    """Check that ``x`` is a floating (N, C, H, W) tensor with ``channels`` channels."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: got {type(x).__name__}, expected a torch.Tensor (N, C, H, W)")
    if x.dim() != 4:
        raise ValueError(f"{name}: got shape {tuple(x.shape)}, expected (N, C, H, W)")
    if not x.is_floating_point():
        raise TypeError(f"{name}: got dtype {x.dtype}, expected a floating dtype")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{name}: got shape {tuple(x.shape)}, expected (N, {channels}, H, W) "
            f"({channels} channels)"
        )


def check_channels(x, name: str, channels: int) -> None:
    """Check that ``x`` is a floating (N, C, *) tensor with ``channels`` channels."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: got {type(x).__name__}, expected a torch.Tensor (N, C, *)")
    if x.dim() < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{name}: got shape {tuple(x.shape)}, expected (N, {channels}, *) ({channels} channels)"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: got dtype {x.dtype}, expected a floating dtype")


def check_time(t, batch: int, name: str = "t") -> None:
    """Check a time argument: a Python number, a 0-d tensor, or a (N,) tensor with N=batch."""
    if isinstance(t, Tensor):
        if t.dim() == 0:
            return
        if t.dim() == 1 and t.shape[0] in (1, batch):
            return
        raise ValueError(
            f"{name}: got a tensor of shape {tuple(t.shape)}, expected a scalar, a 0-d tensor "
            f"or shape ({batch},)"
        )
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a number or a tensor")


def time_as_tensor(t, like: Tensor) -> Tensor:
    """Return ``t`` as a 0-d or (N,) tensor on ``like``'s device in ``like``'s dtype.

    (1,) tensors become 0-d. Gradients flow through the conversion.
    """
    if not isinstance(t, Tensor):
        return torch.tensor(float(t), dtype=like.dtype, device=like.device)
    if t.dim() == 1 and t.shape[0] == 1:
        t = t.reshape(())
    return t.to(device=like.device, dtype=like.dtype)


def check_spatial(x: Tensor, size: tuple[int, int], name: str = "x") -> None:
    """Raise ValueError if ``x``'s spatial size is not ``size`` (used with positional maps)."""
    if tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(
            f"{name}: got spatial size {tuple(x.shape[-2:])}, expected {tuple(size)} "
            "(the size the positional embedding was built for)"
        )
