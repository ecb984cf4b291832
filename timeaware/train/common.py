"""Trainer infrastructure shared by the NODE and DDPM trainers.

Checkpoints (atomic, ``weights_only`` loadable), RNG capture/restore, SIGINT/SIGTERM handling,
torch.distributed set-up (``torchrun``), JSON-lines metrics, the curve plot and the summary table.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------- errors


class TrainingError(RuntimeError):
    """A run stopped for a reason the user must see (bad input, divergence, solver failure).

    The CLI prints the message and exits with status 1; no checkpoint is written after it.
    """


class TrainingDiverged(TrainingError):
    """The loss became NaN or Inf."""


class SolverFailed(TrainingError):
    """The ODE solver failed (step size underflow, too many steps)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, checkpoint: str | None, step: int):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step


# ----------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    """Where this process runs. ``world_size == 1`` means no torch.distributed."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(name)


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    nccl on CUDA, gloo on CPU. Without ``torchrun`` this is a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed(info: DistInfo) -> None:
    """Destroy the process group that :func:`setup_distributed` created, if any."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(values: Sequence[float], info: DistInfo, op: str = "sum") -> list[float]:
    """Reduce a few floats across ranks (identity without DDP)."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    return all_reduce([1.0 if flag else 0.0], info, op="max")[0] > 0


def barrier(info: DistInfo) -> None:
    """Wait for every process (a no-op without torch.distributed)."""
    if info.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------- RNG


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """All RNG state of this process: torch CPU, every CUDA device, Python ``random`` and the
    named generators (data order / augmentation / diffusion noise). Tensors and primitives
    only, so ``torch.load(weights_only=True)`` reads it back."""
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [py[0], list(py[1]), py[2]],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Restore the torch/CUDA/Python RNGs and ``generators`` from a :func:`gather_rng` state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def gather_rng(generators: dict[str, torch.Generator], info: DistInfo) -> list[dict] | None:
    """Every rank's :func:`capture_rng`, collected on rank 0 (None on other ranks)."""
    mine = capture_rng(generators)
    if not info.distributed:
        return [mine]
    cpu = _to_cpu(mine)
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, cpu)
    return out if info.is_main else None


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def restore_rank_rng(
    states: list[dict], generators: dict[str, torch.Generator], info: DistInfo
) -> bool:
    """Restore this rank's RNG from a checkpoint; False (with a warning) if the world size
    changed, in which case the run continues with fresh per-rank seeds (not bit-exact)."""
    if len(states) != info.world_size:
        if info.is_main:
            warnings.warn(
                f"checkpoint was written by {len(states)} process(es), this run has "
                f"{info.world_size}: RNG streams cannot be restored exactly; the resumed run "
                f"will not reproduce an uninterrupted one bit for bit",
                stacklevel=2,
            )
        return False
    restore_rng(states[info.rank], generators)
    return True


# ----------------------------------------------------------------------------- checkpoints


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A reader (or a crash at any moment) sees either the old file or the complete new one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is still atomic
        pass


def checkpoint_path(path_or_dir: str | os.PathLike) -> str:
    """A checkpoint file, or ``<dir>/last.pt`` for a run folder."""
    p = os.fspath(path_or_dir)
    return os.path.join(p, CHECKPOINT_NAME) if os.path.isdir(p) else p


