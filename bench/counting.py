"""Kernel launches and host syncs per call, per baseline (DESIGN section 8).

Counted with :func:`timeaware.profiling.count_launches`: computing aten ops plus Triton launches,
and host syncs. On a CPU the fused kernels are stubbed out (``stub_triton=True``: the launchers do
all their host work, the kernel does not run), which makes counting the fused path as cheap as
counting eager; a variant whose control flow depends on the values (a solver's step control) is
counted with the kernels run for real, by the Triton interpreter, at the small size of its
``count_build`` (without a warm-up call: the interpreter compiles nothing, and an interpreted
training step takes seconds).

Compiled baselines are not counted: inductor's generated code launches its kernels without going
through the aten dispatcher or Triton's ``JITFunction``, so the counter would not see them. On a
GPU the timing pass records the number of GPU activities of one call from the profiler instead
(``gpu_kernels``), for every baseline.

Under the interpreter every Triton launch copies its tensor arguments with aten ops that exist
only on a CPU; those are left out of the counts (and reported as ``interpreter_ops``).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch

from bench.workloads import BASELINE_INFO, Case, Variant, mode_fn, skip_reason

# Launch budgets of DESIGN section 8, for the fused rows: (workload, mode) -> most launches
LAUNCH_BUDGETS = {
    ("gn-node", "fwd"): 1,
    ("gn-node", "fwd+bwd"): 3,
    ("odefunc", "fwd"): 6,
    ("odefunc", "fwd+bwd"): 16,
}
# ... and host syncs per attempted solver step of a training step
SYNC_PER_STEP_BUDGETS = {("node-step", "fwd+bwd"): 1}
_SYNCS_KEY = "syncs"


def countable(baseline: str) -> bool:
    """Whether ``count_launches`` sees the kernels of ``baseline`` (not of compiled code)."""
    return not BASELINE_INFO[baseline].compiled


def _reset(case: Case) -> None:
    for t in case.leaves:
        t.grad = None


@contextlib.contextmanager
def _inside_launches() -> Iterator[Counter]:
    """Collect (by name) the aten ops dispatched inside Triton launches, and their host syncs
    (under :data:`_SYNCS_KEY`): under the interpreter its copies of the kernel arguments, which
    a GPU does not run (none on a GPU)."""
    from timeaware.profiling import _patch_triton_run, count_launches

    inner: Counter = Counter()

    def wrapper(orig):
        def run(self, *args, grid, warmup, **kwargs):
            with count_launches() as c:
                out = orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            inner.update(c.ops)
            inner[_SYNCS_KEY] += c.syncs
            return out

        return run

    with _patch_triton_run(wrapper):
        yield inner


def count_case(case: Case, mode: str, stub: bool, warmup: bool = True) -> dict:
    """Launches and syncs of one call of ``mode`` on ``case``.

    Args:
        case: a built case.
        mode: ``"fwd"`` or ``"fwd+bwd"``.
        stub: make Triton launches no-ops while counting (and warming up).
        warmup: call once, uncounted, first (lazy initialisation, caches, Triton compilation).

    Returns:
        ``launches`` (= ``triton`` + ``aten``), ``syncs``, ``ops`` (name -> count),
        ``interpreter_ops`` (aten ops inside Triton launches: the interpreter's argument
        copies, not in ``aten``) and, for a case with a solver, ``nfe``, ``steps``,
        ``launches_per_step`` and ``syncs_per_step``.
    """
    from timeaware.profiling import count_launches, stub_triton_launches

    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"mode: got {mode!r}, expected 'fwd' or 'fwd+bwd'")
    fn = mode_fn(case, mode)
    if warmup:
        _reset(case)
        with stub_triton_launches() if stub else contextlib.nullcontext():
            fn()
    _reset(case)
    with count_launches(stub_triton=stub) as c, _inside_launches() as inner:
        fn()
    _reset(case)
    ops = Counter(c.ops)
    ops.subtract(inner)
    copies = sum(v for k, v in inner.items() if k.startswith("aten."))
    aten = c.aten - copies
    out = {
        "launches": c.triton + aten,
        "triton": c.triton,
        "aten": aten,
        "syncs": c.syncs - inner[_SYNCS_KEY],
        "stubbed": stub,
        "interpreter_ops": copies,
        "ops": {k: v for k, v in ops.most_common() if v > 0},
    }
    if case.steps is not None:
        steps = case.steps()
        out["nfe"] = list(case.last_nfe()) if case.last_nfe else None
        out["steps"] = steps
        out["launches_per_step"] = out["launches"] / steps if steps else None
        out["syncs_per_step"] = out["syncs"] / steps if steps else None
    return out


def budget_verdict(row: dict) -> dict | None:
    """The DESIGN section 8 budget of a fused count row, met or over; None without a budget."""
    if row.get("baseline") != "fused" or row.get("status") != "ok":
        return None
    key = (row["workload"], row["mode"])
    if key in LAUNCH_BUDGETS:
        want, have = LAUNCH_BUDGETS[key], row["launches"]
        return {"met": have <= want, "text": f"{have} {'<=' if have <= want else '>'} {want}"}
    if key in SYNC_PER_STEP_BUDGETS and row.get("syncs_per_step") is not None:
        want, have = SYNC_PER_STEP_BUDGETS[key], row["syncs_per_step"]
        ok = have <= want
        return {"met": ok, "text": f"{have:.1f} syncs/step {'<=' if ok else '>'} {want}"}
    return None


def count_variant(
    variant: Variant,
    baselines: list[str],
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    interpret: bool = True,
) -> list[dict]:
    """Count every countable baseline of ``variant`` in its ``count_modes``.

    On CPU the fused baseline is stubbed when ``variant.stub_ok``; otherwise its kernels run
    (the Triton interpreter on CPU, which must have been enabled before triton was imported),
    unless ``interpret`` is False (``--quick``): then that row says it was skipped.

    Returns:
        One row per (baseline, mode): the variant's identity, ``status`` (``ok``, or why not)
        and the numbers of :func:`count_case`.
    """
    rows = []
    build = variant.count_build or variant.build
    shape = variant.count_shape or variant.shape
    for baseline in baselines:
        if baseline not in variant.baselines or not countable(baseline):
            continue
        base = {
            "workload": variant.workload,
            "variant": variant.label,
            "shape": shape,
            "baseline": baseline,
        }
        skip = skip_reason(variant, baseline)
        if skip:
            continue
        triton_on_cpu = device.type == "cpu" and BASELINE_INFO[baseline].backend == "triton"
        stub = triton_on_cpu and variant.stub_ok
        # the interpreter has nothing to compile, and a real interpreted call of a training
        # step takes seconds: no warm-up there
        warmup = not (triton_on_cpu and not stub)
        if not warmup and not interpret:
            why = "skipped: --quick (the Triton interpreter takes seconds per training step)"
            rows += [{**base, "mode": mode, "status": why} for mode in variant.count_modes]
            continue
        t0 = time.perf_counter()
        try:
            case = build(baseline, device)
        except Exception as e:  # noqa: BLE001 - a row that fails says why
            for mode in variant.count_modes:
                rows.append({**base, "mode": mode, "status": f"failed to build: {_reason(e)}"})
            continue
        for mode in variant.count_modes:
            row = {**base, "mode": mode}
            try:
                row.update(count_case(case, mode, stub, warmup=warmup))
                row["status"] = "ok"
            except Exception as e:  # noqa: BLE001
                row["status"] = f"failed: {_reason(e)}"
            row["count_s"] = time.perf_counter() - t0
            row["budget"] = budget_verdict(row)
            rows.append(row)
            if progress:
                what = (
                    f"{row['launches']} launches, {row['syncs']} syncs"
                    if row["status"] == "ok"
                    else row["status"]
                )
                progress(f"  count {variant.label:<28} {mode:<8} {baseline:<20} {what}")
        del case
    return rows


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:240]
