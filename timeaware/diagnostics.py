"""Measure vanishing timestep embedding (paper section 2.2) in models built from timeaware.

Two measurements:

* **Embedding survival**, per normalisation that receives a time-dependent addend. Every
  normalisation module of :mod:`timeaware.nn` takes its addends as arguments
  (``x, conv_bias, emb, time * time_map, pos``), so a forward pre-hook sees the operand
  ``h = x + conv_bias`` and the time-dependent part ``e = emb + time * time_map + pos``
  separately, and computes, per sample::

      survival = ||N(h + e) - N(h)|| / ||N(h + e)||

  with ``N`` the normalisation (affine included, activation excluded). 0 means the embedding
  was removed entirely (BatchNorm / InstanceNorm / GroupNorm with G=C on a channel-wise offset);
  it is averaged over the batch and over the probed times. It is also reported for the
  channel-wise part (``emb + time * time_map``) and the positional part (``pos``) alone.
* **Time sensitivity** of a whole function ``f(t, x)`` over a set of times::

      S = mean_x [ RMS_t ||f(t, x) - mean_t f(t, x)|| / RMS_t ||f(t, x)|| ]

  0 for a function that ignores t; the per-t curve uses ``||f(t, x) - mean_t f||`` in the
  numerator.

Each probed time is used for the whole batch, the setting of an ODE solve (and the one in which
BatchNorm's batch statistics cancel a shared offset exactly).

Example::

    report = diagnose(ODEFunc(8, norm="batch"), torch.randn(4, 8, 6, 6))
    print(report)                 # a table
    report.plot("survival.png")   # when matplotlib is installed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .models.node import NODEClassifier, ODEBlock
from .models.unet import UNet
from .nn.norm import TimeAwareNorm
from .reference import add_addends

__all__ = [
    "DiagnosticsReport",
    "NormSurvival",
    "diagnose",
    "embedding_survival",
    "time_sensitivity",
]


@dataclass
class NormSurvival:
    """Embedding survival at one normalisation.

    Attributes:
        name: qualified module name.
        kind: ``"group"``, ``"batch"`` or ``"instance"``.
        unit: what one normalisation unit spans.
        addends: time-dependent addends seen (``"emb"``, ``"t*time_map"``, ``"pos"``).
        survival: all time-dependent addends together, mean over samples and times.
        survival_channel: channel-wise part only (``emb + t * time_map``), or None if absent.
        survival_pos: positional part only, or None if absent.
        per_t: ``survival`` at each probed time.
        calls: number of forward calls measured.
    """

    name: str
    kind: str
    unit: str
    addends: tuple[str, ...]
    survival: float
    survival_channel: float | None
    survival_pos: float | None
    per_t: list[float] = field(default_factory=list)
    calls: int = 0


@dataclass
class DiagnosticsReport:
    """Result of :func:`diagnose`: a per-layer survival table and the time sensitivity.

    ``str(report)`` is a plain-text table, :meth:`to_markdown` a markdown one, :meth:`plot`
    writes a figure, :meth:`to_dict` a JSON-able dict.
    """

    ts: list[float]
    layers: list[NormSurvival]
    sensitivity: float
    sensitivity_per_t: list[float]
    samples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def _rows(self) -> list[list[str]]:
        def f(v):
            return "-" if v is None else f"{v:.4f}"

        return [
            [
                s.name,
                s.kind,
                s.unit,
                "+".join(s.addends),
                f(s.survival),
                f(s.survival_channel),
                f(s.survival_pos),
            ]
            for s in self.layers
        ]

    _HEAD = ["layer", "norm", "unit", "addends", "survival", "channel", "positional"]

    def _footer(self) -> str:
        lo, hi = (min(self.ts), max(self.ts)) if self.ts else (math.nan, math.nan)
        return (
            f"time sensitivity of f(t, x): {self.sensitivity:.4f} "
            f"(RMS_t ||f(t,x) - mean_t f|| / RMS_t ||f||; {len(self.ts)} times in "
            f"[{lo:g}, {hi:g}], {self.samples} samples)"
        )

    def __str__(self) -> str:
        rows = [self._HEAD, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEAD))]
        lines = [
            "embedding survival ||N(h+e) - N(h)|| / ||N(h+e)|| per normalisation "
            "(mean over samples and times)"
        ]
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        if not self.layers:
            lines.append("(no normalisation received a time-dependent addend)")
        lines.append(self._footer())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table as GitHub markdown, followed by the time sensitivity."""
        lines = [
            "| " + " | ".join(self._HEAD) + " |",
            "|" + "---|" * len(self._HEAD),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self._rows()]
        return "\n".join(lines) + "\n\n" + self._footer() + "\n"

    def plot(self, path: str) -> str:
        """Write a two-panel figure (survival per layer; survival and sensitivity vs t).

        Raises:
            ImportError: matplotlib is not installed.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:  # pragma: no cover - matplotlib is a dependency
            raise ImportError("DiagnosticsReport.plot needs matplotlib") from e
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        names = [s.name for s in self.layers]
        ax1.bar(range(len(names)), [s.survival for s in self.layers], color="tab:blue")
        ax1.set_xticks(range(len(names)))
        ax1.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
        ax1.set_ylabel("embedding survival")
        ax1.set_title("||N(h+e) - N(h)|| / ||N(h+e)||")
        for k, s in enumerate(self.layers):
            label = "embedding survival per layer" if k == 0 else None
            ax2.plot(self.ts, s.per_t, alpha=0.4, lw=1, label=label)
        ax2.plot(self.ts, self.sensitivity_per_t, color="k", lw=2, label="f(t, x) sensitivity")
        ax2.set_xlabel("t")
        ax2.set_ylabel("relative change")
        ax2.set_title(f"time sensitivity S = {self.sensitivity:.3f}")
        ax2.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


# ------------------------------------------------------------------------------------------
# Calling conventions
# ------------------------------------------------------------------------------------------
def _default_call(model: nn.Module) -> Callable:
    if isinstance(model, UNet):

        def call_unet(m, t: Tensor, x: Tensor) -> Tensor:
            return m(x, t.expand(x.shape[0]))

        return call_unet

    def call_ode(m, t: Tensor, x: Tensor) -> Tensor:
        return m(t, x)

    return call_ode


def _default_ts(model: nn.Module, n: int = 9) -> list[float]:
    if isinstance(model, UNet):
        return torch.linspace(0, model.num_timesteps - 1, n).round().tolist()
    return torch.linspace(0, 1, n).tolist()


def _time_tensor(t: float, x: Tensor) -> Tensor:
    if float(t).is_integer() and abs(t) > 1:
        return torch.tensor(int(t), device=x.device)
    return torch.tensor(float(t), device=x.device, dtype=x.dtype)


def _unwrap(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    """NODEClassifier / ODEBlock -> (their ODE function, its input state)."""
    if isinstance(model, NODEClassifier):
        with torch.no_grad():
            x = model.features(x)
        return model.odeblock.odefunc, x
    if isinstance(model, ODEBlock):
        return model.odefunc, x
    return model, x


class _ModeGuard:
    """Set train/eval for the measurement; restore modes and every buffer afterwards."""

    def __init__(self, model: nn.Module, norm_mode: str) -> None:
        if norm_mode not in ("train", "eval", "current"):
            raise ValueError(f"norm_mode: got {norm_mode!r}, expected 'train', 'eval' or 'current'")
        self.model, self.norm_mode = model, norm_mode

    def __enter__(self):
        self.modes = {m: m.training for m in self.model.modules()}
        self.buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
        if self.norm_mode == "train":
            self.model.eval()
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase):
                    m.train()  # batch statistics, as during training; dropout stays off
        elif self.norm_mode == "eval":
            self.model.eval()
        return self

    def __exit__(self, *exc):
        for m, mode in self.modes.items():
            m.training = mode
        with torch.no_grad():
            for k, b in self.model.named_buffers():
                if k in self.buffers:
                    b.copy_(self.buffers[k])
        return False


# ------------------------------------------------------------------------------------------
# Embedding survival
# ------------------------------------------------------------------------------------------
_NORM_PARAMS = ("x", "emb", "pos", "conv_bias", "time", "time_map")


def _bind(args, kwargs) -> dict:
    vals = dict(zip(_NORM_PARAMS, args))
    vals.update(kwargs)
    return vals


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample ||a - b|| / ||a||, (N,)."""
    num = (a - b).flatten(1).norm(dim=1)
    den = a.flatten(1).norm(dim=1).clamp_min(torch.finfo(a.dtype).tiny)
    return num / den


