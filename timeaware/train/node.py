"""NODE image-classifier trainer (the paper's section 4.1 recipe).

Defaults are the paper's: SGD lr 0.1, momentum 0.9, weight decay 1e-4, ReduceLROnPlateau with
patience 15, batch 128, 250 epochs, dopri5 with the adjoint method at rtol = atol = 1e-3.
Per epoch it records train loss and accuracy, test loss and accuracy, NFE-F and NFE-B (mean
over the epoch's batches and over ranks) and seconds per epoch.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from timeaware.data import (
    AUGMENTATIONS,
    BatchSampler,
    ImageData,
    load_dataset,
    make_augment,
    shard_indices,
    to_unit,
)
from timeaware.train.common import (
    BACKENDS,
    CHECKPOINT_NAME,
    BadOption,
    DistInfo,
    MetricsLog,
    Num,
    Printer,
    SolverFailed,
    SpeedReport,
    StopSignal,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    all_reduce,
    any_rank,
    atomic_save,
    barrier,
    broadcast_object,
    capture_rng,
    check_backend,
    check_fresh_run_dir,
    check_numbers,
    cleanup_distributed,
    compare_backends,
    config_record,
    default_run_dir,
    environment,
    format_table,
    gather_object,
    grad_norm,
    max_param_diff_across_ranks,
    nonfinite_entries,
    open_run_folder,
    plot_curves,
    process_settings,
    restore_rank_rng,
    restore_rank_totals,
    resume_changes,
    setup_distributed,
    timer,
    unwrap,
    write_json,
)

NORMS = ("group", "batch", "instance", "layer")
ACTS = ("relu", "silu", "softplus", "elu", "sigmoid")
INJECTS = (None, "linear")
ZERO_BIAS = ("none", "operand", "timestep", "all")
TIME_EMBEDS = ("concat", "mlp")
PLATEAU_METRICS = ("train_loss", "test_loss", "test_acc")
SOLVERS = ("torchdiffeq", "timeaware")  # --solver: timeaware.models.node.SOLVERS


@dataclass
class NodeConfig:
    """Every option of the NODE trainer (the CLI flags are these names with dashes)."""

    # data
    dataset: str = "digits"
    data_root: str | None = None
    image_size: int = 32
    image_channels: int = 3
    augment: str = "auto"  # auto: paper for CIFAR, none for digits
    split_seed: int = 0
    # model (timeaware.models.NODEClassifier)
    channels: int = 64
    norm: str = "group"
    groups: int | None = None
    act: str = "relu"
    inject: str | None = None
    zero_bias: str = "none"
    time_embed: str = "concat"
    dropout: float = 0.5
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: bool = True
    max_num_steps: int = 0  # 0: torchdiffeq's default (no practical limit)
    solver: str = "torchdiffeq"  # or "timeaware" (timeaware.odeint; dopri5 only)
    cuda_graphs: bool = False  # capture the ODE function as CUDA graphs (CUDA only)
    backend: str = "auto"
    # optimisation
    epochs: int = 250
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    plateau_patience: int = 15
    plateau_factor: float = 0.1
    plateau_metric: str = "train_loss"
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads; 0: torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on GPU)
    out: str | None = None
    preset: str | None = None
    ckpt_every_epochs: int = 1
    ckpt_every_steps: int = 0
    eval_batch_size: int = 500
    progress: bool = True
    # backend comparison
    compare_backends: bool = False
    compare_steps: int = 10
    compare_warmup: int = 3
    # testing aid
    inject_nan_at_step: int = 0


SEED = Num(int, 0, 2**32 - 1)
# The type and range of every numeric option: checked in _check_config and by the CLI's parser.
NUMBERS: dict[str, Num] = {
    "image_size": Num(int, 4),
    "split_seed": SEED,
    "channels": Num(int, 1),
    "groups": Num(int, 1, none_ok=True),
    "dropout": Num(float, 0.0, 1.0, hi_open=True),
    "rtol": Num(float, 0.0, lo_open=True),
    "atol": Num(float, 0.0, lo_open=True),
    "max_num_steps": Num(int, 0),
    "epochs": Num(int, 1),
    "batch_size": Num(int, 1),
    "lr": Num(float, 0.0, lo_open=True),
    "momentum": Num(float, 0.0),
    "weight_decay": Num(float, 0.0),
    "plateau_patience": Num(int, 0),
    "plateau_factor": Num(float, 0.0, 1.0, lo_open=True, hi_open=True),
    "seed": SEED,
    "threads": Num(int, 0),
    "ckpt_every_epochs": Num(int, 1),
    "ckpt_every_steps": Num(int, 0),
    "eval_batch_size": Num(int, 1),
    "compare_steps": Num(int, 1),
    "compare_warmup": Num(int, 0),
    "inject_nan_at_step": Num(int, 0),
}

# Where the warning about a long CPU run points.
CPU_HINT = (
    "For a NODE run that fits a CPU (minutes), see the README section 'What the embedded "
    "default gives': --image-size 16 --epochs 10 --threads 1"
)


def node_config_from_dict(d: dict) -> NodeConfig:
    """Rebuild a :class:`NodeConfig` from its saved dict (unknown keys ignored)."""
    names = {f.name for f in fields(NodeConfig)}
    return NodeConfig(**{k: v for k, v in d.items() if k in names})


def _check_config(cfg: NodeConfig) -> None:
    def bad(opt: str, got, expected: str) -> TrainingError:
        return BadOption(f"--{opt.replace('_', '-')}: got {got!r}, expected {expected}")

    choices = {
        "norm": NORMS,
        "act": ACTS,
        "inject": INJECTS,
        "zero_bias": ZERO_BIAS,
        "time_embed": TIME_EMBEDS,
        "plateau_metric": PLATEAU_METRICS,
        "backend": BACKENDS,
        "augment": ("auto", *AUGMENTATIONS),
        "solver": SOLVERS,
        "cuda_graphs": (False, True),
    }
    choices["image_channels"] = (1, 3)
    for k, allowed in choices.items():
        if getattr(cfg, k) not in allowed:
            raise bad(k, getattr(cfg, k), f"one of {allowed}")
    check_numbers(cfg, NUMBERS)
    if cfg.groups is not None:
        if cfg.groups < 1 or cfg.channels % cfg.groups:
            raise BadOption(
                f"--groups: got {cfg.groups}, which does not divide --channels {cfg.channels}; "
                f"GroupNorm needs channels % groups == 0 (e.g. one of "
                f"{[g for g in range(1, cfg.channels + 1) if cfg.channels % g == 0]})"
            )
        if cfg.norm != "group":
            raise BadOption(f"--groups {cfg.groups} applies to --norm group, not {cfg.norm}")
    if cfg.image_size % 4:
        raise bad("image_size", cfg.image_size, "a multiple of 4 (two stride-2 blocks)")
    if cfg.solver == "timeaware" and cfg.method != "dopri5":
        raise bad("method", cfg.method, "dopri5 with --solver timeaware")
    if cfg.cuda_graphs and cfg.norm == "batch":
        raise BadOption(
            "--cuda-graphs: not with --norm batch (its running statistics would be updated by "
            "the graphs' warm-up and replayed forwards); use --norm group or --no-cuda-graphs"
        )


def build_node_model(cfg: NodeConfig, data: ImageData) -> torch.nn.Module:
    """``timeaware.models.NODEClassifier`` with the config's options."""
    from timeaware.models import NODEClassifier

    model = NODEClassifier(
        in_channels=data.channels,
        num_classes=data.num_classes,
        channels=cfg.channels,
        image_size=data.image_size,
        groups=cfg.groups,
        act=cfg.act,
        norm=cfg.norm,
        inject=cfg.inject,
        zero_bias=cfg.zero_bias,
        time_embed=cfg.time_embed,
        dropout=cfg.dropout,
        method=cfg.method,
        rtol=cfg.rtol,
        atol=cfg.atol,
        adjoint=cfg.adjoint,
        options={"max_num_steps": cfg.max_num_steps} if cfg.max_num_steps > 0 else None,
        cuda_graphs=cfg.cuda_graphs,
    )
    model.odeblock.solver = cfg.solver  # --solver (validated by _check_config)
    return model


