"""The fused op: ``act(group_norm(x + conv_bias + emb + time * time_map + pos))``.

Public entry point :func:`group_norm_act`: checks its inputs, picks a backend (see
:mod:`timeaware._backend`) and runs either the eager reference (:mod:`timeaware.reference`) or the
Triton kernels (:mod:`timeaware.kernels.group_norm_act`).

Two routes to the kernels, the same kernels and the same results:

* eager (the default): a plain ``torch.autograd.Function`` (:class:`_GroupNormActFn`), called
  through the C++ ``apply`` when no torch.func transform is active (``Function.apply``'s Python
  wrapper binds the arguments with ``inspect.signature`` on every call: ~30 us). It has a
  ``setup_context`` staticmethod, so ``torch.func.grad``/``vjp`` work; a ``jvp`` rule (forward-mode
  AD: ``torch.func.jvp``, ``torch.autograd.forward_ad``); and a ``vmap`` rule (a loop over the
  vmapped dimension).
* ``torch.compile``: two ``torch.library`` custom ops, ``timeaware::group_norm_act_fwd`` and
  ``timeaware::group_norm_act_bwd``, with fake implementations and a registered autograd formula,
  so ``torch.compile(fullgraph=True)`` sees one opaque op and no graph break. Chosen when
  ``torch.compiler.is_compiling()``.

The forward saves only the (2, N, G) fp32 mean and rstd (marked non-differentiable: no zero
gradients are made for them); the backward recomputes the sum and the normalised value from the
input. Input checks are cached by the arguments' signature (shapes, dtypes, devices, G, eps,
act), so a repeated call pays for a dictionary lookup, not for the checks.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from timeaware._backend import resolve_backend
from timeaware.reference import (
    ACTIVATIONS,
    add_addends,
    group_norm_act_ref,
    output_memory_format,
)

__all__ = ["group_norm_act"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_LOWP = (torch.float16, torch.bfloat16)
_F32 = torch.float32
_functorch = torch._C._functorch


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------
def _shape(t: Tensor) -> str:
    return f"shape {tuple(t.shape)}"


def _check_tensor(name: str, t, device: torch.device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating dtype {_FLOATS}, got {t.dtype}")
    if t.device != device:
        raise ValueError(
            f"{name}: expected a tensor on the input's device {device}, got one on {t.device}"
        )


def _check_shape(name: str, t: Tensor, expected: tuple, text: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{name}: expected {text} = {expected}, got {_shape(t)}")


def _validate(x, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos):
    """Check every argument; raise TypeError/ValueError naming the first bad one."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"input: expected a floating dtype {_FLOATS}, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"input: expected (N, C, *) with at least 2 dims, got {_shape(x)}")
    spatial = time_map is not None or pos is not None
    if spatial and x.dim() != 4:
        raise ValueError(f"input: time_map and pos need a 4-D (N, C, H, W) input, got {_shape(x)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise TypeError(f"num_groups: expected an int, got {type(num_groups).__name__}")
    n, c = x.shape[0], x.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        hint = ""
        if x.dim() == 3:
            hint = (
                f"; a 3-D input {tuple(x.shape)} looks unbatched (C, H, W): add the batch "
                "dimension with input.unsqueeze(0)"
            )
        raise ValueError(
            f"num_groups: expected a positive divisor of the channel count C={c}, got "
            f"{num_groups} (the input is read as (N, C, *) = {tuple(x.shape)}{hint})"
        )
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"eps: expected a float, got {type(eps).__name__}")
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps: expected eps >= 0, got {eps}")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"act: expected one of {ACTIVATIONS}, got {act!r}")

    dev = x.device
    for name, t, exp, text in (
        ("weight", weight, (c,), "(C,)"),
        ("bias", bias, (c,), "(C,)"),
        ("conv_bias", conv_bias, (c,), "(C,)"),
        ("emb", emb, (n, c), "(N, C)"),
    ):
        if t is not None:
            _check_tensor(name, t, dev)
            _check_shape(name, t, exp, text)

    h, w = (x.shape[2], x.shape[3]) if x.dim() == 4 else (math.prod(x.shape[2:]), 1)
    if (time is None) != (time_map is None):
        given = "time" if time is not None else "time_map"
        missing = "time_map" if time is not None else "time"
        raise ValueError(f"{given} was given without {missing}: they go together")
    if time_map is not None:
        _check_tensor("time_map", time_map, dev)
        _check_shape("time_map", time_map, (c, h, w), "(C, H, W)")
        if isinstance(time, Tensor):
            _check_tensor("time", time, dev)
            if not (time.dim() == 0 or (time.dim() == 1 and time.shape[0] == n)):
                raise ValueError(
                    f"time: expected a scalar or shape (N,) = ({n},), got {_shape(time)}"
                )
        elif not isinstance(time, numbers.Real) or isinstance(time, bool):
            raise TypeError(
                f"time: expected a float, a 0-d tensor or an (N,) tensor, got {type(time).__name__}"
            )
    if pos is not None:
        _check_tensor("pos", pos, dev)
        p = pos.squeeze(1) if pos.dim() == 4 and pos.shape[1] == 1 else pos
        if p.dim() != 3 or p.shape[0] not in (1, n) or tuple(p.shape[1:]) != (h, w):
            raise ValueError(
                f"pos: expected shape (N, H, W) = ({n}, {h}, {w}) or (1, H, W) = (1, {h}, {w}), "
                f"got {_shape(pos)}"
            )