class _SurvivalRecorder:
    def __init__(self, norms: dict[str, TimeAwareNorm]) -> None:
        self.norms = norms
        self.t_index = 0
        self.data: dict[str, dict] = {}
        self.handles = []
        for name, m in norms.items():
            self.handles.append(m.register_forward_pre_hook(self._hook(name, m), with_kwargs=True))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, name: str, module: TimeAwareNorm):
        def hook(mod, args, kwargs):
            v = _bind(args, kwargs)
            x = v["x"]
            emb, pos, cb = v.get("emb"), v.get("pos"), v.get("conv_bias")
            time, tm = v.get("time"), v.get("time_map")
            has_tm = tm is not None and time is not None
            if emb is None and pos is None and not has_tm:
                return None
            with torch.no_grad():
                h = add_addends(x, conv_bias=cb)
                e_c = None
                if emb is not None or has_tm:
                    e_c = add_addends(
                        torch.zeros_like(h),
                        emb=emb,
                        time=time if has_tm else None,
                        time_map=tm if has_tm else None,
                    )
                e_p = None if pos is None else pos.reshape(-1, 1, *h.shape[-2:])
                norm = module.normalize
                y_h = norm(h)
                total = h + (e_c if e_c is not None else 0) + (e_p if e_p is not None else 0)
                rec = self.data.setdefault(
                    name,
                    {"all": {}, "channel": {}, "pos": {}, "addends": set(), "calls": 0},
                )
                rec["calls"] += 1
                if emb is not None:
                    rec["addends"].add("emb")
                if has_tm:
                    rec["addends"].add("t*time_map")
                if pos is not None:
                    rec["addends"].add("pos")
                i = self.t_index
                rec["all"].setdefault(i, []).append(_ratio(norm(total), y_h))
                if e_c is not None:
                    rec["channel"].setdefault(i, []).append(_ratio(norm(h + e_c), y_h))
                if e_p is not None:
                    rec["pos"].setdefault(i, []).append(_ratio(norm(h + e_p), y_h))
            return None

        return hook

    def results(self, num_t: int) -> list[NormSurvival]:
        out = []
        order = {"emb": 0, "t*time_map": 1, "pos": 2}
        for name, module in self.norms.items():
            rec = self.data.get(name)
            if rec is None:
                continue

            def per_t(d):
                return [torch.cat(d[i]).mean().item() for i in range(num_t) if i in d]

            def mean(d):
                return None if not d else torch.cat([torch.cat(v) for v in d.values()]).mean()

            m_c, m_p = mean(rec["channel"]), mean(rec["pos"])
            out.append(
                NormSurvival(
                    name=name,
                    kind=module.kind,
                    unit=module.num_units(),
                    addends=tuple(sorted(rec["addends"], key=order.get)),
                    survival=mean(rec["all"]).item(),
                    survival_channel=None if m_c is None else m_c.item(),
                    survival_pos=None if m_p is None else m_p.item(),
                    per_t=per_t(rec["all"]),
                    calls=rec["calls"],
                )
            )
        return out


