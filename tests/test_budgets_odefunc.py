"""Launch budgets of the paper's ODE function on the fused path (DESIGN section 8, issue 11).

Counted on CPU with :func:`timeaware.profiling.count_launches` (computing aten ops plus Triton
launches, the Triton kernels stubbed) for ``ODEFunc(64)`` at N4 C64 8x8 G32 on the "triton"
backend, x and the parameters requiring grad, t a 0-d tensor without grad, backward as
``torch.autograd.backward(out, dout)`` with ``dout`` made outside the counted block, after one
warm-up call (so both ConcatConv time maps are cached). Budgets: forward <= 6 launches,
forward+backward <= 16, no host sync.

The fused op's own launches are counted separately, by reproducing its three calls one by one
(:func:`op_calls`), so the launches that belong to the ODE function itself (convolutions and the
backward's concatenation) are asserted exactly.
"""

from __future__ import annotations

import torch

from timeaware.models import ODEFunc
from timeaware.profiling import count_launches

N, C, S = 4, 64, 8  # GroupNorm(min(32, C)) = 32 groups


def setup():
    torch.manual_seed(0)
    f = ODEFunc(C, backend="triton")
    x = torch.randn(N, C, S, S, requires_grad=True)
    t = torch.tensor(0.5)
    dout = torch.randn(N, C, S, S)
    f(t, x)  # warm-up: fills the ConcatConv caches
    return f, t, x, dout


def count(f, t, x, dout=None):
    """Launches of one forward (and backward) of ``f``; every .grad is None before."""
    for p in [x, *f.parameters()]:
        p.grad = None
    with count_launches(stub_triton=True) as c:
        y = f(t, x)
        if dout is not None:
            torch.autograd.backward(y, dout)
    return c


def op_calls(f, t):
    """(forward, backward) launches of the three fused-op calls the ODE function makes,
    reproduced one by one: the same modules and addends, inputs that require grad, and the same
    layout of the incoming gradient. ``norm1`` and ``norm2`` receive the dx of a ConcatConv
    backward, a channel slice of an (N, 1 + C, H, W) tensor; ``norm3`` the caller's dout."""
    time = t
    tm1, _ = f.conv1.cached_parts(S, S)
    tm2, _ = f.conv2.cached_parts(S, S)

    def conv_dx():
        return torch.randn(N, C + 1, S, S)[:, 1:]

    calls = [
        (f.norm1, {}, conv_dx()),
        (f.norm2, dict(conv_bias=f.conv1.bias, time=time, time_map=tm1), conv_dx()),
        (f.norm3, dict(conv_bias=f.conv2.bias, time=time, time_map=tm2), torch.randn(N, C, S, S)),
    ]
    out = []
    for norm, kw, dy in calls:
        u = torch.randn(N, C, S, S, requires_grad=True)
        for p in norm.parameters():
            p.grad = None
        f.conv1.bias.grad = f.conv2.bias.grad = None
        with count_launches(stub_triton=True) as cf:
            y = norm(u, **kw)
        with count_launches(stub_triton=True) as cb:
            torch.autograd.backward(y, dy)
        assert cf.syncs == cb.syncs == 0
        out.append((cf.launches, cb.launches))
    return out


def test_odefunc_forward_budget():
    f, t, x, _ = setup()
    c = count(f, t, x)
    assert c.syncs == 0, c.summary()
    assert c.launches <= 6, c.summary()
    op_fwd = sum(fw for fw, _ in op_calls(f, t))
    assert op_fwd == 3  # one launch per fused-op call
    # Outside the op: conv1 and conv2 (bias-free, over the x-part of the weight, cached
    # contiguous) = 2; the 0-d t goes to both op calls as it is (no (N,) copy).
    assert c.launches - op_fwd == 2, c.summary()
    assert c.ops["aten.convolution.default"] == 2, c.summary()


def test_odefunc_backward_launches_outside_the_op():
    f, t, x, dout = setup()
    fwd = count(f, t, x)
    full = count(f, t, x, dout)
    assert full.syncs == 0, full.summary()
    op_bwd = sum(bw for _, bw in op_calls(f, t))
    # Outside the op, per ConcatConv: 1 cat([t * 1, x]) (the concatenation, materialised in
    # backward only) + 1 convolution_backward (dx and the full weight gradient, time channel
    # included, in one call) = 2; two ConcatConvs = 4. No slice/select_backward, no zeros.
    assert (full.launches - fwd.launches) - op_bwd == 4, full.summary()
    assert full.ops["aten.convolution_backward.default"] == 2, full.summary()
    assert full.ops["aten.cat.default"] == 2, full.summary()
    for name in ("aten.slice_backward.default", "aten.select_backward.default"):
        assert full.ops[name] == 0, full.summary()


def test_odefunc_forward_backward_budget():
    f, t, x, dout = setup()
    full = count(f, t, x, dout)
    per_call = [bw for _, bw in op_calls(f, t)]
    # each op backward is its kernel + the finalize kernel, with the (H, W)-dense channel-slice
    # gradient that ConcatConv's backward hands norm1 and norm2 read in place (no copy)
    assert per_call == [2, 2, 2], per_call
    assert full.launches <= 16, full.summary()
