"""The paper's claims about vanishing timestep embedding (sections 2.2 and 3), as tests.

Set-up shared by the claims: a feature map h, a ConcatConv2d (or an additive embedding), and a
normalisation N. The time dependence of N's output is measured directly as
``||N(conv(t1, h)) - N(conv(t0, h))||`` relative to the output, with the whole batch at one t
(the setting of an ODE solve).
"""

import pytest
import torch

import timeaware
from timeaware import nn as tnn
from timeaware.diagnostics import embedding_survival
from timeaware.models import ODEFunc

C, H = 8, 6
CHANNEL_WISE = {
    "batch": lambda: tnn.BatchNormAct(C),  # training mode: batch statistics
    "instance": lambda: tnn.InstanceNormAct(C),
    "group-G=C-reference": lambda: tnn.GroupNormAct(C, C, backend="reference"),
    "group-G=C-triton": lambda: tnn.GroupNormAct(C, C, backend="triton"),
}


def rel_change(a, b):
    return ((a - b).norm() / b.norm()).item()


def concat_norm_output(conv, norm, t, h, pos=None):
    return tnn.concat_conv_norm(conv, norm, t, h, pos=pos)


@pytest.mark.parametrize("kind", list(CHANNEL_WISE))
def test_channel_wise_norm_removes_concat_time_exactly_without_padding(kind):
    """Eq. 5: a channel-wise scalar offset (the ConcatConv time channel, unpadded) is removed
    by BN / IN / GN(G=C): the output does not depend on t at all."""
    conv = tnn.ConcatConv2d(C, C, 3, padding=0)
    norm = CHANNEL_WISE[kind]()
    h = torch.randn(4, C, H, H)
    with torch.no_grad():
        outs = [concat_norm_output(conv, norm, t, h) for t in (0.0, 0.5, 1.0, 3.0)]
        # the time channel is there before the normalisation ...
        pre = [conv(t, h) for t in (0.0, 3.0)]
    assert rel_change(pre[1], pre[0]) > 1e-2
    # ... and gone after it (fp32 rounding only)
    for y in outs[1:]:
        assert rel_change(y, outs[0]) < 1e-5


@pytest.mark.parametrize("kind", ["batch", "instance", "group-G=C-reference"])
def test_channel_wise_norm_removes_additive_embedding(kind):
    """The DDPM-style per-channel embedding emb[n, c] is a channel-wise offset too."""
    norm = CHANNEL_WISE[kind]()
    h = torch.randn(4, C, H, H)
    mlp = tnn.TimestepMLP(8, out_dim=C)
    with torch.no_grad():
        outs = [norm(h, emb=mlp(torch.full((4,), s)).contiguous()) for s in (0, 10, 500)]
    for y in outs[1:]:
        assert rel_change(y, outs[0]) < 1e-5


@pytest.mark.parametrize("kind", list(CHANNEL_WISE))
def test_with_zero_padding_only_the_border_carries_time(kind):
    """With padding the time map is the kernel sum inside and differs on the border ring; the
    normalisation removes the constant part, so its output equals the output with only the
    border residual of the time map: time reaches the output through the border alone."""
    conv = tnn.ConcatConv2d(C, C, 3, padding=1)
    norm = CHANNEL_WISE[kind]()
    h = torch.randn(4, C, H, H)
    with torch.no_grad():
        y, b, _, tm = conv.forward_parts(0.0, h)
        inside = conv._layer.weight[:, 0].sum(dim=(1, 2))[:, None, None]
        border_only = tm - inside
        assert border_only[:, 1:-1, 1:-1].abs().max() < 1e-6  # zero inside
        assert border_only[:, 0, :].abs().max() > 1e-3  # nonzero on the border ring
        for t in (0.5, 2.0):
            full = norm(y, conv_bias=b, time=torch.tensor(t), time_map=tm)
            border = norm(y, conv_bias=b, time=torch.tensor(t), time_map=border_only)
            torch.testing.assert_close(full, border, rtol=1e-4, atol=1e-5)
        # and the border does carry some time: the output is no longer constant in t
        y0 = concat_norm_output(conv, norm, 0.0, h)
        y1 = concat_norm_output(conv, norm, 2.0, h)
    assert rel_change(y1, y0) > 1e-3


