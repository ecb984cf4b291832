"""The Neural ODE function of the paper: [GN-Act-ConcatConv-GN-Act-ConcatConv-GN]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._utils import (
    canonical_act,
    check_feature_map,
    check_positive_int,
    check_spatial,
    check_time,
    time_as_tensor,
)
from ..nn.conv import ConcatConv2d, concat_conv_norm, runs_fused
from ..nn.embedding import PositionalLinear, TimeMLP
from ..nn.init import apply_zero_bias, canonical_zero_bias
from ..nn.norm import NORM_KINDS, make_norm

INJECT_ODE = (None, "linear")
TIME_EMBED = ("concat", "mlp")


class ODEFunc(nn.Module):
    """The paper's ODE function ``f(t, x)``: [GN-Act-ConcatConv-GN-Act-ConcatConv-GN].

    With the defaults it is torchdiffeq's example ``ODEfunc`` (examples/odenet_mnist.py):
    submodules ``norm1``, ``conv1`` (``conv1._layer``), ``norm2``, ``conv2``, ``norm3``, the same
    state dict, and the same output. It runs as three calls of the fused op:

    * ``norm1`` + act on ``x``;
    * ``conv1`` runs bias-free on C channels; its output, bias, ``t * time_map`` (and the
      positional embedding) are added inside the ``norm2`` + act call;
    * likewise ``conv2`` -> ``norm3`` (no activation).

    Args:
        channels: C, the state's channel count.
        groups: GroupNorm groups; None means ``min(32, C)`` (torchdiffeq's ``norm``). Only for
            ``norm="group"``.
        act: ``"relu"`` (default), ``"silu"``, ``"softplus"``, ``"elu"`` or ``"sigmoid"`` (paper
            Appendix A). relu/silu run inside the fused op; the others run eagerly after an
            identity-activation fused normalisation.
        norm: ``"group"``, ``"batch"``, ``"instance"`` or ``"layer"`` (see
            :func:`timeaware.nn.make_norm`).
        inject: None or ``"linear"``: add the positional timestep embedding ``t * P``
            (:class:`timeaware.nn.PositionalLinear`, modules ``pos1``/``pos2``) before ``norm2``
            and ``norm3``; needs ``spatial_size``.
        zero_bias: bias-initialisation policy (:func:`timeaware.nn.apply_zero_bias`):
            ``"none"``, ``"operand"``, ``"timestep"``, ``"all"``, or a bool (True = ``"operand"``).
        time_embed: ``"concat"`` (ConcatConv, default) or ``"mlp"``: plain convolutions
            ``conv1``/``conv2`` plus an additive per-channel embedding ``emb1``/``emb2``
            (:class:`timeaware.nn.TimeMLP`), the setting of the paper's Table 2.
        spatial_size: (H, W) of the state; needed by ``inject="linear"``.
        backend: backend of the fused op.

    Attributes:
        nfe: number of evaluations since the last :meth:`reset_nfe`.

    Shapes:
        t: Python number, 0-d tensor or (N,). x: (N, C, H, W). Output: (N, C, H, W).
    """

    def __init__(
        self,
        channels: int = 64,
        groups: int | None = None,
        act: str = "relu",
        norm: str = "group",
        inject: str | None = None,
        zero_bias="none",
        time_embed: str = "concat",
        spatial_size: tuple[int, int] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        c = check_positive_int(channels, "channels")
        act = canonical_act(act)
        if norm not in NORM_KINDS:
            raise ValueError(f"norm: got {norm!r}, expected one of {NORM_KINDS}")
        if inject not in INJECT_ODE:
            raise ValueError(f"inject: got {inject!r}, expected one of {INJECT_ODE}")
        if time_embed not in TIME_EMBED:
            raise ValueError(f"time_embed: got {time_embed!r}, expected one of {TIME_EMBED}")
        zero_bias = canonical_zero_bias(zero_bias)
        if inject is not None:
            if spatial_size is None:
                raise ValueError(f"spatial_size: got None with inject={inject!r}, expected (H, W)")
            spatial_size = _check_size(spatial_size)
        self.channels = c
        self.act = act
        self.norm_kind = norm
        self.inject = inject
        self.zero_bias = zero_bias
        self.time_embed = time_embed
        self.spatial_size = spatial_size
        self.backend = backend

        self.norm1 = make_norm(norm, c, groups, act=act, backend=backend)
        if time_embed == "concat":
            self.conv1 = ConcatConv2d(c, c, 3, 1, 1)
        else:
            self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
            self.emb1 = TimeMLP(c)
        self.norm2 = make_norm(norm, c, groups, act=act, backend=backend)
        if time_embed == "concat":
            self.conv2 = ConcatConv2d(c, c, 3, 1, 1)
        else:
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
            self.emb2 = TimeMLP(c)
        self.norm3 = make_norm(norm, c, groups, act="identity", backend=backend)
        if inject == "linear":
            self.pos1 = PositionalLinear(*spatial_size)
            self.pos2 = PositionalLinear(*spatial_size)
        self.nfe = 0
        apply_zero_bias(self, zero_bias)

    def reset_nfe(self) -> None:
        """Set :attr:`nfe` to 0."""
        self.nfe = 0

    def _concat_time(self, t, x: Tensor):
        """``t`` for both ConcatConvs, converted once. On the fused path a 0-d time becomes one
        contiguous (N,) tensor shared by the two op calls (the op would otherwise copy its
        expansion at each call)."""
        check_time(t, x.shape[0], "t")
        time = time_as_tensor(t, x)
        if time.dim() == 0 and self.conv1.fast_path and runs_fused(self.norm2, x):
            time = time.expand(x.shape[0]).contiguous()
        return time

    def _conv_norm(self, conv, emb_mlp, pos_mod, norm, t, h: Tensor, time=None) -> Tensor:
        pos = pos_mod(t) if pos_mod is not None else None
        if self.time_embed == "concat":
            return concat_conv_norm(conv, norm, time, h, pos=pos)
        y = F.conv2d(h, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        emb = emb_mlp(t, batch=h.shape[0]).to(h.dtype).contiguous()
        return norm(y, emb=emb, pos=pos, conv_bias=conv.bias)

    def forward(self, t, x: Tensor) -> Tensor:
        """``f(t, x)``: see the class docstring."""
        self.nfe += 1
        check_feature_map(x, "x", self.channels)
        if self.spatial_size is not None:
            check_spatial(x, self.spatial_size)
        time = self._concat_time(t, x) if self.time_embed == "concat" else None
        h = self.norm1(x)
        h = self._conv_norm(
            self.conv1,
            getattr(self, "emb1", None),
            getattr(self, "pos1", None),
            self.norm2,
            t,
            h,
            time,
        )
        return self._conv_norm(
            self.conv2,
            getattr(self, "emb2", None),
            getattr(self, "pos2", None),
            self.norm3,
            t,
            h,
            time,
        )

    def extra_repr(self) -> str:
        parts = [f"channels={self.channels}", f"act={self.act!r}", f"norm={self.norm_kind!r}"]
        if self.inject:
            parts.append(f"inject={self.inject!r}")
        if self.zero_bias != "none":
            parts.append(f"zero_bias={self.zero_bias!r}")
        if self.time_embed != "concat":
            parts.append(f"time_embed={self.time_embed!r}")
        return ", ".join(parts)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"spatial_size: got {size!r}, expected (H, W)") from None
    return check_positive_int(h, "spatial_size[0]"), check_positive_int(w, "spatial_size[1]")
