"""timeaware.integrations.diffusers: apply/revert on diffusers models, patched against unpatched.

Accuracy follows flash-attention's rule against a float64 copy of the unpatched model: for the
output, the input's gradient and every parameter's gradient,
``max|patched - fp64| <= 2 max|unpatched - fp64| + atol`` with ``atol`` a small fraction of
``max|fp64|`` (dtype dependent). Dropout runs with the same RNG state in all three models (CPU
dropout draws the same mask for fp32, bf16 and fp64 tensors of one memory format).

Models are tiny (block_out_channels (16..32, 32..64), one layer per block, 8x8, batch 2) so that
the Triton kernels, run here by the interpreter, keep the file short.
"""

import copy
import logging
import subprocess
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed (pip install 'timeaware[diffusers]')"
)

from diffusers import UNet2DConditionModel, UNet2DModel  # noqa: E402
from diffusers.models.attention_processor import Attention  # noqa: E402
from diffusers.models.resnet import ResnetBlock2D, ResnetBlockCondNorm2D  # noqa: E402

import timeaware  # noqa: E402
import timeaware.integrations.diffusers as tad  # noqa: E402
from timeaware.profiling import count_launches  # noqa: E402

BACKENDS = ("reference", "triton")
ATOL = {torch.float32: 2e-6, torch.bfloat16: 2e-2}  # times max|fp64| of the tensor compared
# Gradients that are mathematically zero (an attention key bias: softmax ignores it) are sums of
# terms that cancel, so every implementation returns rounding noise of the size of the largest
# gradient: an absolute floor of FLOOR times the largest fp64 parameter gradient.
FLOOR = {torch.float32: 1e-6, torch.bfloat16: 1e-3}

# --------------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------------
UNET_CONFIGS = {
    # DDPM-like: attention at the second level, 8 groups, eps 1e-6, positional embedding
    "attn-g8-positional": dict(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        attention_head_dim=8,
    ),
    # Fourier embedding (NCSN++-like), resnet down/upsampling, 4 groups, eps 1e-5, ReLU resnets,
    # a mid-block output scale factor
    "fourier-g4-resnet-updown-relu": dict(
        block_out_channels=(16, 32),
        down_block_types=("AttnDownBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D"),
        downsample_type="resnet",
        upsample_type="resnet",
        time_embedding_type="fourier",
        norm_num_groups=4,
        norm_eps=1e-5,
        act_fn="relu",
        mid_block_scale_factor=2**0.5,
        attention_head_dim=8,
    ),
    # scale_shift: every ResnetBlock2D is left alone; attention norms and the output norm are not
    "scale-shift-g16": dict(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        resnet_time_scale_shift="scale_shift",
        attention_head_dim=16,
    ),
}


