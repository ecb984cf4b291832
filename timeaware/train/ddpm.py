"""DDPM trainer (the paper's section 4.2 recipe) with sampling NFE and offline sample quality.

Defaults are the paper's: U-Net ch 128, mult (1, 2, 2, 2), 2 res blocks, attention at 16x16,
dropout 0.1, GroupNorm(32); T = 1000, betas linear 1e-4..0.02; Adam 2e-4 (no weight decay),
linear warm-up over 5k steps, gradient clipping at norm 1, batch 128, EMA 0.9999, 1.3M steps.
Every ``log_every`` steps it records the loss, learning rate, gradient norm and seconds per
step; every ``sample_every`` steps it saves a grid of EMA samples (DDIM); at the end it samples
with the ancestral sampler, DDIM and the probability-flow ODE, reporting each sampler's NFE,
time and sample quality (see :mod:`timeaware.train.quality`).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
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
    max_param_diff_across_ranks,
    nonfinite_entries,
    open_run_folder,
    plot_curves,
    process_settings,
    restore_rank_rng,
    restore_rank_totals,
    resume_changes,
    save_image_grid,
    setup_distributed,
    timer,
    unwrap,
    write_json,
)
from timeaware.train.quality import (
    NOT_INCEPTION,
    QualityMeter,
    check_inception_weights,
    get_classifier,
)

INJECTS = (None, "linear", "mlp")
ZERO_BIAS = ("none", "operand", "timestep", "all")
SAMPLERS = ("ancestral", "ddim", "pf-ode")


@dataclass
class DDPMConfig:
    """Every option of the DDPM trainer (the CLI flags are these names with dashes)."""

    # data
    dataset: str = "digits"
    data_root: str | None = None
    image_size: int | None = None  # None: 16 for digits, 32 for CIFAR
    image_channels: int = 3
    augment: str = "auto"  # auto: flip for CIFAR (the paper's), none for digits
    split_seed: int = 0
    # model (timeaware.models.UNet + GaussianDiffusion)
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    groups: int = 32
    inject: str | None = None
    zero_bias: str = "none"
    timesteps: int = 1000
    beta_1: float = 1e-4
    beta_T: float = 0.02
    backend: str = "auto"
    # optimisation
    steps: int = 1_300_000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    # run
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads; 0: torch's default
    deterministic: bool = False  # torch.use_deterministic_algorithms (bit-exact resume on GPU)
    out: str | None = None
    preset: str | None = None
    ckpt_every: int = 5000
    log_every: int = 100
    sample_every: int = 10000
    sample_grid: int = 64
    progress: bool = True
    # final evaluation
    eval_samples: int = 1000
    eval_samplers: tuple[str, ...] = SAMPLERS
    eval_batch_size: int = 250
    ddim_steps: int = 50
    ode_method: str = "dopri5"
    ode_rtol: float = 1e-3
    ode_atol: float = 1e-3
    classifier_cache: str | None = None
    classifier_epochs: int = 20
    inception_weights: str | None = None
    # backend comparison
    compare_backends: bool = False
    compare_steps: int = 10
    compare_warmup: int = 3
    # testing aid
    inject_nan_at_step: int = 0


SEED = Num(int, 0, 2**32 - 1)
UNIT = Num(float, 0.0, 1.0, lo_open=True, hi_open=True)
# The type and range of every numeric option: checked in _check_config and by the CLI's parser.
NUMBERS: dict[str, Num] = {
    "image_size": Num(int, 1, none_ok=True),
    "split_seed": SEED,
    "ch": Num(int, 1),
    "num_res_blocks": Num(int, 1),
    "dropout": Num(float, 0.0, 1.0, hi_open=True),
    "groups": Num(int, 1),
    "timesteps": Num(int, 1),
    "beta_1": UNIT,
    "beta_T": UNIT,
    "steps": Num(int, 1),
    "batch_size": Num(int, 1),
    "lr": Num(float, 0.0, lo_open=True),
    "warmup": Num(int, 0),
    "grad_clip": Num(float, 0.0, lo_open=True, inf_ok=True),
    "ema_decay": Num(float, 0.0, 1.0, hi_open=True),
    "seed": SEED,
    "threads": Num(int, 0),
    "ckpt_every": Num(int, 0),
    "log_every": Num(int, 0),
    "sample_every": Num(int, 0),
    "sample_grid": Num(int, 0),
    "eval_samples": Num(int, 0),
    "eval_batch_size": Num(int, 1),
    "ddim_steps": Num(int, 1),
    "ode_rtol": Num(float, 0.0, lo_open=True),
    "ode_atol": Num(float, 0.0, lo_open=True),
    "classifier_epochs": Num(int, 1),
    "compare_steps": Num(int, 1),
    "compare_warmup": Num(int, 0),
    "inject_nan_at_step": Num(int, 0),
}

# Where the warnings about a long CPU run point.
CPU_PRESET = "cpu-small"
CPU_HINT = (
    f"For a DDPM run that fits a CPU (minutes): timeaware train ddpm --preset {CPU_PRESET} "
    f"(README: 'DDPM on a CPU')"
)


def ddpm_config_from_dict(d: dict) -> DDPMConfig:
    """Rebuild a :class:`DDPMConfig` from its saved dict (unknown keys ignored)."""
    names = {f.name for f in fields(DDPMConfig)}
    d = {k: v for k, v in d.items() if k in names}
    for k in ("ch_mult", "attn_resolutions", "eval_samplers"):
        if k in d and d[k] is not None:
            d[k] = tuple(d[k])
    return DDPMConfig(**d)


def _check_config(cfg: DDPMConfig) -> None:
    def bad(opt: str, got, expected: str) -> TrainingError:
        return BadOption(f"--{opt.replace('_', '-')}: got {got!r}, expected {expected}")

    for k, allowed in {
        "inject": INJECTS,
        "zero_bias": ZERO_BIAS,
        "backend": BACKENDS,
        "augment": ("auto", *AUGMENTATIONS),
        "image_channels": (1, 3),
    }.items():
        if getattr(cfg, k) not in allowed:
            raise bad(k, getattr(cfg, k), f"one of {allowed}")
    check_numbers(cfg, NUMBERS)
    if not cfg.ch_mult or not all(isinstance(m, int) and m >= 1 for m in cfg.ch_mult):
        raise bad("ch_mult", cfg.ch_mult, "one or more positive integers")
    if not all(isinstance(r, int) and r >= 1 for r in cfg.attn_resolutions):
        raise bad("attn_resolutions", cfg.attn_resolutions, "positive integers (or none)")
    if cfg.beta_1 > cfg.beta_T:
        raise bad("beta_1", cfg.beta_1, f"at most --beta-T ({cfg.beta_T})")
    if cfg.eval_samples == 1:
        raise bad("eval_samples", cfg.eval_samples, "0 (no evaluation) or at least 2")
    for s in cfg.eval_samplers:
        if s not in SAMPLERS:
            raise bad("eval_samplers", s, f"a comma-separated subset of {SAMPLERS}")
    widths = sorted({cfg.ch * m for m in cfg.ch_mult} | {cfg.ch})
    if cfg.groups < 1 or any(w % cfg.groups for w in widths):
        raise BadOption(
            f"--groups: got {cfg.groups}, which does not divide every U-Net width {widths} "
            f"(--ch {cfg.ch} times --ch-mult {','.join(map(str, cfg.ch_mult))}); GroupNorm needs "
            f"channels % groups == 0"
        )
    down = 2 ** (len(cfg.ch_mult) - 1)
    if cfg.image_size is not None and cfg.image_size % down:
        levels = len(cfg.ch_mult)
        raise bad("image_size", cfg.image_size, f"a multiple of {down} for {levels} levels")
    check_inception_weights(cfg.inception_weights)


def build_unet(cfg: DDPMConfig, data: ImageData) -> torch.nn.Module:
    """``timeaware.models.UNet`` with the config's options."""
    from timeaware.models import UNet

    return UNet(
        in_channels=data.channels,
        ch=cfg.ch,
        ch_mult=tuple(cfg.ch_mult),
        num_res_blocks=cfg.num_res_blocks,
        attn_resolutions=tuple(cfg.attn_resolutions),
        dropout=cfg.dropout,
        groups=cfg.groups,
        image_size=data.image_size,
        inject=cfg.inject,
        zero_bias=cfg.zero_bias,
        num_timesteps=cfg.timesteps,
    )