def load_checkpoint(path_or_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` on CPU.

    Raises:
        TrainingError: missing file, unreadable file, or a checkpoint of another trainer.
    """
    path = checkpoint_path(path_or_dir)
    if not os.path.isfile(path):
        raise TrainingError(f"--resume: no checkpoint at {path!r}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error means the same to the user
        raise TrainingError(f"--resume: cannot read checkpoint {path!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"--resume: {path!r} is not a timeaware trainer checkpoint")
    if kind is not None and ckpt.get("kind") != kind:
        raise TrainingError(
            f"--resume: {path!r} is a '{ckpt.get('kind')}' checkpoint, not a '{kind}' one"
        )
    return ckpt


# ----------------------------------------------------------------------------- signals


class StopSignal:
    """Context manager: SIGINT/SIGTERM set :attr:`requested` instead of killing the process.

    The trainer checks the flag between steps, writes a checkpoint and raises
    :class:`TrainingInterrupted`. A second SIGINT while the flag is set raises
    ``KeyboardInterrupt`` at once (the usual double Ctrl-C). Outside the main thread (where
    Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        except ValueError:  # not the main thread
            self._old.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


# ----------------------------------------------------------------------------- output


class Printer:
    """Prints on rank 0 only, through ``tqdm.write`` so progress bars stay intact."""

    def __init__(self, info: DistInfo, quiet: bool = False):
        self.enabled = info.is_main and not quiet

    def __call__(self, msg: str = "") -> None:
        if self.enabled:
            tqdm.write(msg)


class MetricsLog:
    """Rows of metrics (dicts of numbers), kept in memory (and in the checkpoint) and written
    as JSON lines to ``<run>/metrics.jsonl`` on rank 0.

    On resume the file is rewritten from the checkpoint's rows, so it never holds rows of
    steps that the resumed run will redo.
    """

    def __init__(self, path: str, enabled: bool, rows: list[dict] | None = None):
        self.path = path
        self.enabled = enabled
        self.rows: list[dict] = list(rows or [])
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                for r in self.rows:
                    fh.write(json.dumps(r) + "\n")

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain text table (markdown pipe syntax) of ``rows`` restricted to ``columns``."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.rjust(w) for c, w in zip(columns, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join([line, sep, *body])


def plot_curves(
    rows: Sequence[dict], path: str, x: str, panels: Sequence[tuple[str, Sequence[str]]]
) -> None:
    """Save a PNG with one panel per ``(title, keys)``, each key a line over ``x``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for k in keys:
            pts = [(r[x], r[k]) for r in rows if k in r and r[k] is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def save_image_grid(images: torch.Tensor, path: str, nrow: int | None = None) -> None:
    """Save images (N, C, H, W) in [0, 1] as one PNG grid (matplotlib, no torchvision).

    Images smaller than 64 pixels are enlarged by an integer factor (nearest neighbour)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = images.detach().float().clamp(0, 1).cpu()
    scale = max(1, 64 // max(x.shape[-1], 1))  # small images: nearest-neighbour to >= 64 px
    if scale > 1:
        x = x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    n, c, h, w = x.shape
    per_row = nrow or max(1, int(math.ceil(math.sqrt(n))))
    rows = int(math.ceil(n / per_row))
    pad = 1
    grid = torch.ones(c, rows * (h + pad) + pad, per_row * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, per_row)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    arr = grid.permute(1, 2, 0).numpy()
    if c == 1:
        arr = arr[:, :, 0]
    tmp = path + ".tmp.png"
    plt.imsave(tmp, arr, cmap="gray" if c == 1 else None, vmin=0.0, vmax=1.0)
    os.replace(tmp, path)


def write_json(obj: Any, path: str) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


@contextmanager
def timer():
    """``with timer() as t: ...; t()`` -> seconds, CUDA-synchronised when CUDA is in use."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    box = {"end": None}

    def elapsed() -> float:
        return (box["end"] or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        sync()
        box["end"] = time.perf_counter()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def default_run_dir(kind: str, tag: str) -> str:
    """``runs/<kind>-<tag>-<YYYYmmdd-HHMMSS>``: the run folder used when ``--out`` is not given."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{kind}-{tag}-{stamp}")


# ----------------------------------------------------------------------------- backends

BACKENDS = ("auto", "reference", "triton")


def compare_backends(run, prepared, extra=None) -> dict:
    """Run the same training steps from the same weights, batches and RNG with each backend.

    Args:
        run: a trainer run (``cfg``, ``info``, ``model``, ``opt``, ``gens``, ``dev``,
            ``run_dir``, ``say``).
        prepared: ``(batches, step)``; ``step(batch) -> (loss, nfe_f | None, nfe_b | None)``.
        extra: optional ``() -> dict`` run once per backend after the steps (DDPM: one
            PF-ODE sample, which has an NFE).

    Reports per backend the median seconds per step after ``compare_warmup`` warm-up steps
    (CUDA-synchronised), the mean NFE-F / NFE-B, the speedup of the fused backend and the
    largest absolute difference in loss at the same step; writes ``<run>/compare.json``. On a
    machine without a CUDA device only the reference backend runs, and the report says why
    (unless ``TRITON_INTERPRET=1`` is set: then the fused backend runs through the Triton CPU
    interpreter for a correctness comparison, without a speedup).
    """
    import copy
    import statistics

    import timeaware

    cfg, info = run.cfg, run.info
    if info.distributed:
        raise TrainingError("--compare-backends runs in one process; launch it without torchrun")
    batches, step = prepared
    snap_model = copy.deepcopy(run.model.state_dict())
    snap_opt = copy.deepcopy(run.opt.state_dict())
    snap_ema = copy.deepcopy(run.ema.state_dict()) if hasattr(run, "ema") else None
    snap_sched = copy.deepcopy(run.sched.state_dict())
    snap_rng = capture_rng(run.gens)
    from timeaware._backend import triton_interpreted

    backends = ["reference"]
    note = None
    interpreted = False
    if run.dev.type == "cuda":
        backends.append("triton")
    elif run.dev.type == "cpu" and triton_interpreted():
        # Explicitly asked for: correctness (losses, NFE) only, the timings mean nothing.
        backends.append("triton")
        interpreted = True
        note = (
            "the fused backend ran under the Triton CPU interpreter (TRITON_INTERPRET=1): its "
            "losses and NFE are meaningful, its timings are not, and no speedup is reported; "
            "the speedup needs a CUDA GPU"
        )
        run.say(f"--compare-backends: {note}")
    else:
        note = (
            f"the fused Triton backend needs a CUDA GPU (this run is on {run.dev}); "
            f"reporting the reference backend only"
        )
        run.say(f"--compare-backends: {note}")
    results: dict[str, dict] = {}
    for name in backends:
        run.model.load_state_dict(snap_model)
        run.opt.load_state_dict(snap_opt)
        run.sched.load_state_dict(snap_sched)
        if snap_ema is not None:
            run.ema.load_state_dict(snap_ema)
        restore_rng(snap_rng, run.gens)
        losses, times, nfe_f, nfe_b = [], [], [], []
        with timeaware.use_backend(name):
            for i, b in enumerate(tqdm(batches, desc=name, disable=not cfg.progress)):
                with timer() as t:
                    loss, f, bw = step(b)
                if i >= cfg.compare_warmup:
                    times.append(t())
                losses.append(loss)
                nfe_f.append(f)
                nfe_b.append(bw)
            res = {
                "seconds_per_step": statistics.median(times) if times else None,
                "nfe_f": statistics.fmean(nfe_f) if None not in nfe_f else None,
                "nfe_b": statistics.fmean(nfe_b) if None not in nfe_b else None,
                "losses": losses,
            }
            if extra is not None:
                res.update(extra())
        results[name] = res
    report: dict = {
        "device": str(run.dev),
        "device_name": torch.cuda.get_device_name(run.dev) if run.dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "warmup_steps": cfg.compare_warmup,
        "timed_steps": cfg.compare_steps,
        "backends": results,
        "note": note,
    }
    if "triton" in results:
        ref, fused = results["reference"], results["triton"]
        if ref["seconds_per_step"] and fused["seconds_per_step"] and not interpreted:
            report["speedup"] = ref["seconds_per_step"] / fused["seconds_per_step"]
        report["max_abs_loss_diff"] = max(
            abs(a - b) for a, b in zip(ref["losses"], fused["losses"])
        )
    if info.is_main:
        os.makedirs(run.run_dir, exist_ok=True)
        write_json(report, os.path.join(run.run_dir, "compare.json"))
        rows = []
        for k, v in results.items():
            row = {"backend": k, "ms_per_step": 1e3 * (v["seconds_per_step"] or float("nan"))}
            row.update({c: v[c] for c in ("nfe_f", "nfe_b") if v[c] is not None})
            row["final_loss"] = v["losses"][-1]
            row.update({c: v[c] for c in ("pf_ode_nfe", "pf_ode_seconds") if c in v})
            rows.append(row)
        cols = list(dict.fromkeys(c for r in rows for c in r))
        run.say(format_table(rows, cols))
        if "triton" in results:
            speed = f"{report['speedup']:.2f}x" if "speedup" in report else "not measured"
            run.say(
                f"speedup of the fused backend: {speed}; largest loss difference over "
                f"{len(batches)} steps: {report['max_abs_loss_diff']:.3e}"
            )
        run.say(f"written to {os.path.join(run.run_dir, 'compare.json')}")
    return report


def max_param_diff_across_ranks(model: torch.nn.Module, info: DistInfo) -> float | None:
    """Largest absolute difference between any rank's weights (parameters and float buffers)
    and rank 0's; None without DDP. Collective: every rank must call it."""
    if not info.distributed:
        return None
    tensors = [t.detach().reshape(-1).double() for t in unwrap(model).state_dict().values()]
    vec = torch.cat([t for t in tensors if t.numel()]).to(info.device)
    ref = vec.clone()
    dist.broadcast(ref, src=0)
    return all_reduce([float((vec - ref).abs().max())], info, op="max")[0]


def check_backend(name: str, device: torch.device) -> None:
    """Fail before training when ``--backend triton`` cannot run on ``device``."""
    if name != "triton":
        return
    from timeaware._backend import triton_reason

    reason = triton_reason(device, torch.float32)
    if reason is not None:
        raise TrainingError(f"--backend triton cannot run here: {reason}; use --backend auto")


def check_fresh_run_dir(ckpt_file: str, resuming: bool) -> None:
    """Refuse to start a new run over an existing run's checkpoint."""
    if not resuming and os.path.exists(ckpt_file):
        folder = os.path.dirname(ckpt_file)
        raise TrainingError(
            f"--out {folder} already holds a run ({ckpt_file}); continue it with --resume "
            f"{folder}, or choose another --out"
        )


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (identity without DDP)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def process_settings(threads: int = 0, deterministic: bool = False):
    """Apply ``--threads`` and ``--deterministic`` for the duration of a run, then restore them.

    ``deterministic`` selects deterministic kernels where PyTorch has them (cuDNN, cuBLAS), so a
    resumed GPU run can reproduce an uninterrupted one; ops without one only warn.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old_cudnn
