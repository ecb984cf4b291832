"""The benchmark suite runs: ``python -m bench`` on CPU, its report logic, pytest-benchmark files.

These check the harness, not speed: the CPU path of ``python -m bench`` writes valid JSON,
markdown and PNG and never claims a fused speedup; the report computes speedups, GB/s and target
verdicts correctly from a synthetic GPU run; ``pytest bench/`` collects and skips cleanly
without CUDA.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it runs from the repository root
    sys.path.insert(0, str(ROOT))

from bench import report, spotcheck  # noqa: E402
from bench.workloads import WORKLOADS, select, variants  # noqa: E402


def _run(*args, timeout=240):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# --------------------------------------------------------------------------------------------
# python -m bench, CPU path
# --------------------------------------------------------------------------------------------
def test_cli_cpu_quick_writes_json_markdown_png(tmp_path):
    proc = _run(
        "-m",
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--no-check",
        "--only",
        "gn-node",
        "node-step",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md", ".png"], files
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert next(tmp_path.glob("*.json")).name.startswith("cpu-")
    assert result["device"]["type"] == "cpu"
    for key in ("torch", "triton", "cuda", "python"):
        assert key in result["versions"]
    assert "commit" in result["git"]
    assert result["copy"]["gbps"] > 0
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {"gn-node", "node-step"}
    assert {r["baseline"] for r in rows} == {"eager"}
    for r in rows:
        assert r["status"] == "ok", r
        t = r["timing"]
        assert 0 < t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]
        assert len(t["times_ms"]) == t["reps"] >= 2
        assert r["speedup"] == {}
    (step,) = [r for r in rows if r["workload"] == "node-step"]
    assert step["nfe"][0] >= 2 and step["nfe"][1] >= 2  # dopri5: 2 + 6 x steps
    md = proc.stdout
    assert "| workload |" in md and "need a CUDA GPU" in md
    assert "vs eager" not in md  # no speedup column: nothing was measured against eager
    assert md == next(tmp_path.glob("*.md")).read_text()
    assert "[1/4]" in proc.stderr  # a progress line per row


def test_cli_rejects_unknown_workload(tmp_path):
    proc = _run("-m", "bench", "--only", "gn-nope", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "gn-nope" in proc.stderr


def test_spotcheck_passes(device):
    # On CPU tests/conftest.py has set TRITON_INTERPRET=1 before triton was imported.
    result = spotcheck.run_checks(device, models=False)
    assert result["ok"] is True, json.dumps(result, indent=1, default=str)[:3000]
    assert len(result["checks"]) == len(spotcheck.CASES)


# --------------------------------------------------------------------------------------------
# Workload table
# --------------------------------------------------------------------------------------------
def test_variants_follow_design_section_7():
    vs = variants("full")
    assert {v.workload for v in vs} == set(WORKLOADS)
    shapes = {v.label: v.shape for v in vs}
    assert shapes["gn-node C64 8x8 fp32"] == "N128 C64 8x8 G32"
    assert shapes["gn-ddpm C256 16x16 bf16"] == "N128 C256 16x16 G32"
    assert shapes["gn-ddpm C128 32x32 bf16"] == "N128 C128 32x32 G32"
    assert shapes["gn-g1 C128 32x32 fp32"] == "N128 C128 32x32 G1"
    assert shapes["gn-g1 C128 32x32 bf16"] == "N128 C128 32x32 G1"
    assert shapes["odefunc C64 8x8 fp32"] == "N128 C64 8x8"
    assert [v.dtype for v in vs if v.workload == "ddpm-step"] == ["bf16 autocast"]
    assert len(variants("full", dtype="bf16")) == len(vs) - 1  # gn-g1's two dtypes collapse
    assert [v.workload for v in select(vs, ["gn-g1"])] == ["gn-g1", "gn-g1"]
    with pytest.raises(ValueError, match="unknown workload"):
        select(vs, ["gn-nope"])


# --------------------------------------------------------------------------------------------
# Report: speedups, roofline, targets, NFE agreement (a synthetic GPU run)
# --------------------------------------------------------------------------------------------
def _row(variant, workload, mode, baseline, ms, **kw):
    t = {"median_ms": ms, "p20_ms": ms * 0.9, "p80_ms": ms * 1.1, "reps": 3, "times_ms": [ms] * 3}
    return {
        "workload": workload,
        "variant": variant,
        "shape": "s",
        "dtype": "bf16",
        "mode": mode,
        "baseline": baseline,
        "status": "ok",
        "timing": t,
        **kw,
    }


def _gpu_result():
    gb = 10**9
    rows = [
        _row("gn-ddpm a", "gn-ddpm", "fwd", "eager", 1.0, bytes=gb),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "compile", 0.5, bytes=gb),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "compile-max", 0.45, bytes=gb),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "fused", 0.4, bytes=gb),
        _row("node-step", "node-step", "fwd+bwd", "eager", 30.0, nfe=[26, 38]),
        {**_row("node-step", "node-step", "fwd+bwd", "fused", 15.0, nfe=[26, 44])},
        {**_row("ddpm-step", "ddpm-step", "fwd+bwd", "eager", 100.0)},
        {**_row("ddpm-step", "ddpm-step", "fwd+bwd", "fused", 0.0), "status": "failed: boom"},
    ]
    return {
        "created": "2026-01-02 03:04:05 UTC",
        "profile": "full",
        "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        "versions": {"torch": "2.x", "triton": "3.x", "cuda": "12.x", "python": "3.11"},
        "git": {"commit": "0123456789abcdef", "short": "01234567", "dirty": False},
        "copy": {"gbps": 3000.0, "buffer_bytes": 1 << 30},
        "spot_check": None,
        "rows": rows,
        "notes": [],
    }


def test_report_speedups_roofline_and_targets(tmp_path):
    result = report.finalize(_gpu_result())
    by = {(r["variant"], r["baseline"]): r for r in result["rows"]}
    fused = by[("gn-ddpm a", "fused")]
    assert fused["speedup"] == pytest.approx({"eager": 2.5, "compile": 1.25, "compile-max": 1.125})
    assert fused["gbps"] == pytest.approx(2500.0)
    assert fused["copy_fraction"] == pytest.approx(2500 / 3000)
    # 2.5x >= 2x eager; 1.125x < 1.2x vs the faster compile; 83% >= 80% of copy
    assert fused["target"]["met"] is False
    assert "1.12x compile < 1.2x" in fused["target"]["text"]
    assert "83% of copy >= 80%" in fused["target"]["text"]
    assert by[("gn-ddpm a", "eager")]["target"] is None  # the fused row carries it
    step = by[("node-step", "fused")]
    assert step["nfe_match"] is False
    assert step["target"]["met"] is False and "NFE differs" in step["target"]["text"]
    assert by[("ddpm-step", "fused")]["target"]["met"] is False
    md = report.markdown(result)
    assert "2.50x" in md and "MISSED" in md and "differs from eager" in md
    assert "failed: boom" in md
    assert report.stem(result) == "nvidia-h100-80gb-hbm3-2026-01-02-01234567"
    report.chart(result, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 1000


def test_report_never_shows_an_unmeasured_speedup(tmp_path):
    result = _gpu_result()
    result["device"] = {"type": "cpu", "name": "CPU (x)"}
    for r in result["rows"]:
        r["interpreter"] = r["baseline"] == "fused"
    result = report.finalize(copy.deepcopy(result))
    assert all(r["speedup"] == {} for r in result["rows"])
    assert all(r["gbps"] is None for r in result["rows"] if r["baseline"] == "fused")
    md = report.markdown(result)
    assert "vs eager" not in md and "2.50x" not in md
    assert "need a CUDA GPU" in md and "Triton interpreter" in md
    report.chart(result, tmp_path / "cpu.png")
    assert (tmp_path / "cpu.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# pytest-benchmark files
# --------------------------------------------------------------------------------------------
def test_pytest_benchmark_files_collect():
    proc = _run("-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_bench_ops.py::test_op" in proc.stdout
    assert "test_bench_models.py::test_model" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the benchmarks")
def test_pytest_benchmark_skips_without_cuda():
    proc = _run("-m", "pytest", "bench", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" in proc.stdout and "failed" not in proc.stdout
