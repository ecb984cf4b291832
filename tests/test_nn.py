"""timeaware.nn: GroupNormAct, ConcatConv2d (versus the concatenation it replaces), the fused
ConcatConv -> GroupNorm -> act block, timestep embeddings, init policies and make_norm."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TorchdiffeqConcatConv2d, assert_rel_close, grad_atol
from torch import nn

import timeaware
from timeaware import nn as tnn
from timeaware.profiling import count_launches
from timeaware.reference import group_norm_act_ref

BACKENDS = ("reference", "triton")


def concat_form(layer: nn.Module, t, x):
    """conv(cat([t * ones, x])) with per-sample t broadcast correctly."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    tt = t * torch.ones_like(x[:, :1])
    return layer(torch.cat([tt, x], 1))


def run_both_backends(module, fn, seed=0):
    """Run fn(module) -> tensor on both backends; backprop a fixed random cotangent.

    Returns {backend: (output, {param_name: grad}, extra_grads)} where extra_grads holds the
    grads of tensors fn registered in fn.inputs (if any).
    """
    out = {}
    for be in BACKENDS:
        module.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with timeaware.use_backend(be):
            y, inputs = fn(module)
            g = torch.randn_like(y)
            y.backward(g)
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        in_grads = [i.grad.clone() for i in inputs]
        for i in inputs:
            i.grad = None
        out[be] = (y.detach(), grads, in_grads)
    return out


def assert_backends_match(res, module, rtol=2e-4):
    y_ref, g_ref, i_ref = res["reference"]
    y_tri, g_tri, i_tri = res["triton"]
    assert_rel_close(y_tri, y_ref, rtol, "output")
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(g_ref) == names, f"reference: params without grad {names - set(g_ref)}"
    assert set(g_tri) == names, f"triton: params without grad {names - set(g_tri)}"
    atol = grad_atol([*g_ref.values(), *i_ref])
    for n in sorted(names):
        assert_rel_close(g_tri[n], g_ref[n], rtol, f"grad of {n}", atol)
    for k, (a, b) in enumerate(zip(i_tri, i_ref)):
        assert_rel_close(a, b, rtol, f"grad of input {k}", atol)


# ------------------------------------------------------------------------------------------
# ConcatConv2d
# ------------------------------------------------------------------------------------------
CONV_CASES = [
    dict(padding=0),  # valid conv: time map constant
    dict(padding=1),  # zero-padded borders
    dict(padding=1, stride=2),
    dict(padding=0, stride=2),  # stride 2 over an odd map
    dict(padding=2, dilation=2),
    dict(ksize=1),
    dict(padding=1, transpose=True),
    dict(padding=1, stride=2, transpose=True),
    dict(padding=0, dilation=2, transpose=True),
    dict(padding=1, groups=3),  # (dim_in + 1) = 6, time channel in group 0
    dict(padding=1, groups=2, stride=2, transpose=True),
]
TIMES = {
    "float": 0.37,
    "0d": torch.tensor(-1.3, dtype=torch.float64),
    "per_sample": torch.tensor([0.25, 2.0, -0.5], dtype=torch.float64),
}


