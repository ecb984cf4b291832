"""Timing, copy bandwidth and peak memory.

Every row on CUDA gets three times (DESIGN section 7):

* device time (:func:`time_cuda`): ``triton.testing.do_bench``, CUDA events around each call,
  the L2 cache cleared (a 256 MB buffer zeroed) before every repetition so no input is ever
  served from L2, ``.grad`` of the given leaves reset before every repetition, warm-up outside
  the timed repetitions. The flush (~90 us) also hides the host time of the call: this is the
  time of the kernels alone.
* back-to-back time per call (:func:`time_back_to_back`): CUDA events around a loop of K calls
  (after warm-up, no flush, no synchronisation inside the loop), divided by K: what a training
  loop sees, host time included where the host is the bottleneck.
* host time per call: the same loop timed on the host clock before the final synchronize, with K
  small enough that the launch queue does not fill (so the host never waits for the device,
  unless the call itself synchronises).

We keep every repetition's time and report the median with the 20% and 80% quantiles. On CPU a
wall-clock loop stands in (same statistics): the host is the device there.

The roofline of a row is a device copy of the same byte count, timed the same way in the same
run (:func:`copy_same_size`, cached per size).
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
        copy_bytes: size of the buffer of the peak device-to-device copy (shown for reference;
            each row's roofline is a copy of its own size).
        loop_ms: target length of one back-to-back loop of K calls (CUDA).
        loop_reps: most timed loops (CUDA); at least 3 are timed.
        loop_budget_ms: time budget of a row's loops, beyond the 3 (CUDA).
        max_calls: most calls K in one loop (CUDA).
        queue_launches: most kernel launches a loop may enqueue (K x launches per call), so the
            host never waits for a full launch queue (CUDA's holds about a thousand).
    """

    warmup_ms: float
    rep_ms: float
    min_reps: int
    max_reps: int
    budget_s: float
    copy_bytes: int
    loop_ms: float = 0.0
    loop_reps: int = 0
    loop_budget_ms: float = 0.0
    max_calls: int = 1
    queue_launches: int = 512


