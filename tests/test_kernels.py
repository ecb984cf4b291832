"""The Triton kernels of the fused op, called through their launchers (no autograd, no ops layer).

Every case compares the forward AND every gradient of the kernels with
(a) eager PyTorch in the same low precision (``group_norm_act_ref(..., compute_dtype=x.dtype)``)
and (b) the fp64 ground truth (``compute_dtype=torch.float64`` + ``torch.autograd.grad``),
elementwise::

    |kernel - ref64| <= 2 * |torch_lowp - ref64| + atol + eps(out dtype) * |ref64|

``atol`` is per x dtype (below). The last term is one unit of rounding of the result's own dtype:
a kernel that computes in fp32 still has to round its bf16/fp16 output, so it cannot beat that.

Without CUDA, conftest.py sets TRITON_INTERPRET=1 and the kernels run on CPU in the interpreter,
which costs per program launch and per element: shapes are tiny on purpose.
"""

from __future__ import annotations

import pytest
import torch

from timeaware.kernels import group_norm_act as gna
from timeaware.profiling import count_launches
from timeaware.reference import add_addends, group_norm_act_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5
NAMES = ("x", "weight", "beta", "conv_bias", "emb", "time", "time_map", "pos")
ATOL = {torch.float32: 1e-5, torch.float16: 2e-4, torch.bfloat16: 1e-3}
ADDENDS = {
    "none": (),
    "cbias": ("conv_bias",),
    "emb": ("emb",),
    "time": ("time",),
    "pos": ("pos",),
    "pos1": ("pos1",),  # pos of shape (1, H, W), broadcast over N
    "emb+pos": ("emb", "pos"),
    "cbias+time": ("conv_bias", "time"),
    "all": ("conv_bias", "emb", "time", "pos"),
    "all-pos1": ("conv_bias", "emb", "time", "pos1"),
}


# ---------------------------------------------------------------------------------- helpers
def make_inputs(
    shape,
    dtype=torch.float32,
    pdtype=None,
    layout="nchw",
    addends="all",
    affine="wb",
    offset=0.0,
):
    """x ~ offset + randn in ``dtype`` (and ``layout``); params/addends in ``pdtype``."""
    N, C, H, W = shape
    pdtype = pdtype or dtype
    parts = ADDENDS[addends]

    def r(*s, scale=1.0, loc=0.0, dt=pdtype):
        return (torch.randn(*s) * scale + loc).to(device=DEVICE, dtype=dt)

    x = r(N, C, H, W, loc=offset, dt=dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    inp = dict.fromkeys(NAMES)
    inp["x"] = x
    if "w" in affine:
        inp["weight"] = r(C, scale=0.3, loc=1.5)  # non-trivial gamma: catches a dropped w
    if "b" in affine:
        inp["beta"] = r(C)
    if "conv_bias" in parts:
        inp["conv_bias"] = r(C)
    if "emb" in parts:
        inp["emb"] = r(N, C)
    if "time" in parts:
        inp["time"] = torch.rand(N, device=DEVICE, dtype=torch.float32)  # ops passes fp32 (N,)
        inp["time_map"] = r(C, H, W)
    if "pos" in parts:
        inp["pos"] = r(N, H, W)
    if "pos1" in parts:
        inp["pos"] = r(1, H, W)
    return inp


def kernel_run(inp, G, act, dy, needs=None, **kw):
    needs = needs or [inp[k] is not None for k in NAMES]
    a = [inp[k] for k in NAMES]
    y, mean, rstd = gna.group_norm_act_fwd(a[0], G, a[1], a[2], EPS, act, *a[3:], **kw)
    grads = gna.group_norm_act_bwd(dy, a[0], mean, rstd, G, a[1], a[2], act, *a[3:], needs, **kw)
    return y, mean, rstd, grads


def ref_run(inp, G, act, dy, compute_dtype):
    """Reference forward and autograd gradients; fp64 leaves when compute_dtype is fp64."""
    up = compute_dtype == torch.float64
    leaves = {}
    for k in NAMES:
        if inp[k] is not None:
            t = inp[k].detach()
            leaves[k] = (t.double() if up else t.clone()).requires_grad_()
    g = leaves.get
    weight = g("weight")
    if weight is None and "beta" in leaves:
        # torch 2.13 CPU: F.group_norm(weight=None, bias=b) fails in backward ("tensor does not
        # have a device"); a constant ones weight is the same maths
        weight = torch.ones_like(leaves["beta"]).detach()
    y = group_norm_act_ref(
        g("x"), G, weight, g("beta"), EPS, act,
        g("conv_bias"), g("emb"), g("time"), g("time_map"), g("pos"),
        compute_dtype=compute_dtype,
    )  # fmt: skip
    order = [k for k in NAMES if k in leaves]
    grads = torch.autograd.grad(y, [leaves[k] for k in order], dy.to(y.dtype))
    return y, dict(zip(order, grads))


def check(name, k, t, r, out_dtype, atol, elementwise=True):
    """|k - r| <= 2 |t - r| + atol + eps(out_dtype) |r|, elementwise (or of the maxima)."""
    k, t = k.double(), t.double()
    ek, et = (k - r).abs(), (t - r).abs()
    bound = 2 * et + atol + torch.finfo(out_dtype).eps * r.abs()
    if not elementwise:
        ek, bound = ek.max(), bound.max()
    bad = ek > bound
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{bad.numel()} elements out of bound; "
        f"max|kernel-ref64|={ek.max():.3e} max|torch-ref64|={et.max():.3e} "
        f"worst excess={(ek - bound).max():.3e} (atol={atol:g})"
    )