@pytest.mark.parametrize(
    "kw", CONV_CASES, ids=lambda kw: ",".join(f"{k}{v}" for k, v in kw.items())
)
@pytest.mark.parametrize("tkind", list(TIMES))
def test_concat_conv_equals_concatenation(kw, tkind):
    m = tnn.ConcatConv2d(5, 6, **kw).double()
    x = torch.randn(3, 5, 7, 6, dtype=torch.float64, requires_grad=True)
    t = TIMES[tkind]
    if isinstance(t, torch.Tensor):
        t = t.clone().requires_grad_(True)
    y = m(t, x)
    ref = concat_form(m._layer, t, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    # gradients of every parameter, of x and of t match the concatenation form too
    g = torch.randn_like(y)
    params = [m._layer.weight, m._layer.bias, x] + ([t] if isinstance(t, torch.Tensor) else [])
    ga = torch.autograd.grad(y, params, g)
    gb = torch.autograd.grad(ref, params, g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_concat_conv_time_map_is_kernel_sum_inside_and_differs_on_border():
    # paper Eq. 4: conv(1, W_t) is the spatial sum of the time kernel, everywhere off the border
    m = tnn.ConcatConv2d(4, 3, 3, padding=1).double()
    tm = m.time_map(6, 6)
    ksum = m._layer.weight[:, 0].sum(dim=(1, 2))
    torch.testing.assert_close(tm[:, 1:-1, 1:-1], ksum[:, None, None].expand(3, 4, 4))
    border = tm.clone()
    border[:, 1:-1, 1:-1] = ksum[:, None, None]
    assert not torch.allclose(tm[:, 0, :], ksum[:, None].expand(3, 6))


def test_torchdiffeq_concat_conv_state_dict_loads_and_matches():
    src = TorchdiffeqConcatConv2d(4, 6, 3, 1, 1)
    dst = tnn.ConcatConv2d(4, 6, 3, 1, 1)
    assert set(src.state_dict()) == set(dst.state_dict()) == {"_layer.weight", "_layer.bias"}
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, 4, 5, 5)
    t = torch.tensor(0.8)
    torch.testing.assert_close(dst(t, x), src(t, x), rtol=1e-5, atol=1e-6)


def test_concat_conv_time_map_follows_weight_updates():
    m = tnn.ConcatConv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        m._layer.weight[:, 0] += 1.0
    torch.testing.assert_close(m(0.5, x), concat_form(m._layer, 0.5, x), rtol=1e-5, atol=1e-6)


def test_concat_conv_errors():
    with pytest.raises(ValueError, match="groups"):
        tnn.ConcatConv2d(4, 6, groups=2)  # dim_in + 1 = 5 not divisible by 2
    m = tnn.ConcatConv2d(4, 6, padding=1)
    with pytest.raises(ValueError, match=r"x: got shape \(2, 3, 5, 5\).*4 channels"):
        m(0.1, torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match=r"t: got a tensor of shape \(3,\)"):
        m(torch.zeros(3), torch.randn(2, 4, 5, 5))
    with pytest.raises(TypeError, match="t: got str"):
        m("0.5", torch.randn(2, 4, 5, 5))


# ------------------------------------------------------------------------------------------
# ConcatConv2d: the cached time map, and gradients of the time channel
# ------------------------------------------------------------------------------------------
def twin(m: tnn.ConcatConv2d) -> TorchdiffeqConcatConv2d:
    """torchdiffeq's module with m's configuration and a copy of its state dict."""
    layer = m._layer
    ref = TorchdiffeqConcatConv2d(
        m.dim_in, m.dim_out, layer.kernel_size[0], layer.stride, layer.padding, layer.dilation
    ).to(layer.weight.dtype)
    ref.load_state_dict(m.state_dict())
    return ref


def assert_same_as_torchdiffeq(m, t, x, rtol=1e-10, atol=1e-12):
    """m(t, x) and the gradients of x, t, weight and bias equal torchdiffeq's on the same
    state dict (fp64: to rounding)."""
    ref = twin(m)
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    y, y_ref = m(t, x), ref(t, x)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, t, m._layer.weight, m._layer.bias], g)
    want = torch.autograd.grad(y_ref, [x, t, ref._layer.weight, ref._layer.bias], g)
    for name, a, b in zip(("x", "t", "weight", "bias"), got, want):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=f"grad of {name}")
    # the time channel's weight gradient is not zero (so the check above has teeth)
    assert want[2][:, 0].abs().max() > 1e-3


def convolutions(fn) -> int:
    with count_launches() as c:
        fn()
    return c.ops["aten.convolution.default"]


