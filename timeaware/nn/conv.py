"""ConcatConv2d computed as a convolution over C channels plus a time map (DESIGN section 2).

torchdiffeq's ConcatConv2d convolves ``cat([t * ones, x])``. Splitting the weight into the time
channel and the rest, ``W = [W_t | W_x]``, and using linearity::

    conv(cat([t * 1, x]), W) + b  ==  conv(x, W_x) + b + t * conv(1, W_t)

``time_map = conv(1, W_t)`` (one tiny convolution of an all-ones map with the same stride,
padding and dilation) is constant in the interior and differs at zero-padded borders; it
depends on the weights only. The fused path runs the convolution over C channels with no bias
and hands ``bias``, ``t`` and ``time_map`` to the fused GroupNorm op, so the concatenation is
never materialised in the forward and the convolution's output is read once.

The time map and the contiguous x-part of the weight are cached per module (see
:meth:`ConcatConv2d.cached_parts`): they are recomputed only when the weight changes (in-place
update, ``load_state_dict``, ``.to()``), not at every call. Gradients w.r.t. the weight's time
channel stay exact; two custom autograd functions provide them:

* :class:`_ConvXExact` (eager/reference path): ``y = conv(x, W_x)`` plus the cached time map as
  a second output that is linked to ``W``; its backward is the textbook vector-Jacobian
  product (``dW_t = conv_w_grad(dtime_map, 1)``), written with differentiable ops, so double
  backward stays exact.
* :class:`_ConvXRouted` (fused path): ``y = conv(x, W_x)`` only; the fused op adds
  ``t * time_map`` with a *detached* time map, and this function's backward returns the
  gradient of the FULL weight as if ``y`` were ``conv(cat([t * 1, x]), W)``: one
  ``convolution_backward`` over the concatenation (materialised only in backward) gives ``dx``
  and ``dW`` (time channel included) in one call, and the op computes no ``dtime_map`` at all.
  Exact to first order (the op's ``du`` is ``dy``); the fused op itself has no double
  backward, so neither has this path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._backend import resolve_backend
from ..reference import add_addends
from ._utils import check_feature_map, check_positive_int, check_time, time_as_tensor
from .norm import GroupNormAct, TimeAwareNorm, make_norm


# --------------------------------------------------------------------------------------------
# Cached parts of the weight
# --------------------------------------------------------------------------------------------
@dataclass
class _Parts:
    """Tensors derived from the weight for one (H, W, compute dtype); all detached.

    ``pin`` (the detached weight) keeps the weight's storage alive so that no other tensor can
    be allocated at ``ptr`` while the entry exists; with ``version`` (the weight's version
    counter, bumped by every in-place update) it identifies the weight's contents.
    """

    ptr: int
    version: int
    pin: Tensor
    w_x: Tensor  # (C_out, C_in, kh, kw) contiguous, compute dtype
    ones: Tensor  # (1, 1, H, W), compute dtype
    time_map: Tensor  # (C_out, H_out, W_out) contiguous, compute dtype


def _needs_plain_autograd(weight: Tensor) -> bool:
    """True while torch.compile traces (it sees plain ops, not our autograd functions) and for
    weights without storage (torch.func transforms): those calls take the uncached path."""
    if torch.compiler.is_compiling():
        return True
    try:
        weight.data_ptr()
    except RuntimeError:
        return True
    return False


def _capturing(x: Tensor) -> bool:
    """True while a CUDA graph is captured on x's device: the graph must recompute the cached
    parts from the weights at every replay, so the cache is bypassed."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The convolution's dtype: the autocast dtype under autocast, else x's (== weight's)."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    if x.dtype != weight.dtype:
        raise TypeError(
            f"x: got dtype {x.dtype}, expected the weights' dtype {weight.dtype} "
            "(or run under torch.autocast)"
        )
    return x.dtype


def _scalar_or_per_sample(t: Tensor, n: int, h: int, w: int) -> Tensor:
    """``t`` (0-d or (N,)) as an (N, 1, H, W) view (expanded, no copy)."""
    return t.reshape(-1, 1, 1, 1).expand(n, 1, h, w)


