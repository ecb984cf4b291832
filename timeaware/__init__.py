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
# --- end ---
