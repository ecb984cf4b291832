"""timeaware.models: ODEFunc, ODEBlock, NODEClassifier, ResBlock, UNet, GaussianDiffusion.

Fused-versus-reference tests run every model on the "triton" backend (Triton kernels under the
interpreter on CPU) and on the "reference" backend and compare the output and every parameter
gradient.
"""

import copy

import pytest
import torch
from helpers import TorchdiffeqODEfunc, assert_rel_close, grad_atol
from torch import nn

import timeaware
from timeaware.models import (
    GaussianDiffusion,
    NODEClassifier,
    ODEBlock,
    ODEFunc,
    ODESolverError,
    ResBlock,
    UNet,
    num_parameters,
)

BACKENDS = ("reference", "triton")


def compare_backends(module, fn, rtol=2e-4, seed=0):
    """fn(module) -> (output, [input tensors]); compare output, every param grad and input grads
    between the reference and the triton backend."""
    res = {}
    for be in BACKENDS:
        module.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        with timeaware.use_backend(be):
            y, inputs = fn(module)
            y.backward(torch.randn_like(y))
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        res[be] = (y.detach(), grads, [i.grad.clone() for i in inputs])
        for i in inputs:
            i.grad = None
    (y_r, g_r, i_r), (y_t, g_t, i_t) = res["reference"], res["triton"]
    assert_rel_close(y_t, y_r, rtol, "output")
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(g_r) == names and set(g_t) == names, names - set(g_t)
    atol = grad_atol([*g_r.values(), *i_r])
    for n in sorted(names):
        assert_rel_close(g_t[n], g_r[n], rtol, f"grad of {n}", atol)
    for k, (a, b) in enumerate(zip(i_t, i_r)):
        assert_rel_close(a, b, rtol, f"grad of input {k}", atol)
    return res


def randomize_norms(module):
    """Non-trivial affine parameters so their gradients and effect are exercised."""
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif "norm" in n and n.endswith("bias"):
                p.uniform_(-0.5, 0.5)


# ------------------------------------------------------------------------------------------
# ODEFunc
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim", [8, 64])
def test_odefunc_loads_torchdiffeq_checkpoint(backend, dim):
    src = TorchdiffeqODEfunc(dim)
    randomize_norms(src)
    dst = ODEFunc(dim, backend=backend)
    assert list(dst.state_dict()) == list(src.state_dict())
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(2, dim, 4, 4)
    t = torch.tensor(0.7)
    torch.testing.assert_close(dst(t, x), src(t, x), rtol=1e-4, atol=1e-5)


def torchdiffeq_twin(dim, backend, dtype):
    """(torchdiffeq's ODEfunc, ODEFunc) with the same state dict, non-trivial norms."""
    src = TorchdiffeqODEfunc(dim)
    randomize_norms(src)
    dst = ODEFunc(dim, backend=backend)
    dst.load_state_dict(src.state_dict(), strict=True)
    return src.to(dtype), dst.to(dtype)


