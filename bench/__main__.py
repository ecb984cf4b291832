"""``python -m bench``: time every workload of DESIGN section 7 against every baseline.

On a CUDA GPU each (workload, mode) row is timed for eager PyTorch, torch.compile (default and
max-autotune), and the fused Triton backend, with ``triton.testing.do_bench``; the run also
measures the device-to-device copy bandwidth (the roofline of the GB/s column) and checks the
kernels against the reference. Without one it times the eager reference at small sizes and
checks the kernels under the Triton interpreter; it reports no kernel speedup.

Writes ``<out>/<gpu-or-cpu>-<date>-<commit>.{json,md,png}`` and prints the markdown table on
stdout; progress lines go to stderr. Exits 1 when the correctness check fails or an eager or
fused row fails (a failing torch.compile row is reported, not fatal).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``python -m bench``'s command line."""
    from bench.workloads import BASELINES, DTYPES, WORKLOADS

    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="timeaware benchmark suite (DESIGN section 7).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="WORKLOAD",
        help=f"run only these workloads, of {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions, smaller training steps, no max-autotune",
    )
    p.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        help="override every workload's dtype (op input; autocast of the models)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory of the JSON, markdown and PNG",
    )
    p.add_argument(
        "--baselines",
        nargs="+",
        choices=BASELINES,
        help="baselines to run (default: all on CUDA, eager alone on CPU; 'fused' on "
        "CPU runs the Triton interpreter: its time is no kernel speed)",
    )
    p.add_argument(
        "--max-autotune",
        choices=("ops", "all", "none"),
        default=None,
        help="which workloads get the max-autotune baseline (default: ops = gn-* "
        "and odefunc; none with --quick)",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of a CPU run: 1 keeps timings stable on a shared "
        "machine (small CPU sizes gain little from more)",
    )
    p.add_argument(
        "--no-check", action="store_true", help="skip the correctness spot-check of the kernels"
    )
    return p.parse_args(argv)


def progress(msg: str) -> None:
    """Print a progress line to stderr (the table goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def _git() -> dict:
    def run(*cmd):
        try:
            out = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.rstrip("\n") if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain")
    changed = None
    if status is not None:  # uncommitted or untracked files, other than earlier results
        changed = [
            line[3:] for line in status.splitlines() if not line[3:].startswith("bench/results")
        ]
    return {
        "commit": commit,
        "short": commit[:8] if commit else None,
        "dirty": bool(changed) if changed is not None else None,
        "changed_files": changed,
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device) -> dict:
    """Name and properties of the device the run measures (GPU name and SMs, or the CPU)."""
    import torch

    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": prop.name,
            "capability": list(torch.cuda.get_device_capability(device)),
            "sm_count": prop.multi_processor_count,
            "total_memory_bytes": prop.total_memory,
            "l2_cache_bytes": getattr(prop, "L2_cache_size", None),
        }
    threads = torch.get_num_threads()
    return {
        "type": "cpu",
        "name": f"CPU ({_cpu_name()}, {threads} torch thread{'s' if threads > 1 else ''})",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def versions() -> dict:
    """Versions of python, torch, triton, CUDA and cuDNN for the result file."""
    import torch

    cudnn = None
    if torch.cuda.is_available():
        cudnn = torch.backends.cudnn.version()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        # from the package metadata: importing triton here would fix this process's
        # interpreter setting before the fused baseline could choose it
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "torchdiffeq": _version("torchdiffeq"),
        "timeaware": _version("timeaware"),
    }


# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------
def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(e).__name__}: {first}"[:240]


def _dynamo_stats() -> dict:
    from torch._dynamo.utils import counters

    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "unique_graphs": counters["stats"].get("unique_graphs", 0),
        "calls_captured": counters["stats"].get("calls_captured", 0),
    }


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Progress:
    """Prints one line per finished row: ``[i/total] workload mode baseline time``."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def row(self, r: dict) -> None:
        self.done += 1
        if r["status"] == "ok":
            t = r["timing"]
            what = f"{t['median_ms']:10.4g} ms [{t['p20_ms']:.4g}, {t['p80_ms']:.4g}]"
            if r.get("nfe"):
                what += f"  NFE {r['nfe'][0]}/{r['nfe'][1]}"
        else:
            what = r["status"]
        width = len(str(self.total))
        progress(
            f"[{self.done:>{width}}/{self.total}] {r['variant']:<26} {r['mode']:<8} "
            f"{r['baseline']:<12} {what}"
        )