def test_concat_conv_time_map_is_cached_per_spatial_size():
    m = tnn.ConcatConv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    assert convolutions(lambda: m(t, x)) == 2  # conv over x + the time map
    assert convolutions(lambda: m(t * 2, x)) == 1  # the time map is reused
    x2 = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert convolutions(lambda: m(t, x2)) == 2  # another spatial size: another map
    assert convolutions(lambda: m(t, x2)) == convolutions(lambda: m(t, x)) == 1
    tm, w_x = m.cached_parts(5, 6, torch.float64)
    torch.testing.assert_close(tm, m.time_map(5, 6), rtol=0, atol=0)
    assert not tm.requires_grad and w_x.is_contiguous()
    assert_same_as_torchdiffeq(m, t, x)
    assert_same_as_torchdiffeq(m, t, x2)
    with pytest.raises(ValueError, match="cached_parts: got groups=3"):
        tnn.ConcatConv2d(5, 6, padding=1, groups=3).cached_parts(4, 4)


def _sgd_step(m, t, x):
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(t, x).square().sum().backward()
    opt.step()


def _inplace_no_grad(m, t, x):
    with torch.no_grad():
        m._layer.weight[:, 0] += 1.0


def _load_state_dict(m, t, x):
    other = tnn.ConcatConv2d(3, 4, 3, padding=1).double()
    m.load_state_dict(other.state_dict())


def _data_write_then_clear(m, t, x):
    m._layer.weight.data[:, 0] -= 1.0  # not seen by the version counter: documented
    m.clear_cache()


def _data_assignment(m, t, x):
    w = m._layer.weight
    version = w._version
    w.data = torch.randn_like(w)  # new storage, same parameter (as vector_to_parameters does)
    assert w._version == version  # so only the storage pointer tells