def grads_of(f, t, x, g):
    y = f(t, x)
    return y, dict(
        zip(
            ["x", "t", *dict(f.named_parameters())],
            torch.autograd.grad(y, [x, t, *f.parameters()], g),
        )
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_odefunc_grads_match_torchdiffeq_with_cached_time_map(backend):
    """Output and the gradients of x, t and every parameter (the ConcatConv weights' time
    channel included) equal those of torchdiffeq's ODEfunc built from the same state dict:
    on the first call (cache filled), the second (cache used) and after an optimizer step
    (cache refreshed). Reference backend in fp64 against fp64; triton (fp32 kernels) against
    the fp64 torchdiffeq function."""
    torch.manual_seed(2)
    dtype = torch.float64 if backend == "reference" else torch.float32
    src, dst = torchdiffeq_twin(64, backend, dtype)  # GroupNorm(32): C/G = 2, as the paper
    src = src.double()
    x = torch.randn(2, 64, 5, 5, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (src, dst)]
    for _step in range(2):
        for _call in range(2):
            g = torch.randn_like(x)
            xs, ts = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
            y_ref, want = grads_of(src, ts, xs, g)
            xd = x.to(dtype).requires_grad_(True)
            td = t.to(dtype).requires_grad_(True)
            y, got = grads_of(dst, td, xd, g.to(dtype))
            assert set(got) == set(want)
            # max-norm relative errors; fp64: rounding only, fp32 kernels: fp32 rounding
            rtol = 1e-10 if dtype == torch.float64 else 2e-4
            atol = 1e-12 if dtype == torch.float64 else grad_atol(list(want.values()))
            assert_rel_close(y.double(), y_ref, rtol, "output", 1e-12)
            for k in want:
                assert_rel_close(got[k].double(), want[k], rtol, f"grad of {k}", atol)
            for conv in ("conv1", "conv2"):
                assert want[f"{conv}._layer.weight"][:, 0].abs().max() > 1e-3  # time channel
        for m, opt in zip((src, dst), opts):  # one SGD step each (in-place weight update)
            opt.zero_grad()
            m(t.to(m.norm1.weight.dtype), x.to(m.norm1.weight.dtype)).square().sum().backward()
            opt.step()
        w, w_ref = dst.conv1._layer.weight.double(), src.conv1._layer.weight
        assert_rel_close(w, w_ref, 2e-4, "weights after the step")  # both took the same step


def test_odefunc_reference_double_backward_matches_torchdiffeq():
    torch.manual_seed(4)
    src, dst = torchdiffeq_twin(4, "reference", torch.float64)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    dst(t, x)  # the time maps are cached from here on
    out = []
    for f in (src, dst):
        wrt = [x, t, *f.parameters()]
        g = torch.autograd.grad(f(t, x).square().sum(), wrt, create_graph=True)
        s = sum((gi * torch.linspace(-1, 1, gi.numel()).double().view_as(gi)).sum() for gi in g)
        out.append(torch.autograd.grad(s, wrt))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_odefunc_triton_refuses_double_backward():
    f = ODEFunc(4, groups=2, backend="triton")
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    # the op refuses create_graph=True through its Triton backward, naming the way out
    with pytest.raises(RuntimeError, match="double backward.*backend='reference'"):
        (gx,) = torch.autograd.grad(f(0.3, x).square().sum(), x, create_graph=True)
        gx.sum().backward()


def test_odefunc_fused_path_shares_one_time_tensor_and_detached_time_maps(monkeypatch):
    calls = []
    real = timeaware.ops.group_norm_act

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(timeaware.ops, "group_norm_act", spy)
    f = ODEFunc(4, groups=2, backend="triton")
    f(torch.tensor(0.5), torch.randn(3, 4, 3, 3, requires_grad=True))
    t2, t3 = calls[1]["time"], calls[2]["time"]
    assert t2 is t3 and t2.dim() == 0  # one 0-d time, broadcast by the op without a copy
    assert not calls[1]["time_map"].requires_grad and not calls[2]["time_map"].requires_grad


ODE_CASES = {
    "default-G=C": dict(channels=4),
    "G2-inject": dict(channels=4, groups=2, inject="linear", spatial_size=(4, 4)),
    "G1-silu": dict(channels=4, groups=1, act="silu"),
    "softplus": dict(channels=4, groups=2, act="softplus"),  # eager act after fused identity
    "mlp-embed-zero-bias": dict(channels=4, groups=2, time_embed="mlp", zero_bias="operand"),
}


@pytest.mark.parametrize("case", list(ODE_CASES))
def test_odefunc_fused_equals_reference(case):
    f = ODEFunc(**ODE_CASES[case])
    randomize_norms(f)
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    t = torch.tensor(0.4, requires_grad=True)
    compare_backends(f, lambda m: (m(t, x), [x, t]))


def test_odefunc_makes_three_fused_calls_with_addends(monkeypatch):
    calls = []
    real = timeaware.ops.group_norm_act

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(timeaware.ops, "group_norm_act", spy)
    f = ODEFunc(4, groups=2, inject="linear", spatial_size=(3, 3))
    f(0.5, torch.randn(2, 4, 3, 3))
    assert len(calls) == 3
    assert [c["act"] for c in calls] == ["relu", "relu", "identity"]
    assert all(calls[0][k] is None for k in ("conv_bias", "time", "time_map", "pos", "emb"))
    for c, conv in zip(calls[1:], (f.conv1, f.conv2)):
        assert c["conv_bias"] is conv._layer.bias
        assert c["time"] is not None and c["time_map"].shape == (4, 3, 3)
        assert c["pos"].shape == (1, 3, 3)


def test_odefunc_nfe_and_options():
    f = ODEFunc(4, groups=2)
    x = torch.randn(1, 4, 3, 3)
    for _ in range(3):
        f(0.0, x)
    assert f.nfe == 3
    f.reset_nfe()
    assert f.nfe == 0
    for norm in ("batch", "instance", "layer"):
        assert ODEFunc(4, norm=norm)(0.3, x.expand(2, -1, -1, -1)).shape == (2, 4, 3, 3)
    assert ODEFunc(4, zero_bias=True).zero_bias == "operand"
    assert not ODEFunc(4, zero_bias="operand").conv1._layer.bias.any()


def test_odefunc_errors():
    with pytest.raises(ValueError, match="spatial_size: got None with inject='linear'"):
        ODEFunc(4, inject="linear")
    with pytest.raises(ValueError, match="inject: got 'mlp'"):
        ODEFunc(4, inject="mlp")
    with pytest.raises(ValueError, match="act: got 'tanh'"):
        ODEFunc(4, act="tanh")
    with pytest.raises(ValueError, match="time_embed: got 'sin'"):
        ODEFunc(4, time_embed="sin")
    with pytest.raises(ValueError, match="groups: got 3"):
        ODEFunc(4, groups=3)
    f = ODEFunc(4, inject="linear", spatial_size=(3, 3))
    with pytest.raises(ValueError, match=r"x: got spatial size \(4, 4\), expected \(3, 3\)"):
        f(0.1, torch.randn(1, 4, 4, 4))


# ------------------------------------------------------------------------------------------
# ODEBlock
# ------------------------------------------------------------------------------------------
class ZeroDynamics(nn.Module):
    """f = 0 * x: dopri5's error estimate is exactly 0, so every step is accepted and grows
    tenfold from the initial 1e-6 (torchdiffeq: d0/d1 < 1e-5 -> h0 = 1e-6, ifactor = 10)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, t, x):
        return self.w * x


class StepCounter:
    """torchdiffeq callback: counts attempted steps."""

    def __init__(self, func):
        self.steps = 0
        func.callback_step = self

    def __call__(self, t0, y0, dt):
        self.steps += 1


def test_odeblock_dopri5_nfe_known_steps():
    # steps of 1e-6 * 10^k: t reaches 1 after 7 steps (1.111e-7 * (10^7 - 1) > 1)
    block = ODEBlock(ZeroDynamics(), adjoint=False)
    counter = StepCounter(block.odefunc)
    block(torch.ones(3))
    assert counter.steps == 7
    assert block.nfe_forward == 2 + 6 * 7 == 44


@pytest.mark.parametrize("adjoint", [False, True])
def test_odeblock_nfe_is_2_plus_6_steps_on_odefunc(adjoint):
    f = ODEFunc(4, groups=2, backend="reference")
    block = ODEBlock(f, rtol=1e-4, atol=1e-4, adjoint=adjoint)
    counter = StepCounter(f)
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    y = block(x)
    assert counter.steps >= 2
    assert block.nfe_forward == 2 + 6 * counter.steps == f.nfe
    assert block.nfe_backward == 0
    y.square().sum().backward()
    if adjoint:  # the adjoint solve evaluates f (dopri5 again: 2 + 6 x its steps)
        assert block.nfe_backward > 0 and (block.nfe_backward - 2) % 6 == 0
        assert f.nfe == block.nfe_forward + block.nfe_backward
    else:  # autograd through the recorded evaluations: f is not called again
        assert block.nfe_backward == 0


def test_odeblock_adjoint_matches_direct_backprop():
    torch.manual_seed(1)
    f = ODEFunc(4, groups=2, act="softplus", backend="reference").double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    grads = {}
    for adjoint in (False, True):
        block = ODEBlock(f, rtol=1e-7, atol=1e-7, adjoint=adjoint)
        f.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = block(xi)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads[adjoint] = [xi.grad] + [p.grad for p in f.parameters()]
    for a, b in zip(grads[True], grads[False]):
        assert_rel_close(a, b, rtol=2e-5, atol=0)


class Blowup(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, t, x):
        return self.a * x / (1.0001 - t) ** 3


def test_odeblock_solver_errors_carry_nfe():
    block = ODEBlock(Blowup(), options=dict(max_num_steps=2))
    with pytest.raises(ODESolverError, match="max_num_steps exceeded") as info:
        block(torch.ones(2))
    assert info.value.nfe == 2 + 6 * 2 and block.nfe_forward == info.value.nfe
    block = ODEBlock(Blowup(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ODESolverError, match="underflow in dt|non-finite") as info:
        block(torch.ones(2))
    assert info.value.nfe > 14


def test_odeblock_errors():
    with pytest.raises(ValueError, match="method: got 'rk45'"):
        ODEBlock(ODEFunc(4), method="rk45")
    with pytest.raises(ValueError, match="rtol: got 0"):
        ODEBlock(ODEFunc(4), rtol=0)
    with pytest.raises(TypeError, match="odefunc: got function"):
        ODEBlock(lambda t, x: x)


# ------------------------------------------------------------------------------------------
# NODEClassifier
# ------------------------------------------------------------------------------------------
def test_node_classifier_fused_equals_reference():
    m = NODEClassifier(
        3,
        5,
        channels=4,
        image_size=8,
        groups=2,
        inject="linear",
        dropout=0.0,
        method="rk4",
        adjoint=False,
        options=dict(step_size=1.0),
    )
    randomize_norms(m)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    res = compare_backends(m, lambda mod: (mod(x), [x]))
    assert res["triton"][0].shape == (2, 5)
    assert m.nfe_forward == 4  # rk4: 1 step x 4 evaluations


def test_node_classifier_structure():
    m = NODEClassifier()  # paper defaults
    assert m.odeblock.method == "dopri5" and m.odeblock.adjoint
    assert (m.odeblock.rtol, m.odeblock.atol) == (1e-3, 1e-3)
    assert m.odeblock.odefunc.norm1.num_groups == 32 and m.dropout.p == 0.5
    with torch.no_grad():
        assert m.features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    small = NODEClassifier(
        1, 3, channels=4, image_size=4, groups=1, method="euler", options=dict(step_size=0.5)
    )
    assert small(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="image_size: got 30, expected a multiple of 4"):
        NODEClassifier(image_size=30)
    with pytest.raises(ValueError, match=r"x: got spatial size \(16, 16\)"):
        small(torch.randn(2, 1, 16, 16))


# ------------------------------------------------------------------------------------------
# ResBlock and UNet
# ------------------------------------------------------------------------------------------
def default_init(module):
    """Replace DDPM's 1e-5-scaled residual convs by PyTorch's default init so that every
    gradient is O(1) and the comparison is sensitive."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    randomize_norms(module)


@pytest.mark.parametrize("with_pos", [False, True])
def test_resblock_fused_equals_reference(with_pos):
    block = ResBlock(4, 6, temb_dim=8, dropout=0.0, groups=2)
    randomize_norms(block)
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    temb = torch.randn(2, 8, requires_grad=True)
    pos = torch.randn(2, 4, 4, requires_grad=True) if with_pos else None
    inputs = [x, temb] + ([pos] if with_pos else [])
    compare_backends(block, lambda m: (m(x, temb, pos), inputs))


def test_resblock_makes_two_fused_calls(monkeypatch):
    calls = []
    real = timeaware.ops.group_norm_act

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(timeaware.ops, "group_norm_act", spy)
    block = ResBlock(4, 4, temb_dim=8, groups=2)
    block(torch.randn(2, 4, 3, 3), torch.randn(2, 8), torch.randn(1, 3, 3))
    assert len(calls) == 2
    assert calls[0]["act"] == calls[1]["act"] == "silu"
    assert calls[0]["emb"] is None and calls[0]["conv_bias"] is None
    assert calls[1]["conv_bias"] is block.conv1.bias
    assert calls[1]["emb"].shape == (2, 4) and calls[1]["pos"].shape == (1, 3, 3)


def small_unet(**kw):
    args = dict(
        in_channels=3,
        ch=4,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        groups=2,
        image_size=8,
    )
    args.update(kw)
    return UNet(**args)


@pytest.mark.parametrize("inject", [None, "mlp"])
def test_unet_fused_equals_reference(inject):
    u = small_unet(inject=inject)
    default_init(u)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.tensor([3, 870])
    res = compare_backends(u, lambda m: (m(x, t), [x]), rtol=5e-4)
    assert res["triton"][0].shape == (2, 3, 8, 8)


def test_unet_structure_and_options():
    assert num_parameters(UNet()) == 35_746_307  # DDPM CIFAR-10: 35.7M
    u = small_unet(inject="linear", zero_bias="operand")
    conv_biases = [m.bias for m in u.modules() if isinstance(m, nn.Conv2d)]
    assert all(not b.any() for b in conv_biases)
    assert u.time_embed.fc1.bias.any() and u.down[0].temb_proj.bias.any()
    assert set(u.pos_embed) == {"8", "4"}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert u(x, torch.tensor([1, 2])).shape == (2, 3, 8, 8)
        assert u(x, 5).shape == (2, 3, 8, 8)  # scalar t broadcast
        assert u(x, torch.tensor([0.5, 10.25])).shape == (2, 3, 8, 8)  # float t
    with pytest.raises(ValueError, match=r"groups: got 3, expected a divisor .*\[4, 8\]"):
        small_unet(groups=3)
    with pytest.raises(ValueError, match="image_size: got 6"):
        small_unet(image_size=6, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"t: got shape \(3,\), expected \(N,\) = \(2,\)"):
        u(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="inject: got 'pos'"):
        small_unet(inject="pos")


# ------------------------------------------------------------------------------------------
# GaussianDiffusion
# ------------------------------------------------------------------------------------------
@pytest.fixture
def diffusion():
    return GaussianDiffusion(small_unet(ch_mult=(1,), attn_resolutions=(), image_size=4), 8)


def test_diffusion_loss(diffusion):
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    g = torch.Generator().manual_seed(3)
    loss = diffusion.loss(x0, generator=g)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for p in diffusion.model.parameters())
    again = diffusion.loss(x0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, loss.detach())
    abar = diffusion.alphas_bar
    assert abs(abar[0].item() - (1 - 1e-4)) < 1e-7 and abar.shape == (8,)


