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
