"""pytest-benchmark set-up for ``pytest bench/``.

Each test times one (workload, mode, baseline) of :mod:`bench.workloads` with the ``benchmark``
fixture; ``benchmark.group`` is the workload and mode, so a group lists eager, torch.compile and
fused side by side and ``--benchmark-compare`` sets a run against a saved one. The timed function
ends with ``torch.cuda.synchronize()``; the untimed set-up of every round resets the gradients
and clears the L2 cache (as ``triton.testing.do_bench`` does). Everything is skipped without
CUDA: CPU timings of the eager reference say nothing about the kernels.

    pytest bench/ --benchmark-save=h100            # then, after a change:
    pytest bench/ --benchmark-compare --benchmark-group-by=group
"""

from __future__ import annotations

import pytest
import torch

from bench.workloads import COMPILE_MODE, mode_fn

L2_FLUSH_BYTES = 256 << 20


@pytest.fixture
def run_workload(benchmark):
    """``run(variant, mode, baseline, rounds)``: time one row with the ``benchmark`` fixture."""

    def run(variant, mode: str, baseline: str, rounds: int) -> None:
        device = torch.device("cuda")
        torch._dynamo.config.allow_unspec_int_on_nn_module = True  # ODEFunc's nfe counter
        if baseline in COMPILE_MODE:
            torch._dynamo.reset()
        case = variant.build(baseline, device)
        fn = mode_fn(case, mode)
        fn()  # warm-up and compilation, outside the timing
        torch.cuda.synchronize()
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device)

        def setup():
            for t in case.leaves:
                t.grad = None
            flush.zero_()
            torch.cuda.synchronize()

        def timed():
            fn()
            torch.cuda.synchronize()

        benchmark.group = f"{variant.label} {mode}"
        benchmark.extra_info.update(
            workload=variant.workload,
            variant=variant.label,
            shape=variant.shape,
            dtype=variant.dtype,
            mode=mode,
            baseline=baseline,
            device=torch.cuda.get_device_name(device),
        )
        benchmark.pedantic(timed, setup=setup, rounds=rounds, warmup_rounds=2, iterations=1)
        nbytes = (case.bytes or {}).get(mode)
        if nbytes:
            benchmark.extra_info["bytes"] = nbytes
            benchmark.extra_info["gbps"] = nbytes / benchmark.stats.stats.median / 1e9
        if case.nfe is not None:
            benchmark.extra_info["nfe"] = list(case.nfe())

    return run