def build_unet(name: str, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    cfg = dict(sample_size=8, layers_per_block=1, dropout=dropout, **UNET_CONFIGS[name])
    return UNet2DModel(**cfg)


def build_cond_unet(dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=8,
        dropout=dropout,
    )


MODELS = [*UNET_CONFIGS, "cond-crossattn-g8"]


def build(name: str, dropout: float = 0.1) -> nn.Module:
    return build_cond_unet(dropout) if name == "cond-crossattn-g8" else build_unet(name, dropout)


def inputs(name: str, model: nn.Module):
    """(x, timesteps, extra kwargs) for a batch of 2."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, model.config.in_channels, 8, 8, generator=gen)
    extra = {}
    if name == "cond-crossattn-g8":
        extra["encoder_hidden_states"] = torch.randn(2, 5, 16, generator=gen)
    if model.config.get("time_embedding_type") == "fourier":
        t = torch.tensor([0.7, 2.5])  # sigmas
    else:
        t = torch.tensor([3, 700])
    return x, t, extra


# --------------------------------------------------------------------------------------------
# Running and comparing
# --------------------------------------------------------------------------------------------
def run(model, x, t, extra, cotangent, *, seed=0, amp=None, channels_last=False):
    """Forward (seeded), backward of <out, cotangent>; returns (out, x.grad, {name: grad})."""
    dtype = next(model.parameters()).dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.detach().to(dtype).clone(memory_format=fmt).requires_grad_(True)
    if t.is_floating_point():
        t = t.to(torch.float64 if dtype == torch.float64 else torch.float32)
    extra = {k: v.to(dtype) for k, v in extra.items()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        out = model(x, t, **extra).sample
    (out * cotangent.to(out.dtype)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


def assert_rule(what, patched, unpatched, ref, dtype, floor=0.0):
    """flash-attention's rule: max|patched - ref| <= 2 max|unpatched - ref| + atol."""
    ref = ref.double()
    err_p = (patched.double() - ref).abs().max().item()
    err_u = (unpatched.double() - ref).abs().max().item()
    atol = ATOL[dtype] * ref.abs().max().item() + floor + 1e-12
    assert err_p <= 2 * err_u + atol, (
        f"{what}: patched error {err_p:.3e} > 2 x unpatched error {err_u:.3e} + atol {atol:.3e}"
    )


def compare_three(results, dtype):
    """results = (patched, unpatched, fp64), each (out, x_grad, grads)."""
    (po, px, pg), (uo, ux, ug), (ro, rx, rg) = results
    assert po.dtype == uo.dtype and po.shape == uo.shape
    assert_rule("output", po, uo, ro, dtype)
    assert_rule("input grad", px, ux, rx, dtype)
    assert set(pg) == set(ug) == set(rg), "the same parameters must receive gradients"
    assert len(pg) > 5
    floor = FLOOR[dtype] * max(g.abs().max().item() for g in rg.values())
    for name in ug:
        assert pg[name].dtype == ug[name].dtype, name
        assert_rule(f"grad of {name}", pg[name], ug[name], rg[name], dtype, floor)


def patched_copy(model, backend):
    p = copy.deepcopy(model)
    names = tad.apply(p, backend=backend)
    assert names, "nothing was patched"
    return p


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------
def test_import_timeaware_does_not_import_diffusers():
    code = (
        "import sys, timeaware, timeaware.integrations; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'; "
        "import timeaware.integrations.diffusers; assert 'diffusers' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def expected_names(model):
    """What apply must patch, read off the module tree independently of the implementation."""
    names = set()
    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        if type(m) is ResnetBlock2D and m.time_embedding_norm == "default":
            if type(m.nonlinearity) in (nn.SiLU, nn.ReLU):
                names.add(name)
        if isinstance(m, Attention) and m.group_norm is not None:
            names.add(pre + "group_norm")
        if type(getattr(m, "norm", None)) is nn.GroupNorm and "Transformer2D" in type(m).__name__:
            names.add(pre + "norm")
        if isinstance(m, (UNet2DModel, UNet2DConditionModel)):
            names |= {pre + "conv_norm_out", pre + "conv_act"}
    return names


@pytest.mark.parametrize("name", MODELS)
def test_apply_patches_in_place_and_revert_restores(name):
    model = build(name)
    before = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    conv_act = model.conv_act
    x, t, extra = inputs(name, model)
    model.eval()
    with torch.no_grad():
        y0 = model(x, t, **extra).sample

    expected = expected_names(model)
    names = tad.apply(model, backend="reference")
    assert set(names) == expected and len(names) == len(set(names))
    if name == "scale-shift-g16":
        assert not any(".resnets." in n for n in names)
    else:
        assert any(".resnets." in n for n in names)
    if name == "cond-crossattn-g8":
        assert any(n.endswith("attentions.0.norm") for n in names)
    # the state dict: same keys in the same order, the very same tensors
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)
    assert all(after[k] is before[k] for k in before)
    for n in names:
        m = model.get_submodule(n)
        assert type(m) in (tad.FusedResnetBlock2D, tad.FusedGroupNorm, tad.FoldedActivation)
        assert isinstance(m, classes[n]) or type(m) is tad.FoldedActivation
    # apply again: the same modules, nothing patched twice
    assert tad.apply(model, backend="reference") == names

    reverted = tad.revert(model)
    assert set(reverted) == set(names)
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert model.conv_act is conv_act
    assert not any("_timeaware" in k for m in model.modules() for k in vars(m))
    assert list(model.state_dict()) == list(before)
    with torch.no_grad():
        y1 = model(x, t, **extra).sample
    assert torch.equal(y0, y1)
    assert tad.revert(model) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layout, mode", [("nchw", "train"), ("channels_last", "train"), ("nchw", "eval")]
)
@pytest.mark.parametrize("name", MODELS)
def test_fp32_matches_unpatched(name, layout, mode, backend):
    model = build(name)
    getattr(model, mode)()
    ref = copy.deepcopy(model).double()
    patched = patched_copy(model, backend)
    if layout == "channels_last":
        for m in (model, ref, patched):
            m.to(memory_format=torch.channels_last)
    x, t, extra = inputs(name, model)
    cot = torch.randn(x.shape[0], model.config.out_channels, 8, 8)
    cl = layout == "channels_last"
    results = [run(m, x, t, extra, cot, seed=5, channels_last=cl) for m in (patched, model, ref)]
    if cl:
        assert results[0][0].is_contiguous(memory_format=torch.channels_last)
    compare_three(results, torch.float32)