def test_samplers_shapes_and_nfe(diffusion):
    shape = (2, 3, 4, 4)
    x = diffusion.sample_ancestral(shape, generator=torch.Generator().manual_seed(0))
    assert x.shape == shape and diffusion.last_nfe == 8 and x.abs().max() <= 1
    x2 = diffusion.sample_ancestral(shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, x2)
    for eta in (0.0, 1.0):
        x = diffusion.sample_ddim(shape, steps=3, eta=eta)
        assert x.shape == shape and diffusion.last_nfe == 3
    seen = []
    diffusion.model.register_forward_pre_hook(lambda m, args: seen.append(args[1][0].item()))
    diffusion.sample_ddim(shape, steps=1)
    diffusion.sample_ddim(shape, steps=3)
    assert seen == [7, 7, 4, 0]  # starts at T - 1, ends at 0
    x, nfe = diffusion.sample_pf_ode(shape, generator=torch.Generator().manual_seed(0))
    assert x.shape == shape and torch.isfinite(x).all()
    assert nfe == diffusion.last_nfe and nfe >= 8 and (nfe - 2) % 6 == 0  # dopri5
    x, nfe = diffusion.sample_pf_ode(shape, method="rk4", options=dict(step_size=0.25))
    assert nfe == diffusion.last_nfe == 4 * 4 and x.shape == shape