def _to_float_and_back(m, t, x):
    m.float()
    y = m(t.float(), x.float())  # a float32 entry at the same spatial size
    torch.testing.assert_close(y, twin(m)(t.float(), x.float()), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        m._layer.weight.mul_(-1.0)  # change it while in float32
    m.double()


CHANGES = {
    "optimizer-step": _sgd_step,
    "no_grad-inplace": _inplace_no_grad,
    "load_state_dict": _load_state_dict,
    "data-write+clear_cache": _data_write_then_clear,
    "data-assignment": _data_assignment,
    "to-dtype": _to_float_and_back,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_concat_conv_cache_follows_weight_changes(change):
    m = tnn.ConcatConv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor(0.8, dtype=torch.float64)
    before = m(t, x).detach()  # fills the cache
    CHANGES[change](m, t, x)
    assert_same_as_torchdiffeq(m, t, x)
    assert (m(t, x) - before).abs().max() > 1e-3  # the weights did change


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_concat_conv_cache_filled_without_grad_serves_grad_mode(mode):
    m = tnn.ConcatConv2d(3, 4, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor(-0.6, dtype=torch.float64)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        m(t, x)
    assert_same_as_torchdiffeq(m, t, x)  # would raise for an inference tensor saved
    with ctx:
        torch.testing.assert_close(m(t, x), twin(m)(t, x), rtol=1e-10, atol=1e-12)


def test_concat_conv_double_backward_with_cached_time_map():
    m = tnn.ConcatConv2d(2, 3, 3, padding=1).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    w, b = m._layer.weight, m._layer.bias

    def fn(t, x, w, b):  # w and b are the module's own parameters
        return m(t, x).square()

    # gradcheck perturbs its inputs through .data, which the cache cannot see: for the weights
    # as inputs, recompute at every call (same functions, fresh parts)
    m.use_cache = False
    assert torch.autograd.gradgradcheck(fn, (t, x, w, b))
    m.use_cache = True
    m(t, x)  # cached from here on
    assert torch.autograd.gradgradcheck(lambda t, x: fn(t, x, w, b), (t, x))
    # and every second derivative equals torchdiffeq's, mixed t / time-channel terms included
    ref = twin(m)
    params = [t, x, w, b]
    params_ref = [t, x, ref._layer.weight, ref._layer.bias]
    out = []
    for mod, ps in ((m, params), (ref, params_ref)):
        g = torch.autograd.grad(mod(t, x).square().sum(), ps, create_graph=True)
        s = sum((gi * torch.linspace(-1, 1, gi.numel()).double().view_as(gi)).sum() for gi in g)
        out.append(torch.autograd.grad(s, ps))
    for a, b_ in zip(*out):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concat_conv_module_matches_torchdiffeq_on_both_backends(backend):
    torch.manual_seed(3)
    m = tnn.ConcatConv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    t = torch.tensor(0.9)
    with timeaware.use_backend(backend):
        m(t, x)
        assert_same_as_torchdiffeq(m, t, x, rtol=1e-5, atol=1e-6)
    md = tnn.ConcatConv2d(3, 5, 3, padding=1).double()
    md.load_state_dict(m.state_dict())
    with timeaware.use_backend(backend):
        assert_same_as_torchdiffeq(md, t.double(), x.double())


def test_concat_conv_deepcopy_and_pickle_drop_the_cache():
    import copy
    import pickle

    m = tnn.ConcatConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 4, 4)
    y = m(0.5, x)
    assert len(m._cache) == 1
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert len(c._cache) == 0
        torch.testing.assert_close(c(0.5, x), y)
        with torch.no_grad():
            c._layer.weight.zero_()
        torch.testing.assert_close(m(0.5, x), y)  # the original is untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_concat_conv_gn_act_time_channel_gradient_is_the_concatenation_one(backend):
    """The fused block's gradients (x, t, the full conv weight, its time channel included,
    bias, norm affine) equal those of the eager concatenation form, in fp32, with the time map
    cached, and on the triton backend the op gets a detached time map (no dtime_map)."""
    torch.manual_seed(1)
    block = tnn.ConcatConvGNAct(3, 4, num_groups=2, backend=backend)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    t = torch.tensor(0.6, requires_grad=True)
    block(t, x)  # fill the cache
    seen = []
    real = timeaware.ops.group_norm_act

    def spy(*args, **kwargs):
        seen.append(kwargs["time_map"].requires_grad)
        return real(*args, **kwargs)

    timeaware.ops.group_norm_act = spy
    try:
        y = block(t, x)
    finally:
        timeaware.ops.group_norm_act = real
    assert seen == [backend == "reference"]  # linked on the eager path, detached when fused
    layer = block.conv._layer
    eager = F.relu(F.group_norm(concat_form(layer, t, x), 2, block.norm.weight, block.norm.bias))
    params = [x, t, layer.weight, layer.bias, block.norm.weight, block.norm.bias]
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, params, g)
    want = torch.autograd.grad(eager, params, g)
    torch.testing.assert_close(y, eager, rtol=1e-4, atol=1e-5)
    atol = grad_atol(want)
    for name, a, b in zip(("x", "t", "weight", "bias", "gn.weight", "gn.bias"), got, want):
        assert_rel_close(a, b, 2e-4, f"grad of {name}", atol)
    assert want[2][:, 0].abs().max() > 1e-2  # the time channel does get a gradient


def test_concat_conv_fused_path_refuses_double_backward():
    block = tnn.ConcatConvGNAct(3, 4, num_groups=2, backend="triton")
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    # the fused op refuses create_graph=True on its Triton backward (and the routed conv is
    # once_differentiable behind it): an error, never a silently wrong second derivative
    with pytest.raises(RuntimeError, match="double backward"):
        (gx,) = torch.autograd.grad(block(0.5, x).square().sum(), x, create_graph=True)
        gx.sum().backward()


# ------------------------------------------------------------------------------------------
# GroupNormAct
# ------------------------------------------------------------------------------------------
def test_group_norm_act_state_dict_is_group_norm():
    gn = nn.GroupNorm(2, 6)
    m = tnn.GroupNormAct(2, 6, act="relu")
    assert m.state_dict().keys() == gn.state_dict().keys()
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    m.load_state_dict(gn.state_dict())
    x = torch.randn(2, 6, 3, 5)
    torch.testing.assert_close(m(x), F.relu(gn(x)))
    seq = torch.randn(2, 6, 7)  # (N, C, L) works as with nn.GroupNorm
    torch.testing.assert_close(m(seq), F.relu(gn(seq)))
    with pytest.raises(ValueError, match=r"x: got shape \(2, 5, 7\), expected \(N, 6, \*\)"):
        m(torch.randn(2, 5, 7))
    no_affine = tnn.GroupNormAct(3, 6, affine=False)
    assert list(no_affine.state_dict()) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", ["identity", "relu", "silu", "softplus", "elu", "sigmoid"])
def test_group_norm_act_from_group_norm(backend, act):
    gn = nn.GroupNorm(2, 4)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-0.5, 0.5)
    m = tnn.GroupNormAct.from_group_norm(gn, act=act, backend=backend)
    x = torch.randn(2, 4, 3, 3)
    eager = {
        "identity": lambda y: y,
        "relu": F.relu,
        "silu": F.silu,
        "softplus": F.softplus,
        "elu": F.elu,
        "sigmoid": torch.sigmoid,
    }[act]
    torch.testing.assert_close(m(x), eager(gn(x)), rtol=1e-5, atol=1e-5)


