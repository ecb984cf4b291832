"""What a solve cost: exact NFE, steps, function calls and host syncs (read by ODEBlock and the
bench)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["SolveCounts", "SolverError", "SolverStats"]


@dataclass
class SolveCounts:
    """Counters summed over one or more solves.

    Attributes:
        solves: number of solves.
        nfe: function evaluations of the algorithm (dopri5: 2 + 6 x attempted steps per solve,
            1 + 6 x attempted with ``first_step``); exact, counted on the device. The adjoint's
            backward adds one evaluation per output time when ``t`` requires grad.
        attempted: attempted steps (accepted + rejected).
        calls: calls of the function actually made, including the masked attempts run after
            the end of a solve (those change nothing and are not in ``nfe``).
        masked: attempts run after the end of a solve (each made 6 calls).
        polls: host syncs made by the solver loop (one per completion check).
    """

    solves: int = 0
    nfe: int = 0
    attempted: int = 0
    calls: int = 0
    masked: int = 0
    polls: int = 0
    _accepted: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def accepted(self) -> int:
        """Accepted steps (read from the device: one host sync per solve, on access only)."""
        return int(sum(int(a.item()) for a in self._accepted))

    def add(self, other: SolveCounts) -> None:
        """Add ``other``'s counters to these."""
        if not isinstance(other, SolveCounts):
            raise TypeError(f"other: got {type(other).__name__}, expected a SolveCounts")
        self.solves += other.solves
        self.nfe += other.nfe
        self.attempted += other.attempted
        self.calls += other.calls
        self.masked += other.masked
        self.polls += other.polls
        self._accepted.extend(other._accepted)


@dataclass
class SolverStats:
    """Pass as ``stats=`` to :func:`timeaware.odeint` / :func:`timeaware.odeint_adjoint`; the
    solver adds to it.

    Attributes:
        forward: the solve of ``odeint`` (or the forward solve of ``odeint_adjoint``).
        backward: the adjoint's backward solves, filled during ``backward()``.
    """

    forward: SolveCounts = field(default_factory=SolveCounts)
    backward: SolveCounts = field(default_factory=SolveCounts)


class SolverError(RuntimeError, AssertionError):
    """A dopri5 solve failed: ``max_num_steps exceeded``, ``underflow in dt`` or
    ``non-finite values in state `y```.

    The message starts with torchdiffeq's own wording for the same failure, and the class is
    both a RuntimeError and an AssertionError (what torchdiffeq raises), so code written for
    torchdiffeq's failures keeps catching these.

    Attributes:
        reason: ``"max_num_steps"``, ``"underflow"`` or ``"non_finite"``.
        nfe: exact function evaluations of the failed solve before it stopped.
        t: the time the solve had reached.
    """

    def __init__(self, message: str, reason: str, nfe: int, t: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.nfe = nfe
        self.t = t