class _DDPMRun:
    def __init__(
        self, cfg: DDPMConfig, info: DistInfo, stop: StopSignal, resume, on_step, stack: ExitStack
    ):
        from timeaware.models import GaussianDiffusion

        if cfg.image_size is None:
            cfg.image_size = 16 if cfg.dataset == "digits" else 32
        _check_config(cfg)
        self.cfg, self.info, self.stop, self.on_step = cfg, info, stop, on_step
        self.dev = info.device
        self.say = Printer(info)
        if cfg.batch_size % info.world_size:
            raise TrainingError(
                f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the "
                f"number of processes ({info.world_size})"
            )
        # one folder for all ranks (a default name holds a timestamp)
        self.run_dir = broadcast_object(
            cfg.out or default_run_dir("ddpm", cfg.preset or "custom"), info
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
        aug = (
            cfg.augment
            if cfg.augment != "auto"
            else ("none" if cfg.dataset == "digits" else "flip")
        )
        self.augment = make_augment(aug)

        torch.manual_seed(cfg.seed)
        self.model = build_unet(cfg, self.data).to(self.dev)
        self.ema = AveragedModel(
            self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        torch.manual_seed(cfg.seed + 1 + 7919 * info.rank)
        noise = torch.Generator(device=self.dev)
        noise.manual_seed(cfg.seed + 15485863 * (info.rank + 1))
        self.gens = {
            "augment": torch.Generator().manual_seed(cfg.seed + 104729 * (info.rank + 1)),
            "noise": noise,
        }
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        warm = max(cfg.warmup, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(s + 1, warm) / warm)
        self.sampler = BatchSampler(
            len(self.data.train_y),
            cfg.batch_size // info.world_size,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.epoch, self.batch, self.step = 0, 0, 0
        # finished: trained AND evaluated; a run whose final evaluation failed is not finished,
        # so resuming it runs the evaluation again.
        self.finished = False
        self.acc = self._zero_acc()
        self.last_ckpt_step: int | None = None
        self.resumes: list[dict] = []
        self.row_note: dict = {}  # merged into the next metrics row (an lr set on resume)
        rows: list[dict] = []
        self.eval_rows: list[dict] = []
        if resume is not None:
            self._load(resume)
            rows = resume["history"]
            self.eval_rows = list(resume.get("eval", []))
        self.speed = SpeedReport(self.say, self.dev, CPU_HINT)
        # --compare-backends leaves a run folder's metrics and config alone
        writes = info.is_main and not cfg.compare_backends
        self.log = MetricsLog(os.path.join(self.run_dir, "metrics.jsonl"), writes, rows)
        if info.distributed:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        diff_kw = dict(timesteps=cfg.timesteps, beta_1=cfg.beta_1, beta_T=cfg.beta_T)
        self.diffusion = GaussianDiffusion(self.ddp, **diff_kw).to(self.dev)
        self.ema_diffusion = GaussianDiffusion(self.ema.module, **diff_kw).to(self.dev)
        if writes:
            write_json(config_record(cfg, self.resumes), os.path.join(self.run_dir, "config.json"))

    @staticmethod
    def _zero_acc() -> dict:
        return dict.fromkeys(("loss", "grad_norm", "count", "seconds"), 0.0)

    # -- state ----------------------------------------------------------------------------

    def _state(self) -> dict | None:
        # collective: every rank's RNG and running totals of the logging window in progress
        ranks = gather_object({"rng": capture_rng(self.gens), "acc": dict(self.acc)}, self.info)
        if not self.info.is_main:
            return None
        return {
            "format": 1,
            "kind": "ddpm",
            "config": asdict(self.cfg),
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.state_dict(),
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
            "eval": list(self.eval_rows),
            "resumes": list(self.resumes),
            "row_note": dict(self.row_note),
        }

    def save(self) -> None:
        """Write last.pt atomically (rank 0). Never with non-finite weights: the last good
        checkpoint stays as it is and the run stops."""
        bad = nonfinite_entries(
            {"model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict()}
        )
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
        self.ema.load_state_dict(ckpt["ema"])
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
        self.say(f"resumed from {self.ckpt_file} at step {self.step}")
        changed = resume_changes(ckpt["config"], asdict(self.cfg))
        if changed:
            self.resumes.append({"step": self.step, "changed": changed})
        if "lr" in changed:
            # --lr is the base value of the warm-up schedule: lr(step) = lr * warm-up factor
            before = self.opt.param_groups[0]["lr"]
            factor = self.sched.lr_lambdas[0](self.sched.last_epoch)
            self.sched.base_lrs = [self.cfg.lr for _ in self.opt.param_groups]
            for g in self.opt.param_groups:
                g["initial_lr"] = self.cfg.lr
                g["lr"] = self.cfg.lr * factor
            self.sched._last_lr = [g["lr"] for g in self.opt.param_groups]
            self.row_note = {"lr_set_at_step": self.step, "lr_before": before}
            self.say(
                f"--lr {self.cfg.lr:g}: base learning rate set from {changed['lr'][0]:g} to "
                f"{self.cfg.lr:g} from step {self.step + 1} on (now {g['lr']:g})"
            )

    def _last_good(self) -> str:
        if self.last_ckpt_step is None:
            return "No checkpoint was written yet."
        return (
            f"The last good checkpoint {self.ckpt_file} (step {self.last_ckpt_step}) is intact; "
            f"resume from it with --resume {self.run_dir} (e.g. with a lower --lr)."
        )

    # -- steps ----------------------------------------------------------------------------

    def _x0(self, idx: torch.Tensor) -> torch.Tensor:
        x = to_unit(self.data.train_x[idx]).to(self.dev, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x, self.gens["augment"])
        return x * 2.0 - 1.0

    def train_step(self, x0: torch.Tensor) -> tuple[float, float]:
        """One Adam step; returns (loss, gradient norm before clipping).

        One host sync: the loss and the gradient norm (which clip_grad_norm_ computes anyway)
        are read together after the backward; the update is made only when both are finite.
        """
        cfg = self.cfg
        self.ddp.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.diffusion.loss(x0, generator=self.gens["noise"])
        if cfg.inject_nan_at_step and self.step + 1 == cfg.inject_nan_at_step:
            loss = loss * float("nan")
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        loss_value, gn_value = torch.stack([loss.detach().double(), gn.double()]).tolist()
        bad = not (math.isfinite(loss_value) and math.isfinite(gn_value))
        # DDP averages the gradients, so a non-finite loss on any rank gives a non-finite norm
        # on every rank; any_rank keeps the ranks together even so.
        if any_rank(bad, self.info):
            where = f"step {self.step + 1}"
            if any_rank(not math.isfinite(loss_value), self.info):
                raise TrainingDiverged(
                    f"loss is {loss_value} (not finite) at {where}; stopped before the update. "
                    f"{self._last_good()}"
                )
            raise TrainingDiverged(
                f"gradient norm is {gn_value} (not finite) at {where} while the loss "
                f"{loss_value:.4g} is finite; stopped before the update, the weights are "
                f"unchanged. {self._last_good()}"
            )
        self.opt.step()
        self.sched.step()
        self.ema.update_parameters(unwrap(self.model))
        return loss_value, gn_value

    # -- loop -----------------------------------------------------------------------------

    def _cpu_warning(self, nparam: int) -> None:
        sd = unwrap(self.model).state_dict()
        model_bytes = sum(t.numel() * t.element_size() for t in sd.values())
        ckpt_mb = 4 * model_bytes / 1e6  # weights, EMA weights, Adam's two moments
        msg = (
            f"note: training on the CPU: a {nparam / 1e6:.2f}M-parameter U-Net, "
            f"{self.cfg.steps:,} steps of {self.cfg.batch_size} images; every checkpoint "
            f"(last.pt, also written on Ctrl-C) is about {ckpt_mb:,.0f} MB."
        )
        if self.cfg.preset != CPU_PRESET and (nparam > 5e6 or self.cfg.steps > 20000):
            msg += (
                " The paper's recipe (the default) is a GPU job: on a CPU every step of this "
                f"model takes many seconds (the time of the whole run follows after step 3). "
                f"{CPU_HINT}."
            )
        self.say(msg)

    def run(self) -> dict:
        cfg = self.cfg
        if self.finished and self.step >= cfg.steps:
            self.say(f"run already finished ({self.step} steps)")
            return self.finish(evaluate=False)
        self.finished = False
        nparam = sum(p.numel() for p in self.model.parameters())
        self.say(
            f"DDPM on {self.data.name} ({len(self.data.train_y)} train images, "
            f"{self.data.channels}x{self.data.image_size}x{self.data.image_size}), U-Net "
            f"{nparam / 1e6:.2f}M parameters, T={cfg.timesteps}, {self.info.world_size} "
            f"process(es) on {self.dev}, backend {cfg.backend}; run folder {self.run_dir}"
        )
        if self.dev.type == "cpu" and self.step < cfg.steps:
            self._cpu_warning(nparam)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="ddpm",
            disable=not (cfg.progress and self.info.is_main),
            dynamic_ncols=True,
        )
        with bar:
            while self.step < cfg.steps:
                for idx in self.sampler.batches(self.epoch, start=self.batch):
                    self.check_stop()
                    with timer() as t:
                        loss, gn = self.train_step(self._x0(idx))
                    self.step += 1
                    self.batch += 1
                    a = self.acc
                    a["loss"] += loss
                    a["grad_norm"] += gn
                    a["count"] += 1
                    a["seconds"] += t()
                    self.speed.step(self.step, t(), cfg.steps - self.step)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}")
                    self.after_step()
                    if self.step >= cfg.steps:
                        break
                else:
                    self.epoch += 1
                    self.batch = 0
        if self.acc["count"]:
            self._log_row()
        evaluates = cfg.eval_samples > 0 and bool(cfg.eval_samplers)
        # Without an evaluation the run is finished now; with one, only once it succeeded.
        self.finished = not evaluates
        if self.finished or self.last_ckpt_step != self.step:  # not again for a re-evaluation
            self.save()
        return self.finish(evaluate=True)

    def after_step(self) -> None:
        cfg = self.cfg
        if cfg.log_every and self.step % cfg.log_every == 0:
            self._log_row()
        if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
            self.sample_grid(f"samples_step{self.step:07d}.png")
        if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
            self.save()
        if self.on_step is not None:
            self.on_step(self.step)

    def _log_row(self) -> None:
        a = self.acc
        loss, gn, count = all_reduce([a["loss"], a["grad_norm"], a["count"]], self.info)
        seconds = all_reduce([a["seconds"]], self.info, op="max")[0]
        n = max(a["count"], 1)
        row = {
            "step": self.step,
            "epoch": self.epoch + 1,
            "lr": self.opt.param_groups[0]["lr"],
            "loss": loss / max(count, 1),
            "grad_norm": gn / max(count, 1),
            "seconds_per_step": seconds / n,
            "images_per_second": self.cfg.batch_size * n / max(seconds, 1e-12),
            **self.row_note,
        }
        self.row_note = {}
        self.log.append(row)
        self.acc = self._zero_acc()

    def check_stop(self) -> None:
        if any_rank(self.stop.requested is not None, self.info):
            self.save()
            name = self.stop.requested or "a signal on another rank"
            raise TrainingInterrupted(
                f"{name}: stopped after step {self.step}; checkpoint {self.ckpt_file}; continue "
                f"with: timeaware train ddpm --resume {self.run_dir}",
                self.ckpt_file,
                self.step,
            )

    def _fork_rng(self):
        return torch.random.fork_rng(devices=[self.dev] if self.dev.type == "cuda" else [])

    def sample_grid(self, name: str) -> None:
        """EMA samples (DDIM, fixed noise) as a PNG grid; rank 0 only, RNG streams untouched."""
        if self.info.is_main and self.cfg.sample_grid > 0:
            g = torch.Generator(device=self.dev).manual_seed(self.cfg.seed + 2024)
            shape = (self.cfg.sample_grid, self.data.channels, *(self.cfg.image_size,) * 2)
            with self._fork_rng():
                x = self.ema_diffusion.sample_ddim(
                    shape, steps=min(self.cfg.ddim_steps, self.cfg.timesteps), generator=g
                )
            save_image_grid((x + 1) / 2, os.path.join(self.run_dir, name))
        barrier(self.info)

    # -- evaluation -----------------------------------------------------------------------

    def _sample(self, sampler: str, n: int, g: torch.Generator) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        shape = (n, self.data.channels, cfg.image_size, cfg.image_size)
        diff = self.ema_diffusion
        if sampler == "ancestral":
            return diff.sample_ancestral(shape, generator=g), diff.last_nfe
        if sampler == "ddim":
            steps = min(cfg.ddim_steps, cfg.timesteps)
            return diff.sample_ddim(shape, steps=steps, generator=g), diff.last_nfe
        from timeaware.models import ODESolverError

        try:
            return diff.sample_pf_ode(
                shape, method=cfg.ode_method, rtol=cfg.ode_rtol, atol=cfg.ode_atol, generator=g
            )
        except ODESolverError as exc:
            raise SolverFailed(
                f"PF-ODE sampling failed after {exc.nfe} function evaluations: {exc}"
            ) from exc

    def evaluate(self) -> list[dict]:
        """Sample ``eval_samples`` images with each sampler (split over ranks) and score them."""
        cfg = self.cfg
        if cfg.eval_samples <= 0 or not cfg.eval_samplers:
            return []
        self.say(
            f"evaluating {cfg.eval_samples} EMA samples per sampler "
            f"({', '.join(cfg.eval_samplers)}); {NOT_INCEPTION}"
        )
        clf, meta = get_classifier(
            self.data,
            self.info,
            cache_dir=cfg.classifier_cache,
            epochs=cfg.classifier_epochs,
            seed=0,
            say=self.say,
        )
        meter = QualityMeter(clf, self.dev, inception_weights=cfg.inception_weights)
        real_idx = shard_indices(len(self.data.train_y), self.info.rank, self.info.world_size)
        for s in range(0, len(real_idx), 500):
            meter.add_real(to_unit(self.data.train_x[real_idx[s : s + 500]]))
        rows = []
        # Reference: the test split scored against the train split (what real data gets).
        meter.reset_fake()
        test_idx = shard_indices(len(self.data.test_y), self.info.rank, self.info.world_size)
        for s in range(0, len(test_idx), 500):
            meter.add_fake(to_unit(self.data.test_x[test_idx[s : s + 500]]))
        ref = {"sampler": "real test split", "nfe": 0, "seconds_per_image": 0.0}
        ref.update(meter.compute())
        mine = shard_indices(cfg.eval_samples, self.info.rank, self.info.world_size)
        for sampler in cfg.eval_samplers:
            meter.reset_fake()
            g = torch.Generator(device=self.dev).manual_seed(cfg.seed + 7 + 1000 * self.info.rank)
            nfes, seconds, first = [], 0.0, None
            bar = tqdm(
                total=len(mine),
                desc=f"sample {sampler}",
                disable=not (cfg.progress and self.info.is_main),
                leave=False,
            )
            with bar, self._fork_rng():
                for s in range(0, len(mine), cfg.eval_batch_size):
                    n = len(mine[s : s + cfg.eval_batch_size])
                    with timer() as t:
                        x, nfe = self._sample(sampler, n, g)
                    seconds += t()
                    nfes.append(nfe)
                    x01 = ((x + 1) / 2).clamp(0, 1)
                    meter.add_fake(x01)
                    if first is None:
                        first = x01[: cfg.sample_grid or 64].cpu()
                    bar.update(n)
            nfe_sum, batches, sec = all_reduce([sum(nfes), len(nfes), seconds], self.info)
            row = {
                "sampler": sampler,
                "nfe": nfe_sum / max(batches, 1),
                "seconds_per_image": sec / max(cfg.eval_samples, 1),
            }
            row.update(meter.compute())
            rows.append(row)
            if self.info.is_main and first is not None:
                save_image_grid(first, os.path.join(self.run_dir, f"samples_{sampler}.png"))
        out = [*rows, ref]
        for r in out:
            r["classifier_test_acc"] = meta["test_acc"]
            r["samples"] = cfg.eval_samples if r["sampler"] != "real test split" else None
        return out

    def _final_evaluation(self) -> None:
        """The final sample grid and the samplers' evaluation; then the run is finished.

        Until then the checkpoint says 'not finished', so a failed evaluation (out of memory,
        a solver failure) is run again by resuming, with the trained weights as they are."""
        try:
            self.sample_grid("samples_final.png")
            self.eval_rows = self.evaluate()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, the advice is the same
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise TrainingError(
                f"the final evaluation failed ({type(exc).__name__}: {reason}). Training is "
                f"complete and saved in {self.ckpt_file} (step {self.step}, not marked finished); "
                f"run the evaluation again with: timeaware train ddpm --resume {self.run_dir} "
                f"(e.g. with a smaller --eval-batch-size; --eval-samples 0 skips it)"
            ) from exc
        if not self.finished:
            self.finished = True
            self.save()  # finished, and the checkpoint carries the evaluation

    def _sample_files(self) -> dict:
        """The run folder's sample grids, for summary.json (those of an earlier, resumed part of
        the run included)."""
        try:
            names = sorted(os.listdir(self.run_dir))
        except FileNotFoundError:
            names = []
        grids, later = [], []
        for n in names:
            m = re.fullmatch(r"samples_step(\d+)\.png", n)
            if m:
                (grids if int(m.group(1)) <= self.step else later).append(n)
        out: dict = {"during_training": grids}
        if later:
            out["beyond_this_step"] = later
            out["note"] = (
                "grids in beyond_this_step were saved by an earlier run of this folder past "
                "the checkpoint this run resumed from; they are not of these weights"
            )
        if "samples_final.png" in names:
            out["final"] = "samples_final.png"
        per = {s: f"samples_{s}.png" for s in SAMPLERS if f"samples_{s}.png" in names}
        if per:
            out["per_sampler"] = per
        return out

    def finish(self, evaluate: bool) -> dict:
        if evaluate:
            self._final_evaluation()
        rows = self.log.rows
        summary: dict = {"run_dir": self.run_dir, "steps": self.step}
        if rows:
            summary["final_loss"] = rows[-1]["loss"]
            summary["mean_seconds_per_step"] = statistics.fmean(r["seconds_per_step"] for r in rows)
        diff = max_param_diff_across_ranks(self.model, self.info)
        if diff is not None:
            summary["world_size"] = self.info.world_size
            summary["max_param_diff_across_ranks"] = diff
        summary["sampling"] = self.eval_rows
        summary["quality_note"] = NOT_INCEPTION
        summary["sample_grids"] = self._sample_files()
        summary["environment"] = environment(self.dev)
        if self.info.is_main:
            if rows:
                plot_curves(
                    rows,
                    os.path.join(self.run_dir, "curves.png"),
                    "step",
                    [("loss", ["loss"]), ("learning rate", ["lr"]), ("grad norm", ["grad_norm"])],
                )
            write_json(summary, os.path.join(self.run_dir, "summary.json"))
            if rows:
                shown = rows if len(rows) <= 20 else rows[-20:]
                self.say("\n" + format_table(shown, ["step", "loss", "lr", "seconds_per_step"]))
            if self.eval_rows:
                cols = ["sampler", "nfe", "seconds_per_image", "classifier_fd", "classifier_is"]
                if any("inception_fid" in r for r in self.eval_rows):
                    cols.append("inception_fid")
                self.say("\n" + format_table(self.eval_rows, cols))
                self.say(
                    f"NOTE: {NOT_INCEPTION}. The quality classifier reaches "
                    f"{self.eval_rows[0]['classifier_test_acc']:.1f}% test accuracy; the row "
                    f"'real test split' is what real images score."
                )
            last = f"final loss {rows[-1]['loss']:.4f}, " if rows else ""
            self.say(
                f"\nsummary: {self.step} steps, {last}metrics "
                f"{os.path.join(self.run_dir, 'metrics.jsonl')}, plot "
                f"{os.path.join(self.run_dir, 'curves.png')}, samples "
                f"{os.path.join(self.run_dir, 'samples_*.png')}, checkpoint {self.ckpt_file}"
            )
        return summary

    def compare(self) -> dict:
        cfg = self.cfg
        n = cfg.compare_warmup + cfg.compare_steps
        batches = []
        while len(batches) < n:
            for idx in self.sampler.batches(len(batches) // len(self.sampler)):
                batches.append(self._x0(idx))
                if len(batches) == n:
                    break

        def step(x0) -> tuple[float, None, None]:
            loss, _ = self.train_step(x0)
            self.step += 1
            return loss, None, None

        def pf_ode() -> dict:
            g = torch.Generator(device=self.dev).manual_seed(cfg.seed)
            with timer() as t, self._fork_rng():
                _, nfe = self._sample("pf-ode", min(cfg.batch_size, 16), g)
            return {"pf_ode_nfe": nfe, "pf_ode_seconds": t()}

        return compare_backends(self, (batches, step), extra=pf_ode)


def train_ddpm(
    cfg: DDPMConfig,
    resume: dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Train (or, with ``cfg.compare_backends``, benchmark) a DDPM, then evaluate its samplers.

    Args:
        cfg: the options; see :class:`DDPMConfig`.
        resume: a checkpoint from :func:`timeaware.train.common.load_checkpoint`.
        on_step: called with the step number after every training step (tests use it).

    Returns:
        the summary dict (also written to ``<run>/summary.json``).

    Raises:
        TrainingError: bad options, NaN/Inf loss, PF-ODE solver failure.
        TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written.
    """
    with process_settings(cfg.threads, cfg.deterministic):
        return _train(cfg, resume, on_step)


def _train(cfg, resume, on_step) -> dict:
    import timeaware

    info = setup_distributed(cfg.device)
    try:
        with ExitStack() as stack, StopSignal() as stop, timeaware.use_backend(cfg.backend):
            run = _DDPMRun(cfg, info, stop, resume, on_step, stack)
            if cfg.compare_backends:
                return run.compare()
            return run.run()
    finally:
        cleanup_distributed(info)


__all__ = ["DDPMConfig", "SAMPLERS", "ddpm_config_from_dict", "train_ddpm"]
