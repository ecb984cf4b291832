"""ConcatConv2d computed as a convolution over C channels plus a time map (DESIGN section 2).

torchdiffeq's ConcatConv2d convolves ``cat([t * ones, x])``. Splitting the weight into the time
channel and the rest, ``W = [W_t | W_x]``, and using linearity::

    conv(cat([t * 1, x]), W) + b  ==  conv(x, W_x) + b + t * conv(1, W_t)

``time_map = conv(1, W_t)`` (one tiny convolution of an all-ones map with the same stride,
padding and dilation) is constant in the interior and differs at zero-padded borders; it
depends on the weights only. The fused path runs the convolution over C channels with no bias
and hands ``bias``, ``t`` and ``time_map`` to the fused GroupNorm op, so the concatenation is
never materialised and the convolution's output is read once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reference import add_addends
from ._utils import check_feature_map, check_positive_int, check_time, time_as_tensor
from .norm import TimeAwareNorm, make_norm


class ConcatConv2d(nn.Module):
    """torchdiffeq's ``ConcatConv2d`` (examples/odenet_mnist.py), computed without the concat.

    The parameters live in ``_layer``, an ``nn.Conv2d`` (or ``nn.ConvTranspose2d``) on
    ``dim_in + 1`` input channels with the time channel first, exactly as in torchdiffeq, so a
    state dict of that module loads unchanged. ``forward(t, x)`` equals
    ``_layer(cat([t * ones, x], 1))`` up to floating-point rounding, including at zero-padded
    borders, for any stride, dilation, groups and for the transposed convolution.

    With ``groups > 1`` the time channel is input channel 0 of group 0 (torchdiffeq's layout), so
    it feeds only the first ``dim_out / groups`` output channels and the x-channels are split
    unevenly across groups; :meth:`conv_x` then convolves ``x`` with one zero channel prepended
    (exact, but it does materialise that channel). ``groups == 1`` never materialises anything.

    Args:
        dim_in: C_in, channels of ``x`` (the layer sees ``dim_in + 1``).
        dim_out: C_out.
        ksize, stride, padding, dilation, groups, bias: as ``nn.Conv2d``.
            ``dim_in + 1`` and ``dim_out`` must be divisible by ``groups``.
        transpose: use ``nn.ConvTranspose2d`` (output_padding 0), as torchdiffeq.
        backend: kept for symmetry with the other modules; ConcatConv2d alone runs eager
            convolutions (the fusion happens in :class:`ConcatConvGNAct` and the models).

    Shapes:
        t: Python number, 0-d tensor, or (N,) (one time per sample). x: (N, C_in, H, W).
        Output: (N, C_out, H_out, W_out).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        ksize=3,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        transpose: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        dim_in = check_positive_int(dim_in, "dim_in")
        dim_out = check_positive_int(dim_out, "dim_out")
        groups = check_positive_int(groups, "groups")
        if (dim_in + 1) % groups != 0 or dim_out % groups != 0:
            raise ValueError(
                f"groups: got {groups}, expected a divisor of both dim_in + 1 = {dim_in + 1} "
                f"(the time channel is an extra input channel) and dim_out = {dim_out}"
            )
        module = nn.ConvTranspose2d if transpose else nn.Conv2d
        self._layer = module(
            dim_in + 1,
            dim_out,
            kernel_size=ksize,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.dim_in = dim_in
        self.dim_out = dim_out
        self.transpose = bool(transpose)
        self.backend = backend

    @property
    def bias(self) -> Tensor | None:
        """The conv bias (C_out,), or None: ``_layer.bias``."""
        return self._layer.bias

    def _conv(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        layer = self._layer
        if self.transpose:
            return F.conv_transpose2d(
                x,
                weight,
                None,
                layer.stride,
                layer.padding,
                layer.output_padding,
                groups,
                layer.dilation,
            )
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, groups)

    def conv_x(self, x: Tensor) -> Tensor:
        """``conv(x, W_x)`` without bias: (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
        check_feature_map(x, "x", self.dim_in)
        w = self._layer.weight
        groups = self._layer.groups
        if groups == 1:
            w_x = w[1:] if self.transpose else w[:, 1:]
            return self._conv(x, w_x, 1)
        # Uneven split of x-channels across groups: prepend a zero time channel (exact).
        return self._conv(F.pad(x, (0, 0, 0, 0, 1, 0)), w, groups)

    def time_map(
        self,
        height: int,
        width: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``conv(1, W_t)``: the response to an all-ones time channel, (C_out, H_out, W_out).

        Recomputed on every call (it is a convolution of one 1-channel map) so it always follows
        the current weights, and gradients flow to the time-channel weights through it.
        """
        w = self._layer.weight
        dtype = w.dtype if dtype is None else dtype
        device = w.device if device is None else device
        ones = torch.ones(1, 1, height, width, dtype=dtype, device=device)
        groups = self._layer.groups
        out_per_group = self.dim_out // groups
        if self.transpose:
            w_t = w[:1]  # (1, C_out / groups, kh, kw): input channel 0 -> group-0 outputs
        else:
            w_t = w[:out_per_group, :1]  # group-0 outputs, input slot 0 (the time channel)
        tm = self._conv(ones, w_t.to(dtype), 1)[0]
        if groups > 1:
            zeros = tm.new_zeros(self.dim_out - out_per_group, *tm.shape[1:])
            tm = torch.cat([tm, zeros], 0)
        return tm

    def forward_parts(self, t, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """The pieces the fused op adds up: ``(conv_x(x), bias, time, time_map)``.

        ``conv_x(x) + bias + time * time_map`` is the ConcatConv output. ``time`` is ``t`` as a
        0-d or (N,) tensor in x's dtype.
        """
        check_feature_map(x, "x", self.dim_in)
        check_time(t, x.shape[0], "t")
        y = self.conv_x(x)
        tm = self.time_map(x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        return y, self._layer.bias, time_as_tensor(t, x), tm

    def forward(self, t, x: Tensor) -> Tensor:
        """ConcatConv output ``conv(cat([t * 1, x]), W) + b``: (N, C_out, H_out, W_out)."""
        y, b, time, tm = self.forward_parts(t, x)
        return add_addends(y, conv_bias=b, time=time, time_map=tm)

    def extra_repr(self) -> str:
        return f"dim_in={self.dim_in}, dim_out={self.dim_out}, transpose={self.transpose}"


def concat_conv_norm(
    conv: ConcatConv2d,
    norm: TimeAwareNorm,
    t,
    x: Tensor,
    pos: Tensor | None = None,
    emb: Tensor | None = None,
) -> Tensor:
    """``norm(conv(t, x) + pos + emb)`` with the conv output read once.

    Runs the bias-free convolution over C_in channels, then a single call of ``norm`` (one fused
    op call for :class:`~timeaware.nn.GroupNormAct`) with ``conv_bias``, ``time``, ``time_map``,
    ``pos`` and ``emb`` as addends.

    Shapes: t scalar / 0-d / (N,); x (N, C_in, H, W); pos (N or 1, H_out, W_out); emb
    (N, C_out). Returns (N, C_out, H_out, W_out).
    """
    y, b, time, tm = conv.forward_parts(t, x)
    return norm(y, emb=emb, pos=pos, conv_bias=b, time=time, time_map=tm)


class ConcatConvGNAct(nn.Module):
    """Fused block ``act(norm(ConcatConv2d(t, x) [+ pos] [+ emb]))``.

    The convolution runs bias-free over C_in channels; its output, the conv bias, ``t`` with the
    time map, and the optional positional embedding go into ONE call of the fused GroupNorm op.
    Submodules: ``conv`` (:class:`ConcatConv2d`, parameters in ``conv._layer``) and ``norm``.

    Args:
        dim_in, dim_out, ksize, stride, dilation, groups, bias, transpose: as
            :class:`ConcatConv2d`.
        padding: default 1 (``same`` for a 3x3 kernel, as in torchdiffeq's ODE function).
        num_groups: GroupNorm groups; None means ``min(32, dim_out)``.
        act: activation after the normalisation (see :class:`~timeaware.nn.GroupNormAct`).
        norm: normalisation kind for :func:`~timeaware.nn.make_norm` (default ``"group"``).
        eps: added to the variance.
        backend: backend of the fused op.

    Shapes:
        t: scalar / 0-d / (N,). x: (N, C_in, H, W). pos: (N or 1, H_out, W_out). emb:
        (N, C_out). Output: (N, C_out, H_out, W_out).
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        ksize=3,
        stride=1,
        padding=1,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        transpose: bool = False,
        num_groups: int | None = None,
        act: str = "relu",
        norm: str = "group",
        eps: float = 1e-5,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.conv = ConcatConv2d(
            dim_in, dim_out, ksize, stride, padding, dilation, groups, bias, transpose, backend
        )
        self.norm = make_norm(norm, dim_out, num_groups, act=act, backend=backend, eps=eps)

    def forward(self, t, x: Tensor, pos: Tensor | None = None, emb: Tensor | None = None):
        """See the class docstring."""
        return concat_conv_norm(self.conv, self.norm, t, x, pos=pos, emb=emb)


__all__ = ["ConcatConv2d", "ConcatConvGNAct", "concat_conv_norm"]