def record_outputs(model):
    """Forward hooks recording (dtype, memory format) of every module's tensor output."""
    seen = {}

    def hook(name):
        def fn(mod, args, out):
            out = getattr(out, "sample", out)
            if isinstance(out, tuple):
                out = out[0]
            if isinstance(out, torch.Tensor):
                cl = out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last)
                seen[name] = (out.dtype, out.is_contiguous(), cl)

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    return seen, handles


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision", ["bf16-model", "bf16-autocast"])
@pytest.mark.parametrize("name", ["attn-g8-positional", "cond-crossattn-g8"])
def test_bf16_and_autocast_match_unpatched(name, precision, backend):
    model = build(name)
    model.train()
    ref = copy.deepcopy(model).double()
    amp = None
    if precision == "bf16-model":
        model.to(torch.bfloat16)
    else:
        amp = torch.bfloat16
    patched = patched_copy(model, backend)
    x, t, extra = inputs(name, model)
    cot = torch.randn(x.shape[0], model.config.out_channels, 8, 8)
    seen_p, hp = record_outputs(patched)
    seen_u, hu = record_outputs(model)
    results = [
        run(patched, x, t, extra, cot, seed=3, amp=amp),
        run(model, x, t, extra, cot, seed=3, amp=amp),
        run(ref, x, t, extra, cot, seed=3),
    ]
    for h in hp + hu:
        h.remove()
    compare_three(results, torch.bfloat16)
    # every module both models ran the same way returned the same dtype and memory format (the
    # children of a patched ResnetBlock2D are not called, or are called differently)
    resnets = tuple(
        n + "." for n, m in patched.named_modules() if type(m) is tad.FusedResnetBlock2D
    )
    common = {n for n in set(seen_p) & set(seen_u) if not n.startswith(resnets)}
    assert any(".resnets." in n for n in common) and "conv_norm_out" in common
    assert {n: seen_p[n] for n in common} == {n: seen_u[n] for n in common}


