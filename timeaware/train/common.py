"""Trainer infrastructure shared by the NODE and DDPM trainers.

Checkpoints (atomic, ``weights_only`` loadable, never with non-finite weights), the run-folder
lock, RNG capture/restore, SIGINT/SIGTERM handling, torch.distributed set-up (``torchrun``),
option checking shared by the config classes and the command line, JSON-lines metrics, the
curve plot, the summary table and the speed estimate.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import random
import signal
import socket
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1
LOCK_NAME = ".lock"


# ----------------------------------------------------------------------------- errors


class TrainingError(RuntimeError):
    """A run stopped for a reason the user must see (bad input, divergence, solver failure).

    The CLI prints the message and exits with status 1; no checkpoint is written after it.
    """


class TrainingDiverged(TrainingError):
    """The loss became NaN or Inf."""


class SolverFailed(TrainingError):
    """The ODE solver failed (step size underflow, too many steps)."""


class BadOption(TrainingError, ValueError):
    """An option (config field or command-line flag) has a value out of its range."""


class BadOptionType(TrainingError, TypeError):
    """An option (config field) has a value of the wrong type."""


class RunFolderBusy(TrainingError):
    """Another process holds the run folder's lock (it is training into the same folder)."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, checkpoint: str | None, step: int):
        super().__init__(message)
        self.checkpoint = checkpoint
        self.step = step


# ----------------------------------------------------------------------------- numeric options


@dataclass(frozen=True)
class Num:
    """The type and range of one numeric option, shared by its config check and its CLI flag.

    Attributes:
        kind: ``int`` or ``float``.
        lo, hi: bounds (None: unbounded); ``lo_open`` / ``hi_open`` exclude the bound itself.
        none_ok: None is a legal value (``--groups auto``).
        inf_ok: ``inf`` is a legal float (``--grad-clip inf``: no clipping). NaN never is.
    """

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    none_ok: bool = False
    inf_ok: bool = False

    def __post_init__(self) -> None:
        if self.kind not in (int, float):
            raise TypeError(f"kind: got {self.kind!r}, expected int or float")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ValueError(f"lo, hi: got {self.lo} > {self.hi}, expected lo <= hi")

    def describe(self) -> str:
        """``an integer >= 0``, ``a number > 0``, ``a number in [0, 1)``..."""
        what = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            lb, rb = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{what} in {lb}{self.lo:g}, {self.hi:g}{rb}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
        return what

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not legal (None when it is)."""
        if value is None:
            return None if self.none_ok else "None"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "type"
        if self.kind is int and not isinstance(value, int):
            return "type"
        v = float(value)
        if math.isnan(v) or (math.isinf(v) and not self.inf_ok):
            return "range"
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return "range"
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return "range"
        return None

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`BadOptionType` / :class:`BadOption` naming ``--name`` when illegal."""
        why = self.problem(value)
        if why is None:
            return
        flag = "--" + name.replace("_", "-")
        expected = self.describe() + (" or None" if self.none_ok else "")
        if why == "type":
            raise BadOptionType(
                f"{flag}: got {value!r} of type {type(value).__name__}, expected {expected}"
            )
        raise BadOption(f"{flag}: got {value!r}, expected {expected}")

    def parse(self, text: str):
        """Parse a command-line value (an ``argparse`` ``type=``); bad text raises
        ``argparse.ArgumentTypeError`` with a one-line reason."""
        import argparse

        t = text.strip()
        if self.none_ok and t.lower() in ("none", "auto", ""):
            return None
        expected = self.describe() + (" or 'auto'" if self.none_ok else "")
        try:
            v = int(t) if self.kind is int else float(t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}") from None
        if self.problem(v) is not None:
            raise argparse.ArgumentTypeError(f"got {text!r}, expected {expected}")
        return v


def check_numbers(cfg: Any, spec: dict[str, Num]) -> None:
    """Check every numeric field of a config against its :class:`Num`.

    Raises:
        BadOptionType: a field of the wrong type (a string, a float for an integer option).
        BadOption: a field out of range (NaN included).
    """
    for name, num in spec.items():
        num.check(name, getattr(cfg, name))


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
    return gather_object(capture_rng(generators), info)


