"""timeaware's fused GroupNorm for diffusers models: ``apply(model)`` and ``revert(model)``.

One call puts the fused op :func:`timeaware.ops.group_norm_act` into a diffusers model in place,
without touching its weights::

    from diffusers import UNet2DModel
    import timeaware.integrations.diffusers as tad

    unet = UNet2DModel(...)            # or UNet2DModel.from_pretrained(...)
    patched = tad.apply(unet)          # qualified names of the patched modules
    ...                                # train / sample / torch.compile as before
    tad.revert(unet)                   # diffusers' own forwards again

What is patched (module instances swap to a subclass that overrides only ``forward``; the state
dict keeps the same keys and the same tensor objects):

* ``ResnetBlock2D`` with ``time_embedding_norm="default"`` and a SiLU (or ReLU) non-linearity,
  including its ``up``/``down`` variants: ``norm1 -> act`` is one op call; ``conv1`` runs without
  its bias and ``+ bias + time_emb_proj(act(temb)) -> norm2 -> act`` is a second one
  (``conv_bias=conv1.bias, emb=...``). A block without time embedding (``temb=None``, as in the
  VAE) gets the second call without ``emb``.
* ``conv_norm_out`` + ``conv_act`` of ``UNet2DModel`` / ``UNet2DConditionModel``: one op call in
  ``conv_norm_out``; ``conv_act`` becomes a :class:`FoldedActivation` (the identity).
* ``Attention.group_norm`` and ``Transformer2DModel.norm`` (GroupNorm, no activation).

Left alone (``apply`` logs each with the reason; the model still gives diffusers' numbers):
``time_embedding_norm="scale_shift"`` (scale and shift after the norm), ``ResnetBlockCondNorm2D``
(``"ada_group"``, ``"spatial"``), non-SiLU/ReLU activations (GELU, Mish), subclasses of the
patched diffusers classes (their forward may differ), and every other GroupNorm.

Numerics. The op sums the addends and computes the statistics in fp32 whatever the input dtype
(diffusers rounds ``conv1 + bias`` and ``+ temb`` to the activation dtype first); the tests hold
the patched model to flash-attention's rule against a float64 copy of the unpatched one
(``max|patched - fp64| <= 2 max|unpatched - fp64| + atol``).

Output dtype and memory format follow what ``F.group_norm`` returns for the same input (learned
once per device type, dtype and autocast state by a tiny probe): under CUDA autocast GroupNorm
is on the fp32 list, so the patched norm returns fp32 as well (the op reads the bf16 tensor,
computes in fp32 and its output is upcast), whereas CPU autocast keeps bf16. Every module
therefore hands the next one a tensor of the same dtype and memory format as in
diffusers; in particular dropout after ``norm2`` draws the same mask from the same RNG state.
"""

from __future__ import annotations

import logging
import numbers
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:
    import diffusers
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.unets.unet_2d import UNet2DModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
except ImportError as exc:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        "timeaware.integrations.diffusers needs the diffusers package: "
        "pip install 'timeaware[diffusers]' (or pip install diffusers)"
    ) from exc

from timeaware import ops as _ops
from timeaware._backend import BACKENDS

__all__ = [
    "DDPM_CIFAR10_CONFIG",
    "TESTED_DIFFUSERS_VERSIONS",
    "FoldedActivation",
    "FusedGroupNorm",
    "FusedResnetBlock2D",
    "apply",
    "ddpm_cifar10_unet",
    "ddpm_training_loss",
    "revert",
]

logger = logging.getLogger(__name__)

#: diffusers versions whose ``ResnetBlock2D.forward`` this module reproduces and which the tests
#: compared against (patched versus unpatched); others get a warning from :func:`apply`.
TESTED_DIFFUSERS_VERSIONS = ("0.42.1",)

# Activation modules the op computes itself (exact types: a subclass may compute something else).
_FUSABLE_ACTS = {nn.SiLU: "silu", nn.ReLU: "relu"}
# Parents whose forward runs ``conv_act(conv_norm_out(x))`` and uses conv_act nowhere else.
_OUT_NORM_FORWARDS = (UNet2DModel.forward, UNet2DConditionModel.forward)


