"""The ``timeaware`` command line: ``timeaware train node|ddpm ...``, ``timeaware presets``.

Options resolve in this order, later wins: the trainer's defaults (the paper's recipe), the
``--preset``'s options, the options given on the command line. With ``--resume`` the
checkpoint's options are used instead of the defaults and the preset; only run-control
options (length of the run, logging, checkpointing, evaluation, device) and the learning rate
may change.

Numeric options are parsed with the type and range of their trainer's ``NUMBERS`` table, the
same table the config classes are checked against; an option added to a config class and to
that table gets both checks. Every command-line error is one line.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import asdict, fields

from timeaware.train import ddpm as _ddpm
from timeaware.train import node as _node
from timeaware.train.common import TrainingError, TrainingInterrupted, load_checkpoint
from timeaware.train.ddpm import SAMPLERS, DDPMConfig, ddpm_config_from_dict, train_ddpm
from timeaware.train.node import (
    ACTS,
    NORMS,
    PLATEAU_METRICS,
    SOLVERS,
    TIME_EMBEDS,
    NodeConfig,
    node_config_from_dict,
    train_node,
)
from timeaware.train.presets import PRESETS, get_preset, presets_for

_NODE = NodeConfig()
_DDPM = DDPMConfig()

# Options that may differ from the checkpoint's when resuming (they do not change the maths of
# the steps already taken). The learning rate may change too, so that the advice after a
# divergence ("resume with a lower --lr") can be followed; the trainer applies it to the
# optimiser and records the change in config.json and metrics.jsonl.
RESUMABLE = {
    "lr",
    "cuda_graphs",  # replays the same kernels: the numbers do not change
    "epochs",
    "steps",
    "device",
    "threads",
    "deterministic",
    "progress",
    "ckpt_every_epochs",
    "ckpt_every_steps",
    "ckpt_every",
    "log_every",
    "sample_every",
    "sample_grid",
    "eval_batch_size",
    "eval_samples",
    "eval_samplers",
    "ddim_steps",
    "ode_method",
    "ode_rtol",
    "ode_atol",
    "classifier_cache",
    "classifier_epochs",
    "inception_weights",
    "data_root",
    "inject_nan_at_step",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) that point to ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _use_number_types(p: argparse.ArgumentParser, numbers: dict) -> None:
    """Parse every numeric option with its trainer's :class:`~timeaware.train.common.Num`, so
    a malformed or out-of-range value (``--lr a``, ``--lr nan``, ``--max-num-steps -1``) is
    rejected by the parser with the expected range."""
    for a in p._actions:
        if a.dest in numbers:
            a.type = numbers[a.dest].parse


def _none_or(kind):
    def parse(s: str):
        return None if s.lower() in ("none", "auto", "") else kind(s)

    parse.__name__ = kind.__name__
    return parse


def _int_list(s: str) -> tuple[int, ...]:
    s = s.strip()
    if not s or s.lower() == "none":
        return ()
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _samplers(s: str) -> tuple[str, ...]:
    out = tuple(v.strip() for v in s.split(",") if v.strip())
    for v in out:
        if v not in SAMPLERS:
            raise argparse.ArgumentTypeError(f"unknown sampler {v!r}; choose from {SAMPLERS}")
    return out


def _d(default) -> str:
    if isinstance(default, tuple):
        default = ",".join(map(str, default)) or "none"
    return f" (default: {default})"


def _common_run_options(p: argparse.ArgumentParser, cfg, kind: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--preset",
        metavar="NAME",
        help=f"model options of a paper row (see 'timeaware presets {kind}'); explicit options "
        f"override it. One of: {', '.join(x.name for x in presets_for(kind))}",
    )
    g.add_argument(
        "--out",
        metavar="DIR",
        help="run folder for checkpoints, metrics.jsonl, curves.png, summary.json"
        " (default: runs/<trainer>-<preset>-<time>)",
    )
    g.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a run from its folder (or a checkpoint file); the checkpoint's options "
        "are used, only run-control options (length, logging, checkpointing, evaluation, "
        "device) and --lr may be changed (changes are recorded in config.json). An "
        "interrupted run resumed on the same machine configuration reproduces the "
        "uninterrupted run exactly. A folder is used by one run at a time (a lock file, "
        ".lock, released when the process ends)",
    )
    g.add_argument(
        "--seed",
        type=int,
        help="seed of initialisation, data order, augmentation, noise and dropout" + _d(cfg.seed),
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="auto: CUDA when available (cuda:LOCAL_RANK under torchrun), else CPU" + _d("auto"),
    )
    g.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU intra-op threads (torch.set_num_threads); 0 keeps torch's default. On a busy"
        " CPU, 1 is often much faster. Results are bit-exact only for the same value" + _d(0),
    )
    g.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        help="deterministic cuDNN/cuBLAS kernels (torch.use_deterministic_algorithms), needed "
        "for a resumed GPU run to match an uninterrupted one bit for bit; CPU runs are "
        "deterministic already" + _d(False),
    )
    g.add_argument(
        "--backend",
        choices=["auto", "reference", "triton"],
        help="timeaware op backend: auto = fused Triton kernels on CUDA, eager reference "
        "elsewhere; reference = eager PyTorch; triton = force the kernels (CPU only under "
        "TRITON_INTERPRET=1)" + _d(cfg.backend),
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="tqdm progress bars (rank 0)" + _d(True),
    )
    c = p.add_argument_group("backend comparison")
    c.add_argument(
        "--compare-backends",
        action="store_true",
        help="instead of training, run the same steps from the same weights, batches and RNG "
        "with the reference and the fused backend; report time per step (median after "
        "warm-up, CUDA-synchronised), speedup, NFE of each and the largest loss difference; "
        "writes compare.json. Without a CUDA GPU only the reference runs (and it says so)",
    )
    c.add_argument(
        "--compare-steps", type=int, metavar="N", help="timed steps" + _d(cfg.compare_steps)
    )
    c.add_argument(
        "--compare-warmup",
        type=int,
        metavar="N",
        help="untimed warm-up steps before them" + _d(cfg.compare_warmup),
    )
    t = p.add_argument_group("testing aids")
    t.add_argument(
        "--inject-nan-at-step",
        type=int,
        metavar="N",
        help="multiply the loss of step N by NaN, to check that the run stops with a clear "
        "message and leaves the last checkpoint intact (0: off)" + _d(0),
    )


def _data_options(p: argparse.ArgumentParser, cfg, size_default: str) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=["digits", "cifar10", "cifar100"],
        help="digits: scikit-learn's 1797 8x8 digits, embedded, no download (resized, 3 "
        "channels by repetition, fixed 1437/360 train/test split); cifar10/cifar100: read "
        "from a local folder (see --data-root)" + _d(cfg.dataset),
    )
    g.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder that contains cifar-10-batches-py/ or cifar-100-python/ (the extracted "
        "official Python archives); nothing is downloaded (default: $TIMEAWARE_DATA or ./data)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        metavar="S",
        help=f"images are resized to SxS (bilinear) (default: {size_default})",
    )
    g.add_argument(
        "--image-channels",
        type=int,
        choices=[1, 3],
        help="digits only: 3 repeats the grey channel (the CIFAR architectures unchanged), "
        "1 keeps it" + _d(cfg.image_channels),
    )
    g.add_argument(
        "--augment",
        choices=["auto", "none", "flip", "paper"],
        help="paper: random crop (pad 4) + colour jitter (hue, saturation 0.05) + horizontal "
        "flip; flip: horizontal flip only; auto: "
        + (
            "paper for CIFAR, none for digits"
            if isinstance(cfg, NodeConfig)
            else "flip for CIFAR (the paper's DDPM recipe), none for digits"
        )
        + _d("auto"),
    )
    g.add_argument(
        "--split-seed",
        type=int,
        help="digits: seed of the stratified train/test split" + _d(cfg.split_seed),
    )


def build_node_parser(sub) -> argparse.ArgumentParser:
    """Add the ``node`` sub-command (every NODE option, with its default in the help) to ``sub``."""
    cfg = _NODE
    p = sub.add_parser(
        "node",
        help="train a Neural ODE image classifier (paper section 4.1)",
        description="Train the paper's NODE classifier: stem conv + two stride-2 residual blocks "
        "-> ODE block [norm-act-ConcatConv-norm-act-ConcatConv-norm] solved with torchdiffeq -> "
        "norm-ReLU-pool-dropout-FC. Defaults are the paper's recipe. Per epoch it records train "
        "loss/accuracy, test loss/accuracy, NFE-F and NFE-B (mean over batches and ranks) and "
        "seconds per epoch to metrics.jsonl, and plots them to curves.png. Under torchrun "
        "--nproc_per_node=K it trains with DistributedDataParallel.",
        argument_default=argparse.SUPPRESS,
    )
    _data_options(p, cfg, "32, so the ODE state is 8x8")
    m = p.add_argument_group("model (timeaware.models.NODEClassifier)")
    m.add_argument(
        "--channels", type=int, metavar="C", help="channels C of the ODE state" + _d(cfg.channels)
    )
    m.add_argument(
        "--norm",
        choices=NORMS,
        help="normalisation in the ODE function, stem and "
        "head; batch/instance cancel a per-channel timestep offset (paper Table 1)" + _d(cfg.norm),
    )
    m.add_argument(
        "--groups",
        type=_none_or(int),
        metavar="G",
        help="GroupNorm groups, must divide --channels; G=1 keeps the most timestep information "
        "(paper Figure 7) (default: auto = min(32, C))",
    )
    m.add_argument(
        "--act", choices=ACTS, help="activation in the ODE function (Appendix A)" + _d(cfg.act)
    )
    m.add_argument(
        "--inject",
        type=_none_or(str),
        choices=[None, "linear"],
        metavar="{none,linear}",
        help="positional timestep embedding added before each norm of the ODE function "
        "(paper remedy 1)" + _d("none"),
    )
    m.add_argument(
        "--zero-bias",
        choices=["none", "operand", "timestep", "all"],
        help="zero bias initialisation: operand = the convolutions (paper remedy 2), timestep "
        "= the timestep-embedding branch, all = both, none = PyTorch defaults" + _d("none"),
    )
    m.add_argument(
        "--time-embed",
        choices=TIME_EMBEDS,
        help="concat: ConcatConv (the time channel of torchdiffeq's example); mlp: additive "
        "MLP timestep embedding (paper Table 2)" + _d(cfg.time_embed),
    )
    m.add_argument("--dropout", type=float, help="dropout before the FC layer" + _d(cfg.dropout))
    m.add_argument("--method", help="torchdiffeq solver" + _d(cfg.method))
    m.add_argument("--rtol", type=float, help="solver relative tolerance" + _d(cfg.rtol))
    m.add_argument("--atol", type=float, help="solver absolute tolerance" + _d(cfg.atol))
    m.add_argument(
        "--max-num-steps",
        type=int,
        metavar="N",
        help="solver step limit per solve; exceeding it stops the run with a message naming "
        "the step and NFE (0: torchdiffeq's default, no practical limit)" + _d(0),
    )
    m.add_argument(
        "--adjoint",
        action=argparse.BooleanOptionalAction,
        help="backward by the adjoint method (a second solve; NFE-B counts it)" + _d(True),
    )
    # --- solver (timeaware.odeint) ---
    m.add_argument(
        "--solver",
        choices=SOLVERS,
        help="ODE solver: torchdiffeq, or timeaware (the same dopri5 steps and NFE with fused "
        "stage kernels and no host sync per step; dopri5 only)" + _d(cfg.solver),
    )
    m.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        help="capture the ODE function's forward and backward as CUDA graphs, one per input "
        "shape (removes the host cost of its launches; CUDA only, not with --norm batch)"
        + _d(False),
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, help="training epochs" + _d(cfg.epochs))
    o.add_argument(
        "--batch-size",
        type=int,
        help="global batch size (split evenly over torchrun processes)" + _d(cfg.batch_size),
    )
    o.add_argument(
        "--lr",
        type=float,
        help="SGD learning rate; with --resume it replaces the current one (also a "
        "plateau-reduced one) from the resume point on" + _d(cfg.lr),
    )
    o.add_argument("--momentum", type=float, help="SGD momentum" + _d(cfg.momentum))
    o.add_argument("--weight-decay", type=float, help="SGD weight decay" + _d(cfg.weight_decay))
    o.add_argument(
        "--plateau-patience",
        type=int,
        help="ReduceLROnPlateau patience in epochs" + _d(cfg.plateau_patience),
    )
    o.add_argument(
        "--plateau-factor", type=float, help="ReduceLROnPlateau factor" + _d(cfg.plateau_factor)
    )
    o.add_argument(
        "--plateau-metric",
        choices=PLATEAU_METRICS,
        help="metric watched by ReduceLROnPlateau (train_loss keeps the test set out of "
        "training decisions)" + _d(cfg.plateau_metric),
    )
    _common_run_options(p, cfg, "node")
    r = p.add_argument_group("checkpoints and evaluation")
    r.add_argument(
        "--ckpt-every-epochs",
        type=int,
        metavar="N",
        help="write <out>/last.pt every N epochs (always at the end and on SIGINT/SIGTERM)"
        + _d(cfg.ckpt_every_epochs),
    )
    r.add_argument(
        "--ckpt-every-steps",
        type=int,
        metavar="N",
        help="also write it every N optimiser steps (0: off)" + _d(0),
    )
    r.add_argument("--eval-batch-size", type=int, help="test batch size" + _d(cfg.eval_batch_size))
    _use_number_types(p, _node.NUMBERS)
    return p


def build_ddpm_parser(sub) -> argparse.ArgumentParser:
    """Add the ``ddpm`` sub-command (every DDPM option, with its default in the help) to ``sub``."""
    cfg = _DDPM
    p = sub.add_parser(
        "ddpm",
        help="train a DDPM U-Net (paper section 4.2) and measure its samplers",
        description="Train the paper's DDPM (U-Net + Gaussian diffusion, eps-prediction). "
        "Defaults are the paper's recipe. Logs loss, learning rate, gradient norm and seconds "
        "per step to metrics.jsonl and curves.png, saves EMA sample grids "
        "(samples_step*.png), and at the end samples with the ancestral sampler, DDIM and the "
        "probability-flow ODE, reporting each one's NFE, time, and sample quality as "
        "classifier-FD / classifier-IS: Frechet distance and Inception-style score on the "
        "features of a small classifier trained once on the same dataset (cached). These are "
        "NOT Inception FID/IS; Inception FID is computed only with --inception-weights. Under "
        "torchrun --nproc_per_node=K it trains with DistributedDataParallel.",
        argument_default=argparse.SUPPRESS,
    )
    _data_options(p, cfg, "16 for digits, 32 for CIFAR")
    m = p.add_argument_group("model (timeaware.models.UNet, GaussianDiffusion)")
    m.add_argument("--ch", type=int, help="base width of the U-Net" + _d(cfg.ch))
    m.add_argument(
        "--ch-mult",
        type=_int_list,
        metavar="M,M,..",
        help="width multiplier per resolution" + _d(cfg.ch_mult),
    )
    m.add_argument(
        "--num-res-blocks", type=int, help="residual blocks per level" + _d(cfg.num_res_blocks)
    )
    m.add_argument(
        "--attn-resolutions",
        type=_int_list,
        metavar="R,..",
        help="resolutions with self-attention ('none' for none)" + _d(cfg.attn_resolutions),
    )
    m.add_argument("--dropout", type=float, help="dropout in every res block" + _d(cfg.dropout))
    m.add_argument(
        "--groups",
        type=int,
        metavar="G",
        help="GroupNorm groups; must divide every width ch*mult (paper remedy 3: fewer groups)"
        + _d(cfg.groups),
    )
    m.add_argument(
        "--inject",
        type=_none_or(str),
        choices=[None, "linear", "mlp"],
        metavar="{none,linear,mlp}",
        help="positional timestep embedding before each res block's second norm: linear in t, "
        "or an MLP branch off the sinusoidal embedding (paper remedy 1)" + _d("none"),
    )
    m.add_argument(
        "--zero-bias",
        choices=["none", "operand", "timestep", "all"],
        help="zero bias initialisation: operand = convolutions (paper remedy 2), timestep = "
        "timestep-embedding branch, all = both (DDPM's original init), none = PyTorch "
        "defaults" + _d("none"),
    )
    m.add_argument("--timesteps", type=int, help="diffusion steps T" + _d(cfg.timesteps))
    m.add_argument("--beta-1", type=float, help="first beta" + _d(cfg.beta_1))
    m.add_argument("--beta-T", dest="beta_T", type=float, help="last beta" + _d(cfg.beta_T))
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, help="training steps" + _d(cfg.steps))
    o.add_argument(
        "--batch-size",
        type=int,
        help="global batch size (split evenly over torchrun processes)" + _d(cfg.batch_size),
    )
    o.add_argument(
        "--lr",
        type=float,
        help="Adam learning rate (no weight decay), the value the warm-up reaches; with "
        "--resume it replaces the checkpoint's from the resume point on" + _d(cfg.lr),
    )
    o.add_argument("--warmup", type=int, help="linear learning-rate warm-up steps" + _d(cfg.warmup))
    o.add_argument(
        "--grad-clip",
        type=float,
        help="gradient norm clipping ('inf': none); a step whose gradient norm is not finite "
        "stops the run before the update" + _d(cfg.grad_clip),
    )
    o.add_argument(
        "--ema-decay",
        type=float,
        help="EMA decay of the weights used for sampling (torch.optim.swa_utils)"
        + _d(cfg.ema_decay),
    )
    _common_run_options(p, cfg, "ddpm")
    r = p.add_argument_group("checkpoints, logging, samples")
    r.add_argument(
        "--ckpt-every",
        type=int,
        metavar="N",
        help="write <out>/last.pt every N steps (always at the end and on SIGINT/SIGTERM)"
        + _d(cfg.ckpt_every),
    )
    r.add_argument(
        "--log-every", type=int, metavar="N", help="metrics row every N steps" + _d(cfg.log_every)
    )
    r.add_argument(
        "--sample-every",
        type=int,
        metavar="N",
        help="save an EMA sample grid (DDIM, fixed noise) every N steps (0: only at the end)"
        + _d(cfg.sample_every),
    )
    r.add_argument(
        "--sample-grid", type=int, metavar="N", help="images per grid" + _d(cfg.sample_grid)
    )
    e = p.add_argument_group("final evaluation")
    e.add_argument(
        "--eval-samples",
        type=int,
        metavar="N",
        help="EMA samples per sampler for NFE, timing and quality (0: skip)" + _d(cfg.eval_samples),
    )
    e.add_argument(
        "--eval-samplers",
        type=_samplers,
        metavar="LIST",
        help="comma-separated samplers: ancestral (T NFE), ddim (--ddim-steps NFE), pf-ode "
        "(adaptive NFE)" + _d(cfg.eval_samplers),
    )
    e.add_argument(
        "--eval-batch-size", type=int, help="sampling batch size" + _d(cfg.eval_batch_size)
    )
    e.add_argument(
        "--ddim-steps",
        type=int,
        help="DDIM steps (eta 0), at most --timesteps" + _d(cfg.ddim_steps),
    )
    e.add_argument("--ode-method", help="PF-ODE torchdiffeq solver" + _d(cfg.ode_method))
    e.add_argument("--ode-rtol", type=float, help="PF-ODE relative tolerance" + _d(cfg.ode_rtol))
    e.add_argument("--ode-atol", type=float, help="PF-ODE absolute tolerance" + _d(cfg.ode_atol))
    e.add_argument(
        "--classifier-cache",
        metavar="DIR",
        help="where the quality classifier is cached after its one training "
        "(default: $TIMEAWARE_CACHE or ~/.cache/timeaware)",
    )
    e.add_argument(
        "--classifier-epochs",
        type=int,
        help="epochs of the quality classifier's one training" + _d(cfg.classifier_epochs),
    )
    e.add_argument(
        "--inception-weights",
        metavar="FILE",
        help="local FID Inception weights (torch-fidelity's .pth); adds real Inception FID "
        "(needs the torch-fidelity package). Nothing is downloaded; a missing file is an error",
    )
    _use_number_types(p, _ddpm.NUMBERS)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``timeaware`` command-line parser: ``train node``, ``train ddpm`` and ``presets``."""
    parser = _Parser(
        prog="timeaware",
        description="timeaware trainers: NODE and DDPM with the paper's remedies for vanishing "
        "timestep embeddings, on the embedded digits dataset or local CIFAR-10/100.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser("train", help="train a model (node or ddpm)")
    tsub = train.add_subparsers(dest="trainer", required=True, metavar="TRAINER")
    build_node_parser(tsub)
    build_ddpm_parser(tsub)
    pr = sub.add_parser("presets", help="list the presets named after the paper's rows")
    pr.add_argument("trainer", nargs="?", choices=["node", "ddpm"], help="only this trainer's")
    return parser


def resolve_config(kind: str, args: dict):
    """Defaults <- preset <- explicit options; or checkpoint <- allowed explicit options.

    Returns ``(config, resume_checkpoint_or_None)``.

    Raises:
        ValueError: unknown preset.
        TrainingError: unreadable checkpoint, or an option that cannot change on resume.
    """
    args = dict(args)
    resume = args.pop("resume", None)
    cls = NodeConfig if kind == "node" else DDPMConfig
    from_dict = node_config_from_dict if kind == "node" else ddpm_config_from_dict
    names = {f.name for f in fields(cls)}
    unknown = set(args) - names
    if unknown:  # pragma: no cover - the parser only produces known names
        raise TrainingError(f"unknown options {sorted(unknown)}")
    if resume is not None:
        ckpt = load_checkpoint(resume, kind)
        base = dict(ckpt["config"])
        for k, v in args.items():
            old = base.get(k)
            if isinstance(old, list):
                old = tuple(old)
            if k not in RESUMABLE and v != old:
                raise TrainingError(
                    f"--{k.replace('_', '-')} cannot change when resuming (checkpoint has "
                    f"{old!r}, got {v!r}); start a new run with --out instead"
                )
            base[k] = v
        path = resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))
        base["out"] = path
        return from_dict(base), ckpt
    base = asdict(cls())
    preset = args.get("preset")
    if preset is not None:
        base.update(get_preset(preset, kind).options)
    base.update(args)
    return from_dict(base), None