class _ConvXExact(torch.autograd.Function):
    """``(conv(x, W_x), time_map)`` with the textbook vector-Jacobian product.

    Inputs: x (N, C_in, H, W); weight (C_out, 1 + C_in, kh, kw), the module's full weight;
    parts: the :class:`_Parts` of this call (detached); conv: (stride, padding, dilation).
    Outputs: y (N, C_out, H_out, W_out), time_map (C_out, H_out, W_out) linked to ``weight``.
    The backward uses only differentiable ops on the saved inputs, so double backward works.
    """

    @staticmethod
    def forward(ctx, x, weight, parts, conv):
        stride, padding, dilation = conv
        y = F.conv2d(x, parts.w_x, None, stride, padding, dilation)
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        ctx.ones = parts.ones
        ctx.cdtype = parts.w_x.dtype
        return y, parts.time_map.view_as(parts.time_map)

    @staticmethod
    def backward(ctx, gy, gtm):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wc = weight.to(ctx.cdtype)
        dx = dw = None
        if need_x or need_w:
            dx, dw_x, _ = torch.ops.aten.convolution_backward(
                gy.to(ctx.cdtype), x, wc[:, 1:], None, stride, padding, dilation,
                False, [0, 0], 1, [need_x, need_w, False],
            )  # fmt: skip
        if need_w:
            if gtm is None:
                dw_t = torch.zeros_like(wc[:, :1])
            else:
                _, dw_t, _ = torch.ops.aten.convolution_backward(
                    gtm.to(ctx.cdtype).unsqueeze(0), ctx.ones, wc[:, :1], None,
                    stride, padding, dilation, False, [0, 0], 1, [False, True, False],
                )  # fmt: skip
            dw = torch.cat([dw_t, dw_x], 1).to(weight.dtype)
        return dx, dw, None, None