def _check_inputs(model, x, ts):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: got {type(model).__name__}, expected an nn.Module")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x: got {type(x).__name__}, expected a floating tensor (N, ...)")
    if ts is not None:
        ts = [float(t) for t in ts]
        if not ts:
            raise ValueError("ts: got an empty sequence, expected at least one time")
    return ts


def _run(model, x, ts, call, norm_mode, want_survival: bool):
    model, x = _unwrap(model, x)
    ts = _default_ts(model) if ts is None else ts
    call = _default_call(model) if call is None else call
    norms = {n: m for n, m in model.named_modules() if isinstance(m, TimeAwareNorm)}
    outs = []
    with _ModeGuard(model, norm_mode), torch.no_grad():
        rec = _SurvivalRecorder(norms) if want_survival else None
        try:
            for i, t in enumerate(ts):
                if rec is not None:
                    rec.t_index = i
                outs.append(call(model, _time_tensor(t, x), x).float())
        finally:
            if rec is not None:
                rec.remove()
    layers = rec.results(len(ts)) if rec is not None else []
    return ts, layers, outs, x.shape[0]


def _sensitivity(outs: list[Tensor]) -> tuple[float, list[float]]:
    f = torch.stack([o.flatten(1) for o in outs])  # (T, N, D)
    dev = f - f.mean(0, keepdim=True)
    dev_n = dev.norm(dim=2)  # (T, N)
    rms_f = f.norm(dim=2).pow(2).mean(0).sqrt().clamp_min(torch.finfo(f.dtype).tiny)  # (N,)
    overall = (dev_n.pow(2).mean(0).sqrt() / rms_f).mean().item()
    per_t = (dev_n / rms_f).mean(1).tolist()
    return overall, per_t


