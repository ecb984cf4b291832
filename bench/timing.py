"""Timing, copy bandwidth and peak memory.

On CUDA every timing goes through ``triton.testing.do_bench``: CUDA events around each call, the
L2 cache cleared (a 256 MB buffer zeroed) before every repetition so no input is ever served
from L2, ``.grad`` of the given leaves reset before every repetition, warm-up outside the timed
repetitions. We keep every repetition's time and report the median with the 20% and 80%
quantiles. On CPU a wall-clock loop stands in (same statistics); it measures eager PyTorch only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class TimingSettings:
    """How long to time one row.

    Attributes:
        warmup_ms: do_bench warm-up time (CUDA).
        rep_ms: do_bench repetition time (CUDA); raised to ``min_reps`` repetitions of slow rows.
        min_reps: fewest timed repetitions.
        max_reps: most timed repetitions (CPU only; do_bench picks its own count).
        budget_s: wall-clock budget of a CPU row, beyond its ``min_reps``.
        copy_bytes: size of the buffer of the device-to-device copy.
    """

    warmup_ms: float
    rep_ms: float
    min_reps: int
    max_reps: int
    budget_s: float
    copy_bytes: int


SETTINGS = {
    "full": TimingSettings(25, 200, 10, 0, 0, 1 << 30),
    "quick": TimingSettings(10, 50, 5, 0, 0, 1 << 28),
    "cpu": TimingSettings(0, 0, 3, 20, 1.0, 1 << 26),
    "cpu-quick": TimingSettings(0, 0, 2, 5, 0.25, 1 << 24),
}


@dataclass
class Timing:
    """Statistics of one row's repetitions, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    times_ms: list[float]

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only; CPU work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(sorted_times: list[float], q: float) -> float:
    """Linear-interpolation quantile, as ``torch.quantile`` (which do_bench uses)."""
    if len(sorted_times) == 1:
        return sorted_times[0]
    pos = q * (len(sorted_times) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_times) - 1)
    return sorted_times[lo] + (sorted_times[hi] - sorted_times[lo]) * (pos - lo)


def summarize(times_ms: list[float]) -> Timing:
    """Median and 20%/80% quantiles of a list of times in ms."""
    if not times_ms:
        raise ValueError("times_ms: got an empty list, expected at least one time")
    s = sorted(times_ms)
    return Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8), len(s), times_ms)


def _reset(grad_to_none) -> None:
    for t in grad_to_none or ():
        t.grad = None


def _estimate_cuda_ms(fn: Callable[[], object], grad_to_none) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    _reset(grad_to_none)
    torch.cuda.synchronize()
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 3


def time_cuda(fn: Callable[[], object], settings: TimingSettings, grad_to_none=None) -> Timing:
    """Time ``fn`` with ``triton.testing.do_bench`` (call it once before: compilation)."""
    from triton.testing import do_bench

    est = max(_estimate_cuda_ms(fn, grad_to_none), 1e-3)
    rep = max(settings.rep_ms, settings.min_reps * est)
    warmup = max(settings.warmup_ms, est)
    try:
        times = do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="all")
    except (AssertionError, TypeError, ValueError):  # a Triton without return_mode="all"
        med, p20, p80 = do_bench(
            fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8]
        )
        return Timing(med, p20, p80, -1, [])
    return summarize([float(t) for t in times])


def time_cpu(fn: Callable[[], object], settings: TimingSettings, grad_to_none=None) -> Timing:
    """Wall-clock repetitions of ``fn`` (call it once before: warm-up)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < settings.min_reps or (
        len(times) < settings.max_reps and time.perf_counter() - start < settings.budget_s
    ):
        _reset(grad_to_none)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return summarize(times)


def time_fn(
    fn: Callable[[], object], device: torch.device, settings: TimingSettings, grad_to_none=None
) -> Timing:
    """Time ``fn`` on ``device``: ``do_bench`` with CUDA events on a GPU, wall clock on CPU."""
    if device.type == "cuda":
        return time_cuda(fn, settings, grad_to_none)
    return time_cpu(fn, settings, grad_to_none)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device, grad_to_none=None):
    """``torch.cuda.max_memory_allocated`` over one call of ``fn`` (None off CUDA).

    The count includes everything allocated at the time: inputs, weights and, for ``bwd``, the
    graph saved by the forward, so it compares what each baseline keeps alive.
    """
    if device.type != "cuda":
        return None
    _reset(grad_to_none)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def copy_bandwidth(device: torch.device, settings: TimingSettings) -> dict:
    """GB/s of ``dst.copy_(src)`` on a buffer far larger than L2: the roofline of the table.

    Bytes moved = 2 x buffer size (one read, one write).
    """
    numel = settings.copy_bytes // 4
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    copy()
    synchronize(device)
    timing = time_fn(copy, device, settings)
    moved = 2 * numel * 4
    out = {
        "buffer_bytes": numel * 4,
        "bytes_moved": moved,
        "timing": timing.as_dict(),
        "gbps": moved / (timing.median_ms * 1e-3) / 1e9,
    }
    return out