def _solver_error_type() -> type[BaseException]:
    from timeaware.models import ODESolverError

    return ODESolverError


def _is_solver_failure(exc: BaseException) -> bool:
    from timeaware.models.node import is_solver_failure

    return is_solver_failure(exc)


def _nfe(model: torch.nn.Module) -> tuple[int, int]:
    block = unwrap(model).odeblock
    return int(block.nfe_forward), int(block.nfe_backward)


class _NodeRun:
    def __init__(
        self, cfg: NodeConfig, info: DistInfo, stop: StopSignal, resume, on_step, stack: ExitStack
    ):
        _check_config(cfg)
        self.cfg, self.info, self.stop, self.on_step = cfg, info, stop, on_step
        self.dev = info.device
        self.say = Printer(info, quiet=False)
        if cfg.cuda_graphs and self.dev.type != "cuda":
            raise TrainingError(
                f"--cuda-graphs needs a CUDA device, but this run is on {self.dev} (CUDA graphs "
                "replay kernels captured on a GPU); drop --cuda-graphs on this machine"
            )
        if cfg.batch_size % info.world_size:
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                f"number of processes ({info.world_size})"
            )
        self.local_batch = cfg.batch_size // info.world_size
        # one folder for all ranks (a default name holds a timestamp)
        self.run_dir = broadcast_object(
            cfg.out or default_run_dir("node", cfg.preset or "custom"), info
        )
        cfg.out = self.run_dir
        self.ckpt_file = os.path.join(self.run_dir, CHECKPOINT_NAME)
        check_backend(cfg.backend, self.dev)
        if not cfg.compare_backends:  # early, before the data load; checked again under the lock
            check_fresh_run_dir(self.ckpt_file, resume is not None)

        self.data = load_dataset(
            cfg.dataset,
            root=cfg.data_root,
            image_size=cfg.image_size,
            channels=cfg.image_channels,
            split_seed=cfg.split_seed,
        )
        # The run starts here: the folder is created (not before, so an early error leaves
        # nothing behind) and locked for the whole run.
        lock = open_run_folder(
            self.run_dir, info, resume, fresh_check=not cfg.compare_backends, say=self.say
        )
        if lock is not None:
            stack.callback(lock.release)
        aug_name = cfg.augment
        if aug_name == "auto":
            aug_name = "none" if cfg.dataset == "digits" else "paper"
        self.augment = make_augment(aug_name)
        self.mean = self.data.mean.view(1, -1, 1, 1).to(self.dev)
        self.std = self.data.std.view(1, -1, 1, 1).to(self.dev)

        torch.manual_seed(cfg.seed)
        self.model = build_node_model(cfg, self.data).to(self.dev)
        # Dropout masks differ per rank; the augmentation generator too.
        torch.manual_seed(cfg.seed + 1 + 7919 * info.rank)
        self.gens = {"augment": torch.Generator().manual_seed(cfg.seed + 104729 * (info.rank + 1))}
        self.opt = torch.optim.SGD(
            self.model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt,
            mode="max" if cfg.plateau_metric == "test_acc" else "min",
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
        )
        self.sampler = BatchSampler(
            len(self.data.train_y),
            self.local_batch,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.epoch, self.batch, self.step, self.finished = 0, 0, 0, False
        self.acc = self._zero_acc()
        rows: list[dict] = []
        self.last_ckpt_step: int | None = None
        self.resumes: list[dict] = []
        self.row_note: dict = {}  # merged into the next metrics row (an lr set on resume)
        if resume is not None:
            self._load(resume)
            rows = resume["history"]
        self.speed = SpeedReport(self.say, self.dev, CPU_HINT)
        # --compare-backends leaves a run folder's metrics and config alone
        writes = info.is_main and not cfg.compare_backends
        self.log = MetricsLog(os.path.join(self.run_dir, "metrics.jsonl"), writes, rows)
        if info.distributed:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        if writes:
            write_json(config_record(cfg, self.resumes), os.path.join(self.run_dir, "config.json"))

    # -- state ----------------------------------------------------------------------------

    @staticmethod
    def _zero_acc() -> dict:
        keys = ("loss", "correct", "count", "nfe_f", "nfe_b", "batches", "seconds")
        return dict.fromkeys(keys, 0.0)

    def _state(self) -> dict | None:
        # collective: every rank's RNG and running totals of the epoch in progress
        ranks = gather_object({"rng": capture_rng(self.gens), "acc": dict(self.acc)}, self.info)
        if not self.info.is_main:
            return None
        return {
            "format": 1,
            "kind": "node",
            "config": asdict(self.cfg),
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": [r["rng"] for r in ranks],
            "world_size": self.info.world_size,
            "progress": {
                "epoch": self.epoch,
                "batch": self.batch,
                "step": self.step,
                "finished": self.finished,
                "acc": dict(self.acc),
                "acc_ranks": [r["acc"] for r in ranks],
            },
            "history": list(self.log.rows),
            "resumes": list(self.resumes),
            "row_note": dict(self.row_note),
        }

    def save(self) -> None:
        """Write last.pt atomically (rank 0). Never with non-finite weights: the last good
        checkpoint stays as it is and the run stops."""
        bad = nonfinite_entries({"model": unwrap(self.model).state_dict()})
        if bad:
            raise TrainingDiverged(
                f"weights are not finite after step {self.step} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}); no checkpoint written. {self._last_good()}"
            )
        state = self._state()
        if state is not None:
            atomic_save(state, self.ckpt_file)
        self.last_ckpt_step = self.step
        barrier(self.info)

    def _load(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        p = ckpt["progress"]
        self.epoch, self.batch, self.step = p["epoch"], p["batch"], p["step"]
        self.finished = p["finished"]
        self.acc = restore_rank_totals(p, self.info, self._zero_acc())
        self.last_ckpt_step = self.step
        self.resumes = list(ckpt.get("resumes", []))
        self.row_note = dict(ckpt.get("row_note", {}))
        restore_rank_rng(ckpt["rng"], self.gens, self.info)
        self.say(f"resumed from {self.ckpt_file} at epoch {self.epoch + 1}, step {self.step}")
        changed = resume_changes(ckpt["config"], asdict(self.cfg))
        if changed:
            self.resumes.append({"step": self.step, "changed": changed})
        if "lr" in changed:
            before = self.opt.param_groups[0]["lr"]
            for g in self.opt.param_groups:
                g["lr"] = self.cfg.lr
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
            self.row_note = {"lr_set_at_step": self.step, "lr_before": before}
            self.say(
                f"--lr {self.cfg.lr:g}: learning rate set from {before:g} to {self.cfg.lr:g} "
                f"from step {self.step + 1} on"
            )

    # -- steps ----------------------------------------------------------------------------

    def _batch(self, idx: torch.Tensor, train: bool, x_all, y_all):
        x = to_unit(x_all[idx]).to(self.dev, non_blocking=True)
        y = y_all[idx].to(self.dev, non_blocking=True)
        if train and self.augment is not None:
            x = self.augment(x, self.gens["augment"])
        return (x - self.mean) / self.std, y

    def train_step(self, x, y) -> tuple[float, int, int, int]:
        """One SGD step; returns (loss, correct, nfe_f, nfe_b)."""
        cfg = self.cfg
        solver_error = _solver_error_type()
        self.ddp.train()
        self.opt.zero_grad(set_to_none=True)
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.batch + 1})"
        try:
            logits = self.ddp(x)
        except solver_error as exc:
            raise SolverFailed(
                f"ODE solver failed in the forward solve of {where}, NFE reached {exc.nfe}: "
                f"{exc}. {self._last_good()}"
            ) from exc
        nfe_f = _nfe(self.model)[0]
        loss = F.cross_entropy(logits, y)
        if cfg.inject_nan_at_step and self.step + 1 == cfg.inject_nan_at_step:
            loss = loss * float("nan")
        # Host syncs: this one (the loss must be finite before the adjoint solve), and one
        # after the backward for the accuracy and the gradient norm together.
        loss_value = float(loss.detach())
        if any_rank(not math.isfinite(loss_value), self.info):
            raise TrainingDiverged(
                f"loss is {loss_value} (not finite) at {where}, NFE-F of this step "
                f"{nfe_f}; stopped before the update. {self._last_good()}"
            )
        try:
            loss.backward()
        except (solver_error, AssertionError, RuntimeError) as exc:
            if not (isinstance(exc, solver_error) or _is_solver_failure(exc)):
                raise
            raise SolverFailed(
                f"ODE solver failed in the backward (adjoint) solve of {where}, NFE reached "
                f"{_nfe(self.model)[1]} (NFE-F of this step {nfe_f}): {exc}. "
                f"{self._last_good()}"
            ) from exc
        nfe_b = _nfe(self.model)[1]
        correct = (logits.detach().argmax(1) == y).sum()
        gnorm = grad_norm(self.model.parameters()).to(correct.device)
        correct_value, gnorm_value = torch.stack([correct.double(), gnorm.double()]).tolist()
        # DDP averages the gradients, so every rank sees the same norm; any_rank keeps the
        # ranks together even so.
        if any_rank(not math.isfinite(gnorm_value), self.info):
            raise TrainingDiverged(
                f"gradient norm is {gnorm_value} (not finite) at {where} while the loss "
                f"{loss_value:.4g} is finite; stopped before the update, the weights are "
                f"unchanged. {self._last_good()}"
            )
        self.opt.step()
        return loss_value, int(correct_value), nfe_f, nfe_b

    def _last_good(self) -> str:
        if self.last_ckpt_step is None:
            return "No checkpoint was written yet."
        return (
            f"The last good checkpoint {self.ckpt_file} (step {self.last_ckpt_step}) is intact; "
            f"resume from it with --resume {self.run_dir} (e.g. with a lower --lr)."
        )

    @torch.no_grad()
    def evaluate(self) -> dict:
        model = unwrap(self.model)
        model.eval()
        idx_all = shard_indices(len(self.data.test_y), self.info.rank, self.info.world_size)
        loss = correct = count = nfe = batches = 0.0
        bs = self.cfg.eval_batch_size
        for s in range(0, len(idx_all), bs):
            x, y = self._batch(idx_all[s : s + bs], False, self.data.test_x, self.data.test_y)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            count += len(y)
            nfe += _nfe(model)[0]
            batches += 1
        loss, correct, count, nfe, batches = all_reduce(
            [loss, correct, count, nfe, batches], self.info
        )
        return {
            "test_loss": loss / count,
            "test_acc": 100.0 * correct / count,
            "test_nfe_f": nfe / max(batches, 1),
        }

    # -- loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        if self.finished and self.epoch >= cfg.epochs:
            self.say(f"run already finished ({self.epoch} epochs); nothing to do")
            return self.finish()
        self.finished = False
        self.say(
            f"NODE on {self.data.name} ({len(self.data.train_y)} train / "
            f"{len(self.data.test_y)} test, {self.data.channels}x{self.data.image_size}x"
            f"{self.data.image_size}), {sum(p.numel() for p in self.model.parameters())} "
            f"parameters, {self.info.world_size} process(es) on {self.dev}, "
            f"backend {cfg.backend}; run folder {self.run_dir}"
        )
        while self.epoch < cfg.epochs:
            self.sampler_epoch()
            row = self.end_epoch()
            self.epoch += 1
            self.batch = 0
            self.acc = self._zero_acc()
            if self.epoch == cfg.epochs:
                self.finished = True
            if self.finished or self.epoch % max(cfg.ckpt_every_epochs, 1) == 0:
                self.save()
            self.say(
                f"epoch {row['epoch']:>3}: loss {row['train_loss']:.4f} "
                f"train {row['train_acc']:.2f}% test {row['test_acc']:.2f}% "
                f"NFE-F {row['nfe_f']:.1f} NFE-B {row['nfe_b']:.1f} "
                f"{row['epoch_seconds']:.1f}s lr {row['lr']:.3g}"
            )
        if not self.finished:  # resumed with exactly cfg.epochs complete: nothing left to run
            self.finished = True
            self.save()
        return self.finish()

    def sampler_epoch(self) -> None:
        cfg = self.cfg
        bar = tqdm(
            total=len(self.sampler),
            initial=self.batch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and self.info.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        with bar:
            for idx in self.sampler.batches(self.epoch, start=self.batch):
                self.check_stop()
                with timer() as t:
                    x, y = self._batch(idx, True, self.data.train_x, self.data.train_y)
                    loss, correct, nfe_f, nfe_b = self.train_step(x, y)
                a = self.acc
                a["loss"] += loss * len(y)
                a["correct"] += correct
                a["count"] += len(y)
                a["nfe_f"] += nfe_f
                a["nfe_b"] += nfe_b
                a["batches"] += 1
                a["seconds"] += t()
                self.step += 1
                self.batch += 1
                left = (cfg.epochs - self.epoch) * len(self.sampler) - self.batch
                self.speed.step(self.step, t(), left, "training steps (evaluation not included)")
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", nfe_f=nfe_f, nfe_b=nfe_b)
                if cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self.step)
        self.check_stop()

    def check_stop(self) -> None:
        if any_rank(self.stop.requested is not None, self.info):
            self.save()
            name = self.stop.requested or "a signal on another rank"
            raise TrainingInterrupted(
                f"{name}: stopped after step {self.step} (epoch {self.epoch + 1}); checkpoint "
                f"{self.ckpt_file}; continue with: timeaware train node --resume {self.run_dir}",
                self.ckpt_file,
                self.step,
            )

    def end_epoch(self) -> dict:
        with timer() as t:
            ev = self.evaluate()
        a = self.acc
        loss, correct, count, nfe_f, nfe_b, batches = all_reduce(
            [a["loss"], a["correct"], a["count"], a["nfe_f"], a["nfe_b"], a["batches"]],
            self.info,
        )
        seconds = all_reduce([a["seconds"]], self.info, op="max")[0]
        row = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "lr": self.opt.param_groups[0]["lr"],
            "train_loss": loss / max(count, 1),
            "train_acc": 100.0 * correct / max(count, 1),
            **ev,
            "nfe_f": nfe_f / max(batches, 1),
            "nfe_b": nfe_b / max(batches, 1),
            "epoch_seconds": seconds,
            "eval_seconds": t(),
            **self.row_note,
        }
        self.row_note = {}
        metric = {"train_loss": row["train_loss"], "test_loss": row["test_loss"]}
        metric["test_acc"] = row["test_acc"]
        self.sched.step(metric[self.cfg.plateau_metric])
        self.log.append(row)
        return row

    def finish(self) -> dict:
        rows = self.log.rows
        summary: dict = {"run_dir": self.run_dir, "epochs": len(rows)}
        if rows:
            last = rows[-1]
            summary.update(
                {
                    "final_test_acc": last["test_acc"],
                    "best_test_acc": max(r["test_acc"] for r in rows),
                    "final_train_acc": last["train_acc"],
                    "mean_nfe_f": statistics.fmean(r["nfe_f"] for r in rows),
                    "mean_nfe_b": statistics.fmean(r["nfe_b"] for r in rows),
                    "mean_epoch_seconds": statistics.fmean(r["epoch_seconds"] for r in rows),
                    "steps": last["step"],
                }
            )
        diff = max_param_diff_across_ranks(self.model, self.info)
        if diff is not None:
            summary["world_size"] = self.info.world_size
            summary["max_param_diff_across_ranks"] = diff
        summary["environment"] = environment(self.dev)
        if self.info.is_main and rows:
            plot_curves(
                rows,
                os.path.join(self.run_dir, "curves.png"),
                "epoch",
                [
                    ("loss", ["train_loss", "test_loss"]),
                    ("accuracy (%)", ["train_acc", "test_acc"]),
                    ("NFE", ["nfe_f", "nfe_b", "test_nfe_f"]),
                ],
            )
            write_json(summary, os.path.join(self.run_dir, "summary.json"))
            cols = ["epoch", "train_loss", "train_acc", "test_acc", "nfe_f", "nfe_b"]
            cols.append("epoch_seconds")
            shown = rows if len(rows) <= 20 else rows[-20:]
            self.say("\n" + format_table(shown, cols))
            self.say(
                f"\nsummary: final test acc {summary['final_test_acc']:.2f}% (best "
                f"{summary['best_test_acc']:.2f}%), NFE-F {summary['mean_nfe_f']:.1f}, NFE-B "
                f"{summary['mean_nfe_b']:.1f}, {summary['mean_epoch_seconds']:.1f} s/epoch; "
                f"metrics {os.path.join(self.run_dir, 'metrics.jsonl')}, plot "
                f"{os.path.join(self.run_dir, 'curves.png')}, checkpoint {self.ckpt_file}"
            )
        return summary

    # -- backend comparison ---------------------------------------------------------------

    def compare(self) -> dict:
        return compare_backends(self, node_step_fn(self))


