"""dopri5 stage arithmetic and step control: Triton kernels and their launchers.

One attempted step of torchdiffeq's dopri5 (``rk_common._runge_kutta_step`` and
``_adaptive_step``) is 8 launches beside the six function evaluations::

    begin    step-size fixes and failure checks, stage times, dt-scaled tableau, input of k2
    stage x5 input of k3 ... k6, then the 5th-order solution y1 (= input of k7, FSAL)
    error    per-chunk partial sums of (err / tol)^2, err = dt * sum(c_error * k)
    update   RMS norm, accept/reject, next dt, masked update of (t, y, f), dense output

and the initial step selection (``misc._select_initial_step``) is 4 more (``init``, ``probe``,
``probe_diff``, ``init_finish``) around its two evaluations. Every decision (accept, the next dt,
the failure checks, the end of the solve) is taken on the device and written to a float64
``State`` buffer; nothing here reads a value back to the host, so a whole attempt can be
captured in a CUDA graph and attempts after the end of the solve change nothing.

Arithmetic follows torchdiffeq operation by operation: times in float64, the tableau, the
stage times and ``beta * dt`` in the state's dtype, ``atol + rtol * max(|y0|, |y1|)``, the error
ratio as the RMS over all elements (or the max over segments of per-segment RMS, the adjoint's
default norm), safety 0.9, ifactor 10, dfactor 0.2 (from ``Params``), the 4th-order dense
output through the mid-point. Sums over k run in stage order (torch's ``sum(dim=-1)`` may
associate differently, so results agree to rounding, not bit for bit). ``pow`` is computed as
``exp(e * log(x))`` in float64 (the interpreter has no ``pow``). Decreasing time is integrated
in the flipped variable ``tau = sign * t``: the sign is folded into the dt-scaled coefficients,
which is exact, so the raw function values are used unchanged.

Work is split into chunks (``Chunks``: start offsets) that never straddle a segment of the
state; each program runs a range of chunks (``Progs``: one chunk per program on a GPU, all of
them in one program under the interpreter). Reductions write one partial per chunk, and the
kernels that need the total sum the partials of each segment themselves (``SegLo``/``SegHi``:
chunk ranges, ``SegN``: element counts), so no atomics are used and the result is
deterministic. Scalars are written by program 0 only, and no kernel reads a scalar that the
same kernel writes (``begin`` snapshots State into ScT; ``update`` reads ScT, writes State), so
programs never race.

Supported state dtypes: float32 and float64. Inputs are 1-D contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "Dopri5Plan",
    "Dopri5Tableau",
    "dp5_begin",
    "dp5_error",
    "dp5_init",
    "dp5_init_finish",
    "dp5_probe",
    "dp5_probe_diff",
    "dp5_stage",
    "dp5_update",
    "make_params",
    "make_plan",
    "new_scratch",
]

# ----------------------------------------------------------------------------------------------
# buffer layouts (indices shared by the kernels and the host; ``int(X)`` on the host)
# ----------------------------------------------------------------------------------------------

# State, float64 (16,): the solver state between attempts
ST_T0 = tl.constexpr(0)  # start of the next step (tau)
ST_DT = tl.constexpr(1)  # size of the next step
ST_NSTEPS = tl.constexpr(2)  # attempts since an output time was last passed (max_num_steps)
ST_OUT = tl.constexpr(3)  # index of the next output time not yet written
ST_NFE = tl.constexpr(4)  # function evaluations of active attempts (exact NFE)
ST_ATT = tl.constexpr(5)  # attempted steps
ST_ACC = tl.constexpr(6)  # accepted steps
ST_STATUS = tl.constexpr(7)  # 0 ok, 1 max_num_steps, 2 underflow in dt, 3 non-finite y, 4 bad t
ST_DONE = tl.constexpr(8)  # 1 when every output time is written
ST_YBAD = tl.constexpr(9)  # 1 when the state y holds a non-finite value
ST_POLL = tl.constexpr(10)  # what the host reads: see poll_value()
ST_DTFAIL = tl.constexpr(11)  # dt of the failing attempt (for the message)
ST_SIGN = tl.constexpr(12)  # +1 increasing t, -1 decreasing (set once, by dp5_init)
ST_LEN = 16

# Scratch times, float64 (32,): a snapshot of State taken by `begin`, plus the attempt's times
X_ACTIVE = tl.constexpr(16)
X_FAIL = tl.constexpr(17)
X_T0 = tl.constexpr(18)
X_DT = tl.constexpr(19)
X_T1 = tl.constexpr(20)
X_RUN = tl.constexpr(21)
X_H0 = tl.constexpr(22)  # initial step selection: h0 and d1
X_D1 = tl.constexpr(23)
SCT_LEN = 32

# Scratch coefficients, state dtype (48,)
C_TS = tl.constexpr(0)  # 6 stage times as the function sees them (sign applied, perturbed)
C_A = tl.constexpr(8)  # 21 = sign * beta * dt, row r (1..6) at C_A + r * (r - 1) / 2
C_E = tl.constexpr(29)  # 7 = sign * dt * c_error
C_M = tl.constexpr(36)  # 7 = sign * dt * c_mid
C_DTS = tl.constexpr(43)  # sign * dt
C_PT = tl.constexpr(44)  # time of the initial-step probe evaluation, as the function sees it
C_HS = tl.constexpr(45)  # sign * h0
SCC_LEN = 48

# Params, float64 (64,)
P_RTOL = tl.constexpr(0)
P_ATOL = tl.constexpr(1)
P_SAFETY = tl.constexpr(2)
P_IFACTOR = tl.constexpr(3)
P_DFACTOR = tl.constexpr(4)
P_MIN = tl.constexpr(5)
P_MAX = tl.constexpr(6)
P_MAXN = tl.constexpr(7)
P_FIRST = tl.constexpr(8)
P_EXP = tl.constexpr(9)  # 1 / order (step-size controller)
P_K001 = tl.constexpr(10)  # constants of _select_initial_step: 0.01, 1e-5, 1e-6, 1e-15, 100, 1e-3
P_K1EM5 = tl.constexpr(11)
P_K1EM6 = tl.constexpr(12)
P_K1EM15 = tl.constexpr(13)
P_K100 = tl.constexpr(14)
P_K1EM3 = tl.constexpr(15)
P_HEXP = tl.constexpr(16)  # 1 / order (initial step)
P_INF = tl.constexpr(17)  # +inf
P_ALPHA = tl.constexpr(20)  # 6
P_BETA = tl.constexpr(26)  # 21
P_CE = tl.constexpr(47)  # 7
P_CM = tl.constexpr(54)  # 7
PARAMS_LEN = 64

STATUS_MESSAGES = {
    1: "max_num_steps exceeded",
    2: "underflow in dt",
    3: "non-finite values in state `y`",
    4: "t must be strictly increasing or decreasing",
}

_LAUNCH = {"enable_fp_fusion": False}  # no FMA contraction: the same roundings as torch


# ----------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _div(a, b):
    """a / b, correctly rounded (fp32 '/' is approximate on NVIDIA GPUs)."""
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def _sqrt(a):
    """Correctly rounded square root."""
    if a.dtype == tl.float32:
        return tl.sqrt_rn(a)
    else:
        return tl.sqrt(a)


@triton.jit
def _isfinite(x):
    """Not NaN and not +-inf (exponent bits not all ones)."""
    if x.dtype == tl.float64:
        e = (x.to(tl.int64, bitcast=True) >> 52) & 0x7FF
        return e != 0x7FF
    else:
        e = (x.to(tl.int32, bitcast=True) >> 23) & 0xFF
        return e != 0xFF


@triton.jit
def _max_nan(a, b):
    """torch.maximum: NaN if either is NaN."""
    return tl.where((a != a) | (b != b), a + b, tl.maximum(a, b))


@triton.jit
def _min_nan(a, b):
    """torch.minimum: NaN if either is NaN."""
    return tl.where((a != a) | (b != b), a + b, tl.minimum(a, b))


@triton.jit
def _pow(x, e):
    """x ** e as exp(e * log(x)) in float64, rounded to x's dtype (0 for x == 0, NaN for x < 0
    or NaN, like torch.pow with 0 < e < 1)."""
    x64 = x.to(tl.float64)
    r = tl.exp(e.to(tl.float64) * tl.log(tl.where(x64 > 0, x64, 1.0)))
    r = tl.where(x64 > 0, r, tl.where(x64 == 0, 0.0, tl.sqrt(x64)))
    return r.to(x.dtype)


@triton.jit
def _prev_float(x):
    """torch.nextafter(x, x - 1): the float just below x (x itself when x - 1 == x)."""
    target = x - 1
    if x.dtype == tl.float64:
        b = x.to(tl.int64, bitcast=True)
        down = tl.where(x > 0, b - 1, b + 1).to(tl.float64, bitcast=True)
        tiny = tl.full((), 1, tl.int64).to(tl.float64, bitcast=True)
    else:
        b = x.to(tl.int32, bitcast=True)
        down = tl.where(x > 0, b - 1, b + 1).to(tl.float32, bitcast=True)
        tiny = tl.full((), 1, tl.int32).to(tl.float32, bitcast=True)
    down = tl.where(x == 0, -tiny, down)
    return tl.where(target < x, down, x)


@triton.jit
def _seg_mean_sq(Part, base, SegLo, SegHi, SegN, S, PBLOCK: tl.constexpr):
    """Max over the norm's segments of (sum of the segment's partials) / (its element count):
    the square of the (segmented) RMS norm, in the partials' dtype."""
    best = tl.full((), 0, Part.dtype.element_ty)
    for s in range(S):
        lo = tl.load(SegLo + s)
        hi = tl.load(SegHi + s)
        acc = tl.full((), 0, Part.dtype.element_ty)
        for c0 in range(lo, hi, PBLOCK):
            offs = c0 + tl.arange(0, PBLOCK)
            acc += tl.sum(tl.load(Part + base + offs, mask=offs < hi, other=0.0), axis=0)
        best = _max_nan(best, _div(acc, tl.load(SegN + s).to(acc.dtype)))
    return best