BLOCK_CASES = {
    "plain": dict(),
    "up": dict(up=True),
    "down": dict(down=True),
    "fir-down": dict(down=True, kernel="fir"),
    "sde_vp-up": dict(up=True, kernel="sde_vp"),
    "shortcut-scale": dict(out_channels=16, conv_shortcut_bias=False, output_scale_factor=2**0.5),
    "in-shortcut-groups-out": dict(use_in_shortcut=True, groups_out=2, eps=1e-5),
    "skip-time-act-relu": dict(skip_time_act=True, non_linearity="relu"),
    "no-temb": dict(temb_channels=None),
    "temb-batch-1": dict(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(BLOCK_CASES))
def test_resnet_block_variants(case, layout, backend):
    torch.manual_seed(0)
    kw = {"in_channels": 8, "temb_channels": 12, "groups": 4, "dropout": 0.2, **BLOCK_CASES[case]}
    block = ResnetBlock2D(**kw).train()
    with torch.no_grad():  # make the affine and the biases matter
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = copy.deepcopy(block).double()
    patched = copy.deepcopy(block)
    assert tad.apply(patched, backend=backend) == [""]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for m in (block, ref, patched):
        m.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 8, 8, 8, generator=gen)
    temb0 = None
    if kw["temb_channels"] is not None:
        temb0 = torch.randn(1 if case == "temb-batch-1" else 3, 12, generator=gen)

    def go(m):
        dtype = next(m.parameters()).dtype
        x = x0.to(dtype).clone(memory_format=fmt).requires_grad_(True)
        temb = None if temb0 is None else temb0.to(dtype).clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        out = m(x, temb)
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        (out * cot.to(dtype)).sum().backward()
        grads = {n: p.grad for n, p in m.named_parameters()}
        if temb is not None:
            grads["<temb>"] = temb.grad
        return out.detach(), x.grad, grads

    results = [go(m) for m in (patched, block, ref)]
    assert results[0][0].shape == results[1][0].shape
    compare_three(results, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_attention_group_norm_with_residual_and_rescale(layout, backend):
    torch.manual_seed(0)
    attn = Attention(
        query_dim=16,
        heads=2,
        dim_head=8,
        norm_num_groups=4,
        eps=1e-6,
        rescale_output_factor=2.0,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )
    with torch.no_grad():
        attn.group_norm.weight.add_(0.5 * torch.randn(16))
        attn.group_norm.bias.add_(0.5 * torch.randn(16))
    ref = copy.deepcopy(attn).double()
    patched = copy.deepcopy(attn)
    assert tad.apply(patched, backend=backend) == ["group_norm"]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x0 = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(4)) * 3 + 1
    cot = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(5))

    def go(m):
        dtype = next(m.parameters()).dtype
        x = x0.to(dtype).clone(memory_format=fmt).requires_grad_(True)
        m.zero_grad(set_to_none=True)
        out = m(x)
        (out * cot.to(dtype)).sum().backward()
        return out.detach(), x.grad, {n: p.grad for n, p in m.named_parameters()}

    results = [go(m) for m in (patched, attn, ref)]
    compare_three(results, torch.float32)


def test_skipped_blocks_are_logged_and_untouched(caplog):
    model = build("scale-shift-g16")
    resnets = [n for n, m in model.named_modules() if type(m) is ResnetBlock2D]
    with caplog.at_level(logging.INFO, logger="timeaware.integrations.diffusers"):
        names = tad.apply(model)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for n in resnets:
        assert type(model.get_submodule(n)) is ResnetBlock2D
        assert any(repr(n) in msg and "scale_shift" in msg for msg in infos), n
    assert not set(resnets) & set(names)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"left {len(resnets)} as diffusers computes them" in w for w in warnings)

    # non-SiLU/ReLU activations, ada_group and spatial norms
    caplog.clear()
    torch.manual_seed(0)
    container = nn.ModuleDict(
        {
            "mish": ResnetBlock2D(in_channels=8, temb_channels=4, groups=4, non_linearity="mish"),
            "ada": ResnetBlockCondNorm2D(
                in_channels=8, temb_channels=4, groups=4, time_embedding_norm="ada_group"
            ),
            "spatial": ResnetBlockCondNorm2D(  # SpatialNorm has a GroupNorm(32)
                in_channels=32, temb_channels=4, groups=4, time_embedding_norm="spatial"
            ),
        }
    )
    with caplog.at_level(logging.INFO, logger="timeaware.integrations.diffusers"):
        assert tad.apply(container) == []
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "'mish'" in text and "Mish" in text
    assert "'ada'" in text and "ada_group" in text
    assert "'spatial'" in text and "'spatial'" in text.split("'spatial':", 1)[1]