def node_step_fn(run: _NodeRun):
    """(batches, step) for :func:`compare_backends`: the first batches of epoch 1."""
    cfg = run.cfg
    n = cfg.compare_warmup + cfg.compare_steps
    batches = []
    while len(batches) < n:
        for idx in run.sampler.batches(len(batches) // max(len(run.sampler), 1)):
            batches.append(run._batch(idx, True, run.data.train_x, run.data.train_y))
            if len(batches) == n:
                break

    def step(batch) -> tuple[float, int, int]:
        loss, _, nfe_f, nfe_b = run.train_step(*batch)
        run.step += 1
        return loss, nfe_f, nfe_b

    return batches, step


def train_node(
    cfg: NodeConfig,
    resume: dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train (or, with ``cfg.compare_backends``, benchmark) a NODE classifier.

    Args:
        cfg: the options; see :class:`NodeConfig`.
        resume: a checkpoint from :func:`timeaware.train.common.load_checkpoint`; its state
            replaces the fresh one (its config should be ``cfg``).
        on_step: called with the step number after every training step (tests use it).

    Returns:
        the summary dict (also written to ``<run>/summary.json``).

    Raises:
        TrainingError: bad options, NaN/Inf loss, ODE solver failure.
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written.
    """
    with process_settings(cfg.threads, cfg.deterministic):
        return _train(cfg, resume, on_step)


def _train(cfg, resume, on_step) -> dict:
    import timeaware

    info = setup_distributed(cfg.device)
    try:
        with ExitStack() as stack, StopSignal() as stop, timeaware.use_backend(cfg.backend):
            run = _NodeRun(cfg, info, stop, resume, on_step, stack)
            if cfg.compare_backends:
                return run.compare()
            return run.run()
    finally:
        cleanup_distributed(info)