def _op(*args, **kwargs):
    # Looked up at call time (not bound at import) so that a patched op is picked up.
    return _ops.group_norm_act(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# What F.group_norm returns here: dtype (autocast policy) and memory format
# --------------------------------------------------------------------------------------------
_POLICY: dict[tuple, tuple[torch.dtype, bool]] = {}


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    try:
        if torch.is_autocast_enabled(device_type):
            return True, torch.get_autocast_dtype(device_type)
    except RuntimeError:  # a device type autocast does not know (meta)
        pass
    return False, None


def _gn_policy(x: Tensor) -> tuple[torch.dtype, bool]:
    """(output dtype, keeps channels_last) of ``F.group_norm`` on a tensor like ``x`` here.

    Under CUDA autocast GroupNorm runs in fp32 and returns fp32; CPU autocast leaves it in the
    input dtype; some GroupNorm kernels return NCHW for a channels_last input. Rather than keep a
    table per device and torch version, a (1, 2, 2, 2) channels_last tensor is normalised once
    per (device type, dtype, autocast state) and the answer cached.
    """
    dev = x.device.type
    amp, amp_dtype = _autocast_state(dev)
    key = (dev, x.dtype, amp, amp_dtype)
    policy = _POLICY.get(key)
    if policy is None:
        probe = torch.zeros((1, 2, 2, 2), dtype=x.dtype, device=x.device)
        with torch.no_grad():
            out = F.group_norm(probe.contiguous(memory_format=torch.channels_last), 1)
        policy = (out.dtype, out.is_contiguous(memory_format=torch.channels_last))
        _POLICY[key] = policy
    return policy


def _group_norm_act(
    gn: nn.GroupNorm,
    x: Tensor,
    act: str,
    backend: str | None,
    conv_bias: Tensor | None = None,
    emb: Tensor | None = None,
) -> Tensor:
    """``act(gn(x + conv_bias + emb))`` by one op call, returned in the dtype and memory format
    that ``F.group_norm`` gives for ``x`` here.

    ``F.group_norm`` returns channels_last for a channels_last 4-D input where the policy probe
    says so, and a contiguous tensor for every other input; the op returns its input's layout
    (a strided (N, C, L) attention input too), so a copy is made only where the two differ.
    """
    out_dtype, keeps_channels_last = _gn_policy(x)
    y = _op(
        x,
        gn.num_groups,
        gn.weight,
        gn.bias,
        gn.eps,
        act=act,
        conv_bias=conv_bias,
        emb=emb,
        backend=backend,
    )
    if y.dtype != out_dtype:
        y = y.to(out_dtype)
    if not y.is_contiguous():
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        if not (keeps_channels_last and channels_last):
            y = y.contiguous()
    return y


# --------------------------------------------------------------------------------------------
# The patched classes (instances are swapped to them; revert swaps back)
# --------------------------------------------------------------------------------------------
class FusedGroupNorm(nn.GroupNorm):
    """An ``nn.GroupNorm`` (same parameters and state dict) computed by the fused op, followed by
    the activation ``_timeaware_act`` (``"identity"``, ``"silu"`` or ``"relu"``).

    Shapes: input (N, C, *), NCHW or channels_last; output the same shape.
    """

    _timeaware_act = "identity"
    _timeaware_backend: str | None = None

    def forward(self, input: Tensor) -> Tensor:
        return _group_norm_act(self, input, self._timeaware_act, self._timeaware_backend)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", act={self._timeaware_act!r} (timeaware fused)"
        if self._timeaware_backend is not None:
            s += f", backend={self._timeaware_backend!r}"
        return s


class FoldedActivation(nn.Module):
    """The identity, standing in for an activation that the :class:`FusedGroupNorm` before it now
    applies. Keeps the original module (not registered: no state-dict entry) for :func:`revert`.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.__dict__["original"] = original

    def forward(self, input: Tensor) -> Tensor:
        return input

    def extra_repr(self) -> str:
        return f"folded into the preceding GroupNorm: {self.original!r}"


class FusedResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` (``time_embedding_norm="default"``) with two fused op calls.

    ``norm1 -> act`` is one call; ``conv1`` runs without its bias and ``+ conv1.bias +
    time_emb_proj(act(temb)) -> norm2 -> act`` is the second (``conv_bias=``, ``emb=``). Upsample
    / downsample, dropout, conv2, the shortcut and ``output_scale_factor`` are diffusers' own.
    Calls this forward cannot express (deprecated positional ``scale``, a ``temb`` that is not
    (N|1, temb_channels)) go to diffusers' forward.

    Shapes: input_tensor (N, C_in, H, W); temb (N or 1, temb_channels) or None; output
    (N, C_out, H', W').
    """

    _timeaware_act = "silu"
    _timeaware_backend: str | None = None

    def forward(self, input_tensor: Tensor, temb: Tensor | None, *args, **kwargs) -> Tensor:
        if args or kwargs.get("scale") is not None or input_tensor.dim() != 4:
            return super().forward(input_tensor, temb, *args, **kwargs)
        n = input_tensor.shape[0]
        if self.time_emb_proj is not None:
            if temb is None or temb.dim() != 2 or temb.shape[0] not in (1, n):
                return super().forward(input_tensor, temb)
        elif temb is not None and self.time_embedding_norm == "default":
            # diffusers adds the raw temb (no projection): not a per-channel addend
            return super().forward(input_tensor, temb)
        act, backend = self._timeaware_act, self._timeaware_backend

        hidden_states = _group_norm_act(self.norm1, input_tensor, act, backend)

        if self.upsample is not None:
            # as diffusers (upsample_nearest_nhwc fails with large batches, diffusers issue 984)
            if hidden_states.shape[0] >= 64:
                input_tensor = input_tensor.contiguous()
                hidden_states = hidden_states.contiguous()
            input_tensor = self.upsample(input_tensor)
            hidden_states = self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor = self.downsample(input_tensor)
            hidden_states = self.downsample(hidden_states)

        conv1, conv_bias = self.conv1, None
        if type(conv1) is nn.Conv2d and conv1.bias is not None:
            hidden_states = conv1._conv_forward(hidden_states, conv1.weight, None)
            conv_bias = conv1.bias
        else:  # e.g. a LoRA wrapper: run it as it is
            hidden_states = conv1(hidden_states)

        emb = None
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            emb = self.time_emb_proj(temb)
            if emb.shape[0] != hidden_states.shape[0]:
                emb = emb.expand(hidden_states.shape[0], -1)
            if emb.dtype != hidden_states.dtype:  # diffusers' `h + temb` promotes
                promoted = torch.promote_types(hidden_states.dtype, emb.dtype)
                hidden_states = hidden_states.to(promoted)

        hidden_states = _group_norm_act(
            self.norm2, hidden_states, act, backend, conv_bias=conv_bias, emb=emb
        )

        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)

        if self.conv_shortcut is not None:
            if self.training:  # as diffusers (DDP gradient stride warning, diffusers issue 12975)
                input_tensor = input_tensor.contiguous()
            input_tensor = self.conv_shortcut(input_tensor)

        return (input_tensor + hidden_states) / self.output_scale_factor


