"""Fused ``act(group_norm(x + addends))``: Triton kernels and their launchers.

The op (DESIGN section 1)::

    u[n,c,h,w] = x[n,c,h,w] + conv_bias[c] + emb[n,c] + time[n] * time_map[c,h,w] + pos[n,h,w]
    y[n,c,h,w] = act(weight[c] * (u - mean[n,g]) * rstd[n,g] + beta[c]),   g = c // (C/G)

Every addend and the affine are optional (constexpr flags, no runtime branches); act is identity,
relu or silu. All arithmetic is fp32 whatever the storage dtypes; mean/rstd are fp32 with a
centred variance (two-pass over a register tile, Chan's combination across tiles and chunks).
``time`` is an (N,) tensor of any stride (stride 0: one value for every sample), a 0-d tensor or
a Python float (passed as a kernel scalar: no tensor is made for it).

Indexing: a tile is ``[rows, channels, pixels]`` with H and W flattened to one pixel index
``hw`` of stride ``stride_hw``; the strides of x (and of dy) are passed explicitly, so the same
kernels serve NCHW-contiguous and channels_last tensors. Inputs of other layouts are made dense
by the launchers first (the output follows ``suggest_memory_format``: channels_last when x's
strides are in channels_last order, NCHW otherwise; see :func:`output_memory_format`).

Two regimes, chosen per call from the group size ``L = C/G * H * W``:

* fused (``L <= split_threshold`` and the padded group tile ``next_pow2(C/G) * next_pow2(H*W)``
  at most 8192 elements): the forward holds ``ROWS`` whole groups per program in registers and
  does the op in one read and one write (one launch). The backward gives each program the
  groups of one sample (all of them when they fit about 4096 elements, else a contiguous run
  of groups), so the sample's ``dpos`` and ``dtime`` are summed in registers; one finalize
  kernel then does every reduction over the batch (weight, beta, conv_bias, time_map, a
  broadcast pos, the runs of groups of a sample) and the casts: two launches.
* split (otherwise, e.g. G=1 on N128 C128 32x32: 131072 values per group): each group is cut
  into chunks of ``BLOCK_C`` channels x a range of pixels, spread over enough programs to fill
  about two waves of SMs. Forward: per-chunk (count, mean, M2) partials of ``u - K`` (K: the
  group's first value, a shift that keeps means far from zero precise), then an elementwise
  apply kernel whose programs each combine their group's partials (Chan, fixed order; the
  first program of a group stores mean/rstd): two launches, two reads of x. Backward:
  per-chunk sums of gx, gx*xhat and (u - mean); an elementwise dx kernel that sums its group's
  chunk partials itself and writes per-(n, c, chunk) partials; the finalize kernel.

Reductions are deterministic: fixed-order sums of fp32 partials, no atomics.

Numerics of the backward: the fp32 mean is rounded, so ``sum_group(u - mean)`` is not zero; with
two values per group and a mean of 300 the bias ``(sum (u - mean)) / L``, amplified by rstd^2,
swamps ``dpos``/``demb`` (whose exact value is a cancelling sum). The backward therefore
re-centres: ``xhat = (u - mean - shift) * rstd`` with ``shift = mean_group(u - mean)``, which
makes ``sum_group(xhat) = 0`` to rounding of O(1) values.

A group whose centred fp32 variance overflows (``|u - mean|`` around 1e19 and above) gets
``rstd = NaN``: its outputs and gradients are NaN, as for a NaN input, never a finite
``act(beta)``.
"""

from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "backward",
    "forward",
    "SPLIT_THRESHOLD",
    "group_norm_act_bwd",
    "group_norm_act_fwd",
    "output_memory_format",
]

# Group sizes (C/G * H * W) above this use the split regime. In the split regime it also caps
# the elements of one register tile, so lowering it (tests do) gives smaller tiles and more
# chunks per group.
SPLIT_THRESHOLD: int = 4096

_ACTS = {"identity": 0, "relu": 1, "silu": 2}
_MAX_FUSED_TILE = 8192  # padded elements of one group tile in the fused regime (registers)
_PACK_TILE = 4096  # elements a fused program aims to hold when it packs several groups
_MAX_SPLIT_TILE = 4096  # elements of one tile in the split regime
_MAX_FINALIZE_BLOCK = 1024  # chunk partials of a group combined per step
_FIN_TILE = 2048  # elements of one tile of the backward finalize kernel
_CPU_TARGET_PROGRAMS = 2  # interpreter: few, large programs are fastest
_F32_MAX = 3.4028234663852886e38
_CL = torch.channels_last
_F32 = torch.float32


