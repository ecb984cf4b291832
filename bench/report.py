"""Speedups, targets, and the outputs of a run: markdown tables, JSON, PNG chart.

A run's result is one JSON-ready dict (see ``bench.__main__``); :func:`finalize` adds the derived
numbers (speedups, GB/s, target verdicts) to its rows. Speedups are only ever computed from two
rows measured in the same run on a CUDA device; a fused row run under the Triton interpreter on
CPU gets none. On CUDA each speedup is computed twice: from the device time (L2 flushed,
``speedup``) and from the back-to-back time per call (``speedup_loop``); a speed target is met
only when both meet it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Targets of the issue, per (workload, mode) of the fused row: (baseline, x) = at least x times
# faster than that baseline (a name of TARGET_GROUPS: than the fastest of the group);
# ("copy", f) = at least f of the bandwidth of a device copy of the row's own byte count;
# ("nfe", None) = the same NFE-F and NFE-B as eager.
TARGET_GROUPS = {"compile": ("compile", "compile-max")}
# The baselines of timeaware's kernels: their rows get speedups against every other baseline
FUSED_BASELINES = ("fused", "fused+timeaware-solver")
# The rows that carry a workload's targets (default: fused): the first is the one judged (the
# configuration users run); the others are shown for reference. node-step: the fused op with
# timeaware's solver against eager + torchdiffeq, and the fused op with torchdiffeq.
TARGET_BASELINES = {"node-step": ("fused+timeaware-solver", "fused")}
_GN = [("eager", 2.0), ("compile", 1.2)]
TARGETS = {
    ("gn-node", "fwd"): _GN,
    ("gn-node", "fwd+bwd"): _GN,
    ("gn-ddpm", "fwd"): [*_GN, ("copy", 0.8)],
    ("gn-ddpm", "fwd+bwd"): _GN,
    ("gn-g1", "fwd"): [*_GN, ("copy", 0.8)],
    ("gn-g1", "fwd+bwd"): _GN,
    ("odefunc", "fwd+bwd"): [("torchdiffeq-example", 2.0)],
    ("node-step", "fwd+bwd"): [("eager", 1.5), ("nfe", None)],
    ("ddpm-step", "fwd+bwd"): [("eager", 1.2)],
    # the same bar for diffusers' own U-Net: patched against the unpatched model
    ("diffusers-unet", "fwd+bwd"): [("eager", 1.2)],
}
# Speedup columns of the table: the baseline a fused row is compared with, and its header
SPEEDUP_COLUMNS = (
    ("eager", "vs eager"),
    ("compile", "vs compile"),
    ("compile-max", "vs max-autotune"),
    ("torchdiffeq-example", "vs torchdiffeq-example"),
    ("fused", "vs fused (torchdiffeq)"),
    ("eager+timeaware-solver", "vs eager+timeaware-solver"),
)


def target_baselines(workload: str) -> tuple[str, ...]:
    """The baselines whose rows carry ``workload``'s targets, the judged one first."""
    return TARGET_BASELINES.get(workload, ("fused",))


NO_GPU = (
    "No CUDA GPU: kernel speedups need a CUDA GPU, so this run reports none. It times eager "
    "PyTorch only, counts launches and host syncs, measures host overhead per call with the "
    "Triton launches stubbed out, and checks the Triton kernels for correctness under the "
    "Triton interpreter (interpreter speed says nothing about kernel speed, so it is not timed)."
)


def _ok(row: dict | None) -> bool:
    return row is not None and row.get("status") == "ok"


def _median(row: dict | None) -> float | None:
    if not _ok(row):
        return None
    return row["timing"]["median_ms"]


def _loop_median(row: dict | None) -> float | None:
    if not _ok(row) or not row.get("loop"):
        return None
    return row["loop"]["per_call"]["median_ms"]