def test_group_norm_act_with_addends_fused_vs_reference_grads():
    m = tnn.GroupNormAct(2, 4, act="silu")
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    emb = torch.randn(2, 4, requires_grad=True)
    pos = torch.randn(1, 3, 3, requires_grad=True)
    cb = torch.randn(4, requires_grad=True)
    tm = torch.randn(4, 3, 3, requires_grad=True)
    t = torch.tensor([0.3, -0.7], requires_grad=True)

    def fn(mod):
        y = mod(x, emb=emb, pos=pos, conv_bias=cb, time=t, time_map=tm)
        return y, [x, emb, pos, cb, tm, t]

    res = run_both_backends(m, fn)
    assert_backends_match(res, m)
    ref = group_norm_act_ref(
        x, 2, m.weight, m.bias, act="silu", conv_bias=cb, emb=emb, time=t, time_map=tm, pos=pos
    )
    torch.testing.assert_close(res["triton"][0], ref.detach(), rtol=1e-4, atol=1e-5)


def test_group_norm_act_errors():
    with pytest.raises(ValueError, match="num_groups: got 3, which does not divide"):
        tnn.GroupNormAct(3, 4)
    with pytest.raises(ValueError, match="act: got 'gelu'"):
        tnn.GroupNormAct(2, 4, act="gelu")
    with pytest.raises(TypeError, match="num_channels"):
        tnn.GroupNormAct(2, 4.0)
    with pytest.raises(ValueError, match=r"x: got shape \(2, 6, 3, 3\)"):
        tnn.GroupNormAct(2, 4)(torch.randn(2, 6, 3, 3))
    with pytest.raises(TypeError, match="gn: got BatchNorm2d"):
        tnn.GroupNormAct.from_group_norm(nn.BatchNorm2d(4))


# ------------------------------------------------------------------------------------------
# make_norm
# ------------------------------------------------------------------------------------------
def test_make_norm_kinds():
    g = tnn.make_norm("group", 64)
    assert isinstance(g, tnn.GroupNormAct) and g.num_groups == 32
    assert tnn.make_norm("group", 12).num_groups == 12  # min(32, C)
    assert tnn.make_norm("group", 8, groups=1).num_groups == 1
    layer = tnn.make_norm("layer", 8)
    assert isinstance(layer, tnn.GroupNormAct) and layer.num_groups == 1
    bn = tnn.make_norm("batch", 8, act="relu")
    assert isinstance(bn, nn.BatchNorm2d) and set(bn.state_dict()) >= {"running_mean", "weight"}
    inn = tnn.make_norm("instance", 8)
    assert isinstance(inn, nn.InstanceNorm2d) and inn.affine
    x = torch.randn(3, 8, 4, 4)
    e = torch.randn(3, 8)
    torch.testing.assert_close(
        bn(x, emb=e),
        F.relu(F.batch_norm(x + e[:, :, None, None], None, None, bn.weight, bn.bias, True)),
    )
    torch.testing.assert_close(inn(x), F.instance_norm(x, weight=inn.weight, bias=inn.bias))
    torch.testing.assert_close(layer(x), F.group_norm(x, 1, layer.weight, layer.bias))


