"""Correctness spot-check of the Triton kernels and the eager baselines against the reference.

Each case runs the fused op (``backend="triton"``) forward and backward on small inputs shaped
like one of the benchmark workloads and compares the output and the gradient of every input with
the reference computed in fp64. The bound follows the tests (STYLE.md): a result passes when
``max|kernel - ref64| <= 2 * max|eager_lowp - ref64| + atol * max(1, max|ref64|)``, where
``eager_lowp`` is the reference run in the input's own precision.

The eager baseline of the benchmark (``bench.workloads.eager_group_norm_act``: plain PyTorch in
the input dtype, which is what the gn rows' speedups are measured against) is checked too, on
the same cases shaped like the workloads: its output and every gradient must be within a
dtype-appropriate tolerance of the fp64 reference (:data:`EAGER_RTOL`, relative to the largest
reference value), so that a fast but wrong baseline cannot inflate or deflate a speedup.

Without CUDA the kernels can only run under the Triton interpreter, and ``TRITON_INTERPRET=1``
must be in the environment before triton is imported; :func:`run_subprocess` therefore starts
``python -m bench.spotcheck`` with it set. Run alone::

    python -m bench.spotcheck [--json FILE] [--no-models]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SpotCase:
    """One spot-check case of the fused op: shape, dtype, addends and activation."""

    name: str
    n: int
    c: int
    h: int
    w: int
    groups: int
    act: str
    addends: tuple[str, ...]
    dtype: str
    channels_last: bool = False
    affine: bool = True


CASES = (
    # like gn-node: conv bias + ConcatConv time map, relu, fp32
    SpotCase("gn-node", 2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), "fp32"),
    # like gn-ddpm: timestep embedding + positional embedding, silu, bf16
    SpotCase("gn-ddpm", 2, 8, 4, 4, 4, "silu", ("emb", "pos"), "bf16"),
    # like gn-g1: G = 1, H*W not a power of two, channels_last
    SpotCase("gn-g1", 2, 6, 3, 5, 1, "silu", ("emb",), "fp32", channels_last=True),
    # G == C (one channel per group), no affine, every addend, fp16
    SpotCase(
        "G=C all addends",
        3,
        4,
        2,
        3,
        4,
        "identity",
        ("conv_bias", "emb", "time", "pos"),
        "fp16",
        affine=False,
    ),
)
ATOL = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 2e-2}

# The eager baseline's cases: the gn workloads' configurations at small sizes, in their dtypes
EAGER_CASES = (
    SpotCase("eager gn-node", 2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), "fp32"),
    SpotCase("eager gn-ddpm", 2, 8, 4, 4, 4, "silu", ("emb", "pos"), "bf16"),
    SpotCase("eager gn-g1 fp32", 2, 6, 3, 5, 1, "silu", ("emb",), "fp32"),
    SpotCase("eager gn-g1 bf16", 2, 6, 3, 5, 1, "silu", ("emb",), "bf16"),
)
# max|eager - ref64| <= EAGER_RTOL * max(1, max|ref64|), per output and gradient: 16 units in
# the last place of the dtype at the largest value (a handful of roundings: the adds in the
# input dtype, the normalisation, the act, reductions rounded to the dtype; measured on CPU:
# at most 3.5 units in bf16), far below the O(1) error of a missing addend or a wrong act
EAGER_RTOL = {"fp32": 1e-5, "fp16": 16 * 2.0**-11, "bf16": 16 * 2.0**-8}


def _check_op(case: SpotCase, device) -> dict:
    import torch

    from timeaware.ops import group_norm_act
    from timeaware.reference import group_norm_act_ref

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    n, c, h, w = case.n, case.c, case.h, case.w

    def rnd(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dt)

    x = rnd(n, c, h, w, shift=3.0)  # a mean far from zero: catches E[u^2] - E[u]^2
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = {"input": x}
    if case.affine:
        args["weight"] = rnd(c, scale=0.2, shift=1.0, dt=torch.float32)
        args["bias"] = rnd(c, scale=0.2, dt=torch.float32)
    if "conv_bias" in case.addends:
        args["conv_bias"] = rnd(c, scale=0.5)
    if "emb" in case.addends:
        args["emb"] = rnd(n, c)
    if "time" in case.addends:
        args["time"] = torch.rand(n, generator=gen).to(device)
        args["time_map"] = rnd(c, h, w, scale=0.5)
    if "pos" in case.addends:
        args["pos"] = rnd(n, h, w)
    grad_names = [k for k in args if k != "time"]
    dy = rnd(n, c, h, w)

    def run(fn, cast, **kw):
        a = {}
        for k, v in args.items():
            v = v.detach().to(cast) if cast is not None else v.detach()
            a[k] = v.requires_grad_(k != "time")
        extra = {k: v for k, v in a.items() if k not in ("input", "weight", "bias")}
        y = fn(
            a["input"],
            case.groups,
            a.get("weight"),
            a.get("bias"),
            1e-5,
            act=case.act,
            **extra,
            **kw,
        )
        grads = torch.autograd.grad(y, [a[k] for k in grad_names], dy.to(y.dtype))
        return {"y": y, **{f"d{k}": g for k, g in zip(grad_names, grads)}}

    got = run(group_norm_act, None, backend="triton")
    ref = run(group_norm_act_ref, torch.float64, compute_dtype=torch.float64)
    low = run(group_norm_act_ref, None, compute_dtype=dtype)
    atol = ATOL[case.dtype]
    results = {}
    for key, r in ref.items():
        err = (got[key].double() - r).abs().max().item()
        err_eager = (low[key].double() - r).abs().max().item()
        tol = 2 * err_eager + atol * max(1.0, r.abs().max().item())
        results[key] = {"err": err, "err_eager": err_eager, "tol": tol, "ok": err <= tol}
    fmt_ok = not case.channels_last or got["y"].is_contiguous(memory_format=torch.channels_last)
    return {
        "outputs": results,
        "memory_format_ok": fmt_ok,
        "ok": fmt_ok and all(v["ok"] for v in results.values()),
    }


def _case_inputs(case: SpotCase, device, dtype) -> dict:
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    n, c, h, w = case.n, case.c, case.h, case.w

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(device=device, dtype=dtype)

    args = {"input": rnd(n, c, h, w, shift=3.0)}  # a mean far from zero
    args["weight"] = rnd(c, scale=0.2, shift=1.0)
    args["bias"] = rnd(c, scale=0.2)
    if "conv_bias" in case.addends:
        args["conv_bias"] = rnd(c, scale=0.5)
    if "emb" in case.addends:
        args["emb"] = rnd(n, c)
    if "time" in case.addends:
        args["time"] = torch.rand(n, generator=gen).to(device=device, dtype=dtype)
        args["time_map"] = rnd(c, h, w, scale=0.5)
    if "pos" in case.addends:
        args["pos"] = rnd(n, h, w)
    args["dy"] = rnd(n, c, h, w)
    return args


def check_eager_baseline(case: SpotCase, device, eager_fn=None) -> dict:
    """The benchmark's eager baseline against the fp64 reference: output and every gradient.

    Args:
        case: shape, dtype, addends, act (every tensor, parameters included, in ``case.dtype``,
            as a user running that dtype has them).
        device: where to run.
        eager_fn: the function checked (default ``bench.workloads.eager_group_norm_act``).

    Returns:
        ``{"outputs": {name: {"err", "tol", "ok"}}, "ok": bool}``.
    """
    import torch

    from timeaware.reference import group_norm_act_ref

    if eager_fn is None:
        from bench.workloads import eager_group_norm_act as eager_fn
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[case.dtype]
    base = _case_inputs(case, device, dtype)
    dy = base.pop("dy")

    def run(fn, cast, **kw):
        a = {
            k: (v.to(cast) if cast else v).detach().requires_grad_(k != "time")
            for k, v in base.items()
        }
        extra = {k: v for k, v in a.items() if k not in ("input", "weight", "bias")}
        y = fn(a["input"], case.groups, a["weight"], a["bias"], 1e-5, act=case.act, **extra, **kw)
        names = [k for k in a if k != "time"]
        grads = torch.autograd.grad(y, [a[k] for k in names], dy.to(y.dtype), allow_unused=True)
        return {"y": y, **{f"d{k}": g for k, g in zip(names, grads)}}

    got = run(eager_fn, None)
    ref = run(group_norm_act_ref, torch.float64, compute_dtype=torch.float64)
    outputs = {}
    for key, r in ref.items():
        g = got[key]
        if g is None:  # an input the checked function ignores: no gradient at all
            g = torch.full_like(r, float("inf"))
        err = (g.double() - r).abs().max().item()
        tol = EAGER_RTOL[case.dtype] * max(1.0, r.abs().max().item())
        outputs[key] = {"err": err, "tol": tol, "ok": err <= tol and g.dtype == dtype}
    return {"outputs": outputs, "ok": all(v["ok"] for v in outputs.values())}


def _check_odefunc(device) -> dict:
    """The ODE function on both backends: one evaluation with the gradient of x, t and every
    parameter, then a dopri5 forward solve, which must take the same number of evaluations.

    (The adjoint backward solve is not compared here: at this tiny size a perturbation of 1e-7
    in x already changes its NFE, so an NFE difference there would say nothing about the
    kernels. The node-step rows of the benchmark report both NFEs at full size.)
    """
    import torch

    from timeaware.models import ODEBlock, ODEFunc

    runs = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        func = ODEFunc(channels=8, groups=4, backend=backend).to(device)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 8, 4, 4, generator=gen).to(device).requires_grad_(True)
        t = torch.tensor(0.3, device=device, requires_grad=True)
        dy = torch.randn(2, 8, 4, 4, generator=gen).to(device)
        y = func(t, x)
        leaves = [x, t, *func.parameters()]
        grads = torch.autograd.grad(y, leaves, dy, allow_unused=True)
        names = ["y", "dx", "dt"] + [f"d{n}" for n, _ in func.named_parameters()]
        out = dict(zip(names, [y, *grads]))
        block = ODEBlock(func, adjoint=True)
        with torch.no_grad():
            out["solve"] = block(x.detach())
        runs[backend] = ({k: v for k, v in out.items() if v is not None}, block.nfe_forward)
    (ref, nfe_ref), (got, nfe_got) = runs["reference"], runs["triton"]
    outputs = {}
    for key, r in ref.items():
        err = (got[key].double() - r.double()).abs().max().item()
        tol = 1e-4 * max(1.0, r.abs().max().item())
        outputs[key] = {"err": err, "tol": tol, "ok": err <= tol}
    same = nfe_ref == nfe_got
    return {
        "nfe_reference": [nfe_ref],
        "nfe_fused": [nfe_got],
        "nfe_match": same,
        "outputs": outputs,
        "ok": same and all(v["ok"] for v in outputs.values()),
    }


def check_example_odefunc(device, example_cls=None) -> dict:
    """The torchdiffeq-example baseline computes timeaware's ODE function: with the same state
    dict, its output and the gradients of x, t and every parameter match ``ODEFunc`` on the
    reference backend (fp32, relative tolerance 1e-4).

    Args:
        device: where to run.
        example_cls: the class checked (default ``bench.workloads.TorchdiffeqODEfunc``).
    """
    import torch

    from timeaware.models import ODEFunc

    if example_cls is None:
        from bench.workloads import TorchdiffeqODEfunc as example_cls
    torch.manual_seed(0)
    ref_func = ODEFunc(channels=8, backend="reference").to(device)  # GroupNorm(min(32, C))
    example = example_cls(8).to(device)
    example.load_state_dict(ref_func.state_dict())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 8, 4, 4, generator=gen).to(device)
    dy = torch.randn(2, 8, 4, 4, generator=gen).to(device)
    runs = []
    for func in (ref_func, example):
        x = x0.clone().requires_grad_(True)
        t = torch.tensor(0.3, device=device, requires_grad=True)
        y = func(t, x)
        named = list(func.named_parameters())
        grads = torch.autograd.grad(y, [x, t, *(p for _, p in named)], dy, allow_unused=True)
        runs.append(dict(zip(["y", "dx", "dt", *(f"d{n}" for n, _ in named)], [y, *grads])))
    ref, got = runs
    outputs = {}
    for key, r in ref.items():
        g = got.get(key)
        if r is None or g is None:  # a parameter one of them does not use
            err = 0.0 if r is None and g is None else float("inf")
            outputs[key] = {"err": err, "tol": 0.0, "ok": err == 0.0}
            continue
        err = (g.double() - r.double()).abs().max().item()
        tol = 1e-4 * max(1.0, r.abs().max().item())
        outputs[key] = {"err": err, "tol": tol, "ok": err <= tol}
    return {"outputs": outputs, "ok": all(v["ok"] for v in outputs.values())}


def run_checks(device: str = "cpu", models: bool = True) -> dict:
    """Run every case in this process; the kernels must be able to run on ``device``."""
    import torch

    dev = torch.device(device)
    t0 = time.perf_counter()
    checks = []
    for case in CASES:
        entry = {
            "case": case.name,
            "shape": f"N{case.n} C{case.c} {case.h}x{case.w} G{case.groups}",
            "dtype": case.dtype,
            "act": case.act,
            "addends": "+".join(case.addends),
        }
        try:
            entry.update(_check_op(case, dev))
        except Exception as e:  # noqa: BLE001 - a check that errors is reported, not raised
            entry.update(
                ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=4)
            )
        checks.append(entry)
    for case in EAGER_CASES:
        entry = {
            "case": case.name,
            "shape": f"N{case.n} C{case.c} {case.h}x{case.w} G{case.groups}",
            "dtype": case.dtype,
            "act": case.act,
            "addends": "+".join(case.addends),
        }
        try:
            entry.update(check_eager_baseline(case, dev))
        except Exception as e:  # noqa: BLE001
            entry.update(
                ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=4)
            )
        checks.append(entry)
    if models:
        entry = {
            "case": "ODE function + dopri5 solve",
            "shape": "N2 C8 4x4 G4",
            "dtype": "fp32",
            "act": "relu",
            "addends": "conv_bias+time",
        }
        try:
            entry.update(_check_odefunc(dev))
        except ImportError as e:
            entry.update(ok=None, skipped=f"timeaware.models unavailable: {e}")
        except Exception as e:  # noqa: BLE001
            entry.update(
                ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=4)
            )
        checks.append(entry)
        entry = {
            "case": "torchdiffeq-example ODEfunc vs ODEFunc",
            "shape": "N2 C8 4x4 G8",
            "dtype": "fp32",
            "act": "relu",
            "addends": "conv_bias+time",
        }
        try:
            entry.update(check_example_odefunc(dev))
        except Exception as e:  # noqa: BLE001
            entry.update(
                ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=4)
            )
        checks.append(entry)
    return {
        "device": device,
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "checks": checks,
        "ok": all(c["ok"] is not False for c in checks),
        "wall_s": time.perf_counter() - t0,
    }


def run_subprocess(models: bool = True, timeout: float = 300.0) -> dict:
    """Run the check on CPU under the Triton interpreter in a fresh Python process."""
    import tempfile

    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "spot.json"
        cmd = [sys.executable, "-m", "bench.spotcheck", "--device", "cpu", "--json", str(out)]
        if not models:
            cmd.append("--no-models")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return {
                "ok": False,
                "error": f"timed out after {timeout:.0f} s",
                "checks": [],
                "interpreter": True,
                "device": "cpu",
            }
        if out.exists():
            result = json.loads(out.read_text())
            result["subprocess_wall_s"] = time.perf_counter() - t0
            return result
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        return {
            "ok": False,
            "error": f"exit {proc.returncode}: " + " | ".join(tail),
            "checks": [],
            "interpreter": True,
            "device": "cpu",
        }


def main(argv=None) -> int:
    """Spot-check the kernels (interpreter) against the fp64 reference; 1 on a failure."""
    first_line = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m bench.spotcheck", description=first_line)
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--no-models", action="store_true", help="skip the ODE solve check")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    args = p.parse_args(argv)
    import torch

    if torch.cuda.is_available() and args.device != "cpu":
        device = "cuda"
    else:
        device = "cpu"
        if os.environ.get("TRITON_INTERPRET") != "1":
            print(
                "no CUDA: rerun with TRITON_INTERPRET=1 (set before triton is imported)",
                file=sys.stderr,
            )
            return 2
    try:
        import triton  # noqa: F401
    except ImportError as e:
        result = {
            "ok": None,
            "skipped": f"triton does not import: {e}",
            "checks": [],
            "device": device,
        }
    else:
        result = run_checks(device, models=not args.no_models)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0 if result["ok"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
