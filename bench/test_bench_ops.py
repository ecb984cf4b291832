"""pytest-benchmark: the fused op workloads (gn-node, gn-ddpm, gn-g1) of DESIGN section 7."""

from __future__ import annotations

import pytest
import torch

from bench.workloads import variants

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="benchmarks need a CUDA GPU; on CPU run `python -m bench` (eager timings + checks)",
)

BASELINES = ("eager", "compile", "fused")
CASES = [
    pytest.param(v, mode, b, id=f"{v.label}-{mode}-{b}".replace(" ", "-"))
    for v in variants("full")
    if v.workload.startswith("gn-")
    for mode in v.modes
    for b in BASELINES
]


@pytest.mark.parametrize(("variant", "mode", "baseline"), CASES)
def test_op(run_workload, variant, mode, baseline):
    """Time one op workload, mode and baseline with pytest-benchmark."""
    run_workload(variant, mode, baseline, rounds=200)