SETTINGS = {
    "full": TimingSettings(25, 200, 10, 0, 0, 1 << 30, 20.0, 15, 1500.0, 200, 512),
    "quick": TimingSettings(10, 50, 5, 0, 0, 1 << 28, 10.0, 7, 500.0, 100, 512),
    "cpu": TimingSettings(0, 0, 3, 20, 1.0, 1 << 26),
    "cpu-quick": TimingSettings(0, 0, 2, 5, 0.25, 1 << 24),
}
# launches per call assumed for a row whose launches were not counted (compiled code)
UNCOUNTED_LAUNCHES = 16


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
    """GB/s of ``dst.copy_(src)`` on a buffer far larger than L2: the peak copy bandwidth.

    Bytes moved = 2 x buffer size (one read, one write). Shown for reference; the roofline of a
    row is :func:`copy_same_size`.
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


def copy_same_size(
    nbytes: int, device: torch.device, settings: TimingSettings, cache: dict | None = None
) -> dict:
    """A device copy that moves ``nbytes`` (reads ``nbytes // 2``, writes as many), timed like a
    row's device time (``time_fn``): the roofline of a row of ``nbytes`` compulsory traffic.

    Args:
        nbytes: bytes the row moves (read plus written), >= 2.
        device: where to copy.
        settings: timing settings.
        cache: dict reused across calls: one measurement per size per run.

    Returns:
        ``{"buffer_bytes", "bytes_moved", "timing", "gbps"}``.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 2:
        raise ValueError(f"nbytes: expected an int >= 2, got {nbytes!r}")
    half = nbytes // 2
    if cache is not None and half in cache:
        return cache[half]
    src = torch.ones(half, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)

    def copy():
        dst.copy_(src)

    copy()
    synchronize(device)
    timing = time_fn(copy, device, settings)
    out = {
        "buffer_bytes": half,
        "bytes_moved": 2 * half,
        "timing": timing.as_dict(),
        "gbps": 2 * half / (timing.median_ms * 1e-3) / 1e9,
    }
    if cache is not None:
        cache[half] = out
    return out


# --------------------------------------------------------------------------------------------
# Back-to-back calls: time per call and host time per call (CUDA)
# --------------------------------------------------------------------------------------------
class CudaClock:
    """The CUDA calls :func:`time_back_to_back` makes; tests replace it with a fake."""

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def event(self):
        return torch.cuda.Event(enable_timing=True)


def loop_calls(est_ms: float, settings: TimingSettings, launches: int | None) -> int:
    """Calls K in one back-to-back loop: about ``settings.loop_ms`` long, at most
    ``settings.max_calls``, and at most ``settings.queue_launches`` launches in all."""
    k = int(settings.loop_ms / max(est_ms, 1e-3))
    k = max(1, min(k, settings.max_calls))
    per_call = launches if launches else UNCOUNTED_LAUNCHES
    return max(1, min(k, settings.queue_launches // per_call))


@dataclass
class LoopTiming:
    """Back-to-back timing of one row.

    Attributes:
        calls: calls K per loop.
        per_call: device-clock (CUDA events) time of a loop / K, ms.
        host: host-clock time of the loop before the final synchronize / K, ms.
        host_waits: True when the host time includes waiting for the device (the call
            synchronises, or its launches overfill the queue even at K = 1), None when unknown
            (launches not counted), False otherwise.
    """

    calls: int
    per_call: Timing
    host: Timing
    host_waits: bool | None

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "per_call": self.per_call.as_dict(),
            "host": self.host.as_dict(),
            "host_waits": self.host_waits,
        }


def time_back_to_back(
    fn: Callable[[], object],
    settings: TimingSettings,
    grad_to_none=None,
    launches: int | None = None,
    syncs: int | None = None,
    clock: CudaClock | None = None,
) -> LoopTiming:
    """Time loops of K back-to-back calls of ``fn``: device time per call and host time per call.

    Each loop: synchronize, record a start event, call ``fn`` K times (resetting the ``.grad``
    of ``grad_to_none`` before each call, as a training loop's ``zero_grad(set_to_none=True)``),
    read the host clock, record an end event, synchronize. No L2 flush, no sync inside the loop.

    Args:
        fn: the call (warmed up and compiled before).
        settings: ``loop_ms``, ``loop_reps``, ``loop_budget_ms``, ``max_calls``,
            ``queue_launches``.
        grad_to_none: tensors whose ``.grad`` is reset before every call.
        launches: kernel launches per call (to keep the queue from filling), or None.
        syncs: host syncs per call, or None.
        clock: the CUDA calls (default :class:`CudaClock`).

    Returns:
        A :class:`LoopTiming`.
    """
    clock = clock or CudaClock()
    _reset(grad_to_none)
    clock.synchronize()
    t0 = time.perf_counter()
    fn()
    clock.synchronize()
    est_ms = (time.perf_counter() - t0) * 1e3
    k = loop_calls(est_ms, settings, launches)
    reps = int(settings.loop_budget_ms / max(k * est_ms, 1e-3))
    reps = max(3, min(settings.loop_reps, reps))
    start, end = clock.event(), clock.event()
    dev, host = [], []
    for _ in range(reps):
        clock.synchronize()
        start.record()
        t0 = time.perf_counter()
        for _ in range(k):
            _reset(grad_to_none)
            fn()
        t1 = time.perf_counter()
        end.record()
        clock.synchronize()
        dev.append(start.elapsed_time(end) / k)
        host.append((t1 - t0) * 1e3 / k)
    if syncs:
        waits: bool | None = True
    elif launches is None or syncs is None:
        waits = None
    else:
        waits = launches * k > settings.queue_launches
    return LoopTiming(k, summarize(dev), summarize(host), waits)


# --------------------------------------------------------------------------------------------
# GPU activities of one call (profiler)
# --------------------------------------------------------------------------------------------
def count_device_events(events) -> int:
    """Events that ran on a CUDA device (kernels, memcpy, memset) in profiler ``events``."""
    from torch.autograd import DeviceType

    return sum(1 for e in events if getattr(e, "device_type", None) == DeviceType.CUDA)


def gpu_activities(fn: Callable[[], object], device: torch.device, grad_to_none=None):
    """GPU activities (kernels, memcpy, memset) of one call of ``fn``, from ``torch.profiler``.

    Sees compiled code too, which the aten/Triton counter cannot. None off CUDA.
    """
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    _reset(grad_to_none)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return count_device_events(prof.events())