_VALID: dict = {}  # signatures of argument sets that passed _validate
_VALID_MAX = 4096


def _check(x, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos, compiling):
    """_validate, skipped when an argument set of the same signature passed it before."""
    if compiling:
        _validate(x, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos)
        return
    try:
        # the signature: everything _validate looks at (None stays None: a tensor's entry is
        # a 3-tuple, so the two never collide)
        key = (
            x.shape, x.dtype, x.device, type(num_groups), num_groups, type(eps), eps, act,
            weight if weight is None else (weight.shape, weight.dtype, weight.device),
            bias if bias is None else (bias.shape, bias.dtype, bias.device),
            conv_bias if conv_bias is None else (conv_bias.shape, conv_bias.dtype,
                                                 conv_bias.device),
            emb if emb is None else (emb.shape, emb.dtype, emb.device),
            (time.shape, time.dtype, time.device) if isinstance(time, Tensor) else type(time),
            time_map if time_map is None else (time_map.shape, time_map.dtype, time_map.device),
            pos if pos is None else (pos.shape, pos.dtype, pos.device),
        )  # fmt: skip
        if key in _VALID:
            return
    except (AttributeError, TypeError):  # a non-tensor or unhashable argument: check it
        key = None
    _validate(x, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos)
    if key is not None:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID[key] = True


# --------------------------------------------------------------------------------------------
# Eager path: a plain autograd.Function
# --------------------------------------------------------------------------------------------
_K = None


def _kernels():
    """The kernels module, imported on first use (it imports triton)."""
    global _K
    if _K is None:
        from timeaware.kernels import group_norm_act as k

        _K = k
    return _K


_forward_ad = torch.autograd.forward_ad


def _fwd_ad_possible() -> bool:
    """True when forward-mode AD may see this call (a dual level or a torch.func transform)."""
    return _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def _unwrap_for_kernels(tensors):
    """The plain tensors behind one torch.func grad level (the backward's own level), or raise:
    the kernels need real storage, and a second level (nested transforms, vmap over grad) would
    need the backward itself to be differentiable or batched, which it is not."""
    out = []
    for t in tensors:
        if t is not None and _functorch.is_functorch_wrapped_tensor(t):
            if _functorch.is_gradtrackingtensor(t):
                t = _functorch.get_unwrapped(t)
            if _functorch.is_functorch_wrapped_tensor(t):
                raise RuntimeError(
                    "group_norm_act (triton backend): the backward cannot run under nested "
                    "torch.func transforms (grad of grad, hessian, vmap of grad or vjp, "
                    "jacrev); use backend='reference' for these (grad, vjp, jvp, jacfwd, vmap "
                    "and grad of vmap work on both backends)"
                )
        out.append(t)
    return out