def gather_object(obj: Any, info: DistInfo) -> list | None:
    """Every rank's ``obj`` (tensors moved to the CPU), a list on rank 0, None on other ranks.

    Collective: every rank must call it."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, _to_cpu(obj))
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


def restore_rank_totals(
    progress: dict, info: DistInfo, zero: dict, max_keys: Sequence[str] = ("seconds",)
) -> dict:
    """This rank's running totals of the epoch (or logging window) in progress.

    A checkpoint keeps every rank's totals (``progress["acc_ranks"]``). With the same number of
    processes each rank gets its own back, so the row logged at the end of the window is the
    one of an uninterrupted run. With another number of processes (or a checkpoint that has
    only rank 0's ``progress["acc"]``), rank 0 gets the totals over the old ranks (the maximum
    for ``max_keys``) and the others start from ``zero``, which keeps the sums across ranks.
    """
    ranks = progress.get("acc_ranks")
    if ranks is not None and len(ranks) == info.world_size:
        return {**zero, **ranks[info.rank]}
    if ranks is None:
        ranks = [progress["acc"]]
    out = dict(zero)
    if info.rank != 0:
        return out
    for r in ranks:
        for k, v in r.items():
            out[k] = max(out.get(k, 0.0), v) if k in max_keys else out.get(k, 0.0) + v
    return out


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


def _file_id(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def load_checkpoint(
    path_or_dir: str | os.PathLike, kind: str | None = None, option: str = "--resume"
) -> dict:
    """Load a trainer checkpoint with ``torch.load(weights_only=True)`` on CPU.

    Args:
        path_or_dir: a checkpoint file, or a run folder (its ``last.pt``).
        kind: ``"node"`` or ``"ddpm"`` to require that trainer's checkpoint; None for either.
        option: the command-line option named in the error messages.

    Returns:
        the checkpoint dict, plus ``"_file"``: the path and identity (device, inode, size,
        mtime) of the file read, so a run can check that nobody replaced it before it took
        the run folder's lock.

    Raises:
        TrainingError: a one-line message for a missing, empty, truncated or damaged file, a
            file that is not a timeaware checkpoint, or a checkpoint of the other trainer.
            A file holding arbitrary Python objects is never unpickled (that could run code),
            and torch's advice to load it with ``weights_only=False`` is not passed on.
    """
    if kind not in (None, "node", "ddpm"):
        raise ValueError(f"kind: got {kind!r}, expected None, 'node' or 'ddpm'")
    path = checkpoint_path(path_or_dir)
    if not os.path.isfile(path):
        raise TrainingError(f"{option}: no checkpoint at {path!r}")
    fid = _file_id(path)
    size = fid[2]
    redo = "resume from another copy of the run, or start a new run with another --out"
    if size == 0:
        raise TrainingError(
            f"{option}: {path!r} is empty (0 bytes), so it holds no checkpoint (a write cut "
            f"short by a full disk or a failed copy?); {redo}"
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not zipfile.is_zipfile(path):
        if head == b"PK\x03\x04":
            raise TrainingError(
                f"{option}: {path!r} is truncated ({size} bytes, the end of the file is "
                f"missing: a copy or a write cut short); {redo}"
            )
        raise TrainingError(
            f"{option}: {path!r} is not a timeaware checkpoint (not a file written by "
            f"torch.save); it was not loaded"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():  # the restricted unpickler refused one
            raise TrainingError(
                f"{option}: {path!r} is not a timeaware checkpoint: it holds Python objects "
                f"other than tensors and plain containers, which trainer checkpoints never "
                f"do. It was not loaded (unpickling a file of unknown origin can run code)"
            ) from None
        raise TrainingError(
            f"{option}: {path!r} is damaged (unreadable pickle data); {redo}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways
        raise TrainingError(
            f"{option}: {path!r} is damaged ({type(exc).__name__} while reading it); {redo}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"{option}: {path!r} is not a timeaware trainer checkpoint (a torch file without "
            f"the trainer's 'format' entry)"
        )
    if kind is not None and ckpt.get("kind") != kind:
        raise TrainingError(
            f"{option}: {path!r} is a '{ckpt.get('kind')}' checkpoint, not a '{kind}' one"
        )
    ckpt["_file"] = {"path": os.path.abspath(path), "id": list(fid)}
    return ckpt


def nonfinite_entries(state: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Names (``"model.fc.weight"``) of the floating-point tensors holding NaN or Inf.

    ``state`` maps a prefix to a state dict. One host sync when everything is finite."""
    names, flags = [], []
    for prefix, sd in state.items():
        for k, t in sd.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                names.append(f"{prefix}.{k}")
                flags.append(torch.isfinite(t).all())
    if not flags:
        return []
    ok = torch.stack(flags).cpu()
    if bool(ok.all()):
        return []
    return [n for n, good in zip(names, ok.tolist()) if not good]