def test_autocast_fp32_policy_upcasts_and_matches_layout(monkeypatch):
    """Where autocast runs GroupNorm in fp32 (CUDA), the patched norm returns fp32 too, and the
    input of dropout gets F.group_norm's memory format. CPU autocast keeps bf16, so the CUDA
    policy is imposed here; the real policy is checked against F.group_norm."""
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    for dtype in (torch.float32, torch.bfloat16):
        for amp in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                want = F.group_norm(x.to(dtype), 2)
                got = tad._gn_policy(x.to(dtype))
            assert got == (want.dtype, want.is_contiguous(memory_format=torch.channels_last))

    monkeypatch.setattr(tad, "_gn_policy", lambda t: (torch.float32, False))
    gn = nn.GroupNorm(2, 8)
    tad._patch_group_norm(gn, "silu", "reference")
    y = gn(x.to(torch.bfloat16))
    assert y.dtype == torch.float32
    want = timeaware.group_norm_act(x.to(torch.bfloat16), 2, gn.weight, gn.bias, act="silu")
    assert torch.equal(y, want.float())

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, temb_channels=4, groups=2, dropout=0.5)
    tad.apply(block, backend="reference")
    layouts = []
    block.dropout.register_forward_pre_hook(
        lambda m, args: layouts.append((args[0].dtype, args[0].is_contiguous()))
    )
    block(x, torch.randn(2, 4))
    assert layouts == [(torch.float32, True)]


