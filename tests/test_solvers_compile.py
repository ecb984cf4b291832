"""The dopri5 solver kernels compile for real GPUs, checked ahead of time with no GPU present.

The Triton interpreter (how the solver tests run the kernels) accepts constructs that the GPU
compiler rejects. As a script (``python tests/test_solvers_compile.py [--arch 80 90] [--quick]``,
with ``TRITON_INTERPRET=0``) this runs every launcher of ``kernels/dopri5.py`` on CPU tensors with
``JITFunction.run`` replaced by a recorder, then compiles each distinct launch (kernel,
argument types, constexprs, options) to a cubin for the given archs with ``triton.compile``.
The test runs it in a subprocess for sm_90, float32 and float64. ``--quick`` records the float32
launches only (every kernel, half the variants): CI compiles those with Triton 3.6 too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_OPTIONS = ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion")


def _record_launches(dtypes=None) -> dict:
    import inspect

    import torch
    from triton.runtime.jit import JITFunction

    from timeaware.kernels import dopri5 as K
    from timeaware.solvers import tableau as tab

    jobs: dict = {}
    ptr = {torch.float32: "*fp32", torch.float64: "*fp64", torch.int64: "*i64"}

    def record(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        signature, constexprs = {}, {}
        for p in self.params:
            v = bound.arguments[p.name]
            if p.is_constexpr:
                signature[p.name], constexprs[p.name] = "constexpr", v
            elif isinstance(v, torch.Tensor):
                signature[p.name] = ptr[v.dtype]
            elif isinstance(v, bool):
                signature[p.name] = "i1"
            elif isinstance(v, int):
                signature[p.name] = "i32"
            else:
                signature[p.name] = "fp64"
        key = (self.fn.__name__, tuple(signature.items()), tuple(constexprs.items()),
               tuple(sorted(options.items())))  # fmt: skip
        jobs.setdefault(key, (self, signature, constexprs, options))

    tb = K.Dopri5Tableau(tab.ORDER, tab.ALPHA, tab.BETA, tab.C_ERROR, tab.C_MID)
    orig = JITFunction.run
    JITFunction.run = record
    try:
        n, T, P = 4096, 3, 4
        i64 = dict(dtype=torch.int64)
        plan = K.Dopri5Plan(n=n, P=P, G=P, block=1024, chunks=torch.zeros(P + 1, **i64),
                            progs=torch.zeros(P + 1, **i64), seg_lo=torch.zeros(1, **i64),
                            seg_hi=torch.zeros(1, **i64), seg_n=torch.zeros(1, dtype=torch.float64),
                            S=1, num_warps=4)  # fmt: skip
        for dt in dtypes or (torch.float32, torch.float64):
            v = [torch.empty(n, dtype=dt) for _ in range(12)]
            out = torch.empty(T, n, dtype=dt)
            times = torch.empty(T, dtype=torch.float64)
            sc = K.new_scratch(n, T, P, dt, torch.device("cpu"))
            params = torch.empty(K.PARAMS_LEN, dtype=torch.float64)
            K.dp5_init(v[0], v[1], v[2], v[3], out, times, sc, params, plan)
            K.dp5_probe(v[2], v[3], v[4], sc, params, plan)
            K.dp5_probe_diff(v[2], v[3], v[5], sc, params, plan)
            for first in (False, True):
                K.dp5_init_finish(sc, params, plan, T, first)
            K.dp5_begin(v[2], v[3], v[4], sc, params, plan)
            for row in range(2, 7):
                K.dp5_stage(row, v[2], v[3 : 3 + row], v[11], sc, plan, tb.use_rows[row - 1])
            K.dp5_error(v[2], v[11], v[3:10], sc, params, plan, tb.use_error)
            K.dp5_update(v[2], v[3], v[11], v[4:10], out, sc, params, plan, tb.use_mid)
    finally:
        JITFunction.run = orig
    return jobs


def main(argv=None) -> int:
    import argparse
    import time

    os.environ["TRITON_INTERPRET"] = "0"
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="sm versions")
    parser.add_argument("--quick", action="store_true", help="float32 states only")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    jobs = _record_launches((torch.float32,) if args.quick else None)
    failures = []
    for (name, *_), (fn, signature, constexprs, options) in jobs.items():
        for arch in args.arch:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
            try:
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            except Exception as exc:  # report every failing variant
                failures.append(f"{name} sm_{arch} {constexprs}: {type(exc).__name__}: "
                                f"{str(exc)[:3000]}")  # fmt: skip
    dt = time.perf_counter() - t0
    print(f"triton {triton.__version__}: {len(jobs)} solver kernel variants x {len(args.arch)} "
          f"archs compiled in {dt:.0f} s, {len(failures)} failures")  # fmt: skip
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


def test_solver_kernels_compile_for_sm90(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), "--arch", "90"], capture_output=True, text=True,
        env=env, timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert " 0 failures" in proc.stdout and "solver kernel variants" in proc.stdout, out


if __name__ == "__main__":
    sys.exit(main())