def run_case(inp, G, act, needs=None, elementwise=True, check_strides=True, **kw):
    """Kernel vs eager-lowp vs fp64 for y and every gradient; layouts, dtypes and shapes too."""
    x = inp["x"]
    dy = torch.randn(x.shape, device=DEVICE).to(x.dtype)
    y, mean, rstd, grads = kernel_run(inp, G, act, dy, needs, **kw)
    y_t, g_t = ref_run(inp, G, act, dy, x.dtype)
    y_64, g_64 = ref_run(inp, G, act, dy, torch.float64)
    atol = ATOL[x.dtype]

    assert y.dtype == x.dtype and y.shape == x.shape
    if check_strides:
        assert y.stride() == x.stride()  # same memory format as x (NCHW or channels_last)
    assert mean.shape == rstd.shape == (x.shape[0], G) and mean.dtype == torch.float32
    check("y", y, y_t, y_64, x.dtype, atol, elementwise)

    needs = needs or [inp[k] is not None for k in NAMES]
    for name, need, got in zip(NAMES, needs, grads):
        if not need:
            assert got is None, name
            continue
        ref = inp[name]
        assert got is not None, name
        assert got.dtype == ref.dtype and got.shape == ref.shape, (name, got.dtype, got.shape)
        if name == "x" and check_strides:
            assert got.stride() == x.stride()
        check(f"d{name}", got, g_t[name], g_64[name], got.dtype, atol, elementwise)
    return y, mean, rstd, grads


def idfn(v):
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


# ------------------------------------------------------------ addends x activations (fp32)
@pytest.mark.parametrize("act", ["identity", "relu", "silu"])
@pytest.mark.parametrize("addends", list(ADDENDS))
def test_addends_acts(addends, act):
    # N2 C6 3x5, G=3: C/G=2, H*W=15 not a power of 2; fused regime, 2 groups per program
    run_case(make_inputs((2, 6, 3, 5), addends=addends), 3, act)


@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("affine", ["none", "w", "b"])
def test_affine_variants(affine, act):
    # N2 C4 3x3, G=2, all addends; weight only / beta only / no affine
    run_case(make_inputs((2, 4, 3, 3), affine=affine), 2, act)


# ------------------------------------------------------------------- groups and shapes
SHAPES = [
    ((2, 8, 3, 3), 1),  # G == 1: one group per sample
    ((2, 8, 3, 3), 2),
    ((2, 8, 3, 3), 4),  # G == C/2
    ((2, 8, 3, 3), 8),  # G == C: C/G == 1
    ((2, 5, 3, 5), 5),  # odd C, G == C, H*W not pow2
    ((3, 6, 3, 5), 3),  # odd N*G, C/G = 2
    ((2, 6, 1, 1), 3),  # single pixel
    ((2, 4, 1, 1), 4),  # single pixel and C/G == 1: zero variance, y == act(beta)
    ((1, 4, 7, 9), 2),  # N == 1, 126 values per group
    ((2, 3, 1, 7), 1),  # H == 1, odd C
    ((2, 6, 3, 5), 2),  # C/G = 3: not a power of two (the general, unpacked fused kernels)
    ((3, 12, 2, 3), 4),  # C/G = 3, odd N, H*W = 6
]


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("shape,G", SHAPES, ids=[f"{idfn(s)}-G{g}" for s, g in SHAPES])
def test_groups_shapes(shape, G, layout):
    run_case(make_inputs(shape, layout=layout, addends="all"), G, "silu")


