"""Compile every kernel variant the launchers use for real NVIDIA GPUs, with no GPU present.

The Triton interpreter (how CI runs the kernels) accepts constructs that the GPU compiler
rejects. This script closes that gap: it runs the launchers on CPU tensors with
``TRITON_INTERPRET=0`` and ``JITFunction.run`` replaced by a hook that records each launch
(kernel, argument types, constexprs, num_warps) instead of running it, then compiles each
distinct launch ahead of time with ``triton.compile`` for sm_80 (A100) and sm_90 (H100) down to
a cubin (Triton ships ptxas). The launchers plan as on an H100 (132 SMs).

Run as ``python tests/gpu_compile_check.py [--quick]``; it exits non-zero if any variant fails
to compile. ``tests/test_kernels_compile.py`` runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import sys
import time

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: real JITFunctions

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_PTR = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float64: "*fp64",
    torch.int32: "*i32",
    torch.int64: "*i64",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
_JOBS: dict[tuple, tuple] = {}


def _arg_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"argument {name}: cannot type {type(value).__name__} for compilation")


def _record(self: JITFunction, *args, grid, warmup, **kwargs):
    """Stand-in for JITFunction.run: record the launch, run nothing."""
    options = {k: kwargs.pop(k) for k in _LAUNCH_OPTIONS if k in kwargs}
    bound = inspect.signature(self.fn).bind(*args, **kwargs)
    signature, constexprs = {}, {}
    for param in self.params:
        value = bound.arguments[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
        else:
            signature[param.name] = _arg_type(param.name, value)
    key = (self.fn.__name__, tuple(signature.items()), tuple(constexprs.items()),
           tuple(sorted(options.items())))  # fmt: skip
    _JOBS.setdefault(key, (self, signature, constexprs, options))


def _cases(quick: bool):
    """Launcher calls covering every flag, act, dtype, layout and both regimes.

    The full matrix is their product (several hundred variants, ~10 CPU-minutes to compile);
    ``quick`` takes a covering set instead: each value of each axis at least once per regime.
    """
    # (N, C, H, W, G): fused NODE-like, fused with H*W not pow2, split G=1 (large group)
    shapes = [(4, 64, 8, 8, 32), (2, 6, 3, 5, 3), (2, 128, 32, 32, 1)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    acts = ["identity", "relu", "silu"]
    addend_sets = [(), ("cbias", "emb", "time", "pos"), ("emb", "pos1"), ("cbias", "time")]
    layouts = ["nchw", "channels_last"]
    if not quick:
        yield from itertools.product(shapes, dtypes, acts, addend_sets, layouts, (True, False))
        return
    for shape in (shapes[0], shapes[2]):  # one fused, one split
        yield shape, torch.float32, "silu", addend_sets[1], "nchw", True  # every addend
        yield shape, torch.bfloat16, "relu", addend_sets[0], "nchw", False  # none, no affine
        yield shape, torch.float16, "identity", addend_sets[2], "channels_last", True
        yield shape, torch.bfloat16, "silu", addend_sets[3], "channels_last", True


def _run_launchers(quick: bool) -> int:
    from timeaware.kernels import group_norm_act as k

    k._target_programs = lambda device: 2 * 132  # plan as on an H100 (132 SMs)
    JITFunction.run = _record
    calls = 0
    for (n, c, h, w, g), dtype, act, adds, layout, affine in _cases(quick):
        x = torch.empty(n, c, h, w, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        p = torch.float32  # parameters stay fp32 (autocast); addends in x's dtype
        wt = torch.empty(c, dtype=p) if affine else None
        bt = torch.empty(c, dtype=p) if affine else None
        cb = torch.empty(c, dtype=p) if "cbias" in adds else None
        emb = torch.empty(n, c, dtype=dtype) if "emb" in adds else None
        t = torch.empty(n, dtype=torch.float32) if "time" in adds else None
        tm = torch.empty(c, h, w, dtype=p) if "time" in adds else None
        pos = None
        if "pos" in adds or "pos1" in adds:
            pos = torch.empty(1 if "pos1" in adds else n, h, w, dtype=dtype)
        y, mean, rstd = k.group_norm_act_fwd(x, g, wt, bt, 1e-5, act, cb, emb, t, tm, pos)
        needs = (True, affine, affine, cb is not None, emb is not None, t is not None,
                 tm is not None, pos is not None)  # fmt: skip
        k.group_norm_act_bwd(
            torch.empty_like(x), x, mean, rstd, g, wt, bt, act, cb, emb, t, tm, pos, needs
        )
        # parameter grads only (dx not needed): the kernels' other store/reduce branches
        k.group_norm_act_bwd(
            torch.empty_like(x), x, mean, rstd, g, wt, bt, act, cb, emb, t, tm, pos,
            (False, *needs[1:]),
        )  # fmt: skip
        calls += 1
    return calls


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller matrix of variants")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="sm versions")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    calls = _run_launchers(args.quick)
    failures = []
    for (name, *_), (fn, signature, constexprs, options) in _JOBS.items():
        for arch in args.arch:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
            try:
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
            except Exception as exc:  # report every failing variant, not only the first
                failures.append(f"{name} sm_{arch} {constexprs} {options}: "
                                f"{type(exc).__name__}: {str(exc)[:2000]}")  # fmt: skip
    dt = time.perf_counter() - t0
    print(f"triton {triton.__version__}: {calls} launcher calls, {len(_JOBS)} distinct kernel "
          f"variants x {len(args.arch)} archs compiled in {dt:.0f} s, "
          f"{len(failures)} failures")  # fmt: skip
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
