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

:func:`count_solvers` counts the solver alone, for the variants with a ``solve_problem``
(node-step, ode-solve): ``timeaware.solvers.cost.solve_cost`` for torchdiffeq and for timeaware
(its Triton backend) on the same problem, forward and adjoint backward, with the function's own
launches subtracted; the timeaware rows are checked against the solver budget of DESIGN
section 8 and their NFE against torchdiffeq's.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator

import torch

from bench.workloads import BASELINE_INFO, SOLVERS, Case, Variant, mode_fn, skip_reason

# Launch budgets of DESIGN section 8, for the fused rows: (workload, mode) -> most launches
LAUNCH_BUDGETS = {
    ("gn-node", "fwd"): 1,
    ("gn-node", "fwd+bwd"): 3,
    ("odefunc", "fwd"): 6,
    ("odefunc", "fwd+bwd"): 16,
}
# ... host syncs per attempted solver step of a whole call (training step or solve), for the
# baseline whose solver has that budget: (workload, mode, baseline) -> most syncs per step
SYNC_PER_STEP_BUDGETS = {
    ("node-step", "fwd+bwd", "fused+timeaware-solver"): 1,
    ("ode-solve", "fwd", "fused+timeaware-solver"): 1,
}
# ... and the solver's own cost per attempted dopri5 step (solver rows of the timeaware solver)
SOLVER_BUDGETS = {"launches_per_step": 12, "syncs_per_step": 1}
_QUICK_SKIP = "skipped: --quick (the Triton interpreter would take seconds here)"
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
    """The DESIGN section 8 budget of a count row, met or over; None without a budget.

    Launch budgets apply to the ``fused`` rows of the op and odefunc; the sync budget per
    solver step to the rows whose solver has it (``fused+timeaware-solver``).
    """
    if row.get("status") != "ok":
        return None
    key = (row["workload"], row["mode"])
    if row.get("baseline") == "fused" and key in LAUNCH_BUDGETS:
        want, have = LAUNCH_BUDGETS[key], row["launches"]
        return {"met": have <= want, "text": f"{have} {'<=' if have <= want else '>'} {want}"}
    key = (*key, row.get("baseline"))
    if key in SYNC_PER_STEP_BUDGETS and row.get("syncs_per_step") is not None:
        want, have = SYNC_PER_STEP_BUDGETS[key], row["syncs_per_step"]
        ok = have <= want
        return {"met": ok, "text": f"{have:.2f} syncs/step {'<=' if ok else '>'} {want}"}
    return None


def solver_budget_verdict(row: dict) -> dict | None:
    """The solver budget of DESIGN section 8 (<= 12 launches and <= 1 host sync per attempted
    dopri5 step, the solver's own work) on a timeaware solver row; None for other rows."""
    if row.get("solver") != "timeaware" or row.get("status") != "ok":
        return None
    parts, met = [], True
    for key, what in (("launches_per_step", "launches"), ("syncs_per_step", "syncs")):
        want, have = SOLVER_BUDGETS[key], row[key]
        ok = have <= want
        met = met and ok
        parts.append(f"{have:.2f} {what}/step {'<=' if ok else '>'} {want}")
    return {"met": met, "text": f"{'met' if met else 'MISSED'}: {', '.join(parts)}"}


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
        not_here = dict(variant.count_skip).get(baseline)
        if not_here:
            rows += [
                {**base, "mode": mode, "status": f"skipped: {not_here}"}
                for mode in variant.count_modes
            ]
            continue
        triton_on_cpu = device.type == "cpu" and BASELINE_INFO[baseline].backend == "triton"
        stub = triton_on_cpu and variant.stub_ok
        # the interpreter has nothing to compile, and a real interpreted call of a training
        # step takes seconds: no warm-up there
        warmup = not (triton_on_cpu and not stub)
        if not warmup and not interpret and variant.slow_interpreted:
            rows += [{**base, "mode": mode, "status": _QUICK_SKIP} for mode in variant.count_modes]
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


