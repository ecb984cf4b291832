"""``python -m bench``: time every workload of DESIGN section 7 against every baseline.

A run (1) spot-checks the Triton kernels and the eager baselines against the reference, (2)
counts kernel launches and host syncs per call of every baseline the counter sees, and the
solver's own launches and syncs per dopri5 step for torchdiffeq and for timeaware side by side
(``bench.counting``), (3) times host overhead per call of the fused path against the eager ops it
replaces (``bench.host``; ``--only host`` runs this alone) and (4) times every (workload, mode,
baseline) row. On a CUDA GPU each row gets three times (device time with the L2 flushed,
back-to-back time per call, host time per call), GB/s against a device copy of the same byte
count, GPU activities per call from the profiler, and speedups and target verdicts. Without one
it times eager PyTorch at small sizes and runs the kernels only under the Triton interpreter
(stubbed while counting); it reports no kernel speedup.

Writes ``<out>/<gpu-or-cpu>-<date>-<commit>.{json,md,png}`` and prints the markdown tables on
stdout; progress lines go to stderr. ``--deadline`` (or SIGTERM) stops the measurements and still
writes what was measured. Exits 1 when the correctness check fails or an eager or fused row
(with either solver), a count, a solver row or a host row fails (a failing torch.compile or
torchdiffeq-example row is reported, not fatal), 143 after SIGTERM. A solver NFE that differs
from torchdiffeq's is flagged in the tables, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _names(kind: str, valid: tuple[str, ...]):
    """argparse type: one name, or several separated by commas, each in ``valid``."""

    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"empty {kind} list {text!r}")
        for n in names:
            if n not in valid:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {n!r}, expected one of {', '.join(valid)}"
                )
        return names

    return parse


def _flatten(lists):
    return None if lists is None else [n for group in lists for n in group]


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``python -m bench``'s command line (lists may be given with spaces or commas)."""
    from bench.workloads import BASELINES, DTYPES, WORKLOADS

    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="timeaware benchmark suite (DESIGN section 7).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--only",
        nargs="+",
        type=_names("workload", WORKLOADS),
        metavar="WORKLOAD",
        help=f"run only these workloads (spaces or commas), of {', '.join(WORKLOADS)}; "
        "'host' is the host-overhead benchmark",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions, smaller training steps, no max-autotune; on CPU the fused "
        "node-step is not counted (the Triton interpreter takes seconds per step)",
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
        type=_names("baseline", BASELINES),
        metavar="BASELINE",
        help=f"baselines to time (spaces or commas), of {', '.join(BASELINES)} (default: all "
        f"on CUDA; {', '.join(CPU_BASELINES)} on CPU, where the fused baselines run the "
        "Triton interpreter: their time is no kernel speed)",
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
    p.add_argument("--no-counts", action="store_true", help="skip counting launches and host syncs")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop measuring this many seconds after the start: a row running then is "
        "interrupted, rows not started are reported as skipped, and the results are written "
        f"(rows run cheapest baseline first: {', '.join(PRIORITY)})",
    )
    args = p.parse_args(argv)
    args.only = _flatten(args.only)
    args.baselines = _flatten(args.baselines)
    if args.deadline is not None and not args.deadline > 0:
        p.error(f"--deadline: expected a positive number of seconds, got {args.deadline}")
    if args.threads < 1:
        p.error(f"--threads: expected an int >= 1, got {args.threads}")
    return args


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


class Stop(BaseException):  # noqa: N818 - a control-flow signal like KeyboardInterrupt
    """Stops the measurements: the ``--deadline`` passed (SIGALRM) or SIGTERM arrived.

    A BaseException, so that library code catching ``Exception`` (torch.compile does) cannot
    swallow it.
    """