def embedding_survival(
    model: nn.Module,
    x: Tensor,
    ts: Sequence[float] | None = None,
    call: Callable | None = None,
    norm_mode: str = "train",
) -> list[NormSurvival]:
    """Survival of the timestep embedding at every normalisation that receives one.

    Args:
        model: a module built from :mod:`timeaware.nn` (an :class:`~timeaware.models.ODEFunc`,
            a :class:`~timeaware.models.UNet`, a ``ResBlock``...). A
            :class:`~timeaware.models.NODEClassifier` or ``ODEBlock`` is measured on its ODE
            function, fed the classifier's ODE state.
        x: input batch (for a NODEClassifier: images).
        ts: times to probe; default 9 values in [0, 1] (U-Net: 9 timesteps in [0, T-1]).
        call: ``call(model, t, x)`` with t a 0-d tensor; default ``model(t, x)``, or
            ``model(x, t.expand(N))`` for a U-Net.
        norm_mode: ``"train"`` (default: BatchNorm uses batch statistics as in training,
            dropout off), ``"eval"``, or ``"current"``. Modes and buffers (BatchNorm running
            statistics) are restored afterwards.

    Returns:
        One :class:`NormSurvival` per normalisation that received a time-dependent addend, in
        module order.
    """
    ts = _check_inputs(model, x, ts)
    return _run(model, x, ts, call, norm_mode, True)[1]


def time_sensitivity(
    model: nn.Module,
    x: Tensor,
    ts: Sequence[float] | None = None,
    call: Callable | None = None,
    norm_mode: str = "train",
) -> tuple[float, list[float]]:
    """Time sensitivity ``S`` of ``f(t, x)`` and its per-t curve (see the module docstring).

    Arguments as :func:`embedding_survival`. Returns ``(S, per_t)``.
    """
    ts = _check_inputs(model, x, ts)
    _, _, outs, _ = _run(model, x, ts, call, norm_mode, False)
    return _sensitivity(outs)


def diagnose(
    model: nn.Module,
    x: Tensor,
    ts: Sequence[float] | None = None,
    call: Callable | None = None,
    norm_mode: str = "train",
) -> DiagnosticsReport:
    """Embedding survival per normalisation and the time sensitivity, in one pass.

    Arguments as :func:`embedding_survival`. Returns a :class:`DiagnosticsReport`.
    """
    ts = _check_inputs(model, x, ts)
    ts, layers, outs, n = _run(model, x, ts, call, norm_mode, True)
    s, per_t = _sensitivity(outs)
    return DiagnosticsReport(
        ts=list(ts), layers=layers, sensitivity=s, sensitivity_per_t=per_t, samples=n
    )
