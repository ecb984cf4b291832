"""Compile every kernel variant the launchers use for real NVIDIA GPUs, with no GPU present.

The Triton interpreter (how CI runs the kernels) accepts constructs that the GPU compiler
rejects. This script closes that gap: it runs the launchers on CPU tensors with
``TRITON_INTERPRET=0`` and ``JITFunction.run`` replaced by a hook that records each launch
instead of running it, then compiles each distinct launch ahead of time with ``triton.compile``
for sm_80 (A100) and sm_90 (H100) down to a cubin (Triton ships ptxas). The launchers plan as
on an H100 (132 SMs).

The signature of each recorded launch is the one the JIT itself would compile at run time: the
hook runs the JIT's own argument binder (``create_function_from_signature`` with the CUDA
backend) and ``JITFunction._pack_args``, so integer arguments equal to 1 become constexprs,
integers divisible by 16 and 16-byte-aligned pointers get ``tt.divisibility = 16``, and every
other argument is compiled without those attributes, exactly as for a launch on a GPU. (CPU
tensors are allocated 64-byte aligned, like CUDA's 256-byte allocations, so pointer alignment
is the same for the same views.)

Run as ``python tests/gpu_compile_check.py [--quick] [--dump DIR]``; it exits non-zero if any
variant fails to compile. ``--dump DIR`` writes each variant's TTGIR and PTX (for reading the
layouts and vector widths the compiler chose) and a summary of ``ttg.convert_layout`` counts and
global load/store widths. ``tests/test_kernels_compile.py`` runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: real JITFunctions

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
_JOBS: dict[tuple, tuple] = {}
# the CUDA backend specialises arguments the same way for every arch (alignment 16, == 1)
_SPEC_BACKEND = make_backend(GPUTarget("cuda", 90, 32))
_BINDERS: dict = {}


def _record(self: JITFunction, *args, grid, warmup, **kwargs):
    """Stand-in for JITFunction.run: specialise as the JIT would, record the launch, run nothing."""
    binder = _BINDERS.get(self)
    if binder is None:
        binder = _BINDERS[self] = create_function_from_signature(
            self.signature, self.params, _SPEC_BACKEND
        )
    bound_args, specialization, options = binder(*args, **kwargs)
    _, signature, constexprs, attrs = self._pack_args(
        _SPEC_BACKEND, kwargs, bound_args, specialization, options
    )
    launch = {k: kwargs[k] for k in _LAUNCH_OPTIONS if k in kwargs}
    key = (self.fn.__name__, str(specialization), tuple(sorted(launch.items())))
    _JOBS.setdefault(key, (self, signature, constexprs, attrs, launch))


def _cases(quick: bool):
    """Launcher calls covering every flag, act, dtype, layout, time form and both regimes.

    The full matrix is their product (hundreds of variants, ~15 CPU-minutes to compile);
    ``quick`` takes a covering set instead: each value of each axis at least once per regime.
    Each case runs the forward and three backwards (every gradient; parameters only; x and
    time_map only, which reads dtime_map from dx in fp32 and recomputes it otherwise).
    """
    # (N, C, H, W, G): fused NODE-like (packed kernels: C/G a power of two), fused with H*W
    # not pow2 and C/G = 3 (the general fused kernels), fused with a sample split in runs of
    # groups (N=1), split G=1 (large group)
    shapes = [(4, 64, 8, 8, 32), (2, 6, 3, 5, 2), (1, 64, 8, 8, 32), (2, 128, 32, 32, 1)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    acts = ["identity", "relu", "silu"]
    addend_sets = [
        (),
        ("cbias", "emb", "time", "pos"),
        ("emb", "pos1"),
        ("cbias", "time0d"),
        ("time_float", "pos"),
    ]
    layouts = ["nchw", "channels_last"]
    if not quick:
        yield from itertools.product(shapes, dtypes, acts, addend_sets, layouts, (True, False))
        return
    for shape in (shapes[0], shapes[3]):  # one fused, one split
        yield shape, torch.float32, "silu", addend_sets[1], "nchw", True  # every addend
        yield shape, torch.bfloat16, "relu", addend_sets[0], "nchw", False  # none, no affine
        yield shape, torch.float16, "identity", addend_sets[2], "channels_last", True
        yield shape, torch.bfloat16, "silu", addend_sets[3], "channels_last", True
        yield shape, torch.float32, "relu", addend_sets[4], "channels_last", False
    yield shapes[2], torch.float32, "silu", addend_sets[1], "nchw", True  # runs of groups
    yield shapes[1], torch.bfloat16, "silu", addend_sets[2], "channels_last", True  # C/G = 3
    yield shapes[1], torch.float32, "relu", addend_sets[1], "nchw", True


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
        t, tm = None, None
        if "time" in adds:
            t = torch.empty(n, dtype=torch.float32)
        elif "time0d" in adds:
            t = torch.empty((), dtype=torch.float32)
        elif "time_float" in adds:
            t = 0.5
        if t is not None:
            tm = torch.empty(c, h, w, dtype=p)
        pos = None
        if "pos" in adds or "pos1" in adds:
            pos = torch.empty(1 if "pos1" in adds else n, h, w, dtype=dtype)
        y, mean, rstd = k.group_norm_act_fwd(x, g, wt, bt, 1e-5, act, cb, emb, t, tm, pos)
        t_grad = isinstance(t, torch.Tensor)
        needs = (True, affine, affine, cb is not None, emb is not None, t_grad,
                 tm is not None, pos is not None)  # fmt: skip
        dy = torch.empty_like(x)
        for need in (needs, (False, *needs[1:]), (True, *[False] * 5, tm is not None, False)):
            k.group_norm_act_bwd(dy, x, mean, rstd, g, wt, bt, act, cb, emb, t, tm, pos, need)
        calls += 1
    return calls


_LOAD = re.compile(r"\bld\.global\S*")
_STORE = re.compile(r"\bst\.global\S*")
_VEC = re.compile(r"\.(v[248])\.")


def _widths(ptx: str, pattern: re.Pattern) -> dict:
    """Global loads (or stores) of the PTX by vector width: {"v1": n, "v2": n, "v4": n}."""
    out: dict = {}
    for m in pattern.finditer(ptx):
        v = _VEC.search(m.group(0) + ".")
        key = v.group(1) if v else "v1"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller matrix of variants")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="sm versions")
    parser.add_argument("--dump", type=Path, default=None, help="write TTGIR/PTX + a summary")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    calls = _run_launchers(args.quick)
    failures, summary = [], []
    for (name, spec, _), (fn, signature, constexprs, attrs, launch) in _JOBS.items():
        for arch in args.arch:
            src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=launch)
            except Exception as exc:  # report every failing variant, not only the first
                failures.append(f"{name} sm_{arch} {constexprs} {attrs} {launch}: "
                                f"{type(exc).__name__}: {str(exc)[:2000]}")  # fmt: skip
                continue
            if args.dump is not None:
                ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
                tag = f"{name}-{abs(hash(spec)) % 10**8:08d}-sm{arch}"
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"{tag}.ttgir").write_text(ttgir)
                (args.dump / f"{tag}.ptx").write_text(ptx)
                named = {fn.arg_names[k[0]]: v for k, v in constexprs.items()}
                summary.append(
                    f"{tag}: convert_layout={ttgir.count('ttg.convert_layout')} "
                    f"loads={_widths(ptx, _LOAD)} stores={_widths(ptx, _STORE)} "
                    f"X={signature.get('X')} {launch} {named}"
                )
    dt = time.perf_counter() - t0
    print(f"triton {triton.__version__}: {calls} launcher calls, {len(_JOBS)} distinct kernel "
          f"variants x {len(args.arch)} archs compiled in {dt:.0f} s, "
          f"{len(failures)} failures")  # fmt: skip
    if args.dump is not None:
        (args.dump / "summary.txt").write_text("\n".join(summary) + "\n")
    for f in failures:
        print("FAILED", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