def finalize(result: dict) -> dict:
    """Fill speedups, GB/s, NFE agreement and target verdicts into ``result["rows"]``."""
    rows = result["rows"]
    by_key = {(r["variant"], r["mode"], r["baseline"]): r for r in rows}
    cuda = result["device"]["type"] == "cuda"
    for r in rows:
        r["speedup"], r["speedup_loop"] = {}, {}
        r["gbps"] = r["copy_fraction"] = None
        if _ok(r) and r.get("bytes") and not r.get("interpreter"):
            r["gbps"] = r["bytes"] / (r["timing"]["median_ms"] * 1e-3) / 1e9
            copy = r.get("copy") or {}
            if copy.get("gbps"):
                r["copy_fraction"] = r["gbps"] / copy["gbps"]
        eager = by_key.get((r["variant"], r["mode"], "eager"))
        if r["baseline"] != "eager" and eager is not None:
            if eager.get("nfe") and r.get("nfe"):
                r["nfe_match"] = eager["nfe"] == r["nfe"]
        if not cuda or r.get("interpreter") or r["baseline"] == "eager" or not _ok(r):
            continue
        if r["baseline"] in FUSED_BASELINES:
            others = [b for b, _ in SPEEDUP_COLUMNS if b != r["baseline"]]
        else:
            others = ["eager"]
        for other in others:
            other_row = by_key.get((r["variant"], r["mode"], other))
            base = _median(other_row)
            if base is not None:
                r["speedup"][other] = base / r["timing"]["median_ms"]
            loop, mine = _loop_median(other_row), _loop_median(r)
            if loop is not None and mine:
                r["speedup_loop"][other] = loop / mine
    for r in rows:
        r["target"] = _verdict(r, by_key, cuda)
    return result


def _verdict(row: dict, by_key: dict, cuda: bool) -> dict | None:
    """The target verdict of ``row``: on the rows of :func:`target_baselines` (``judged``
    True on the first), or on eager when none of them was timed."""
    goals = TARGETS.get((row["workload"], row["mode"]))
    carriers = target_baselines(row["workload"])
    if not goals or row["baseline"] not in (*carriers, "eager"):
        return None
    if row["baseline"] == "eager":
        if any((row["variant"], row["mode"], b) in by_key for b in carriers):
            return None  # the fused rows carry it
        why = "needs a CUDA GPU" if not cuda else f"{carriers[0]} baseline not run"
        return {"met": None, "text": f"not measured ({why})"}
    verdict = _judge(row, goals, cuda)
    verdict["judged"] = row["baseline"] == carriers[0]
    if not verdict["judged"]:
        verdict["text"] = f"for reference (judged on {carriers[0]}): {verdict['text']}"
    return verdict


def _judge(row: dict, goals: list, cuda: bool) -> dict:
    """``row`` measured against ``goals`` (see :data:`TARGETS`)."""
    if row.get("interpreter") or not cuda:
        return {"met": None, "text": "not measured (Triton interpreter, not a GPU)"}
    if not _ok(row):
        return {"met": False, "text": "MISSED: the fused row did not run"}
    parts, met = [], True

    def unknown(text):
        nonlocal met
        parts.append(text)
        met = None if met is not False else False

    for kind, want in goals:
        if kind == "copy":
            frac = row.get("copy_fraction")
            if frac is None:
                unknown("copy not measured")
                continue
            ok = frac >= want
            parts.append(f"{frac:.0%} of same-size copy {'>=' if ok else '<'} {want:.0%}")
        elif kind == "nfe":
            ok = row.get("nfe_match")
            if ok is None:
                unknown("NFE not compared")
                continue
            parts.append("same NFE" if ok else "NFE differs")
        else:
            keys = TARGET_GROUPS.get(kind, (kind,))
            dev = [row["speedup"][k] for k in keys if k in row["speedup"]]
            loop = [row["speedup_loop"][k] for k in keys if k in row.get("speedup_loop", {})]
            if not dev:
                unknown(f"vs {kind} not measured")
                continue
            # against a group: the fastest of it, i.e. the smallest speedup
            ok = min(dev) >= want and (not loop or min(loop) >= want)
            have = f"{min(dev):.2f}x" + (f" / {min(loop):.2f}x" if loop else "")
            parts.append(f"{have} vs {kind} {'>=' if ok else '<'} {want:g}x")
            if not loop and ok:
                unknown(f"back-to-back vs {kind} not measured")
        if not ok:
            met = False
    label = {True: "met", False: "MISSED", None: "incomplete"}[met]
    return {"met": met, "text": f"{label}: " + "; ".join(parts)}


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _ms(t: dict) -> str:
    def f(v):
        return f"{v:.4g}"

    return f"{f(t['median_ms'])} [{f(t['p20_ms'])}, {f(t['p80_ms'])}]"


