"""The fused op: ``act(group_norm(x + conv_bias + emb + time * time_map + pos))``.

Public entry point :func:`group_norm_act`: checks its inputs, picks a backend (see
:mod:`timeaware._backend`) and runs either the eager reference (:mod:`timeaware.reference`) or the
Triton kernels (:mod:`timeaware.kernels.group_norm_act`).

The Triton path is registered with ``torch.library`` as two custom ops,
``timeaware::group_norm_act_fwd`` and ``timeaware::group_norm_act_bwd``, with fake (meta)
implementations and a registered autograd formula, so ``torch.compile(fullgraph=True)`` sees one
opaque op and no graph break. The forward saves only the fp32 mean and rstd; the backward
recomputes the sum and the normalised value from the input.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from timeaware._backend import resolve_backend
from timeaware.reference import ACTIVATIONS, group_norm_act_ref

__all__ = ["group_norm_act"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Order of the differentiable tensor arguments of the custom op; ``needs`` follows it.
_GRAD_ARGS = ("input", "weight", "bias", "conv_bias", "emb", "time", "time_map", "pos")


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
    """Check every argument; return ``(x4, time, pos, restore)`` normalised for the kernels.

    ``x4`` is the input viewed as (N, C, H, W); ``time`` is None or an (N,) tensor; ``pos`` is
    None or (N|1, H, W); ``restore`` maps an (N, C, H, W) result back to the input's shape.
    """
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
        raise ValueError(
            f"num_groups: expected a positive divisor of the channel count C={c}, got {num_groups}"
        )
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"eps: expected a float, got {type(eps).__name__}")
    if not eps >= 0:  # also rejects NaN
        raise ValueError(f"eps: expected eps >= 0, got {eps}")
    if act not in ACTIVATIONS:
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

    if x.dim() == 4:
        x4 = x
        h, w = x.shape[2], x.shape[3]
    else:  # (N, C, *) -> (N, C, L, 1), contiguous
        x4 = x.reshape(n, c, -1, 1)
        h, w = x4.shape[2], 1

    if (time is None) != (time_map is None):
        given = "time" if time is not None else "time_map"
        missing = "time_map" if time is not None else "time"
        raise ValueError(f"{given} was given without {missing}: they go together")
    if time_map is not None:
        _check_tensor("time_map", time_map, dev)
        _check_shape("time_map", time_map, (c, h, w), "(C, H, W)")
        if isinstance(time, Tensor):
            _check_tensor("time", time, dev)
            if time.dim() == 0:
                time = time.expand(n)
            elif time.dim() == 1 and time.shape[0] == n:
                pass
            else:
                raise ValueError(
                    f"time: expected a scalar or shape (N,) = ({n},), got {_shape(time)}"
                )
        elif isinstance(time, numbers.Real) and not isinstance(time, bool):
            time = torch.full((n,), float(time), device=dev, dtype=torch.float32)
        else:
            raise TypeError(
                f"time: expected a float, a 0-d tensor or an (N,) tensor, got {type(time).__name__}"
            )
    if pos is not None:
        _check_tensor("pos", pos, dev)
        if pos.dim() == 4 and pos.shape[1] == 1:
            pos = pos.squeeze(1)
        if pos.dim() != 3 or pos.shape[0] not in (1, n) or tuple(pos.shape[1:]) != (h, w):
            raise ValueError(
                f"pos: expected shape (N, H, W) = ({n}, {h}, {w}) or (1, H, W) = (1, {h}, {w}), "
                f"got {_shape(pos)}"
            )

    shape = x.shape

    def restore(y: Tensor) -> Tensor:
        return y if y.shape == shape else y.reshape(shape)

    return x4, time, pos, restore


# --------------------------------------------------------------------------------------------
# torch.library registration of the Triton path
# --------------------------------------------------------------------------------------------
def _kernels():
    from timeaware.kernels import group_norm_act as k  # imported lazily: it imports triton

    return k


def _memory_format(x: Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


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
) -> tuple[Tensor, Tensor, Tensor]:
    y, mean, rstd = _kernels().group_norm_act_fwd(
        x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos
    )
    return y, mean, rstd


@_fwd_op.register_fake
def _fwd_fake(x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos):
    y = torch.empty_like(x, memory_format=_memory_format(x))
    stats = x.new_empty((x.shape[0], num_groups), dtype=torch.float32)
    return y, stats, torch.empty_like(stats)


@torch.library.custom_op("timeaware::group_norm_act_bwd", mutates_args=())
def _bwd_op(
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
    needs: list[bool],
) -> list[Tensor]:
    grads = _kernels().group_norm_act_bwd(
        dy,
        x,
        mean,
        rstd,
        num_groups,
        weight,
        beta,
        act,
        conv_bias,
        emb,
        time,
        time_map,
        pos,
        tuple(needs),
    )
    return [g for g, need in zip(grads, needs) if need]


@_bwd_op.register_fake
def _bwd_fake(
    dy, x, mean, rstd, num_groups, weight, beta, act, conv_bias, emb, time, time_map, pos, needs
):
    like = (x, weight, beta, conv_bias, emb, time, time_map, pos)
    out = []
    for t, need in zip(like, needs):
        if need:
            fmt = _memory_format(t) if t is x else torch.contiguous_format
            out.append(torch.empty_like(t, memory_format=fmt))
    return out


def _setup_context(ctx, inputs, output):
    x, num_groups, weight, beta, eps, act, conv_bias, emb, time, time_map, pos = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, beta, conv_bias, emb, time, time_map, pos)
    ctx.num_groups = num_groups
    ctx.act = act


def _backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd, weight, beta, conv_bias, emb, time, time_map, pos = ctx.saved_tensors
    ni = ctx.needs_input_grad
    # positions of (x, weight, beta, conv_bias, emb, time, time_map, pos) in the op's inputs
    needs = [bool(ni[i]) for i in (0, 2, 3, 6, 7, 8, 9, 10)]
    grads = iter(
        _bwd_op(
            dy,
            x,
            mean,
            rstd,
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
        )
        if any(needs)
        else ()
    )
    dx, dw, db, dcb, demb, dt, dtm, dpos = (next(grads) if n else None for n in needs)
    return dx, None, dw, db, None, None, dcb, demb, dt, dtm, dpos


torch.library.register_autograd(
    "timeaware::group_norm_act_fwd", _backward, setup_context=_setup_context
)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
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
        input: (N, C, H, W), NCHW-contiguous or channels_last, float16/bfloat16/float32
            (float64 on the reference backend). Any (N, C, *) input is accepted when no spatial
            addend (``time_map``, ``pos``) is given.
        num_groups: G, a divisor of C (G = 1 and G = C are legal).
        weight: (C,) scale of the normalisation, or None.
        bias: (C,) shift of the normalisation, or None.
        eps: added to the variance; must be >= 0.
        act: ``"identity"``, ``"relu"`` or ``"silu"``.
        conv_bias: (C,) bias of the preceding convolution, folded in here.
        emb: (N, C) per-channel timestep embedding.
        time: float, 0-d tensor or (N,) tensor; multiplies ``time_map``. Given with time_map.
        time_map: (C, H, W) the ConcatConv time map (DESIGN section 2).
        pos: (N, H, W) or (1, H, W) positional timestep embedding, shared across channels
            ((N|1, 1, H, W) is accepted too).
        backend: ``"auto"``, ``"triton"``, ``"reference"`` or None (use the one in force, see
            :func:`timeaware.use_backend`).

    Returns:
        Tensor of the input's shape, dtype and memory format. Statistics are computed in fp32
        with a centred variance whatever the input dtype.

    Raises:
        TypeError: a non-tensor or non-floating argument.
        ValueError: wrong rank, C not divisible by G, an addend whose shape does not match,
            tensors on different devices, a negative eps, an unknown act or backend.
        BackendUnavailableError: ``backend="triton"`` where the kernels cannot run.
    """
    x4, time, pos, restore = _validate(
        input, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos
    )
    which = resolve_backend(backend, input.device, input.dtype)
    if which == "reference" or input.shape[0] == 0:
        y = group_norm_act_ref(
            x4, num_groups, weight, bias, eps, act, conv_bias, emb, time, time_map, pos
        )
        return restore(y)
    if _memory_format(x4) == torch.contiguous_format and not x4.is_contiguous():
        x4 = x4.contiguous()  # arbitrary strides: the kernels take NCHW or channels_last
    y, _, _ = _fwd_op(
        x4,
        int(num_groups),
        weight,
        bias,
        float(eps),
        act,
        conv_bias,
        None if emb is None else emb.contiguous(),
        None if time is None else time.to(torch.float32).contiguous(),
        None if time_map is None else time_map.contiguous(),
        None if pos is None else pos.contiguous(),
    )
    return restore(y)
