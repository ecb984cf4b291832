"""ODE block over torchdiffeq and the paper's NODE image classifier (DESIGN section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn._utils import check_feature_map, check_positive_int
from ..nn.init import canonical_zero_bias
from ..nn.norm import make_norm
from .odefunc import ODEFunc

_SOLVER_FAILURES = ("underflow in dt", "max_num_steps exceeded", "non-finite values in state")


class ODESolverError(RuntimeError):
    """An ODE solve failed (step size underflow, ``max_num_steps`` exceeded, non-finite state).

    Attributes:
        nfe: function evaluations made before the failure.
        stage: ``"forward"`` (the solve of a forward pass) or ``"sample"``.
    """

    def __init__(self, message: str, nfe: int, stage: str = "forward") -> None:
        super().__init__(f"{message} (after {nfe} function evaluations, {stage} solve)")
        self.nfe = nfe
        self.stage = stage


def is_solver_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is one of torchdiffeq's solver-failure assertions."""
    return isinstance(exc, (AssertionError, RuntimeError)) and any(
        s in str(exc) for s in _SOLVER_FAILURES
    )


_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


class CountingFunc(nn.Module):
    """Wraps an ODE function and counts its evaluations (``count``).

    Its parameters are the wrapped function's, so ``odeint_adjoint`` differentiates the same
    parameters, and torchdiffeq callbacks defined on the wrapped function (``callback_step``,
    ``callback_accept_step``, ``callback_reject_step`` and their ``*_adjoint`` forms) are
    forwarded.
    """

    def __init__(self, func) -> None:
        super().__init__()
        self.func = func
        self.count = 0
        for name in (*_CALLBACKS, *(c + "_adjoint" for c in _CALLBACKS)):
            if hasattr(func, name):
                object.__setattr__(self, name, getattr(func, name))

    def forward(self, t, x):
        self.count += 1
        return self.func(t, x)


def _odeint(adjoint: bool):
    if adjoint:
        from torchdiffeq import odeint_adjoint

        return odeint_adjoint
    from torchdiffeq import odeint

    return odeint


SOLVERS = ("torchdiffeq", "timeaware")


