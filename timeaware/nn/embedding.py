"""Timestep embeddings: DDPM's sinusoidal + MLP, and the paper's positional embeddings.

* :class:`SinusoidalEmbedding` and :class:`TimestepMLP` are DDPM's per-channel embedding
  (sinusoidal -> Linear -> Swish -> Linear). Added to a feature map it is a channel-wise scalar
  offset, which a normalisation removes (channel-wise norms) or dilutes (GroupNorm).
* :class:`PositionalLinear` (``p_t = t * P``, a learnable H x W map) and :class:`PositionalMLP`
  (an MLP branch off the sinusoidal embedding producing H x W values per sample, paper Figure 5)
  are the paper's positional timestep embedding (section 3.1): spatially varying, shared by all
  channels, so no normalisation unit can cancel it.
* :class:`TimeMLP` is an additive MLP embedding of a continuous time t (the NODE setting of the
  paper's Table 2).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_positive_int
from .init import mark_timestep_branch


def _time_vector(t, name: str = "t") -> Tensor:
    """t as a 1-D tensor: numbers and 0-d tensors become shape (1,)."""
    if isinstance(t, Tensor):
        if t.dim() > 1:
            raise ValueError(f"{name}: got shape {tuple(t.shape)}, expected a scalar or (N,)")
        return t.reshape(-1)
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name}: got {type(t).__name__}, expected a number or a tensor")
    return torch.tensor([float(t)])


class SinusoidalEmbedding(nn.Module):
    """DDPM's sinusoidal timestep embedding (no parameters).

    ``emb[n] = cat([sin(t[n] * f), cos(t[n] * f)])`` with ``f_k = max_period ** (-k / (dim/2 - 1))``
    for ``k < dim // 2``; a zero column is appended when ``dim`` is odd.

    Args:
        dim: output width D (>= 2).
        max_period: the longest period, 10000 as in DDPM / Transformers.

    Shapes:
        t: (N,) integer or float timesteps, or a scalar. Output: (N, D), float32 (float64 if t
        is float64).
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim", minimum=2)
        if not max_period > 1:
            raise ValueError(f"max_period: got {max_period!r}, expected a number > 1")
        self.max_period = float(max_period)

    def forward(self, t) -> Tensor:
        """See the class docstring."""
        t = _time_vector(t)
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        half = self.dim // 2
        scale = math.log(self.max_period) / max(half - 1, 1)
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=dtype) * -scale)
        args = t.to(dtype)[:, None] * freqs[None, :]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class TimestepMLP(nn.Module):
    """DDPM's timestep embedding: sinusoidal(dim) -> Linear -> Swish -> Linear.

    Marked as the timestep branch for :func:`~timeaware.nn.apply_zero_bias`.

    Args:
        dim: width of the sinusoidal embedding (DDPM: the U-Net's base channel count ``ch``).
        hidden_dim: width of the first Linear; default ``4 * dim`` (DDPM).
        out_dim: output width; default ``hidden_dim``.

    Shapes:
        t: (N,) integer or float timesteps (or a scalar). Output: (N, out_dim).
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        dim = check_positive_int(dim, "dim", minimum=2)
        hidden_dim = 4 * dim if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        out_dim = hidden_dim if out_dim is None else check_positive_int(out_dim, "out_dim")
        self.sinusoidal = SinusoidalEmbedding(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.out_dim = out_dim
        mark_timestep_branch(self)

    def from_sinusoidal(self, s: Tensor) -> Tensor:
        """The MLP alone: (N, dim) sinusoidal embedding -> (N, out_dim)."""
        s = s.to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(s)))

    def forward(self, t) -> Tensor:
        """See the class docstring."""
        return self.from_sinusoidal(self.sinusoidal(t).to(self.fc1.weight.device))


class TimeMLP(nn.Module):
    """Additive MLP embedding of a continuous time: t -> Linear(1, hidden) -> SiLU -> Linear.

    The per-channel embedding of the paper's Table 2 NODE setting ("additive timestep embedding
    using MLP"); marked as the timestep branch for :func:`~timeaware.nn.apply_zero_bias`.

    Args:
        out_dim: output width (the channel count it is added to).
        hidden_dim: default ``out_dim``.

    Shapes:
        t: scalar, 0-d or (N,). Output: (N, out_dim), or (1, out_dim) for a scalar t; use
        ``batch=`` to expand it to (N, out_dim).
    """

    def __init__(self, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        out_dim = check_positive_int(out_dim, "out_dim")
        hidden_dim = out_dim if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        self.fc1 = nn.Linear(1, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        mark_timestep_branch(self)

    def forward(self, t, batch: int | None = None) -> Tensor:
        """See the class docstring."""
        w = self.fc1.weight
        t = _time_vector(t).to(device=w.device, dtype=w.dtype)[:, None]
        e = self.fc2(F.silu(self.fc1(t)))
        if batch is not None and e.shape[0] != batch:
            if e.shape[0] != 1:
                raise ValueError(f"t: got {e.shape[0]} times, expected 1 or batch={batch}")
            e = e.expand(batch, -1)
        return e


class PositionalLinear(nn.Module):
    """The paper's linear positional timestep embedding ``p_t = t * P`` (Eq. 6).

    ``P`` is a learnable (H, W) map shared by all channels, initialised N(0, init_std^2), so the
    embedding has H * W distinct values in every normalisation unit and survives any
    normalisation (paper section 3.1). It is added with the ``pos`` argument of the normalisation
    modules. No bias.

    Args:
        height, width: H, W of the feature map it is added to.
        init_std: standard deviation of the initial ``P``.
        time_scale: t is multiplied by this first (e.g. ``1 / T`` for integer diffusion steps).

    Shapes:
        t: scalar / 0-d -> (1, H, W); (N,) -> (N, H, W).
    """

    def __init__(
        self, height: int, width: int, init_std: float = 0.1, time_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        self.init_std = float(init_std)
        self.time_scale = float(time_scale)
        self.weight = nn.Parameter(torch.empty(self.height, self.width))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, self.init_std)

    def forward(self, t) -> Tensor:
        """See the class docstring."""
        w = self.weight
        t = _time_vector(t).to(device=w.device, dtype=w.dtype) * self.time_scale
        return t[:, None, None] * w[None]

    def extra_repr(self) -> str:
        s = f"height={self.height}, width={self.width}, init_std={self.init_std}"
        return s + (f", time_scale={self.time_scale}" if self.time_scale != 1.0 else "")


class PositionalMLP(nn.Module):
    """The paper's MLP positional timestep embedding (Figure 5): a branch off the sinusoidal
    embedding, Linear -> Swish -> Linear, producing H * W values per sample.

    Marked as the timestep branch for :func:`~timeaware.nn.apply_zero_bias`.

    Args:
        in_dim: width of the sinusoidal embedding it reads.
        height, width: H, W of the map it produces.
        hidden_dim: default ``4 * in_dim``.

    Shapes:
        s: (N, in_dim) sinusoidal embedding. Output: (N, H, W).
    """

    def __init__(self, in_dim: int, height: int, width: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim")
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        hidden_dim = (
            4 * in_dim if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        )
        self.fc1 = nn.Linear(self.in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, self.height * self.width)
        mark_timestep_branch(self)

    def forward(self, s: Tensor) -> Tensor:
        """See the class docstring."""
        if not isinstance(s, Tensor) or s.dim() != 2 or s.shape[1] != self.in_dim:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"s: got {got}, expected a (N, {self.in_dim}) sinusoidal embedding")
        s = s.to(self.fc1.weight.dtype)
        p = self.fc2(F.silu(self.fc1(s)))
        return p.view(-1, self.height, self.width)