def test_make_norm_errors():
    with pytest.raises(ValueError, match="kind: got 'rms'"):
        tnn.make_norm("rms", 8)
    with pytest.raises(ValueError, match=r"groups: got 3, which does not divide .* 8"):
        tnn.make_norm("group", 8, groups=3)
    with pytest.raises(ValueError, match=r"groups: got 32 \(the default min\(32, C\)\)"):
        tnn.make_norm("group", 40)  # 32 does not divide 40
    with pytest.raises(ValueError, match="groups: got 4 with kind='batch'"):
        tnn.make_norm("batch", 8, groups=4)
    with pytest.raises(ValueError, match="time, time_map"):
        tnn.make_norm("batch", 8)(torch.randn(2, 8, 2, 2), time=1.0)


# ------------------------------------------------------------------------------------------
# Fused ConcatConv -> GroupNorm -> act block
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [dict(num_groups=2), dict(num_groups=1, stride=2), dict(num_groups=4, act="silu")],
    ids=["G2", "G1-stride2", "G4-silu"],
)
def test_concat_conv_gn_act_matches_eager_and_fused_grads(kw):
    block = tnn.ConcatConvGNAct(3, 4, **kw)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    ho = 3 if kw.get("stride") == 2 else 5
    pos = torch.randn(2, ho, ho, requires_grad=True)
    t = torch.tensor(0.6, requires_grad=True)

    def fn(mod):
        return mod(t, x, pos=pos), [x, pos, t]

    res = run_both_backends(block, fn)
    assert_backends_match(res, block)
    # and both equal the unfused pipeline norm(act(ConcatConv(cat) + pos))
    conv = concat_form(block.conv._layer, t, x) + pos[:, None]
    act = {"relu": F.relu, "silu": F.silu}[kw.get("act", "relu")]
    eager = act(F.group_norm(conv, kw["num_groups"], block.norm.weight, block.norm.bias))
    torch.testing.assert_close(res["triton"][0], eager.detach(), rtol=1e-4, atol=1e-5)


def test_concat_conv_gn_act_reads_conv_output_once(monkeypatch):
    """One op call per block, carrying the conv bias, t, the time map and pos as addends."""
    calls = []
    real = timeaware.ops.group_norm_act

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(timeaware.ops, "group_norm_act", spy)
    block = tnn.ConcatConvGNAct(3, 4, num_groups=2)
    block(0.5, torch.randn(2, 3, 4, 4), pos=torch.randn(1, 4, 4))
    assert len(calls) == 1
    kw = calls[0]
    assert kw["conv_bias"] is block.conv._layer.bias
    assert kw["time_map"].shape == (4, 4, 4) and kw["time"] is not None
    assert kw["pos"] is not None and kw["act"] == "relu"