@triton.jit
def _sum_part(Part, base, P, PBLOCK: tl.constexpr):
    """Sum of Part[base : base + P]."""
    acc = tl.full((), 0, Part.dtype.element_ty)
    for c0 in range(0, P, PBLOCK):
        offs = c0 + tl.arange(0, PBLOCK)
        acc += tl.sum(tl.load(Part + base + offs, mask=offs < P, other=0.0), axis=0)
    return acc


@triton.jit
def _poll_value(done, status, nfe, rem, dt, growth, accept, ifactor):
    """What the host reads once per check (one float64).

    Over (done or failed): -(8 * nfe + status). Running: 2 * (k_safe + 2^20 * k_est) + accept,
    where k_safe = ceil(log(1 + (ifactor - 1) * rem / dt) / log(ifactor)) is a lower bound on
    the attempts still needed (each accepted step can grow dt by ifactor at most), so running
    k_safe attempts before the next check wastes none; and k_est = floor(rem / dt / 2), the
    attempts left at the current dt, halved, when dt has settled (0.5 <= growth <= 2), else 0.
    """
    fin = (done != 0) | (status != 0)
    q = rem / dt
    q = tl.where(q > 0, q, 0.0)  # NaN -> 0
    lim = 1048575.0
    ks = tl.log(1.0 + (ifactor - 1.0) * q) / tl.log(ifactor)
    ks = tl.where(ifactor > 1.0001, ks, q)
    ks = tl.floor(ks - 1e-9) + 1.0  # ceil, rounding exact integers down
    ks = tl.where(ks == ks, tl.minimum(tl.maximum(ks, 1.0), lim), 1.0)
    ke = tl.floor(q * 0.5)
    settled = (growth >= 0.5) & (growth <= 2.0)
    ke = tl.where((ke == ke) & settled, tl.minimum(tl.maximum(ke, 0.0), lim), 0.0)
    return tl.where(fin, -(nfe * 8 + status), 2 * (ks + 1048576.0 * ke) + accept)