def count_solvers(
    variant: Variant,
    device: torch.device,
    progress: Callable[[str], None] | None = None,
    interpret: bool = True,
) -> list[dict]:
    """The solver's own cost on ``variant.solve_problem``, torchdiffeq and timeaware side by side.

    Runs ``timeaware.solvers.cost.solve_cost`` for each solver of :data:`SOLVERS` on the same
    problem (timeaware on its Triton backend: the interpreter on a CPU), the parameters'
    gradients reset before each (else the adjoint's accumulation into them would be counted
    as the solver's). On a CPU with ``interpret`` False (``--quick``) a
    ``variant.slow_interpreted`` problem is not counted: its rows say so.

    Args:
        variant: a variant with a ``solve_problem`` (others give no rows).
        device: where the problem is built.
        progress: prints one line per row, if given.
        interpret: count what needs seconds of the Triton interpreter on a CPU.

    Returns:
        One row per (solve, solver), ``solve`` being ``"forward"`` or (adjoint) ``"backward"``,
        each solve's torchdiffeq row followed by its timeaware row: the variant's identity,
        ``shape`` (what was counted), ``status`` and, when ``ok``, ``nfe``, ``attempted``
        (steps), ``launches`` and ``launches_per_step`` (the solver's own), ``syncs``,
        ``syncs_per_step``, ``func_launches_per_call`` and ``count_s``; timeaware rows also
        ``calls``, ``masked``, ``nfe_match`` (the same NFE as torchdiffeq's same solve, None
        when that failed) and ``budget`` (:func:`solver_budget_verdict`).

    Raises:
        TypeError: ``variant`` is not a :class:`bench.workloads.Variant`, or ``device`` not a
            ``torch.device``.
    """
    if not isinstance(variant, Variant):
        raise TypeError(f"variant: expected a bench.workloads.Variant, got {type(variant)}")
    if not isinstance(device, torch.device):
        raise TypeError(f"device: expected a torch.device, got {device!r}")
    if variant.solve_problem is None:
        return []
    base = {"workload": variant.workload, "variant": variant.label, "shape": variant.shape}
    why = variant.unavailable() if variant.unavailable is not None else None
    if why:
        why = f"skipped: {why}"
    elif device.type == "cpu" and variant.slow_interpreted and not interpret:
        why = _QUICK_SKIP
    if why:
        return [{**base, "solver": s, "solve": "", "status": why} for s in SOLVERS]
    from timeaware.solvers.cost import solve_cost

    t0 = time.perf_counter()
    try:
        problem = variant.solve_problem(device)
    except Exception as e:  # noqa: BLE001 - a row that fails says why
        return [
            {**base, "solver": s, "solve": "", "status": f"failed to build: {_reason(e)}"}
            for s in SOLVERS
        ]
    base["shape"] = problem.shape
    parts = ("forward", "backward") if problem.adjoint else ("forward",)
    params = list(problem.func.parameters())
    rows: list[dict] = []
    for solver in SOLVERS:
        for p in params:
            p.grad = None
        t1 = time.perf_counter()
        try:
            res = solve_cost(
                solver,
                problem.func,
                problem.y0,
                problem.t,
                rtol=problem.rtol,
                atol=problem.atol,
                adjoint=problem.adjoint,
                backend="triton",
            )
            new = []
            for part in parts:
                r = {k: v for k, v in res[part].items() if k != "seconds"}
                new.append({**base, "solver": solver, "solve": part, "status": "ok", **r})
        except Exception as e:  # noqa: BLE001
            new = [
                {**base, "solver": solver, "solve": part, "status": f"failed: {_reason(e)}"}
                for part in parts
            ]
        for r in new:
            r["count_s"] = time.perf_counter() - t1
        rows += new
    for p in params:
        p.grad = None
    # side by side: each solve's torchdiffeq row, then its timeaware row
    rows.sort(key=lambda r: (parts.index(r["solve"]), SOLVERS.index(r["solver"])))
    theirs = {r["solve"]: r for r in rows if r["solver"] == "torchdiffeq"}
    for r in rows:
        if r["solver"] != "timeaware":
            continue
        other = theirs.get(r["solve"])
        both = r["status"] == "ok" and other is not None and other["status"] == "ok"
        r["nfe_match"] = (r["nfe"] == other["nfe"]) if both else None
        r["budget"] = solver_budget_verdict(r)
    if progress:
        for r in rows:
            if r["status"] == "ok":
                what = (
                    f"NFE {r['nfe']}, {r['launches_per_step']:.1f} launches/step, "
                    f"{r['syncs_per_step']:.2f} syncs/step"
                )
            else:
                what = r["status"]
            progress(f"  solver {variant.label:<22} {r['solve']:<8} {r['solver']:<12} {what}")
        progress(f"  solver rows of {variant.label}: {time.perf_counter() - t0:.1f} s")
    return rows


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:240]
