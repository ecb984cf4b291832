"""The fixed workloads of DESIGN section 7, each buildable for every baseline.

A :class:`Variant` is one row group of the table (a workload at one shape and dtype); its
``build(baseline, device)`` returns a :class:`Case`: the inputs and the forward callable for that
baseline, with everything the timing and the report need (leaves whose ``.grad`` is reset between
repetitions, the explicit byte count of each mode, the NFE of a solve).

Baselines, all on the same inputs and the same weights (every build is seeded identically):

    eager        the reference backend: plain eager PyTorch (adds + F.group_norm + act)
    compile      torch.compile (default mode) of that same eager code
    compile-max  torch.compile(mode="max-autotune-no-cudagraphs"): autotuned Triton templates,
                 without CUDA graphs, which the fused backend does not use either
    fused        the Triton backend of timeaware

Modes: ``fwd`` is the forward alone under ``torch.no_grad()`` (the adjoint solve and sampling
run it so); ``bwd`` is ``out.backward(dy, retain_graph=True)`` on a graph built once outside the
timing; ``fwd+bwd`` is the forward with autograd plus the backward. The ``*-step`` workloads are
training steps (forward, loss, backward; no optimizer update, so every repetition solves the same
problem and the NFE stays fixed) and have ``fwd+bwd`` only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

BASELINES = ("eager", "compile", "compile-max", "fused")
MODES = ("fwd", "bwd", "fwd+bwd")
WORKLOADS = ("gn-node", "gn-ddpm", "gn-g1", "odefunc", "node-step", "ddpm-step")
PROFILES = ("full", "quick", "cpu")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

BACKEND_OF = {
    "eager": "reference",
    "compile": "reference",
    "compile-max": "reference",
    "fused": "triton",
}
COMPILE_MODE = {"compile": None, "compile-max": "max-autotune-no-cudagraphs"}


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
    """

    forward: Callable[[], Tensor]
    leaves: list[Tensor]
    cotangent: Tensor | None
    bytes: dict[str, int] | None = None
    nfe: Callable[[], tuple[int, int]] | None = None
    probe: Callable[[], Tensor] | None = None


@dataclass(frozen=True)
class Variant:
    """One workload at one shape and dtype: a group of rows in the table."""

    workload: str
    label: str
    shape: str
    dtype: str
    modes: tuple[str, ...]
    build: Callable[[str, torch.device], Case] = field(repr=False, compare=False)
    note: str = ""
    skip: tuple[tuple[str, str], ...] = ()  # (baseline, why it is not run)


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


# --------------------------------------------------------------------------------------------
# gn-*: the fused op alone
# --------------------------------------------------------------------------------------------
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
    if baseline in COMPILE_MODE:
        from timeaware.reference import group_norm_act_ref

        return torch.compile(group_norm_act_ref, mode=COMPILE_MODE[baseline])
    from timeaware.ops import group_norm_act

    return functools.partial(group_norm_act, backend=BACKEND_OF[baseline])


def build_op(spec: OpSpec, baseline: str, device: torch.device) -> Case:
    """The op of DESIGN section 1 with ``spec``'s addends, on ``baseline``."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0, dtype=spec.dtype, grad=True):
        t = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
        return (t * scale + shift).to(dtype).requires_grad_(grad)

    n, c, h, w = spec.n, spec.c, spec.h, spec.w
    x = rnd(n, c, h, w)
    weight = rnd(c, scale=0.1, shift=1.0, dtype=torch.float32)
    beta = rnd(c, scale=0.1, dtype=torch.float32)
    add = {}
    if "conv_bias" in spec.addends:
        add["conv_bias"] = rnd(c, scale=0.1)
    if "emb" in spec.addends:
        add["emb"] = rnd(n, c)
    if "time" in spec.addends:
        add["time"] = torch.rand(n, generator=gen, device=device)
        add["time_map"] = rnd(c, h, w, scale=0.1)
    if "pos" in spec.addends:
        add["pos"] = rnd(n, h, w)
    fn = _op_function(baseline)

    def forward():
        return fn(x, spec.groups, weight, beta, 1e-5, act=spec.act, **add)

    leaves = [x, weight, beta] + [t for t in add.values() if t.requires_grad]
    params = [weight, beta]
    addends = list(add.values())
    stats = n * spec.groups * 4 * 2  # fp32 mean and rstd
    fwd = _nbytes(x, *addends, *params) + _nbytes(x)  # read all, write y
    grads = _nbytes(*[t for t in addends + params if t.requires_grad])
    bwd = _nbytes(x, x, *addends, *params) + stats + _nbytes(x) + grads  # dy, x in; dx out
    return Case(
        forward=forward,
        leaves=leaves,
        cotangent=torch.randn(n, c, h, w, generator=gen, device=device).to(spec.dtype),
        bytes={"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + stats + bwd},
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
def _maybe_compile(module: torch.nn.Module, baseline: str) -> None:
    """Compile ``module`` in place (so counters such as ``ODEFunc.nfe`` stay on it).

    Shapes never change within a variant, so dynamo's default automatic-dynamic mode keeps them
    static; it does make ``ODEFunc``'s ``nfe`` counter dynamic after one recompile (with
    ``allow_unspec_int_on_nn_module``, set by the harness) instead of recompiling at every call,
    as ``dynamic=False`` would.
    """
    if baseline in COMPILE_MODE:
        module.compile(mode=COMPILE_MODE[baseline])


def build_odefunc(
    n: int, c: int, hw: int, amp: torch.dtype | None, baseline: str, device: torch.device
) -> Case:
    """The paper's ODE function [GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN] at one time t."""
    from timeaware.models import ODEFunc

    torch.manual_seed(0)
    func = ODEFunc(channels=c, backend=BACKEND_OF[baseline]).to(device)
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