# --------------------------------------------------------------------------------------------
# apply / revert
# --------------------------------------------------------------------------------------------
def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _resnet_reason(block: ResnetBlock2D) -> str | None:
    """Why ``block`` cannot be patched, or None."""
    if type(block) is not ResnetBlock2D:
        return f"{type(block).__name__} subclasses ResnetBlock2D; its forward may differ"
    if block.time_embedding_norm == "scale_shift":
        return (
            "time_embedding_norm='scale_shift' scales and shifts after norm2, which is not an "
            "addend of the op"
        )
    if block.time_emb_proj is not None and block.time_embedding_norm != "default":
        return f"time_embedding_norm={block.time_embedding_norm!r} is not supported"
    act = type(block.nonlinearity)
    if act not in _FUSABLE_ACTS:
        return f"non-linearity {act.__name__} (the op fuses SiLU and ReLU)"
    for attr in ("norm1", "norm2"):
        norm = getattr(block, attr)
        if type(norm) is not nn.GroupNorm:
            return f"{attr} is a {type(norm).__name__}, not a torch.nn.GroupNorm"
    return None


def _patch_group_norm(gn: nn.GroupNorm, act: str, backend: str | None) -> None:
    gn.__class__ = FusedGroupNorm
    gn._timeaware_act = act
    gn._timeaware_backend = backend


def _check_version() -> None:
    version = getattr(diffusers, "__version__", "unknown")
    if version not in TESTED_DIFFUSERS_VERSIONS:
        logger.warning(
            "timeaware.integrations.diffusers was tested with diffusers %s; found %s. Compare the "
            "patched model with the unpatched one before relying on it.",
            ", ".join(TESTED_DIFFUSERS_VERSIONS),
            version,
        )


