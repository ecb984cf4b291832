"""Time-aware modules: fused normalisation + activation, ConcatConv, timestep embeddings, and
bias-initialisation policies.

Every module that normalises takes ``backend=`` (None follows :func:`timeaware.use_backend` and
the global default) and accepts the timestep-embedding addends as arguments, so the fused op
:func:`timeaware.ops.group_norm_act` adds them while it normalises.
"""

from ._utils import ACTIVATIONS, FUSED_ACTIVATIONS
from .conv import ConcatConv2d, ConcatConvGNAct, concat_conv_norm
from .embedding import (
    PositionalLinear,
    PositionalMLP,
    SinusoidalEmbedding,
    TimeMLP,
    TimestepMLP,
)
from .init import (
    ZERO_BIAS_POLICIES,
    apply_zero_bias,
    bias_branches,
    is_timestep_branch,
    mark_timestep_branch,
)
from .norm import (
    NORM_KINDS,
    BatchNormAct,
    GroupNormAct,
    InstanceNormAct,
    TimeAwareNorm,
    make_norm,
)

__all__ = [
    "ACTIVATIONS",
    "FUSED_ACTIVATIONS",
    "NORM_KINDS",
    "ZERO_BIAS_POLICIES",
    "BatchNormAct",
    "ConcatConv2d",
    "ConcatConvGNAct",
    "GroupNormAct",
    "InstanceNormAct",
    "PositionalLinear",
    "PositionalMLP",
    "SinusoidalEmbedding",
    "TimeAwareNorm",
    "TimeMLP",
    "TimestepMLP",
    "apply_zero_bias",
    "bias_branches",
    "concat_conv_norm",
    "is_timestep_branch",
    "make_norm",
    "mark_timestep_branch",
]