@contextlib.contextmanager
def stop_guard(deadline_s: float | None, t_start: float):
    """Inside the block, SIGTERM and (with a deadline, seconds after ``t_start``) SIGALRM raise
    :class:`Stop` in the main thread, so a run cut short still writes what it measured."""
    import signal

    def on_alarm(signum, frame):
        raise Stop(f"the --deadline of {deadline_s:g} s passed")

    def on_term(signum, frame):
        raise Stop("terminated (SIGTERM)")

    old_term = signal.signal(signal.SIGTERM, on_term)
    old_alarm = None
    if deadline_s is not None and hasattr(signal, "setitimer"):
        old_alarm = signal.signal(signal.SIGALRM, on_alarm)
        remaining = deadline_s - (time.perf_counter() - t_start)
        signal.setitimer(signal.ITIMER_REAL, max(remaining, 0.001))
    try:
        yield
    finally:
        if old_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


class Progress:
    """Prints one line per finished row: ``[i/total] workload mode baseline time``."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def row(self, r: dict) -> None:
        self.done += 1
        if r["status"] == "ok":
            t = r["timing"]
            what = f"{t['median_ms']:10.4g} ms [{t['p20_ms']:.4g}, {t['p80_ms']:.4g}]"
            loop = r.get("loop")
            if loop:
                what += (
                    f"  back-to-back {loop['per_call']['median_ms']:.4g} ms, "
                    f"host {loop['host']['median_ms']:.4g} ms (K={loop['calls']})"
                )
            if r.get("nfe"):
                what += f"  NFE {r['nfe'][0]}/{r['nfe'][1]}"
        else:
            what = r["status"]
        width = len(str(self.total))
        progress(
            f"[{self.done:>{width}}/{self.total}] {r['variant']:<28} {r['mode']:<8} "
            f"{r['baseline']:<22} {what}"
        )


# Rows are timed baseline by baseline in this order (eager first: the others are compared with
# it), so that a --deadline cuts the slow-to-compile baselines, not the cheap ones.
PRIORITY = (
    "eager",
    "fused",
    "fused+timeaware-solver",
    "eager+timeaware-solver",
    "torchdiffeq-example",
    "compile",
    "compile-max",
)
# The baselines timed on a CPU by default: plain PyTorch only (the fused ones would time the
# Triton interpreter)
CPU_BASELINES = ("eager", "eager+timeaware-solver", "torchdiffeq-example")


def _count_for(counts: dict, variant, mode: str, baseline: str) -> dict | None:
    """The count row of (variant, mode, baseline); ``bwd`` borrows ``fwd+bwd``'s (an upper
    bound); compiled baselines borrow eager's syncs (same Python around the compiled code)."""
    c = counts.get((variant.label, mode, baseline))
    if c is None and mode == "bwd":
        c = counts.get((variant.label, "fwd+bwd", baseline))
    return c if c is not None and c.get("status") == "ok" else None