def test_pos1_channels_last_relu():
    # N3 C4 5x3 channels_last, pos (1, H, W) with every other addend, relu
    run_case(make_inputs((3, 4, 5, 3), layout="cl", addends="all-pos1"), 2, "relu")


# ---------------------------------------------------------------------- low precision
LOWP = [
    ((2, 6, 3, 5), 3, "all", "silu"),  # C/G = 2, H*W not pow2
    ((2, 8, 4, 4), 2, "emb+pos", "silu"),  # the DDPM block
    ((2, 4, 3, 3), 4, "cbias+time", "relu"),  # the NODE block, C/G = 1
    ((2, 4, 2, 3), 1, "none", "identity"),  # plain GroupNorm, G = 1
    ((2, 6, 3, 5), 2, "all", "silu"),  # C/G = 3 (unpacked kernels)
]


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=idfn)
@pytest.mark.parametrize(
    "shape,G,addends,act", LOWP, ids=[f"{idfn(s)}-G{g}-{a}-{f}" for s, g, a, f in LOWP]
)
def test_low_precision(shape, G, addends, act, dtype, layout):
    run_case(make_inputs(shape, dtype=dtype, layout=layout, addends=addends), G, act)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_mixed_dtypes_bf16_x_fp32_params(split):
    # autocast: bf16 x with fp32 affine and addends; grads of fp32 params come back fp32
    inp = make_inputs((2, 6, 3, 5), dtype=torch.bfloat16, pdtype=torch.float32, layout="cl")
    kw = {"split_threshold": 16} if split else {}
    run_case(inp, 3, "silu", **kw)


# ------------------------------------------------------------ large mean: centred variance
@pytest.mark.parametrize("act", ["identity", "silu"])
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_large_mean(split, act):
    # N2 C4 7x9 G2 with x ~ 1e3 + randn: E[u^2] - E[u]^2 in fp32 would lose the variance.
    # Both fp32 computations start from u rounded in fp32 (ulp(1e3) = 6e-5), a floor of ~1e-4
    # on y that torch sometimes beats by luck on single elements: compare the maxima here.
    inp = make_inputs((2, 4, 7, 9), addends="all", offset=1e3)
    run_case(inp, 2, act, elementwise=False, **({"split_threshold": 32} if split else {}))


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_variance_is_centred(offset, split):
    # N2 C4 7x9 G2 (126 values per group), u = x + emb ~ offset + randn, std ~ 1.4
    N, C, H, W, G = 2, 4, 7, 9, 2
    inp = make_inputs((N, C, H, W), addends="emb", offset=offset, affine="none")
    kw = {"split_threshold": 32} if split else {}
    _, mean, rstd = gna.group_norm_act_fwd(
        inp["x"], G, None, None, EPS, "identity", None, inp["emb"], None, None, None, **kw
    )
    mean64 = add_addends(inp["x"].double(), emb=inp["emb"].double()).view(N, G, -1).mean(-1)
    assert (mean.double() - mean64).abs().max() <= 1e-6 * offset
    # u in fp32 (as the kernel forms it), its statistics in fp64: what a centred fp32 algorithm
    # must reproduce; the rounding of u itself is no fault of the variance formula
    u32 = add_addends(inp["x"], emb=inp["emb"]).view(N, G, -1)
    rstd_u = (u32.double().var(-1, unbiased=False) + EPS).rsqrt()
    rel = ((rstd.double() - rstd_u) / rstd_u).abs().max().item()
    assert rel < 1e-4, rel
    # the test can tell: the non-centred fp32 formula on the same u is far off
    naive = (u32 * u32).mean(-1) - u32.mean(-1) ** 2
    rel_naive = ((naive + EPS).clamp_min(EPS).rsqrt().double() - rstd_u).abs() / rstd_u
    assert rel_naive.max().item() > 1e-2