def test_torch_compile_after_apply(monkeypatch):
    """torch.compile (compile backend "aot_eager": dynamo + AOT autograd, no inductor, to keep
    CI fast) of a model patched with the Triton backend (the op as a torch.library custom op),
    fullgraph (no graph break), compiled first with an empty policy cache (the probe is traced):
    the same outputs and gradients as eager. (The reference backend traces plain aten ops
    through the same wrapper; one compile is kept for CI time.)"""
    backend = "triton"
    torch._dynamo.reset()
    monkeypatch.setattr(tad, "_POLICY", {})
    model = build("attn-g8-positional").eval()
    patched = patched_copy(model, backend)
    compiled = torch.compile(patched, backend="aot_eager", fullgraph=True)
    x, t, extra = inputs("attn-g8-positional", model)
    cot = torch.randn(2, 3, 8, 8)
    comp = run(compiled, x, t, extra, cot)
    eager = run(patched, x, t, extra, cot)
    torch.testing.assert_close(comp[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp[1], eager[1], rtol=1e-5, atol=1e-6)
    assert {n.removeprefix("_orig_mod.") for n in comp[2]} == set(eager[2])
    for n in eager[2]:
        got = comp[2]["_orig_mod." + n]
        torch.testing.assert_close(got, eager[2][n], rtol=1e-4, atol=1e-6, msg=n)
    torch._dynamo.reset()


@pytest.mark.parametrize("name", MODELS)
def test_fused_path_runs(name):
    """The numbers above would also match if a patched module fell back to diffusers' forward;
    count what runs instead: one fused kernel per patched norm (2 per ResnetBlock2D), and
    aten GroupNorm only in the blocks left alone; SiLU only where it is not fused."""
    model = build(name).train()
    x, t, extra = inputs(name, model)
    with count_launches() as unpatched:
        model(x, t, **extra)
    names = tad.apply(model, backend="triton")
    kinds = Counter(type(model.get_submodule(n)).__name__ for n in names)
    left = sum(type(m) is ResnetBlock2D for m in model.modules())
    with count_launches(stub_triton=True):  # warm up: the first call probes F.group_norm once
        model(x, t, **extra)
    with count_launches(stub_triton=True) as c:
        model(x, t, **extra).sample.sum().backward()
    fused_calls = 2 * kinds["FusedResnetBlock2D"] + kinds["FusedGroupNorm"]
    # one single-kernel forward and one backward per op call (the models' groups are small, so
    # the fused or packed regime runs, never the split one)
    fwd = sum(c.ops[f"triton:_gn_fwd_{k}_kernel"] for k in ("fused", "packed"))
    bwd = sum(c.ops[f"triton:_gn_bwd_{k}_kernel"] for k in ("fused", "packed"))
    assert fwd == fused_calls, c.summary()
    assert bwd == fused_calls, c.summary()
    assert c.ops["aten.native_group_norm.default"] == 2 * left, c.summary()
    # diffusers: 3 SiLUs per block (norm1, temb, norm2) and conv_act; fused: the temb one only
    silu = unpatched.ops["aten.silu.default"] + unpatched.ops["aten.relu.default"]
    fused_acts = 2 * kinds["FusedResnetBlock2D"] + 1  # + conv_act
    assert c.ops["aten.silu.default"] + c.ops["aten.relu.default"] == silu - fused_acts


def test_save_load_from_pretrained_and_copies(tmp_path):
    model = build("attn-g8-positional").eval()
    patched = patched_copy(model, "reference")
    x, t, _ = inputs("attn-g8-positional", model)
    with torch.no_grad():
        y = patched(x, t).sample

    patched.save_pretrained(tmp_path / "unet")
    loaded = UNet2DModel.from_pretrained(tmp_path / "unet").eval()
    assert type(loaded.mid_block.resnets[0]) is ResnetBlock2D  # loads as diffusers' own
    sd, sd_loaded = model.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd_loaded)
    assert all(torch.equal(sd[k], sd_loaded[k]) for k in sd)
    assert set(tad.apply(loaded, backend="reference")) == set(tad.apply(patched))
    with torch.no_grad():
        assert torch.equal(loaded(x, t).sample, y)

    # load_state_dict into a patched model, deepcopy, pickling
    other = build("attn-g8-positional").eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    tad.apply(other, backend="reference")
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(other(x, t).sample, y)
        dup = copy.deepcopy(patched)
        assert type(dup.mid_block.resnets[0]) is tad.FusedResnetBlock2D
        assert torch.equal(dup(x, t).sample, y)
    torch.save(patched, tmp_path / "whole.pt")
    back = torch.load(tmp_path / "whole.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(back(x, t).sample, y)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        tad.apply("unet")
    with pytest.raises(ValueError, match="backend: expected None or one of"):
        tad.apply(nn.Linear(2, 2), backend="cuda")
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        tad.revert(None)
    with pytest.raises(ValueError, match=r"dropout: expected a float in \[0, 1\), got 1.5"):
        tad.ddpm_cifar10_unet(dropout=1.5)
    with pytest.raises(TypeError, match="dropout"):
        tad.ddpm_cifar10_unet(dropout="0.1")
    unet = nn.Identity()
    with pytest.raises(ValueError, match=r"x0: expected shape \(N, C, H, W\), got \(3, 8, 8\)"):
        tad.ddpm_training_loss(unet, torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="x0: expected a floating-point"):
        tad.ddpm_training_loss(unet, torch.zeros(1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="num_train_timesteps"):
        tad.ddpm_training_loss(unet, torch.randn(1, 3, 8, 8), num_train_timesteps=0)
    with pytest.raises(TypeError, match="beta_end: expected a float, got str"):
        tad.ddpm_training_loss(unet, torch.randn(1, 3, 8, 8), beta_end="0.02")
    with pytest.raises(ValueError, match="beta_start, beta_end"):
        tad.ddpm_training_loss(unet, torch.randn(1, 3, 8, 8), beta_start=0.1, beta_end=0.01)


def test_ddpm_cifar10_builder_and_training_step():
    torch.manual_seed(0)
    full = tad.ddpm_cifar10_unet()
    # DDPM (Ho et al. 2020, appendix B): the CIFAR-10 model has 35.7 million parameters
    assert round(sum(p.numel() for p in full.parameters()) / 1e6, 1) == 35.7
    assert full.config.dropout == 0.1 and full.training
    names = tad.apply(full)
    assert len([n for n in names if ".resnets." in n]) == 2 * 4 + 2 + 3 * 4
    assert len([n for n in names if n.endswith("group_norm")]) == 2 + 1 + 3
    del full

    small = dict(block_out_channels=(16, 16, 16, 16), norm_num_groups=4, sample_size=16)
    torch.manual_seed(0)
    model = tad.ddpm_cifar10_unet(**small)
    patched = patched_copy(model, "reference")
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    losses = []
    for m in (patched, model):
        torch.manual_seed(11)
        loss = tad.ddpm_training_loss(m, x0)
        loss.backward()
        losses.append(loss.detach())
    assert losses[0].dtype == torch.float32 and losses[0].dim() == 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    for (n, p), q in zip(patched.named_parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
