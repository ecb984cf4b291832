"""The public op: input checks, backend dispatch, autograd through torch.library, compile, autocast.

The kernels' full matrix (addends x act x G x shapes x dtypes x regimes) is in test_kernels.py;
here every case goes through ``timeaware.group_norm_act`` and autograd, as users call it.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import timeaware
from timeaware import BackendUnavailableError, group_norm_act, use_backend
from timeaware.reference import group_norm_act_ref

N, C, H, W, G = 2, 6, 3, 5, 3


def _args(n=N, c=C, h=H, w=W, dtype=torch.float32, device="cpu", requires_grad=False):
    def r(*shape, scale=1.0, offset=0.0):
        t = torch.randn(*shape, device=device, dtype=torch.float32) * scale + offset
        return t.to(dtype).requires_grad_(requires_grad)

    return dict(
        weight=r(c, scale=0.3, offset=1.5),
        bias=r(c),
        conv_bias=r(c),
        emb=r(n, c),
        time=r(n),
        time_map=r(c, h, w),
        pos=r(n, h, w),
    )


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(x=torch.randn(4)), ValueError, "input"),  # rank 1
        (dict(x=torch.randn(2, 4, 3, 3), num_groups=3), ValueError, "num_groups"),  # 4 % 3
        (dict(x=torch.randn(2, 4, 3, 3), num_groups=0), ValueError, "num_groups"),
        (dict(x=torch.randn(2, 4, 3, 3), num_groups=2.0), TypeError, "num_groups"),
        (dict(x=torch.randint(0, 5, (2, 4, 3, 3))), TypeError, "input"),  # integer dtype
        (dict(emb=torch.randint(0, 5, (2, 4))), TypeError, "emb"),
        (dict(eps=-1e-5), ValueError, "eps"),
        (dict(eps=float("nan")), ValueError, "eps"),
        (dict(act="gelu"), ValueError, "act"),
        (dict(weight=torch.randn(5)), ValueError, "weight"),
        (dict(bias=torch.randn(4, 1)), ValueError, "bias"),
        (dict(conv_bias=torch.randn(3)), ValueError, "conv_bias"),
        (dict(emb=torch.randn(4)), ValueError, "emb"),  # (C,) instead of (N, C)
        (dict(emb=torch.randn(3, 4)), ValueError, "emb"),  # wrong N
        (dict(time=0.5, time_map=torch.randn(4, 3, 2)), ValueError, "time_map"),
        (dict(time=torch.randn(3), time_map=torch.randn(4, 3, 3)), ValueError, "time"),
        (dict(time=0.5), ValueError, "time_map"),  # time without time_map
        (dict(time_map=torch.randn(4, 3, 3)), ValueError, "time"),  # time_map without time
        (dict(time="0.5", time_map=torch.randn(4, 3, 3)), TypeError, "time"),
        (dict(pos=torch.randn(3, 3, 3)), ValueError, "pos"),  # N=3 is neither N nor 1
        (dict(pos=torch.randn(2, 3, 4)), ValueError, "pos"),  # wrong W
        (dict(x=torch.randn(2, 4, 9), pos=torch.randn(2, 9, 1)), ValueError, "4-D"),
        (dict(weight=[1.0] * 4), TypeError, "weight"),
        (dict(backend="cudnn"), ValueError, "backend"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises_naming_the_argument(kwargs, exc, words):
    x = kwargs.pop("x", torch.randn(2, 4, 3, 3))
    num_groups = kwargs.pop("num_groups", 2)
    with pytest.raises(exc) as info:
        group_norm_act(x, num_groups, **kwargs)
    assert words in str(info.value)


def test_mixed_devices_raise():
    x = torch.randn(2, 4, 3, 3, device="meta")
    with pytest.raises(ValueError, match="emb.*device"):
        group_norm_act(x, 2, emb=torch.randn(2, 4))


def test_error_message_names_got_and_expected():
    with pytest.raises(ValueError) as info:
        group_norm_act(torch.randn(2, 4, 3, 3), 2, emb=torch.randn(2, 5))
    msg = str(info.value)
    assert "(2, 5)" in msg and "(2, 4)" in msg and "(N, C)" in msg


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_batch_returns_empty(backend):
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    y = group_norm_act(x, 2, act="silu", emb=torch.randn(0, 4), backend=backend)
    assert y.shape == (0, 4, 3, 3) and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_nan_and_inf_propagate_like_the_reference(backend):
    x = torch.randn(2, 4, 3, 3)
    x[0, 0, 1, 1] = float("nan")  # poisons group (0, 0) only
    x[1, 3, 0, 0] = float("inf")  # poisons group (1, 1) only
    y = group_norm_act(x, 2, act="relu", backend=backend)
    ref = group_norm_act_ref(x, 2, act="relu")
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isnan(y[0, :2]).all() and torch.isfinite(y[0, 2:]).all()
    assert torch.isfinite(y[1, :2]).all()
    torch.testing.assert_close(y[torch.isfinite(ref)], ref[torch.isfinite(ref)])


# ------------------------------------------------------------------------------ backends
def test_backend_selection_per_call_context_and_env(monkeypatch):
    calls = []

    class Spy:
        def forward(self, *a, **k):
            calls.append("triton")
            from timeaware.kernels import group_norm_act as k_

            return k_.forward(*a, **k)

    monkeypatch.setattr(timeaware.ops, "_kernels", lambda: Spy())
    x = torch.randn(2, 4, 3, 3)
    monkeypatch.delenv("TIMEAWARE_BACKEND", raising=False)
    group_norm_act(x, 2)  # auto on a CPU tensor -> reference
    assert calls == []
    group_norm_act(x, 2, backend="triton")
    assert calls == ["triton"]
    with use_backend("triton"):
        group_norm_act(x, 2)
        group_norm_act(x, 2, backend="reference")  # the call's argument wins
        assert timeaware.get_backend() == "triton"
    assert calls == ["triton", "triton"]
    monkeypatch.setenv("TIMEAWARE_BACKEND", "triton")
    assert timeaware.get_backend() == "triton"
    group_norm_act(x, 2)
    assert calls == ["triton"] * 3
    with use_backend("reference"):  # the context wins over the environment
        group_norm_act(x, 2)
    assert calls == ["triton"] * 3
    monkeypatch.setenv("TIMEAWARE_BACKEND", "fast")
    with pytest.raises(ValueError, match="TIMEAWARE_BACKEND"):
        group_norm_act(x, 2)
    with pytest.raises(ValueError, match="use_backend"):
        with use_backend("fast"):
            pass


def test_forced_triton_that_cannot_run_raises(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="float32/float16/bfloat16"):
        group_norm_act(torch.randn(2, 4, 3, 3, dtype=torch.float64), 2, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        group_norm_act(torch.randn(2, 4, 3, 3), 2, backend="triton")
    # auto never raises: it falls to the reference on CPU by design (not a forced backend)
    group_norm_act(torch.randn(2, 4, 3, 3), 2, backend="auto")


# ------------------------------------------------------------------------------ autograd
@pytest.mark.parametrize("act", ["identity", "relu", "silu"])
def test_gradcheck_reference_fp64_all_addends(act):
    a = _args(n=2, c=4, h=2, w=3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, weight, bias, conv_bias, emb, time, time_map, pos):
        return group_norm_act_ref(
            x, 2, weight, bias, 1e-5, act, conv_bias, emb, time, time_map, pos
        )

    assert torch.autograd.gradcheck(f, (x, *a.values()))


GRAD_NAMES = ("x", "weight", "bias", "conv_bias", "emb", "time", "time_map", "pos")


def _grads(fn, x, a, dy):
    tensors = [x, *a.values()]
    y = fn(x, **a)
    return (y, *torch.autograd.grad(y, tensors, dy, allow_unused=True))


@pytest.mark.parametrize(
    "dtype, atol",
    [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)],
    ids=["fp32", "fp16", "bf16"],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_triton_op_matches_reference_through_autograd(dtype, atol, layout, act):
    x = (torch.randn(N, C, H, W) * 2 + 3).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    a = _args(dtype=dtype, requires_grad=True)
    dy = torch.randn(N, C, H, W).to(dtype)

    def ours(x, **a):
        return group_norm_act(x, G, eps=1e-5, act=act, backend="triton", **a)

    def lowp(x, **a):
        return group_norm_act_ref(x, G, eps=1e-5, act=act, compute_dtype=dtype, **a)

    def ref64(x, **a):
        return group_norm_act_ref(x, G, eps=1e-5, act=act, compute_dtype=torch.float64, **a)

    out, low, hi = _grads(ours, x, a, dy), _grads(lowp, x, a, dy), _grads(ref64, x, a, dy)
    assert out[0].dtype == dtype
    assert out[0].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for name, o, lo, h in zip(("y", *GRAD_NAMES), out, low, hi):
        assert o is not None and o.dtype == h.dtype == dtype and o.shape == h.shape, name
        err = (o.double() - h.double()).abs()
        bound = 2 * (lo.double() - h.double()).abs() + atol * (1 + h.double().abs().max())
        assert (err <= bound).all(), f"{name}: max err {err.max():.3g} > bound"


def test_triton_op_scalar_time_broadcast_pos_and_rank3():
    x = torch.randn(N, C, H, W, requires_grad=True)
    t = torch.tensor(0.7, requires_grad=True)  # 0-d time with a gradient
    tm = torch.randn(C, H, W, requires_grad=True)
    pos = torch.randn(1, 1, H, W, requires_grad=True)  # (1, 1, H, W) broadcast over N
    grads = []
    for backend in ("reference", "triton"):
        y = group_norm_act(x, G, act="silu", time=t, time_map=tm, pos=pos, backend=backend)
        grads.append(torch.autograd.grad(y, (x, t, tm, pos), torch.ones_like(y)))
        assert grads[-1][1].shape == () and grads[-1][3].shape == (1, 1, H, W)
    for r, o in zip(*grads):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-4)
    # float time, and an (N, C, L) input, as F.group_norm accepts
    x3 = torch.randn(N, C, 7)
    y3 = group_norm_act(x3, G, act="relu", backend="triton")
    torch.testing.assert_close(y3, F.relu(F.group_norm(x3, G)), atol=1e-5, rtol=1e-5)


def test_only_requested_gradients_are_computed():
    x = torch.randn(N, C, H, W, requires_grad=True)
    a = _args()
    a["emb"].requires_grad_(True)
    y = group_norm_act(x, G, act="silu", backend="triton", **a)
    gx, ge = torch.autograd.grad(y.sum(), (x, a["emb"]))
    ref = group_norm_act_ref(x, G, act="silu", **a)
    rx, re = torch.autograd.grad(ref.sum(), (x, a["emb"]))
    torch.testing.assert_close(gx, rx, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ge, re, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------ compile
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_torch_compile_fullgraph_matches_eager(backend):
    a = _args(requires_grad=True)
    x = torch.randn(N, C, H, W, requires_grad=True)

    def f(x, weight, bias, emb, time, time_map, pos):
        y = group_norm_act(
            x,
            G,
            weight,
            bias,
            act="silu",
            emb=emb,
            time=time,
            time_map=time_map,
            pos=pos,
            backend=backend,
        )
        return (y * y).sum()

    args = (x, a["weight"], a["bias"], a["emb"], a["time"], a["time_map"], a["pos"])
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    eager_loss = f(*args)
    eager_grads = torch.autograd.grad(eager_loss, args)
    comp_loss = compiled(*args)
    comp_grads = torch.autograd.grad(comp_loss, args)
    torch.testing.assert_close(comp_loss, eager_loss, atol=1e-4, rtol=1e-5)
    for c, e in zip(comp_grads, eager_grads):
        torch.testing.assert_close(c, e, atol=1e-4, rtol=1e-4)


def test_custom_op_passes_opcheck():
    from timeaware.ops import _fwd_op

    x = torch.randn(N, C, H, W, requires_grad=True)
    a = _args(requires_grad=True)
    args = (x, G, a["weight"], a["bias"], 1e-5, "silu", a["conv_bias"], a["emb"],
            a["time"], a["time_map"], a["pos"])  # fmt: skip
    torch.library.opcheck(_fwd_op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_custom_op_passes_opcheck(layout):
    from timeaware.ops import _bwd_op, _fwd_op

    x = torch.randn(N, C, H, W)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    a = _args()
    _, stats = _fwd_op(x, G, a["weight"], a["bias"], 1e-5, "silu", a["conv_bias"], a["emb"],
                       a["time"], a["time_map"], a["pos"])  # fmt: skip
    dy = torch.randn(N, C, H, W)
    for needs in ([True] * 8, [False, True, False, True, False, True, False, True]):
        args = (dy, x, stats, G, a["weight"], a["bias"], "silu", a["conv_bias"], a["emb"],
                a["time"], a["time_map"], a["pos"], needs)  # fmt: skip
        torch.library.opcheck(_bwd_op, args, test_utils=("test_schema", "test_faketensor"))


# ------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_autocast_bf16_activations_fp32_parameters(backend):
    conv = torch.nn.Conv2d(3, C, 3, padding=1)
    weight = torch.randn(C, requires_grad=True)
    emb = torch.randn(N, C, requires_grad=True)
    img = torch.randn(N, 3, H, W)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(img)
        assert h.dtype == torch.bfloat16
        y = group_norm_act(h, G, weight, act="silu", emb=emb, backend=backend)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert weight.grad.dtype == torch.float32 and emb.grad.dtype == torch.float32
    ref = group_norm_act_ref(h.detach(), G, weight.detach(), act="silu", emb=emb.detach(),
                             compute_dtype=torch.float64)  # fmt: skip
    assert (y.double() - ref.double()).abs().max() <= 2 * 2.0**-8 * (1 + ref.abs().max())
    assert all(math.isfinite(g) for g in (weight.grad.abs().sum(), emb.grad.abs().sum()))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bias_only_affine_backpropagates(backend):
    # F.group_norm(weight=None, bias=b) cannot backpropagate on CPU in torch 2.13
    x = torch.randn(N, C, H, W, requires_grad=True)
    b = torch.randn(C, requires_grad=True)
    y = group_norm_act(x, G, None, b, act="silu", backend=backend)
    gx, gb = torch.autograd.grad(y.square().sum(), (x, b))
    y64 = group_norm_act_ref(x.double(), G, torch.ones(C, dtype=torch.float64), b.double(),
                             act="silu")  # fmt: skip
    rx, rb = torch.autograd.grad(y64.square().sum(), (x, b))
    torch.testing.assert_close(gx, rx.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gb, rb.float(), atol=1e-5, rtol=1e-4)
