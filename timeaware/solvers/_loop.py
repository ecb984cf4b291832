"""The host loop: run attempts, check for the end once every k attempts, report failures.

The device encodes everything the host needs in one float64 (see ``kernels/dopri5.py``
``_poll_value``): ``-(8 * nfe + status)`` when the solve is over, else
``2 * (k_safe + 2^20 * k_est) + accept``. One ``.item()`` per check is the only host sync.

Choosing k, the attempts run before the next check, trades syncs against wasted work. An
attempt run after the end changes nothing and is not counted in NFE, but its six function calls
are still paid; a check drains the GPU queue. At the NODE sizes a wasted attempt costs far more
than a sync, so the default never wastes when it can know it: k_safe is a lower bound on the
attempts still needed (every accepted step can grow dt by at most ``ifactor``), so running
k_safe attempts wastes nothing. When dt has settled (it changed by at most 2x in the last
attempt), k_est, half the steps left at the current dt, is also allowed up to a cap that starts
at 1 and doubles after every check (to 32): a long solve is checked O(log steps) times and
wastes at most part of its last batch. The first check comes after one attempt. A short solve
(the NODE case, a few steps) is checked after about every attempt: still at most one sync per
step, and no wasted evaluations. ``options["check_every"]`` fixes k instead.
"""

from __future__ import annotations

from .._backend import BackendUnavailableError
from .stats import SolveCounts, SolverError

_CAP_MAX = 32
_K_BASE = 1 << 20
_REASONS = {1: "max_num_steps", 2: "underflow", 3: "non_finite"}


def run(stepper, check_every: int | None, counts: SolveCounts | None, max_num_steps: int) -> None:
    """Run ``stepper`` to the end of its solve.

    Raises:
        SolverError: max_num_steps exceeded, underflow in dt, non-finite state.
        ValueError: t is not strictly increasing or decreasing (found on the device).
    """
    stepper.init()
    exact = stepper.exact_graph
    # one output time: nothing to integrate after the initial step selection (torchdiffeq
    # still makes its 2 evaluations); check once, attempt nothing
    k, cap, attempts, polls = (0 if stepper.T == 1 else 1), 1, 0, 0
    while True:
        for _ in range(k):
            stepper.attempt()
            attempts += 1
        v = stepper.poll()
        polls += 1
        if v < 0:
            code = int(-v) % 8
            nfe = int(-v) // 8
            break
        if exact:
            stepper.settle(int(v) % 2 == 1)
        if check_every is not None:
            k = check_every
        else:
            cap = min(2 * cap, _CAP_MAX)
            code = int(v) // 2
            k_safe, k_est = code % _K_BASE, code // _K_BASE
            k = max(1, k_safe, min(cap, k_est))
    if exact and code == 0 and attempts:
        stepper.settle(True)  # the attempt that finished the solve was accepted
    attempted = (nfe - stepper.nfe0) // 6
    if counts is not None:
        counts.solves += 1
        counts.nfe += nfe
        counts.attempted += attempted
        counts.calls += stepper.evals
        counts.masked += attempts - attempted
        counts.polls += polls
        counts._accepted.append(stepper.accepted_tensor())
    if code == 0:
        return
    if code == 4:
        raise ValueError("t: must be strictly increasing or decreasing")
    info = stepper.failure_info()
    if code == 1:
        msg = f"max_num_steps exceeded ({info['nsteps']}>={max_num_steps})"
    elif code == 2:
        msg = f"underflow in dt {info['dt']}"
    elif code == 3:
        msg = "non-finite values in state `y`"
    else:  # pragma: no cover - the kernels write no other code
        raise BackendUnavailableError(f"solver returned an unknown status {code}")
    raise SolverError(f"{msg} (at t={info['t']:.6g})", _REASONS[code], nfe, info["t"])