def apply(model: nn.Module, *, backend: str | None = None) -> list[str]:
    """Put timeaware's fused GroupNorm (+ time-embedding add) (+ activation) into a diffusers
    model, in place.

    Patched (see the module docstring for details): ``ResnetBlock2D`` with
    ``time_embedding_norm="default"`` and a SiLU/ReLU non-linearity (its up/down variants
    included), the ``conv_norm_out`` + ``conv_act`` pair of ``UNet2DModel`` and
    ``UNet2DConditionModel``, ``Attention.group_norm`` and ``Transformer2DModel.norm``. Everything
    else is left alone; each left-alone candidate is logged (INFO) with the reason, and a WARNING
    summarises them.

    The state dict is untouched (same keys, same tensor objects), so saving, loading,
    ``from_pretrained`` weights and optimizers work as before; ``torch.compile`` works after
    ``apply``. Calling ``apply`` again is harmless: already patched modules only take the new
    ``backend``.

    Args:
        model: any ``torch.nn.Module`` holding diffusers modules (a ``UNet2DModel``, a
            ``UNet2DConditionModel``, an ``AutoencoderKL``, a single block, or a wrapper).
        backend: backend of the op for the patched modules: None (follow
            :func:`timeaware.use_backend`, default ``auto``: Triton on CUDA tensors, eager
            PyTorch elsewhere), ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        The qualified names (as in ``model.named_modules()``; ``""`` is ``model`` itself) of every
        module that is patched after the call. A folded ``conv_act`` is listed with its
        ``conv_norm_out``.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``backend`` is not None or one of ``timeaware.BACKENDS``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: expected a torch.nn.Module (e.g. a diffusers UNet2DModel), got "
            f"{type(model).__name__}"
        )
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise ValueError(f"backend: expected None or one of {BACKENDS}, got {backend!r}")
    _check_version()

    patched: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, m in list(model.named_modules()):
        if isinstance(m, ResnetBlock2D):
            if type(m) is FusedResnetBlock2D:
                m._timeaware_backend = backend
                patched.append(name)
                continue
            reason = _resnet_reason(m)
            if reason is not None:
                skipped.append((name, reason))
                continue
            m.__class__ = FusedResnetBlock2D
            m._timeaware_act = _FUSABLE_ACTS[type(m.nonlinearity)]
            m._timeaware_backend = backend
            patched.append(name)
        elif isinstance(m, ResnetBlockCondNorm2D):
            skipped.append(
                (
                    name,
                    f"time_embedding_norm={m.time_embedding_norm!r}: the embedding conditions "
                    "the norm (AdaGroupNorm/SpatialNorm), not an addend of the op",
                )
            )
        elif isinstance(m, (Attention, Transformer2DModel)):
            attr = "group_norm" if isinstance(m, Attention) else "norm"
            gn = getattr(m, attr, None)
            if type(gn) is FusedGroupNorm:
                gn._timeaware_backend = backend
                patched.append(_join(name, attr))
            elif type(gn) is nn.GroupNorm:
                _patch_group_norm(gn, "identity", backend)
                patched.append(_join(name, attr))
            elif isinstance(gn, nn.GroupNorm):
                skipped.append((_join(name, attr), f"{type(gn).__name__} subclasses GroupNorm"))
        if type(m).forward in _OUT_NORM_FORWARDS:
            gn, act = getattr(m, "conv_norm_out", None), getattr(m, "conv_act", None)
            names = [_join(name, "conv_norm_out"), _join(name, "conv_act")]
            if type(gn) is FusedGroupNorm and type(act) is FoldedActivation:
                gn._timeaware_backend = backend
                patched += names
            elif type(gn) is nn.GroupNorm and type(act) in _FUSABLE_ACTS:
                _patch_group_norm(gn, _FUSABLE_ACTS[type(act)], backend)
                m.conv_act = FoldedActivation(act)
                patched += names
            elif gn is not None:
                skipped.append(
                    (
                        names[0],
                        f"conv_norm_out {type(gn).__name__} + conv_act {type(act).__name__} "
                        "(fused: torch.nn.GroupNorm + SiLU/ReLU)",
                    )
                )

    for name, reason in skipped:
        logger.info("timeaware: left %r unpatched: %s", name, reason)
    if skipped:
        counts = Counter(reason for _, reason in skipped)
        logger.warning(
            "timeaware: patched %d modules, left %d as diffusers computes them: %s",
            len(patched),
            len(skipped),
            "; ".join(f"{n} x {reason}" for reason, n in counts.items()),
        )
    return patched


def revert(model: nn.Module) -> list[str]:
    """Undo :func:`apply`: every patched module gets diffusers' own class (and forward) back, and
    every folded activation its original module. The state dict is untouched.

    Args:
        model: the module :func:`apply` was called on (or any module containing patched ones).

    Returns:
        The qualified names of the modules restored (empty when nothing was patched).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    restored: list[str] = []
    for name, m in list(model.named_modules()):
        if type(m) is FusedResnetBlock2D:
            m.__class__ = ResnetBlock2D
            restored.append(name)
        elif type(m) is FusedGroupNorm:
            m.__class__ = nn.GroupNorm
            restored.append(name)
        else:
            continue
        for attr in ("_timeaware_act", "_timeaware_backend"):
            m.__dict__.pop(attr, None)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m._modules.items()):
            if type(child) is FoldedActivation:
                setattr(m, child_name, child.original)
                restored.append(_join(name, child_name))
    return restored


