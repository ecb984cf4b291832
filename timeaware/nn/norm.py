"""Normalisation + activation modules that take the timestep-embedding addends as arguments.

Every module here has the same forward signature,
``forward(x, emb=None, pos=None, conv_bias=None, time=None, time_map=None)``, and computes::

    u = x + conv_bias[c] + emb[n, c] + time[n] * time_map[c, h, w] + pos[n, h, w]
    y = act(norm(u))

:class:`GroupNormAct` runs this as one call of the fused op :func:`timeaware.ops.group_norm_act`
(one read of ``x``, one write of ``y``). :class:`BatchNormAct` and :class:`InstanceNormAct` are the
channel-wise normalisations the paper warns about; they add the addends and normalise with eager
PyTorch. Because the addends are arguments rather than pre-added, :mod:`timeaware.diagnostics` can
see exactly which part of a normalisation's input depends on time.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from .. import ops as _ops
from .._backend import BACKENDS
from ..reference import add_addends, group_norm_act_ref
from ._utils import (
    FUSED_ACTIVATIONS,
    canonical_act,
    check_channels,
    check_feature_map,
    check_positive_int,
    eager_act,
)

NORM_KINDS = ("group", "batch", "instance", "layer")


def _group_norm_act(*args, **kwargs):
    # Looked up at call time (not bound at import) so that a patched op is picked up.
    return _ops.group_norm_act(*args, **kwargs)


class TimeAwareNorm(nn.Module):
    """Marker base of the normalisations in this module.

    Subclasses implement ``forward(x, emb=None, pos=None, conv_bias=None, time=None,
    time_map=None)`` and :meth:`normalize`, the normalisation alone (affine included, activation
    excluded) in eager PyTorch, which :mod:`timeaware.diagnostics` uses.
    """

    act: str = "identity"
    kind: str = "?"

    def normalize(self, u: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_units(self) -> str:
        """Human-readable size of one normalisation unit, for reports."""
        return "?"


class GroupNormAct(TimeAwareNorm):
    """``act(GroupNorm(x + addends))`` as one fused op call; a drop-in for ``nn.GroupNorm``.

    Parameters and state dict are those of ``nn.GroupNorm`` (``weight`` and ``bias``, each (C,),
    present when ``affine``), so a GroupNorm checkpoint loads unchanged.

    Args:
        num_groups: G, a divisor of ``num_channels``. G=1 is LayerNorm over (C, H, W); G=C is
            InstanceNorm.
        num_channels: C.
        eps: added to the variance; >= 0 (0 is legal, as for ``nn.GroupNorm``).
        affine: learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
        act: ``"identity"``, ``"relu"`` or ``"silu"`` run inside the fused op; ``"softplus"``,
            ``"elu"`` and ``"sigmoid"`` are applied eagerly after an identity-activation fused
            normalisation. ``"swish"`` is an alias of ``"silu"``.
        backend: ``None`` (follow :func:`timeaware.use_backend` / the global default),
            ``"auto"``, ``"reference"`` or ``"triton"``; forwarded to the op. Checked here:
            an unknown name raises ValueError at construction.

    Shapes:
        x: (N, C, H, W). emb: (N, C). pos: (N or 1, H, W). conv_bias: (C,). time: Python number,
        0-d tensor or (N,), used with time_map: (C, H, W). Output: (N, C, H, W), x's dtype.
    """

    kind = "group"

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        act: str = "identity",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        num_groups = check_positive_int(num_groups, "num_groups")
        num_channels = check_positive_int(num_channels, "num_channels")
        if num_channels % num_groups != 0:
            raise ValueError(
                f"num_groups: got {num_groups}, which does not divide num_channels={num_channels}"
            )
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"eps: got {type(eps).__name__}, expected a float >= 0")
        if not eps >= 0:  # also rejects NaN
            raise ValueError(f"eps: got {eps!r}, expected a float >= 0 (as the op)")
        if backend is not None and (
            not isinstance(backend, str) or backend.lower() not in BACKENDS
        ):
            raise ValueError(f"backend: got {backend!r}, expected None or one of {BACKENDS}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = float(eps)
        self.affine = bool(affine)
        self.act = canonical_act(act)
        self.backend = backend
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_channels))
            self.bias = nn.Parameter(torch.empty(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight to ones and bias to zeros, as ``nn.GroupNorm``."""
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    @classmethod
    def from_group_norm(
        cls, gn: nn.GroupNorm, act: str = "identity", backend: str | None = None
    ) -> GroupNormAct:
        """Build a :class:`GroupNormAct` with the configuration and a copy of the parameters of
        ``gn`` (on the same device and dtype), followed by ``act``."""
        if not isinstance(gn, nn.GroupNorm):
            raise TypeError(f"gn: got {type(gn).__name__}, expected torch.nn.GroupNorm")
        m = cls(gn.num_groups, gn.num_channels, gn.eps, gn.affine, act=act, backend=backend)
        if gn.affine:
            m = m.to(device=gn.weight.device, dtype=gn.weight.dtype)
            with torch.no_grad():
                m.weight.copy_(gn.weight)
                m.bias.copy_(gn.bias)
        return m

    def forward(
        self,
        x: Tensor,
        emb: Tensor | None = None,
        pos: Tensor | None = None,
        conv_bias: Tensor | None = None,
        time: Tensor | float | None = None,
        time_map: Tensor | None = None,
    ) -> Tensor:
        """``act(group_norm(x + conv_bias + emb + time * time_map + pos))``; see the class doc.

        Like ``nn.GroupNorm`` it also accepts any (N, C, *) input when no spatial addend
        (``time_map``, ``pos``) is given.
        """
        if isinstance(x, Tensor) and x.dim() == 3 and x.shape[0] == self.num_channels != x.shape[1]:
            raise ValueError(
                f"x: got shape {tuple(x.shape)}, read as (N, C, *) with C={x.shape[1]}; it looks "
                f"like an unbatched (C, H, W) map with C={self.num_channels}: add the batch "
                "dimension with x.unsqueeze(0)"
            )
        if isinstance(x, Tensor) and x.dim() != 4 and time_map is None and pos is None:
            check_channels(x, "x", self.num_channels)
        else:
            check_feature_map(x, "x", self.num_channels)
        fused = self.act if self.act in FUSED_ACTIVATIONS else "identity"
        y = _group_norm_act(
            x,
            self.num_groups,
            self.weight,
            self.bias,
            self.eps,
            act=fused,
            conv_bias=conv_bias,
            emb=emb,
            time=time,
            time_map=time_map,
            pos=pos,
            backend=self.backend,
        )
        if fused != self.act:
            y = eager_act(y, self.act)
        return y

    def normalize(self, u: Tensor) -> Tensor:
        """Group normalisation with affine, without the activation, in eager PyTorch."""
        return group_norm_act_ref(u, self.num_groups, self.weight, self.bias, self.eps)

    def num_units(self) -> str:
        return f"G={self.num_groups}, C/G={self.num_channels // self.num_groups}"

    def extra_repr(self) -> str:
        s = f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
        s += f", act={self.act!r}"
        if self.backend is not None:
            s += f", backend={self.backend!r}"
        return s


