"""The Neural ODE function of the paper: [GN-Act-ConcatConv-GN-Act-ConcatConv-GN].

With ``cuda_graphs=True`` the function's forward and backward are captured as CUDA graphs, one
pair per input signature (see :class:`ODEFunc`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._backend import get_backend
from ..nn._utils import (
    canonical_act,
    check_feature_map,
    check_positive_int,
    check_spatial,
    check_time,
    time_as_tensor,
)
from ..nn.conv import ConcatConv2d, concat_conv_norm
from ..nn.embedding import PositionalLinear, TimeMLP
from ..nn.init import apply_zero_bias, canonical_zero_bias
from ..nn.norm import NORM_KINDS, make_norm

INJECT_ODE = (None, "linear")
TIME_EMBED = ("concat", "mlp")


class ODEFunc(nn.Module):
    """The paper's ODE function ``f(t, x)``: [GN-Act-ConcatConv-GN-Act-ConcatConv-GN].

    With the defaults it is torchdiffeq's example ``ODEfunc`` (examples/odenet_mnist.py):
    submodules ``norm1``, ``conv1`` (``conv1._layer``), ``norm2``, ``conv2``, ``norm3``, the same
    state dict, and the same output. It runs as three calls of the fused op:

    * ``norm1`` + act on ``x``;
    * ``conv1`` runs bias-free on C channels; its output, bias, ``t * time_map`` (and the
      positional embedding) are added inside the ``norm2`` + act call;
    * likewise ``conv2`` -> ``norm3`` (no activation).

    Args:
        channels: C, the state's channel count.
        groups: GroupNorm groups; None means ``min(32, C)`` (torchdiffeq's ``norm``). Only for
            ``norm="group"``.
        act: ``"relu"`` (default), ``"silu"``, ``"softplus"``, ``"elu"`` or ``"sigmoid"`` (paper
            Appendix A). relu/silu run inside the fused op; the others run eagerly after an
            identity-activation fused normalisation.
        norm: ``"group"``, ``"batch"``, ``"instance"`` or ``"layer"`` (see
            :func:`timeaware.nn.make_norm`).
        inject: None or ``"linear"``: add the positional timestep embedding ``t * P``
            (:class:`timeaware.nn.PositionalLinear`, modules ``pos1``/``pos2``) before ``norm2``
            and ``norm3``; needs ``spatial_size``.
        zero_bias: bias-initialisation policy (:func:`timeaware.nn.apply_zero_bias`):
            ``"none"``, ``"operand"``, ``"timestep"``, ``"all"``, or a bool (True = ``"operand"``).
        time_embed: ``"concat"`` (ConcatConv, default) or ``"mlp"``: plain convolutions
            ``conv1``/``conv2`` plus an additive per-channel embedding ``emb1``/``emb2``
            (:class:`timeaware.nn.TimeMLP`), the setting of the paper's Table 2.
        spatial_size: (H, W) of the state; needed by ``inject="linear"``.
        backend: backend of the fused op.
        cuda_graphs: capture the forward (and, when gradients are needed, the backward) as CUDA
            graphs and replay them (DESIGN section 8: removes the host cost of every launch).
            Needs a CUDA device: construction raises RuntimeError when CUDA is unavailable and a
            call raises RuntimeError for a non-CUDA ``x``. See "CUDA graphs" below.

    Attributes:
        nfe: number of evaluations since the last :meth:`reset_nfe`.

    Shapes:
        t: Python number, 0-d tensor or (N,). x: (N, C, H, W). Output: (N, C, H, W).

    CUDA graphs:
        A graph replays exactly the kernels captured for one *signature*: x's shape, dtype,
        device and requires_grad, t's kind (number / 0-d / (N,)), dtype and requires_grad,
        grad mode, train/eval mode, autocast state, the backend in force, and the parameters'
        storage (``.to()`` or a new parameter tensor is a new signature). A call with a new
        signature is **captured again** (a few eager warm-up runs, then capture; costs one host
        sync), never silently run with the wrong graph; the :attr:`max_cuda_graphs` most
        recently used signatures are kept (:meth:`reset_cuda_graphs` frees them). The
        parameters are read in place, so optimizer steps need no recapture; the ConcatConv
        time maps are recomputed inside the graph.

        Per call the inputs are copied into the graph's static buffers and the output is
        copied out (a solver keeps several evaluations alive), and the backward copies the
        cotangent in and the gradients (of x, of t if it requires grad, of every parameter)
        out. Backward replays the captured backward; if another forward of the same signature
        replayed in between (backpropagation through ``odeint``'s recorded evaluations, which
        runs them in reverse), the forward is first replayed again with this call's inputs, so
        the gradients are those of this call. So it composes with ``torchdiffeq.odeint``
        (backprop through the solver) and ``odeint_adjoint`` (whose backward solve evaluates
        the function under ``torch.enable_grad`` and calls ``autograd.grad`` on (t, y,
        params): each evaluation is one forward replay then one backward replay). Double
        backward through a graphed call raises. ``norm="batch"`` is rejected: BatchNorm's
        running statistics would also be updated by warm-up runs and re-played forwards.
    """

    #: Most input signatures whose graphs are kept (least recently used dropped first).
    max_cuda_graphs: int = 8

    def __init__(
        self,
        channels: int = 64,
        groups: int | None = None,
        act: str = "relu",
        norm: str = "group",
        inject: str | None = None,
        zero_bias="none",
        time_embed: str = "concat",
        spatial_size: tuple[int, int] | None = None,
        backend: str | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__()
        c = check_positive_int(channels, "channels")
        act = canonical_act(act)
        if norm not in NORM_KINDS:
            raise ValueError(f"norm: got {norm!r}, expected one of {NORM_KINDS}")
        if inject not in INJECT_ODE:
            raise ValueError(f"inject: got {inject!r}, expected one of {INJECT_ODE}")
        if time_embed not in TIME_EMBED:
            raise ValueError(f"time_embed: got {time_embed!r}, expected one of {TIME_EMBED}")
        zero_bias = canonical_zero_bias(zero_bias)
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs: got {type(cuda_graphs).__name__}, expected a bool")
        if cuda_graphs:
            if norm == "batch":
                raise ValueError(
                    "norm: got 'batch' with cuda_graphs=True, expected 'group', 'instance' or "
                    "'layer' (BatchNorm's running statistics would be updated by the graph's "
                    "warm-up runs and by re-played forwards)"
                )
            _check_cuda_graphs_available()
        if inject is not None:
            if spatial_size is None:
                raise ValueError(f"spatial_size: got None with inject={inject!r}, expected (H, W)")
            spatial_size = _check_size(spatial_size)
        self.channels = c
        self.act = act
        self.norm_kind = norm
        self.inject = inject
        self.zero_bias = zero_bias
        self.time_embed = time_embed
        self.spatial_size = spatial_size
        self.backend = backend
        self.cuda_graphs = cuda_graphs
        self._graphs: _GraphRunner | None = _GraphRunner(self) if cuda_graphs else None

        self.norm1 = make_norm(norm, c, groups, act=act, backend=backend)
        if time_embed == "concat":
            self.conv1 = ConcatConv2d(c, c, 3, 1, 1)
        else:
            self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
            self.emb1 = TimeMLP(c)
        self.norm2 = make_norm(norm, c, groups, act=act, backend=backend)
        if time_embed == "concat":
            self.conv2 = ConcatConv2d(c, c, 3, 1, 1)
        else:
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
            self.emb2 = TimeMLP(c)
        self.norm3 = make_norm(norm, c, groups, act="identity", backend=backend)
        if inject == "linear":
            self.pos1 = PositionalLinear(*spatial_size)
            self.pos2 = PositionalLinear(*spatial_size)
        self.nfe = 0
        apply_zero_bias(self, zero_bias)

    def reset_nfe(self) -> None:
        """Set :attr:`nfe` to 0."""
        self.nfe = 0

    def _concat_time(self, t, x: Tensor):
        """``t`` for both ConcatConvs, converted once (a 0-d time stays 0-d: the fused op
        broadcasts it over the batch without a copy)."""
        check_time(t, x.shape[0], "t")
        return time_as_tensor(t, x)

    def _conv_norm(self, conv, emb_mlp, pos_mod, norm, t, h: Tensor, time=None) -> Tensor:
        pos = pos_mod(t) if pos_mod is not None else None
        if self.time_embed == "concat":
            return concat_conv_norm(conv, norm, time, h, pos=pos)
        y = F.conv2d(h, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        emb = emb_mlp(t, batch=h.shape[0]).to(h.dtype).contiguous()
        return norm(y, emb=emb, pos=pos, conv_bias=conv.bias)

    def forward(self, t, x: Tensor) -> Tensor:
        """``f(t, x)``: see the class docstring."""
        self.nfe += 1
        check_feature_map(x, "x", self.channels)
        if self.spatial_size is not None:
            check_spatial(x, self.spatial_size)
        check_time(t, x.shape[0], "t")
        if self._graphs is not None:
            return self._graphs(t, x)
        return self._forward_impl(t, x)

    def _forward_impl(self, t, x: Tensor) -> Tensor:
        time = self._concat_time(t, x) if self.time_embed == "concat" else None
        h = self.norm1(x)
        h = self._conv_norm(
            self.conv1,
            getattr(self, "emb1", None),
            getattr(self, "pos1", None),
            self.norm2,
            t,
            h,
            time,
        )
        return self._conv_norm(
            self.conv2,
            getattr(self, "emb2", None),
            getattr(self, "pos2", None),
            self.norm3,
            t,
            h,
            time,
        )

    # ------------------------------------------------------------------------- CUDA graphs
    @property
    def num_cuda_graphs(self) -> int:
        """Input signatures currently captured (0 without ``cuda_graphs``)."""
        return 0 if self._graphs is None else len(self._graphs.entries)

    def reset_cuda_graphs(self) -> None:
        """Drop every captured graph (the next call of each signature captures again)."""
        if self._graphs is not None:
            self._graphs.entries.clear()

    def _apply(self, fn, recurse=True):
        self.reset_cuda_graphs()  # .to(), .cuda(), .half(): new parameter storage
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graphs"] = None  # graphs are neither pickled nor deep-copied
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("cuda_graphs", False)  # pickled before the option existed
        self._graphs = _GraphRunner(self) if self.cuda_graphs else None

    def extra_repr(self) -> str:
        parts = [f"channels={self.channels}", f"act={self.act!r}", f"norm={self.norm_kind!r}"]
        if self.inject:
            parts.append(f"inject={self.inject!r}")
        if self.zero_bias != "none":
            parts.append(f"zero_bias={self.zero_bias!r}")
        if self.time_embed != "concat":
            parts.append(f"time_embed={self.time_embed!r}")
        if self.cuda_graphs:
            parts.append("cuda_graphs=True")
        return ", ".join(parts)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"spatial_size: got {size!r}, expected (H, W)") from None
    return check_positive_int(h, "spatial_size[0]"), check_positive_int(w, "spatial_size[1]")


# --------------------------------------------------------------------------------------------
# CUDA graphs
# --------------------------------------------------------------------------------------------
def _check_cuda_graphs_available() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(
            "cuda_graphs=True needs a CUDA device, and torch.cuda.is_available() is False: "
            "CUDA graphs replay kernels captured on a GPU for one input shape and dtype; "
            "use cuda_graphs=False on this machine"
        )


class _CudaGraphBackend:
    """Capture and replay with ``torch.cuda.CUDAGraph`` (the real thing).

    The runner talks to its backend through ``check``, ``warmup``, ``capture`` and ``pool``
    only, so the tests can substitute an eager stand-in with the same static-buffer semantics
    on machines without a GPU.
    """

    def check(self, x: Tensor) -> None:
        if x.device.type != "cuda":
            raise RuntimeError(
                f"cuda_graphs=True: got x on {x.device}, expected a CUDA tensor (CUDA graphs "
                "need a CUDA device; they replay the kernels captured for one input shape, "
                "dtype and device, and a new one is captured again)"
            )

    def warmup(self, fn, device: torch.device, iters: int) -> None:
        torch.cuda.synchronize(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(iters):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)

    def capture(self, fn, pool=None):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            result = fn()
        return graph, result

    def pool(self, graph):
        return graph.pool()


class _Entry:
    """The graphs of one input signature: a forward graph and, when gradients are needed, a
    backward graph sharing its memory pool, with their static inputs and outputs."""

    def __init__(self, backend, func: ODEFunc, t, x: Tensor, params: list, grad: bool, warmup):
        self.generation = 0
        self.t_is_tensor = isinstance(t, Tensor)
        if self.t_is_tensor:
            static_t = t.detach().to(x.device, copy=True).requires_grad_(grad and t.requires_grad)
        else:
            static_t = torch.tensor(float(t), dtype=x.dtype, device=x.device)
        static_x = x.detach().clone().requires_grad_(grad and x.requires_grad)
        self.static_t, self.static_x = static_t, static_x
        # gradient slots: 0 = t, 1 = x, 2 + i = params[i]
        candidates = [static_t, static_x, *params]
        self.grad_slots = [i for i, v in enumerate(candidates) if grad and v.requires_grad]
        wrt = [candidates[i] for i in self.grad_slots]
        holder = {}

        def fwd():
            with torch.set_grad_enabled(grad):
                holder["out"] = func._forward_impl(static_t, static_x)
            return holder["out"]

        def bwd(gout):
            grads = torch.autograd.grad(holder["out"], wrt, gout, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
            if self.flat:
                return (torch.cat([g.reshape(-1) for g in grads]),)
            return tuple(grads)

        self.flat = len({(w.dtype, w.device) for w in wrt}) == 1
        self.shapes = [w.shape for w in wrt]

        def warm():
            out = fwd()
            if grad:
                bwd(torch.ones_like(out))

        backend.warmup(warm, x.device, warmup)
        self.fwd_graph, self.out = backend.capture(fwd)
        self.bwd_graph = None
        if grad:
            self.static_gout = torch.zeros_like(self.out)
            gout = self.static_gout
            self.bwd_graph, self.static_grads = backend.capture(
                lambda: bwd(gout), pool=backend.pool(self.fwd_graph)
            )

    def forward(self, t, x: Tensor, copy_out: bool = True) -> Tensor | None:
        with torch.no_grad():
            if self.t_is_tensor:
                self.static_t.copy_(t)
            else:
                self.static_t.fill_(float(t))
            self.static_x.copy_(x)
        self.fwd_graph.replay()
        self.generation += 1
        return self.out.detach().clone() if copy_out else None

    def backward(self, gout: Tensor) -> list:
        with torch.no_grad():
            self.static_gout.copy_(gout)
        self.bwd_graph.replay()
        if not self.flat:
            return [g.detach().clone() for g in self.static_grads]
        flat = self.static_grads[0].detach().clone()
        out, start = [], 0
        for shape in self.shapes:
            n = shape.numel()
            out.append(flat[start : start + n].view(shape))
            start += n
        return out


class _GraphedCall(torch.autograd.Function):
    """One graphed evaluation ``f(t, x)`` as an autograd node over (t, x, *params)."""

    @staticmethod
    def forward(ctx, entry: _Entry, t, x, *params):
        out = entry.forward(t, x)
        ctx.entry = entry
        ctx.generation = entry.generation
        ctx.t_value = None if isinstance(t, Tensor) else t
        ctx.save_for_backward(t if isinstance(t, Tensor) else None, x, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        t, x, *params = ctx.saved_tensors  # also checks x and params were not modified
        entry = ctx.entry
        if entry.generation != ctx.generation:
            # another forward replayed since ours: its activations are in the static buffers
            entry.forward(ctx.t_value if t is None else t, x, copy_out=False)
        grads = [None] * (2 + len(params))
        for slot, g in zip(entry.grad_slots, entry.backward(gout)):
            grads[slot] = g
        if grads[0] is not None and grads[0].device != t.device:
            grads[0] = grads[0].to(t.device)  # t given on another device than x (the CPU)
        return (None, *grads)


class _GraphRunner:
    """Keeps one :class:`_Entry` per input signature of an :class:`ODEFunc` and runs calls."""

    def __init__(self, func: ODEFunc, backend=None, warmup: int = 3) -> None:
        self.func = func
        self.backend = _CudaGraphBackend() if backend is None else backend
        self.warmup = warmup
        self.entries: OrderedDict = OrderedDict()

    def _key(self, t, x: Tensor, params: list, grad: bool) -> tuple:
        dev = x.device.type
        if isinstance(t, Tensor):
            t_sig = (tuple(t.shape), t.dtype, t.device, grad and t.requires_grad)
        else:
            t_sig = ("number",)
        return (
            tuple(x.shape),
            x.dtype,
            x.device,
            grad and x.requires_grad,
            t_sig,
            grad,
            self.func.training,
            torch.is_autocast_enabled(dev),
            torch.get_autocast_dtype(dev),
            get_backend(),
            tuple((p.data_ptr(), p.dtype, grad and p.requires_grad) for p in params),
        )

    def __call__(self, t, x: Tensor) -> Tensor:
        self.backend.check(x)
        params = list(self.func.parameters())
        grad = torch.is_grad_enabled() and (
            x.requires_grad
            or (isinstance(t, Tensor) and t.requires_grad)
            or any(p.requires_grad for p in params)
        )
        key = self._key(t, x, params, grad)
        entry = self.entries.get(key)
        if entry is None:
            entry = _Entry(self.backend, self.func, t, x, params, grad, self.warmup)
            self.entries[key] = entry
            while len(self.entries) > self.func.max_cuda_graphs:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
        if grad:
            return _GraphedCall.apply(entry, t, x, *params)
        return entry.forward(t, x)