# ----------------------------------------------------------------------------------------------
# initial step selection (misc._select_initial_step)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dp5_init_kernel(
    Y0,  # (n,) initial state
    F0,  # (n,) raw derivative at (t[0], y0)
    Y,  # (n,) out: the solver's state, = y0
    F,  # (n,) out: the FSAL derivative, = f0
    Out,  # (T, n) out: row 0 = y0
    Times,  # (T,) float64 requested times (as given)
    Tau,  # (T,) float64 out: sign * Times, increasing
    State,  # (16,) float64 out: ST_SIGN, ST_STATUS (4 when t is not strictly monotonic)
    Part,  # (4 * P,) out: [0, P) sum (y0/scale)^2, [P, 2P) sum (f0/scale)^2, [2P, 3P) #nonfinite y0
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    P,
    T,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    rtol = tl.load(Params + P_RTOL).to(YT)
    atol = tl.load(Params + P_ATOL).to(YT)
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        s0 = tl.zeros([BLOCK], YT)
        s1 = tl.zeros([BLOCK], YT)
        nb = tl.zeros([BLOCK], YT)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            y0 = tl.load(Y0 + idx, mask=m, other=0.0)
            f0 = tl.load(F0 + idx, mask=m, other=0.0)
            tl.store(Y + idx, y0, mask=m)
            tl.store(F + idx, f0, mask=m)
            tl.store(Out + idx, y0, mask=m)
            scale = atol + tl.abs(y0) * rtol
            a = _div(y0, scale)
            b = _div(f0, scale)
            s0 += tl.where(m, a * a, 0.0)
            s1 += tl.where(m, b * b, 0.0)
            nb += tl.where(m & (_isfinite(y0) == 0), 1.0, 0.0)
        tl.store(Part + ch, tl.sum(s0, axis=0))
        tl.store(Part + P + ch, tl.sum(s1, axis=0))
        tl.store(Part + 2 * P + ch, tl.sum(nb, axis=0))
    if pid == 0:
        ta = tl.load(Times)
        tb = tl.load(Times + 1, mask=T > 1, other=0.0)
        sign = tl.where((T > 1) & (tb < ta), -1.0, 1.0).to(tl.float64)
        prev = sign * ta
        tl.store(Tau, prev)
        ok = prev == prev
        for j in range(1, T):
            tj = sign * tl.load(Times + j)
            tl.store(Tau + j, tj)
            ok = ok & (tj > prev)
            prev = tj
        tl.store(State + ST_SIGN, sign)
        tl.store(State + ST_STATUS, tl.where(ok, 0.0, 4.0).to(tl.float64))