def test_diffusion_errors(diffusion):
    with pytest.raises(ValueError, match=r"shape: got \(2, 3, 8\)"):
        diffusion.sample_ancestral((2, 3, 8))
    with pytest.raises(ValueError, match="steps: got 9, expected at most timesteps=8"):
        diffusion.sample_ddim((1, 3, 4, 4), steps=9)
    with pytest.raises(ValueError, match="beta_1, beta_T"):
        GaussianDiffusion(nn.Identity(), beta_1=0.1, beta_T=0.01)
    with pytest.raises(ODESolverError, match="max_num_steps"):
        diffusion.sample_pf_ode((1, 3, 4, 4), rtol=1e-9, atol=1e-9, options=dict(max_num_steps=1))


def test_diffusion_model_is_copied_with_ema():
    # trainers keep an EMA copy: deepcopy must work and keep the buffers
    d = GaussianDiffusion(small_unet(), timesteps=4)
    e = copy.deepcopy(d)
    torch.testing.assert_close(e.betas, d.betas)


def test_pf_ode_never_evaluates_the_drift_past_its_end():
    # An adaptive step could end below s = eps (torchdiffeq interpolates back), and its stages
    # then saw s < 0, where sigma(s) is NaN: "underflow in dt" on a trained model. The solver
    # now steps exactly to eps, so the model never sees a time below eps * (T - 1).
    seen = []

    class Model(nn.Module):
        def forward(self, x, t):
            seen.append(t.min().item())
            return 0.5 * x

    diffusion = GaussianDiffusion(Model(), timesteps=1000)
    for tol in (1e-3, 1e-1):
        seen.clear()
        x, nfe = diffusion.sample_pf_ode((2, 3, 4, 4), rtol=tol, atol=tol, eps=1e-3)
        assert torch.isfinite(x).all() and nfe == len(seen)
        assert min(seen) >= 1e-3 * 999 * (1 - 1e-6), min(seen)
    # options of the caller are kept, step_t included
    x, _ = diffusion.sample_pf_ode((1, 3, 4, 4), options=dict(step_t=[0.5], max_num_steps=500))
    assert torch.isfinite(x).all()
