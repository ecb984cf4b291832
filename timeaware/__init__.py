"""timeaware: fused Triton kernels for time-dependent networks (Neural ODEs, diffusion U-Nets).

The one fused op is :func:`timeaware.ops.group_norm_act`; modules live in :mod:`timeaware.nn`,
models in :mod:`timeaware.models`, the vanishing-embedding diagnostics in
:mod:`timeaware.diagnostics`, the trainers in :mod:`timeaware.train`.
"""

from timeaware._backend import BACKENDS, BackendUnavailableError, get_backend, use_backend
from timeaware.ops import group_norm_act
from timeaware.reference import group_norm_act_ref

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "get_backend",
    "group_norm_act",
    "group_norm_act_ref",
    "use_backend",
]

# --- nn/models/diagnostics exports ---
from timeaware import diagnostics, models, nn  # noqa: E402
from timeaware.diagnostics import DiagnosticsReport, diagnose  # noqa: E402
from timeaware.models import (  # noqa: E402
    GaussianDiffusion,
    NODEClassifier,
    ODEBlock,
    ODEFunc,
    ODESolverError,
    ResBlock,
    UNet,
)
from timeaware.nn import (  # noqa: E402
    ConcatConv2d,
    ConcatConvGNAct,
    GroupNormAct,
    PositionalLinear,
    PositionalMLP,
    SinusoidalEmbedding,
    TimeMLP,
    TimestepMLP,
    apply_zero_bias,
    make_norm,
)

__all__ += [
    "ConcatConv2d",
    "ConcatConvGNAct",
    "DiagnosticsReport",
    "GaussianDiffusion",
    "GroupNormAct",
    "NODEClassifier",
    "ODEBlock",
    "ODEFunc",
    "ODESolverError",
    "PositionalLinear",
    "PositionalMLP",
    "ResBlock",
    "SinusoidalEmbedding",
    "TimeMLP",
    "TimestepMLP",
    "UNet",
    "apply_zero_bias",
    "diagnose",
    "diagnostics",
    "make_norm",
    "models",
    "nn",
]
# --- end ---

# --- solvers exports ---
from timeaware.solvers import SolverError, SolverStats, odeint, odeint_adjoint  # noqa: E402

__all__ += ["SolverError", "SolverStats", "odeint", "odeint_adjoint"]
# --- end ---
