"""Speedups, targets, and the three outputs of a run: markdown table, JSON, PNG chart.

A run's result is one JSON-ready dict (see ``bench.__main__``); :func:`finalize` adds the derived
numbers (speedups, GB/s, target verdicts) to its rows. Speedups are only ever computed from two
rows measured in the same run on a CUDA device; a fused row run under the Triton interpreter on
CPU gets none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Targets of the issue, per (workload, mode) of the fused row: ("eager", x) = at least x times
# faster than eager; ("compile", x) = at least x times faster than the faster of the two
# torch.compile baselines; ("copy", f) = at least f of the device-to-device copy bandwidth;
# ("nfe", None) = the same NFE-F and NFE-B as eager.
_GN = [("eager", 2.0), ("compile", 1.2)]
TARGETS = {
    ("gn-node", "fwd"): _GN,
    ("gn-node", "fwd+bwd"): _GN,
    ("gn-ddpm", "fwd"): [*_GN, ("copy", 0.8)],
    ("gn-ddpm", "fwd+bwd"): _GN,
    ("gn-g1", "fwd"): [*_GN, ("copy", 0.8)],
    ("gn-g1", "fwd+bwd"): _GN,
    ("odefunc", "fwd+bwd"): [("eager", 2.0)],
    ("node-step", "fwd+bwd"): [("eager", 1.5), ("nfe", None)],
    ("ddpm-step", "fwd+bwd"): [("eager", 1.2)],
}

NO_GPU = (
    "No CUDA GPU: kernel speedups need a CUDA GPU, so this run reports none. It times the eager "
    "reference only and checks the Triton kernels for correctness under the Triton interpreter "
    "(interpreter speed says nothing about kernel speed, so it is not timed)."
)


def _ok(row: dict) -> bool:
    return row.get("status") == "ok"


def _median(row: dict | None) -> float | None:
    if row is None or not _ok(row):
        return None
    return row["timing"]["median_ms"]


def finalize(result: dict) -> dict:
    """Fill speedups, GB/s, NFE agreement and target verdicts into ``result["rows"]``."""
    rows = result["rows"]
    by_key = {(r["variant"], r["mode"], r["baseline"]): r for r in rows}
    copy_gbps = (result.get("copy") or {}).get("gbps")
    cuda = result["device"]["type"] == "cuda"
    for r in rows:
        r["speedup"] = {}
        if _ok(r) and r.get("bytes") and not r.get("interpreter"):
            r["gbps"] = r["bytes"] / (r["timing"]["median_ms"] * 1e-3) / 1e9
            r["copy_fraction"] = r["gbps"] / copy_gbps if copy_gbps else None
        else:
            r["gbps"] = r["copy_fraction"] = None
        eager = by_key.get((r["variant"], r["mode"], "eager"))
        if r["baseline"] != "eager" and eager is not None:
            if eager.get("nfe") and r.get("nfe"):
                r["nfe_match"] = eager["nfe"] == r["nfe"]
        if not cuda or r.get("interpreter") or r["baseline"] == "eager" or not _ok(r):
            continue
        others = ("eager", "compile", "compile-max") if r["baseline"] == "fused" else ("eager",)
        for other in others:
            base = _median(by_key.get((r["variant"], r["mode"], other)))
            if base is not None:
                r["speedup"][other] = base / r["timing"]["median_ms"]
    for r in rows:
        r["target"] = _verdict(r, by_key, cuda)
    return result


def _verdict(row: dict, by_key: dict, cuda: bool) -> dict | None:
    """The target verdict of ``row``: on the fused row, or on eager when fused was not timed."""
    goals = TARGETS.get((row["workload"], row["mode"]))
    if not goals or row["baseline"] not in ("fused", "eager"):
        return None
    if row["baseline"] == "eager":
        if (row["variant"], row["mode"], "fused") in by_key:
            return None  # the fused row carries it
        why = "needs a CUDA GPU" if not cuda else "fused baseline not run"
        return {"met": None, "text": f"not measured ({why})"}
    if row.get("interpreter") or not cuda:
        return {"met": None, "text": "not measured (Triton interpreter, not a GPU)"}
    if not _ok(row):
        return {"met": False, "text": "MISSED: the fused row did not run"}
    parts, met = [], True
    for kind, want in goals:
        if kind == "eager" or kind == "compile":
            keys = ("eager",) if kind == "eager" else ("compile", "compile-max")
            got = [row["speedup"][k] for k in keys if k in row["speedup"]]
            if not got:
                parts.append(f"{kind} not measured")
                met = None if met is not False else False
                continue
            have = min(got)  # vs the faster compile baseline
            ok = have >= want
            parts.append(f"{have:.2f}x {kind} {'>=' if ok else '<'} {want:g}x")
        elif kind == "copy":
            frac = row.get("copy_fraction")
            if frac is None:
                parts.append("copy not measured")
                met = None if met is not False else False
                continue
            ok = frac >= want
            parts.append(f"{frac:.0%} of copy {'>=' if ok else '<'} {want:.0%}")
        else:  # nfe
            ok = row.get("nfe_match")
            if ok is None:
                parts.append("NFE not compared")
                met = None if met is not False else False
                continue
            parts.append("same NFE" if ok else "NFE differs")
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


def _cells(r: dict) -> dict:
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
    diff = r.get("max_rel_diff_vs_eager")
    return {
        "workload": r["variant"],
        "shape": r["shape"],
        "mode": r["mode"],
        "baseline": r["baseline"],
        "median ms [p20, p80]": time,
        "vs eager": _x(r["speedup"].get("eager")),
        "vs compile": _x(r["speedup"].get("compile")),
        "vs max-autotune": _x(r["speedup"].get("compile-max")),
        "GB/s (% of copy)": gbps,
        "peak MiB": "" if r.get("peak_mem_bytes") is None else f"{r['peak_mem_bytes'] / 2**20:.0f}",
        "NFE F/B": nfe,
        "max rel diff vs eager": "" if diff is None else f"{diff:.1e}",
        "target": (r.get("target") or {}).get("text", ""),
    }


def _table(dicts: list[dict], keep: tuple[str, ...] = ()) -> str:
    """A markdown table of ``dicts``; columns empty in every row are left out."""
    if not dicts:
        return ""
    cols = [c for c in dicts[0] if c in keep or any(d[c] for d in dicts)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for d in dicts:
        lines.append("| " + " | ".join(str(d[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _spot_lines(spot: dict | None) -> list[str]:
    if spot is None:
        return ["Correctness spot-check: not run (--no-check)."]
    where = "Triton interpreter on CPU" if spot.get("interpreter") else spot.get("device", "")
    if spot.get("skipped"):
        return [f"Correctness spot-check: skipped ({spot['skipped']})."]
    head = {True: "all passed", False: "FAILED", None: "skipped"}[spot.get("ok")]
    lines = [
        f"Correctness spot-check of the Triton kernels vs the fp64 reference ({where}): "
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
    """The run as markdown: header, main table, spot-check, notes."""
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
    copy = result.get("copy")
    if copy:
        what = "device-to-device copy" if cuda else "CPU memory copy"
        lines += [
            f"Roofline: {what} of a {copy['buffer_bytes'] / 2**20:.0f} MiB buffer, "
            f"{copy['gbps']:.0f} GB/s (measured in this run).",
            "",
        ]
    shown = [r for r in result["rows"] if not r["status"].startswith("skipped")]
    lines.append(_table([_cells(r) for r in shown], keep=("median ms [p20, p80]",)))
    lines.append("")
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
    """PNG: fused speedups grouped by baseline on CUDA; eager timings otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dev, git = result["device"], result["git"]
    commit = git.get("short") or "no commit"
    fused = [r for r in rows if r["baseline"] == "fused" and r.get("speedup")]
    if fused:
        labels = [f"{r['variant']}\n{r['mode']}" for r in fused]
        groups = [
            ("eager", "vs eager"),
            ("compile", "vs torch.compile"),
            ("compile-max", "vs max-autotune"),
        ]
        width = 0.27
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(fused) + 2), 5))
        for i, (key, name) in enumerate(groups):
            vals = [r["speedup"].get(key, 0.0) for r in fused]
            xs = [j + (i - 1) * width for j in range(len(fused))]
            bars = ax.bar(xs, vals, width, label=f"fused {name}")
            for b, v in zip(bars, vals):
                if v:
                    ax.annotate(
                        f"{v:.2f}",
                        (b.get_x() + b.get_width() / 2, v),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(len(fused)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("speedup of the fused backend (x)")
        ax.set_title(f"timeaware fused backend speedup, {dev['name']}, commit {commit}")
        ax.legend(fontsize=8)
    else:
        timed = [r for r in rows if r["baseline"] == "eager" and _ok(r)]
        labels = [f"{r['variant']} {r['mode']}\n{r['shape']}" for r in timed]
        med = [r["timing"]["median_ms"] for r in timed]
        lo = [m - r["timing"]["p20_ms"] for m, r in zip(med, timed)]
        hi = [r["timing"]["p80_ms"] - m for m, r in zip(med, timed)]
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
                f"Eager reference timings on {dev['name']}, commit {commit}\n"
                "No fused speedups: no fused row was timed"
            )
        else:
            title = (
                f"Eager reference timings on {dev['name']}, small CPU sizes, commit {commit}"
                "\nNo fused speedups: kernel speedups need a CUDA GPU (not measured here)"
            )
        ax.set_title(title, fontsize=9)
        ax.margins(x=0.35)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
