"""Backend selection (DESIGN section 4).

``auto`` (default) runs the Triton kernels when the tensor is on CUDA and Triton imports, and the
eager reference otherwise. ``triton`` forces the kernels: on a CPU tensor this works only under
``TRITON_INTERPRET=1`` (how CI tests them). ``reference`` forces eager PyTorch. A forced backend
that cannot run raises :class:`BackendUnavailableError`; it never silently falls back.

Precedence, highest first: the ``backend=`` argument of a call or module, the innermost
:func:`use_backend` context, the ``TIMEAWARE_BACKEND`` environment variable, ``auto``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "reference")
ENV_VAR = "TIMEAWARE_BACKEND"

# Stack of backends set by ``use_backend``; a plain list (not a ContextVar) so that
# torch.compile can read it without a graph break.
_STACK: list[str] = []


class BackendUnavailableError(RuntimeError):
    """Raised when a forced backend cannot run on the given inputs."""


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{what}: got {name!r}, expected one of {BACKENDS}")
    return name.lower()


def get_backend() -> str:
    """The backend in force when a call passes ``backend=None``."""
    if _STACK:
        return _STACK[-1]
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}")
    return "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager selecting the backend for every op and module inside it.

    Args:
        name: ``"auto"``, ``"triton"`` or ``"reference"``.

    Raises:
        ValueError: for any other name.
    """
    name = _check_name(name, "use_backend(name)")
    _STACK.append(name)
    try:
        yield name
    finally:
        _STACK.pop()


_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    """True when the ``triton`` package can be imported (looked up once, at import)."""
    return _TRITON_FOUND


def triton_interpreted() -> bool:
    """True when Triton kernels run on CPU through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_reason(
    device: torch.device,
    dtype: torch.dtype,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16),
    what: str = "the kernels support float32/float16/bfloat16",
) -> str | None:
    """Why Triton kernels cannot run on ``device``/``dtype``, or None when they can.

    Args:
        device, dtype: of the tensor the kernels would read.
        dtypes: the dtypes the kernels take (default: the fused op's).
        what: how the message names them.
    """
    if not triton_importable():
        return "the triton package is not installed"
    if dtype not in dtypes:
        return f"{what}, got {dtype}"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreted():
        return None
    return (
        f"the kernels need a CUDA tensor (got a {device.type} tensor); on CPU they run only "
        "under TRITON_INTERPRET=1, set before triton is imported"
    )


def resolve_backend(requested: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve a requested backend to ``"triton"`` or ``"reference"`` for these inputs.

    Raises:
        ValueError: unknown backend name.
        BackendUnavailableError: ``"triton"`` forced where it cannot run.
    """
    if requested is None:
        name = get_backend()
    elif requested in BACKENDS:  # the common case, without the lower-casing of _check_name
        name = requested
    else:
        name = _check_name(requested, "backend")
    if name == "reference":
        return "reference"
    if name == "auto":
        if device.type != "cuda":
            return "reference"
        return "triton" if triton_reason(device, dtype) is None else "reference"
    # fast path: the kernels' dtypes on a CUDA tensor (or on CPU under the interpreter)
    if dtype in _KERNEL_DTYPES and _TRITON_FOUND:
        if device.type == "cuda" or triton_interpreted():
            return "triton"
    reason = triton_reason(device, dtype)
    if reason is not None:
        raise BackendUnavailableError(f"backend='triton' cannot run: {reason}")
    return "triton"


_KERNEL_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16))