def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all gradients together, as a 0-d tensor on their device (no host sync);
    NaN or Inf when any gradient holds one. Parameters without a gradient are skipped."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def stale_temporaries(run_dir: str) -> list[str]:
    """Temporary files that a killed run leaves in its folder: ``.last.pt.tmp-<pid>``
    (:func:`atomic_save`), ``*.json.tmp`` (:func:`write_json`), ``*.tmp.png`` (plots)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if (n.startswith(".") and ".tmp-" in n) or n.endswith((".json.tmp", ".tmp.png")):
            if os.path.isfile(os.path.join(run_dir, n)):
                out.append(n)
    return sorted(out)


# ----------------------------------------------------------------------------- run folder


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run>/.lock``, held for a whole run.

    The OS releases it when the process ends, however it ends (a SIGKILLed run never blocks its
    own resume). The file holds the holder's pid, host and start time, for the message a
    second process gets.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fh = None

    def acquire(self) -> None:
        """Create the folder if needed and take the lock.

        Raises:
            RunFolderBusy: another process holds it; the message names the folder and its pid.
        """
        import fcntl

        os.makedirs(self.run_dir, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fh)
            fh.close()
            raise RunFolderBusy(
                f"run folder {self.run_dir} is in use by another timeaware run ({holder}); two "
                f"runs in one folder would overwrite each other's last.pt and metrics.jsonl. "
                f"Wait for it to end (or stop it), or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        fh.write(json.dumps(info) + "\n")
        fh.flush()
        self._fh = fh

    def check_free(self) -> None:
        """Raise :class:`RunFolderBusy` when another process holds the lock now (creates
        nothing; the lock is not kept)."""
        if os.path.isfile(self.path):
            self.acquire()
            self.release()

    @staticmethod
    def _holder(fh) -> str:
        for _ in range(20):  # the holder writes its pid just after taking the lock
            fh.seek(0)
            text = fh.read().strip()
            if text:
                try:
                    d = json.loads(text)
                    return f"pid {d['pid']} on {d['host']}, since {d['since']}"
                except (ValueError, KeyError, TypeError):
                    break
            time.sleep(0.05)
        return "pid unknown"

    def release(self) -> None:
        """Release the lock (the file stays; it is only a lock)."""
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def open_run_folder(
    run_dir: str,
    info: DistInfo,
    resume: dict | None,
    fresh_check: bool,
    say,
) -> RunLock | None:
    """Start a run in ``run_dir``: create it, take its lock (rank 0), then, under the lock,
    refuse a new run over an existing one (``fresh_check``), refuse a resume whose checkpoint
    file was replaced after it was read, and remove temporaries of killed runs.

    Collective under torch.distributed; every rank raises the same error. Returns the lock
    (rank 0) for the caller to release at the end of the run, or None (other ranks).

    Raises:
        RunFolderBusy: another process trains in ``run_dir``.
        TrainingError: a new run over an existing one, or a replaced checkpoint.
    """
    error: TrainingError | None = None
    lock = None
    if info.is_main:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
            ckpt_file = os.path.join(run_dir, CHECKPOINT_NAME)
            if fresh_check:
                check_fresh_run_dir(ckpt_file, resume is not None)
            src = (resume or {}).get("_file")
            if src is not None and (
                not os.path.isfile(src["path"]) or list(_file_id(src["path"])) != src["id"]
            ):
                raise TrainingError(
                    f"--resume: {src['path']} was replaced after it was read (another process "
                    f"wrote it); run the command again to resume from the new one"
                )
            stale = stale_temporaries(run_dir)
            for n in stale:
                os.remove(os.path.join(run_dir, n))
            if stale:
                say(f"removed temporary files of an interrupted run: {', '.join(stale)}")
        except TrainingError as exc:
            lock.release()
            lock = None
            error = exc
    if info.distributed:
        msg = broadcast_object(None if error is None else str(error), info)
        if msg is not None:
            raise error if error is not None else TrainingError(msg)
    elif error is not None:
        raise error
    return lock


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


def _plain(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples -> lists, as in a saved config


def resume_changes(old: dict, new: dict) -> dict[str, list]:
    """The options a resume changed: ``{name: [checkpoint's value, new value]}`` (``out``,
    the folder, is left out)."""
    return {
        k: [_plain(old.get(k)), _plain(v)]
        for k, v in new.items()
        if k != "out" and _plain(old.get(k)) != _plain(v)
    }


def config_record(cfg: Any, resumes: list[dict]) -> dict:
    """What ``config.json`` holds: the run's options as they are now, and under ``resumed``
    each resume that changed options (its step and ``{option: [old, new]}``)."""
    from dataclasses import asdict

    out = asdict(cfg)
    if resumes:
        out["resumed"] = list(resumes)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What a run's numbers depend on beyond its options: the library versions, the CPU (and
    the vector instruction set PyTorch's CPU kernels use), the thread count, the device and
    whether deterministic algorithms were on. Written to ``summary.json``."""
    from importlib import metadata

    versions = {}
    for pkg in ("torch", "torchdiffeq", "numpy", "scikit-learn", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "versions": {"python": platform.python_version(), **versions},
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["versions"]["cuda"] = torch.version.cuda
    return env


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h``, ``12,984 h``.

    Raises:
        ValueError: ``seconds`` negative or NaN.
    """
    if not seconds >= 0:
        raise ValueError(f"seconds: got {seconds!r}, expected a number >= 0")
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    h = seconds / 3600
    return f"{h:.1f} h" if h < 100 else f"{h:,.0f} h"


class SpeedReport:
    """Prints, once, the measured seconds per step and what the rest of the run would take.

    The first step (allocation, warm-up) is left out: the estimate uses steps 2..``after``.
    On a CPU, when the rest would take more than an hour, it adds ``hint`` (where to find a
    run that fits a CPU).
    """

    def __init__(self, say, device: torch.device, hint: str, after: int = 3):
        self.say, self.device, self.hint, self.after = say, device, hint, max(after, 2)
        self.seen: list[float] = []
        self.done = False

    def step(self, step: int, seconds: float, remaining: int, unit: str = "steps") -> None:
        """Record one step's time; after ``after`` steps of this process, print the estimate."""
        if self.done:
            return
        self.seen.append(seconds)
        if len(self.seen) < self.after and remaining > 0:
            return
        self.done = True
        timed = self.seen[1:] or self.seen
        per = sum(timed) / len(timed)
        first = step - len(timed) + 1
        where = f"{self.device}, {torch.get_num_threads()} thread(s)"
        if self.device.type != "cpu":
            where = str(self.device)
        msg = f"speed: {per:.3g} s/step (steps {first}-{step}, {where})"
        if remaining > 0:
            if remaining == 1:
                unit = unit.replace("steps", "step", 1)
            msg += f"; the remaining {remaining:,} {unit} would take about "
            msg += format_duration(per * remaining)
            if self.device.type == "cpu" and per * remaining > 3600:
                msg += f". {self.hint}"
        self.say(msg)


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
    """Refuse to start a new run over an existing run's checkpoint (saying so when that run is
    still training there)."""
    if not resuming and os.path.exists(ckpt_file):
        folder = os.path.dirname(ckpt_file)
        RunLock(folder).check_free()
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