def run_baseline(
    variant, baseline, device, ctx: dict, state: dict, prog: Progress, out: list | None = None
) -> list:
    """Every mode row of one variant on one baseline.

    Args:
        variant: the :class:`bench.workloads.Variant`.
        baseline: a baseline name.
        device: the torch device.
        ctx: run-wide things: ``settings``, ``cuda`` (take the three CUDA times),
            ``interp`` (a triton-backend row runs the interpreter), ``compare`` (several
            baselines timed), ``counts`` (count rows by key), ``copy_cache``.
        state: per-variant state shared across its baselines (eager's probe output and NFE).
        prog: progress printer.
        out: list the rows are appended to as they finish (so that a run stopped at its
            deadline keeps the modes already measured); a new list by default.

    Returns:
        ``out``.
    """
    from bench import timing
    from bench.workloads import BASELINE_INFO, MODEL_WORKLOADS, mode_fn, skip_reason

    settings = ctx["settings"]
    cuda = ctx["cuda"]  # the CUDA timings (a context flag, so that tests can fake them on CPU)
    info = BASELINE_INFO[baseline]
    rows = [] if out is None else out
    base = {
        "workload": variant.workload,
        "variant": variant.label,
        "shape": variant.shape,
        "dtype": variant.dtype,
        "note": variant.note,
        "baseline": baseline,
        "interpreter": ctx["interp"] and info.backend == "triton",
    }
    skip = skip_reason(variant, baseline)
    if skip:
        for mode in variant.modes:
            rows.append({**base, "mode": mode, "status": f"skipped: {skip}"})
            prog.row(rows[-1])
        return rows
    if info.compiled:
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
        return rows
    extra = {}
    nfe_step = False
    try:  # seeded forward, compared with eager; compiles the inference graph
        compare = ctx["compare"] and case.probe is not None
        if info.compiled and variant.workload in MODEL_WORKLOADS:
            compare = False  # an extra inference-graph compile of a whole model: skip
        out = case.probe().detach().float().cpu() if compare else None
        if baseline == "eager":
            state["eager_probe"] = out
        elif out is not None and state.get("eager_probe") is not None:
            ref = state["eager_probe"]
            diff = (out - ref).abs().max().item()
            scale = ref.abs().max().item()
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
                state["eager_nfe"] = nfe
            elif state.get("eager_nfe") is not None:
                extra["nfe_match"] = nfe == state["eager_nfe"]
    except Exception as e:  # noqa: BLE001
        extra["nfe_error"] = _reason(e)
    extra["setup_s"] = time.perf_counter() - t0  # build, probe and NFE step (compilation)
    for mode in variant.modes:
        row = {**base, **extra, "mode": mode}
        fn = None
        try:
            fn = mode_fn(case, mode)
            if not (nfe_step and mode == "fwd+bwd"):  # the NFE step was this warm-up
                t1 = time.perf_counter()
                fn()  # warm-up; compiles whatever the probe did not
                timing.synchronize(device)
                row["first_call_s"] = time.perf_counter() - t1
            row["timing"] = timing.time_fn(fn, device, settings, case.leaves).as_dict()
            if cuda:
                count = _count_for(ctx["counts"], variant, mode, baseline)
                eager_count = _count_for(ctx["counts"], variant, mode, "eager")
                try:
                    row["gpu_activities"] = timing.gpu_activities(fn, device, case.leaves)
                except Exception as e:  # noqa: BLE001 - the profiler is optional
                    row["gpu_activities_error"] = _reason(e)
                launches = count["launches"] if count else row.get("gpu_activities")
                syncs = count["syncs"] if count else None
                if syncs is None and info.compiled and eager_count:
                    syncs = eager_count["syncs"]
                row["loop"] = timing.time_back_to_back(
                    fn, settings, case.leaves, launches=launches, syncs=syncs
                ).as_dict()
            row["peak_mem_bytes"] = timing.peak_memory_bytes(fn, device, case.leaves)
            row["bytes"] = (case.bytes or {}).get(mode)
            if row["bytes"] and not row["interpreter"]:
                copy = timing.copy_same_size(row["bytes"], device, settings, ctx["copy_cache"])
                row["copy"] = {
                    "buffer_bytes": copy["buffer_bytes"],
                    "median_ms": copy["timing"]["median_ms"],
                    "gbps": copy["gbps"],
                }
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            row["status"] = f"failed: {_reason(e)}"
        fn = None
        if info.compiled:
            row["dynamo"] = _dynamo_stats()
        rows.append(row)
        prog.row(row)
        for t in case.leaves:
            t.grad = None
    del case
    _free(device)
    return rows


def _not_run_rows(pairs, done: set, why: str) -> list:
    rows = []
    for variant, baseline in pairs:
        for mode in variant.modes:
            if (variant.label, mode, baseline) not in done:
                rows.append(
                    {
                        "workload": variant.workload,
                        "variant": variant.label,
                        "shape": variant.shape,
                        "dtype": variant.dtype,
                        "note": variant.note,
                        "baseline": baseline,
                        "mode": mode,
                        "status": f"skipped: {why}",
                    }
                )
    return rows