def run_variant(variant, baselines, device, settings, interp: bool, prog: Progress) -> list:
    """Every (baseline, mode) row of one variant."""
    from bench import timing
    from bench.workloads import COMPILE_MODE, mode_fn, skip_reason

    rows = []
    eager_probe = eager_nfe = None
    for baseline in baselines:
        base = {
            "workload": variant.workload,
            "variant": variant.label,
            "shape": variant.shape,
            "dtype": variant.dtype,
            "note": variant.note,
            "baseline": baseline,
            "interpreter": interp and baseline == "fused",
        }
        skip = skip_reason(variant, baseline)
        if skip:
            for mode in variant.modes:
                rows.append({**base, "mode": mode, "status": f"skipped: {skip}"})
                prog.row(rows[-1])
            continue
        if baseline in COMPILE_MODE:
            import torch._dynamo

            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
        t0 = time.perf_counter()
        try:
            case = variant.build(baseline, device)
        except Exception as e:  # noqa: BLE001 - a row that fails says why
            for mode in variant.modes:
                rows.append({**base, "mode": mode, "status": f"failed to build: {_reason(e)}"})
                prog.row(rows[-1])
            _free(device)
            continue
        extra = {}
        nfe_step = False
        try:  # seeded forward, compared with eager; compiles the inference graph
            compare = len(baselines) > 1 and case.probe is not None
            if baseline in COMPILE_MODE and variant.workload.endswith("-step"):
                compare = False  # an extra inference-graph compile of a whole model: skip
            out = case.probe().detach().float().cpu() if compare else None
            if baseline == "eager":
                eager_probe = out
            elif out is not None and eager_probe is not None:
                diff = (out - eager_probe).abs().max().item()
                scale = eager_probe.abs().max().item()
                extra["max_abs_diff_vs_eager"] = diff
                extra["max_rel_diff_vs_eager"] = diff / scale if scale > 0 else diff
        except Exception as e:  # noqa: BLE001
            extra["probe_error"] = _reason(e)
        try:  # one seeded training step: NFE; compiles the training graph
            if case.nfe:
                nfe = list(case.nfe())
                nfe_step = True
                extra["nfe"] = nfe
                if baseline == "eager":
                    eager_nfe = nfe
                elif eager_nfe is not None:
                    extra["nfe_match"] = nfe == eager_nfe
        except Exception as e:  # noqa: BLE001
            extra["nfe_error"] = _reason(e)
        extra["setup_s"] = time.perf_counter() - t0  # build, probe and NFE step (compilation)
        for mode in variant.modes:
            row = {**base, **extra, "mode": mode}
            try:
                fn = mode_fn(case, mode)
                if not (nfe_step and mode == "fwd+bwd"):  # the NFE step was this warm-up
                    t1 = time.perf_counter()
                    fn()  # warm-up; compiles whatever the probe did not
                    timing.synchronize(device)
                    row["first_call_s"] = time.perf_counter() - t1
                row["timing"] = timing.time_fn(fn, device, settings, case.leaves).as_dict()
                row["peak_mem_bytes"] = timing.peak_memory_bytes(fn, device, case.leaves)
                row["bytes"] = (case.bytes or {}).get(mode)
                row["status"] = "ok"
            except Exception as e:  # noqa: BLE001
                row["status"] = f"failed: {_reason(e)}"
            fn = None
            if baseline in COMPILE_MODE:
                row["dynamo"] = _dynamo_stats()
            rows.append(row)
            prog.row(row)
            for t in case.leaves:
                t.grad = None
        del case
        _free(device)
    return rows


