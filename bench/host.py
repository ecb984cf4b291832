"""Host overhead per call: the fused path against the eager ops it replaces (DESIGN section 8).

At the NODE sizes a kernel runs for microseconds, so what a call costs on the host (Python
checks, the dispatcher, autograd nodes, kernel launches) decides the speed. This benchmark times
calls on tiny tensors with :func:`timeaware.profiling.host_time_per_call`:

* ``stubbed launch`` (CPU and GPU): every Triton launch is a no-op
  (:func:`timeaware.profiling.stub_triton_launches`), so the fused time is the host work of
  the call alone, Triton's own launch path excluded;
* ``real`` (GPU only): the real calls back to back without synchronisation; with tiny tensors
  the host is the bottleneck, so this is the host time including Triton's launch path.

Modes: ``fwd`` (under ``no_grad``), ``fwd-grad`` (inputs require grad: the autograd graph is
built, then dropped) and ``fwd+bwd``. The eager side is the composite a user writes (adds +
``F.group_norm`` + act; torchdiffeq's example ODE function for ``odefunc``), which launches
nothing from Triton, so stubbing does not change it. Goal: fused / eager <= 1.0 for the op.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.workloads import Case, OpSpec, build_odefunc, build_op

HOST_MODES = ("fwd", "fwd-grad", "fwd+bwd")


@dataclass(frozen=True)
class HostCase:
    """One pair of calls compared on the host.

    Attributes:
        name: row label.
        shape: the tiny shape timed.
        what: what the calls compute.
        eager: baseline name of the eager side; fused: of the fused side.
        build: ``build(baseline, device)`` -> :class:`bench.workloads.Case`.
        goal: most allowed fused / eager ratio, or None when there is no budget.
    """

    name: str
    shape: str
    what: str
    eager: str
    fused: str
    build: Callable[[str, torch.device], Case]
    goal: float | None


_OP = OpSpec(2, 8, 4, 4, 4, "relu", ("conv_bias", "time"), torch.float32)
HOST_CASES = (
    HostCase(
        "op (gn-node)",
        _OP.shape,
        "conv bias + t * time map + GroupNorm + ReLU, fp32",
        "eager",
        "fused",
        lambda baseline, device: build_op(_OP, baseline, device),
        1.0,
    ),
    HostCase(
        "odefunc",
        "N2 C8 4x4",
        "ODE function vs torchdiffeq's example ODEfunc, fp32",
        "torchdiffeq-example",
        "fused",
        lambda baseline, device: build_odefunc(2, 8, 4, None, baseline, device),
        None,
    ),
)


@dataclass(frozen=True)
class HostSettings:
    """Calls per timed repeat, repeats (the median is kept) and warm-up calls."""

    iters: int
    repeats: int
    warmup: int


HOST_SETTINGS = {
    "full": HostSettings(100, 7, 20),
    "quick": HostSettings(50, 3, 5),
}


def host_fn(case: Case, mode: str) -> Callable[[], object]:
    """The call timed for ``mode`` (``fwd``, ``fwd-grad`` or ``fwd+bwd``)."""
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return case.forward()

        return fwd
    if mode == "fwd-grad":
        return case.forward
    if mode == "fwd+bwd":

        def fwd_bwd():
            for t in case.leaves:
                t.grad = None
            case.forward().backward(case.cotangent)

        return fwd_bwd
    raise ValueError(f"mode: got {mode!r}, expected one of {HOST_MODES}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pair(
    fns: dict[str, Callable[[], object]],
    stub: set[str],
    settings: HostSettings,
    device: torch.device,
) -> dict[str, float]:
    """Host seconds per call of each callable, interleaved repeat by repeat (median).

    Args:
        fns: name -> callable.
        stub: names whose Triton launches are stubbed out while they run.
        settings: iterations, repeats, warm-up.
        device: synchronised after every repeat (outside the timing), so that one callable's
            queued work never delays the next one's timing.
    """
    from timeaware.profiling import host_time_per_call, stub_triton_launches

    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(settings.repeats):
        for name, fn in fns.items():
            ctx = stub_triton_launches() if name in stub else contextlib.nullcontext()
            with ctx:
                t = host_time_per_call(
                    fn,
                    iters=settings.iters,
                    repeats=1,
                    warmup=settings.warmup if rep == 0 else 0,
                )
            _synchronize(device)
            times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def run_host(
    device: torch.device,
    settings: HostSettings,
    progress: Callable[[str], None] | None = None,
    cases: tuple[HostCase, ...] = HOST_CASES,
) -> dict:
    """Time every host case and mode; on a GPU both real and stubbed launches.

    Returns:
        ``{"rows": [...], "settings": {...}, "variants": [...]}``; each row holds the case,
        mode, launch variant, ``eager_us``, ``fused_us``, ``ratio`` (fused / eager) and ``goal``
        (``{"met", "text"}`` or None).
    """
    variants = [("stubbed launch", True)]
    if device.type == "cuda":
        variants.insert(0, ("real", False))
    rows = []
    for hc in cases:
        try:
            built = {hc.eager: hc.build(hc.eager, device), hc.fused: hc.build(hc.fused, device)}
        except Exception as e:  # noqa: BLE001 - a case that fails says why
            for label, _ in variants:
                for mode in HOST_MODES:
                    rows.append(
                        {"case": hc.name, "mode": mode, "launch": label, "status": f"failed: {e}"}
                    )
            continue
        for label, stub in variants:
            for mode in HOST_MODES:
                row = {
                    "case": hc.name,
                    "shape": hc.shape,
                    "what": hc.what,
                    "mode": mode,
                    "launch": label,
                    "eager": hc.eager,
                    "fused": hc.fused,
                }
                try:
                    fns = {b: host_fn(c, mode) for b, c in built.items()}
                    t = measure_pair(fns, {hc.fused} if stub else set(), settings, device)
                    row["eager_us"] = t[hc.eager] * 1e6
                    row["fused_us"] = t[hc.fused] * 1e6
                    row["ratio"] = t[hc.fused] / t[hc.eager]
                    row["status"] = "ok"
                except Exception as e:  # noqa: BLE001
                    row["status"] = f"failed: {type(e).__name__}: {e}"[:240]
                row["goal"] = goal_verdict(row, hc.goal)
                rows.append(row)
                if progress:
                    what = (
                        f"eager {row['eager_us']:.1f} us, fused {row['fused_us']:.1f} us, "
                        f"{row['ratio']:.2f}x"
                        if row["status"] == "ok"
                        else row["status"]
                    )
                    progress(f"  host {hc.name:<14} {mode:<9} {label:<15} {what}")
        for c in built.values():
            for t in c.leaves:
                t.grad = None
    return {
        "rows": rows,
        "settings": {"iters": settings.iters, "repeats": settings.repeats},
        "variants": [v for v, _ in variants],
    }


def goal_verdict(row: dict, goal: float | None) -> dict | None:
    """``{"met": bool, "text"}`` for the ratio of ``row`` against ``goal``; None without one."""
    if goal is None or row.get("status") != "ok":
        return None
    ok = row["ratio"] <= goal
    return {
        "met": ok,
        "text": f"{'met' if ok else 'MISSED'}: {row['ratio']:.2f}x {'<=' if ok else '>'} {goal:g}x",
    }