class _GroupNormActFn(torch.autograd.Function):
    """The Triton kernels with autograd; the arguments are those of the custom op below.

    Outputs: y, the (2, N, G) fp32 stats (non-differentiable) and, as a Python object, what the
    launcher's argument preparation made of the inputs (so the backward can skip it).
    """

    @staticmethod
    def forward(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos):
        return _kernels()._forward(
            x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos = inputs
        _, stats, prep = output
        # prep is None when the outputs come from the vmap rule (torch.func.grad over vmap)
        xp, args, t_scalar, stride_t, fkey = prep if prep is not None else (None,) * 5
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)
        t = time if isinstance(time, Tensor) else None
        ctx.save_for_backward(x, stats, weight, beta, conv_bias, emb, t, time_map, pos)
        ctx.num_groups, ctx.act = num_groups, act
        ctx.time = time if t is None else None  # a Python float time
        # the launcher used the inputs as they are (no copies): the backward can skip its checks
        ctx.prepared = (t_scalar, stride_t, fkey) if prep is not None and (
            xp is x and args[0] is weight and args[1] is beta and args[2] is conv_bias
            and args[3] is emb and args[4] is t and args[5] is time_map and args[6] is pos
        ) else None  # fmt: skip
        if _fwd_ad_possible():
            ctx.save_for_forward(x, stats, weight, beta, conv_bias, emb, t, time_map, pos)

    @staticmethod
    def backward(ctx, dy, _dstats, _dprep):
        ni = ctx.needs_input_grad
        # (x, weight, beta, conv_bias, emb, time, time_map, pos) in the forward's arguments
        needs = (ni[0], ni[2], ni[3], ni[6], ni[7], ni[8], ni[9], ni[10])
        if dy is None or not any(needs):
            return (None,) * 11
        saved = ctx.saved_tensors
        if not torch.is_grad_enabled():  # a plain backward
            grads = _run_bwd(ctx, dy, saved, needs)
        elif any(t is not None and _is_wrapped(t) for t in (dy, *saved)):
            # torch.func.grad / vjp (they run the backward with create_graph=True): one grad
            # level of wrapped tensors around real ones
            dy, *saved = _unwrap_for_kernels((dy, *saved))
            with torch._C._DisableFuncTorch():
                grads = _run_bwd(ctx, dy, saved, needs)
        elif dy.requires_grad or any(t is not None and t.requires_grad for t in saved):
            raise RuntimeError(
                "group_norm_act (triton backend): double backward (create_graph=True "
                "through this op) is not implemented; use backend='reference'"
            )
        else:
            grads = _run_bwd(ctx, dy, saved, needs)
        dx, dw, db, dcb, demb, dt, dtm, dpos = grads
        return dx, None, dw, db, None, None, dcb, demb, dt, dtm, dpos

    @staticmethod
    def jvp(ctx, tx, _g, tw, tb, _e, _a, tcb, temb, tt, ttm, tpos):
        x, stats, w, b, cb, emb, t, tm, pos = ctx.saved_tensors
        time = t if t is not None else ctx.time
        ty = _jvp(x, stats, ctx.num_groups, ctx.act, w, b, cb, emb, time, tm, pos,
                  tx, tw, tb, tcb, temb, tt, ttm, tpos)  # fmt: skip
        return ty, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        # a loop over the vmapped dimension: correct for any in_dims, one call per slice
        ys, stats = [], []
        for i in range(info.batch_size):
            sl = [a if d is None else a.select(d, i) for a, d in zip(args, in_dims)]
            y, s, _ = _GroupNormActFn.apply(*sl)
            ys.append(y)
            stats.append(s)
        return (torch.stack(ys), torch.stack(stats), None), (0, 0, None)


def _run_bwd(ctx, dy, saved, needs):
    x, stats, w, b, cb, emb, t, tm, pos = saved
    if ctx.prepared is not None:
        t_scalar, stride_t, fkey = ctx.prepared
        return _kernels()._backward(
            dy, x, stats, int(ctx.num_groups), (w, b, cb, emb, t, tm, pos), t_scalar, stride_t,
            fkey, needs,
        )  # fmt: skip
    time = t if t is not None else ctx.time
    return _kernels().backward(
        dy, x, stats, ctx.num_groups, w, b, ctx.act, cb, emb, time, tm, pos, needs
    )