# ------------------------------------------------------------------------------------------
# Embeddings
# ------------------------------------------------------------------------------------------
def ddpm_timestep_embedding(t, dim):
    """DDPM's get_timestep_embedding (diffusion_tf/nn.py), transcribed."""
    half = dim // 2
    emb = math.log(10000) / (half - 1)
    emb = torch.exp(torch.arange(half, dtype=torch.float32) * -emb)
    emb = t.float()[:, None] * emb[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


@pytest.mark.parametrize("dim", [8, 9, 128])
def test_sinusoidal_matches_ddpm(dim):
    t = torch.tensor([0, 1, 17, 999])
    torch.testing.assert_close(tnn.SinusoidalEmbedding(dim)(t), ddpm_timestep_embedding(t, dim))
    assert tnn.SinusoidalEmbedding(dim)(3.0).shape == (1, dim)


def test_timestep_mlp_shapes_and_structure():
    m = tnn.TimestepMLP(8)
    out = m(torch.tensor([1, 500]))
    assert out.shape == (2, 32)
    s = m.sinusoidal(torch.tensor([1, 500]))
    torch.testing.assert_close(m.from_sinusoidal(s), m.fc2(F.silu(m.fc1(s))))
    assert tnn.is_timestep_branch(m)


def test_positional_linear():
    p = tnn.PositionalLinear(3, 4)
    assert p(0.5).shape == (1, 3, 4)
    torch.testing.assert_close(p(0.5)[0], 0.5 * p.weight)
    t = torch.tensor([0.0, 1.0, 2.0])
    out = p(t)
    assert out.shape == (3, 3, 4)
    torch.testing.assert_close(out[2], 2 * p.weight)
    out.sum().backward()
    torch.testing.assert_close(p.weight.grad, torch.full((3, 4), 3.0))
    scaled = tnn.PositionalLinear(2, 2, time_scale=1e-3)
    torch.testing.assert_close(scaled(torch.tensor([1000]))[0], scaled.weight)


def test_positional_mlp():
    sin = tnn.SinusoidalEmbedding(8)
    p = tnn.PositionalMLP(8, 4, 5)
    out = p(sin(torch.tensor([3, 700])))
    assert out.shape == (2, 4, 5)
    assert not torch.allclose(out[0], out[1])  # depends on t
    assert out[0].std() > 0  # spatially varying: not a channel-wise scalar
    with pytest.raises(ValueError, match=r"s: got \(2, 6\)"):
        p(torch.randn(2, 6))


def test_time_mlp_batch_expand():
    m = tnn.TimeMLP(6)
    assert m(0.3).shape == (1, 6)
    assert m(torch.tensor(0.3), batch=4).shape == (4, 6)
    assert m(torch.rand(4), batch=4).shape == (4, 6)


# ------------------------------------------------------------------------------------------
# Init policies (paper Table 2)
# ------------------------------------------------------------------------------------------
def _zeroed(module):
    return {n for n, p in module.named_parameters() if n.endswith("bias") and not p.any()}


@pytest.mark.parametrize("policy", ["none", "operand", "timestep", "all", True, False])
def test_apply_zero_bias_policies(policy):
    torch.manual_seed(0)
    block = nn.ModuleDict(
        {
            "conv": nn.Conv2d(2, 4, 3),
            "cconv": tnn.ConcatConv2d(2, 4),
            "temb": tnn.TimestepMLP(4),
            "proj": tnn.mark_timestep_branch(nn.Linear(16, 4)),
            "norm": tnn.GroupNormAct(2, 4),
            "head": nn.Linear(4, 3),
        }
    )
    branches = tnn.bias_branches(block)
    assert branches == {
        "conv.bias": "operand",
        "cconv._layer.bias": "operand",
        "temb.fc1.bias": "timestep",
        "temb.fc2.bias": "timestep",
        "proj.bias": "timestep",
    }
    zeroed = set(tnn.apply_zero_bias(block, policy))
    expect = {
        "none": set(),
        False: set(),
        "operand": {"conv.bias", "cconv._layer.bias"},
        True: {"conv.bias", "cconv._layer.bias"},
        "timestep": {"temb.fc1.bias", "temb.fc2.bias", "proj.bias"},
        "all": set(branches),
    }[policy]
    assert zeroed == expect
    # the normalisation's bias is zero by construction; nothing else is zero unless zeroed
    assert _zeroed(block) == expect | {"norm.bias"}


def test_apply_zero_bias_errors():
    with pytest.raises(ValueError, match="zero_bias: got 'conv'"):
        tnn.apply_zero_bias(nn.Conv2d(1, 1, 1), "conv")
    with pytest.raises(TypeError, match="module: got int"):
        tnn.apply_zero_bias(3, "all")
