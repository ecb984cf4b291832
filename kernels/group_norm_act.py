"""Fused ``act(group_norm(x + addends))``: Triton kernels and their launchers.

The op (DESIGN section 1)::

    u[n,c,h,w] = x[n,c,h,w] + conv_bias[c] + emb[n,c] + time[n] * time_map[c,h,w] + pos[n,h,w]
    y[n,c,h,w] = act(weight[c] * (u - mean[n,g]) * rstd[n,g] + beta[c]),   g = c // (C/G)

Every addend and the affine are optional (constexpr flags, no runtime branches); act is identity,
relu or silu. All arithmetic is fp32 whatever the storage dtypes; mean/rstd are fp32 with a
centred variance (two-pass over a register tile, Chan's combination across tiles and chunks).

Indexing: a tile is ``[rows, channels, pixels]`` with H and W flattened to one pixel index
``hw`` of stride ``stride_hw``; the strides of x (and of dy) are passed explicitly, so the same
kernels serve NCHW-contiguous and channels_last tensors (Triton specialises a stride of 1 and
coalesces along the contiguous axis).

Two regimes, chosen per call from the group size ``L = C/G * H * W``:

* fused (``L <= split_threshold`` and the padded group tile ``next_pow2(C/G) * next_pow2(H*W)``
  at most 8192 elements): each program holds ``ROWS`` whole groups in registers and does the
  whole op in one read and one write (forward) or one pass (backward). This is the NODE case
  (N128 C64 8x8 G32: 128 values per group).
* split (otherwise, e.g. G=1 on N128 C128 32x32: 131072 values per group): each group is cut
  into chunks of ``BLOCK_C`` channels x a range of pixels, spread over enough programs to fill at
  least about two waves of SMs. Forward: per-chunk (count, mean, M2) partials of ``u - K`` (K:
  the group's first value, a shift that keeps means far from zero precise), a tiny finalize
  kernel (Chan combination) writing mean/rstd, then an elementwise apply kernel. Backward:
  per-chunk partial sums of gx and gx*xhat (plus per-(n,c) partials of the weight grads), a
  torch sum over the tiny partials buffer, then an elementwise dx kernel.

Parameter gradients are reduced deterministically: kernels write fp32 partials per (n, c, chunk)
(or per group/chunk), and the launcher sums them with torch. No atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["SPLIT_THRESHOLD", "group_norm_act_bwd", "group_norm_act_fwd"]

# Group sizes (C/G * H * W) above this use the split regime. In the split regime it also caps
# the elements of one register tile, so lowering it (tests do) gives smaller tiles and more
# chunks per group.
SPLIT_THRESHOLD: int = 4096

_ACTS = {"identity": 0, "relu": 1, "silu": 2}
_MAX_FUSED_TILE = 8192  # padded elements of one group tile in the fused regime (registers)
_PACK_TILE = 4096  # elements a fused program aims to hold when it packs several groups
_MAX_SPLIT_TILE = 4096  # elements of one tile in the split regime
_MAX_FINALIZE_BLOCK = 1024  # partials combined per step by the finalize kernel
_CPU_TARGET_PROGRAMS = 2  # interpreter: few, large programs are fastest


# ----------------------------------------------------------------------------------------------
# jit helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_u(
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding, row stride stride_en
    Time,  # (N,) time
    TMap,  # (C, H, W) contiguous time map
    Pos,  # (N, H, W) or (1, H, W) contiguous positional embedding
    n,  # sample index (int64), broadcastable to the tile
    c,  # channel index, broadcastable to the tile
    hw,  # flattened pixel index, broadcastable to the tile
    m_n,  # mask of valid samples (shape of n)
    m_c,  # mask of valid (n, c) (shape of n + c)
    m_hw,  # mask of valid (n, hw) (shape of n + hw)
    m,  # mask of valid elements (tile shape)
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    HW,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
):
    """u = x + conv_bias + emb + time * time_map + pos in fp32 (same order as the reference);
    0 where m is False."""
    u = tl.load(X + n * stride_xn + c * stride_xc + hw * stride_xhw, mask=m, other=0.0)
    u = u.to(tl.float32)
    if HAS_CBIAS:
        u += tl.load(CBias + c + n * 0, mask=m_c, other=0.0).to(tl.float32)
    if HAS_EMB:
        u += tl.load(Emb + n * stride_en + c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_TIME:
        t = tl.load(Time + n, mask=m_n, other=0.0).to(tl.float32)
        tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
        u += t * tm
    if HAS_POS:
        if POS_BCAST:
            p = tl.load(Pos + hw + n * 0, mask=m_hw, other=0.0)
        else:
            p = tl.load(Pos + n * HW + hw, mask=m_hw, other=0.0)
        u += p.to(tl.float32)
    return tl.where(m, u, 0.0)


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
    """g = dy * act'(z)."""
    if ACT == 1:
        g = tl.where(z > 0.0, dy, 0.0)
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
    u,  # fp32 tile of u = x + addends (from _load_u)
    mean,  # fp32 group mean, broadcastable to the tile
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
    """Backward recompute shared by every backward kernel: xhat = (u - mean) * rstd and
    g = dy * act'(weight * xhat + beta), both 0 where m is False."""
    xhat = tl.where(m, (u - mean) * rstd, 0.0)
    dy = tl.load(DY + n * stride_dyn + c * stride_dyc + hw * stride_dyhw, mask=m, other=0.0)
    z = _affine(xhat, W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
    g = tl.where(m, _act_grad(dy.to(tl.float32), z, ACT), 0.0)
    return xhat, g


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
    Mean,  # (N * G,) fp32 out
    Rstd,  # (N * G,) fp32 out
    R,  # N * G
    G,
    Cg,  # C // G
    HW,
    eps,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
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
    m_hw = m_n & (hw < HW)
    m = m_c & (hw < HW)
    u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                stride_xn, stride_xc, stride_xhw, stride_en, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
    L = Cg * HW
    mean = tl.sum(tl.sum(u, axis=2), axis=1) / L
    d = tl.where(m, u - mean[:, None, None], 0.0)
    var = tl.sum(tl.sum(d * d, axis=2), axis=1) / L  # centred
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(Mean + r, mean[:, None, None], mask=m_n)
    tl.store(Rstd + r, rstd[:, None, None], mask=m_n)
    z = _affine(d * rstd[:, None, None], W, B, c, m_c, HAS_WEIGHT, HAS_BETA)
    y = _act_fwd(z, ACT)
    tl.store(Y + n * stride_xn + c * stride_xc + hw * stride_xhw, y.to(Y.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------
# forward, split regime: stats partials per chunk -> finalize (Chan) -> elementwise apply
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
    PCnt,  # (N * G, S) fp32 out: element count of each chunk
    PMean,  # (N * G, S) fp32 out: mean of each chunk
    PM2,  # (N * G, S) fp32 out: sum of squared deviations from the chunk mean
    PShift,  # (N * G, S) fp32 out: the group's shift K (same for every chunk of a group)
    G,
    Cg,
    HW,
    HPC,  # pixels per chunk (a multiple of BLOCK_HW)
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
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
    k = _load_u(X, CBias, Emb, Time, TMap, Pos, n, (r - n * G) * Cg, 0, m_n, m_n, m_n, m_n,
                stride_xn, stride_xc, stride_xhw, stride_en, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
    # per-channel running (mean, M2) over the pixel tiles; every channel sees the same count
    mean_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2_c = tl.zeros([BLOCK_C], dtype=tl.float32)
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m_hw = hw < hw_hi
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
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
    tl.store(PCnt + s, nch * nhw)
    tl.store(PMean + s, mean)
    tl.store(PM2 + s, m2)
    tl.store(PShift + s, k)


@triton.jit
def _gn_split_finalize_kernel(
    PCnt,  # (N * G, S) fp32 chunk counts
    PMean,  # (N * G, S) fp32 chunk means of u - K
    PM2,  # (N * G, S) fp32 chunk M2
    PShift,  # (N * G, S) fp32 shift K of each chunk's group
    Mean,  # (N * G,) fp32 out
    Rstd,  # (N * G,) fp32 out
    S,
    eps,
    BLOCK_S: tl.constexpr,
):
    # Chan: mean = sum(n_i mean_i) / n;  M2 = sum(M2_i + n_i (mean_i - mean)^2);  var = M2 / n
    # (the chunk means are of u - K; the mean of u is K + mean)
    r = tl.program_id(0).to(tl.int64)
    base = r * S
    cnt_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    sum_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        cnt = tl.load(PCnt + base + s, mask=ms, other=0.0)
        cnt_acc += cnt
        sum_acc += cnt * tl.load(PMean + base + s, mask=ms, other=0.0)
    total = tl.sum(cnt_acc, axis=0)
    mean = tl.sum(sum_acc, axis=0) / total
    m2_acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        ms = s < S
        cnt = tl.load(PCnt + base + s, mask=ms, other=0.0)
        dm = tl.load(PMean + base + s, mask=ms, other=0.0) - mean
        m2_acc += tl.load(PM2 + base + s, mask=ms, other=0.0) + cnt * dm * dm
    var = tl.sum(m2_acc, axis=0) / total
    tl.store(Mean + r, tl.load(PShift + base) + mean)
    tl.store(Rstd + r, 1.0 / tl.sqrt(var + eps))


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
    Mean,  # (N * G,) fp32
    Rstd,  # (N * G,) fp32
    G,
    Cg,
    HW,
    HPC,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_en,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
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
    mean = tl.load(Mean + r)
    rstd = tl.load(Rstd + r)
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m_hw = hw < hw_hi
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
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
# With xhat = (u - mean) * rstd, z = w * xhat + b, g = dy * act'(z)
#   (identity' = 1, relu'(z) = [z > 0], silu'(z) = s * (1 + z * (1 - s)), s = sigmoid(z)),
# gx = g * w, and per group (L = C/G * H * W values):
#   du = rstd * (gx - mean(gx) - xhat * mean(gx * xhat))
#   dx = du                          dweight[c]    = sum_{n,hw} g * xhat
#   dbeta[c] = sum_{n,hw} g          dconv_bias[c] = sum_{n,hw} du
#   demb[n,c] = sum_hw du            dtime[n]      = sum_{c,hw} du * time_map
#   dpos[n,hw] = sum_c du (and over n for a (1, H, W) pos)
#   dtime_map[c,hw] = sum_n du * time[n]
# The kernels write fp32 partials of dweight, dbeta, demb (per n, c, pixel chunk), dtime (per
# group chunk) and dpos (per n, group, channel chunk, pixel); the launcher sums them with torch.
# dtime_map needs a sum over n: the launcher computes it with torch from an fp32 du (for now).
# ----------------------------------------------------------------------------------------------


@triton.jit
def _gn_bwd_fused_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    DX,  # (N, C, H, W) out, x's dtype, same strides as X
    DU,  # (N, C, H, W) fp32 out (for dtime_map), same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Mean,  # (N * G,) fp32
    Rstd,  # (N * G,) fp32
    DWp,  # (N, C) fp32 out: sum_hw g * xhat
    DBp,  # (N, C) fp32 out: sum_hw g
    DEmbP,  # (N, C) fp32 out: sum_hw du
    DTimeP,  # (N * G,) fp32 out: sum_{c in g, hw} du * time_map
    DPosP,  # (N * G, HW) fp32 out: sum_{c in g} du
    R,
    G,
    Cg,
    HW,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    ROWS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    STORE_DU: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    NEED_DPOS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r = pid * ROWS + tl.arange(0, ROWS)[:, None, None]
    cl = tl.arange(0, BLOCK_C)[None, :, None]
    hw = tl.arange(0, BLOCK_HW)[None, None, :]
    n = r // G
    c = (r - n * G) * Cg + cl
    m_n = r < R
    m_c = m_n & (cl < Cg)
    m_hw = m_n & (hw < HW)
    m = m_c & (hw < HW)
    u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                stride_xn, stride_xc, stride_xhw, stride_en, HW,
                HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
    mean = tl.load(Mean + r, mask=m_n, other=0.0)
    rstd = tl.load(Rstd + r, mask=m_n, other=0.0)
    xhat, g = _recompute_g(DY, W, B, u, mean, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                           stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
    gx = _times_weight(g, W, c, m_c, HAS_WEIGHT)
    L = Cg * HW
    mgx = tl.sum(tl.sum(gx, axis=2), axis=1) / L
    mgxh = tl.sum(tl.sum(gx * xhat, axis=2), axis=1) / L
    du = rstd * (gx - mgx[:, None, None] - xhat * mgxh[:, None, None])
    du = tl.where(m, du, 0.0)
    off = n * stride_xn + c * stride_xc + hw * stride_xhw
    if STORE_DX:
        tl.store(DX + off, du.to(DX.dtype.element_ty), mask=m)
    if STORE_DU:
        tl.store(DU + off, du, mask=m)
    nc = n * (G * Cg) + c  # flat (n, c) index into the (N, C) partials
    if NEED_DW:
        tl.store(DWp + nc, tl.sum(g * xhat, axis=2)[:, :, None], mask=m_c)
    if NEED_DB:
        tl.store(DBp + nc, tl.sum(g, axis=2)[:, :, None], mask=m_c)
    if NEED_DEMB:
        tl.store(DEmbP + nc, tl.sum(du, axis=2)[:, :, None], mask=m_c)
    if NEED_DTIME:
        tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
        dt = tl.sum(tl.sum(du * tm, axis=2), axis=1)
        tl.store(DTimeP + r, dt[:, None, None], mask=m_n)
    if NEED_DPOS:
        tl.store(DPosP + r * HW + hw, tl.sum(du, axis=1)[:, None, :], mask=m_hw)


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
    Mean,  # (N * G,) fp32
    Rstd,  # (N * G,) fp32
    PGx,  # (N * G, S) fp32 out: chunk sums of gx
    PGxh,  # (N * G, S) fp32 out: chunk sums of gx * xhat
    DWp,  # (N, C, S_HW) fp32 out: sum over the chunk's pixels of g * xhat
    DBp,  # (N, C, S_HW) fp32 out: sum over the chunk's pixels of g
    G,
    Cg,
    HW,
    HPC,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    NEED_DU: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    n = r // G
    cl1 = ic * BLOCK_C + tl.arange(0, BLOCK_C)
    mc1 = cl1 < Cg
    cl = cl1[:, None]
    c = (r - n * G) * Cg + cl
    c1 = (r - n * G) * Cg + cl1
    m_n = n >= 0
    m_c = cl < Cg
    mean = tl.load(Mean + r)
    rstd = tl.load(Rstd + r)
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    acc_g = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum g
    acc_gxh = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum g * xhat
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m_hw = hw < hw_hi
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
        xhat, g = _recompute_g(DY, W, B, u, mean, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                               stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        acc_g += tl.sum(g, axis=1)
        acc_gxh += tl.sum(g * xhat, axis=1)
    if NEED_DU:
        # gx = g * w: the chunk sums of gx and gx * xhat are weighted sums of the channel sums
        if HAS_WEIGHT:
            w1 = tl.load(W + c1, mask=mc1, other=0.0).to(tl.float32)
            sgx = tl.sum(acc_g * w1, axis=0)
            sgxh = tl.sum(acc_gxh * w1, axis=0)
        else:
            sgx = tl.sum(acc_g, axis=0)
            sgxh = tl.sum(acc_gxh, axis=0)
        s = r * (tl.num_programs(1) * tl.num_programs(2)) + ic * tl.num_programs(2) + ih
        tl.store(PGx + s, sgx)
        tl.store(PGxh + s, sgxh)
    pc = (n * (G * Cg) + c1) * tl.num_programs(2) + ih  # (n, c, ih) into (N, C, S_HW)
    if NEED_DW:
        tl.store(DWp + pc, acc_gxh, mask=mc1)
    if NEED_DB:
        tl.store(DBp + pc, acc_g, mask=mc1)


@triton.jit
def _gn_bwd_split_dx_kernel(
    DY,  # (N, C, H, W) upstream gradient, strides (stride_dyn, stride_dyc, stride_dyhw)
    X,  # (N, C, H, W) input, strides (stride_xn, stride_xc, stride_xhw)
    DX,  # (N, C, H, W) out, x's dtype, same strides as X
    DU,  # (N, C, H, W) fp32 out (for dtime_map), same strides as X
    W,  # (C,) weight
    B,  # (C,) beta
    CBias,  # (C,) conv bias
    Emb,  # (N, C) embedding
    Time,  # (N,) time
    TMap,  # (C, H, W) time map
    Pos,  # (N|1, H, W) positional embedding
    Mean,  # (N * G,) fp32
    Rstd,  # (N * G,) fp32
    MGx,  # (N * G,) fp32: mean of gx over the group
    MGxh,  # (N * G,) fp32: mean of gx * xhat over the group
    DEmbP,  # (N, C, S_HW) fp32 out: sum over the chunk's pixels of du
    DTimeP,  # (N * G, S) fp32 out: chunk sums of du * time_map
    DPosP,  # (N * G * S_C, HW) fp32 out: sum over the chunk's channels of du
    G,
    Cg,
    HW,
    HPC,
    stride_xn,
    stride_xc,
    stride_xhw,
    stride_dyn,
    stride_dyc,
    stride_dyhw,
    stride_en,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BETA: tl.constexpr,
    HAS_CBIAS: tl.constexpr,
    HAS_EMB: tl.constexpr,
    HAS_TIME: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_BCAST: tl.constexpr,
    ACT: tl.constexpr,
    STORE_DX: tl.constexpr,
    STORE_DU: tl.constexpr,
    NEED_DEMB: tl.constexpr,
    NEED_DTIME: tl.constexpr,
    NEED_DPOS: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    ic = tl.program_id(1)
    ih = tl.program_id(2)
    n = r // G
    cl1 = ic * BLOCK_C + tl.arange(0, BLOCK_C)
    mc1 = cl1 < Cg
    cl = cl1[:, None]
    c = (r - n * G) * Cg + cl
    c1 = (r - n * G) * Cg + cl1
    m_n = n >= 0
    m_c = cl < Cg
    mean = tl.load(Mean + r)
    rstd = tl.load(Rstd + r)
    mgx = tl.load(MGx + r)
    mgxh = tl.load(MGxh + r)
    hw_lo = ih * HPC
    hw_hi = tl.minimum(hw_lo + HPC, HW)
    acc_du = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum du
    acc_dt = tl.zeros([BLOCK_C], dtype=tl.float32)  # per channel: sum du * time_map
    for h0 in range(hw_lo, hw_hi, BLOCK_HW):
        hw = h0 + tl.arange(0, BLOCK_HW)[None, :]
        m_hw = hw < hw_hi
        m = m_c & m_hw
        u = _load_u(X, CBias, Emb, Time, TMap, Pos, n, c, hw, m_n, m_c, m_hw, m,
                    stride_xn, stride_xc, stride_xhw, stride_en, HW,
                    HAS_CBIAS, HAS_EMB, HAS_TIME, HAS_POS, POS_BCAST)  # fmt: skip
        xhat, g = _recompute_g(DY, W, B, u, mean, rstd, n, c, hw, m_c, m, stride_dyn, stride_dyc,
                               stride_dyhw, HAS_WEIGHT, HAS_BETA, ACT)  # fmt: skip
        gx = _times_weight(g, W, c, m_c, HAS_WEIGHT)
        du = tl.where(m, rstd * (gx - mgx - xhat * mgxh), 0.0)
        off = n * stride_xn + c * stride_xc + hw * stride_xhw
        if STORE_DX:
            tl.store(DX + off, du.to(DX.dtype.element_ty), mask=m)
        if STORE_DU:
            tl.store(DU + off, du, mask=m)
        if NEED_DEMB:
            acc_du += tl.sum(du, axis=1)
        if NEED_DTIME:
            tm = tl.load(TMap + c * HW + hw, mask=m, other=0.0).to(tl.float32)
            acc_dt += tl.sum(du * tm, axis=1)
        if NEED_DPOS:
            prow = r * tl.num_programs(1) + ic
            tl.store(DPosP + prow * HW + hw, tl.sum(du, axis=0)[None, :], mask=m_hw)
    if NEED_DEMB:
        pc = (n * (G * Cg) + c1) * tl.num_programs(2) + ih
        tl.store(DEmbP + pc, acc_du, mask=mc1)
    if NEED_DTIME:
        s = r * (tl.num_programs(1) * tl.num_programs(2)) + ic * tl.num_programs(2) + ih
        tl.store(DTimeP + s, tl.sum(acc_dt, axis=0))


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------


def _next_pow2(v: int) -> int:
    return 1 << max(0, (int(v) - 1).bit_length())


def _prev_pow2(v: int) -> int:
    return 1 << max(0, int(v).bit_length() - 1)


def _num_warps(elems: int) -> int:
    # Tuning point: a (num_warps, tile) autotune keyed on (Cg, HW, dtype) would go here.
    return min(16, max(1, elems // 256))


def _target_programs(device: torch.device) -> int:
    """About two waves of programs on a GPU; few programs under the CPU interpreter."""
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return _CPU_TARGET_PROGRAMS


def _strides(t: Tensor, name: str) -> tuple[int, int, int]:
    """(stride_n, stride_c, stride_hw) of an NCHW- or channels_last-contiguous 4-D tensor."""
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(
            f"{name}: expected an NCHW- or channels_last-contiguous tensor, got shape "
            f"{tuple(t.shape)} with strides {t.stride()}"
        )
    _, _, H, W = t.shape
    sn, sc, sh, sw = t.stride()
    if W == 1:
        shw = sh
    else:
        if H > 1 and sh != W * sw:
            raise ValueError(f"{name}: H and W cannot be flattened, strides {t.stride()}")
        shw = sw
    return sn, sc, shw


def _is_fused(Cg: int, HW: int, threshold: int) -> bool:
    return Cg * HW <= threshold and _next_pow2(Cg) * _next_pow2(HW) <= _MAX_FUSED_TILE


def _fused_plan(R: int, Cg: int, HW: int, device: torch.device) -> tuple[int, int, int]:
    """(ROWS, BLOCK_C, BLOCK_HW) of the fused regime: pack groups, keep >= ~2 waves on a GPU."""
    block_c, block_hw = _next_pow2(Cg), _next_pow2(HW)
    tile = block_c * block_hw
    pack = max(1, _PACK_TILE // tile)
    occ = _prev_pow2(max(1, R // _target_programs(device)))
    rows = min(pack, occ, _next_pow2(R))
    return rows, block_c, block_hw


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
    s_c = triton.cdiv(Cg, block_c)
    hw_tiles = triton.cdiv(HW, block_hw)
    target = programs if programs is not None else _target_programs(device)
    s_hw = min(hw_tiles, max(1, triton.cdiv(target, N * G * s_c)))
    tiles_per_chunk = triton.cdiv(hw_tiles, s_hw)
    s_hw = triton.cdiv(hw_tiles, tiles_per_chunk)
    return {
        "BLOCK_C": block_c,
        "BLOCK_HW": block_hw,
        "S_C": s_c,
        "S_HW": s_hw,
        "HPC": tiles_per_chunk * block_hw,
    }


def _addend_flags(conv_bias, emb, time, time_map, pos, N: int, C: int, HW: int) -> dict:
    if (time is None) != (time_map is None):
        raise ValueError("time and time_map must both be given or both be None")
    if conv_bias is not None and conv_bias.shape != (C,):
        raise ValueError(f"conv_bias: expected shape ({C},), got {tuple(conv_bias.shape)}")
    if emb is not None and (emb.shape != (N, C) or emb.stride(1) != 1):
        raise ValueError(f"emb: expected a ({N}, {C}) row-contiguous tensor, got {emb.shape}")
    if time is not None:
        if time.shape != (N,):
            raise ValueError(f"time: expected shape ({N},), got {tuple(time.shape)}")
        if time_map.numel() != C * HW or not time_map.is_contiguous():
            raise ValueError(f"time_map: expected a contiguous (C, H, W) tensor of {C * HW}")
    pos_bcast = False
    if pos is not None:
        if pos.dim() != 3 or pos.shape[0] not in (1, N) or pos.shape[1] * pos.shape[2] != HW:
            raise ValueError(f"pos: expected a (N|1, H, W) tensor, got {tuple(pos.shape)}")
        if not pos.is_contiguous():
            raise ValueError("pos: expected a contiguous tensor")
        pos_bcast = pos.shape[0] == 1
    return {
        "HAS_CBIAS": conv_bias is not None,
        "HAS_EMB": emb is not None,
        "HAS_TIME": time is not None,
        "HAS_POS": pos is not None,
        "POS_BCAST": pos_bcast,
    }


def group_norm_act_fwd(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    eps: float,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    *,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of the fused op.

    Args:
        x: (N, C, H, W) fp32/fp16/bf16, NCHW- or channels_last-contiguous, N >= 1.
        num_groups: G, divides C.
        weight, beta: (C,) affine, or None.
        eps: added to the variance.
        act: "identity", "relu" or "silu".
        conv_bias: (C,) or None. emb: (N, C) or None. time: (N,) with time_map (C, H, W), or
            both None. pos: (N, H, W) or (1, H, W), or None. Any float dtypes.
        split_threshold: group size above which the split regime is used (default
            :data:`SPLIT_THRESHOLD`); also caps a split tile's elements.
        split_programs: split regime: number of programs to aim for (default ~2 waves of SMs).

    Returns:
        (y, mean, rstd): y of x's dtype and strides; mean, rstd (N, G) fp32.
    """
    N, C, H, W_ = x.shape
    HW = H * W_
    G = int(num_groups)
    if C % G != 0:
        raise ValueError(f"num_groups: {G} does not divide C={C}")
    if act not in _ACTS:
        raise ValueError(f"act: got {act!r}, expected one of {tuple(_ACTS)}")
    Cg, R = C // G, N * G
    threshold = SPLIT_THRESHOLD if split_threshold is None else int(split_threshold)
    flags = _addend_flags(conv_bias, emb, time, time_map, pos, N, C, HW)
    sxn, sxc, sxhw = _strides(x, "x")
    y = torch.empty_like(x)
    assert y.stride() == x.stride()
    mean = torch.empty((N, G), device=x.device, dtype=torch.float32)
    rstd = torch.empty((N, G), device=x.device, dtype=torch.float32)
    dummy = x
    ptrs = [
        conv_bias if conv_bias is not None else dummy,
        emb if emb is not None else dummy,
        time if time is not None else dummy,
        time_map if time_map is not None else dummy,
        pos if pos is not None else dummy,
    ]
    sen = emb.stride(0) if emb is not None else 0
    w = weight if weight is not None else dummy
    b = beta if beta is not None else dummy
    aff = {"HAS_WEIGHT": weight is not None, "HAS_BETA": beta is not None, "ACT": _ACTS[act]}

    if _is_fused(Cg, HW, threshold):
        rows, block_c, block_hw = _fused_plan(R, Cg, HW, x.device)
        _gn_fwd_fused_kernel[(triton.cdiv(R, rows),)](
            x, y, w, b, *ptrs, mean, rstd, R, G, Cg, HW, float(eps), sxn, sxc, sxhw, sen,
            ROWS=rows, BLOCK_C=block_c, BLOCK_HW=block_hw, **aff, **flags,
            num_warps=_num_warps(rows * block_c * block_hw),
        )  # fmt: skip
        return y, mean, rstd

    plan = _split_plan(N, G, Cg, HW, threshold, x.device, split_programs)
    S = plan["S_C"] * plan["S_HW"]
    assert plan["S_C"] < 65536 and plan["S_HW"] < 65536  # grid axes 1 and 2
    grid = (R, plan["S_C"], plan["S_HW"])
    nw = _num_warps(plan["BLOCK_C"] * plan["BLOCK_HW"])
    pcnt = torch.empty((R, S), device=x.device, dtype=torch.float32)
    pmean = torch.empty_like(pcnt)
    pm2 = torch.empty_like(pcnt)
    pshift = torch.empty_like(pcnt)
    _gn_fwd_split_stats_kernel[grid](
        x, *ptrs, pcnt, pmean, pm2, pshift, G, Cg, HW, plan["HPC"], sxn, sxc, sxhw, sen,
        BLOCK_C=plan["BLOCK_C"], BLOCK_HW=plan["BLOCK_HW"], **flags, num_warps=nw,
    )  # fmt: skip
    block_s = min(_next_pow2(S), _MAX_FINALIZE_BLOCK)
    _gn_split_finalize_kernel[(R,)](
        pcnt, pmean, pm2, pshift, mean, rstd, S, float(eps), BLOCK_S=block_s,
        num_warps=max(1, min(4, block_s // 256)),
    )  # fmt: skip
    _gn_fwd_split_apply_kernel[grid](
        x, y, w, b, *ptrs, mean, rstd, G, Cg, HW, plan["HPC"], sxn, sxc, sxhw, sen,
        BLOCK_C=plan["BLOCK_C"], BLOCK_HW=plan["BLOCK_HW"], **aff, **flags, num_warps=nw,
    )  # fmt: skip
    return y, mean, rstd


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
    time: Tensor | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    needs,
    *,
    split_threshold: int | None = None,
    split_programs: int | None = None,
) -> tuple:
    """Backward of the fused op.

    Args:
        dy: (N, C, H, W) gradient of y, any layout (made dense if it is neither NCHW- nor
            channels_last-contiguous).
        x, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos: as in
            :func:`group_norm_act_fwd`.
        mean, rstd: (N, G) fp32 from the forward.
        needs: 8 bools (x, weight, beta, conv_bias, emb, time, time_map, pos): which grads.
        split_threshold, split_programs: as in :func:`group_norm_act_fwd`.

    Returns:
        (dx, dweight, dbeta, dconv_bias, demb, dtime, dtime_map, dpos), None where not needed;
        each of its input's dtype and shape (dpos: pos's shape), dx with x's strides.
    """
    needs = tuple(bool(v) for v in needs)
    if len(needs) != 8:
        raise ValueError(f"needs: expected 8 bools, got {len(needs)}")
    N, C, H, W_ = x.shape
    HW = H * W_
    G = int(num_groups)
    if C % G != 0:
        raise ValueError(f"num_groups: {G} does not divide C={C}")
    if act not in _ACTS:
        raise ValueError(f"act: got {act!r}, expected one of {tuple(_ACTS)}")
    if dy.shape != x.shape:
        raise ValueError(f"dy: expected shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    Cg, R = C // G, N * G
    threshold = SPLIT_THRESHOLD if split_threshold is None else int(split_threshold)
    flags = _addend_flags(conv_bias, emb, time, time_map, pos, N, C, HW)
    operands = (x, weight, beta, conv_bias, emb, time, time_map, pos)
    nx, nw_, nb, ncb, nemb, nt, ntm, npos = (
        need and t is not None for need, t in zip(needs, operands)
    )
    if not (dy.is_contiguous() or dy.is_contiguous(memory_format=torch.channels_last)):
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        dy = dy.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    sxn, sxc, sxhw = _strides(x, "x")
    sdn, sdc, sdhw = _strides(dy, "dy")
    mean = mean.reshape(R).to(torch.float32).contiguous()
    rstd = rstd.reshape(R).to(torch.float32).contiguous()
    dev, f32 = x.device, torch.float32

    dummy = x
    ptrs = [
        conv_bias if conv_bias is not None else dummy,
        emb if emb is not None else dummy,
        time if time is not None else dummy,
        time_map if time_map is not None else dummy,
        pos if pos is not None else dummy,
    ]
    sen = emb.stride(0) if emb is not None else 0
    w = weight if weight is not None else dummy
    b = beta if beta is not None else dummy
    aff = {"HAS_WEIGHT": weight is not None, "HAS_BETA": beta is not None, "ACT": _ACTS[act]}

    need_demb = nemb or ncb
    need_du = nx or need_demb or nt or ntm or npos
    dx = torch.empty_like(x) if nx else None
    if ntm and dx is not None and x.dtype == f32:
        du = dx  # dx is already fp32 du
        store_du = False
    elif ntm:
        du = torch.empty_like(x, dtype=f32)
        store_du = True
    else:
        du, store_du = None, False
    for t in (dx, du):
        assert t is None or t.stride() == x.stride()
    dx_arg = dx if dx is not None else dummy
    du_arg = du if du is not None else dummy
    empty = torch.empty(1, device=dev, dtype=f32)  # placeholder for partials not needed

    if _is_fused(Cg, HW, threshold):
        s_c = s_hw = 1
        dwp = torch.empty((N, C, 1), device=dev, dtype=f32) if nw_ else empty
        dbp = torch.empty((N, C, 1), device=dev, dtype=f32) if nb else empty
        dembp = torch.empty((N, C, 1), device=dev, dtype=f32) if need_demb else empty
        dtimep = torch.empty((R, 1), device=dev, dtype=f32) if nt else empty
        dposp = torch.empty((R, HW), device=dev, dtype=f32) if npos else empty
        rows, block_c, block_hw = _fused_plan(R, Cg, HW, dev)
        _gn_bwd_fused_kernel[(triton.cdiv(R, rows),)](
            dy, x, dx_arg, du_arg, w, b, *ptrs, mean, rstd, dwp, dbp, dembp, dtimep, dposp,
            R, G, Cg, HW, sxn, sxc, sxhw, sdn, sdc, sdhw, sen,
            ROWS=rows, BLOCK_C=block_c, BLOCK_HW=block_hw, **aff, **flags,
            STORE_DX=nx, STORE_DU=store_du, NEED_DW=nw_, NEED_DB=nb, NEED_DEMB=need_demb,
            NEED_DTIME=nt, NEED_DPOS=npos, num_warps=_num_warps(rows * block_c * block_hw),
        )  # fmt: skip
    else:
        plan = _split_plan(N, G, Cg, HW, threshold, dev, split_programs)
        s_c, s_hw = plan["S_C"], plan["S_HW"]
        S = s_c * s_hw
        grid = (R, s_c, s_hw)
        nwarps = _num_warps(plan["BLOCK_C"] * plan["BLOCK_HW"])
        blocks = {"BLOCK_C": plan["BLOCK_C"], "BLOCK_HW": plan["BLOCK_HW"]}
        dwp = torch.empty((N, C, s_hw), device=dev, dtype=f32) if nw_ else empty
        dbp = torch.empty((N, C, s_hw), device=dev, dtype=f32) if nb else empty
        pgx = torch.empty((R, S), device=dev, dtype=f32) if need_du else empty
        pgxh = torch.empty((R, S), device=dev, dtype=f32) if need_du else empty
        if need_du or nw_ or nb:
            _gn_bwd_split_reduce_kernel[grid](
                dy, x, w, b, *ptrs, mean, rstd, pgx, pgxh, dwp, dbp,
                G, Cg, HW, plan["HPC"], sxn, sxc, sxhw, sdn, sdc, sdhw, sen,
                **blocks, **aff, **flags, NEED_DU=need_du, NEED_DW=nw_, NEED_DB=nb,
                num_warps=nwarps,
            )  # fmt: skip
        dembp = torch.empty((N, C, s_hw), device=dev, dtype=f32) if need_demb else empty
        dtimep = torch.empty((R, S), device=dev, dtype=f32) if nt else empty
        dposp = torch.empty((R * s_c, HW), device=dev, dtype=f32) if npos else empty
        if need_du:
            # finalize: deterministic torch sums over the tiny (N * G, S) partials
            L = Cg * HW
            mgx = (pgx.sum(1) / L).contiguous()
            mgxh = (pgxh.sum(1) / L).contiguous()
            _gn_bwd_split_dx_kernel[grid](
                dy, x, dx_arg, du_arg, w, b, *ptrs, mean, rstd, mgx, mgxh,
                dembp, dtimep, dposp,
                G, Cg, HW, plan["HPC"], sxn, sxc, sxhw, sdn, sdc, sdhw, sen,
                **blocks, **aff, **flags, STORE_DX=nx, STORE_DU=store_du,
                NEED_DEMB=need_demb, NEED_DTIME=nt, NEED_DPOS=npos, num_warps=nwarps,
            )  # fmt: skip

    dweight = dwp.sum((0, 2)).to(weight.dtype) if nw_ else None
    dbeta = dbp.sum((0, 2)).to(beta.dtype) if nb else None
    demb = dcb = None
    if need_demb:
        demb32 = dembp.sum(2)  # (N, C)
        demb = demb32.to(emb.dtype) if nemb else None
        dcb = demb32.sum(0).to(conv_bias.dtype) if ncb else None
    dtime = dtimep.view(N, -1).sum(1).to(time.dtype) if nt else None
    dtime_map = None
    if ntm:
        # for now a torch reduction over n of the fp32 du (deterministic)
        dtm = (du.float() * time.to(f32).view(N, 1, 1, 1)).sum(0)
        dtime_map = dtm.reshape(time_map.shape).to(time_map.dtype).contiguous()
    dpos = None
    if npos:
        dp = dposp.view(N, -1, HW).sum(1)  # (N, HW): sums over groups and channel chunks
        if flags["POS_BCAST"]:
            dp = dp.sum(0, keepdim=True)
        dpos = dp.reshape(pos.shape).to(pos.dtype)
    return dx, dweight, dbeta, dcb, demb, dtime, dtime_map, dpos
