"""The Dormand-Prince 5(4) tableau (dopri5), as data.

The same numbers as torchdiffeq's ``_DORMAND_PRINCE_SHAMPINE_TABLEAU`` and ``DPS_C_MID``
(Hairer, Norsett and Wanner, *Solving ODEs I*, II.5; Shampine's dense-output mid-point), written
as the same float64 fractions so that they round to the same values in every dtype.

* ``ALPHA[i]``: time fraction of stage i + 2 (k2 ... k7).
* ``BETA[i]``: weights of k1 ... k_{i+1} in the input of stage i + 2 (``BETA[5]`` is the
  5th-order solution: the FSAL property, k7 is the derivative at the new state).
* ``C_SOL``: weights of the 5th-order solution (k1 ... k7).
* ``C_ERROR``: 5th-order minus 4th-order weights (the local error estimate).
* ``C_MID``: weights of y(t0 + dt / 2) for the quartic dense output.
"""

from __future__ import annotations

ORDER = 5

ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)

BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)

C_SOL = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)

C_ERROR = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)

C_MID = (
    6025192743 / 30085553152 / 2,
    0.0,
    51252292925 / 65400821598 / 2,
    -2691868925 / 45128329728 / 2,
    187940372067 / 1594534317056 / 2,
    -1776094331 / 19743644256 / 2,
    11237099 / 235043384 / 2,
)

# the FSAL shortcut torchdiffeq takes: the last stage input is the 5th-order solution
assert C_SOL[-1] == 0.0 and C_SOL[:-1] == BETA[-1]