@triton.jit
def _dp5_probe_kernel(
    Y,  # (n,) y0
    F,  # (n,) raw f0
    Yin,  # (n,) out: y0 + h0 * f0, the probe input
    Part,  # (4 * P,) partials from _dp5_init_kernel
    State,  # (16,) float64: ST_SIGN
    ScT,  # (32,) float64 out: X_H0, X_D1
    ScC,  # (48,) out: C_PT (probe time), C_HS
    Tau,  # (T,) float64
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    SegLo,  # (S,) int64 first chunk of each normed segment
    SegHi,  # (S,) int64 end chunk of each normed segment
    SegN,  # (S,) float64 element count of each normed segment
    S,
    P,
    BLOCK: tl.constexpr,
    PBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    d0 = _sqrt(_seg_mean_sq(Part, 0, SegLo, SegHi, SegN, S, PBLOCK))
    d1 = _sqrt(_seg_mean_sq(Part, P, SegLo, SegHi, SegN, S, PBLOCK))
    small = (d0 < tl.load(Params + P_K1EM5).to(YT)) | (d1 < tl.load(Params + P_K1EM5).to(YT))
    one = tl.full((), 1, YT)
    h0 = _div(tl.load(Params + P_K001).to(YT) * d0, tl.where(small, one, d1))
    h0 = tl.abs(tl.where(small, tl.load(Params + P_K1EM6).to(YT), h0))
    sign = tl.load(State + ST_SIGN).to(YT)
    hs = sign * h0
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            y = tl.load(Y + idx, mask=m, other=0.0)
            f = tl.load(F + idx, mask=m, other=0.0)
            tl.store(Yin + idx, y + hs * f, mask=m)
    if pid == 0:
        tl.store(ScT + X_H0, h0.to(tl.float64))
        tl.store(ScT + X_D1, d1.to(tl.float64))
        tl.store(ScC + C_HS, hs)
        tl.store(ScC + C_PT, sign * (tl.load(Tau) + h0.to(tl.float64)).to(YT))


@triton.jit
def _dp5_probe_diff_kernel(
    Y,  # (n,) y0
    F,  # (n,) raw f0
    F1,  # (n,) raw derivative at the probe
    Part,  # (4 * P,) out: [3P, 4P) sum ((f1 - f0) / scale)^2
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    P,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    rtol = tl.load(Params + P_RTOL).to(YT)
    atol = tl.load(Params + P_ATOL).to(YT)
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        s2 = tl.zeros([BLOCK], YT)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            y = tl.load(Y + idx, mask=m, other=0.0)
            f0 = tl.load(F + idx, mask=m, other=0.0)
            f1 = tl.load(F1 + idx, mask=m, other=0.0)
            q = _div(f1 - f0, atol + tl.abs(y) * rtol)
            s2 += tl.where(m, q * q, 0.0)
        tl.store(Part + 3 * P + ch, tl.sum(s2, axis=0))


@triton.jit
def _dp5_init_finish_kernel(
    Part,  # (4 * P,) partials of the three init kernels
    State,  # (16,) float64 in: ST_SIGN, ST_STATUS; out: the initial state
    ScT,  # (32,) float64: X_H0, X_D1
    Tau,  # (T,) float64
    Params,  # (64,) float64
    SegLo,
    SegHi,
    SegN,
    S,
    P,
    T,
    HAS_FIRST: tl.constexpr,  # options["first_step"] given: no probe (NFE 1)
    PBLOCK: tl.constexpr,
):
    YT: tl.constexpr = Part.dtype.element_ty
    if HAS_FIRST:
        first = tl.load(Params + P_FIRST)
        nfe = 1.0
    else:
        h0 = tl.load(ScT + X_H0).to(YT)
        d1 = tl.load(ScT + X_D1).to(YT)
        d2 = tl.abs(_div(_sqrt(_seg_mean_sq(Part, 3 * P, SegLo, SegHi, SegN, S, PBLOCK)), h0))
        k15 = tl.load(Params + P_K1EM15).to(YT)
        tiny = (d1 <= k15) & (d2 <= k15)
        h1a = _max_nan(tl.load(Params + P_K1EM6).to(YT), h0 * tl.load(Params + P_K1EM3).to(YT))
        dmax = tl.where(d2 > d1, d2, d1)  # Python's max(d1, d2)
        one = tl.full((), 1, YT)
        q = _div(tl.load(Params + P_K001).to(YT), tl.where(tiny, one, dmax))
        h1b = _pow(q, tl.load(Params + P_HEXP).to(YT))
        h1 = tl.abs(tl.where(tiny, h1a, h1b))
        first = _min_nan(tl.load(Params + P_K100).to(YT) * h0, h1).to(tl.float64)
        nfe = 2.0
    nbad = _sum_part(Part, 2 * P, P, PBLOCK)
    status = tl.load(State + ST_STATUS)
    done = tl.where(T > 1, 0.0, 1.0).to(tl.float64)
    tl.store(State + ST_T0, tl.load(Tau))
    tl.store(State + ST_DT, first)
    tl.store(State + ST_NSTEPS, 0.0)
    tl.store(State + ST_OUT, 1.0)
    tl.store(State + ST_NFE, nfe)
    tl.store(State + ST_ATT, 0.0)
    tl.store(State + ST_ACC, 0.0)
    tl.store(State + ST_DONE, done)
    tl.store(State + ST_YBAD, tl.where(nbad > 0, 1.0, 0.0).to(tl.float64))
    tl.store(State + ST_DTFAIL, 0.0)
    rem = tl.load(Tau + T - 1) - tl.load(Tau)
    ifactor = tl.load(Params + P_IFACTOR)
    tl.store(State + ST_POLL, _poll_value(done, status, nfe, rem, first, 0.0, 0.0, ifactor))


# ----------------------------------------------------------------------------------------------
# one attempted step
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dp5_begin_kernel(
    Y,  # (n,) y0 of the attempt
    F,  # (n,) raw f0 (k1, FSAL)
    Yin,  # (n,) out: input of k2
    State,  # (16,) float64 (read only)
    ScT,  # (32,) float64 out: snapshot of State and the attempt's times
    ScC,  # (48,) out: stage times and dt-scaled tableau
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    # the checks and fixes at the start of torchdiffeq's _advance / _adaptive_step
    t0 = tl.load(State + ST_T0)
    dt = tl.load(State + ST_DT)
    min_step = tl.load(Params + P_MIN)
    max_step = tl.load(Params + P_MAX)
    run = (tl.load(State + ST_DONE) == 0) & (tl.load(State + ST_STATUS) == 0)
    fail = tl.where(tl.load(State + ST_NSTEPS) >= tl.load(Params + P_MAXN), 1.0, 0.0)
    finite = (dt == dt) & (tl.abs(dt) < tl.load(Params + P_INF))
    dt = tl.where(finite, dt, min_step)  # not finite -> min_step
    dt = tl.where(dt == dt, tl.minimum(tl.maximum(dt, min_step), max_step), dt)  # clamp
    t1 = t0 + dt
    fail = tl.where((fail == 0) & ((t1 > t0) == 0), 2.0, fail)  # underflow in dt (or NaN)
    fail = tl.where((fail == 0) & (tl.load(State + ST_YBAD) != 0), 3.0, fail)
    fail = tl.where(run, fail, 0.0)
    active = run & (fail == 0)
    sign = tl.load(State + ST_SIGN).to(YT)
    dty = dt.to(YT)
    c21 = sign * (tl.load(Params + P_BETA).to(YT) * dty)
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            y = tl.load(Y + idx, mask=m, other=0.0)
            f = tl.load(F + idx, mask=m, other=0.0)
            acc = tl.zeros([BLOCK], YT) + f * c21
            tl.store(Yin + idx, y + acc, mask=m)
    if pid == 0:
        i16 = tl.arange(0, 16)
        tl.store(ScT + i16, tl.load(State + i16))
        tl.store(ScT + X_ACTIVE, tl.where(active, 1.0, 0.0).to(tl.float64))
        tl.store(ScT + X_RUN, tl.where(run, 1.0, 0.0).to(tl.float64))
        tl.store(ScT + X_FAIL, fail.to(tl.float64))
        tl.store(ScT + X_T0, t0)
        tl.store(ScT + X_DT, dt)
        tl.store(ScT + X_T1, t1)
        # stage times: t0 + alpha * dt, or just below t1 for alpha == 1 (Perturb.PREV)
        i8 = tl.arange(0, 8)
        al = tl.load(Params + P_ALPHA + i8, mask=i8 < 6, other=0.0).to(YT)
        t_end = _prev_float(t1.to(YT))
        ti = tl.where(al == 1, t_end, t0.to(YT) + al * dty)
        tl.store(ScC + C_TS + i8, sign * ti, mask=i8 < 6)
        i32 = tl.arange(0, 32)
        b = tl.load(Params + P_BETA + i32, mask=i32 < 21, other=0.0).to(YT)
        tl.store(ScC + C_A + i32, sign * (b * dty), mask=i32 < 21)
        ce = tl.load(Params + P_CE + i8, mask=i8 < 7, other=0.0).to(YT)
        tl.store(ScC + C_E + i8, sign * (dty * ce), mask=i8 < 7)
        cm = tl.load(Params + P_CM + i8, mask=i8 < 7, other=0.0).to(YT)
        tl.store(ScC + C_M + i8, sign * (dty * cm), mask=i8 < 7)
        tl.store(ScC + C_DTS, sign * dty)


@triton.jit
def _dp5_stage_kernel(
    Y,  # (n,) y0
    K1,  # (n,) raw k1 ... k6 (those beyond ROW are not read)
    K2,
    K3,
    K4,
    K5,
    K6,
    Yout,  # (n,) out: y0 + sum_j (sign * beta[ROW-1][j] * dt) * k_{j+1}
    ScC,  # (48,) dt-scaled tableau
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    ROW: tl.constexpr,  # tableau row 1..6 (input of k_{ROW+1}; row 6 is the solution y1)
    USE: tl.constexpr,  # bit j: the row's weight of k_{j+1} is nonzero
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    c = C_A + ROW * (ROW - 1) // 2
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            acc = tl.zeros([BLOCK], YT)
            if (USE >> 0) & 1:
                acc += tl.load(K1 + idx, mask=m, other=0.0) * tl.load(ScC + c + 0)
            if (USE >> 1) & 1:
                acc += tl.load(K2 + idx, mask=m, other=0.0) * tl.load(ScC + c + 1)
            if (USE >> 2) & 1:
                acc += tl.load(K3 + idx, mask=m, other=0.0) * tl.load(ScC + c + 2)
            if (USE >> 3) & 1:
                acc += tl.load(K4 + idx, mask=m, other=0.0) * tl.load(ScC + c + 3)
            if (USE >> 4) & 1:
                acc += tl.load(K5 + idx, mask=m, other=0.0) * tl.load(ScC + c + 4)
            if (USE >> 5) & 1:
                acc += tl.load(K6 + idx, mask=m, other=0.0) * tl.load(ScC + c + 5)
            y = tl.load(Y + idx, mask=m, other=0.0)
            tl.store(Yout + idx, y + acc, mask=m)


@triton.jit
def _dp5_error_kernel(
    Y,  # (n,) y0
    Y1,  # (n,) 5th-order solution
    K1,  # (n,) raw k1 ... k7
    K2,
    K3,
    K4,
    K5,
    K6,
    K7,
    Part,  # (4 * P,) out: [0, P) sum (err / tol)^2, [P, 2P) number of non-finite y1
    ScC,  # (48,) dt-scaled tableau
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    P,
    USE: tl.constexpr,  # bit j: c_error[j] != 0
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    rtol = tl.load(Params + P_RTOL).to(YT)
    atol = tl.load(Params + P_ATOL).to(YT)
    for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
        start = tl.load(Chunks + ch)
        end = tl.load(Chunks + ch + 1)
        sq = tl.zeros([BLOCK], YT)
        nb = tl.zeros([BLOCK], YT)
        for off in range(start, end, BLOCK):
            idx = off + tl.arange(0, BLOCK)
            m = idx < end
            err = tl.zeros([BLOCK], YT)
            if (USE >> 0) & 1:
                err += tl.load(K1 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 0)
            if (USE >> 1) & 1:
                err += tl.load(K2 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 1)
            if (USE >> 2) & 1:
                err += tl.load(K3 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 2)
            if (USE >> 3) & 1:
                err += tl.load(K4 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 3)
            if (USE >> 4) & 1:
                err += tl.load(K5 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 4)
            if (USE >> 5) & 1:
                err += tl.load(K6 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 5)
            if (USE >> 6) & 1:
                err += tl.load(K7 + idx, mask=m, other=0.0) * tl.load(ScC + C_E + 6)
            y0 = tl.load(Y + idx, mask=m, other=0.0)
            y1 = tl.load(Y1 + idx, mask=m, other=0.0)
            tol = atol + rtol * _max_nan(tl.abs(y0), tl.abs(y1))
            r = _div(err, tol)
            sq += tl.where(m, r * r, 0.0)
            nb += tl.where(m & (_isfinite(y1) == 0), 1.0, 0.0)
        tl.store(Part + ch, tl.sum(sq, axis=0))
        tl.store(Part + P + ch, tl.sum(nb, axis=0))


@triton.jit
def _dp5_update_kernel(
    Y,  # (n,) in: y0; out: y1 if accepted
    F,  # (n,) in: raw k1; out: raw k7 if accepted (FSAL)
    Y1,  # (n,) 5th-order solution
    K2,  # (n,) raw k2 ... k7
    K3,
    K4,
    K5,
    K6,
    K7,
    Out,  # (T, n) out: dense output at every requested time inside the accepted step
    Tau,  # (T,) float64 requested times, increasing
    Part,  # (4 * P,) partials from _dp5_error_kernel
    State,  # (16,) float64 out (program 0)
    ScT,  # (32,) float64 snapshot and times from _dp5_begin_kernel
    ScC,  # (48,) dt-scaled tableau
    Params,  # (64,) float64
    Chunks,  # (P + 1,) int64 chunk starts
    Progs,  # (G + 1,) int64 first chunk of each program
    SegLo,
    SegHi,
    SegN,
    S,
    P,
    T,
    n,
    USE_M: tl.constexpr,  # bit j: c_mid[j] != 0
    BLOCK: tl.constexpr,
    PBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    YT: tl.constexpr = Y.dtype.element_ty
    active = tl.load(ScT + X_ACTIVE) != 0
    t0 = tl.load(ScT + X_T0)
    dt = tl.load(ScT + X_DT)
    t1 = tl.load(ScT + X_T1)
    ratio = _sqrt(_seg_mean_sq(Part, 0, SegLo, SegHi, SegN, S, PBLOCK))
    accept = ratio <= 1
    accept = tl.where(dt > tl.load(Params + P_MAX), False, accept)
    accept = tl.where(dt <= tl.load(Params + P_MIN), True, accept)
    accept = accept & active
    out0 = tl.load(ScT + ST_OUT).to(tl.int64)
    if accept:
        dts = tl.load(ScC + C_DTS)
        den = t1 - t0
        for ch in range(tl.load(Progs + pid), tl.load(Progs + pid + 1)):
            start = tl.load(Chunks + ch)
            end = tl.load(Chunks + ch + 1)
            for off in range(start, end, BLOCK):
                idx = off + tl.arange(0, BLOCK)
                m = idx < end
                y0 = tl.load(Y + idx, mask=m, other=0.0)
                y1 = tl.load(Y1 + idx, mask=m, other=0.0)
                f0 = tl.load(F + idx, mask=m, other=0.0)
                f1 = tl.load(K7 + idx, mask=m, other=0.0)
                acc = tl.zeros([BLOCK], YT)
                if (USE_M >> 0) & 1:
                    acc += f0 * tl.load(ScC + C_M + 0)
                if (USE_M >> 1) & 1:
                    acc += tl.load(K2 + idx, mask=m, other=0.0) * tl.load(ScC + C_M + 1)
                if (USE_M >> 2) & 1:
                    acc += tl.load(K3 + idx, mask=m, other=0.0) * tl.load(ScC + C_M + 2)
                if (USE_M >> 3) & 1:
                    acc += tl.load(K4 + idx, mask=m, other=0.0) * tl.load(ScC + C_M + 3)
                if (USE_M >> 4) & 1:
                    acc += tl.load(K5 + idx, mask=m, other=0.0) * tl.load(ScC + C_M + 4)
                if (USE_M >> 5) & 1:
                    acc += tl.load(K6 + idx, mask=m, other=0.0) * tl.load(ScC + C_M + 5)
                if (USE_M >> 6) & 1:
                    acc += f1 * tl.load(ScC + C_M + 6)
                ymid = y0 + acc
                # interp._interp_fit, operation for operation (dts = sign * dt: exact)
                ca = (2 * dts) * (f1 - f0) - 8 * (y1 + y0) + 16 * ymid
                cb = dts * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * ymid
                cc = dts * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * ymid
                cd = dts * f0
                tl.store(Y + idx, y1, mask=m)
                tl.store(F + idx, f1, mask=m)
                j = out0
                tj = tl.load(Tau + tl.minimum(j, T - 1))
                while (j < T) & (tj <= t1):
                    # interp._interp_evaluate
                    x = ((tj - t0) / den).to(YT)
                    tot = y0 + x * cd
                    xp = x * x
                    tot = tot + xp * cc
                    xp = xp * x
                    tot = tot + xp * cb
                    xp = xp * x
                    tot = tot + xp * ca
                    tl.store(Out + j * n + idx, tot, mask=m)
                    j += 1
                    tj = tl.load(Tau + tl.minimum(j, T - 1))
    if pid == 0:
        cnt = out0 * 0
        if accept:
            j = out0
            tj = tl.load(Tau + tl.minimum(j, T - 1))
            while (j < T) & (tj <= t1):
                j += 1
                tj = tl.load(Tau + tl.minimum(j, T - 1))
            cnt = j - out0
        # misc._optimal_step_size, then the clamp to [min_step, max_step]
        min_step = tl.load(Params + P_MIN)
        max_step = tl.load(Params + P_MAX)
        ifactor = tl.load(Params + P_IFACTOR)
        dfactor = tl.where(ratio < 1, 1.0, tl.load(Params + P_DFACTOR))
        r64 = ratio.to(tl.float64)
        factor = tl.load(Params + P_SAFETY) / _pow(r64, tl.load(Params + P_EXP))
        factor = _min_nan(ifactor, _max_nan(factor, dfactor))
        dt_next = tl.where(ratio == 0, dt * ifactor, dt * factor)
        dt_next = _min_nan(_max_nan(dt_next, min_step), max_step)
        bad = _sum_part(Part, P, P, PBLOCK) > 0
        nfe = tl.load(ScT + ST_NFE)
        status = tl.load(ScT + ST_STATUS)
        fail = tl.load(ScT + X_FAIL)
        run = tl.load(ScT + X_RUN) != 0
        t0_new = tl.where(accept, t1, t0)
        t0_new = tl.where(active, t0_new, tl.load(ScT + ST_T0))
        dt_new = tl.where(active, dt_next, tl.load(ScT + ST_DT))
        nsteps = tl.load(ScT + ST_NSTEPS)
        nsteps = tl.where(active, tl.where(cnt > 0, 0.0, nsteps + 1), nsteps)
        out = out0.to(tl.float64) + cnt.to(tl.float64)
        nfe = tl.where(active, nfe + 6, nfe)
        att = tl.load(ScT + ST_ATT) + tl.where(active, 1.0, 0.0)
        acc = tl.load(ScT + ST_ACC) + tl.where(accept, 1.0, 0.0)
        ybad = tl.where(accept, tl.where(bad, 1.0, 0.0), tl.load(ScT + ST_YBAD))
        done = tl.where(out >= T, 1.0, 0.0)
        failing = run & (fail != 0)
        status = tl.where(failing, fail, status)
        dtfail = tl.where(failing, dt, tl.load(ScT + ST_DTFAIL))
        tl.store(State + ST_T0, t0_new)
        tl.store(State + ST_DT, dt_new)
        tl.store(State + ST_NSTEPS, nsteps)
        tl.store(State + ST_OUT, out)
        tl.store(State + ST_NFE, nfe)
        tl.store(State + ST_ATT, att)
        tl.store(State + ST_ACC, acc)
        tl.store(State + ST_STATUS, status)
        tl.store(State + ST_DONE, done)
        tl.store(State + ST_YBAD, ybad)
        tl.store(State + ST_DTFAIL, dtfail)
        rem = tl.load(Tau + T - 1) - t0_new
        acc_f = tl.where(accept, 1.0, 0.0).to(tl.float64)
        poll = _poll_value(done, status, nfe, rem, dt_new, dt_new / dt, acc_f, ifactor)
        tl.store(State + ST_POLL, poll)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------

_CPU_BLOCK = 4096  # interpreter: one program for everything, large blocks
# Tests set this to cut a CPU state into chunks of CPU_CHUNK elements with one program each
# (the GPU plan's shape) to exercise the multi-program paths under the interpreter.
CPU_CHUNK: int | None = None
_GPU_BLOCK = 1024
_PBLOCK = 128


@dataclass(frozen=True)
class Dopri5Plan:
    """How a state of ``n`` elements is cut into chunks, which chunks each program runs, and
    which segments the error norm takes the max over.

    Attributes:
        n: elements of the state.
        P: number of chunks (one reduction partial each).
        G: number of programs (the grid of every kernel but init_finish).
        block: elements per iteration of a program.
        chunks: (P + 1,) int64 chunk starts on the device.
        progs: (G + 1,) int64 first chunk of each program (GPU: one chunk per program; the
            interpreter: one program runs them all).
        seg_lo, seg_hi: (S,) int64 chunk range of each normed segment.
        seg_n: (S,) float64 element count of each normed segment.
        S: number of normed segments.
        num_warps: launch option.
    """

    n: int
    P: int
    G: int
    block: int
    chunks: Tensor
    progs: Tensor
    seg_lo: Tensor
    seg_hi: Tensor
    seg_n: Tensor
    S: int
    num_warps: int


_PLANS: dict[tuple, Dopri5Plan] = {}
_PARAMS: dict[tuple, Tensor] = {}
_CACHE_MAX = 64


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def make_plan(sizes: tuple[int, ...], normed: tuple[bool, ...], device: torch.device) -> Dopri5Plan:
    """Chunk plan for a state made of segments of ``sizes`` elements (cached per device).

    Args:
        sizes: element count of each segment, in order (all >= 1).
        normed: whether each segment enters the error norm (the adjoint's seminorm leaves the
            parameter segments out); at least one must.
        device: where the tables live.
    """
    key = (tuple(sizes), tuple(normed), str(device), CPU_CHUNK)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    n = sum(sizes)
    if device.type == "cuda":
        block = _GPU_BLOCK
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        chunk = max(block, -(-n // target))
        chunk = -(-chunk // block) * block
        num_warps = 4
    else:
        chunk = CPU_CHUNK or max(n, 1)
        block = min(_CPU_BLOCK, _next_pow2(min(max(sizes), chunk)))
        num_warps = 1
    starts, lo, hi, cnt = [], [], [], []
    pos = 0
    for size, inorm in zip(sizes, normed):
        first = len(starts)
        for s in range(pos, pos + size, chunk):
            starts.append(s)
        pos += size
        if inorm:
            lo.append(first)
            hi.append(len(starts))
            cnt.append(float(size))
    starts.append(n)
    P = len(starts) - 1
    progs = list(range(P + 1)) if device.type == "cuda" or CPU_CHUNK else [0, P]
    mk = dict(device=device)
    plan = Dopri5Plan(
        n=n,
        P=P,
        G=len(progs) - 1,
        block=block,
        chunks=torch.tensor(starts, dtype=torch.int64, **mk),
        progs=torch.tensor(progs, dtype=torch.int64, **mk),
        seg_lo=torch.tensor(lo, dtype=torch.int64, **mk),
        seg_hi=torch.tensor(hi, dtype=torch.int64, **mk),
        seg_n=torch.tensor(cnt, dtype=torch.float64, **mk),
        S=len(lo),
        num_warps=num_warps,
    )
    if len(_PLANS) >= _CACHE_MAX:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _used(weights) -> int:
    """Bit j set when weights[j] is nonzero (the kernels skip k's with a zero weight)."""
    return sum(1 << j for j, w in enumerate(weights) if w != 0.0)


@dataclass(frozen=True)
class Dopri5Tableau:
    """The tableau the kernels read (from ``timeaware.solvers.tableau``): float64 numbers.

    Attributes:
        order: order of the solution (the controller's exponent is 1 / order).
        alpha: (6,) stage time fractions of k2 ... k7.
        beta: 6 rows; row r (1..6) has r weights of k1 ... k_r (row 6: the solution).
        c_error: (7,) error weights; c_mid: (7,) mid-point weights.
    """

    order: int
    alpha: tuple
    beta: tuple
    c_error: tuple
    c_mid: tuple

    @property
    def use_rows(self) -> tuple[int, ...]:
        return tuple(_used(row) for row in self.beta)

    @property
    def use_error(self) -> int:
        return _used(self.c_error)

    @property
    def use_mid(self) -> int:
        return _used(self.c_mid)


def make_params(
    tab: Dopri5Tableau,
    rtol: float,
    atol: float,
    safety: float,
    ifactor: float,
    dfactor: float,
    min_step: float,
    max_step: float,
    max_num_steps: int,
    first_step: float | None,
    device: torch.device,
) -> Tensor:
    """The float64 ``Params`` buffer (cached per device and values)."""
    key = (tab, rtol, atol, safety, ifactor, dfactor, min_step, max_step, max_num_steps, first_step)
    key = (*key, str(device))
    p = _PARAMS.get(key)
    if p is not None:
        return p
    v = [0.0] * PARAMS_LEN
    v[0:10] = [rtol, atol, safety, ifactor, dfactor, min_step, max_step, float(max_num_steps),
               math.nan if first_step is None else first_step, 1.0 / tab.order]  # fmt: skip
    # _select_initial_step is called with order - 1 and raises to 1 / (that + 1)
    v[10:17] = [0.01, 1e-5, 1e-6, 1e-15, 100.0, 1e-3, 1.0 / float(tab.order - 1 + 1)]
    v[17] = math.inf
    v[20:26] = tab.alpha
    v[26:47] = [b for row in tab.beta for b in row]
    v[47:54] = tab.c_error
    v[54:61] = tab.c_mid
    p = torch.tensor(v, dtype=torch.float64, device=device)
    if len(_PARAMS) >= _CACHE_MAX:
        _PARAMS.clear()
    _PARAMS[key] = p
    return p


def new_scratch(n: int, T: int, P: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Per-solve buffers (uninitialised: the init kernels write every entry that is read):
    State, ScT (float64), ScC, Part (state dtype), Tau (float64)."""
    f64 = dict(dtype=torch.float64, device=device)
    return {
        "State": torch.empty(ST_LEN, **f64),
        "ScT": torch.empty(SCT_LEN, **f64),
        "ScC": torch.empty(SCC_LEN, dtype=dtype, device=device),
        "Part": torch.empty(4 * P, dtype=dtype, device=device),
        "Tau": torch.empty(T, **f64),
    }


def _grid(plan: Dopri5Plan) -> tuple[int]:
    return (plan.G,)


def dp5_init(y0, f0, y, f, out, times, sc: dict, params, plan: Dopri5Plan) -> None:
    """Copy y0/f0 into the solver's buffers and row 0 of ``out``; norms of y0 and f0; times."""
    _dp5_init_kernel[_grid(plan)](
        y0, f0, y, f, out, times, sc["Tau"], sc["State"], sc["Part"], params, plan.chunks,
        plan.progs, plan.P, times.numel(), BLOCK=plan.block, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_probe(y, f, yin, sc: dict, params, plan: Dopri5Plan) -> None:
    """h0 from the norms of y0 and f0; the probe input y0 + h0 * f0 and its time."""
    _dp5_probe_kernel[_grid(plan)](
        y, f, yin, sc["Part"], sc["State"], sc["ScT"], sc["ScC"], sc["Tau"], params, plan.chunks,
        plan.progs, plan.seg_lo, plan.seg_hi, plan.seg_n, plan.S, plan.P,
        BLOCK=plan.block, PBLOCK=_PBLOCK, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_probe_diff(y, f, f1, sc: dict, params, plan: Dopri5Plan) -> None:
    """Partial sums of ((f1 - f0) / scale)^2."""
    _dp5_probe_diff_kernel[_grid(plan)](
        y, f, f1, sc["Part"], params, plan.chunks, plan.progs, plan.P,
        BLOCK=plan.block, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_init_finish(sc: dict, params, plan: Dopri5Plan, T: int, has_first: bool) -> None:
    """The first step size and the initial State (one program)."""
    _dp5_init_finish_kernel[(1,)](
        sc["Part"], sc["State"], sc["ScT"], sc["Tau"], params, plan.seg_lo, plan.seg_hi,
        plan.seg_n, plan.S, plan.P, T, HAS_FIRST=has_first, PBLOCK=_PBLOCK, num_warps=1,
        **_LAUNCH,
    )  # fmt: skip


def dp5_begin(y, f, yin, sc: dict, params, plan: Dopri5Plan) -> None:
    """Start an attempt: checks, stage times, scaled tableau, input of k2."""
    _dp5_begin_kernel[_grid(plan)](
        y, f, yin, sc["State"], sc["ScT"], sc["ScC"], params, plan.chunks, plan.progs,
        BLOCK=plan.block, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_stage(row: int, y, ks: list, yout, sc: dict, plan: Dopri5Plan, use: int) -> None:
    """Input of stage ``row + 1`` (row 6: the 5th-order solution) from k1 ... k_row."""
    if not 2 <= row <= 6 or len(ks) != row:
        raise ValueError(f"row: got {row} with {len(ks)} k's, expected 2..6 with row k's")
    kk = list(ks) + [ks[0]] * (6 - row)
    _dp5_stage_kernel[_grid(plan)](
        y, *kk, yout, sc["ScC"], plan.chunks, plan.progs, ROW=row, USE=use,
        BLOCK=plan.block, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_error(y, y1, ks: list, sc: dict, params, plan: Dopri5Plan, use: int) -> None:
    """Partial sums of the squared scaled error and the non-finite count of y1."""
    _dp5_error_kernel[_grid(plan)](
        y, y1, *ks, sc["Part"], sc["ScC"], params, plan.chunks, plan.progs, plan.P, USE=use,
        BLOCK=plan.block, num_warps=plan.num_warps, **_LAUNCH,
    )  # fmt: skip


def dp5_update(y, f, y1, ks: list, out, sc: dict, params, plan: Dopri5Plan, use: int) -> None:
    """Accept or reject, next dt, masked state update, dense output (``ks`` = k2 ... k7)."""
    _dp5_update_kernel[_grid(plan)](
        y, f, y1, *ks, out, sc["Tau"], sc["Part"], sc["State"], sc["ScT"], sc["ScC"], params,
        plan.chunks, plan.progs, plan.seg_lo, plan.seg_hi, plan.seg_n, plan.S, plan.P, out.shape[0],
        plan.n, USE_M=use, BLOCK=plan.block, PBLOCK=_PBLOCK, num_warps=plan.num_warps,
        **_LAUNCH,
    )  # fmt: skip