def _jvp(x, stats, G, act, w, b, cb, emb, time, tm, pos, tx, tw, tb, tcb, temb, tt, ttm, tpos):
    """Forward-mode derivative of the op (eager PyTorch, in fp32 or the input's fp64).

    With the tangents t* of the arguments, ``du = tx + tcb + temb + tt * time_map + time * ttm
    + tpos``, ``dxhat = rstd * (du - mean_g(du) - xhat * mean_g(xhat * du))`` and
    ``dy = act'(z) * (w * dxhat + tw * xhat + tb)`` with ``z = w * xhat + b``.
    """
    cd = _F32 if x.dtype in _LOWP else x.dtype
    N, C, H, W = x.shape
    f = lambda v: None if v is None else v.to(cd)  # noqa: E731
    u = add_addends(x.to(cd), f(cb), f(emb), f(time) if isinstance(time, Tensor) else time,
                    f(tm), f(pos))  # fmt: skip
    mean = stats[0].reshape(N, G, 1, 1, 1)
    rstd = stats[1].reshape(N, G, 1, 1, 1)
    xhat = ((u.reshape(N, G, C // G, H, W) - mean) * rstd).reshape(N, C, H, W)
    du = None
    if any(v is not None for v in (tx, tcb, temb, tt, ttm, tpos)):
        du = torch.zeros_like(u)
        if tx is not None:
            du = du + tx.to(cd)
        if tcb is not None:
            du = du + tcb.to(cd).view(1, C, 1, 1)
        if temb is not None:
            du = du + temb.to(cd)[:, :, None, None]
        if tt is not None:
            du = du + tt.to(cd).reshape(-1, 1, 1, 1) * f(tm).unsqueeze(0)
        if ttm is not None:
            tv = time.to(cd).reshape(-1, 1, 1, 1) if isinstance(time, Tensor) else time
            du = du + tv * ttm.to(cd).unsqueeze(0)
        if tpos is not None:
            du = du + tpos.to(cd).reshape(-1, 1, H, W)
    dz = torch.zeros_like(u)
    if du is not None:
        g5 = (N, G, C // G, H, W)
        du5, xh5 = du.reshape(g5), xhat.reshape(g5)
        dims = (2, 3, 4)
        dxhat = rstd * (du5 - du5.mean(dims, True) - xh5 * (xh5 * du5).mean(dims, True))
        dz = dxhat.reshape(N, C, H, W)
        if w is not None:
            dz = dz * w.to(cd).view(1, C, 1, 1)
    if tw is not None:
        dz = dz + xhat * tw.to(cd).view(1, C, 1, 1)
    if tb is not None:
        dz = dz + tb.to(cd).view(1, C, 1, 1)
    z = xhat if w is None else xhat * w.to(cd).view(1, C, 1, 1)
    if b is not None:
        z = z + b.to(cd).view(1, C, 1, 1)
    if act == "relu":
        dz = torch.where(z <= 0, torch.zeros_like(dz), dz)  # torch's relu' (NaN passes)
    elif act == "silu":
        s = torch.sigmoid(z)
        dz = dz * (s * (1 + z * (1 - s)))
    return dz.to(x.dtype).contiguous(memory_format=output_memory_format(x))


# The C++ apply of autograd.Function, without the Python wrapper's per-call
# inspect.signature binding (all 11 arguments are always passed positionally).
_fn_apply = super(torch.autograd.Function, _GroupNormActFn).apply
_unwrap_if_dead = _functorch.unwrap_if_dead
_is_wrapped = _functorch.is_functorch_wrapped_tensor


def _apply(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos):
    if not _fwd_ad_possible() and not (
        torch.is_grad_enabled()
        and (
            x.requires_grad
            or (weight is not None and weight.requires_grad)
            or (beta is not None and beta.requires_grad)
            or (conv_bias is not None and conv_bias.requires_grad)
            or (emb is not None and emb.requires_grad)
            or (isinstance(time, Tensor) and time.requires_grad)
            or (time_map is not None and time_map.requires_grad)
            or (pos is not None and pos.requires_grad)
        )
    ):
        # nothing to differentiate: the kernels without an autograd node
        return _kernels().forward(
            x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos
        )[0]
    if torch._C._are_functorch_transforms_active():
        return _GroupNormActFn.apply(
            x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos
        )[0]
    # as Function.apply: tensors left over from an exited torch.func transform are unwrapped
    u = _unwrap_if_dead
    return _fn_apply(
        u(x), num_groups, weight if weight is None else u(weight),
        beta if beta is None else u(beta), eps, act,
        conv_bias if conv_bias is None else u(conv_bias), emb if emb is None else u(emb),
        u(time) if isinstance(time, Tensor) else time,
        time_map if time_map is None else u(time_map), pos if pos is None else u(pos),
    )[0]  # fmt: skip


# --------------------------------------------------------------------------------------------
# torch.compile path: torch.library registration
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("timeaware::group_norm_act_fwd", mutates_args=())
def _fwd_op(
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
) -> tuple[Tensor, Tensor]:
    """Returns (y, stats): stats the (2, N, G) fp32 mean and rstd."""
    y, stats = _kernels().forward(
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos
    )
    return y, stats


@_fwd_op.register_fake
def _fwd_fake(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos):
    y = torch.empty_like(x, memory_format=output_memory_format(x))
    return y, x.new_empty((2, x.shape[0], num_groups), dtype=_F32)


@torch.library.custom_op("timeaware::group_norm_act_bwd", mutates_args=())
def _bwd_op(
    dy: Tensor,
    x: Tensor,
    stats: Tensor,
    num_groups: int,
    weight: Tensor | None,
    beta: Tensor | None,
    act: str,
    conv_bias: Tensor | None,
    emb: Tensor | None,
    time: Tensor | None,
    time_map: Tensor | None,
    pos: Tensor | None,
    needs: list[bool],
) -> list[Tensor]:
    grads = _kernels().backward(
        dy, x, stats, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos, needs
    )
    return [g for g, need in zip(grads, needs) if need]


@_bwd_op.register_fake
def _bwd_fake(
    dy, x, stats, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos, needs
):
    like = (x, weight, beta, conv_bias, emb, time, time_map, pos)
    out = []
    for t, need in zip(like, needs):
        if need:
            fmt = output_memory_format(t) if t is x else torch.contiguous_format
            out.append(torch.empty_like(t, memory_format=fmt))
    return out


def _op_setup_context(ctx, inputs, output):
    x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, output[1], weight, beta, conv_bias, emb, time, time_map, pos)
    ctx.num_groups = num_groups
    ctx.act = act


def _op_backward(ctx, dy, _dstats):
    x, stats, weight, beta, conv_bias, emb, time, time_map, pos = ctx.saved_tensors
    ni = ctx.needs_input_grad
    needs = [bool(ni[i]) for i in (0, 2, 3, 6, 7, 8, 9, 10)]
    grads = iter(
        _bwd_op(
            dy,
            x,
            stats,
            ctx.num_groups,
            weight,
            beta,
            ctx.act,
            conv_bias,
            emb,
            time,
            time_map,
            pos,
            needs,
        )  # fmt: skip
        if any(needs)
        else ()
    )
    dx, dw, db, dcb, demb, dt, dtm, dpos = (next(grads) if n else None for n in needs)
    return dx, None, dw, db, None, None, dcb, demb, dt, dtm, dpos


torch.library.register_autograd(
    "timeaware::group_norm_act_fwd", _op_backward, setup_context=_op_setup_context
)


def _compiled(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos):
    if time_map is not None and not isinstance(time, Tensor):
        time = torch.full((), float(time), dtype=_F32, device=x.device)
    return _fwd_op(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos)[0]


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def _empty(x, weight, bias, conv_bias, emb, time, time_map, pos):
    """The result for an input with no elements: empty, with zero gradients of every argument
    (sums over nothing), on both backends; eager PyTorch, so every autograd mode works."""
    u = add_addends(x, conv_bias, emb, time, time_map, pos)
    if weight is not None:
        u = u * weight.view(1, -1, *([1] * (x.dim() - 2)))
    if bias is not None:
        u = u + bias.view(1, -1, *([1] * (x.dim() - 2)))
    return u.to(x.dtype)


def group_norm_act(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    act: str = "identity",
    conv_bias: Tensor | None = None,
    emb: Tensor | None = None,
    time: Tensor | float | None = None,
    time_map: Tensor | None = None,
    pos: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Fused ``act(F.group_norm(input + addends, num_groups, weight, bias, eps))``.

    A drop-in for ``F.group_norm`` followed by an activation, with the optional addends of
    DESIGN section 1 summed into the input before the normalisation::

        u = input + conv_bias[c] + emb[n, c] + time[n] * time_map[c, h, w] + pos[n, h, w]

    Args:
        input: (N, C, H, W), float16/bfloat16/float32 (float64 on the reference backend), any
            strides. Any (N, C, *) input is accepted when no spatial addend (``time_map``,
            ``pos``) is given; it is read as (N, C, *), so an unbatched (C, H, W) needs
            ``unsqueeze(0)``.
        num_groups: G, a divisor of C (G = 1 and G = C are legal).
        weight: (C,) scale of the normalisation, or None.
        bias: (C,) shift of the normalisation, or None.
        eps: added to the variance; must be >= 0.
        act: ``"identity"``, ``"relu"`` or ``"silu"``.
        conv_bias: (C,) bias of the preceding convolution, folded in here.
        emb: (N, C) per-channel timestep embedding.
        time: float, 0-d tensor or (N,) tensor; multiplies ``time_map``. Given with time_map.
            A Python float multiplies as a Python scalar (no rounding to fp32 on fp64 inputs).
        time_map: (C, H, W) the ConcatConv time map (DESIGN section 2).
        pos: (N, H, W) or (1, H, W) positional timestep embedding, shared across channels
            ((N|1, 1, H, W) is accepted too).
        backend: ``"auto"``, ``"triton"``, ``"reference"`` or None (use the one in force, see
            :func:`timeaware.use_backend`).

    Every tensor argument may have any strides (views, expanded tensors, storage offsets); the
    gradient of each comes back with its shape.

    Returns:
        Tensor of the input's shape and dtype. Memory format, on both backends: channels_last
        when the input's strides are in channels_last order (channels_last-contiguous, or a
        non-dense view of such a tensor: ``suggest_memory_format``, as ``F.group_norm``),
        NCHW-contiguous otherwise. Statistics are computed in fp32 with a centred variance
        whatever the input dtype. An input with no elements gives an empty result and zero
        gradients.

    Raises:
        TypeError: a non-tensor or non-floating argument.
        ValueError: wrong rank, C not divisible by G, an addend whose shape does not match,
            tensors on different devices, a negative eps, an unknown act or backend.
        BackendUnavailableError: ``backend="triton"`` where the kernels cannot run.
        RuntimeError: on the triton backend, double backward or nested torch.func transforms
            through the backward (use ``backend="reference"``).

    Autograd: backward (``torch.autograd``, ``torch.func.grad``/``vjp``), forward mode
    (``torch.func.jvp``, ``torch.autograd.forward_ad``) and ``torch.func.vmap`` work on both
    backends, as does ``torch.compile(fullgraph=True)``.
    """
    compiling = torch.compiler.is_compiling()
    _check(
        input, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos, compiling
    )
    which = resolve_backend(backend, input.device, input.dtype)
    x = input
    if x.dim() != 4:  # (N, C, *) -> (N, C, L, 1)
        x = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]), 1)
    if pos is not None and pos.dim() == 4:
        pos = pos.squeeze(1)
    if x.numel() == 0:
        y = _empty(x, weight, bias, conv_bias, emb, time, time_map, pos)
        y = y.contiguous(memory_format=output_memory_format(x))
    elif which == "reference":
        y = group_norm_act_ref(x, num_groups, weight, bias, eps, act, conv_bias, emb, time,
                               time_map, pos)  # fmt: skip
    elif compiling:
        y = _compiled(x, int(num_groups), weight, bias, float(eps), act, conv_bias, emb, time,
                      time_map, pos)  # fmt: skip
    else:
        y = _apply(x, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos)
    return y if x is input else y.reshape(input.shape)