class _EagerNormAct(TimeAwareNorm):
    """Shared forward of the eager (non-fused) normalisations."""

    def _prepare(self, x, emb, pos, conv_bias, time, time_map) -> Tensor:
        check_feature_map(x, "x", self.num_features)
        if (time is None) != (time_map is None):
            raise ValueError(
                "time, time_map: got only one of them, expected both (time * time_map) or neither"
            )
        return add_addends(x, conv_bias, emb, time, time_map, pos)

    def forward(
        self,
        x: Tensor,
        emb: Tensor | None = None,
        pos: Tensor | None = None,
        conv_bias: Tensor | None = None,
        time: Tensor | float | None = None,
        time_map: Tensor | None = None,
    ) -> Tensor:
        """``act(norm(x + conv_bias + emb + time * time_map + pos))`` in eager PyTorch.

        Shapes as :class:`GroupNormAct`.
        """
        u = self._prepare(x, emb, pos, conv_bias, time, time_map)
        return eager_act(self.normalize(u), self.act)


class BatchNormAct(_EagerNormAct, nn.BatchNorm2d):
    """``act(BatchNorm2d(x + addends))`` in eager PyTorch; state dict of ``nn.BatchNorm2d``.

    In training mode BatchNorm uses the batch statistics of each channel, so a per-channel offset
    shared by the batch (the ConcatConv time channel, an embedding of one t) is removed exactly
    (paper Eq. 5). Args as ``nn.BatchNorm2d`` plus ``act`` (any of
    :data:`timeaware.nn.ACTIVATIONS`).
    """

    kind = "batch"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        act: str = "identity",
    ) -> None:
        check_positive_int(num_features, "num_features")
        nn.BatchNorm2d.__init__(self, num_features, eps, momentum, affine, track_running_stats)
        self.act = canonical_act(act)

    def normalize(self, u: Tensor) -> Tensor:
        """BatchNorm2d (mode-dependent statistics, affine), without the activation."""
        return nn.BatchNorm2d.forward(self, u)

    def num_units(self) -> str:
        return "per channel (N, H, W)"

    def extra_repr(self) -> str:
        return nn.BatchNorm2d.extra_repr(self) + f", act={self.act!r}"


