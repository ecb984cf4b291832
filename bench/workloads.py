"""The fixed workloads of DESIGN section 7, each buildable for every baseline.

A :class:`Variant` is one row group of the table (a workload at one shape and dtype); its
``build(baseline, device)`` returns a :class:`Case`: the inputs and the forward callable for that
baseline, with everything the timing and the report need (leaves whose ``.grad`` is reset between
repetitions, the explicit byte count of each mode, the NFE of a solve, the solver steps).

Baselines (:data:`BASELINE_INFO`), all on the same input values and the same weights (every build
is seeded identically):

    eager                plain eager PyTorch, as a user writes it: for the op, adds +
                         ``F.group_norm`` + act in the input dtype (:func:`eager_group_norm_act`;
                         bf16 runs PyTorch's own bf16 path); for the models, timeaware's
                         reference backend; for diffusers-unet, the unpatched diffusers model
    compile              torch.compile (default mode) of that same eager code
    compile-max          torch.compile(mode="max-autotune-no-cudagraphs"): autotuned Triton
                         templates, without CUDA graphs, which the fused backend does not use either
    fused                the Triton backend of timeaware (diffusers-unet: the diffusers model
                         after ``timeaware.integrations.diffusers.apply(unet, backend="triton")``)
    torchdiffeq-example  (odefunc, node-step) torchdiffeq's example ODE function
                         (examples/odenet_mnist.py: cat + conv + GroupNorm + ReLU), written
                         out in :class:`TorchdiffeqODEfunc`, with the state dict of
                         ``timeaware.ODEFunc``
    fused+timeaware-solver
                         (node-step, ode-solve) the Triton backend with timeaware's own dopri5
                         (``timeaware.odeint`` / ``odeint_adjoint``, its fused stage kernels)
                         instead of torchdiffeq's: ``ODEBlock(solver="timeaware")``, what a
                         user of the fused NODE runs
    eager+timeaware-solver
                         (ode-solve) ``timeaware.odeint`` on its reference backend (plain
                         PyTorch steps: what ``backend="auto"`` runs on a CPU)

Every other baseline solves with torchdiffeq (``eager`` is torchdiffeq with the eager function).
The solver is a dimension of the baselines rather than of the workloads, so that a row's
speedups and its NFE agreement are always against ``eager`` (eager + torchdiffeq) of the same
variant, measured in the same run: node-step's target is judged on ``fused+timeaware-solver``
(the configuration users run) and shown on ``fused`` (fused op, torchdiffeq).

Modes: ``fwd`` is the forward alone under ``torch.no_grad()`` (the adjoint solve and sampling
run it so); ``bwd`` is ``out.backward(dy, retain_graph=True)`` on a graph built once outside the
timing; ``fwd+bwd`` is the forward with autograd plus the backward. The ``*-step`` workloads are
training steps (forward, loss, backward; no optimizer update, so every repetition solves the same
problem and the NFE stays fixed) and have ``fwd+bwd`` only. ``diffusers-unet`` is such a step
too, on diffusers' own ``UNet2DModel`` (DDPM's CIFAR-10 architecture): eager is the unpatched
diffusers model, compile ``torch.compile`` of it, fused the same model after
``timeaware.integrations.diffusers.apply(unet, backend="triton")``; without diffusers every
baseline of it is skipped with the integration's ImportError (:attr:`Variant.unavailable`).
``ode-solve`` is one dopri5 solve of a cheap linear field (one matmul per evaluation,
:class:`LinearField`), so that the solver's own cost shows; its ``fwd`` is the solve.

Solver cost: a variant with a :attr:`Variant.solve_problem` (node-step, ode-solve) also has its
solve counted by ``timeaware.solvers.cost.solve_cost`` for torchdiffeq and for timeaware
(``bench.counting.count_solvers``): NFE, launches and host syncs per attempted step of the
solver alone, forward and adjoint backward, side by side.

Adding a baseline: an entry in :data:`BASELINE_INFO`, its name in the ``baselines`` of the
workloads it applies to (:data:`GENERIC_BASELINES` for all), its model in their builders
(``_op_function``, ``_ode_function``, one more entry of :data:`NODE_MODEL`), a speedup column in
``bench.report.SPEEDUP_COLUMNS`` and its place in ``bench.__main__.PRIORITY``. Adding a workload:
a builder returning a :class:`Case`, an entry in :data:`OP_WORKLOADS` (another fused-op
configuration) or in :func:`variants`, its id in :data:`WORKLOADS`, and its targets in
``bench.report.TARGETS``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("fwd", "bwd", "fwd+bwd")
PROFILES = ("full", "quick", "cpu")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# ``host`` is not a Variant: it selects the host-overhead benchmark (bench.host)
WORKLOADS = (
    "gn-node",
    "gn-ddpm",
    "gn-g1",
    "odefunc",
    "node-step",
    "ode-solve",
    "ddpm-step",
    "diffusers-unet",
    "host",
)
SOLVERS = ("torchdiffeq", "timeaware")
# Training steps of a whole model: their compiled baselines compile the model (no extra
# inference-graph compile for the output comparison; no max-autotune unless asked for)
MODEL_WORKLOADS = ("node-step", "ddpm-step", "diffusers-unet")


@dataclass(frozen=True)
class Baseline:
    """One baseline of the table.

    Attributes:
        name: its id in the table, the JSON and ``--baselines``.
        backend: the timeaware backend its models run (``"reference"`` or ``"triton"``).
        compile_mode: ``torch.compile`` mode, or None when the baseline is not compiled.
        compiled: whether the baseline runs through ``torch.compile``.
        description: one line for the report's notes.
        solver: the ODE solver of the solver workloads: ``"torchdiffeq"`` or ``"timeaware"``
            (``timeaware.odeint`` on ``backend``).
    """

    name: str
    backend: str
    description: str
    compiled: bool = False
    compile_mode: str | None = None
    solver: str = "torchdiffeq"


BASELINE_INFO = {
    b.name: b
    for b in (
        Baseline(
            "eager",
            "reference",
            "plain eager PyTorch as a user writes it (op: adds + F.group_norm + act in the input "
            "dtype, parameters in that dtype too; models: timeaware's reference backend; "
            "diffusers-unet: the unpatched diffusers UNet2DModel)",
        ),
        Baseline(
            "compile",
            "reference",
            "torch.compile of the same eager code (default mode)",
            compiled=True,
        ),
        Baseline(
            "compile-max",
            "reference",
            "torch.compile(mode='max-autotune-no-cudagraphs') of the same eager code",
            compiled=True,
            compile_mode="max-autotune-no-cudagraphs",
        ),
        Baseline(
            "fused",
            "triton",
            "timeaware's Triton backend (diffusers-unet: the same UNet2DModel after "
            "timeaware.integrations.diffusers.apply(unet, backend='triton'))",
        ),
        Baseline(
            "eager+timeaware-solver",
            "reference",
            "timeaware.odeint on its reference backend (plain PyTorch steps, what "
            "backend='auto' runs on a CPU) with the eager function",
            solver="timeaware",
        ),
        Baseline(
            "fused+timeaware-solver",
            "triton",
            "timeaware's Triton backend with timeaware's dopri5 (timeaware.odeint / "
            "odeint_adjoint on the Triton backend: fused stage kernels, step control on the "
            "device) instead of torchdiffeq's; node-step: ODEBlock(solver='timeaware')",
            solver="timeaware",
        ),
        Baseline(
            "torchdiffeq-example",
            "reference",
            "torchdiffeq's examples/odenet_mnist.py ODEfunc written out (cat + conv + "
            "GroupNorm + ReLU), with the state dict of timeaware.ODEFunc",
        ),
    )
}
BASELINES = tuple(BASELINE_INFO)
GENERIC_BASELINES = ("eager", "compile", "compile-max", "fused")
ODE_BASELINES = (*GENERIC_BASELINES, "torchdiffeq-example")
NODE_STEP_BASELINES = (*ODE_BASELINES, "fused+timeaware-solver")
# a solve alone: there is no op to fuse or to compile, only the solver differs
ODE_SOLVE_BASELINES = ("eager", "eager+timeaware-solver", "fused+timeaware-solver")
# kept for callers of the old names
BACKEND_OF = {name: b.backend for name, b in BASELINE_INFO.items()}
COMPILE_MODE = {name: b.compile_mode for name, b in BASELINE_INFO.items() if b.compiled}


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype (``fp32``, ``bf16``, ...)."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


@dataclass
class Case:
    """One variant built for one baseline.

    Attributes:
        forward: runs the forward and returns the tensor to differentiate (the op's or the
            function's output, or a training step's scalar loss).
        leaves: tensors whose ``.grad`` is set to None before every timed repetition.
        cotangent: the fixed ``dy`` for a non-scalar output, None for a scalar loss.
        bytes: compulsory memory traffic of each mode (every tensor read or written once), or
            None where a byte count means little (convolutions, solvers).
        nfe: runs one seeded training step and returns (NFE-F, NFE-B), or None.
        probe: seeded forward under no_grad whose output is compared with the eager one.
        steps: attempted solver steps (forward plus backward solve) of the last training step,
            or None when they cannot be told (see :func:`attempted_steps`).
        last_nfe: (NFE-F, NFE-B) of the last training step, without running one.
    """

    forward: Callable[[], Tensor]
    leaves: list[Tensor]
    cotangent: Tensor | None
    bytes: dict[str, int] | None = None
    nfe: Callable[[], tuple[int, int]] | None = None
    probe: Callable[[], Tensor] | None = None
    steps: Callable[[], int | None] | None = None
    last_nfe: Callable[[], tuple[int, int]] | None = None


@dataclass
class SolveProblem:
    """One ODE solve whose solver cost is counted for torchdiffeq and for timeaware.

    ``bench.counting.count_solvers`` runs ``timeaware.solvers.cost.solve_cost(solver, func, y0,
    t, rtol=rtol, atol=atol, adjoint=adjoint)`` for each solver on this same problem.

    Attributes:
        func: the ODE function ``func(t, y)``, an ``nn.Module`` (its parameters are the
            adjoint's).
        y0: (any shape) the initial state.
        t: (T,) the output times.
        rtol, atol: tolerances of the solve (and of the adjoint's backward solve).
        adjoint: also count the adjoint's backward solve (``odeint_adjoint``).
        shape: what the table shows in its "counted at" column.
    """

    func: nn.Module
    y0: Tensor
    t: Tensor
    rtol: float
    atol: float
    adjoint: bool
    shape: str


@dataclass(frozen=True)
class Variant:
    """One workload at one shape and dtype: a group of rows in the table.

    Attributes:
        workload, label, shape, dtype, modes, build, note: what the table shows and how to
            build a :class:`Case` (``build(baseline, device)``).
        skip: (baseline, why it is not run) pairs.
        baselines: the baselines that apply to this workload (others get no row).
        count_modes: modes whose launches and syncs are counted (``bench.counting``).
        count_build: builds the case that is counted, ``count_build(baseline, device)``, or
            None for ``build`` itself.
        count_shape: the shape of the counted case when it differs from ``shape``.
        stub_ok: whether the Triton launches may be stubbed out while counting (no control
            flow depends on the values; a solver's step control does).
        unavailable: returns why no baseline of this variant can run here (an optional
            dependency is missing), or None when they can; asked when a row is about to be
            counted or timed, not when the table is built. None: always available.
        count_skip: (baseline, why it is not counted here) pairs: baselines that are timed
            but whose launch count is left out of this profile (too slow to count).
        solve_problem: builds the :class:`SolveProblem` whose solver cost is counted for
            both solvers (``solve_problem(device)``), or None for a variant without a solver.
        slow_interpreted: counting it on a CPU with the kernels run for real (the counts of
            a baseline that cannot be stubbed, and of ``solve_problem``) keeps the Triton
            interpreter busy for seconds, so ``--quick`` skips those counts there.
    """

    workload: str
    label: str
    shape: str
    dtype: str
    modes: tuple[str, ...]
    build: Callable[[str, torch.device], Case] = field(repr=False, compare=False)
    note: str = ""
    skip: tuple[tuple[str, str], ...] = ()
    baselines: tuple[str, ...] = GENERIC_BASELINES
    count_modes: tuple[str, ...] = ()
    count_build: Callable[[str, torch.device], Case] | None = field(
        default=None, repr=False, compare=False
    )
    count_shape: str | None = None
    stub_ok: bool = True
    unavailable: Callable[[], str | None] | None = field(default=None, repr=False, compare=False)
    count_skip: tuple[tuple[str, str], ...] = ()
    solve_problem: Callable[[torch.device], SolveProblem] | None = field(
        default=None, repr=False, compare=False
    )
    slow_interpreted: bool = False


def mode_fn(case: Case, mode: str) -> Callable[[], object]:
    """The callable timed for ``mode``; for ``bwd`` its graph is built here, once."""
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                return case.forward()

        return fwd
    if mode == "bwd":
        out = case.forward()

        def bwd():
            out.backward(case.cotangent, retain_graph=True)

        return bwd
    if mode == "fwd+bwd":

        def fwd_bwd():
            case.forward().backward(case.cotangent)

        return fwd_bwd
    raise ValueError(f"mode: got {mode!r}, expected one of {MODES}")


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _reset_grads(tensors: list[Tensor]) -> None:
    for t in tensors:
        t.grad = None


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def _maybe_compile_fn(fn: Callable, baseline: str) -> Callable:
    info = BASELINE_INFO[baseline]
    return torch.compile(fn, mode=info.compile_mode) if info.compiled else fn


# --------------------------------------------------------------------------------------------
# gn-*: the fused op alone
# --------------------------------------------------------------------------------------------
_ACT = {"identity": lambda y: y, "relu": F.relu, "silu": F.silu}


def eager_group_norm_act(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    act: str = "identity",
    conv_bias: Tensor | None = None,
    emb: Tensor | None = None,
    time: Tensor | None = None,
    time_map: Tensor | None = None,
    pos: Tensor | None = None,
) -> Tensor:
    """The fused op as a user writes it in eager PyTorch: the eager baseline of the gn rows.

    Plain ops in the dtype of the tensors given (no upcast: bf16 tensors run PyTorch's bf16
    ``F.group_norm``), unlike ``timeaware.reference.group_norm_act_ref``, which computes fp16/bf16
    inputs in fp32 and is the ground truth, not a baseline.

    Args:
        x: (N, C, H, W).
        num_groups: G, a divisor of C.
        weight, bias: (C,) affine, or None.
        eps: added to the variance.
        act: ``"identity"``, ``"relu"`` or ``"silu"``.
        conv_bias: (C,). emb: (N, C). time: (N,) with time_map (C, H, W). pos: (N or 1, H, W).

    Returns:
        (N, C, H, W): ``act(F.group_norm(x + addends, num_groups, weight, bias, eps))``.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: an unknown ``act``, or ``time_map`` without ``time``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor (N, C, H, W), got {type(x).__name__}")
    if act not in _ACT:
        raise ValueError(f"act: got {act!r}, expected one of {tuple(_ACT)}")
    if (time is None) != (time_map is None):
        raise ValueError(
            f"time/time_map: got time={'None' if time is None else 'a tensor'} and "
            f"time_map={'None' if time_map is None else 'a tensor'}, expected both or neither"
        )
    u = x
    if conv_bias is not None:
        u = u + conv_bias.view(1, -1, 1, 1)
    if emb is not None:
        u = u + emb[:, :, None, None]
    if time_map is not None:
        u = u + time.view(-1, 1, 1, 1) * time_map
    if pos is not None:
        u = u + pos[:, None]
    return _ACT[act](F.group_norm(u, num_groups, weight, bias, eps))


@dataclass(frozen=True)
class OpSpec:
    """Shape, dtype, addends and activation of one fused-op workload."""

    n: int
    c: int
    h: int
    w: int
    groups: int
    act: str
    addends: tuple[str, ...]  # subset of ("conv_bias", "emb", "time", "pos")
    dtype: torch.dtype

    @property
    def shape(self) -> str:
        return f"N{self.n} C{self.c} {self.h}x{self.w} G{self.groups}"


def _op_function(baseline: str) -> Callable[..., Tensor]:
    if BASELINE_INFO[baseline].backend == "triton":
        from timeaware.ops import group_norm_act

        return functools.partial(group_norm_act, backend="triton")
    return _maybe_compile_fn(eager_group_norm_act, baseline)


def op_inputs(spec: OpSpec, baseline: str, device: torch.device) -> dict[str, Tensor]:
    """The seeded inputs of the op for ``baseline``, as that baseline takes them.

    Every value is representable in ``spec.dtype``, so all baselines see the same numbers: the
    plain-PyTorch baselines get every tensor in ``spec.dtype`` (a bf16 user has bf16 parameters
    and a bf16 time); the fused op gets the parameters and ``time`` in fp32 (its contract).

    Returns:
        ``{"x", "weight", "beta", addends..., "dy"}``; ``time`` does not require grad, every other
        tensor but ``dy`` does.
    """
    gen = torch.Generator(device=device).manual_seed(0)
    plain = BASELINE_INFO[baseline].backend != "triton"

    def rnd(*shape, scale=1.0, shift=0.0):
        t = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
        return (t * scale + shift).to(spec.dtype)

    n, c, h, w = spec.n, spec.c, spec.h, spec.w
    t = {"x": rnd(n, c, h, w), "weight": rnd(c, scale=0.1, shift=1.0), "beta": rnd(c, scale=0.1)}
    if "conv_bias" in spec.addends:
        t["conv_bias"] = rnd(c, scale=0.1)
    if "emb" in spec.addends:
        t["emb"] = rnd(n, c)
    if "time" in spec.addends:
        t["time"] = torch.rand(n, generator=gen, device=device).to(spec.dtype)
        t["time_map"] = rnd(c, h, w, scale=0.1)
    if "pos" in spec.addends:
        t["pos"] = rnd(n, h, w)
    t["dy"] = rnd(n, c, h, w)
    fp32 = () if plain else ("weight", "beta", "time")
    out = {}
    for k, v in t.items():
        v = v.float() if k in fp32 else v
        out[k] = v.requires_grad_(k not in ("time", "dy"))
    return out


def op_bytes(spec: OpSpec) -> dict[str, int]:
    """Compulsory traffic of each mode, in the fused op's layout (the same for every baseline).

    Inputs in ``spec.dtype``, parameters and ``time`` in fp32, fp32 mean and rstd in backward.
    """
    e = torch.tensor([], dtype=spec.dtype).element_size()
    n, c, hw = spec.n, spec.c, spec.h * spec.w
    act = n * c * hw * e
    params = 2 * c * 4
    addend = {"conv_bias": c * e, "emb": n * c * e, "time": n * 4 + c * hw * e, "pos": n * hw * e}
    add = sum(addend[a] for a in spec.addends)
    add_grads = add - (n * 4 if "time" in spec.addends else 0)  # no grad of time
    stats = n * spec.groups * 4 * 2
    fwd = act + add + params + act  # read x, addends, params; write y
    bwd = 2 * act + add + params + stats + act + params + add_grads  # dy, x in; dx, grads out
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + stats + bwd}


def build_op(spec: OpSpec, baseline: str, device: torch.device) -> Case:
    """The op of DESIGN section 1 with ``spec``'s addends, on ``baseline``."""
    a = op_inputs(spec, baseline, device)
    fn = _op_function(baseline)
    add = {k: a[k] for k in ("conv_bias", "emb", "time", "time_map", "pos") if k in a}

    def forward():
        return fn(a["x"], spec.groups, a["weight"], a["beta"], 1e-5, act=spec.act, **add)

    leaves = [v for k, v in a.items() if v.requires_grad]
    return Case(
        forward=forward,
        leaves=leaves,
        cotangent=a["dy"],
        bytes=op_bytes(spec),
        probe=lambda: _no_grad(forward),
    )


@contextlib.contextmanager
def _eval(module: torch.nn.Module):
    module.eval()
    try:
        yield
    finally:
        module.train()


def _no_grad(f):
    with torch.no_grad():
        return f()


# --------------------------------------------------------------------------------------------
# odefunc, node-step, ddpm-step: the models (timeaware.models, imported when built)
# --------------------------------------------------------------------------------------------
class TorchdiffeqConcatConv2d(nn.Module):
    """torchdiffeq's example ``ConcatConv2d``: a conv over ``cat([t * ones, x])``.

    Shapes: t a number or 0-d tensor; x (N, C_in, H, W) -> (N, C_out, H', W').
    """

    def __init__(self, dim_in: int, dim_out: int, ksize: int = 3, stride: int = 1, padding=0):
        super().__init__()
        self._layer = nn.Conv2d(dim_in + 1, dim_out, ksize, stride, padding)

    def forward(self, t, x: Tensor) -> Tensor:
        tt = torch.ones_like(x[:, :1, :, :]) * t
        return self._layer(torch.cat([tt, x], 1))


class TorchdiffeqODEfunc(nn.Module):
    """torchdiffeq's example ``ODEfunc`` (examples/odenet_mnist.py), the baseline NODE users run.

    norm1 -> ReLU -> conv1 (ConcatConv) -> norm2 -> ReLU -> conv2 (ConcatConv) -> norm3, with
    ``nn.GroupNorm(min(32, dim), dim)`` and an in-place ReLU, as in the example. Its state dict
    is that of ``timeaware.models.ODEFunc(dim)`` (which loads torchdiffeq checkpoints).

    Shapes: t a number or 0-d tensor; x (N, dim, H, W) -> (N, dim, H, W).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(32, dim), dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = TorchdiffeqConcatConv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.GroupNorm(min(32, dim), dim)
        self.conv2 = TorchdiffeqConcatConv2d(dim, dim, 3, 1, 1)
        self.norm3 = nn.GroupNorm(min(32, dim), dim)
        self.nfe = 0

    def forward(self, t, x: Tensor) -> Tensor:
        self.nfe += 1
        out = self.norm1(x)
        out = self.relu(out)
        out = self.conv1(t, out)
        out = self.norm2(out)
        out = self.relu(out)
        out = self.conv2(t, out)
        out = self.norm3(out)
        return out


def _maybe_compile(module: torch.nn.Module, baseline: str) -> None:
    """Compile ``module`` in place (so counters such as ``ODEFunc.nfe`` stay on it).

    Shapes never change within a variant, so dynamo's default automatic-dynamic mode keeps them
    static; it does make ``ODEFunc``'s ``nfe`` counter dynamic after one recompile (with
    ``allow_unspec_int_on_nn_module``, set by the harness) instead of recompiling at every call,
    as ``dynamic=False`` would.
    """
    info = BASELINE_INFO[baseline]
    if info.compiled:
        module.compile(mode=info.compile_mode)


def _ode_function(baseline: str, c: int, device: torch.device) -> nn.Module:
    """The ODE function of ``baseline``, seeded: the same weights for every baseline."""
    from timeaware.models import ODEFunc

    torch.manual_seed(0)
    func = ODEFunc(channels=c, backend=BASELINE_INFO[baseline].backend)
    if baseline == "torchdiffeq-example":
        example = TorchdiffeqODEfunc(c)
        example.load_state_dict(func.state_dict())
        func = example
    return func.to(device)


def build_odefunc(
    n: int, c: int, hw: int, amp: torch.dtype | None, baseline: str, device: torch.device
) -> Case:
    """The paper's ODE function [GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN] at one time t.

    ``t`` does not require grad (as inside a forward solve).
    """
    func = _ode_function(baseline, c, device)
    _maybe_compile(func, baseline)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, hw, hw, generator=gen, device=device).requires_grad_(True)
    t = torch.tensor(0.5, device=device)

    def forward():
        with _autocast(device, amp):
            return func(t, x)

    return Case(
        forward=forward,
        leaves=[x, *func.parameters()],
        cotangent=torch.randn(n, c, hw, hw, generator=gen, device=device),
        probe=lambda: _no_grad(forward),
    )


def _nfe_of(block) -> tuple[int, int]:
    return int(getattr(block, "nfe_forward", -1)), int(getattr(block, "nfe_backward", -1))


# NFE = first + per_step x attempted steps, per solve (torchdiffeq's dopri5: one evaluation at
# t0, one to pick the first step, then six per attempted step, FSAL)
NFE_PER_STEP = {"dopri5": (2, 6)}


def attempted_steps(method: str, nfe: int) -> int | None:
    """Attempted steps of one solve from its NFE, or None when ``method``'s rule is unknown or
    the NFE does not fit it.

    Args:
        method: solver name (a key of :data:`NFE_PER_STEP`).
        nfe: evaluations of one solve (>= 0).
    """
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 0:
        raise ValueError(f"nfe: expected an int >= 0, got {nfe!r}")
    rule = NFE_PER_STEP.get(method)
    if rule is None or nfe == 0:
        return None if rule is None else 0
    first, per = rule
    if nfe < first or (nfe - first) % per:
        return None
    return (nfe - first) // per


# NODE classifier per baseline: its backend, whether the ODE function is replaced by
# torchdiffeq's example (the solver, stem and head stay eager), the ODEBlock's solver (set on
# the block after building: NODEClassifier has no solver argument), and further
# NODEClassifier keyword arguments
NODE_MODEL = {
    name: {
        "backend": BASELINE_INFO[name].backend,
        "example": name == "torchdiffeq-example",
        "solver": BASELINE_INFO[name].solver,
        "kwargs": {},
    }
    for name in NODE_STEP_BASELINES
}


def node_classifier(baseline: str, device: torch.device, channels: int = 64, image_size: int = 32):
    """The seeded NODE classifier of ``baseline`` (same weights for every baseline), in training
    mode, its ODE function compiled for the compiled baselines.

    Args:
        baseline: a key of :data:`NODE_MODEL`.
        device: where the model lives.
        channels: C of the ODE state; image_size: input H = W (a multiple of 4).

    Returns:
        A ``timeaware.models.NODEClassifier`` whose ``odeblock.solver`` is the baseline's.

    Raises:
        ValueError: ``baseline`` is not a node-step baseline.
    """
    from timeaware.models import NODEClassifier

    if baseline not in NODE_MODEL:
        raise ValueError(f"baseline: got {baseline!r}, expected one of {tuple(NODE_MODEL)}")
    cfg = NODE_MODEL[baseline]
    torch.manual_seed(0)
    model = NODEClassifier(
        in_channels=3,
        num_classes=10,
        channels=channels,
        image_size=image_size,
        backend=cfg["backend"],
        **cfg["kwargs"],
    )
    if cfg["example"]:
        example = TorchdiffeqODEfunc(channels)
        example.load_state_dict(model.odeblock.odefunc.state_dict())
        model.odeblock.odefunc = example
    model.odeblock.solver = cfg["solver"]
    model = model.to(device)
    model.train()
    _maybe_compile(model.odeblock.odefunc, baseline)
    return model


def _solver_backend(cfg: dict):
    """``use_backend(cfg["backend"])`` for a timeaware solver, else nothing."""
    if cfg["solver"] != "timeaware":
        return contextlib.nullcontext()
    from timeaware import use_backend

    return use_backend(cfg["backend"])


def node_solve_problem(
    batch: int, channels: int, image_size: int, baseline: str, device: torch.device
) -> SolveProblem:
    """node-step's solve, for its solver-cost rows: the ODE function of ``baseline``'s NODE
    classifier from its seeded initial state (the classifier's features of the seeded batch),
    t = [0, 1], rtol = atol = 1e-3, adjoint (the paper's NODE setting, DESIGN section 6).

    Args:
        batch, channels, image_size: the classifier's batch and size (the state is
            (batch, channels, image_size / 4, image_size / 4)).
        baseline: whose ODE function (its backend): ``"eager"`` (the reference backend, cheap
            on a CPU) or ``"fused+timeaware-solver"`` (the fused op).
        device: where it runs.

    Raises:
        ValueError: ``batch`` not a positive int, or ``baseline`` not a node-step baseline.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    model = node_classifier(baseline, device, channels, image_size)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen, device=device)
    with torch.no_grad():
        y0 = model.features(x)
    s = image_size // 4
    block = model.odeblock
    return SolveProblem(
        func=block.odefunc,
        y0=y0,
        t=torch.tensor([0.0, block.t1], device=device),
        rtol=block.rtol,
        atol=block.atol,
        adjoint=block.adjoint,
        shape=f"state {batch}x{channels}x{s}x{s}, {BASELINE_INFO[baseline].backend} ODE function",
    )


def build_node_step(
    batch: int,
    amp: torch.dtype | None,
    baseline: str,
    device: torch.device,
    channels: int = 64,
    image_size: int = 32,
) -> Case:
    """NODE classifier training step: forward solve, cross-entropy, adjoint backward solve.

    The ODE block solves with ``NODE_MODEL[baseline]["solver"]``: torchdiffeq, or timeaware's
    dopri5 (``model.odeblock.solver = "timeaware"``) on the baseline's backend (the forward
    runs inside ``timeaware.use_backend(backend)``, so that the fused baseline's solver runs
    its kernels on a CPU too, under the interpreter; on a GPU ``auto`` picks them anyway).
    """
    model = node_classifier(baseline, device, channels, image_size)
    cfg = NODE_MODEL[baseline]
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    params = list(model.parameters())

    def logits():
        with _autocast(device, amp), _solver_backend(cfg):
            return model(x)

    def forward():
        torch.manual_seed(1)  # the same dropout mask in every repetition and baseline
        return F.cross_entropy(logits().float(), y)

    def nfe():
        _reset_grads(params)
        forward().backward()
        _reset_grads(params)
        return _nfe_of(model.odeblock)

    def steps():
        f, b = _nfe_of(model.odeblock)
        sf = attempted_steps(model.odeblock.method, f) if f >= 0 else None
        sb = attempted_steps(model.odeblock.method, b) if b >= 0 else None
        return None if sf is None or sb is None else sf + sb

    def probe():
        with _eval(model):
            return _no_grad(logits)

    return Case(
        forward=forward,
        leaves=params,
        cotangent=None,
        nfe=nfe,
        probe=probe,
        steps=steps,
        last_nfe=lambda: _nfe_of(model.odeblock),
    )


# --------------------------------------------------------------------------------------------
# ode-solve: one dopri5 solve of a cheap field, so that the solver's own cost shows
# --------------------------------------------------------------------------------------------
# Tolerances and end time of ode-solve: 9 attempted steps (NFE 56) at every size used here,
# far enough from float32 rounding (rtol ~1e-6) that both solvers take the same decisions
ODE_SOLVE_RTOL = 1e-4
ODE_SOLVE_ATOL = 1e-6
ODE_SOLVE_T1 = 2.0
ODE_SOLVE_BLOCK = 64


class LinearField(nn.Module):
    """The ode-solve vector field ``dy/dt = y A^T``, on blocks of ``block`` features.

    ``A = S - 0.5 I`` with ``S`` antisymmetric (random, entries ~ 1/sqrt(block)): rotations
    with a decay, so the solution is smooth and bounded. An evaluation is one matmul (one
    launch), small next to the solver's own work per step (torchdiffeq's ~150 launches, or
    timeaware's 8 kernels over the whole state).

    Args:
        block: B, the size of a block (the state's last dimension is a multiple of it).
        generator: seeds the weight (a CPU generator; move the module afterwards).

    Shapes:
        t: ignored. y: (N, D) with D % B == 0. Output: (N, D).
    """

    def __init__(self, block: int = ODE_SOLVE_BLOCK, generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
            raise ValueError(f"block: expected a positive int, got {block!r}")
        a = torch.randn(block, block, generator=generator) / math.sqrt(block)
        self.weight = nn.Parameter(a - a.T - 0.5 * torch.eye(block))
        self.block = block

    def forward(self, t, y: Tensor) -> Tensor:
        return (y.reshape(-1, self.block) @ self.weight.T).view(y.shape)


class _CountCalls(nn.Module):
    """``func`` with a count of its calls (as ``ODEBlock`` counts torchdiffeq's NFE)."""

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t, y):
        self.n += 1
        return self.func(t, y)


def _check_solve_size(n, d) -> None:
    for name, v in (("n", n), ("d", d)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if d % ODE_SOLVE_BLOCK:
        raise ValueError(f"d: got {d}, expected a multiple of {ODE_SOLVE_BLOCK}")


def _ode_solve_inputs(n: int, d: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    field = LinearField(ODE_SOLVE_BLOCK, gen).to(device)
    y0 = torch.randn(n, d, generator=gen).to(device)
    t = torch.tensor([0.0, ODE_SOLVE_T1], device=device)
    return field, y0, t


def build_ode_solve(n: int, d: int, baseline: str, device: torch.device) -> Case:
    """One dopri5 solve of :class:`LinearField` from a seeded (n, d) state over [0, 2].

    ``eager`` is ``torchdiffeq.odeint``; ``eager+timeaware-solver`` and
    ``fused+timeaware-solver`` are ``timeaware.odeint`` with ``backend="reference"`` and
    ``"triton"``. rtol = 1e-4, atol = 1e-6. Every solve counts its NFE the way ``ODEBlock``
    does (torchdiffeq: a call counter around the field; timeaware: ``SolverStats``), so that
    ``nfe``, ``steps`` and ``last_nfe`` need no extra solve.

    Args:
        n, d: the state's shape (d a multiple of 64).
        baseline: one of :data:`ODE_SOLVE_BASELINES`.
        device: where it runs.

    Returns:
        The :class:`Case`: ``forward`` returns the state at t = 2, (n, d); no leaves (a
        solve alone: mode ``fwd``); ``nfe`` gives (NFE, 0).

    Raises:
        ValueError: ``n``, ``d`` not positive ints, ``d`` not a multiple of 64, or an unknown
            ``baseline``.
    """
    _check_solve_size(n, d)
    if baseline not in ODE_SOLVE_BASELINES:
        raise ValueError(f"baseline: got {baseline!r}, expected one of {ODE_SOLVE_BASELINES}")
    field, y0, t = _ode_solve_inputs(n, d, device)
    info = BASELINE_INFO[baseline]
    last = [0]
    if info.solver == "torchdiffeq":
        import torchdiffeq

        counted = _CountCalls(field)

        def forward():
            counted.n = 0
            out = torchdiffeq.odeint(
                counted, y0, t, rtol=ODE_SOLVE_RTOL, atol=ODE_SOLVE_ATOL, method="dopri5"
            )
            last[0] = counted.n
            return out[-1]

    else:
        from timeaware.solvers import SolverStats, odeint

        def forward():
            stats = SolverStats()
            out = odeint(field, y0, t, rtol=ODE_SOLVE_RTOL, atol=ODE_SOLVE_ATOL,
                         backend=info.backend, stats=stats)  # fmt: skip
            last[0] = stats.forward.nfe
            return out[-1]

    def nfe():
        _no_grad(forward)
        return last[0], 0

    def steps():
        return attempted_steps("dopri5", last[0])

    return Case(
        forward=forward,
        leaves=[],
        cotangent=None,
        nfe=nfe,
        probe=lambda: _no_grad(forward),
        steps=steps,
        last_nfe=lambda: (last[0], 0),
    )


def ode_solve_problem(n: int, d: int, device: torch.device) -> SolveProblem:
    """ode-solve's solve (the same field, state and tolerances as :func:`build_ode_solve`)
    for its solver-cost rows; no adjoint.

    Raises:
        ValueError: as :func:`build_ode_solve`.
    """
    _check_solve_size(n, d)
    field, y0, t = _ode_solve_inputs(n, d, device)
    return SolveProblem(
        func=field,
        y0=y0,
        t=t,
        rtol=ODE_SOLVE_RTOL,
        atol=ODE_SOLVE_ATOL,
        adjoint=False,
        shape=f"state {n}x{d}",
    )


@dataclass(frozen=True)
class UNetSpec:
    """Size of the U-Net of the ddpm-step workload."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    groups: int = 32
    image_size: int = 32

    @property
    def shape(self) -> str:
        mult = ",".join(map(str, self.ch_mult))
        return (
            f"U-Net ch{self.ch} ({mult}) {self.num_res_blocks} res G{self.groups}, "
            f"3x{self.image_size}x{self.image_size}"
        )


def build_ddpm_step(
    batch: int, spec: UNetSpec, amp: torch.dtype | None, baseline: str, device: torch.device
) -> Case:
    """DDPM training step: epsilon-prediction loss at random timesteps, backward."""
    from timeaware.models import GaussianDiffusion, UNet

    torch.manual_seed(0)
    unet = UNet(
        in_channels=3,
        ch=spec.ch,
        ch_mult=spec.ch_mult,
        num_res_blocks=spec.num_res_blocks,
        attn_resolutions=spec.attn_resolutions,
        dropout=0.1,
        groups=spec.groups,
        image_size=spec.image_size,
        backend=BASELINE_INFO[baseline].backend,
    ).to(device)
    unet.train()
    diffusion = GaussianDiffusion(unet, timesteps=1000)
    if isinstance(diffusion, torch.nn.Module):
        diffusion = diffusion.to(device)
    _maybe_compile(unet, baseline)
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand(batch, 3, spec.image_size, spec.image_size, generator=gen, device=device)
    x0 = x0 * 2 - 1

    def forward():
        with _autocast(device, amp):
            loss = diffusion.loss(x0)
        return loss.float().mean()

    t_probe = torch.randint(0, 1000, (batch,), generator=gen, device=device)

    def probe():  # the U-Net's output (the loss hardly depends on a freshly initialised net)
        with _eval(unet), _autocast(device, amp):  # eval: no dropout
            return _no_grad(lambda: unet(x0, t_probe))

    return Case(forward=forward, leaves=list(unet.parameters()), cotangent=None, probe=probe)


# --------------------------------------------------------------------------------------------
# diffusers-unet: diffusers' UNet2DModel, unpatched and patched (timeaware.integrations)
# --------------------------------------------------------------------------------------------
DIFFUSERS_INTEGRATION = "timeaware.integrations.diffusers"


def diffusers_unavailable() -> str | None:
    """Why the diffusers-unet workload cannot run here, or None when it can.

    Imports ``timeaware.integrations.diffusers`` (a dictionary look-up once it is imported).

    Returns:
        ``"ImportError: <first line of its message>"`` when the import raises ImportError
        (diffusers is not installed), else None.
    """
    try:
        importlib.import_module(DIFFUSERS_INTEGRATION)
    except ImportError as e:
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]
    return None


def _diffusers_shape(config: dict | None) -> str:
    """The shape column of a diffusers-unet variant (``config``: overrides of DDPM's)."""
    if not config:
        return "UNet2DModel DDPM-CIFAR10 (35.7M parameters), 3x32x32"
    channels = ",".join(map(str, config.get("block_out_channels", (128, 256, 256, 256))))
    size = config.get("sample_size", 32)
    return (
        f"UNet2DModel DDPM-CIFAR10 layout, channels ({channels}) "
        f"G{config.get('norm_num_groups', 32)}, 3x{size}x{size}"
    )


def build_diffusers_unet(
    batch: int,
    amp: torch.dtype | None,
    baseline: str,
    device: torch.device,
    config: dict | None = None,
) -> Case:
    """DDPM training step of diffusers' ``UNet2DModel`` with DDPM's CIFAR-10 architecture.

    ``eager`` is the unpatched diffusers model, ``compile``/``compile-max`` ``torch.compile`` of
    it (in place) and ``fused`` the same model after
    ``timeaware.integrations.diffusers.apply(unet, backend="triton")``: the same random weights
    (``torch.manual_seed(0)`` before ``ddpm_cifar10_unet()``), dropout 0.1, training mode. The
    clean batch ``x0`` (N, C, S, S) is uniform in [-1, 1]. Every step seeds the global RNG
    (``torch.manual_seed(1)``) before ``ddpm_training_loss``, so the timesteps, the noise and
    the dropout masks are the same in every repetition and in every baseline; the loss is
    computed under ``autocast(amp)`` and returned as a 0-d fp32 tensor (the backward runs
    outside autocast). The leaves are the U-Net's parameters.

    Args:
        batch: N, the number of images of a step (> 0).
        amp: autocast dtype, or None for fp32.
        baseline: ``"eager"``, ``"compile"``, ``"compile-max"`` or ``"fused"``.
        device: where the model and the batch live.
        config: ``UNet2DModel`` arguments replacing those of DDPM's CIFAR-10 configuration
            (``DDPM_CIFAR10_CONFIG``; a narrower model on CPU), or None for the 35.7M-parameter
            model.

    Returns:
        The :class:`Case`; its ``probe`` is the eval-mode U-Net output (N, C, S, S) at fixed
        timesteps.

    Raises:
        ValueError: ``batch`` not a positive int, or ``baseline`` not one of the above.
        TypeError: ``config`` not a dict or None, or ``amp`` not a dtype or None.
        ImportError: diffusers is not installed (see :func:`diffusers_unavailable`).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    if baseline not in GENERIC_BASELINES:
        raise ValueError(f"baseline: got {baseline!r}, expected one of {GENERIC_BASELINES}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config: expected a dict of UNet2DModel arguments or None, got {config!r}")
    if amp is not None and not isinstance(amp, torch.dtype):
        raise TypeError(f"amp: expected a torch.dtype or None, got {type(amp).__name__}")
    tad = importlib.import_module(DIFFUSERS_INTEGRATION)
    torch.manual_seed(0)
    unet = tad.ddpm_cifar10_unet(**(config or {})).to(device)
    unet.train()
    if BASELINE_INFO[baseline].backend == "triton":
        tad.apply(unet, backend="triton")
    _maybe_compile(unet, baseline)
    cfg = unet.config
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    x0 = torch.rand(shape, generator=gen, device=device) * 2 - 1
    t_probe = torch.randint(0, 1000, (batch,), generator=gen, device=device)

    def forward():
        torch.manual_seed(1)  # same timesteps, noise and dropout masks in every step
        with _autocast(device, amp):
            return tad.ddpm_training_loss(unet, x0)

    def probe():  # the U-Net's output (eval: no dropout)
        with _eval(unet), _autocast(device, amp):
            return _no_grad(lambda: unet(x0, t_probe).sample)

    return Case(forward=forward, leaves=list(unet.parameters()), cotangent=None, probe=probe)


# --------------------------------------------------------------------------------------------
# The table of workloads per profile
# --------------------------------------------------------------------------------------------
# Batch sizes per profile. "full" and "quick" keep DESIGN section 7's op shapes (a GPU runs them
# in microseconds); "quick" shrinks the training steps; "cpu" shrinks everything so the eager
# reference finishes in seconds on two cores.
_BATCH = {
    "full": {"op": 128, "odefunc": 128, "node-step": 128, "ddpm-step": 128, "diffusers-unet": 128},
    "quick": {"op": 128, "odefunc": 128, "node-step": 64, "ddpm-step": 32, "diffusers-unet": 32},
    "cpu": {"op": 8, "odefunc": 16, "node-step": 8, "ddpm-step": 4, "diffusers-unet": 4},
}
_CPU_UNET = UNetSpec(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), groups=8, image_size=16
)
# diffusers-unet on CPU: DDPM's CIFAR-10 layout (four levels of two resnets, attention at the
# second, channels 1:2:2:2) at a quarter of the width, G8, on 16x16 images: an eager step takes
# ~0.1 s on one core. Its eager fp32 step launches as many aten ops as the 35.7M model's at the
# same batch (1025 at batch 4, counted on CPU); the fused count differs where the full size
# picks another kernel regime (102 Triton launches here, 111 there).
_CPU_DIFFUSERS = {"block_out_channels": (32, 64, 64, 64), "norm_num_groups": 8, "sample_size": 16}
# The NODE step whose launches are counted on CPU (the baselines that run no Triton kernel) and
# whose solve the solver rows count there, at this size; on a GPU the timed size is counted.
_CPU_COUNT_NODE = {"batch": 2, "channels": 16, "image_size": 16}
# On a CPU node-step's fused training steps are not counted: the Triton interpreter takes ~10 s
# per step (every fused launch ~25 ms); the fused op's launches are counted (stubbed) in the
# odefunc rows, and both solvers' launches and syncs per step in node-step's solver rows
_CPU_NO_COUNT_NODE = (
    "not counted on CPU (an interpreted fused training step takes ~10 s): the fused op's "
    "launches are in the odefunc rows, the solvers' per step in the solver rows"
)
# ode-solve's state (N, D) per profile; on a CPU it is counted (the Triton interpreter runs the
# solver's kernels) at the smaller _CPU_COUNT_SOLVE, with the same steps and NFE
_ODE_SOLVE = {"full": (128, 4096), "quick": (128, 4096), "cpu": (16, 512)}
_CPU_COUNT_SOLVE = (4, 256)
_MODEL_MAX_AUTOTUNE = "max-autotune of a whole model compiles for too long (--max-autotune all)"
_NO_MAX_AUTOTUNE = "max-autotune off (--quick or --max-autotune none)"
_QUICK_UNET = "--quick: compiling the whole U-Net takes minutes"
_QUICK_COMPILE = {"ddpm-step", "diffusers-unet"}  # workloads whose compile --quick skips

# The fused-op workloads: (id, C, H = W, G, act, addends, dtype). A row here is a new variant.
OP_WORKLOADS = (
    ("gn-node", 64, 8, 32, "relu", ("conv_bias", "time"), torch.float32),
    ("gn-ddpm", 256, 16, 32, "silu", ("emb", "pos"), torch.bfloat16),
    ("gn-ddpm", 128, 32, 32, "silu", ("emb", "pos"), torch.bfloat16),
    ("gn-g1", 128, 32, 1, "silu", ("emb",), torch.float32),
    ("gn-g1", 128, 32, 1, "silu", ("emb",), torch.bfloat16),
)
COUNT_MODES = ("fwd", "fwd+bwd")


def variants(
    profile: str = "full", dtype: str | None = None, max_autotune: str = "ops"
) -> list[Variant]:
    """Every variant of every workload for ``profile``.

    Args:
        profile: ``"full"`` (DESIGN section 7 sizes), ``"quick"`` or ``"cpu"``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` to override every workload's own dtype (the
            op input dtype; the autocast dtype of the models), or None.
        max_autotune: ``"ops"`` (compile-max for gn-* and odefunc), ``"all"`` or ``"none"``.

    Raises:
        ValueError: unknown profile, dtype or max_autotune.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile: got {profile!r}, expected one of {PROFILES}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype: got {dtype!r}, expected one of {tuple(DTYPES)}")
    if max_autotune not in ("ops", "all", "none"):
        raise ValueError(f"max_autotune: got {max_autotune!r}, expected ops, all or none")
    batch = _BATCH[profile]
    over = DTYPES[dtype] if dtype else None
    out: list[Variant] = []

    def skips(workload: str) -> tuple[tuple[str, str], ...]:
        why = []
        if max_autotune == "none":
            why.append(("compile-max", _NO_MAX_AUTOTUNE))
        elif workload in MODEL_WORKLOADS and max_autotune != "all":
            why.append(("compile-max", _MODEL_MAX_AUTOTUNE))
        if workload in _QUICK_COMPILE and profile == "quick":
            why.append(("compile", _QUICK_UNET))
        return tuple(why)

    for workload, c, hw, groups, act, addends, dt in OP_WORKLOADS:
        spec = OpSpec(batch["op"], c, hw, hw, groups, act, addends, over or dt)
        label = f"{workload} C{c} {hw}x{hw} {dtype_name(spec.dtype)}"
        if any(v.label == label for v in out):  # --dtype collapses gn-g1's two dtypes
            continue
        out.append(
            Variant(
                workload,
                label,
                spec.shape,
                dtype_name(spec.dtype),
                MODES,
                functools.partial(build_op, spec),
                "+".join(addends) + f", {act}",
                skips(workload),
                count_modes=COUNT_MODES,
            )
        )

    amp = over if over not in (None, torch.float32) else None
    amp_name = f"{dtype_name(amp)} autocast" if amp else "fp32"
    n = batch["odefunc"]
    out.append(
        Variant(
            "odefunc",
            f"odefunc C64 8x8 {amp_name}",
            f"N{n} C64 8x8",
            amp_name,
            ("fwd", "fwd+bwd"),
            functools.partial(build_odefunc, n, 64, 8, amp),
            "GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN; t without grad",
            skips("odefunc"),
            baselines=ODE_BASELINES,
            count_modes=COUNT_MODES,
        )
    )
    b = batch["node-step"]
    count_node = None
    count_shape = None
    count_skip = ()
    # the solver rows: the fused ODE function, as the users of the timeaware solver run it
    problem = functools.partial(node_solve_problem, b, 64, 32, "fused+timeaware-solver")
    if profile == "cpu":
        k = _CPU_COUNT_NODE
        count_node = functools.partial(
            _build_node_step_kw, k["batch"], amp, k["channels"], k["image_size"]
        )
        count_shape = f"batch {k['batch']}, 3x{k['image_size']}x{k['image_size']}, C{k['channels']}"
        count_skip = (("fused", _CPU_NO_COUNT_NODE), ("fused+timeaware-solver", _CPU_NO_COUNT_NODE))
        # the reference ODE function: interpreted, the fused one would take seconds more
        problem = functools.partial(
            node_solve_problem, k["batch"], k["channels"], k["image_size"], "eager"
        )
    out.append(
        Variant(
            "node-step",
            f"node-step {amp_name}",
            f"batch {b}, 3x32x32",
            amp_name,
            ("fwd+bwd",),
            functools.partial(build_node_step, b, amp),
            "dopri5 adjoint, rtol=atol=1e-3; torch.compile wraps the ODE function",
            skips("node-step"),
            baselines=NODE_STEP_BASELINES,
            count_modes=("fwd+bwd",),
            count_build=count_node,
            count_shape=count_shape,
            stub_ok=False,
            count_skip=count_skip,
            solve_problem=problem,
            slow_interpreted=True,
        )
    )
    n, d = _ODE_SOLVE[profile]
    count_solve = count_solve_shape = None
    cn, cd = n, d
    if profile == "cpu":
        cn, cd = _CPU_COUNT_SOLVE
        count_solve = functools.partial(build_ode_solve, cn, cd)
        count_solve_shape = f"N{cn} D{cd}"
    out.append(
        Variant(
            "ode-solve",
            "ode-solve fp32",
            f"N{n} D{d}",
            "fp32",
            ("fwd",),
            functools.partial(build_ode_solve, n, d),
            f"one dopri5 solve, t in [0, {ODE_SOLVE_T1:g}], rtol={ODE_SOLVE_RTOL:g} "
            f"atol={ODE_SOLVE_ATOL:g}, of dy/dt = y A^T on blocks of {ODE_SOLVE_BLOCK} (one "
            "matmul per evaluation); fp32 whatever --dtype says",
            baselines=ODE_SOLVE_BASELINES,
            count_modes=("fwd",),
            count_build=count_solve,
            count_shape=count_solve_shape,
            stub_ok=False,
            solve_problem=functools.partial(ode_solve_problem, cn, cd),
        )
    )
    unet = _CPU_UNET if profile == "cpu" else UNetSpec()
    if over is None:
        ddpm_amp = None if profile == "cpu" else torch.bfloat16  # CPU bf16 autocast is slow
    else:
        ddpm_amp = amp
    ddpm_name = f"{dtype_name(ddpm_amp)} autocast" if ddpm_amp else "fp32"
    b = batch["ddpm-step"]
    out.append(
        Variant(
            "ddpm-step",
            f"ddpm-step {ddpm_name}",
            f"batch {b}, {unet.shape}",
            ddpm_name,
            ("fwd+bwd",),
            functools.partial(build_ddpm_step, b, unet, ddpm_amp),
            "T=1000 epsilon loss; torch.compile wraps the U-Net"
            + (" (tiny U-Net on CPU)" if profile == "cpu" else ""),
            skips("ddpm-step"),
            count_modes=("fwd+bwd",),
        )
    )
    b = batch["diffusers-unet"]
    config = _CPU_DIFFUSERS if profile == "cpu" else None
    out.append(
        Variant(
            "diffusers-unet",
            f"diffusers-unet {ddpm_name}",
            f"batch {b}, {_diffusers_shape(config)}",
            ddpm_name,
            ("fwd+bwd",),
            functools.partial(build_diffusers_unet, b, ddpm_amp, config=config),
            "diffusers UNet2DModel, random weights, dropout 0.1, T=1000 epsilon loss; eager = "
            "unpatched, fused = tad.apply(unet, backend='triton'), torch.compile wraps the "
            "unpatched U-Net" + (" (narrow U-Net on CPU)" if profile == "cpu" else ""),
            skips("diffusers-unet"),
            count_modes=("fwd+bwd",),
            unavailable=diffusers_unavailable,
        )
    )
    return out


def _build_node_step_kw(batch, amp, channels, image_size, baseline, device) -> Case:
    return build_node_step(batch, amp, baseline, device, channels=channels, image_size=image_size)


def split_names(names) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: lists given with spaces, commas or both.

    Raises:
        TypeError: ``names`` is not a list/tuple of strings.
    """
    if names is None:
        return []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"names: expected a list of strings, got {type(names).__name__}")
    out = []
    for item in names:
        if not isinstance(item, str):
            raise TypeError(f"names: expected strings, got {type(item).__name__} {item!r}")
        out += [s.strip() for s in item.split(",") if s.strip()]
    return out


def select(vs: list[Variant], only: list[str] | None) -> list[Variant]:
    """The variants whose workload id (or label) is in ``only``; all when ``only`` is empty.

    ``only`` may hold comma-separated lists (``["gn-node,odefunc"]``). ``host`` selects no
    variant (it is the host-overhead benchmark, run by the harness).

    Raises:
        ValueError: a name that matches no workload.
    """
    only = split_names(only)
    if not only:
        return vs
    for name in only:
        if name not in WORKLOADS and not any(v.label == name for v in vs):
            raise ValueError(f"--only: unknown workload {name!r}, expected one of {WORKLOADS}")
    return [v for v in vs if v.workload in only or v.label in only]


def skip_reason(variant: Variant, baseline: str) -> str | None:
    """Why ``baseline`` is not run for ``variant``, or None.

    A variant that is unavailable here (:attr:`Variant.unavailable`: a missing optional
    dependency) gives that reason for each of its baselines; otherwise its ``skip`` entry.
    """
    if variant.unavailable is not None and baseline in variant.baselines:
        why = variant.unavailable()
        if why:
            return why
    return dict(variant.skip).get(baseline)