class ODEBlock(nn.Module):
    """Integrates ``dx/dt = odefunc(t, x)`` from t=0 to ``t1`` with torchdiffeq or timeaware.

    Args:
        odefunc: an ``nn.Module`` with ``forward(t, x)`` (e.g. :class:`ODEFunc`).
        method: torchdiffeq solver name (``"dopri5"``, ``"rk4"``, ``"euler"``, ...).
        rtol, atol: tolerances, always passed explicitly (torchdiffeq's defaults are 1e-7/1e-9;
            the paper uses 1e-3/1e-3).
        adjoint: use ``odeint_adjoint`` (memory-light backward by a second solve, whose
            tolerances are also rtol/atol) instead of backpropagating through the solver.
        t1: end time.
        options: solver options passed to torchdiffeq, e.g. ``{"max_num_steps": 1000}`` or
            ``{"step_size": 0.25}`` for fixed-grid solvers.
        solver: ``"torchdiffeq"`` (default) or ``"timeaware"``: :func:`timeaware.odeint` /
            :func:`timeaware.odeint_adjoint`, the same dopri5 steps and NFE with fused stage
            kernels and no host sync per step (dopri5 only). Its NFE is counted on the device
            (exact even when the function is called on masked attempts after the end).

    Attributes:
        nfe_forward: function evaluations of the last forward solve (dopri5: 2 + 6 x attempted
            steps: one evaluation at t0 and one to pick the first step, then six per step).
        nfe_backward: function evaluations made during the backward pass of the last forward:
            with ``adjoint=True`` the adjoint solve's evaluations; with ``adjoint=False``
            autograd backpropagates through the recorded evaluations without calling the
            function again, so it stays 0. Read it after ``backward()``.

    Raises:
        ODESolverError: when the forward solve fails (underflow in dt, max_num_steps exceeded,
            non-finite state); carries the NFE reached. A failure inside the adjoint's backward
            solve surfaces as torchdiffeq's own AssertionError.

    Shapes:
        x: the state, e.g. (N, C, H, W). Output: the state at ``t1``, same shape.
    """

    def __init__(
        self,
        odefunc: nn.Module,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        adjoint: bool = True,
        t1: float = 1.0,
        options: dict | None = None,
        solver: str = "torchdiffeq",
    ) -> None:
        super().__init__()
        if not isinstance(odefunc, nn.Module):
            raise TypeError(
                f"odefunc: got {type(odefunc).__name__}, expected an nn.Module with forward(t, x)"
            )
        from torchdiffeq._impl.odeint import SOLVERS

        if method not in SOLVERS:
            raise ValueError(f"method: got {method!r}, expected one of {sorted(SOLVERS)}")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"{name}: got {v!r}, expected a positive float")
        if not isinstance(t1, (int, float)) or isinstance(t1, bool) or t1 == 0:
            raise ValueError(f"t1: got {t1!r}, expected a nonzero float")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options: got {type(options).__name__}, expected a dict or None")
        self.odefunc = odefunc
        self.method = method
        self.rtol = float(rtol)
        self.atol = float(atol)
        self.adjoint = bool(adjoint)
        self.t1 = float(t1)
        self.options = dict(options) if options else None
        self.solver = solver
        _check_solver(solver, method)
        self.nfe_forward = 0
        self._counter: CountingFunc | None = None
        self._stats = None

    @property
    def nfe_backward(self) -> int:
        """See the class docstring."""
        if self._stats is not None:
            return self._stats.backward.nfe
        if self._counter is None:
            return 0
        return self._counter.count - self.nfe_forward

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x: got {type(x).__name__}, expected a floating torch.Tensor")
        times = torch.tensor([0.0, self.t1], dtype=x.dtype, device=x.device)
        if self.solver != "torchdiffeq":
            return self._forward_timeaware(x, times)
        self._stats = None
        counter = CountingFunc(self.odefunc)
        # Kept out of the module tree (no state-dict entry) via object.__setattr__.
        object.__setattr__(self, "_counter", counter)
        self.nfe_forward = 0
        kwargs = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        if self.adjoint:
            kwargs.update(adjoint_rtol=self.rtol, adjoint_atol=self.atol)
            kwargs["adjoint_params"] = tuple(self.odefunc.parameters())
        try:
            out = _odeint(self.adjoint)(counter, x, times, **kwargs)
        except (AssertionError, RuntimeError) as e:
            if is_solver_failure(e):
                self.nfe_forward = counter.count
                raise ODESolverError(str(e), counter.count, "forward") from e
            raise
        self.nfe_forward = counter.count
        return out[1]

    def _forward_timeaware(self, x: Tensor, times: Tensor) -> Tensor:
        from ..solvers import SolverError, SolverStats, odeint, odeint_adjoint

        _check_solver(self.solver, self.method)
        stats = SolverStats()
        self._stats, self._counter, self.nfe_forward = stats, None, 0
        kwargs = dict(rtol=self.rtol, atol=self.atol, options=self.options, stats=stats)
        try:
            if self.adjoint:
                kwargs.update(adjoint_rtol=self.rtol, adjoint_atol=self.atol)
                params = tuple(self.odefunc.parameters())
                out = odeint_adjoint(self.odefunc, x, times, adjoint_params=params, **kwargs)
            else:
                out = odeint(self.odefunc, x, times, **kwargs)
        except SolverError as e:
            self.nfe_forward = e.nfe
            raise ODESolverError(str(e), e.nfe, "forward") from e
        self.nfe_forward = stats.forward.nfe
        return out[1]

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, rtol={self.rtol}, atol={self.atol}, "
            f"adjoint={self.adjoint}, t1={self.t1}, solver={self.solver!r}"
        )