# --------------------------------------------------------------------------------------------
# The diffusers-unet bench workload: DDPM's CIFAR-10 U-Net and its training loss
# --------------------------------------------------------------------------------------------
#: ``UNet2DModel`` configuration of DDPM's CIFAR-10 model as published in diffusers'
#: ``google/ddpm-cifar10-32`` (35.7M parameters; attention at 16x16).
DDPM_CIFAR10_CONFIG = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "act_fn": "silu",
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
}


def ddpm_cifar10_unet(*, dropout: float = 0.1, **overrides) -> UNet2DModel:
    """A randomly initialised ``UNet2DModel`` with DDPM's CIFAR-10 architecture.

    Args:
        dropout: dropout probability of the residual blocks (DDPM trained CIFAR-10 with 0.1;
            the published diffusers config predates the option and means 0.0).
        **overrides: any other ``UNet2DModel`` argument, replacing the value of
            :data:`DDPM_CIFAR10_CONFIG` (e.g. ``block_out_channels=(32, 64, 64, 64)`` for a
            small test model).

    Returns:
        The model, in training mode, on the CPU in fp32, seeded by the global torch RNG.

    Raises:
        ValueError: ``dropout`` outside [0, 1).
        TypeError: ``dropout`` not a number.
    """
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout: expected a float in [0, 1), got {type(dropout).__name__}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {dropout}")
    config = {**DDPM_CIFAR10_CONFIG, "dropout": float(dropout), **overrides}
    model = UNet2DModel(**config)
    model.train()
    return model


def ddpm_training_loss(
    model: nn.Module,
    x0: Tensor,
    *,
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """DDPM's epsilon-prediction loss of a diffusers U-Net on a batch (one training step's
    forward; call ``.backward()`` on the result).

    Draws the timesteps and the noise from the global torch RNG (seed it for a repeatable
    step), noises ``x0`` with the linear beta schedule, and returns the mean squared error
    between the predicted and the true noise, in fp32. Run it under ``torch.autocast`` for a
    mixed-precision step.

    Args:
        model: a diffusers U-Net called as ``model(x_t, t).sample`` (``UNet2DModel``).
        x0: (N, C, H, W) clean images scaled to [-1, 1].
        num_train_timesteps: T, the number of diffusion steps.
        beta_start, beta_end: the linear beta schedule (DDPM: 1e-4, 0.02).

    Returns:
        A 0-d fp32 tensor.

    Raises:
        TypeError: ``model`` is not a module, ``x0`` not a floating tensor, or a beta not a
            number.
        ValueError: ``x0`` not 4-D, ``num_train_timesteps`` not a positive int, or betas not
            0 < beta_start <= beta_end < 1.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        got = x0.dtype if isinstance(x0, Tensor) else type(x0).__name__
        raise TypeError(f"x0: expected a floating-point torch.Tensor, got {got}")
    if x0.dim() != 4:
        raise ValueError(f"x0: expected shape (N, C, H, W), got {tuple(x0.shape)}")
    if (
        isinstance(num_train_timesteps, bool)
        or not isinstance(num_train_timesteps, numbers.Integral)
        or num_train_timesteps <= 0
    ):
        raise ValueError(
            f"num_train_timesteps: expected a positive int, got {num_train_timesteps!r}"
        )
    for name, beta in (("beta_start", beta_start), ("beta_end", beta_end)):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise TypeError(f"{name}: expected a float, got {type(beta).__name__}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"beta_start, beta_end: expected 0 < beta_start <= beta_end < 1, got "
            f"{beta_start}, {beta_end}"
        )
    n = x0.shape[0]
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1.0 - betas, 0).to(device=x0.device, dtype=torch.float32)
    t = torch.randint(0, num_train_timesteps, (n,), device=x0.device)
    noise = torch.randn_like(x0)
    abar = alphas_cumprod[t].view(n, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
    pred = model(x_t, t).sample
    return F.mse_loss(pred.float(), noise.float())