def _opt_str(name: str, v) -> str:
    if v is None:
        return "auto" if name == "groups" else "none"
    if isinstance(v, tuple):
        return ",".join(map(str, v)) or "none"
    return str(v)


def _print_presets(kind: str | None) -> None:
    for k in ("node", "ddpm"):
        if kind not in (None, k):
            continue
        print(f"{k} presets (timeaware train {k} --preset NAME):")
        for p in presets_for(k):
            opts = " ".join(
                f"--{o.replace('_', '-')} {_opt_str(o, v)}" for o, v in p.options.items()
            )
            print(f"  {p.name:<22} {p.paper}")
            print(f"  {'':<22}   options: {opts}")
            if p.paper_result:
                print(f"  {'':<22}   paper (CIFAR): {p.paper_result}")
        print()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``timeaware`` console script and ``python -m timeaware``."""
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:
        _unknown_options(parser, ns, extra)
    if ns.command == "presets":
        _print_presets(ns.trainer)
        return 0
    kind = ns.trainer
    args = {k: v for k, v in vars(ns).items() if k not in ("command", "trainer")}
    prefix = "timeaware"
    if os.environ.get("WORLD_SIZE", "1") != "1":
        prefix = f"timeaware [rank {os.environ.get('RANK', '?')}]"
    try:
        cfg, ckpt = resolve_config(kind, args)
        if kind == "node":
            train_node(cfg, resume=ckpt)
        else:
            train_ddpm(cfg, resume=ckpt)
    except TrainingInterrupted as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 130 if str(exc).startswith("SIGINT") else 143
    except (TrainingError, ValueError, OSError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("--preset"):
            parser.error(str(exc))
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _subparser(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    for name in path:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction) and name in a.choices:
                parser = a.choices[name]
                break
    return parser


def _unknown_options(parser: argparse.ArgumentParser, ns: argparse.Namespace, extra: list[str]):
    """Exit with one line naming the unknown options, from the sub-command they were given to,
    with the closest known option when there is one (``--eps`` -> ``--epochs``)."""
    path = [v for v in (getattr(ns, "command", None), getattr(ns, "trainer", None)) if v]
    sub = _subparser(parser, path)
    known = [o for a in sub._actions for o in a.option_strings]
    msg = f"unrecognized arguments: {' '.join(extra)}"
    for e in extra:
        if e.startswith("--"):
            close = difflib.get_close_matches(e.split("=")[0], known, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean {close[0]}?"
                break
    sub.error(msg)


__all__ = ["PRESETS", "build_parser", "main", "resolve_config"]
