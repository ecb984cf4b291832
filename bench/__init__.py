"""Benchmark suite of timeaware (DESIGN section 7); run it with ``python -m bench``.

Modules:
    workloads  the fixed workloads (gn-node, gn-ddpm, gn-g1, odefunc, node-step, ode-solve,
               ddpm-step, diffusers-unet), each built for one baseline (eager, compile,
               compile-max, fused, eager+timeaware-solver, fused+timeaware-solver,
               torchdiffeq-example) and timed per mode (fwd, bwd, fwd+bwd); byte counts for the
               memory roofline; NFE and attempted steps of the solves; the solve whose solver
               cost is counted; the eager composite of the op and torchdiffeq's example ODE
               function
    timing     the three CUDA times of a row: device time with ``triton.testing.do_bench`` (L2
               flushed), back-to-back time per call and host time per call (a loop of K calls);
               a wall-clock fallback for CPU, a device copy of a row's own byte count (the
               roofline), GPU activities from the profiler, peak memory
    counting   kernel launches and host syncs per call (``timeaware.profiling.count_launches``),
               per solver step for node-step and ode-solve, and the solver's own cost per step
               for torchdiffeq and timeaware side by side (``solve_cost``), against the budgets
               of DESIGN section 8
    host       host time per call of the fused path against the eager ops it replaces
               (``python -m bench --only host``)
    spotcheck  correctness of the Triton kernels and of the eager baselines against the
               reference (on CPU it runs under ``TRITON_INTERPRET=1`` in a subprocess)
    report     markdown tables, JSON with every raw number, PNG chart, target verdicts
    __main__   the command line
    conftest, test_bench_*.py
               the same workloads through pytest-benchmark (``pytest bench/``; CUDA only)
    gpu_check.sh
               the one prepared run on a GPU machine: install, tests, ``pytest bench/``,
               ``python -m bench``, everything into one folder

``bench`` is not an installed package: run it from the repository root.
"""