class InstanceNormAct(_EagerNormAct, nn.InstanceNorm2d):
    """``act(InstanceNorm2d(x + addends))`` in eager PyTorch; state dict of ``nn.InstanceNorm2d``.

    ``affine`` defaults to True (unlike ``nn.InstanceNorm2d``) so that it has the same parameters
    as a GroupNorm. Mathematically GroupNorm with G=C.
    """

    kind = "instance"

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
        act: str = "identity",
    ) -> None:
        check_positive_int(num_features, "num_features")
        nn.InstanceNorm2d.__init__(self, num_features, eps, momentum, affine, track_running_stats)
        self.act = canonical_act(act)

    def normalize(self, u: Tensor) -> Tensor:
        """InstanceNorm2d (affine), without the activation."""
        return nn.InstanceNorm2d.forward(self, u)

    def num_units(self) -> str:
        return "per (sample, channel) (H, W)"

    def extra_repr(self) -> str:
        return nn.InstanceNorm2d.extra_repr(self) + f", act={self.act!r}"


def make_norm(
    kind: str,
    channels: int,
    groups: int | None = None,
    act: str = "identity",
    backend: str | None = None,
    eps: float = 1e-5,
) -> TimeAwareNorm:
    """Build the normalisation (+ activation) used by the models, by name.

    Args:
        kind: ``"group"`` (fused; ``groups`` defaults to ``min(32, channels)``), ``"layer"``
            (fused GroupNorm with G=1: LayerNorm over (C, H, W) with a per-channel affine),
            ``"batch"`` (eager ``BatchNorm2d``) or ``"instance"`` (eager ``InstanceNorm2d``,
            affine).
        channels: C.
        groups: number of groups for ``"group"``; must be None (or 1 for ``"layer"``) otherwise.
        act: activation after the normalisation (see :class:`GroupNormAct`).
        backend: backend of the fused op (group/layer only).
        eps: added to the variance.

    Returns:
        A :class:`TimeAwareNorm` whose forward takes ``(x, emb=, pos=, conv_bias=, time=,
        time_map=)``.
    """
    if not isinstance(kind, str) or kind not in NORM_KINDS:
        raise ValueError(f"kind: got {kind!r}, expected one of {NORM_KINDS}")
    channels = check_positive_int(channels, "channels")
    if kind == "group":
        g = min(32, channels) if groups is None else check_positive_int(groups, "groups")
        if channels % g != 0:
            hint = " (the default min(32, C))" if groups is None else ""
            raise ValueError(
                f"groups: got {g}{hint}, which does not divide the channel count {channels}"
            )
        return GroupNormAct(g, channels, eps, act=act, backend=backend)
    if kind == "layer":
        if groups not in (None, 1):
            raise ValueError(f"groups: got {groups!r} with kind='layer', expected None or 1")
        return GroupNormAct(1, channels, eps, act=act, backend=backend)
    if groups is not None:
        raise ValueError(f"groups: got {groups!r} with kind={kind!r}, expected None")
    if kind == "batch":
        return BatchNormAct(channels, eps, act=act)
    return InstanceNormAct(channels, eps, act=act)
