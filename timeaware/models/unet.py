"""DDPM U-Net (Ho et al. 2020) built from fused GroupNorm + Swish + embedding calls."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._utils import check_feature_map, check_positive_int
from ..nn.embedding import PositionalLinear, PositionalMLP, TimestepMLP
from ..nn.init import apply_zero_bias, canonical_zero_bias, mark_timestep_branch
from ..nn.norm import NORM_KINDS, make_norm

INJECT_UNET = (None, "linear", "mlp")


def _norm(kind: str, channels: int, groups: int | None, act: str, backend):
    return make_norm(kind, channels, groups if kind == "group" else None, act=act, backend=backend)


class AttnBlock(nn.Module):
    """DDPM self-attention block: x + proj(attention(GN(x))), single head over H*W positions.

    Shapes: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self, channels: int, groups: int = 32, norm: str = "group", backend: str | None = None
    ):
        super().__init__()
        self.norm = _norm(norm, channels, groups, "identity", backend)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(n, c, h, w))


class ResBlock(nn.Module):
    """DDPM residual block [GN-Swish-Conv-Emb-GN-Swish-Dropout-Conv] + shortcut (+ attention).

    Two calls of the fused op: ``norm1`` + Swish on ``x``; then ``conv1`` runs bias-free and its
    output, its bias, the projected timestep embedding ``temb_proj(swish(temb))`` and the optional
    positional embedding are added inside the ``norm2`` + Swish call.

    Args:
        in_channels, out_channels: C_in, C_out.
        temb_dim: width of the timestep embedding (DDPM: 4 * ch).
        dropout: before ``conv2``.
        groups: GroupNorm groups (must divide C_in and C_out).
        attn: append an :class:`AttnBlock` after the residual sum.
        norm: normalisation kind (:func:`timeaware.nn.make_norm`), default ``"group"``.
        backend: backend of the fused op.

    Shapes:
        x: (N, C_in, H, W). temb: (N, temb_dim). pos: (N or 1, H, W) or None.
        Output: (N, C_out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_dim: int,
        dropout: float = 0.1,
        groups: int = 32,
        attn: bool = False,
        norm: str = "group",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        out_channels = check_positive_int(out_channels, "out_channels")
        temb_dim = check_positive_int(temb_dim, "temb_dim")
        self.in_channels, self.out_channels, self.temb_dim = in_channels, out_channels, temb_dim
        self.norm1 = _norm(norm, in_channels, groups, "silu", backend)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.temb_proj = mark_timestep_branch(nn.Linear(temb_dim, out_channels))
        self.norm2 = _norm(norm, out_channels, groups, "silu", backend)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.shortcut = nn.Identity()
        self.attn = AttnBlock(out_channels, groups, norm, backend) if attn else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, pos: Tensor | None = None) -> Tensor:
        """See the class docstring."""
        check_feature_map(x, "x", self.in_channels)
        if not isinstance(temb, Tensor) or temb.shape != (x.shape[0], self.temb_dim):
            got = tuple(temb.shape) if isinstance(temb, Tensor) else type(temb).__name__
            raise ValueError(
                f"temb: got {got}, expected (N, temb_dim) = ({x.shape[0]}, {self.temb_dim})"
            )
        h = self.norm1(x)
        h = F.conv2d(h, self.conv1.weight, None, 1, 1)
        emb = self.temb_proj(F.silu(temb)).to(h.dtype)
        h = self.norm2(h, emb=emb, pos=pos, conv_bias=self.conv1.bias)
        h = self.conv2(self.dropout(h))
        return self.attn(self.shortcut(x) + h)


class Downsample(nn.Module):
    """3x3 convolution with stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 upsampling then a 3x3 convolution: (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    """DDPM's U-Net (CIFAR-10 configuration by default: 35.7M parameters).

    ``time_embed`` (sinusoidal(ch) -> Linear -> Swish -> Linear, width 4 * ch) conditions every
    :class:`ResBlock`. ``head`` conv -> ``down`` (per level: ``num_res_blocks`` ResBlocks, with
    attention at ``attn_resolutions``, then a stride-2 conv except at the last level) -> ``mid``
    (ResBlock+attention, ResBlock) -> ``up`` (per level ``num_res_blocks + 1`` ResBlocks on the
    concatenated skip, then nearest upsampling + conv) -> ``tail_norm`` + Swish (fused) ->
    ``tail_conv``.

    Weights are initialised as in DDPM (Xavier-uniform; the last conv of every residual branch,
    of the attention and of the output scaled by 1e-5). Biases start at PyTorch's default and
    then the ``zero_bias`` policy applies (``"all"`` gives DDPM's all-zero biases).

    Args:
        in_channels: image channels (input and output).
        ch: base width.
        ch_mult: width multiplier per resolution level.
        num_res_blocks: ResBlocks per level on the way down.
        attn_resolutions: resolutions (in pixels) that get self-attention.
        dropout: in every ResBlock.
        groups: GroupNorm groups; must divide ``ch`` and every ``ch * m``.
        image_size: input H = W, divisible by ``2 ** (len(ch_mult) - 1)``.
        inject: None, ``"linear"`` (:class:`~timeaware.nn.PositionalLinear` per resolution,
            ``p = (t / num_timesteps) * P``) or ``"mlp"`` (:class:`~timeaware.nn.PositionalMLP`
            per resolution, a branch off the sinusoidal embedding); the map of a block's
            resolution is added in its ``norm2`` call. Modules in ``pos_embed``.
        zero_bias: :func:`~timeaware.nn.apply_zero_bias` policy or bool.
        backend: backend of the fused op.
        num_timesteps: T, scales t for ``inject="linear"``.
        norm: normalisation kind for the experiments (default ``"group"``).

    Shapes:
        x: (N, in_channels, image_size, image_size). t: (N,) integer or float timesteps (or a
        scalar, broadcast). Output: (N, in_channels, image_size, image_size), the predicted noise.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions=(16,),
        dropout: float = 0.1,
        groups: int = 32,
        image_size: int = 32,
        inject: str | None = None,
        zero_bias="none",
        backend: str | None = None,
        *,
        num_timesteps: int = 1000,
        norm: str = "group",
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        ch = check_positive_int(ch, "ch", minimum=2)
        ch_mult = tuple(ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult: got an empty sequence, expected at least one level")
        for m in ch_mult:
            check_positive_int(m, "ch_mult[i]")
        num_res_blocks = check_positive_int(num_res_blocks, "num_res_blocks")
        image_size = check_positive_int(image_size, "image_size")
        levels = len(ch_mult)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(
                f"image_size: got {image_size}, expected a multiple of 2 ** (len(ch_mult) - 1) "
                f"= {2 ** (levels - 1)}"
            )
        if norm not in NORM_KINDS:
            raise ValueError(f"norm: got {norm!r}, expected one of {NORM_KINDS}")
        if norm == "group":
            groups = check_positive_int(groups, "groups")
            widths = sorted({ch, *(ch * m for m in ch_mult)})
            if any(w % groups for w in widths):
                raise ValueError(
                    f"groups: got {groups}, expected a divisor of every channel count of the "
                    f"U-Net (ch and ch * ch_mult: {widths})"
                )
        if inject not in INJECT_UNET:
            raise ValueError(f"inject: got {inject!r}, expected one of {INJECT_UNET}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: got {dropout!r}, expected a probability in [0, 1)")
        zero_bias = canonical_zero_bias(zero_bias)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.in_channels, self.image_size, self.ch = in_channels, image_size, ch
        self.inject, self.zero_bias = inject, zero_bias
        self.num_timesteps = check_positive_int(num_timesteps, "num_timesteps")

        tdim = 4 * ch
        self.time_embed = TimestepMLP(ch, tdim)
        self.head = nn.Conv2d(in_channels, ch, 3, 1, 1)

        def res_block(cin, cout, res):
            block = ResBlock(
                cin, cout, tdim, dropout, groups, res in attn_resolutions, norm, backend
            )
            block.resolution = res
            return block

        self.down = nn.ModuleList()
        chs, now, res = [ch], ch, image_size
        for i, mult in enumerate(ch_mult):
            out = ch * mult
            for _ in range(num_res_blocks):
                self.down.append(res_block(now, out, res))
                now = out
                chs.append(now)
            if i != levels - 1:
                self.down.append(Downsample(now))
                chs.append(now)
                res //= 2
        self.mid = nn.ModuleList(
            [
                ResBlock(now, now, tdim, dropout, groups, True, norm, backend),
                ResBlock(now, now, tdim, dropout, groups, False, norm, backend),
            ]
        )
        for block in self.mid:
            block.resolution = res
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            out = ch * mult
            for _ in range(num_res_blocks + 1):
                self.up.append(res_block(chs.pop() + now, out, res))
                now = out
            if i != 0:
                self.up.append(Upsample(now))
                res *= 2
        assert not chs
        self.tail_norm = _norm(norm, now, groups, "silu", backend)
        self.tail_conv = nn.Conv2d(now, in_channels, 3, 1, 1)

        self.resolutions = tuple(image_size // 2**i for i in range(levels))
        if inject == "linear":
            scale = 1.0 / self.num_timesteps
            self.pos_embed = nn.ModuleDict(
                {str(r): PositionalLinear(r, r, time_scale=scale) for r in self.resolutions}
            )
        elif inject == "mlp":
            self.pos_embed = nn.ModuleDict(
                {str(r): PositionalMLP(ch, r, r) for r in self.resolutions}
            )
        self._ddpm_init()
        apply_zero_bias(self, zero_bias)

    def _ddpm_init(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
        small = [self.tail_conv]
        for m in self.modules():
            if isinstance(m, ResBlock):
                small.append(m.conv2)
            elif isinstance(m, AttnBlock):
                small.append(m.proj)
        for conv in small:
            nn.init.xavier_uniform_(conv.weight, gain=1e-5)

    def _timesteps(self, t, n: int, device) -> Tensor:
        if isinstance(t, numbers.Real) and not isinstance(t, bool):
            t = torch.tensor(t, device=device)
        if not isinstance(t, Tensor):
            raise TypeError(f"t: got {type(t).__name__}, expected a tensor of timesteps (N,)")
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1 and n != 1):
            t = t.reshape(1).expand(n)
        if t.shape != (n,):
            raise ValueError(f"t: got shape {tuple(t.shape)}, expected (N,) = ({n},)")
        return t.to(device)

    def forward(self, x: Tensor, t) -> Tensor:
        """Predict the noise: see the class docstring."""
        check_feature_map(x, "x", self.in_channels)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"x: got spatial size {tuple(x.shape[-2:])}, expected "
                f"({self.image_size}, {self.image_size}) (image_size)"
            )
        n = x.shape[0]
        t = self._timesteps(t, n, x.device)
        sin = self.time_embed.sinusoidal(t)
        temb = self.time_embed.from_sinusoidal(sin)
        pos = {}
        if self.inject == "linear":
            pos = {r: self.pos_embed[str(r)](t).to(x.dtype) for r in self.resolutions}
        elif self.inject == "mlp":
            pos = {r: self.pos_embed[str(r)](sin).to(x.dtype) for r in self.resolutions}

        h = self.head(x)
        hs = [h]
        for layer in self.down:
            if isinstance(layer, ResBlock):
                h = layer(h, temb, pos.get(layer.resolution))
            else:
                h = layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, temb, pos.get(layer.resolution))
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], 1), temb, pos.get(layer.resolution))
            else:
                h = layer(h)
        assert not hs
        return self.tail_conv(self.tail_norm(h))


def num_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
