"""Comparison helpers shared by the module and model tests."""


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