# --------------------------------------------------------------------------- split regime
SPLITS = [
    # shape, G, split_threshold, split_programs, layout, addends, act
    ((2, 4, 7, 9), 2, 32, None, "nchw", "all", "silu"),  # 126/group, 32-pixel tiles, 2 per chunk
    ((2, 4, 7, 9), 1, 16, 64, "cl", "all", "silu"),  # G=1, 16-pixel tiles, 4 chunks of pixels
    ((2, 4, 7, 9), 2, 64, 64, "nchw", "emb+pos", "relu"),  # 2 channels x 32 pixels per tile
    ((2, 6, 3, 5), 3, 8, None, "cl", "all-pos1", "silu"),  # 8-pixel tiles, 15 not pow2
    ((1, 5, 7, 9), 1, 32, 16, "nchw", "cbias+time", "identity"),  # odd C, N=1, pixel chunks
    ((2, 8, 2, 2), 1, 8, None, "nchw", "none", "silu"),  # 2 channels x 4 pixels: channel chunks
]


@pytest.mark.parametrize(
    "shape,G,thr,progs,layout,addends,act",
    SPLITS,
    ids=[f"{idfn(s[0])}-G{s[1]}-t{s[2]}-p{s[3]}-{s[4]}-{s[5]}-{s[6]}" for s in SPLITS],
)
def test_split_regime(shape, G, thr, progs, layout, addends, act):
    N, C, H, W = shape
    Cg, HW = C // G, H * W
    assert not gna._is_fused(Cg, HW, thr)
    plan = gna._split_plan(N, G, Cg, HW, thr, torch.device(DEVICE), progs)
    assert plan["S_C"] * plan["S_HW"] > 1  # the group really is split into several chunks
    inp = make_inputs(shape, layout=layout, addends=addends)
    kw = {"split_threshold": thr, "split_programs": progs}
    y, mean, rstd, grads = run_case(inp, G, act, **kw)
    # the fused regime on the same inputs agrees
    x = inp["x"]
    dy = torch.randn(x.shape, device=DEVICE)
    _, m_f, r_f, _ = kernel_run(inp, G, act, dy, split_threshold=1 << 20)
    torch.testing.assert_close(mean, m_f, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, r_f, rtol=1e-5, atol=1e-6)


def test_split_plan_covers_loops():
    # the SPLITS above exercise: several pixel tiles per chunk, several pixel chunks, several
    # channel chunks; check that the plans really do
    dev = torch.device(DEVICE)
    p = gna._split_plan(2, 2, 2, 63, 32, dev, None)
    assert p["HPC"] > p["BLOCK_HW"] and p["S_HW"] == 1  # a loop of 2 tiles per chunk
    p = gna._split_plan(2, 1, 4, 63, 16, dev, 64)
    assert p["S_HW"] == 4 and p["S_C"] == 4
    p = gna._split_plan(2, 1, 8, 4, 8, dev, None)
    assert p["S_C"] == 4 and p["BLOCK_C"] == 2
    assert not gna._is_fused(128, 32 * 32, gna.SPLIT_THRESHOLD)  # gn-g1 is split by default
    assert gna._is_fused(2, 64, gna.SPLIT_THRESHOLD)  # the NODE block is fused by default


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=idfn)
def test_split_low_precision(dtype):
    # N2 C4 7x9 G1 channels_last, 252 values per group in 32-element tiles
    inp = make_inputs((2, 4, 7, 9), dtype=dtype, layout="cl", addends="emb+pos")
    run_case(inp, 1, "silu", split_threshold=32, split_programs=16)


# ------------------------------------------------------------------ needs, dy layout, NaN
NEEDS = {
    "x-only": (1, 0, 0, 0, 0, 0, 0, 0),
    "weights-only": (0, 1, 1, 0, 0, 0, 0, 0),
    "addends-only": (0, 0, 0, 1, 1, 1, 1, 1),
    "time_map-only": (0, 0, 0, 0, 0, 0, 1, 0),
    "none": (0,) * 8,
}


@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("needs", list(NEEDS))
def test_needs_subsets(needs, split):
    # N2 C4 3x5 G2, all addends; a grad is computed only where asked, and matches the full run
    inp = make_inputs((2, 4, 3, 5), dtype=torch.bfloat16, addends="all")
    kw = {"split_threshold": 8} if split else {}
    mask = [bool(v) for v in NEEDS[needs]]
    x = inp["x"]
    dy = torch.randn(x.shape, device=DEVICE).to(x.dtype)
    *_, part = kernel_run(inp, 2, "silu", dy, mask, **kw)
    *_, full = kernel_run(inp, 2, "silu", dy, None, **kw)
    for name, need, p, f in zip(NAMES, mask, part, full):
        if need:
            torch.testing.assert_close(p, f, msg=name)
        else:
            assert p is None, name


