"""What a call costs on the host: kernel launches, host syncs and host time (DESIGN section 8).

At the NODE sizes a kernel runs for microseconds, so the host decides the speed: Python work,
the dispatcher, autograd, the number of launches and every host sync (``.item()``,
``bool(tensor)``), which drains the GPU queue. All three can be counted on a CPU:

* :func:`count_launches` counts, inside its block, the aten ops that compute (views and bare
  allocations excluded) plus the Triton kernel launches, and the host syncs
  (``aten._local_scalar_dense``, which ``.item()``, ``bool(t)`` and ``if t:`` all reach, plus
  ``aten.equal`` and ``aten.is_nonzero``);
* :func:`stub_triton_launches` turns every Triton launch into a no-op (outputs stay
  uninitialised), so the host time of a fused call can be measured on a CPU without paying the
  interpreter;
* :func:`host_time_per_call` times a callable per call (median over repeats).

Example::

    with count_launches() as c:
        y = timeaware.group_norm_act(x, 32, act="relu")
    print(c.launches, c.syncs, c.ops)
"""

from __future__ import annotations

import contextlib
import statistics
import time as _time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LaunchCount", "count_launches", "host_time_per_call", "stub_triton_launches"]

# aten ops that allocate without computing (no kernel runs) or only read metadata
_NO_LAUNCH = frozenset(
    {
        "empty.memory_format",
        "empty_strided.default",
        "empty_like.default",
        "new_empty.default",
        "new_empty_strided.default",
        "lift_fresh.default",
        "detach.default",
        "alias.default",
        "_unsafe_view.default",
        "sym_size.int",
        "sym_stride.int",
        "sym_numel.default",
        "sym_storage_offset.default",
        "is_same_size.default",
    }
)
_SYNCS = frozenset({"_local_scalar_dense.default", "equal.default", "is_nonzero.default"})


@dataclass
class LaunchCount:
    """Counts gathered by :func:`count_launches`.

    Attributes:
        triton: Triton kernel launches.
        aten: aten ops that compute (each is at least one kernel on a GPU).
        syncs: host syncs (a device-to-host read of a value).
        ops: the computing ops and Triton kernels by name (``"aten.sum.dim_IntList"``,
            ``"triton:_gn_fwd_fused_kernel"``), for a readable failure message.
    """

    triton: int = 0
    aten: int = 0
    syncs: int = 0
    ops: Counter = field(default_factory=Counter)

    @property
    def launches(self) -> int:
        """Triton launches plus computing aten ops."""
        return self.triton + self.aten

    def summary(self) -> str:
        """One line: ``launches=N (triton T, aten A), syncs=S: op x count, ...``."""
        items = ", ".join(f"{k} x{v}" for k, v in self.ops.most_common())
        return (
            f"launches={self.launches} (triton {self.triton}, aten {self.aten}), "
            f"syncs={self.syncs}: {items}"
        )


