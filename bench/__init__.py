"""Benchmark suite of timeaware (DESIGN section 7); run it with ``python -m bench``.

Modules:
    workloads  the fixed workloads (gn-node, gn-ddpm, gn-g1, odefunc, node-step, ddpm-step), each
               built for one baseline (eager, compile, compile-max, fused) and timed per mode
               (fwd, bwd, fwd+bwd); byte counts for the memory roofline; NFE of the solves
    timing     CUDA timing with ``triton.testing.do_bench`` (L2 flushed before every repetition),
               a wall-clock fallback for CPU, the device-to-device copy bandwidth, peak memory
    spotcheck  correctness of the Triton kernels against the eager reference (on CPU it runs
               under ``TRITON_INTERPRET=1`` in a subprocess)
    report     markdown table, JSON with every raw number, PNG chart
    __main__   the command line
    conftest, test_bench_*.py
               the same workloads through pytest-benchmark (``pytest bench/``; CUDA only)

``bench`` is not an installed package: run it from the repository root.
"""