def main(argv=None) -> int:
    """Run the suite, print the table and write the JSON, markdown and PNG; return the exit code."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        progress("--device cuda: no CUDA device is available")
        return 2
    use_cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if use_cuda else "cpu")
    if not use_cuda:
        torch.set_num_threads(max(1, args.threads))
    baselines = args.baselines or (
        ("eager", "compile", "compile-max", "fused") if use_cuda else ("eager",)
    )
    from bench.workloads import BASELINES

    baselines = [b for b in BASELINES if b in baselines]
    interp = not use_cuda and "fused" in baselines
    if interp:  # must precede the first import of triton in this process
        os.environ["TRITON_INTERPRET"] = "1"

    from bench import report, spotcheck, timing
    from bench.workloads import select, variants

    profile = ("quick" if args.quick else "full") if use_cuda else "cpu"
    settings = timing.SETTINGS["cpu-quick" if (args.quick and not use_cuda) else profile]
    max_at = args.max_autotune or ("none" if args.quick else "ops")
    try:
        todo = select(variants(profile, args.dtype, max_at), args.only)
    except ValueError as e:
        progress(str(e))
        return 2
    # ODEFunc counts its evaluations in an int attribute (self.nfe += 1); without this dynamo
    # specialises on its value and recompiles at every call until it gives up.
    torch._dynamo.config.allow_unspec_int_on_nn_module = True

    dev = describe_device(device)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    progress(
        f"timeaware bench: {dev['name']}, profile {profile}, baselines "
        f"{', '.join(baselines)}, {len(todo)} variants"
    )
    if not use_cuda:
        progress(report.NO_GPU)

    spot = None
    if not args.no_check:
        progress(
            "correctness spot-check of the Triton kernels"
            + ("" if use_cuda else " (Triton interpreter, subprocess)")
            + " ..."
        )
        if use_cuda:
            spot = spotcheck.run_checks("cuda")
        else:
            spot = spotcheck.run_subprocess(models=True, timeout=120 if args.quick else 240)
        verdict = {True: "passed", False: "FAILED", None: "skipped"}[spot.get("ok")]
        progress(f"  spot-check: {verdict}" + (f" ({spot['error']})" if spot.get("error") else ""))

    progress("copy bandwidth ...")
    copy = timing.copy_bandwidth(device, settings)
    progress(f"  {copy['gbps']:.0f} GB/s")

    prog = Progress(sum(len(v.modes) for v in todo) * len(baselines))
    rows = []
    for v in todo:
        rows += run_variant(v, baselines, device, settings, interp, prog)

    notes = [
        "Timing: "
        + (
            "triton.testing.do_bench (CUDA events; L2 cleared before every "
            "repetition; warm-up and compilation outside the timing); "
            if use_cuda
            else "wall clock on CPU; "
        )
        + "median with the 20% and 80% quantiles.",
        "Modes: fwd = forward under torch.no_grad(); bwd = backward of a graph built once; "
        "fwd+bwd = both. *-step rows are training steps (forward, loss, backward; no "
        "optimizer update, so every repetition does the same work).",
        "GB/s: compulsory traffic (each input and output tensor read or written once) over "
        "the median time.",
        "Baselines: eager = reference backend; compile = torch.compile of the same eager code "
        "(default mode); compile-max = mode max-autotune-no-cudagraphs; fused = Triton backend. "
        "Targets compare with the faster of the two compile baselines.",
    ]
    if not use_cuda:
        notes.append("Sizes are shrunk for CPU (shape column); they are not DESIGN section 7's.")
    if interp:
        notes.append(
            "fused rows on CPU ran the Triton interpreter: their times are not kernel "
            "speed and no speedup is computed from them."
        )
    result = {
        "schema": 1,
        "created": created,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "profile": profile,
        "quick": args.quick,
        "baselines": baselines,
        "device": dev,
        "versions": versions(),
        "git": _git(),
        "settings": dataclasses.asdict(settings),
        "copy": copy,
        "spot_check": spot,
        "rows": rows,
        "notes": notes,
    }
    result["wall_s"] = time.perf_counter() - t_start
    report.finalize(result)
    md = report.markdown(result)
    print(md, end="")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / report.stem(result)
    report.write_json(result, stem.with_suffix(".json"))
    stem.with_suffix(".md").write_text(md)
    try:
        report.chart(result, stem.with_suffix(".png"))
    except Exception as e:  # noqa: BLE001 - the chart is the least important output
        progress(f"chart not written: {_reason(e)}")
    progress(f"wrote {stem}.json, .md, .png in {time.perf_counter() - t_start:.0f} s")

    failed = [
        r for r in rows if r["baseline"] in ("eager", "fused") and r["status"].startswith("failed")
    ]
    if spot is not None and spot.get("ok") is False:
        progress("correctness spot-check FAILED")
        return 1
    if failed:
        progress(f"{len(failed)} eager/fused rows failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
