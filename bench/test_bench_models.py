"""pytest-benchmark: the model and solver workloads (odefunc, node-step, ode-solve, ddpm-step,
diffusers-unet) of DESIGN section 7."""

from __future__ import annotations

import pytest
import torch

from bench.workloads import skip_reason, variants

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="benchmarks need a CUDA GPU; on CPU run `python -m bench` (eager timings + checks)",
)

BASELINES = (
    "eager",
    "compile",
    "fused",
    "fused+timeaware-solver",
    "eager+timeaware-solver",
    "torchdiffeq-example",
)
ROUNDS = {"odefunc": 100, "node-step": 10, "ode-solve": 20, "ddpm-step": 10, "diffusers-unet": 10}
CASES = [
    pytest.param(v, mode, b, id=f"{v.label}-{mode}-{b}".replace(" ", "-"))
    for v in variants("full")
    if v.workload in ROUNDS
    for mode in v.modes
    for b in BASELINES
    if b in v.baselines
]


@pytest.mark.parametrize(("variant", "mode", "baseline"), CASES)
def test_model(run_workload, variant, mode, baseline):
    """Time one model workload, mode and baseline with pytest-benchmark."""
    why = skip_reason(variant, baseline)  # diffusers-unet without diffusers
    if why:
        pytest.skip(why)
    run_workload(variant, mode, baseline, rounds=ROUNDS[variant.workload])
