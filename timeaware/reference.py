"""Eager PyTorch reference of every timeaware op.

This module is the CPU fallback of the ``reference`` backend and the ground truth of the tests.
It uses nothing but differentiable PyTorch ops, so autograd, ``torch.autograd.gradcheck`` and
``torch.compile`` all see through it.

The fused op (DESIGN section 1)::

    u[n,c,h,w] = x + conv_bias[c] + emb[n,c] + time[n] * time_map[c,h,w] + pos[n,h,w]
    y[n,c,h,w] = act(weight[c] * (u - mean[n,g]) * rstd[n,g] + bias[c])

Memory format of the result: channels_last when x's strides are in channels_last order (torch's
``suggest_memory_format``, which is what ``F.group_norm`` follows), NCHW-contiguous otherwise;
the Triton backend follows the same rule (``timeaware.kernels.group_norm_act.
output_memory_format``). Under torch.func transforms (vmap) the layout is not queried.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("identity", "relu", "silu")
_CL = torch.channels_last


def output_memory_format(x: Tensor) -> torch.memory_format:
    """Memory format of the op's result for an (N, C, *) input ``x``.

    ``torch.channels_last`` when ``x`` is 4-D and its strides are in channels_last order
    (channels_last-contiguous, or not dense but ordered like channels_last), else
    ``torch.contiguous_format``: ``F.group_norm``'s rule (``suggest_memory_format``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=_CL):
        return _CL
    from torch._prims_common import suggest_memory_format  # rare path: x is not dense

    return suggest_memory_format(x)


def apply_act(y: Tensor, act: str) -> Tensor:
    """Apply one of :data:`ACTIVATIONS` to ``y``."""
    if act == "identity":
        return y
    if act == "relu":
        return F.relu(y)
    if act == "silu":
        return F.silu(y)
    raise ValueError(f"act: got {act!r}, expected one of {ACTIVATIONS}")


def add_addends(
    x: Tensor,
    conv_bias: Tensor | None = None,
    emb: Tensor | None = None,
    time: Tensor | float | None = None,
    time_map: Tensor | None = None,
    pos: Tensor | None = None,
) -> Tensor:
    """Return ``u = x + conv_bias + emb + time * time_map + pos`` with the documented broadcasts.

    Shapes: x (N, C, H, W); conv_bias (C,); emb (N, C); time scalar or (N,) with
    time_map (C, H, W); pos (N or 1, H, W). Arithmetic follows PyTorch type promotion; a
    Python-number ``time`` multiplies ``time_map`` as a Python scalar (as eager
    ``x + t * time_map`` does: no rounding to fp32 for an fp64 ``time_map``).
    """
    u = x
    if conv_bias is not None:
        u = u + conv_bias.view(1, -1, 1, 1)
    if emb is not None:
        u = u + emb[:, :, None, None]
    if time_map is not None:
        if isinstance(time, Tensor):
            t = time.reshape(-1, 1, 1, 1) if time.dim() > 0 else time
        else:
            t = float(time)
        u = u + t * time_map.unsqueeze(0)
    if pos is not None:
        u = u + pos.unsqueeze(1)
    return u


def group_norm_act_ref(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    act: str = "identity",
    conv_bias: Tensor | None = None,
    emb: Tensor | None = None,
    time: Tensor | float | None = None,
    time_map: Tensor | None = None,
    pos: Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """Eager ``act(group_norm(x + addends))``.

    Args:
        x: (N, C, H, W) input, any float dtype, NCHW or channels_last.
        num_groups: G, which divides C.
        weight, bias: (C,) affine of the normalisation, or None.
        eps: added to the variance.
        act: ``"identity"``, ``"relu"`` or ``"silu"``.
        conv_bias, emb, time, time_map, pos: optional addends (see module docstring).
        compute_dtype: dtype of the whole computation. ``None`` means fp32 for fp16/bf16 inputs
            (the op's contract: fp32 statistics) and the input's dtype otherwise. Tests pass
            ``x.dtype`` to get plain low-precision eager PyTorch, and ``torch.float64`` for the
            fp64 ground truth.

    Returns:
        (N, C, H, W) tensor of ``x.dtype`` in :func:`output_memory_format` of ``x``.
    """
    if compute_dtype is None:
        compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    # under torch.func transforms (vmap) the memory format cannot be queried: leave it
    fmt = None
    if torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active():
        fmt = output_memory_format(x)

    def cast(t):
        return t.to(compute_dtype) if isinstance(t, Tensor) else t

    u = add_addends(cast(x), cast(conv_bias), cast(emb), cast(time), cast(time_map), cast(pos)).to(
        compute_dtype
    )
    weight, bias = cast(weight), cast(bias)
    if weight is None and bias is not None:
        # F.group_norm(weight=None, bias=b) cannot backpropagate on CPU (torch 2.13); a unit
        # weight is the same function
        weight = torch.ones_like(bias)
    y = F.group_norm(u, num_groups, weight, bias, eps)
    y = apply_act(y, act).to(x.dtype)
    if fmt is not None and not y.is_contiguous(memory_format=fmt):
        y = y.contiguous(memory_format=fmt)
    return y
