"""Comparison helpers, tiny trainer configurations and torchdiffeq's example modules, shared by
the tests."""

import torch
from torch import nn


def assert_rel_close(actual, expected, rtol, what="", atol=2e-6):
    """max|actual - expected| <= rtol * max|expected| + atol."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale + atol, f"{what}: max error {err:.3e} vs scale {scale:.3e}"


def grad_atol(grads):
    """Absolute floor for gradient comparisons: 1e-5 of the largest gradient entry. Gradients
    that are mathematically zero (a conv bias before a G=C GroupNorm) are sums of O(largest)
    terms that cancel, so both backends return fp32 rounding noise of about this size."""
    return 1e-5 * max(g.abs().max().item() for g in grads) + 1e-7


# Tiny trainer configurations shared by the trainer tests: 1437 train images, batch 256 -> 5
# NODE steps per epoch; 8x8 images -> a 2x2 ODE state; a DDPM U-Net of width 8.
NODE_TINY = dict(
    channels=4,
    groups=2,
    image_size=8,
    batch_size=256,
    epochs=2,
    backend="reference",
    threads=1,
    progress=False,
)
DDPM_TINY = dict(
    ch=8,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
    groups=4,
    image_size=8,
    timesteps=10,
    batch_size=32,
    steps=6,
    warmup=2,
    log_every=2,
    sample_every=0,
    sample_grid=4,
    ckpt_every=3,
    eval_samples=0,
    backend="reference",
    threads=1,
    progress=False,
)


def tiny(base: dict, **changes) -> dict:
    """``base`` with ``changes``; a change to None removes the key (the config's default)."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not None}


# torchdiffeq's example modules (examples/odenet_mnist.py), written out: the ground truth of the
# ConcatConv2d and ODEFunc tests.
class TorchdiffeqConcatConv2d(nn.Module):
    """torchdiffeq examples/odenet_mnist.py ConcatConv2d, written out (time channel first)."""

    def __init__(
        self,
        dim_in,
        dim_out,
        ksize=3,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        transpose=False,
    ):
        super().__init__()
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

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1, :, :]) * t
        ttx = torch.cat([tt, x], 1)
        return self._layer(ttx)


class TorchdiffeqODEfunc(nn.Module):
    """torchdiffeq examples/odenet_mnist.py ODEfunc, written out."""

    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(32, dim), dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = TorchdiffeqConcatConv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.GroupNorm(min(32, dim), dim)
        self.conv2 = TorchdiffeqConcatConv2d(dim, dim, 3, 1, 1)
        self.norm3 = nn.GroupNorm(min(32, dim), dim)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        out = self.norm1(x)
        out = self.relu(out)
        out = self.conv1(t, out)
        out = self.norm2(out)
        out = self.relu(out)
        out = self.conv2(t, out)
        out = self.norm3(out)
        return out