def _x(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _speedup_cell(r: dict, key: str) -> str:
    dev = r["speedup"].get(key)
    if dev is None:
        return ""
    loop = r.get("speedup_loop", {}).get(key)
    return _x(dev) + ("" if loop is None else f" / {_x(loop)}")


def _cells(r: dict, cuda: bool) -> dict:
    ok = _ok(r)
    nfe = ""
    if r.get("nfe"):
        nfe = f"{r['nfe'][0]}/{r['nfe'][1]}"
        if r.get("nfe_match") is False:
            nfe += " (differs from eager)"
    gbps = ""
    if r.get("gbps") is not None:
        gbps = f"{r['gbps']:.0f}"
        if r.get("copy_fraction") is not None:
            gbps += f" ({r['copy_fraction']:.0%})"
    time = _ms(r["timing"]) if ok else r["status"]
    if ok and r.get("interpreter"):
        time += " (Triton interpreter)"
    loop = r.get("loop") if ok else None
    b2b = host = ""
    if loop:
        b2b = f"{loop['per_call']['median_ms']:.4g}"
        host = f"{loop['host']['median_ms']:.4g}" + ("*" if loop.get("host_waits") else "")
    diff = r.get("max_rel_diff_vs_eager")
    cells = {
        "workload": r["variant"],
        "shape": r["shape"],
        "mode": r["mode"],
        "baseline": r["baseline"],
        ("device ms, L2 flushed [p20, p80]" if cuda else "median ms [p20, p80]"): time,
        "back-to-back ms/call": b2b,
        "host ms/call": host,
    }
    for key, header in SPEEDUP_COLUMNS:
        cells[header] = _speedup_cell(r, key)
    cells.update(
        {
            "GB/s (% of same-size copy)": gbps,
            "peak MiB": ""
            if r.get("peak_mem_bytes") is None
            else f"{r['peak_mem_bytes'] / 2**20:.0f}",
            "NFE F/B": nfe,
            "max rel diff vs eager": "" if diff is None else f"{diff:.1e}",
            "target": (r.get("target") or {}).get("text", ""),
        }
    )
    return cells


def _table(dicts: list[dict], keep: tuple[str, ...] = ()) -> str:
    """A markdown table of ``dicts``; columns empty in every row are left out."""
    if not dicts:
        return ""
    cols = [c for c in dicts[0] if c in keep or any(d[c] for d in dicts)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for d in dicts:
        lines.append("| " + " | ".join(str(d[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _count_lines(result: dict) -> list[str]:
    """The launch/sync table: count rows, plus the profiler's GPU activities on CUDA."""
    counts = result.get("counts") or []
    timed = {
        (r["variant"], r["mode"], r["baseline"]): r
        for r in result["rows"]
        if r.get("gpu_activities") is not None
    }
    if not counts and not timed:
        return []
    seen = set()
    out = []
    for c in counts:
        key = (c["variant"], c["mode"], c["baseline"])
        seen.add(key)
        if c["status"] != "ok":
            launches, syncs, step = c["status"], "", ""
        else:
            launches = f"{c['launches']} ({c['triton']} + {c['aten']})"
            if c.get("stubbed"):
                launches += " stub"
            syncs = str(c["syncs"])
            step = ""
            if c.get("steps"):
                nfe = "/".join(map(str, c.get("nfe") or []))
                step = (
                    f"{c['launches_per_step']:.0f} launches, {c['syncs_per_step']:.1f} syncs "
                    f"({c['steps']} steps, NFE {nfe})"
                )
        gpu = timed.get(key, {}).get("gpu_activities")
        out.append(
            {
                "workload": c["variant"],
                "counted at": c["shape"],
                "mode": c["mode"],
                "baseline": c["baseline"],
                "launches (triton + aten)": launches,
                "host syncs": syncs,
                "per attempted solver step": step,
                "GPU activities (profiler)": "" if gpu is None else str(gpu),
                "budget (DESIGN 8)": (c.get("budget") or {}).get("text", ""),
            }
        )
    for key, r in timed.items():
        if key in seen or r["mode"] == "bwd":
            continue
        out.append(
            {
                "workload": r["variant"],
                "counted at": r["shape"],
                "mode": r["mode"],
                "baseline": r["baseline"],
                "launches (triton + aten)": "not counted (compiled code)",
                "host syncs": "",
                "per attempted solver step": "",
                "GPU activities (profiler)": str(r["gpu_activities"]),
                "budget (DESIGN 8)": "",
            }
        )
    lines = [
        "### Kernel launches and host syncs per call",
        "",
        "Counted with `timeaware.profiling.count_launches` (computing aten ops + Triton "
        "launches; syncs = device-to-host reads). `stub`: the Triton kernels were stubbed out "
        "while counting (CPU). node-step: over one training step (forward solve, loss, adjoint "
        "backward solve), divided by the attempted dopri5 steps of both solves; ode-solve: "
        "over one solve, the field's own launches included"
        + (
            "; GPU activities: kernels, memcpy and memset of one call in `torch.profiler`."
            if timed
            else "."
        ),
        "",
        _table(out, keep=("launches (triton + aten)",)),
        "",
    ]
    return lines


SOLVER_NOTE = (
    "`timeaware.solvers.cost.solve_cost` on the same function and initial state for both "
    "solvers: torchdiffeq's `odeint`/`odeint_adjoint` (dopri5) and timeaware's, on its Triton "
    "backend (on a CPU the interpreter runs its kernels: counted, not timed). Launches and host "
    "syncs of the solver itself over the whole solve, per attempted step: the function's own "
    "launches (measured on one call) are subtracted, the solve's set-up is included, the "
    "interpreter's argument copies are not counted. `backward` is the adjoint's backward solve, "
    "of the loss sum(y(t1)), beyond the augmented function's own work (f, its VJP, one cat). "
    "node-step's solve starts from the classifier's features of its seeded batch. "
    "Both solvers must take "
    "the same steps (NFE); the timeaware solver's budget (DESIGN section 8) is <= 12 launches "
    "and <= 1 host sync per step."
)


def _solver_lines(result: dict) -> list[str]:
    """The solver-cost table: torchdiffeq and timeaware side by side, per workload and solve."""
    rows = result.get("solver_costs") or []
    if not rows:
        return []
    out, differ = [], []
    for r in rows:
        ok = r["status"] == "ok"
        nfe = str(r["nfe"]) if ok else r["status"]
        if r.get("nfe_match") is False:
            nfe += " (DIFFERS from torchdiffeq)"
            differ.append(f"{r['variant']} {r['solve']}")
        elif r.get("nfe_match"):
            nfe += " (same)"
        out.append(
            {
                "workload": r["variant"],
                "counted at": r["shape"],
                "solve": r["solve"],
                "solver": r["solver"],
                "NFE (vs torchdiffeq)": nfe,
                "steps": str(r["attempted"]) if ok else "",
                "launches / step": f"{r['launches_per_step']:.1f}" if ok else "",
                "host syncs / step": f"{r['syncs_per_step']:.2f}" if ok else "",
                "function launches / call": str(r["func_launches_per_call"]) if ok else "",
                "budget (DESIGN 8)": (r.get("budget") or {}).get("text", ""),
            }
        )
    lines = ["### Solver cost per attempted dopri5 step: torchdiffeq vs timeaware", ""]
    if differ:
        lines += [f"**NFE differs between the solvers: {', '.join(differ)}.**", ""]
    lines += [SOLVER_NOTE, "", _table(out, keep=("NFE (vs torchdiffeq)",)), ""]
    return lines


def _host_lines(result: dict) -> list[str]:
    h = result.get("host")
    if not h:
        return []
    out = []
    for r in h["rows"]:
        ok = r["status"] == "ok"
        out.append(
            {
                "case": r["case"],
                "shape": r.get("shape", ""),
                "mode": r["mode"],
                "launch": r["launch"],
                "eager side": r.get("eager", ""),
                "eager us/call": f"{r['eager_us']:.1f}" if ok else r["status"],
                "fused us/call": f"{r['fused_us']:.1f}" if ok else "",
                "fused / eager": f"{r['ratio']:.2f}x" if ok else "",
                "goal (<= 1.0x)": (r.get("goal") or {}).get("text", ""),
            }
        )
    s = h.get("settings", {})
    return [
        "### Host time per call (tiny tensors)",
        "",
        "`timeaware.profiling.host_time_per_call`, median of "
        f"{s.get('repeats', '?')} repeats of {s.get('iters', '?')} calls, eager and fused "
        "interleaved. `stubbed launch`: every Triton launch is a no-op, so the fused time is "
        "the host work of the call without Triton's launch path; `real` (GPU): real calls "
        "back to back without sync, the host being the bottleneck at this size. "
        "fwd-grad = forward with inputs that require grad (graph built, then dropped).",
        "",
        _table(out),
        "",
    ]


def _spot_lines(spot: dict | None) -> list[str]:
    if spot is None:
        return ["Correctness spot-check: not run (--no-check)."]
    where = "Triton interpreter on CPU" if spot.get("interpreter") else spot.get("device", "")
    if spot.get("skipped"):
        return [f"Correctness spot-check: skipped ({spot['skipped']})."]
    head = {True: "all passed", False: "FAILED", None: "skipped"}[spot.get("ok")]
    lines = [
        f"Correctness spot-check of the Triton kernels and the eager baselines vs the reference "
        f"({where}): "
        f"**{head}**" + (f" ({spot['wall_s']:.1f} s)." if "wall_s" in spot else ".")
    ]
    if spot.get("error"):
        lines.append(f"Error: {spot['error']}")
    rows = []
    for c in spot.get("checks", []):
        worst = ""
        outs = c.get("outputs") or {}
        if outs:
            k, v = max(outs.items(), key=lambda kv: kv[1]["err"] / max(kv[1]["tol"], 1e-30))
            worst = f"{k}: {v['err']:.1e} (tol {v['tol']:.1e})"
        result = {True: "pass", False: "FAIL", None: "skipped"}[c.get("ok")]
        if c.get("error"):
            result += f": {c['error'][:120]}"
        if c.get("skipped"):
            result += f": {c['skipped'][:120]}"
        if "nfe_match" in c:
            nfe_r = "/".join(map(str, c["nfe_reference"]))
            nfe_f = "/".join(map(str, c["nfe_fused"]))
            worst += f"; solve NFE {nfe_r} reference, {nfe_f} fused"
        rows.append(
            {
                "case": c["case"],
                "shape": c.get("shape", ""),
                "dtype": c.get("dtype", ""),
                "addends, act": f"{c.get('addends', '')}, {c.get('act', '')}",
                "result": result,
                "worst error / bound": worst,
            }
        )
    if rows:
        lines += ["", _table(rows)]
    return lines


def markdown(result: dict) -> str:
    """The run as markdown: header, timings, launch counts, host overhead, spot-check, notes."""
    dev, ver, git = result["device"], result["versions"], result["git"]
    cuda = dev["type"] == "cuda"
    commit = git.get("short") or "none"
    if git.get("dirty"):
        commit += " (uncommitted changes)"
    lines = [
        f"## Benchmark: {dev['name']}",
        "",
        f"Commit `{commit}`, {result['created']}, profile `{result['profile']}`; "
        f"torch {ver.get('torch')}, triton {ver.get('triton')}, CUDA {ver.get('cuda')}, "
        f"python {ver.get('python')}. Run time {result.get('wall_s', 0):.0f} s.",
        "",
    ]
    if not cuda:
        lines += [f"**{NO_GPU}**", ""]
    if result.get("stopped"):
        lines += [f"**This run was cut short: {result['stopped']}.**", ""]
    copy = result.get("copy")
    sizes = result.get("copy_same_size") or []
    if copy or sizes:
        what = "device-to-device copy" if cuda else "CPU memory copy"
        text = "Roofline: each row's GB/s is compared with a " + what + " of the same byte count"
        if sizes:
            lo = min(c["gbps"] for c in sizes)
            hi = max(c["gbps"] for c in sizes)
            text += f", measured in this run ({len(sizes)} sizes, {lo:.0f} to {hi:.0f} GB/s)"
        if copy:
            text += (
                f"; peak: {copy['gbps']:.0f} GB/s on a {copy['buffer_bytes'] / 2**20:.0f} MiB "
                "buffer"
            )
        lines += [text + ".", ""]
    shown = [r for r in result["rows"] if not r["status"].startswith("skipped")]
    if shown:
        time_col = "device ms, L2 flushed [p20, p80]" if cuda else "median ms [p20, p80]"
        lines.append(_table([_cells(r, cuda) for r in shown], keep=(time_col,)))
        lines.append("")
    if any((r.get("loop") or {}).get("host_waits") for r in shown):
        lines += [
            "\\* host time includes waiting for the GPU (the call synchronises, or its "
            "launches overfill the launch queue): it is not host work alone.",
            "",
        ]
    skipped: dict[tuple[str, str], list[str]] = {}
    for r in result["rows"]:
        if r["status"].startswith("skipped"):
            names = skipped.setdefault((r["baseline"], r["status"]), [])
            if r["variant"] not in names:
                names.append(r["variant"])
    if skipped:
        lines.append("Not run:")
        lines += [f"- {b}, {why}: {', '.join(names)}" for (b, why), names in skipped.items()]
        lines.append("")
    lines += _count_lines(result)
    lines += _solver_lines(result)
    lines += _host_lines(result)
    lines += _spot_lines(result.get("spot_check"))
    dyn = [
        r
        for r in result["rows"]
        if (r.get("dynamo") or {}).get("graph_breaks")
        or (r.get("dynamo") or {}).get("unique_graphs", 0) > 4
    ]
    if dyn:
        lines += ["", "torch.compile rows with graph breaks or recompilations (dynamo counters):"]
        lines += [
            f"- {r['variant']} {r['mode']} {r['baseline']}: {r['dynamo']['graph_breaks']} "
            f"graph breaks, {r['dynamo']['unique_graphs']} graphs"
            for r in dyn
        ]
    lines += ["", "Notes:"]
    lines += [f"- {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    """``text`` lower-cased with runs of other characters turned into ``-`` (for file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def stem(result: dict) -> str:
    """``<gpu-or-cpu>-<date>-<commit>[-<profile>]``: the name of a run's files."""
    dev = result["device"]
    name = slug(dev["name"]) if dev["type"] == "cuda" else "cpu"
    date = result["created"][:10]
    commit = result["git"].get("short") or "nocommit"
    suffix = "" if result["profile"] in ("full", "cpu") else f"-{result['profile']}"
    return f"{name}-{date}-{commit}{suffix}"


def write_json(result: dict, path: Path) -> None:
    """Write a run's ``result`` dict as JSON to ``path``."""
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")


def chart(result: dict, path: Path) -> None:
    """PNG: on CUDA the fused speedups per baseline (device time above, back-to-back time per
    call below); otherwise the CPU timings of the eager baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dev, git = result["device"], result["git"]
    commit = git.get("short") or "no commit"
    fused = [r for r in rows if r["baseline"] in FUSED_BASELINES and r.get("speedup")]
    if fused:
        labels = [
            f"{r['variant']}\n{r['mode']}"
            + ("" if r["baseline"] == "fused" else " timeaware solver")
            for r in fused
        ]
        groups = [(k, h) for k, h in SPEEDUP_COLUMNS if any(k in r["speedup"] for r in fused)]
        panels = [("speedup", "device time (L2 flushed)")]
        if any(r.get("speedup_loop") for r in fused):
            panels.append(("speedup_loop", "back-to-back time per call"))
        width = 0.8 / max(len(groups), 1)
        fig, axes = plt.subplots(
            len(panels), 1, figsize=(max(8, 0.9 * len(fused) + 2), 4.5 * len(panels)), squeeze=False
        )
        for ax, (field, what) in zip(axes[:, 0], panels):
            for i, (key, name) in enumerate(groups):
                vals = [r.get(field, {}).get(key, 0.0) for r in fused]
                xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(fused))]
                bars = ax.bar(xs, vals, width, label=f"fused {name}")
                for b, v in zip(bars, vals):
                    if v:
                        ax.annotate(
                            f"{v:.2f}",
                            (b.get_x() + b.get_width() / 2, v),
                            ha="center",
                            va="bottom",
                            fontsize=6,
                        )
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
            ax.set_xticks(range(len(fused)), labels, rotation=45, ha="right", fontsize=8)
            ax.set_ylabel(f"speedup, {what} (x)")
            ax.legend(fontsize=7)
        axes[0, 0].set_title(f"timeaware fused backend speedup, {dev['name']}, commit {commit}")
    else:
        timed = [r for r in rows if _ok(r) and not r.get("interpreter")]
        labels = [f"{r['variant']} {r['mode']} {r['baseline']}\n{r['shape']}" for r in timed]
        med = [r["timing"]["median_ms"] for r in timed]
        lo = [m - r["timing"]["p20_ms"] for m, r in zip(med, timed)]
        hi = [r["timing"]["p80_ms"] - m for m, r in zip(med, timed)]
        bars = _launch_bars(result)
        if bars:  # the launch counts (what decides at NODE sizes) beside the timings
            fig, (ax, lax) = plt.subplots(
                2, 1, figsize=(10, 0.5 * len(timed) + 0.32 * len(bars) + 3.5),
                gridspec_kw={"height_ratios": [0.5 * len(timed) + 1, 0.32 * len(bars) + 1]},
            )  # fmt: skip
            _launch_panel(lax, bars)
        else:
            fig, ax = plt.subplots(figsize=(10, 0.5 * len(timed) + 1.8))
        ys = range(len(timed))
        ax.barh(ys, med, xerr=[lo, hi], color="tab:gray", capsize=2)
        for y, m, r in zip(ys, med, timed):
            note = f"{m:.3g} ms"
            if r.get("nfe"):
                note += f"  (NFE F/B {r['nfe'][0]}/{r['nfe'][1]})"
            ax.annotate(
                note,
                (r["timing"]["p80_ms"], y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(list(ys), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("median time per call, ms (log scale; bars: 20-80% quantiles)")
        if dev["type"] == "cuda":
            title = (
                f"Timings on {dev['name']}, commit {commit}\n"
                "No fused speedups: no fused row was timed"
            )
        else:
            title = (
                f"Eager timings on {dev['name']}, small CPU sizes\ncommit {commit}. "
                "No fused speedups: kernel speedups need a CUDA GPU (not measured here)"
            )
        ax.set_title(title, fontsize=9, loc="left")
        ax.margins(x=0.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# baselines of the launch panel, in drawing order, with their colours
_LAUNCH_SIDES = (("eager", "tab:gray"), ("torchdiffeq-example", "tab:blue"), ("fused", "tab:green"))
_LAUNCH_LABELS = {
    "eager": "eager PyTorch (solver rows: torchdiffeq)",
    "fused": "timeaware fused (solver rows: timeaware.odeint)",
}


def _launch_bars(result: dict) -> list[tuple[str, dict]]:
    """(label, {side: launches}) per (variant, mode) of the op and odefunc counts, then one row
    per solver solve: launches per attempted step of torchdiffeq (eager side) and timeaware
    (fused side)."""
    out: dict[str, dict] = {}
    for c in result.get("counts") or []:
        if c.get("status") != "ok" or c["workload"] not in ("gn-node", "gn-g1", "odefunc"):
            continue
        side = c["baseline"] if c["baseline"] in dict(_LAUNCH_SIDES) else None
        if side is not None:
            out.setdefault(f"{c['variant']} {c['mode']}", {})[side] = c["launches"]
    for c in result.get("solver_costs") or []:
        if c.get("status") == "ok":
            side = "fused" if c["solver"] == "timeaware" else "eager"
            key = f"{c['variant']} {c['solve']} solve, per dopri5 step"
            out.setdefault(key, {})[side] = c["launches_per_step"]
    return list(out.items())


def _launch_panel(ax, bars: list[tuple[str, dict]]) -> None:
    """Horizontal grouped bars of launches per call (solver rows: per step)."""
    n = len(_LAUNCH_SIDES)
    h = 0.8 / n
    for i, (side, colour) in enumerate(_LAUNCH_SIDES):
        label = _LAUNCH_LABELS.get(side, side)
        ys = [j + (i - (n - 1) / 2) * h for j in range(len(bars))]
        vals = [b.get(side, 0) for _, b in bars]
        ax.barh(ys, vals, h, color=colour, label=label)
        for y, v in zip(ys, vals):
            if v:
                ax.annotate(f"{v:.3g}", (v, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=6)  # fmt: skip
    ax.set_yticks(range(len(bars)), [k for k, _ in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("kernel launches per call (solver rows: per attempted step, function excluded)")
    ax.set_title("What decides at NODE sizes: launches (counted on this CPU; DESIGN section 8)",
                 fontsize=9, loc="left")  # fmt: skip
    ax.legend(fontsize=7, loc="upper right")
    ax.margins(x=0.15)