def _check_solver(solver, method: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver: got {solver!r}, expected one of {SOLVERS}")
    if solver == "timeaware" and method != "dopri5":
        raise ValueError(
            f"method: got {method!r} with solver='timeaware', which implements dopri5 only "
            "(use solver='torchdiffeq' for other methods)"
        )


class PreActResBlock(nn.Module):
    """torchdiffeq's example ``ResBlock`` (pre-activation), with fused norm + ReLU.

    ``norm1``+ReLU -> [``downsample`` for the shortcut] -> ``conv1`` (3x3, stride, no bias) ->
    ``norm2``+ReLU -> ``conv2`` (3x3, no bias) -> + shortcut.

    Shapes: (N, C_in, H, W) -> (N, C_out, H / stride, W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        norm: str = "group",
        groups: int | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_channels, groups, act="relu", backend=backend)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm2 = make_norm(norm, out_channels, groups, act="relu", backend=backend)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv2(self.norm2(self.conv1(out)))
        return out + shortcut


class NODEClassifier(nn.Module):
    """The paper's NODE image classifier (section 4.1, DESIGN section 6).

    ``stem`` (3x3 conv) -> ``down1``, ``down2`` (stride-2 pre-activation residual blocks) ->
    state (N, channels, image_size/4, image_size/4) -> ``odeblock`` (:class:`ODEBlock` over
    :class:`ODEFunc`) -> head ``head_norm`` + ReLU (one fused call) -> global average pool ->
    ``dropout`` -> ``fc``. Returns logits (no softmax).

    Args:
        in_channels, num_classes: input channels and classes.
        channels: C of the ODE state (paper: 64).
        image_size: input H = W, a multiple of 4 (paper: 32 -> 8 x 8 state).
        groups, act, norm, inject, zero_bias, time_embed: of the :class:`ODEFunc`; ``groups``
            and ``norm`` also apply to the stem blocks and the head.
        dropout: before the final Linear (paper: 0.5).
        method, rtol, atol, adjoint, options: of the :class:`ODEBlock`.
        backend: backend of the fused op.
        cuda_graphs: capture the ODE function's forward and backward as CUDA graphs (see
            :class:`ODEFunc`); works with ``adjoint`` True and False. Needs a CUDA device
            (RuntimeError otherwise). The stem, residual blocks and head run as usual.

    Shapes:
        x: (N, in_channels, image_size, image_size). Output: (N, num_classes).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        channels: int = 64,
        image_size: int = 32,
        groups: int | None = None,
        act: str = "relu",
        norm: str = "group",
        inject: str | None = None,
        zero_bias="none",
        time_embed: str = "concat",
        dropout: float = 0.5,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        adjoint: bool = True,
        options: dict | None = None,
        backend: str | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        c = check_positive_int(channels, "channels")
        image_size = check_positive_int(image_size, "image_size", minimum=4)
        if image_size % 4:
            raise ValueError(f"image_size: got {image_size}, expected a multiple of 4")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: got {dropout!r}, expected a probability in [0, 1)")
        zero_bias = canonical_zero_bias(zero_bias)
        self.in_channels = in_channels
        self.image_size = image_size
        state = image_size // 4
        self.stem = nn.Conv2d(in_channels, c, 3, 1, 1)
        self.down1 = PreActResBlock(c, c, 2, norm, groups, backend)
        self.down2 = PreActResBlock(c, c, 2, norm, groups, backend)
        odefunc = ODEFunc(
            c,
            groups,
            act,
            norm,
            inject,
            zero_bias,
            time_embed,
            (state, state),
            backend,
            cuda_graphs=cuda_graphs,
        )
        self.odeblock = ODEBlock(odefunc, method, rtol, atol, adjoint, 1.0, options)
        self.head_norm = make_norm(norm, c, groups, act="relu", backend=backend)
        self.dropout = nn.Dropout(dropout)
        # Remedy 2 (zero_bias) concerns the time-dependent function only: it is applied inside
        # the ODEFunc; the stem, the residual blocks and the head keep PyTorch's defaults.
        self.fc = nn.Linear(c, num_classes)

    @property
    def nfe_forward(self) -> int:
        """NFE of the last forward ODE solve."""
        return self.odeblock.nfe_forward

    @property
    def nfe_backward(self) -> int:
        """NFE of the backward pass of the last forward (see :class:`ODEBlock`)."""
        return self.odeblock.nfe_backward

    def features(self, x: Tensor) -> Tensor:
        """The ODE's initial state: (N, in_channels, S, S) -> (N, channels, S/4, S/4)."""
        check_feature_map(x, "x", self.in_channels)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"x: got spatial size {tuple(x.shape[-2:])}, expected "
                f"({self.image_size}, {self.image_size}) (image_size)"
            )
        return self.down2(self.down1(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        """See the class docstring."""
        h = self.odeblock(self.features(x))
        h = self.head_norm(h)
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc(self.dropout(h))
