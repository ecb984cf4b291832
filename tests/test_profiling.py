"""The launch/sync counter and the Triton launch stub of timeaware.profiling."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from timeaware import group_norm_act
from timeaware.profiling import count_launches, host_time_per_call, stub_triton_launches


def test_counts_computing_aten_ops_not_views_or_allocations():
    x = torch.randn(4, 3)
    with count_launches() as c:
        v = x[:, 1:].t()  # views: no launch
        torch.empty(5)  # allocation: no launch
        y = v.contiguous()  # clone: 1
        (y * 2).sum()  # mul, sum: 2
    assert c.aten == 3, c.summary()
    assert c.triton == 0 and c.syncs == 0
    assert c.ops["aten.clone.default"] == 1


def test_counts_host_syncs():
    z = torch.randn(3).sum()
    with count_launches() as c:
        z.item()
        bool(z > 0)  # gt (a launch) + a sync
        if z:  # noqa: SIM108 - the point is the implicit bool()
            pass
    assert c.syncs == 3, c.summary()
    assert c.aten == 1, c.summary()


def test_counts_backward_on_cpu():
    x = torch.randn(4, 3, requires_grad=True)
    with count_launches() as c:
        (x * 3).sum().backward()
    assert c.aten >= 3, c.summary()  # mul, sum, the seed ones_like, mul in backward


def test_counts_triton_launches_and_stub_skips_them():
    x = torch.randn(2, 4, 3, 3)
    with count_launches() as c:
        y = group_norm_act(x, 2, act="relu", backend="triton")
    assert c.triton == 1, c.summary()
    ref = group_norm_act(x, 2, act="relu", backend="reference")
    torch.testing.assert_close(y, ref)
    with count_launches(stub_triton=True) as c2:
        group_norm_act(x, 2, act="relu", backend="triton")
    assert c2.triton == 1


@triton.jit
def _fill_kernel(Out, value, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(Out + offs, tl.full([BLOCK], value, tl.float32))


def test_stub_makes_launches_no_ops():
    buf = torch.zeros(8)
    with stub_triton_launches():
        _fill_kernel[(1,)](buf, 3.0, BLOCK=8)
    assert torch.equal(buf, torch.zeros(8))  # the stub ran nothing
    _fill_kernel[(1,)](buf, 3.0, BLOCK=8)
    assert torch.equal(buf, torch.full((8,), 3.0))  # and the patch was undone


def test_host_time_per_call_checks_its_inputs():
    assert host_time_per_call(lambda: None, iters=3, repeats=1, warmup=0) >= 0
    with pytest.raises(TypeError, match="fn"):
        host_time_per_call(3)
    with pytest.raises(ValueError, match="iters"):
        host_time_per_call(lambda: None, iters=0)


@torch.library.custom_op("timeaware_test::copies", mutates_args=())
def _copies(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().to(torch.float64) * 2


def test_copies_inside_a_custom_op_are_counted():
    x = torch.randn(2, 3, 4, 4).permute(0, 2, 3, 1)  # not contiguous: contiguous() copies
    with count_launches() as c:
        _copies(x)
    # clone (contiguous), _to_copy (to float64), mul
    assert c.aten == 3, c.summary()


def test_an_op_with_its_own_kernel_counts_once():
    # silu_backward has a composite definition too, but runs its own kernel: one launch
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.nn.functional.silu(x)
    dy = torch.randn(2, 3)
    with count_launches() as c:
        torch.autograd.backward(y, dy)
    assert c.ops["aten.silu_backward.default"] == 1 and c.aten == 1, c.summary()