def _order_rows(rows: list, todo: list, baselines: list) -> list:
    """Rows in table order: variant by variant, baselines in ``BASELINES`` order, modes."""
    from bench.workloads import BASELINES, MODES

    vi = {v.label: i for i, v in enumerate(todo)}
    bi = {b: i for i, b in enumerate(BASELINES)}
    mi = {m: i for i, m in enumerate(MODES)}
    return sorted(
        rows, key=lambda r: (vi.get(r["variant"], 99), bi.get(r["baseline"], 99), mi[r["mode"]])
    )


def main(argv=None) -> int:
    """Run the suite, print the tables, write the JSON, markdown and PNG; return the exit code."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        progress("--device cuda: no CUDA device is available")
        return 2
    use_cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if use_cuda else "cpu")
    interp = not use_cuda
    if interp:
        # On CPU the fused path is counted (and, with --baselines fused, timed) through the
        # Triton interpreter, which must be chosen before triton is first imported (touching
        # torch._dynamo imports it).
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            progress("warning: triton was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"
        torch.set_num_threads(args.threads)

    from bench import counting, host, report, spotcheck, timing
    from bench.workloads import BASELINE_INFO, BASELINES, select, variants

    timed = args.baselines or (list(BASELINES) if use_cuda else list(CPU_BASELINES))
    timed = [b for b in BASELINES if b in timed]
    profile = ("quick" if args.quick else "full") if use_cuda else "cpu"
    settings = timing.SETTINGS["cpu-quick" if (args.quick and not use_cuda) else profile]
    max_at = args.max_autotune or ("none" if args.quick else "ops")
    only = args.only or []
    run_host = not only or "host" in only
    wanted = [n for n in only if n != "host"]
    all_variants = variants(profile, args.dtype, max_at)
    try:
        todo = select(all_variants, wanted) if wanted or not only else []
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
        f"{', '.join(timed)}, {len(todo)} variants" + (", host overhead" if run_host else "")
    )
    if not use_cuda:
        progress(report.NO_GPU)

    order = [b for b in PRIORITY if b in timed] + [b for b in timed if b not in PRIORITY]
    pairs = [(v, b) for b in order for v in todo if b in v.baselines]
    ctx = {
        "settings": settings,
        "cuda": use_cuda,
        "interp": interp,
        "compare": len(timed) > 1,
        "counts": {},
        "copy_cache": {},
    }
    spot = host_result = copy = None
    count_rows: list = []
    solver_rows: list = []
    rows: list = []
    stopped = None
    try:
        with stop_guard(args.deadline, t_start):
            if not args.no_check:
                progress(
                    "correctness spot-check of the Triton kernels and the eager baseline"
                    + ("" if use_cuda else " (Triton interpreter, subprocess)")
                    + " ..."
                )
                if use_cuda:
                    spot = spotcheck.run_checks("cuda")
                else:
                    spot = spotcheck.run_subprocess(models=True, timeout=120 if args.quick else 240)
                verdict = {True: "passed", False: "FAILED", None: "skipped"}[spot.get("ok")]
                progress(
                    f"  spot-check: {verdict}"
                    + (f" ({spot['error']})" if spot.get("error") else "")
                )
            if todo and not args.no_counts:
                progress("launches and host syncs per call ...")
                for v in todo:
                    new = counting.count_variant(
                        v, list(BASELINES), device, progress, interpret=not args.quick
                    )
                    count_rows += new
                    ctx["counts"].update({(r["variant"], r["mode"], r["baseline"]): r for r in new})
                    solver_rows += counting.count_solvers(
                        v, device, progress, interpret=not args.quick
                    )
            if run_host:
                progress("host overhead per call ...")
                hs = host.HOST_SETTINGS["quick" if args.quick else "full"]
                host_result = host.run_host(device, hs, progress)
            if todo:
                progress("peak copy bandwidth ...")
                copy = timing.copy_bandwidth(device, settings)
                progress(f"  {copy['gbps']:.0f} GB/s")
            prog = Progress(sum(len(v.modes) for v, _ in pairs))
            states: dict = {}
            for v, b in pairs:
                run_baseline(v, b, device, ctx, states.setdefault(v.label, {}), prog, rows)
    except Stop as e:
        stopped = str(e)
        progress(f"stopped: {stopped}; writing what was measured")
    done = {(r["variant"], r["mode"], r["baseline"]) for r in rows}
    if stopped:
        rows += _not_run_rows(pairs, done, f"not run: {stopped}")
    rows = _order_rows(rows, todo, timed)

    notes = [
        "Timing: "
        + (
            "three times per row: device = triton.testing.do_bench (CUDA events; L2 cleared "
            "before every repetition, which also hides the host time); back-to-back = CUDA "
            "events around a loop of K calls without flush or sync, / K (what a training "
            "loop sees); host = the host clock over the same loop before its final "
            "synchronize, / K, with K x launches per call below the launch queue's depth. "
            "Warm-up and compilation outside the timing; "
            if use_cuda
            else "wall clock on CPU (the host is the device there); "
        )
        + "median with the 20% and 80% quantiles.",
        "Modes: fwd = forward under torch.no_grad(); bwd = backward of a graph built once; "
        "fwd+bwd = both. *-step and diffusers-unet rows are training steps (forward, loss, "
        "backward; no optimizer update, so every repetition does the same work).",
        "GB/s: compulsory traffic (each input and output tensor read or written once, in the "
        "fused op's layout) over the median device time; % of a device copy of the same byte "
        "count, timed the same way in this run.",
        "Baselines: "
        + "; ".join(f"{b.name} = {b.description}" for b in BASELINE_INFO.values())
        + ". Targets against compile use the faster of the two compile baselines; speedups "
        "are shown as device / back-to-back, and a speed target is met only when both are.",
    ]
    if not use_cuda:
        notes.append("Sizes are shrunk for CPU (shape column); they are not DESIGN section 7's.")
        notes.append(
            "Launch counts on CPU: the fused kernels are stubbed out (their launchers run, "
            "the kernel does not), except where a solver's step control needs their values: "
            "there they run under the Triton interpreter, at the small size shown (every "
            "baseline at that size; the interpreter's copies of kernel arguments are not "
            "counted): ode-solve's fused+timeaware-solver solve and the solver rows (the "
            "function of node-step's on the reference backend); node-step's fused training "
            "steps are not counted on CPU."
        )
    if interp and any(BASELINE_INFO[b].backend == "triton" for b in timed):
        notes.append(
            "fused rows on CPU ran the Triton interpreter: their times are not kernel "
            "speed and no speedup is computed from them."
        )
    if stopped:
        notes.append(f"This run was cut short: {stopped}; rows not run say so.")
    result = {
        "schema": 2,
        "created": created,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "profile": profile,
        "quick": args.quick,
        "baselines": timed,
        "device": dev,
        "versions": versions(),
        "git": _git(),
        "settings": dataclasses.asdict(settings),
        "copy": copy,
        "copy_same_size": sorted(ctx["copy_cache"].values(), key=lambda c: c["buffer_bytes"]),
        "spot_check": spot,
        "counts": count_rows,
        "solver_costs": solver_rows,
        "host": host_result,
        "rows": rows,
        "stopped": stopped,
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

    fatal = ("eager", "fused", "fused+timeaware-solver", "eager+timeaware-solver")
    failed = [r for r in rows if r["baseline"] in fatal and r["status"].startswith("failed")]
    failed += [r for r in count_rows + solver_rows if r["status"].startswith("failed")]
    if host_result:
        failed += [r for r in host_result["rows"] if r["status"].startswith("failed")]
    if spot is not None and spot.get("ok") is False:
        progress("correctness spot-check FAILED")
        return 1
    if failed:
        progress(f"{len(failed)} eager/fused rows, counts, solver or host rows failed")
        return 1
    if stopped and stopped.startswith("terminated"):
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