# ----------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_u(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    CBias,  # (C,) conv bias, contiguous
    Emb,  # (N, C) embedding, row stride stride_en, column stride 1
    Time,  # (N,) time, stride stride_t (0: one value for all samples)
    TMap,  # (C, H, W) contiguous time map
    Pos,  # (N, H, W) or (1, H, W) contiguous positional embedding
    n,  # sample index (int64), broadcastable to the tile
    c,  # channel index, broadcastable to the tile
    hw,  # flattened pixel index, broadcastable to the tile
    m_n,  # mask of valid samples (shape of n)
    m_c,  # mask of valid (n, c) (shape of n + c)
    m,  # mask of valid elements (tile shape)
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    stride_t,
    t_scalar,  # the time when TIME_SCALAR
    HW,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
):
    """u = x + conv_bias + emb + time * time_map + pos in fp32 (same order as the reference);
    0 where m is False. pos is loaded with the tile's own shape (a broadcast along channels of
    ``pos + n * HW + hw``), so it gets the same layout as x."""
    u = tl.load(X + n * stride_xn + c * stride_xc + hw * stride_xhw, mask=m, other=0.0)
    u = u.to(tl.float32)
    if HAS_CBIAS:
        u += tl.load(CBias + c + n * 0, mask=m_c, other=0.0).to(tl.float32)
    if HAS_EMB:
        u += tl.load(Emb + n * stride_en + c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_TIME:
        tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
        if TIME_SCALAR:
            u += t_scalar * tm
        else:
            t = tl.load(Time + n * stride_t, mask=m_n, other=0.0).to(tl.float32)
            u += t * tm
    if HAS_POS:
        if POS_BCAST:
            p = tl.load(Pos + hw + c * 0 + n * 0, mask=m, other=0.0)
        else:
            p = tl.load(Pos + n * HW + hw + c * 0, mask=m, other=0.0)
        u += p.to(tl.float32)
    return tl.where(m, u, 0.0)


@triton.jit
def _rstd(var, eps):
    """1 / sqrt(var + eps); NaN when the fp32 variance overflowed (or is NaN)."""
    rstd = 1.0 / tl.sqrt(var + eps)
    return tl.where(var <= 3.4028234663852886e38, rstd, float("nan"))


@triton.jit
def _affine(xhat, W, B, c, m_c, HAS_WEIGHT: tl.constexpr, HAS_BETA: tl.constexpr):
    """z = weight[c] * xhat + beta[c]."""
    z = xhat
    if HAS_WEIGHT:
        z = z * tl.load(W + c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_BETA:
        z += tl.load(B + c, mask=m_c, other=0.0).to(tl.float32)
    return z


@triton.jit
def _times_weight(g, W, c, m_c, HAS_WEIGHT: tl.constexpr):
    """gx = g * weight[c]."""
    if HAS_WEIGHT:
        g = g * tl.load(W + c, mask=m_c, other=0.0).to(tl.float32)
    return g


@triton.jit
def _act_fwd(z, ACT: tl.constexpr):
    if ACT == 1:  # relu; NaN propagates as in torch
        z = tl.where(z < 0.0, 0.0, z)
    elif ACT == 2:  # silu = z * sigmoid(z)
        z = z / (1.0 + tl.exp(-z))
    return z


@triton.jit
def _act_grad(dy, z, ACT: tl.constexpr):
    """g = dy * act'(z), with torch's conventions: relu'(z) = 0 where z <= 0, else 1 (so
    relu'(NaN) = 1, as torch's threshold_backward)."""
    if ACT == 1:
        g = tl.where(z <= 0.0, 0.0, dy)
    elif ACT == 2:
        s = 1.0 / (1.0 + tl.exp(-z))
        g = dy * (s * (1.0 + z * (1.0 - s)))
    else:
        g = dy
    return g


@triton.jit
def _recompute_g(
    DY,  # (N, C, H, W) gradient of y, strides (stride_dyn, stride_dyc, stride_dyhw)
    W,  # (C,) weight
    B,  # (C,) beta
    d,  # fp32 tile of u - mean (as the forward formed it), 0 where m is False
    rstd,  # fp32 group rstd, broadcastable to the tile
    n,
    c,
    hw,
    m_c,
    m,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACT: tl.constexpr,
):
    """g = dy * act'(weight * (u - mean) * rstd + beta): the pre-activation exactly as the
    forward computed it; 0 where m is False."""
    dy = tl.load(DY + n * stride_dyn + c * stride_dyc + hw * stride_dyhw, mask=m, other=0.0)
    z = _affine(d * rstd, W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
    return tl.where(m, _act_grad(dy.to(tl.float32), z, ACT), 0.0)


# ----------------------------------------------------------------------------------------------
# forward, fused regime: ROWS whole groups per program, one read and one write
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gn_fwd_fused_kernel(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    Y,  # (N, C, H, W) output, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 out: mean, then rstd
    R,  # N * G
    G,
    Cg,  # C // G
    HW,
    eps,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    stride_t,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r = pid * ROWS + tl.arange(0, ROWS)[:, None, None]  # group index n * G + g, int64
    cl = tl.arange(0, BLOCK_C)[None, :, None]  # channel inside the group
    hw = tl.arange(0, BLOCK_HW)[None, None, :]
    n = r // G
    c = (r - n * G) * Cg + cl
    m_n = r < R
    m_c = m_n & (cl < Cg)
    m = m_c & (hw < HW)
    u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
    L = Cg * HW
    mean = tl.sum(tl.sum(u, axis=2), axis=1) / L
    d = tl.where(m, u - mean[:, None, None], 0.0)
    var = tl.sum(tl.sum(d * d, axis=2), axis=1) / L  # centred
    rstd = _rstd(var, eps)
    tl.store(Stats + r, mean[:, None, None], mask=m_n)
    tl.store(Stats + R + r, rstd[:, None, None], mask=m_n)
    z = _affine(d * rstd[:, None, None], W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
    y = _act_fwd(z, ACT)
    tl.store(Y + n * stride_xn + c * stride_xc + hw * stride_xhw, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _spread(v, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """[ROWS] per-group values -> [ROWS * BLOCK_C, 1], one per channel of the packed tile."""
    v = tl.broadcast_to(v[:, None], [ROWS, BLOCK_C])
    return tl.reshape(v, [ROWS * BLOCK_C])[:, None]


@triton.jit
def _group_sum(t, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """[ROWS * BLOCK_C, BLOCK_HW] tile -> [ROWS] sums over each group's channels and pixels."""
    per_channel = tl.sum(t, axis=1)
    return tl.sum(tl.reshape(per_channel, [ROWS, BLOCK_C]), axis=1)


@triton.jit
def _gn_fwd_packed_kernel(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    Y,  # (N, C, H, W) output, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 out: mean, then rstd
    R,  # N * G
    G,  # a multiple of ROWS
    HW,
    eps,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    stride_t,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,  # == C // G
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
):
    """The fused forward for C/G a power of two: ROWS consecutive groups of one sample as one
    [ROWS * C/G channels, pixels] tile, so the channel axis is contiguous over the whole tile
    (channels_last: vector loads along C; NCHW: along the pixels as before)."""
    CH: tl.constexpr = ROWS * BLOCK_C
    pid = tl.program_id(0).to(tl.int64)
    r0 = pid * ROWS  # first group of the program (n * G + g0)
    n = r0 // G
    c = ((r0 - n * G) * BLOCK_C + tl.arange(0, CH))[:, None]
    hw = tl.arange(0, BLOCK_HW)[None, :]
    m_n = n >= 0  # always true: the grid holds whole runs of ROWS groups
    m_c = c >= 0
    m = m_c & (hw < HW)
    u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
    L = BLOCK_C * HW
    mean = _group_sum(u, ROWS, BLOCK_C) / L
    d = tl.where(m, u - _spread(mean, ROWS, BLOCK_C), 0.0)
    var = _group_sum(d * d, ROWS, BLOCK_C) / L  # centred
    rstd = _rstd(var, eps)
    rows = r0 + tl.arange(0, ROWS)
    tl.store(Stats + rows, mean)
    tl.store(Stats + R + rows, rstd)
    z = _affine(d * _spread(rstd, ROWS, BLOCK_C), W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
    y = _act_fwd(z, ACT)
    tl.store(Y + n * stride_xn + c * stride_xc + hw * stride_xhw, y.to(Y.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# forward, split regime: stats partials per chunk -> elementwise apply (Chan-combines them)
# grid (N * G, S_C, S_HW): program (r, ic, ih) owns channels [ic*BLOCK_C, +BLOCK_C) of group r
# and pixels [ih*HPC, min((ih+1)*HPC, HW)), looped over in tiles of BLOCK_HW pixels.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gn_fwd_split_stats_kernel(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Part,  # (4, N * G, S) fp32 out: count, mean of u - K, M2, shift K of each chunk
    RS,  # N * G * S: stride of the first axis of Part
    G,
    Cg,
    HW,
    HPC,  # pixels per chunk (a multiple of BLOCK_HW)
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    stride_t,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    n = r // G
    cl1 = ic * BLOCK_C + tl.arange(0, BLOCK_C)
    mc1 = cl1 < Cg
    cl = cl1[:, None]
    c = (r - n * G) * Cg + cl
    m_n = n >= 0  # always true (scalar mask)
    m_c = cl < Cg
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    # shift K = u at the group's first element: the chunk statistics are those of u - K, whose
    # means are small, so neither the Chan updates nor the finalize lose precision to a mean far
    # from zero (rounding a mean of 1e4 to fp32 costs 5e-4)
    k = _load_u(X, CBias, Emb, Time, TMap, Pos, n, (r - n * G) * Cg, 0, m_n, m_n, m_n,
                stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
    # per-channel running (mean, M2) over the pixel tiles; every channel sees the same count
    mean_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m = m_c & (hw < hw_hi)
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        u = tl.where(m, u - k, 0.0)
        nt = tl.minimum(hw_hi - h0, BLOCK_HW).to(tl.float32)
        na = (h0 - hw_lo).to(tl.float32)
        mt = tl.sum(u, axis=1) / nt
        dt = tl.where(m, u - mt[:, None], 0.0)
        m2t = tl.sum(dt * dt, axis=1)
        delta = mt - mean_c
        nb = na + nt
        mean_c += delta * (nt / nb)
        m2_c += m2t + delta * delta * (na * nt / nb)
    # combine the channels of the chunk (equal counts per channel)
    nhw = (hw_hi - hw_lo).to(tl.float32)
    nch = tl.minimum(Cg - ic * BLOCK_C, BLOCK_C).to(tl.float32)
    mean = tl.sum(tl.where(mc1, mean_c, 0.0), axis=0) / nch
    dm = mean_c - mean
    m2 = tl.sum(tl.where(mc1, m2_c + nhw * dm * dm, 0.0), axis=0)
    s = r * (tl.num_programs(1) * tl.num_programs(2)) + ic * tl.num_programs(2) + ih
    tl.store(Part + s, nch * nhw)
    tl.store(Part + RS + s, mean)
    tl.store(Part + 2 * RS + s, m2)
    tl.store(Part + 3 * RS + s, k)


@triton.jit
def _chan_combine(
    Part,  # (4, N * G, S) fp32 chunk count, mean of u - K, M2, shift K
    RS,  # N * G * S
    r,  # group index
    S,
    eps,
    BLOCK_S: tl.constexpr,
):
    """(mean, rstd) of group r from its S chunk partials, in a fixed order.

    Chan: mean = sum(n_i mean_i) / n;  M2 = sum(M2_i + n_i (mean_i - mean)^2);  var = M2 / n
    (the chunk means are of u - K; the mean of u is K + mean)."""
    base = r * S
    cnt_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    sum_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        cnt = tl.load(Part + base + s, mask=ms, other=0.0)
        cnt_acc += cnt
        sum_acc += cnt * tl.load(Part + RS + base + s, mask=ms, other=0.0)
    total = tl.sum(cnt_acc, axis=0)
    mean = tl.sum(sum_acc, axis=0) / total
    m2_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        cnt = tl.load(Part + base + s, mask=ms, other=0.0)
        dm = tl.load(Part + RS + base + s, mask=ms, other=0.0) - mean
        m2_acc += tl.load(Part + 2 * RS + base + s, mask=ms, other=0.0) + cnt * dm * dm
    var = tl.sum(m2_acc, axis=0) / total
    return tl.load(Part + 3 * RS + base) + mean, _rstd(var, eps)


@triton.jit
def _gn_fwd_split_apply_kernel(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    Y,  # (N, C, H, W) output, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Part,  # (4, N * G, S) fp32 chunk partials of the stats kernel
    Stats,  # (2, N * G) fp32 out: mean, rstd
    R,
    G,
    Cg,
    HW,
    HPC,
    eps,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    stride_t,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    n = r // G
    cl = (ic * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    c = (r - n * G) * Cg + cl
    m_n = n >= 0
    m_c = cl < Cg
    # every program of the group combines the group's chunk partials (same order, same values);
    # the first one stores them for the backward: no separate finalize launch
    S = tl.num_programs(1) * tl.num_programs(2)
    mean, rstd = _chan_combine(Part, R * S, r, S, eps, BLOCK_S)
    if (ic == 0) & (ih == 0):
        tl.store(Stats + r, mean)
        tl.store(Stats + R + r, rstd)
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m = m_c & (hw < hw_hi)
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        xhat = tl.where(m, (u - mean) * rstd, 0.0)
        z = _affine(xhat, W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
        y = _act_fwd(z, ACT)
        tl.store(
            Y + n * stride_xn + c * stride_xc + hw * stride_xhw,
            y.to(Y.dtype.element_ty),
            mask=m,
        )


# ----------------------------------------------------------------------------------------------
# backward
#
# With d = u - mean (as the forward formed it), z = w * d * rstd + b, g = dy * act'(z)
#   (identity' = 1, relu'(z) = [z > 0] with relu'(NaN) = 1 as torch, silu'(z) =
#   s * (1 + z * (1 - s)), s = sigmoid(z)), the re-centred xhat = (d - shift) * rstd with
#   shift = mean_group(d) (see the module docstring), gx = g * w, and per group (L values):
#   du = rstd * (gx - mean(gx) - xhat * mean(gx * xhat))
#   dx = du                          dweight[c]    = sum_{n,hw} g * xhat
#   dbeta[c] = sum_{n,hw} g          dconv_bias[c] = sum_{n,hw} du
#   demb[n,c] = sum_hw du            dtime[n]      = sum_{c,hw} du * time_map
#   dpos[n,hw] = sum_c du (and over n for a (1, H, W) pos)
#   dtime_map[c,hw] = sum_n du * time[n]
# The fused / split kernels write fp32 partials of the per-channel sums (per n, c and pixel
# chunk), of dtime (per sample and run of groups or chunk) and of dpos (per sample and run of
# groups or channel chunk); the finalize kernel sums them in a fixed order over the batch and
# casts. dtime_map is summed over n by the finalize kernel too: from dx when dx is fp32 (dx is
# du), else by recomputing du from x, dy, the stats and the per-group (shift, mean(gx),
# mean(gx * xhat)) that the backward kernel saves.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gn_bwd_fused_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    DX,  # (N, C, H, W) out, x's dtype, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 mean, rstd
    WS,  # fp32 workspace holding the partials below, at the offsets o_*
    o_dw,  # DWp (N, C) out: sum_hw g * xhat
    o_db,  # DBp (N, C) out: sum_hw g
    o_demb,  # DEmbP (N, C) out: sum_hw du
    o_dt,  # DTimeP (N, GCH) out: sum over the program's groups of du * time_map
    o_dp,  # DPosP (N, GCH, HW) out: sum over the program's channels of du
    o_mg,  # MG (3, N * G) out: shift, mean(gx), mean(gx * xhat) of each group
    R,  # N * G
    G,
    Cg,
    HW,
    GPP,  # groups per program (a multiple of ROWS)
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    stride_t,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    NEED_DPOS: tl.constexpr,
    NEED_MG: tl.constexpr,
):
    DWp, DBp, DEmbP = WS + o_dw, WS + o_db, WS + o_demb
    DTimeP, DPosP, MG = WS + o_dt, WS + o_dp, WS + o_mg
    # program (n, gc) owns groups [gc * GPP, min(G, (gc + 1) * GPP)) of sample n
    n1 = tl.program_id(0).to(tl.int64)
    n = n1 + tl.zeros([ROWS, 1, 1], dtype=tl.int64)
    gc = tl.program_id(1)
    g_lo = gc * GPP
    g_hi = tl.minimum(g_lo + GPP, G)
    cl = tl.arange(0, BLOCK_C)[None, :, None]
    hw = tl.arange(0, BLOCK_HW)[None, None, :]
    m_cl = cl < Cg
    m_hw = hw < HW
    dpos_acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    dt_acc = tl.zeros([ROWS], dtype=tl.float32)
    L = Cg * HW
    for g0 in range(g_lo, g_hi, ROWS):
        g = g0 + tl.arange(0, ROWS)[:, None, None]
        m_n = g < g_hi
        r = n * G + g
        c = g * Cg + cl
        m_c = m_n & m_cl
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        mean = tl.load(Stats + r, mask=m_n, other=0.0)
        rstd = tl.load(Stats + R + r, mask=m_n, other=0.0)
        d = tl.where(m, u - mean, 0.0)
        shift = tl.sum(tl.sum(d, axis=2), axis=1) / L
        xhat = tl.where(m, (d - shift[:, None, None]) * rstd, 0.0)
        g_ = _recompute_g(DY, W, B, d, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                          stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        gx = _times_weight(g_, W, c, m_c, HAS_WEIGHT)
        mgx = tl.sum(tl.sum(gx, axis=2), axis=1) / L
        mgxh = tl.sum(tl.sum(gx * xhat, axis=2), axis=1) / L
        du = rstd * (gx - mgx[:, None, None] - xhat * mgxh[:, None, None])
        du = tl.where(m, du, 0.0)
        if STORE_DX:
            off = n * stride_xn + c * stride_xc + hw * stride_xhw
            tl.store(DX + off, du.to(DX.dtype.element_ty), mask=m)
        nc = n * (G * Cg) + c  # flat (n, c) index into the (N, C) partials
        if NEED_DW:
            tl.store(DWp + nc, tl.sum(g_ * xhat, axis=2)[:, :, None], mask=m_c)
        if NEED_DB:
            tl.store(DBp + nc, tl.sum(g_, axis=2)[:, :, None], mask=m_c)
        if NEED_DEMB:
            tl.store(DEmbP + nc, tl.sum(du, axis=2)[:, :, None], mask=m_c)
        if NEED_DTIME:
            tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
            dt_acc += tl.sum(tl.sum(du * tm, axis=2), axis=1)
        if NEED_DPOS:
            dpos_acc += tl.sum(tl.sum(du, axis=1), axis=0)
        if NEED_MG:
            tl.store(MG + r, shift[:, None, None], mask=m_n)
            tl.store(MG + R + r, mgx[:, None, None], mask=m_n)
            tl.store(MG + 2 * R + r, mgxh[:, None, None], mask=m_n)
    p = n1 * tl.num_programs(1) + gc  # (n, gc) into the (N, GCH) partials
    if NEED_DTIME:
        tl.store(DTimeP + p, tl.sum(dt_acc, axis=0))
    if NEED_DPOS:
        hw1 = tl.arange(0, BLOCK_HW)
        tl.store(DPosP + p * HW + hw1, dpos_acc, mask=hw1 < HW)


@triton.jit
def _gn_bwd_packed_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    DX,  # (N, C, H, W) out, x's dtype, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 mean, rstd
    WS,  # fp32 workspace holding the partials below, at the offsets o_*
    o_dw,  # DWp (N, C) out: sum_hw g * xhat
    o_db,  # DBp (N, C) out: sum_hw g
    o_demb,  # DEmbP (N, C) out: sum_hw du
    o_dt,  # DTimeP (N, GCH) out: sum over the program's groups of du * time_map
    o_dp,  # DPosP (N, GCH, HW) out: sum over the program's channels of du
    o_mg,  # MG (3, N * G) out: shift, mean(gx), mean(gx * xhat) of each group
    R,  # N * G
    G,
    Cg,
    HW,
    GPP,  # groups per program (a multiple of ROWS)
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    stride_t,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    NEED_DPOS: tl.constexpr,
    NEED_MG: tl.constexpr,
):
    """The fused backward for C/G a power of two (BLOCK_C == C/G, Cg unused): each step of a
    program's run of groups is one [ROWS * C/G channels, pixels] tile of ROWS consecutive
    groups (G and GPP are multiples of ROWS), contiguous along the channels, as the packed
    forward."""
    CH: tl.constexpr = ROWS * BLOCK_C
    DWp, DBp, DEmbP = WS + o_dw, WS + o_db, WS + o_demb
    DTimeP, DPosP, MG = WS + o_dt, WS + o_dp, WS + o_mg
    n = tl.program_id(0).to(tl.int64)
    gc = tl.program_id(1)
    g_lo = gc * GPP
    g_hi = tl.minimum(g_lo + GPP, G)
    ch = tl.arange(0, CH)[:, None]
    hw = tl.arange(0, BLOCK_HW)[None, :]
    m_n = n >= 0  # always true: every step is a whole run of ROWS groups
    m_c = ch >= 0
    m = m_c & (hw < HW)
    dpos_acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
    dt_acc = tl.zeros([CH], dtype=tl.float32)
    L = BLOCK_C * HW
    for g0 in range(g_lo, g_hi, ROWS):
        c = g0 * BLOCK_C + ch
        rows = n * G + g0 + tl.arange(0, ROWS)
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        mean = _spread(tl.load(Stats + rows), ROWS, BLOCK_C)
        rstd_g = tl.load(Stats + R + rows)
        rstd = _spread(rstd_g, ROWS, BLOCK_C)
        d = tl.where(m, u - mean, 0.0)
        shift = _group_sum(d, ROWS, BLOCK_C) / L
        xhat = tl.where(m, (d - _spread(shift, ROWS, BLOCK_C)) * rstd, 0.0)
        g_ = _recompute_g(DY, W, B, d, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                          stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        gx = _times_weight(g_, W, c, m_c, HAS_WEIGHT)
        mgx = _group_sum(gx, ROWS, BLOCK_C) / L
        mgxh = _group_sum(gx * xhat, ROWS, BLOCK_C) / L
        du = rstd * (gx - _spread(mgx, ROWS, BLOCK_C) - xhat * _spread(mgxh, ROWS, BLOCK_C))
        du = tl.where(m, du, 0.0)
        if STORE_DX:
            off = n * stride_xn + c * stride_xc + hw * stride_xhw
            tl.store(DX + off, du.to(DX.dtype.element_ty), mask=m)
        nc = n * (G * BLOCK_C) + g0 * BLOCK_C + tl.arange(0, CH)  # (n, c) into (N, C)
        if NEED_DW:
            tl.store(DWp + nc, tl.sum(g_ * xhat, axis=1))
        if NEED_DB:
            tl.store(DBp + nc, tl.sum(g_, axis=1))
        if NEED_DEMB:
            tl.store(DEmbP + nc, tl.sum(du, axis=1))
        if NEED_DTIME:
            tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
            dt_acc += tl.sum(du * tm, axis=1)
        if NEED_DPOS:
            dpos_acc += tl.sum(du, axis=0)
        if NEED_MG:
            tl.store(MG + rows, shift)
            tl.store(MG + R + rows, mgx)
            tl.store(MG + 2 * R + rows, mgxh)
    p = n * tl.num_programs(1) + gc  # (n, gc) into the (N, GCH) partials
    if NEED_DTIME:
        tl.store(DTimeP + p, tl.sum(dt_acc, axis=0))
    if NEED_DPOS:
        hw1 = tl.arange(0, BLOCK_HW)
        tl.store(DPosP + p * HW + hw1, dpos_acc, mask=hw1 < HW)


@triton.jit
def _gn_bwd_split_reduce_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 mean, rstd
    Part,  # (3, N * G, S) fp32 out: chunk sums of gx, gx * (u - mean) * rstd and u - mean
    R,
    RS,  # N * G * S
    G,
    Cg,
    HW,
    HPC,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    stride_t,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    n = r // G
    cl = (ic * BLOCK_C + tl.arange(0, BLOCK_C))[:, None]
    c = (r - n * G) * Cg + cl
    m_n = n >= 0
    m_c = cl < Cg
    mean = tl.load(Stats + r)
    rstd = tl.load(Stats + R + r)
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    acc_gx = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    acc_gxh = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    acc_d = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m = m_c & (hw < hw_hi)
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        d = tl.where(m, u - mean, 0.0)
        g_ = _recompute_g(DY, W, B, d, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                          stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        gx = _times_weight(g_, W, c, m_c, HAS_WEIGHT)
        acc_gx += gx
        acc_gxh += gx * (d * rstd)
        acc_d += d
    s = r * (tl.num_programs(1) * tl.num_programs(2)) + ic * tl.num_programs(2) + ih
    tl.store(Part + s, tl.sum(tl.sum(acc_gx, axis=1), axis=0))
    tl.store(Part + RS + s, tl.sum(tl.sum(acc_gxh, axis=1), axis=0))
    tl.store(Part + 2 * RS + s, tl.sum(tl.sum(acc_d, axis=1), axis=0))


@triton.jit
def _gn_bwd_split_dx_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    DX,  # (N, C, H, W) out, x's dtype, same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 mean, rstd
    Part,  # (3, N * G, S) fp32 chunk sums of gx, gx * (u - mean) * rstd, u - mean
    WS,  # fp32 workspace holding the partials below, at the offsets o_*
    o_dw,  # DWp (N, C, S_HW) out: sum over the chunk's pixels of g * xhat
    o_db,  # DBp (N, C, S_HW) out: sum over the chunk's pixels of g
    o_demb,  # DEmbP (N, C, S_HW) out: sum over the chunk's pixels of du
    o_dt,  # DTimeP (N, G * S) out: chunk sums of du * time_map
    o_dp,  # DPosP (N, G * S_C, HW) out: sum over the chunk's channels of du
    o_mg,  # MG (3, N * G) out: shift, mean(gx), mean(gx * xhat) of each group
    R,
    RS,
    G,
    Cg,
    HW,
    HPC,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    stride_t,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    NEED_DPOS: tl.constexpr,
    NEED_MG: tl.constexpr,
):
    DWp, DBp, DEmbP = WS + o_dw, WS + o_db, WS + o_demb
    DTimeP, DPosP, MG = WS + o_dt, WS + o_dp, WS + o_mg
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    S_C = tl.num_programs(1)
    S_HW = tl.num_programs(2)
    S = S_C * S_HW
    n = r // G
    cl1 = ic * BLOCK_C + tl.arange(0, BLOCK_C)
    mc1 = cl1 < Cg
    cl = cl1[:, None]
    c = (r - n * G) * Cg + cl
    c1 = (r - n * G) * Cg + cl1
    m_n = n >= 0
    m_c = cl < Cg
    mean = tl.load(Stats + r)
    rstd = tl.load(Stats + R + r)
    # the group's sums, from its chunk partials (every program of the group sums them in the
    # same order, so all get the same values)
    a_gx = tl.zeros([BLOCK_S], dtype=tl.float32)
    a_gxh = tl.zeros([BLOCK_S], dtype=tl.float32)
    a_d = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        a_gx += tl.load(Part + r * S + s, mask=ms, other=0.0)
        a_gxh += tl.load(Part + RS + r * S + s, mask=ms, other=0.0)
        a_d += tl.load(Part + 2 * RS + r * S + s, mask=ms, other=0.0)
    L = Cg * HW
    mgx = tl.sum(a_gx, axis=0) / L
    shift = tl.sum(a_d, axis=0) / L
    # sum gx * xhat with the re-centred xhat = (d - shift) * rstd
    mgxh = tl.sum(a_gxh, axis=0) / L - shift * rstd * mgx
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    acc_du = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum du
    acc_g = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum g
    acc_gxh = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum g * xhat
    acc_dt = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum du * time_map
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m_hw = hw < hw_hi
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
        d = tl.where(m, u - mean, 0.0)
        g_ = _recompute_g(DY, W, B, d, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                          stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        xhat = tl.where(m, (d - shift) * rstd, 0.0)
        gx = _times_weight(g_, W, c, m_c, HAS_WEIGHT)
        du = tl.where(m, rstd * (gx - mgx - xhat * mgxh), 0.0)
        if STORE_DX:
            off = n * stride_xn + c * stride_xc + hw * stride_xhw
            tl.store(DX + off, du.to(DX.dtype.element_ty), mask=m)
        if NEED_DW:
            acc_gxh += tl.sum(g_ * xhat, axis=1)
        if NEED_DB:
            acc_g += tl.sum(g_, axis=1)
        if NEED_DEMB:
            acc_du += tl.sum(du, axis=1)
        if NEED_DTIME:
            tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
            acc_dt += tl.sum(du * tm, axis=1)
        if NEED_DPOS:
            prow = n * (G * S_C) + (r - n * G) * S_C + ic  # (n, g, ic) into (N, G * S_C)
            tl.store(DPosP + prow * HW + hw, tl.sum(du, axis=0)[None, :], mask=m_hw)
    pc = (n * (G * Cg) + c1) * S_HW + ih  # (n, c, ih) into (N, C, S_HW)
    if NEED_DW:
        tl.store(DWp + pc, acc_gxh, mask=mc1)
    if NEED_DB:
        tl.store(DBp + pc, acc_g, mask=mc1)
    if NEED_DEMB:
        tl.store(DEmbP + pc, acc_du, mask=mc1)
    if NEED_DTIME:
        tl.store(DTimeP + r * S + ic * S_HW + ih, tl.sum(acc_dt, axis=0))
    if NEED_MG:
        if (ic == 0) & (ih == 0):
            tl.store(MG + r, shift)
            tl.store(MG + R + r, mgx)
            tl.store(MG + 2 * R + r, mgxh)


@triton.jit
def _gn_bwd_finalize_kernel(
    WS,  # fp32 workspace holding the partials below, at the offsets o_*
    o_dw,  # DWp (N, C, S) partials of dweight
    o_db,  # DBp (N, C, S) partials of dbeta
    o_demb,  # DEmbP (N, C, S) partials of demb
    o_dt,  # DTimeP (N, P) partials of dtime
    o_dp,  # DPosP (N, Q, HW) partials of dpos
    o_mg,  # MG (3, N * G) shift, mean(gx), mean(gx * xhat) of each group
    DW,  # (C,) out, weight's dtype
    DB,  # (C,) out, beta's dtype
    DCB,  # (C,) out, conv_bias's dtype
    DEmb,  # (N, C) out, emb's dtype
    DTime,  # (N,) or () out, time's dtype
    DTMap,  # (C, H, W) out, time_map's dtype
    DPos,  # (N|1, H, W) out, pos's dtype
    DY,  # (N, C, H, W) upstream gradient (dtime_map recompute)
    X,  # (N, C, H, W) input (dtime_map recompute)
    DU,  # (N, C, H, W) fp32 dx, same strides as X (dtime_map from dx)
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Stats,  # (2, N * G) fp32 mean, rstd
    N,
    C,
    G,
    Cg,
    HW,
    S,
    P,
    Q,
    t_scalar,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    stride_t,
    n_chan,  # programs of the per-channel job
    n_tmap,  # programs of the dtime_map job
    n_pos,  # programs of the dpos job; one more program does dtime
    BLOCK_CF: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_TN: tl.constexpr,
    BLOCK_TM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_PH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    TIME_SCALAR: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    NEED_DCB: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    TIME_BCAST: tl.constexpr,
    NEED_DTMAP: tl.constexpr,
    TMAP_FROM_DU: tl.constexpr,
    NEED_DPOS: tl.constexpr,
):
    DWp, DBp, DEmbP = WS + o_dw, WS + o_db, WS + o_demb
    DTimeP, DPosP, MG = WS + o_dt, WS + o_dp, WS + o_mg
    pid = tl.program_id(0)
    # one job per program; each job is a helper so that no name is shared between branches
    if pid < n_chan:
        _fin_channels(DWp, DBp, DEmbP, DW, DB, DCB, DEmb, pid, N, C, S,
                      BLOCK_CF, BLOCK_S, NEED_DW, NEED_DB, NEED_DCB, NEED_DEMB)  # fmt: skip
    elif pid < n_chan + n_tmap:
        if NEED_DTMAP:
            _fin_time_map(DTMap, DY, X, DU, W, B, CBias, Emb, Time, TMap, Pos, Stats, MG,
                          pid - n_chan, N, G, Cg, HW, C * HW, t_scalar,
                          stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw,
                          stride_en, stride_t, BLOCK_TN, BLOCK_TM, HAS_WEIGHT, HAS_BETA,
                          HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST, ACT,
                          TMAP_FROM_DU)  # fmt: skip
    elif pid < n_chan + n_tmap + n_pos:
        if NEED_DPOS:
            _fin_pos(DPosP, DPos, pid - n_chan - n_tmap, N, HW, Q, BLOCK_Q, BLOCK_PH, POS_BCAST)
    else:
        if NEED_DTIME:
            _fin_time(DTimeP, DTime, N, P, BLOCK_N, BLOCK_P, TIME_BCAST)


@triton.jit
def _fin_channels(
    DWp, DBp, DEmbP, DW, DB, DCB, DEmb, pid, N, C, S,
    BLOCK_CF: tl.constexpr, BLOCK_S: tl.constexpr, NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr, NEED_DCB: tl.constexpr, NEED_DEMB: tl.constexpr,
):  # fmt: skip
    """Per channel: dweight, dbeta, dconv_bias = sums over (n, s); demb[n] = sum over s."""
    c = pid * BLOCK_CF + tl.arange(0, BLOCK_CF)[:, None]
    mc = c < C
    c1 = pid * BLOCK_CF + tl.arange(0, BLOCK_CF)
    mc1 = c1 < C
    s = tl.arange(0, BLOCK_S)[None, :]
    acc_w = tl.zeros([BLOCK_CF], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_CF], dtype=tl.float32)
    acc_cb = tl.zeros([BLOCK_CF], dtype=tl.float32)
    for n in range(N):
        base = (n * C + c).to(tl.int64) * S
        e = tl.zeros([BLOCK_CF], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            m = mc & (s0 + s < S)
            if NEED_DW:
                acc_w += tl.sum(tl.load(DWp + base + s0 + s, mask=m, other=0.0), axis=1)
            if NEED_DB:
                acc_b += tl.sum(tl.load(DBp + base + s0 + s, mask=m, other=0.0), axis=1)
            if NEED_DEMB or NEED_DCB:
                e += tl.sum(tl.load(DEmbP + base + s0 + s, mask=m, other=0.0), axis=1)
        if NEED_DEMB:
            tl.store(DEmb + n * C + c1, e.to(DEmb.dtype.element_ty), mask=mc1)
        acc_cb += e
    if NEED_DW:
        tl.store(DW + c1, acc_w.to(DW.dtype.element_ty), mask=mc1)
    if NEED_DB:
        tl.store(DB + c1, acc_b.to(DB.dtype.element_ty), mask=mc1)
    if NEED_DCB:
        tl.store(DCB + c1, acc_cb.to(DCB.dtype.element_ty), mask=mc1)


@triton.jit
def _fin_time_map(
    DTMap, DY, X, DU, W, B, CBias, Emb, Time, TMap, Pos, Stats, MG, pid, N, G, Cg, HW, CHW,
    t_scalar, stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stride_en,
    stride_t, BLOCK_TN: tl.constexpr, BLOCK_TM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr, HAS_CBIAS: tl.constexpr, HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr, TIME_SCALAR: tl.constexpr, HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr, ACT: tl.constexpr, TMAP_FROM_DU: tl.constexpr,
):  # fmt: skip
    """dtime_map[c, hw] = sum_n du[n, c, hw] * time[n], over [BLOCK_TN, BLOCK_TM] tiles; du is
    read from the fp32 dx (TMAP_FROM_DU) or recomputed from x, dy, the stats and MG."""
    i = pid * BLOCK_TM + tl.arange(0, BLOCK_TM)[None, :]
    mi = i < CHW
    c = i // HW
    hw = i - c * HW
    acc = tl.zeros([BLOCK_TN, BLOCK_TM], dtype=tl.float32)
    R = N * G
    for n0 in range(0, N, BLOCK_TN):
        n = (n0 + tl.arange(0, BLOCK_TN)[:, None]).to(tl.int64)
        m_n = n < N
        m = m_n & mi
        if TMAP_FROM_DU:
            du = tl.load(DU + n * stride_xn + c * stride_xc + hw * stride_xhw, mask=m, other=0.0)
            du = du.to(tl.float32)
        else:
            r = n * G + c // Cg
            mean = tl.load(Stats + r, mask=m, other=0.0)
            rstd = tl.load(Stats + R + r, mask=m, other=0.0)
            shift = tl.load(MG + r, mask=m, other=0.0)
            mgx = tl.load(MG + R + r, mask=m, other=0.0)
            mgxh = tl.load(MG + 2 * R + r, mask=m, other=0.0)
            u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m, m,
                        stride_xn, stride_xc, stride_xhw, stride_en, stride_t, t_scalar, HW,
                        HAS_CBIAS, HAS_EMB, HAS_TIME, TIME_SCALAR, HAS_POS, POS_BCAST)  # fmt: skip
            d = tl.where(m, u - mean, 0.0)
            g = _recompute_g(DY, W, B, d, rstd, n, c, hw, m, m, stride_dyn, stride_dyc,
                             stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
            xhat = (d - shift) * rstd
            gx = _times_weight(g, W, c, m, HAS_WEIGHT)
            du = tl.where(m, rstd * (gx - mgx - xhat * mgxh), 0.0)
        if TIME_SCALAR:
            acc += du * t_scalar
        else:
            acc += du * tl.load(Time + n * stride_t, mask=m_n, other=0.0).to(tl.float32)
    i1 = pid * BLOCK_TM + tl.arange(0, BLOCK_TM)
    tl.store(DTMap + i1, tl.sum(acc, axis=0).to(DTMap.dtype.element_ty), mask=i1 < CHW)


@triton.jit
def _fin_pos(DPosP, DPos, pid, N, HW, Q, BLOCK_Q: tl.constexpr, BLOCK_PH: tl.constexpr,
             POS_BCAST: tl.constexpr):  # fmt: skip
    """dpos[n, hw] = sum_q partials (and over n for a (1, H, W) pos)."""
    hw = pid * BLOCK_PH + tl.arange(0, BLOCK_PH)[None, :]
    mh = hw < HW
    q = tl.arange(0, BLOCK_Q)[:, None]
    hw1 = pid * BLOCK_PH + tl.arange(0, BLOCK_PH)
    acc = tl.zeros([BLOCK_PH], dtype=tl.float32)
    for n in range(N):
        v = tl.zeros([BLOCK_PH], dtype=tl.float32)
        for q0 in range(0, Q, BLOCK_Q):
            m = mh & (q0 + q < Q)
            rows = (n * Q + q0 + q).to(tl.int64)
            v += tl.sum(tl.load(DPosP + rows * HW + hw, mask=m, other=0.0), axis=0)
        if POS_BCAST:
            acc += v
        else:
            tl.store(DPos + n * HW + hw1, v.to(DPos.dtype.element_ty), mask=hw1 < HW)
    if POS_BCAST:
        tl.store(DPos + hw1, acc.to(DPos.dtype.element_ty), mask=hw1 < HW)


@triton.jit
def _fin_time(DTimeP, DTime, N, P, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
              TIME_BCAST: tl.constexpr):  # fmt: skip
    """dtime[n] = sum_p partials (and over n for a 0-d time)."""
    p = tl.arange(0, BLOCK_P)[None, :]
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)[:, None]
        v = tl.zeros([BLOCK_N], dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            m = (nn < N) & (p0 + p < P)
            v += tl.sum(tl.load(DTimeP + nn * P + p0 + p, mask=m, other=0.0), axis=1)
        if TIME_BCAST:
            acc += v
        else:
            n1 = n0 + tl.arange(0, BLOCK_N)
            tl.store(DTime + n1, v.to(DTime.dtype.element_ty), mask=n1 < N)
    if TIME_BCAST:
        tl.store(DTime, tl.sum(acc, axis=0).to(DTime.dtype.element_ty))


# ----------------------------------------------------------------------------------------------
# launchers
#
# Host work per call is kept small (at NODE sizes it is the cost, DESIGN section 8): the launch
# plan (regime, grid, block sizes, constexpr flags, workspace layout) is computed once per
# signature and cached; kernels are launched through ``JITFunction.run`` with the cached keyword
# arguments; the backward's fp32 partials share one workspace allocation.
# ----------------------------------------------------------------------------------------------


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _prev_pow2(v: int) -> int:
    return 1 << max(0, int(v).bit_length() - 1)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _num_warps(elems: int) -> int:
    # Tuning point: a (num_warps, tile) autotune keyed on (Cg, HW, dtype) would go here.
    return min(16, max(1, elems // 256))


_SM_COUNT: dict = {}


def _target_programs(device: torch.device) -> int:
    """About two waves of programs on a GPU; few programs under the CPU interpreter."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        sms = _SM_COUNT.get(idx)
        if sms is None:
            sms = _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
        return 2 * sms
    return _CPU_TARGET_PROGRAMS


def output_memory_format(x: Tensor) -> torch.memory_format:
    """Memory format of the op's output for an (N, C, H, W) input ``x``.

    ``torch.channels_last`` when x's strides are in channels_last order (x is
    channels_last-contiguous, or not dense and ordered like channels_last: torch's
    ``suggest_memory_format``), ``torch.contiguous_format`` otherwise. This is what
    ``F.group_norm`` returns, and what ``torch.empty_like`` gives for any x that is not a dense
    permutation other than NCHW/channels_last.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=_CL):
        return _CL
    from torch._prims_common import suggest_memory_format  # rare path: x is not dense

    return suggest_memory_format(x)


def _dense(x: Tensor) -> Tensor:
    """x if it is NCHW- or channels_last-contiguous, else a copy in its output format."""
    if x.is_contiguous() or x.is_contiguous(memory_format=_CL):
        return x
    return x.contiguous(memory_format=output_memory_format(x))


def _strides(t: Tensor) -> tuple[int, int, int]:
    """(stride_n, stride_c, stride_hw) of a 4-D tensor whose H and W flatten to one index
    (see :func:`_hw_flat`)."""
    sn, sc, sh, sw = t.stride()
    return (sn, sc, sh) if t.shape[3] == 1 else (sn, sc, sw)


def _hw_flat(t: Tensor) -> bool:
    """Whether H and W of a 4-D tensor can be read through one pixel stride (W == 1, H == 1,
    or stride_h == W * stride_w), whatever the N and C strides: e.g. a channel slice
    ``g[:, 1:]`` of an (N, 1 + C, H, W) gradient, NCHW or channels_last."""
    _, _, H, W = t.shape
    return W == 1 or H == 1 or t.stride(2) == W * t.stride(3)


def _is_fused(Cg: int, HW: int, threshold: int) -> bool:
    return Cg * HW <= threshold and _next_pow2(Cg) * _next_pow2(HW) <= _MAX_FUSED_TILE


def _fused_plan(R: int, Cg: int, HW: int, device: torch.device) -> tuple[int, int, int]:
    """(ROWS, BLOCK_C, BLOCK_HW) of the fused forward: pack groups, keep >= ~2 waves on a GPU."""
    block_c, block_hw = _next_pow2(Cg), _next_pow2(HW)
    tile = block_c * block_hw
    pack = max(1, _PACK_TILE // tile)
    occ = _prev_pow2(max(1, R // _target_programs(device)))
    rows = min(pack, occ, _next_pow2(R))
    return rows, block_c, block_hw


def _fused_bwd_plan(N: int, G: int, Cg: int, HW: int, device: torch.device) -> dict:
    """Launch plan of the fused backward: grid (N, GCH), each program a run of GPP groups of one
    sample in steps of ROWS groups. GCH is 1 (the whole sample in one program, so dpos and dtime
    are complete in registers) unless more programs are needed to fill the GPU."""
    block_c, block_hw = _next_pow2(Cg), _next_pow2(HW)
    tile = block_c * block_hw
    target = _target_programs(device)
    occ = _prev_pow2(max(1, (N * G) // target))
    rows = min(max(1, _PACK_TILE // tile), _next_pow2(G), occ)
    packed = block_c == Cg  # C/G a power of two: the packed kernel, runs of whole ROWS
    if packed:
        rows = min(rows, G & -G)
    steps = _cdiv(G, rows)  # steps of ROWS groups per sample
    gch = min(steps, max(1, _cdiv(target, N)))
    gpp = rows * _cdiv(steps, gch)
    gch = _cdiv(G, gpp)
    return {"ROWS": rows, "BLOCK_C": block_c, "BLOCK_HW": block_hw, "GPP": gpp, "GCH": gch,
            "num_warps": _num_warps(rows * tile), "packed": packed}  # fmt: skip


def _split_plan(
    N: int, G: int, Cg: int, HW: int, threshold: int, device: torch.device, programs=None
) -> dict:
    """Chunking of the split regime.

    A tile holds at most ``min(_MAX_SPLIT_TILE, prev_pow2(threshold))`` elements: BLOCK_HW
    pixels of BLOCK_C channels. A chunk is one channel block x HPC pixels (a whole number of
    tiles); chunks per group S = S_C * S_HW are chosen so that N * G * S reaches ``programs``
    (default: about two waves of SMs) where the pixel axis allows it.
    """
    cap = min(_MAX_SPLIT_TILE, _prev_pow2(max(1, threshold)))
    block_hw = min(_next_pow2(HW), cap)
    block_c = min(_next_pow2(Cg), max(1, cap // block_hw))
    s_c = _cdiv(Cg, block_c)
    hw_tiles = _cdiv(HW, block_hw)
    target = programs if programs is not None else _target_programs(device)
    s_hw = min(hw_tiles, max(1, _cdiv(target, N * G * s_c)))
    tiles_per_chunk = _cdiv(hw_tiles, s_hw)
    s_hw = _cdiv(hw_tiles, tiles_per_chunk)
    return {
        "BLOCK_C": block_c,
        "BLOCK_HW": block_hw,
        "S_C": s_c,
        "S_HW": s_hw,
        "HPC": tiles_per_chunk * block_hw,
    }


# constexpr flags of every kernel, in the order of the flag key built by _prepare
_FLAG_NAMES = ("HAS_WEIGHT", "HAS_BETA", "ACT", "HAS_CBIAS", "HAS_EMB", "HAS_TIME",
               "TIME_SCALAR", "HAS_POS", "POS_BCAST")  # fmt: skip
_FWD_PLANS: dict = {}
_BWD_PLANS: dict = {}
_MAX_PLANS = 1024


def _cached(cache: dict, key, make):
    plan = cache.get(key)
    if plan is None:
        if len(cache) >= _MAX_PLANS:
            cache.clear()
        plan = cache[key] = make()
    return plan


def _template(shape, device) -> Tensor:
    """An fp32 tensor kept in a launch plan: ``torch.empty_like`` of it is the cheapest way to
    allocate a buffer of that shape (no shape/dtype/device parsing per call)."""
    return torch.empty(shape, dtype=_F32, device=device)


def _shape_error(name: str, t: Tensor, expected: str) -> ValueError:
    return ValueError(f"{name}: expected shape {expected}, got {tuple(t.shape)}")


def _prepare(x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos):
    """Check the launcher arguments and bring every tensor into a layout the kernels read.

    Returns ``(x, args, t_scalar, stride_t, fkey)``: x NCHW- or channels_last-contiguous (see
    :func:`output_memory_format`); ``args`` = (weight, beta, conv_bias, emb, time, time_map,
    pos) with weight, beta, conv_bias, time_map, pos contiguous, emb of unit column stride,
    time an (N,) or 0-d tensor of any stride (None for a Python float, held in ``t_scalar``);
    ``fkey`` the constexpr flags in the order of ``_FLAG_NAMES``.
    """
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    N, C, H, W_ = x.shape
    G = int(num_groups)
    if G <= 0 or C % G != 0:
        raise ValueError(f"num_groups: expected a positive divisor of C={C}, got {G}")
    a = _ACTS.get(act)
    if a is None:
        raise ValueError(f"act: got {act!r}, expected one of {tuple(_ACTS)}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=_CL)):
        x = x.contiguous(memory_format=output_memory_format(x))
    for name, t in (("weight", weight), ("beta", beta), ("conv_bias", conv_bias)):
        if t is not None and t.shape != (C,):
            raise _shape_error(name, t, f"({C},)")
    if weight is not None:
        weight = weight.contiguous()
    if beta is not None:
        beta = beta.contiguous()
    if conv_bias is not None:
        conv_bias = conv_bias.contiguous()
    if emb is not None:
        if emb.shape != (N, C):
            raise _shape_error("emb", emb, f"({N}, {C})")
        if emb.stride(1) != 1:
            emb = emb.contiguous()
    if (time is None) != (time_map is None):
        raise ValueError("time and time_map must both be given or both be None")
    t_scalar, stride_t, time_scalar = 0.0, 0, False
    if time_map is not None:
        if time_map.shape != (C, H, W_):
            raise _shape_error("time_map", time_map, f"({C}, {H}, {W_})")
        time_map = time_map.contiguous()
        if isinstance(time, Tensor):
            if time.dim() == 1 and time.shape[0] == N:
                stride_t = time.stride(0)
            elif time.dim() != 0:
                raise _shape_error("time", time, f"({N},) or ()")
        elif isinstance(time, numbers.Real) and not isinstance(time, bool):
            t_scalar, time, time_scalar = float(time), None, True
        else:
            raise TypeError(f"time: expected a tensor or a float, got {type(time).__name__}")
    pos_bcast = False
    if pos is not None:
        if pos.dim() != 3 or pos.shape[0] not in (1, N) or pos.shape[1:] != (H, W_):
            raise _shape_error("pos", pos, f"({N}, {H}, {W_}) or (1, {H}, {W_})")
        pos = pos.contiguous()
        pos_bcast = pos.shape[0] == 1 and N != 1
    fkey = (weight is not None, beta is not None, a, conv_bias is not None, emb is not None,
            time_map is not None, time_scalar, pos is not None, pos_bcast)  # fmt: skip
    return x, (weight, beta, conv_bias, emb, time, time_map, pos), t_scalar, stride_t, fkey


def _consts(kernel, values: dict) -> tuple:
    """The constexpr arguments of ``kernel`` in its signature order (they come last in every
    kernel here), so a launch passes them positionally: no keyword dict per call."""
    names = [n for n in kernel.arg_names if n in values]
    assert len(names) == len(values), (kernel, sorted(set(values) - set(names)))
    return tuple(values[n] for n in names)


def _make_fwd_plan(N, C, HW, G, threshold, programs, device, fkey):
    Cg, R = C // G, N * G
    flags = dict(zip(_FLAG_NAMES, fkey))
    if _is_fused(Cg, HW, threshold):
        rows, block_c, block_hw = _fused_plan(R, Cg, HW, device)
        kernel = _gn_fwd_fused_kernel
        if block_c == Cg:  # C/G a power of two: packed runs of groups of one sample
            rows = min(rows, G & -G)  # a power of two that divides G
            kernel = _gn_fwd_packed_kernel
        kw = {"ROWS": rows, "BLOCK_C": block_c, "BLOCK_HW": block_hw, **flags}
        nw = _num_warps(rows * block_c * block_hw)
        launch = (kernel, (_cdiv(R, rows),), _consts(kernel, kw), nw)
        return ("fused", launch, _template((2, N, G), device))
    plan = _split_plan(N, G, Cg, HW, threshold, device, programs)
    S = plan["S_C"] * plan["S_HW"]
    assert plan["S_C"] < 65536 and plan["S_HW"] < 65536  # grid axes 1 and 2
    nw = _num_warps(plan["BLOCK_C"] * plan["BLOCK_HW"])
    blocks = {"BLOCK_C": plan["BLOCK_C"], "BLOCK_HW": plan["BLOCK_HW"]}
    addends = {k: flags[k] for k in _FLAG_NAMES[3:]}
    block_s = min(_next_pow2(S), _MAX_FINALIZE_BLOCK)
    launch = (
        (R, plan["S_C"], plan["S_HW"]),
        _consts(_gn_fwd_split_stats_kernel, {**blocks, **addends}),
        _consts(_gn_fwd_split_apply_kernel, {**blocks, "BLOCK_S": block_s, **flags}),
        nw,
    )
    return ("split", launch, S, plan["HPC"], _template((2, N, G), device))


def forward(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    eps: float,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | float | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward of the fused op with the statistics in one buffer (what the ops layer calls).

    Args:
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos,
            split_threshold, split_programs: as :func:`group_norm_act_fwd`.

    Returns:
        (y, stats): y (N, C, H, W) of x's dtype in :func:`output_memory_format`; stats the
        (2, N, G) fp32 mean (``stats[0]``) and rstd (``stats[1]``).

    Raises:
        ValueError/TypeError: an argument of the wrong shape, rank or kind (naming it).
    """
    y, stats, _ = _forward(
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos,
        split_threshold, split_programs,
    )  # fmt: skip
    return y, stats


def _forward(
    x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos,
    split_threshold=None, split_programs=None,
):  # fmt: skip
    """:func:`forward`, also returning what :func:`_prepare` made of the arguments."""
    prep = _prepare(x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos)
    x, args, t_scalar, stride_t, fkey = prep
    N, C, H, W_ = x.shape
    HW, G = H * W_, int(num_groups)
    R = N * G
    y = torch.empty_like(x)
    if R == 0 or HW == 0:
        return y, x.new_full((2, N, G), float("nan"), dtype=_F32), prep
    threshold = SPLIT_THRESHOLD if split_threshold is None else int(split_threshold)
    plan = _cached(
        _FWD_PLANS,
        (N, C, HW, G, threshold, split_programs, x.device, fkey),
        lambda: _make_fwd_plan(N, C, HW, G, threshold, split_programs, x.device, fkey),
    )
    stats = torch.empty_like(plan[-1])  # (2, N, G) fp32; empty_like of a template is cheapest
    ptrs = [x if t is None else t for t in args]  # weight, beta, addends (x: never read)
    sxn, sxc, sxhw = _strides(x)
    sen = 0 if args[3] is None else args[3].stride(0)
    Cg = C // G
    if plan[0] == "fused":
        kernel, grid, consts, nw = plan[1]
        if kernel is _gn_fwd_packed_kernel:
            kernel.run(
                x, y, *ptrs, stats, R, G, HW, float(eps), t_scalar, sxn, sxc, sxhw, sen,
                stride_t, *consts, grid=grid, warmup=False, num_warps=nw,
            )  # fmt: skip
        else:
            kernel.run(
                x, y, *ptrs, stats, R, G, Cg, HW, float(eps), t_scalar, sxn, sxc, sxhw, sen,
                stride_t, *consts, grid=grid, warmup=False, num_warps=nw,
            )  # fmt: skip
        return y, stats, prep
    _, (grid, stats_c, apply_c, nw), S, hpc, _ = plan
    part = x.new_empty((4, R, S), dtype=_F32)
    _gn_fwd_split_stats_kernel.run(
        x, *ptrs[2:], part, R * S, G, Cg, HW, hpc, t_scalar, sxn, sxc, sxhw, sen, stride_t,
        *stats_c, grid=grid, warmup=False, num_warps=nw,
    )  # fmt: skip
    _gn_fwd_split_apply_kernel.run(
        x, y, *ptrs, part, stats, R, G, Cg, HW, hpc, float(eps), t_scalar, sxn, sxc, sxhw, sen,
        stride_t, *apply_c, grid=grid, warmup=False, num_warps=nw,
    )  # fmt: skip
    return y, stats, prep


def _align16(v: int) -> int:
    return (v + 15) // 16 * 16


def _make_bwd_plan(N, C, HW, G, threshold, programs, device, fkey, needs, fp32, tm_bcast):
    """Everything of the backward that depends only on the signature: kernels' grids and
    constexprs, the workspace layout (offsets aligned to 16 elements), the finalize jobs."""
    nx, nw_, nb, ncb, nemb, nt, ntm, npos = needs
    Cg, R = C // G, N * G
    flags = dict(zip(_FLAG_NAMES, fkey))
    need_demb = nemb or ncb
    tmap_from_du = ntm and nx and fp32
    need_mg = ntm and not tmap_from_du
    outs = {"STORE_DX": nx, "NEED_DW": nw_, "NEED_DB": nb, "NEED_DEMB": need_demb,
            "NEED_DTIME": nt, "NEED_DPOS": npos, "NEED_MG": need_mg}  # fmt: skip
    fused = _is_fused(Cg, HW, threshold)
    if fused:
        p = _fused_bwd_plan(N, G, Cg, HW, device)
        S, P, Q = 1, p["GCH"], p["GCH"]
        kw = {"ROWS": p["ROWS"], "BLOCK_C": p["BLOCK_C"], "BLOCK_HW": p["BLOCK_HW"], **flags,
              **outs}  # fmt: skip
        kernel = _gn_bwd_packed_kernel if p["packed"] else _gn_bwd_fused_kernel
        main = (kernel, (N, p["GCH"]), _consts(kernel, kw), p["num_warps"], p["GPP"])
        part = None
    else:
        p = _split_plan(N, G, Cg, HW, threshold, device, programs)
        s_all = p["S_C"] * p["S_HW"]
        S, P, Q = p["S_HW"], G * s_all, G * p["S_C"]
        blocks = {"BLOCK_C": p["BLOCK_C"], "BLOCK_HW": p["BLOCK_HW"]}
        nwarps = _num_warps(p["BLOCK_C"] * p["BLOCK_HW"])
        grid = (R, p["S_C"], p["S_HW"])
        reduce_c = _consts(_gn_bwd_split_reduce_kernel, {**blocks, **flags})
        dx_kw = {**blocks, "BLOCK_S": min(_next_pow2(s_all), _MAX_FINALIZE_BLOCK), **flags,
                 **outs}  # fmt: skip
        main = (grid, reduce_c, _consts(_gn_bwd_split_dx_kernel, dx_kw), nwarps, p["HPC"])
        part = s_all
    sizes = (
        N * C * S if nw_ else 0,
        N * C * S if nb else 0,
        N * C * S if need_demb else 0,
        N * P if nt else 0,
        N * Q * HW if npos else 0,
        3 * R if need_mg else 0,
    )
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += _align16(size)
    fin = None
    n_chan = _cdiv(C, min(_next_pow2(C), 256)) if (nw_ or nb or need_demb) else 0
    if n_chan or ntm or npos or nt:
        block_cf = min(_next_pow2(C), 256)
        block_tm = min(_next_pow2(C * HW), 1024)
        block_ph = min(_next_pow2(HW), 1024)
        block_p = min(_next_pow2(P), 256)
        n_tmap = _cdiv(C * HW, block_tm) if ntm else 0
        n_pos = _cdiv(HW, block_ph) if npos else 0
        fin_kw = {
            "BLOCK_CF": block_cf,
            "BLOCK_S": min(_next_pow2(S), max(1, _FIN_TILE // block_cf)),
            "BLOCK_TN": min(_next_pow2(N), max(1, _FIN_TILE // block_tm)),
            "BLOCK_TM": block_tm,
            "BLOCK_Q": min(_next_pow2(Q), max(1, _FIN_TILE // block_ph)),
            "BLOCK_PH": block_ph,
            "BLOCK_N": min(_next_pow2(N), max(1, _FIN_TILE // block_p)),
            "BLOCK_P": block_p,
            **flags,
            "NEED_DW": nw_,
            "NEED_DB": nb,
            "NEED_DCB": ncb,
            "NEED_DEMB": nemb,
            "NEED_DTIME": nt,
            "TIME_BCAST": tm_bcast,
            "NEED_DTMAP": ntm,
            "TMAP_FROM_DU": tmap_from_du,
            "NEED_DPOS": npos,
        }
        fin = (
            (n_chan + n_tmap + n_pos + (1 if nt else 0),),
            (n_chan, n_tmap, n_pos),
            _consts(_gn_bwd_finalize_kernel, fin_kw),
        )
    return fused, main, part, tuple(offsets), (S, P, Q), fin, _template((max(total, 1),), device)


def backward(
    dy: Tensor,
    x: Tensor,
    stats: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | float | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    needs,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple:
    """Backward of the fused op with the statistics in one buffer (what the ops layer calls).

    Args:
        dy: (N, C, H, W) gradient of y, any layout.
        x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos: as in
            :func:`forward`.
        stats: the (2, N, G) fp32 mean and rstd of :func:`forward`.
        needs: 8 bools (x, weight, beta, conv_bias, emb, time, time_map, pos): which grads.
        split_threshold, split_programs: as in :func:`forward`.

    Returns:
        As :func:`group_norm_act_bwd`.

    Raises:
        ValueError/TypeError: an argument of the wrong shape, rank or kind (naming it).
    """
    if len(needs) != 8:
        raise ValueError(f"needs: expected 8 bools, got {len(needs)}")
    x, args, t_scalar, stride_t, fkey = _prepare(
        x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos
    )
    return _backward(dy, x, stats, int(num_groups), args, t_scalar, stride_t, fkey, needs,
                     split_threshold, split_programs)  # fmt: skip


def _backward(dy, x, stats, G, args, t_scalar, stride_t, fkey, needs, split_threshold=None,
              split_programs=None):  # fmt: skip
    """:func:`backward` on arguments that went through :func:`_prepare` (x dense, ...)."""
    weight, beta, cb, emb, time, tmap, pos = args
    N, C, H, W_ = x.shape
    HW = H * W_
    R = N * G
    if dy.shape != x.shape:
        raise ValueError(f"dy: expected shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    if stats.numel() != 2 * R or stats.dtype != _F32:
        raise ValueError(f"stats: expected {2 * R} fp32 values, got {stats.numel()} {stats.dtype}")
    if not stats.is_contiguous():
        stats = stats.contiguous()
    nx = bool(needs[0])
    nw_ = bool(needs[1]) and weight is not None
    nb = bool(needs[2]) and beta is not None
    ncb = bool(needs[3]) and cb is not None
    nemb = bool(needs[4]) and emb is not None
    nt = bool(needs[5]) and time is not None
    ntm = bool(needs[6]) and tmap is not None
    npos = bool(needs[7]) and pos is not None
    if not _hw_flat(dy):  # the kernels read dy through its own (n, c, pixel) strides
        dy = dy.contiguous(memory_format=output_memory_format(x))
    tm_bcast = nt and time.dim() == 0
    dx = torch.empty_like(x) if nx else None
    dweight = torch.empty_like(weight) if nw_ else None
    dbeta = torch.empty_like(beta) if nb else None
    dcb = torch.empty_like(cb) if ncb else None
    demb = torch.empty_like(emb, memory_format=torch.contiguous_format) if nemb else None
    dtime = torch.empty_like(time, memory_format=torch.contiguous_format) if nt else None
    dtmap = torch.empty_like(tmap) if ntm else None
    dpos = torch.empty_like(pos) if npos else None
    grads = (dx, dweight, dbeta, dcb, demb, dtime, dtmap, dpos)
    if R == 0 or HW == 0:  # empty: dx empty, reductions over nothing are zero
        return tuple(None if g is None else g.zero_() for g in grads)

    threshold = SPLIT_THRESHOLD if split_threshold is None else int(split_threshold)
    flags8 = (nx, nw_, nb, ncb, nemb, nt, ntm, npos)
    fp32 = x.dtype == _F32
    fused, main, part_s, offs, (S, P, Q), fin, ws_tmpl = _cached(
        _BWD_PLANS,
        (N, C, HW, G, threshold, split_programs, x.device, fkey, flags8, fp32, tm_bcast),
        lambda: _make_bwd_plan(
            N, C, HW, G, threshold, split_programs, x.device, fkey, flags8, fp32, tm_bcast
        ),  # fmt: skip
    )
    ws = torch.empty_like(ws_tmpl)
    ptrs = [x if t is None else t for t in args]
    sxn, sxc, sxhw = _strides(x)
    sdn, sdc, sdhw = _strides(dy)
    sen = 0 if emb is None else emb.stride(0)
    scalars = (t_scalar, sxn, sxc, sxhw, sdn, sdc, sdhw, sen, stride_t)
    dx_arg = stats if dx is None else dx
    Cg = C // G
    if fused:
        kernel, grid, consts, nw, gpp = main
        kernel.run(
            dy, x, dx_arg, *ptrs, stats, ws, *offs, R, G, Cg, HW, gpp, *scalars, *consts,
            grid=grid, warmup=False, num_warps=nw,
        )  # fmt: skip
    elif any(flags8):
        grid, reduce_c, dx_c, nw, hpc = main
        part = x.new_empty((3, R, part_s), dtype=_F32)
        _gn_bwd_split_reduce_kernel.run(
            dy, x, *ptrs, stats, part, R, R * part_s, G, Cg, HW, hpc, *scalars, *reduce_c,
            grid=grid, warmup=False, num_warps=nw,
        )  # fmt: skip
        _gn_bwd_split_dx_kernel.run(
            dy, x, dx_arg, *ptrs, stats, part, ws, *offs, R, R * part_s, G, Cg, HW, hpc,
            *scalars, *dx_c, grid=grid, warmup=False, num_warps=nw,
        )  # fmt: skip
    if fin is not None:
        grid, (n_chan, n_tmap, n_pos), consts = fin
        outs = [stats if g is None else g for g in grads[1:]]
        _gn_bwd_finalize_kernel.run(
            ws, *offs, *outs, dy, x, dx_arg, *ptrs, stats, N, C, G, Cg, HW, S, P, Q, *scalars,
            n_chan, n_tmap, n_pos, *consts, grid=grid, warmup=False, num_warps=4,
        )  # fmt: skip
    return grads


def group_norm_act_fwd(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    eps: float,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | float | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    *,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of the fused op.

    Args:
        x: (N, C, H, W) fp32/fp16/bf16, any strides (a tensor that is neither NCHW- nor
            channels_last-contiguous is copied to its output format first).
        num_groups: G, divides C.
        weight, beta: (C,) affine, or None; any strides.
        eps: added to the variance.
        act: "identity", "relu" or "silu".
        conv_bias: (C,) or None. emb: (N, C) or None. time: (N,) or 0-d tensor or a Python
            float, with time_map (C, H, W); or both None. pos: (N, H, W) or (1, H, W), or None.
            Any float dtypes and any strides.
        split_threshold: group size above which the split regime is used (default
            :data:`SPLIT_THRESHOLD`); also caps a split tile's elements.
        split_programs: split regime: number of programs to aim for (default ~2 waves of SMs).

    Returns:
        (y, mean, rstd): y of x's dtype in :func:`output_memory_format` (x's strides when x is
        NCHW- or channels_last-contiguous); mean, rstd (N, G) fp32 (rstd NaN for a group whose
        variance overflows fp32).
    """
    y, stats = forward(
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos,
        split_threshold, split_programs,
    )  # fmt: skip
    return y, stats[0], stats[1]


def group_norm_act_bwd(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | float | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    needs,
    *,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple:
    """Backward of the fused op.

    Args:
        dy: (N, C, H, W) gradient of y, any layout: read through its own strides when H and
            W flatten to one pixel stride (any N and C strides, 0 included), copied otherwise.
        x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos: as in
            :func:`group_norm_act_fwd`.
        mean, rstd: (N, G) fp32 from the forward.
        needs: 8 bools (x, weight, beta, conv_bias, emb, time, time_map, pos): which grads.
        split_threshold, split_programs: as in :func:`group_norm_act_fwd`.

    Returns:
        (dx, dweight, dbeta, dconv_bias, demb, dtime, dtime_map, dpos), None where not needed
        (or where the argument is None, or for a float time); each of its argument's dtype and
        shape (dpos: pos's shape, dtime: time's), dx in y's memory format.
    """
    stats = torch.stack((mean.reshape(-1).to(_F32), rstd.reshape(-1).to(_F32)))
    return backward(
        dy, x, stats, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos, needs,
        split_threshold, split_programs,
    )  # fmt: skip
