"""ODE solvers: torchdiffeq's dopri5 with fused stage kernels and the step control on the device.

* :func:`odeint`, :func:`odeint_adjoint`: torchdiffeq's signatures and semantics for dopri5 (the
  same steps, NFE and solution), with ``backend=`` and ``stats=`` added.
* :class:`SolverStats`: exact NFE, steps, function calls and host syncs of a solve.
* :class:`SolverError`: the solve failed (max_num_steps, underflow in dt, non-finite state).

Layering (DESIGN section 3): ``kernels/dopri5.py`` <- ``solvers`` <- ``models``.
"""

from .adjoint import odeint_adjoint
from .odeint import odeint
from .stats import SolveCounts, SolverError, SolverStats

__all__ = ["SolveCounts", "SolverError", "SolverStats", "odeint", "odeint_adjoint"]