class _ConvXRouted(torch.autograd.Function):
    """``conv(x, W_x)`` whose backward returns the gradient of the full weight (time channel
    included) as if the output were ``conv(cat([t * 1, x]), W)``.

    For the fused path only: the caller adds ``t * time_map`` with a DETACHED time map exactly
    once (inside the fused op), so the time channel's gradient, which reaches the op's input as
    ``du == dy``, is produced here instead of by a ``dtime_map`` reduction. ``t`` is a value
    here (its own gradient is the op's ``dtime``).

    Inputs: x (N, C_in, H, W); weight (C_out, 1 + C_in, kh, kw); time: detached 0-d or (N,)
    tensor; parts: :class:`_Parts`; conv: (stride, padding, dilation). Output:
    (N, C_out, H_out, W_out).
    """

    @staticmethod
    def forward(ctx, x, weight, time, parts, conv):
        stride, padding, dilation = conv
        y = F.conv2d(x, parts.w_x, None, stride, padding, dilation)
        ctx.save_for_backward(x, weight, time)
        ctx.conv = conv
        ctx.w_x = parts.w_x
        ctx.cdtype = parts.w_x.dtype
        return y

    @staticmethod
    @once_differentiable  # the routing is exact to first order only: refuse double backward
    def backward(ctx, gy):
        x, weight, time = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gy = gy.to(ctx.cdtype)
        if not need_w:
            if not need_x:
                return None, None, None, None, None
            dx, _, _ = torch.ops.aten.convolution_backward(
                gy, x, ctx.w_x, None, stride, padding, dilation, False, [0, 0], 1,
                [True, False, False],
            )  # fmt: skip
            return dx, None, None, None, None
        n, _, h, w = x.shape
        tt = _scalar_or_per_sample(time.to(ctx.cdtype), n, h, w)
        inp = torch.cat([tt, x], 1)  # (N, 1 + C_in, H, W): the only materialisation
        dinp, dw, _ = torch.ops.aten.convolution_backward(
            gy, inp, weight.to(ctx.cdtype), None, stride, padding, dilation, False, [0, 0], 1,
            [need_x, True, False],
        )  # fmt: skip
        # dx is a channel slice of dinp: (H, W)-dense with strides ((1 + C_in) H W, H W, W, 1)
        dx = dinp[:, 1:] if need_x else None
        return dx, dw.to(weight.dtype), None, None, None


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class ConcatConv2d(nn.Module):
    """torchdiffeq's ``ConcatConv2d`` (examples/odenet_mnist.py), computed without the concat.

    The parameters live in ``_layer``, an ``nn.Conv2d`` (or ``nn.ConvTranspose2d``) on
    ``dim_in + 1`` input channels with the time channel first, exactly as in torchdiffeq, so a
    state dict of that module loads unchanged. ``forward(t, x)`` equals
    ``_layer(cat([t * ones, x], 1))`` up to floating-point rounding, including at zero-padded
    borders, for any stride, dilation, groups and for the transposed convolution, and so do the
    gradients of ``x``, ``t`` and every weight (the time channel's included).

    With ``groups == 1`` and no transpose (torchdiffeq's ODE function) the time map and the
    contiguous x-part of the weight are cached (:meth:`cached_parts`) and reused until the
    weight changes; the concatenation is never materialised in the forward. With ``groups > 1``
    the time channel is input channel 0 of group 0 (torchdiffeq's layout), so it feeds only the
    first ``dim_out / groups`` output channels and the x-channels are split unevenly across
    groups; that case and the transposed convolution take a slower general path (x convolved
    with one zero channel prepended, time map recomputed at every call), exact as well.

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

    Attributes:
        use_cache: True (default): reuse the time map and weight parts until the weight
            changes. False: recompute them at every call (same numbers and gradients).

    Note:
        The cache notices every in-place update of the weight made through the parameter
        (optimizer steps, ``load_state_dict``, ``torch.no_grad(): w.add_(...)``), ``.to()``
        and a new weight tensor. It cannot notice writes through an alias that does not share
        the parameter's version counter, ``w.data.add_(...)``: call :meth:`clear_cache` after
        those, or set ``use_cache = False`` around code that does it repeatedly (e.g.
        ``torch.autograd.gradcheck`` with the weight as an input, which perturbs ``.data``).
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
        self.use_cache = True
        self._cache: dict[tuple, _Parts] = {}

    # ---------------------------------------------------------------------- cache handling
    def clear_cache(self) -> None:
        """Drop the cached time maps and weight parts (see the class note)."""
        self._cache.clear()

    def _apply(self, fn, recurse=True):
        self._cache.clear()  # .to(), .cuda(), .double(), ...: new weight tensors
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # not pickled or deep-copied: it is rebuilt from the weight
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_cache", {})
        self.__dict__.setdefault("use_cache", True)  # pickled before the cache existed

    @property
    def fast_path(self) -> bool:
        """True when the cached path applies (``groups == 1`` and not transposed)."""
        return self._layer.groups == 1 and not self.transpose

    def _fresh_parts(self, height: int, width: int, cdtype: torch.dtype) -> _Parts:
        w = self._layer.weight
        version = w._version
        with torch.no_grad(), torch.inference_mode(False):
            pin = w.detach()
            wc = pin.to(cdtype)
            ones = torch.ones(1, 1, height, width, dtype=cdtype, device=w.device)
            layer = self._layer
            tm = F.conv2d(ones, wc[:, :1], None, layer.stride, layer.padding, layer.dilation)
            parts = _Parts(
                ptr=w.data_ptr(),
                version=version,
                pin=pin,
                w_x=wc[:, 1:].contiguous(),
                ones=ones,
                time_map=tm[0].contiguous(),
            )
        return parts

    def cached_parts(
        self, height: int, width: int, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """The cached ``(time_map, w_x)`` for an input of spatial size (height, width).

        ``time_map`` = ``conv(1, W_t)``: (C_out, H_out, W_out); ``w_x`` = ``W[:, 1:]``:
        (C_out, C_in, kh, kw), both contiguous, detached, in ``dtype`` (default: the
        weight's). Recomputed when the weight changed since the last call. Only for the
        cached path (``groups == 1``, not transposed).
        """
        if not self.fast_path:
            raise ValueError(
                f"cached_parts: got groups={self._layer.groups}, transpose={self.transpose}, "
                "expected groups=1 and transpose=False (the cached path)"
            )
        height = check_positive_int(height, "height")
        width = check_positive_int(width, "width")
        dtype = self._layer.weight.dtype if dtype is None else dtype
        p = self._parts(height, width, dtype, use_cache=True)
        return p.time_map, p.w_x

    def _parts(self, height: int, width: int, cdtype: torch.dtype, use_cache: bool) -> _Parts:
        if not use_cache:
            return self._fresh_parts(height, width, cdtype)
        w = self._layer.weight
        key = (height, width, cdtype)
        p = self._cache.get(key)
        if p is None or p.version != w._version or p.ptr != w.data_ptr() or p.pin.dtype != w.dtype:
            p = self._fresh_parts(height, width, cdtype)
            self._cache[key] = p
        return p

    # ------------------------------------------------------------------------- the maths
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
        """``conv(x, W_x)`` without bias, plain autograd (the gradient reaches ``W_x`` only):
        (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""
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

        Recomputed at every call with plain autograd (gradients flow to the time-channel
        weights through it); the forward uses the cached copy instead (:meth:`cached_parts`).
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

    def forward_parts(
        self, t, x: Tensor, fused: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """The pieces the fused op adds up: ``(y, bias, time, time_map)``.

        ``y + bias + time * time_map`` is the ConcatConv output (``y`` the bias-free
        convolution of ``x`` with ``W_x``), with the gradients of the concatenation form.
        ``time`` is ``t`` as a 0-d or (N,) tensor in x's dtype.

        Args:
            t: Python number, 0-d tensor or (N,).
            x: (N, C_in, H, W).
            fused: False (default): ``time_map`` is linked to the weight in the autograd
                graph (the time channel's gradient flows through it; double backward works).
                True, for the fused op only: ``time_map`` is the cached map, DETACHED, and
                ``y``'s backward returns the time channel's gradient instead; the caller must
                add ``time * time_map`` exactly once, to ``y``'s output. The cheap form
                (DESIGN section 8), exact to first order.

        Returns:
            y (N, C_out, H_out, W_out), bias (C_out,) or None, time (0-d or (N,)), time_map
            (C_out, H_out, W_out). ``time_map`` is (a view of) the cached tensor: read it, do
            not modify it in place.
        """
        check_feature_map(x, "x", self.dim_in)
        check_time(t, x.shape[0], "t")
        time = time_as_tensor(t, x)
        layer = self._layer
        w = layer.weight
        if not self.fast_path or _needs_plain_autograd(w):
            y = self.conv_x(x)
            tm = self.time_map(x.shape[2], x.shape[3], dtype=y.dtype, device=x.device)
            return y, layer.bias, time, tm
        cdtype = _compute_dtype(x, w)
        use_cache = self.use_cache and not _capturing(x)
        parts = self._parts(x.shape[2], x.shape[3], cdtype, use_cache)
        conv = (layer.stride, layer.padding, layer.dilation)
        xc = x.to(cdtype)
        if fused:
            y = _ConvXRouted.apply(xc, w, time.detach(), parts, conv)
            return y, layer.bias, time, parts.time_map
        y, tm = _ConvXExact.apply(xc, w, parts, conv)
        return y, layer.bias, time, tm

    def forward(self, t, x: Tensor) -> Tensor:
        """ConcatConv output ``conv(cat([t * 1, x]), W) + b``: (N, C_out, H_out, W_out)."""
        y, b, time, tm = self.forward_parts(t, x)
        return add_addends(y, conv_bias=b, time=time, time_map=tm)

    def extra_repr(self) -> str:
        return f"dim_in={self.dim_in}, dim_out={self.dim_out}, transpose={self.transpose}"


def runs_fused(norm: TimeAwareNorm, y_like: Tensor) -> bool:
    """Whether ``norm`` will run the fused Triton op on a conv output like ``y_like``.

    Args:
        norm: a normalisation of :mod:`timeaware.nn`.
        y_like: a tensor with the conv output's device and dtype, (N, C, H, W).

    Returns:
        True for a :class:`~timeaware.nn.GroupNormAct` whose backend resolves to ``"triton"``
        for this device and dtype (and a non-empty batch).
    """
    if not isinstance(norm, TimeAwareNorm):
        raise TypeError(f"norm: got {type(norm).__name__}, expected a timeaware normalisation")
    if not isinstance(y_like, Tensor):
        raise TypeError(f"y_like: got {type(y_like).__name__}, expected a torch.Tensor")
    if not isinstance(norm, GroupNormAct) or y_like.shape[0] == 0:
        return False
    return resolve_backend(norm.backend, y_like.device, y_like.dtype) == "triton"


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
    ``pos`` and ``emb`` as addends. When the norm runs the fused Triton op the time map is the
    cached, detached one and the convolution's backward carries the time channel's gradient
    (:meth:`ConcatConv2d.forward_parts` with ``fused=True``); otherwise the exact form.

    Shapes: t scalar / 0-d / (N,); x (N, C_in, H, W); pos (N or 1, H_out, W_out); emb
    (N, C_out). Returns (N, C_out, H_out, W_out).
    """
    if not isinstance(conv, ConcatConv2d):
        raise TypeError(f"conv: got {type(conv).__name__}, expected a ConcatConv2d")
    check_feature_map(x, "x", conv.dim_in)
    fused = conv.fast_path and runs_fused(norm, x)
    y, b, time, tm = conv.forward_parts(t, x, fused=fused)
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


__all__ = ["ConcatConv2d", "ConcatConvGNAct", "concat_conv_norm", "runs_fused"]