@pytest.mark.parametrize("kind", [*CHANNEL_WISE, "group-G=2", "layer"])
def test_positional_embedding_survives_every_normalisation(kind):
    """Section 3.1: p_t = t * P varies over space, so no normalisation unit can cancel it."""
    makers = dict(CHANNEL_WISE)
    makers["group-G=2"] = lambda: tnn.GroupNormAct(2, C)
    makers["layer"] = lambda: tnn.make_norm("layer", C)
    norm = makers[kind]()
    conv = tnn.ConcatConv2d(C, C, 3, padding=0)
    pos = tnn.PositionalLinear(H - 2, H - 2, init_std=0.5)
    h = torch.randn(4, C, H, H)
    with torch.no_grad():
        y0 = concat_norm_output(conv, norm, 0.0, h, pos=pos(0.0))
        y1 = concat_norm_output(conv, norm, 1.0, h, pos=pos(1.0))
    assert rel_change(y1, y0) > 0.05


def _channel_survival(groups: int, trials: int = 8) -> float:
    """Mean ||N(h + e) - N(h)|| / ||N(h + e)|| for a per-channel embedding e and G groups."""
    vals = []
    for _ in range(trials):
        h = torch.randn(4, 16, 4, 4)
        e = torch.randn(1, 16).expand(4, 16) * 0.5
        norm = tnn.GroupNormAct(groups, 16)
        with torch.no_grad():
            a, b = norm(h, emb=e), norm(h)
        vals.append(((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).mean())
    return torch.stack(vals).mean().item()


def test_channel_embedding_survives_partly_and_more_as_groups_decrease():
    """Section 3.3: with G < C each unit holds C/G different offsets, which survive partly,
    and more of them survive as G decreases (G=C: nothing survives)."""
    s = {g: _channel_survival(g) for g in (16, 8, 4, 2, 1)}
    assert s[16] < 1e-5
    assert 0.02 < s[8] < s[4] < s[2] < s[1] < 1.0, s


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_odefunc_with_batchnorm_and_mlp_embedding_ignores_time(backend):
    """Whole-network version: an ODE function with BN after additive per-channel embeddings is
    exactly time-independent; adding the positional embedding makes it time-dependent."""
    x = torch.randn(4, 4, 4, 4)
    with timeaware.use_backend(backend):
        f = ODEFunc(4, norm="batch", time_embed="mlp")
        g = ODEFunc(4, norm="batch", time_embed="mlp", inject="linear", spatial_size=(4, 4))
        with torch.no_grad():
            fa, fb = f(0.0, x), f(1.0, x)
            ga, gb = g(0.0, x), g(1.0, x)
    assert rel_change(fb, fa) < 1e-5
    assert rel_change(gb, ga) > 0.05


def test_zero_bias_on_operand_keeps_more_embedding_than_on_timestep_branch():
    """Section 3.2 (remedy 2): zero bias on the operand (conv) branch with default bias on the
    timestep branch keeps more of the embedding than zero bias on the timestep branch or on
    both (the Table 2 baseline). Averaged over 6 initialisations."""
    x = torch.randn(4, 8, 6, 6)

    def survival(policy):
        vals = []
        for seed in range(6):
            torch.manual_seed(seed)
            f = ODEFunc(8, groups=2, time_embed="mlp", zero_bias=policy, backend="reference")
            vals += [s.survival for s in embedding_survival(f, x, ts=[0.0, 0.5, 1.0])]
        return sum(vals) / len(vals)

    s = {p: survival(p) for p in ("operand", "timestep", "all")}
    assert s["operand"] > 1.5 * s["timestep"], s
    assert s["operand"] > 1.5 * s["all"], s