@pytest.mark.parametrize("dy_layout", ["cl", "nchw", "strided"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_dy_layout(layout, dy_layout):
    # N2 C4 3x5 G2: dy in another layout than x (or not dense at all) gives the same grads
    inp = make_inputs((2, 4, 3, 5), layout=layout, addends="all")
    x = inp["x"]
    dy = torch.randn(x.shape, device=DEVICE)
    if dy_layout == "cl":
        dy2 = dy.contiguous(memory_format=torch.channels_last)
    elif dy_layout == "nchw":
        dy2 = dy.contiguous()
    else:
        dy2 = torch.randn(2, 4, 3, 10, device=DEVICE)[..., ::2]
        dy2.copy_(dy)
    *_, ref = kernel_run(inp, 2, "silu", dy)
    *_, got = kernel_run(inp, 2, "silu", dy2)
    for name, a, b in zip(NAMES, got, ref):
        torch.testing.assert_close(a, b, msg=name)
    assert got[0].stride() == x.stride()


def _dy_view(dy, form):
    """dy with the same values in a layout the kernels read without a copy."""
    N, C, H, W = dy.shape
    if form == "slice-nchw":  # channel slice of (N, 1 + C, H, W): ConcatConv's backward
        big = torch.randn(N, C + 1, H, W, device=DEVICE, dtype=dy.dtype)
    elif form == "slice-cl":
        big = torch.randn(N, C + 1, H, W, device=DEVICE, dtype=dy.dtype)
        big = big.contiguous(memory_format=torch.channels_last)
    else:  # "expanded": every stride 0, as the gradient of y.sum()
        return dy[:1, :1, :1, :1].expand(N, C, H, W)
    out = big[:, 1:]
    out.copy_(dy)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=idfn)
@pytest.mark.parametrize("form", ["slice-nchw", "slice-cl", "expanded"])
@pytest.mark.parametrize(
    "shape,G,thr",
    [
        ((2, 6, 3, 5), 2, None),  # fused, C/G = 3 (general kernel)
        ((2, 8, 3, 3), 4, None),  # fused, C/G = 2 (packed kernel)
        ((2, 4, 3, 5), 1, 8),  # split regime
    ],
    ids=["fused", "packed", "split"],
)
def test_dy_read_through_its_strides(shape, G, thr, form, dtype):
    # A dy whose H and W flatten to one stride is read in place (no copy launch) and gives the
    # gradients of its dense copy; bf16 also takes the finalize kernel's recompute of dtime_map.
    inp = make_inputs(shape, dtype=dtype, addends="all")
    dy = torch.randn(shape, device=DEVICE).to(dtype)
    view = _dy_view(dy, form)
    assert not (view.is_contiguous() or view.is_contiguous(memory_format=torch.channels_last))
    dense = view.contiguous()
    *_, ref = kernel_run(inp, G, "silu", dense, split_threshold=thr)
    with count_launches(stub_triton=True) as c:  # (the interpreter itself runs aten ops)
        kernel_run(inp, G, "silu", view, split_threshold=thr)
    copies = ("aten.clone.default", "aten.copy_.default", "aten._to_copy.default")
    assert sum(c.ops[k] for k in copies) == 0, c.summary()  # dy is not copied
    *_, got = kernel_run(inp, G, "silu", view, split_threshold=thr)
    for name, a, b in zip(NAMES, got, ref):
        if b is None:
            continue
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("act", ["identity", "relu", "silu"])
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_nan_propagates(split, act):
    # N2 C4 3x3 G2: a NaN in x poisons its own group only, as in the reference
    inp = make_inputs((2, 4, 3, 3), addends="emb")
    inp["x"][0, 1, 1, 1] = float("nan")
    a = [inp[k] for k in NAMES]
    kw = {"split_threshold": 4} if split else {}
    y, *_ = gna.group_norm_act_fwd(a[0], 2, a[1], a[2], EPS, act, *a[3:], **kw)
    ref = group_norm_act_ref(a[0], 2, a[1], a[2], EPS, act, *a[3:])
    assert torch.equal(y.isnan(), ref.isnan())
    assert y[0, :2].isnan().all() and not y[0, 2:].isnan().any() and not y[1].isnan().any()


@pytest.mark.parametrize("layout", ["nchw-sliced", "cl-sliced", "permuted"])
def test_any_x_layout(layout):
    # N2 C4 3x5 G2: an x that is neither NCHW- nor channels_last-contiguous is read correctly;
    # y (and dx) come back in F.group_norm's format for it
    inp = make_inputs((2, 4, 3, 5), addends="all")
    x = inp["x"]
    if layout == "nchw-sliced":
        odd = torch.stack([x, x], -1).flatten(-2)[..., ::2]
    elif layout == "cl-sliced":
        odd = torch.stack([x, x], 2).flatten(1, 2)
        odd = odd.contiguous(memory_format=torch.channels_last)[:, ::2]
    else:
        odd = x.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert torch.equal(odd, x) and not odd.is_contiguous()
    inp["x"] = odd
    y, _, _, grads = run_case(inp, 2, "silu", check_strides=False)
    want = torch.nn.functional.group_norm(odd, 2).stride()
    assert y.stride() == want and grads[0].stride() == want


# ------------------------------------------------------------ launcher-level addend forms
@pytest.mark.parametrize("form", ["float", "0-d", "strided", "stride0"])
def test_time_forms(form):
    # N3 C4 3x3 G2: time as a Python float (a kernel scalar), a 0-d tensor (its gradient 0-d),
    # an (N,) view of stride 2 and an (N,) expanded view of stride 0
    N, C, H, W, G = 3, 4, 3, 3, 2
    inp = make_inputs((N, C, H, W), addends="cbias+time")
    base = torch.rand(2 * N, device=DEVICE)
    time = {"float": 0.37, "0-d": base[1], "strided": base[::2], "stride0": base[1].expand(N)}[form]
    a = [inp[k] for k in NAMES]
    a[5] = time
    dy = torch.randn(N, C, H, W, device=DEVICE)
    y, mean, rstd = gna.group_norm_act_fwd(a[0], G, a[1], a[2], EPS, "silu", *a[3:])
    needs = [True] * 8
    grads = gna.group_norm_act_bwd(dy, a[0], mean, rstd, G, a[1], a[2], "silu", *a[3:], needs)
    # the reference with the same time as an fp64 leaf
    leaves = {k: inp[k].detach().double().requires_grad_() for k in NAMES if inp[k] is not None}
    t64 = torch.tensor(time, dtype=torch.float64) if form == "float" else time.detach().double()
    t64.requires_grad_(form != "float")
    leaves["time"] = t64
    g = leaves.get
    y64 = group_norm_act_ref(g("x"), G, g("weight"), g("beta"), EPS, "silu", g("conv_bias"),
                             None, t64, g("time_map"), None)  # fmt: skip
    order = [k for k in NAMES if k in leaves and (k != "time" or form != "float")]
    ref = dict(zip(order, torch.autograd.grad(y64, [leaves[k] for k in order], dy.double())))
    torch.testing.assert_close(y.double(), y64, atol=1e-5, rtol=1e-5)
    for name, got in zip(NAMES, grads):
        if name not in ref:
            assert got is None, name
            continue
        assert got.shape == ref[name].shape, name
        torch.testing.assert_close(got.double(), ref[name], atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=idfn)
@pytest.mark.parametrize("with_dx", [True, False], ids=["with-dx", "no-dx"])
def test_dtime_map_from_dx_or_recomputed(with_dx, dtype):
    # dtime_map = sum_n du * time: read from dx when dx is fp32 and computed, else recomputed
    # from x, dy and the saved statistics in the finalize kernel; both against fp64
    inp = make_inputs((3, 4, 3, 5), dtype=dtype, addends="all")
    needs = [with_dx, False, False, False, False, False, True, False]
    run_case(inp, 2, "silu", needs=needs)


def test_fused_backward_in_runs_of_groups():
    # N1 C16 2x2 G8: one sample, so the fused backward splits its groups over two programs
    # (runs of 4 groups); dpos and dtime are then summed over the runs by the finalize kernel
    plan = gna._fused_bwd_plan(1, 8, 2, 4, torch.device(DEVICE))
    assert plan["GCH"] == 2 and plan["GPP"] == 4
    for addends in ("all", "all-pos1"):
        run_case(make_inputs((1, 16, 2, 2), addends=addends), 8, "silu")


def test_launch_plans_are_cached():
    inp = make_inputs((2, 4, 3, 5), addends="all")
    dy = torch.randn(2, 4, 3, 5, device=DEVICE)
    gna._FWD_PLANS.clear()
    gna._BWD_PLANS.clear()
    for _ in range(3):
        kernel_run(inp, 2, "silu", dy)
    assert len(gna._FWD_PLANS) == 1 and len(gna._BWD_PLANS) == 1