def build_node_step(
    batch: int, amp: torch.dtype | None, baseline: str, device: torch.device
) -> Case:
    """NODE classifier training step: forward solve, cross-entropy, adjoint backward solve."""
    from timeaware.models import NODEClassifier

    torch.manual_seed(0)
    model = NODEClassifier(
        in_channels=3, num_classes=10, channels=64, image_size=32, backend=BACKEND_OF[baseline]
    ).to(device)
    model.train()
    _maybe_compile(model.odeblock.odefunc, baseline)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    params = list(model.parameters())

    def logits():
        with _autocast(device, amp):
            return model(x)

    def forward():
        torch.manual_seed(1)  # the same dropout mask in every repetition and baseline
        return F.cross_entropy(logits().float(), y)

    def nfe():
        _reset_grads(params)
        forward().backward()
        _reset_grads(params)
        return _nfe_of(model.odeblock)

    def probe():
        with _eval(model):
            return _no_grad(logits)

    return Case(forward=forward, leaves=params, cotangent=None, nfe=nfe, probe=probe)


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
        backend=BACKEND_OF[baseline],
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
# The table of workloads per profile
# --------------------------------------------------------------------------------------------
# Batch sizes per profile. "full" and "quick" keep DESIGN section 7's op shapes (a GPU runs them
# in microseconds); "quick" shrinks the training steps; "cpu" shrinks everything so the eager
# reference finishes in seconds on two cores.
_BATCH = {
    "full": {"op": 128, "odefunc": 128, "node-step": 128, "ddpm-step": 128},
    "quick": {"op": 128, "odefunc": 128, "node-step": 64, "ddpm-step": 32},
    "cpu": {"op": 8, "odefunc": 16, "node-step": 8, "ddpm-step": 4},
}
_CPU_UNET = UNetSpec(
    ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), groups=8, image_size=16
)
_MODEL_MAX_AUTOTUNE = "max-autotune of a whole model compiles for too long (--max-autotune all)"
_NO_MAX_AUTOTUNE = "max-autotune off (--quick or --max-autotune none)"
_QUICK_UNET = "--quick: compiling the whole U-Net takes minutes"


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
        elif workload.endswith("-step") and max_autotune != "all":
            why.append(("compile-max", _MODEL_MAX_AUTOTUNE))
        if workload == "ddpm-step" and profile == "quick":
            why.append(("compile", _QUICK_UNET))
        return tuple(why)

    def op(workload, c, hw, groups, act, addends, dt):
        spec = OpSpec(batch["op"], c, hw, hw, groups, act, addends, over or dt)
        label = f"{workload} C{c} {hw}x{hw} {dtype_name(spec.dtype)}"
        if any(v.label == label for v in out):  # --dtype collapses gn-g1's two dtypes
            return
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
            )
        )

    op("gn-node", 64, 8, 32, "relu", ("conv_bias", "time"), torch.float32)
    op("gn-ddpm", 256, 16, 32, "silu", ("emb", "pos"), torch.bfloat16)
    op("gn-ddpm", 128, 32, 32, "silu", ("emb", "pos"), torch.bfloat16)
    op("gn-g1", 128, 32, 1, "silu", ("emb",), torch.float32)
    op("gn-g1", 128, 32, 1, "silu", ("emb",), torch.bfloat16)

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
            "GN-ReLU-ConcatConv-GN-ReLU-ConcatConv-GN",
            skips("odefunc"),
        )
    )
    b = batch["node-step"]
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
        )
    )
    return out


def select(vs: list[Variant], only: list[str] | None) -> list[Variant]:
    """The variants whose workload id (or label) is in ``only``; all when ``only`` is empty.

    Raises:
        ValueError: a name that matches no workload.
    """
    if not only:
        return vs
    for name in only:
        if name not in WORKLOADS and not any(v.label == name for v in vs):
            raise ValueError(f"--only: unknown workload {name!r}, expected one of {WORKLOADS}")
    return [v for v in vs if v.workload in only or v.label in only]


def skip_reason(variant: Variant, baseline: str) -> str | None:
    """Why ``baseline`` is not run for ``variant``, or None."""
    return dict(variant.skip).get(baseline)