class _AtenCounter(TorchDispatchMode):
    def __init__(self, count: LaunchCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        opdef = _custom_opdef(func)
        if opdef is not None:
            # a torch.library custom op: run its Python implementation with the mode active,
            # so that the aten ops it calls are counted too
            with self:
                return opdef._init_fn(*args, **kwargs)
        if _only_composite(func.name()):
            # reached below autograd (inside a custom op): a composite such as
            # ``contiguous`` or ``to`` comes here whole; count the ops it is made of
            with self:
                return func.decompose(*args, **kwargs)
        if func.namespace == "aten":
            name = func.__name__  # e.g. "sum.dim_IntList"
            if name in _SYNCS:
                self.count.syncs += 1
            computes = name not in _NO_LAUNCH and name != "_local_scalar_dense.default"
            if computes and not func.is_view:
                self.count.aten += 1
                self.count.ops[f"aten.{name}"] += 1
        return func(*args, **kwargs)


_KERNEL_KEYS = (
    "CPU",
    "CUDA",
    "CompositeExplicitAutograd",
    "CompositeExplicitAutogradNonFunctional",
)


def _only_composite(name: str) -> bool:
    """Whether ``name`` runs as a composite of other ops (a CompositeImplicitAutograd kernel and
    no kernel of its own, as ``contiguous`` or ``to``); ``silu_backward`` has both and runs its
    own kernel."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return has(name, "CompositeImplicitAutograd") and not any(has(name, k) for k in _KERNEL_KEYS)


def _custom_opdef(func):
    """The ``torch.library.custom_op`` definition behind ``func``, or None (private API: any
    failure to find it just means the op is counted as opaque)."""
    if func.namespace in ("aten", "prim", "prims"):
        return None
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:  # pragma: no cover - older/newer torch
        return None
    opdef = OPDEFS.get(f"{func.namespace}::{func._schema.name.split('::')[-1]}")
    return opdef if callable(getattr(opdef, "_init_fn", None)) else None


def _kernel_classes() -> list[type]:
    """The Triton classes whose ``run`` launches a kernel (compiled and interpreted)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:  # no triton: nothing to count
        return []
    return [JITFunction, InterpretedFunction]


def _kernel_name(fn) -> str:
    inner = getattr(fn, "fn", None)
    return getattr(inner, "__name__", None) or getattr(fn, "__name__", type(fn).__name__)


@contextlib.contextmanager
def _patch_triton_run(wrapper: Callable) -> Iterator[None]:
    classes = _kernel_classes()
    saved = [(cls, cls.__dict__["run"]) for cls in classes]
    try:
        for cls, orig in saved:
            cls.run = wrapper(orig)
        yield
    finally:
        for cls, orig in saved:
            cls.run = orig


@contextlib.contextmanager
def count_launches(stub_triton: bool = False) -> Iterator[LaunchCount]:
    """Count kernel launches and host syncs of the code inside the block.

    Args:
        stub_triton: also make every Triton launch a no-op (see :func:`stub_triton_launches`).

    Yields:
        A :class:`LaunchCount`, filled in as the block runs.

    Notes:
        Counts what this thread dispatches (on CPU the autograd engine runs backward on the
        calling thread, so ``loss.backward()`` inside the block is counted). A
        ``torch.library`` custom op is run through its Python implementation, so the ops it
        calls are counted, not the custom op itself.
    """
    if not isinstance(stub_triton, bool):
        raise TypeError(f"stub_triton: expected a bool, got {type(stub_triton).__name__}")
    count = LaunchCount()

    def wrapper(orig):
        def run(self, *args, grid, warmup, **kwargs):
            if not warmup:
                count.triton += 1
                count.ops[f"triton:{_kernel_name(self)}"] += 1
                if stub_triton:
                    return None
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)

        return run

    with _patch_triton_run(wrapper), _AtenCounter(count):
        yield count


@contextlib.contextmanager
def stub_triton_launches() -> Iterator[None]:
    """Inside the block every Triton launch returns at once without running the kernel.

    The launchers still allocate their outputs and do all their host work, so timing a fused
    call inside this block measures its host overhead alone; the outputs hold garbage.
    """

    def wrapper(orig):
        def run(self, *args, grid, warmup, **kwargs):
            if warmup:
                return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            return None

        return run

    with _patch_triton_run(wrapper):
        yield


def host_time_per_call(
    fn: Callable[[], object], *, iters: int = 200, repeats: int = 5, warmup: int = 20
) -> float:
    """Median over ``repeats`` of the wall time per call of ``fn()`` over ``iters`` calls.

    On a CPU this is host time; on a GPU it is the time to enqueue (no synchronisation is
    made), which is host time as long as the queue does not fill.

    Args:
        fn: a callable with no arguments.
        iters: calls per repeat (>= 1).
        repeats: repeats (>= 1); the median is returned.
        warmup: calls before timing (>= 0).

    Returns:
        Seconds per call.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    for name, v, lo in (("iters", iters, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = _time.perf_counter()
        for _ in range(iters):
            fn()
        times.append((_time.perf_counter() - t0) / iters)
    return statistics.median(times)
