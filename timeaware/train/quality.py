"""Sample quality offline: a small classifier's Frechet distance and Inception-style score.

The Inception network behind FID/IS is a 100 MB download and knows nothing about 8x8 digits, so
by default the trainers measure samples with a small CNN trained once on the same dataset
(cached on disk), through torchmetrics' own implementations with a custom feature extractor:

- ``classifier_fd``: :class:`torchmetrics.image.fid.FrechetInceptionDistance` on the
  classifier's penultimate features (128-d) of real (train split) and generated images.
- ``classifier_is``: :class:`torchmetrics.image.inception.InceptionScore` on its logits.

These numbers are NOT Inception FID / IS and are not comparable with the paper's Table 3; they
compare runs on the same dataset with each other (lower FD / higher IS is better), and the
report always states this. Inception FID is computed only when the user passes a local weights
file (``--inception-weights``; needs the ``torch-fidelity`` package, as torchmetrics does).

Both metrics synchronise across ranks under torch.distributed, so each rank can score its own
share of the samples.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timeaware.data import ImageData, to_unit
from timeaware.train.common import DistInfo, TrainingError, atomic_save, barrier

CLASSIFIER_VERSION = 1
NOT_INCEPTION = (
    "classifier-FD / classifier-IS use a small CNN trained on this dataset, NOT the Inception "
    "network: they are not Inception FID/IS and cannot be compared with published FID/IS values"
)


class SmallClassifier(nn.Module):
    """Three 3x3 conv stages (32, 64, 64 channels; GroupNorm, ReLU, stride 2 in the last two),
    global average pool, a 128-d feature layer and a linear classifier. Inputs: images in
    [0, 1], normalised inside with the dataset's mean/std (stored as buffers, so the cached
    file is self-contained)."""

    num_features = 128

    def __init__(self, in_channels: int, num_classes: int, mean: Tensor, std: Tensor):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
            )

        self.body = nn.Sequential(block(in_channels, 32, 1), block(32, 64, 2), block(64, 64, 2))
        self.fc_feat = nn.Linear(64, self.num_features)
        self.fc_out = nn.Linear(self.num_features, num_classes)
        self.register_buffer("mean", mean.detach().clone().float().view(1, -1, 1, 1))
        self.register_buffer("std", std.detach().clone().float().view(1, -1, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) / self.std
        return F.relu(self.fc_feat(self.body(x).mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.features(x))


class _Features(nn.Module):
    """Feature extractor for torchmetrics' FID: (N, C, H, W) in [0, 1] -> (N, 128)."""

    def __init__(self, clf: SmallClassifier):
        super().__init__()
        self.clf = clf
        self.num_features = clf.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.clf.features(x)


class _Logits(nn.Module):
    """Logits for torchmetrics' Inception Score."""

    def __init__(self, clf: SmallClassifier):
        super().__init__()
        self.clf = clf

    def forward(self, x: Tensor) -> Tensor:
        return self.clf(x)


def default_cache_dir() -> str:
    """Where the quality classifier is cached: ``$TIMEAWARE_CACHE`` or ``~/.cache/timeaware``."""
    return os.environ.get(
        "TIMEAWARE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "timeaware")
    )


def _cache_file(data: ImageData, cache_dir: str, epochs: int, seed: int) -> str:
    # The data themselves enter the key, so a different split or resize never reuses a file.
    h = hashlib.sha1()
    for t in (data.train_x[:256], data.train_y, data.test_y):
        h.update(t.contiguous().numpy().tobytes())
    key = (
        f"{data.name}-{data.channels}x{data.image_size}-n{len(data.train_y)}-e{epochs}-s{seed}"
        f"-v{CLASSIFIER_VERSION}-{h.hexdigest()[:10]}"
    )
    return os.path.join(cache_dir, f"classifier-{key}.pt")


def _train_classifier(
    data: ImageData, device: torch.device, epochs: int, seed: int, say
) -> tuple[SmallClassifier, float]:
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        clf = SmallClassifier(data.channels, data.num_classes, data.mean, data.std).to(device)
        opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
        n = len(data.train_y)
        steps = epochs * max(1, n // 128)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        flip = data.name != "digits"
        for _ in range(epochs):
            clf.train()
            order = torch.randperm(n, generator=g)
            for s in range(0, n - 127 if n >= 128 else 1, 128):
                idx = order[s : s + 128]
                x = to_unit(data.train_x[idx]).to(device)
                y = data.train_y[idx].to(device)
                if flip:
                    m = (torch.rand(len(idx), generator=g) < 0.5).to(device).view(-1, 1, 1, 1)
                    x = torch.where(m, x.flip(-1), x)
                loss = F.cross_entropy(clf(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        clf.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(data.test_y), 500):
                x = to_unit(data.test_x[s : s + 500]).to(device)
                correct += int((clf(x).argmax(1).cpu() == data.test_y[s : s + 500]).sum())
        acc = 100.0 * correct / len(data.test_y)
    say(f"quality classifier trained on {data.name}: test accuracy {acc:.2f}%")
    return clf, acc


def _load_classifier(path: str, data: ImageData) -> tuple[SmallClassifier, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
        raise ValueError("not a quality-classifier file")
    clf = SmallClassifier(data.channels, data.num_classes, data.mean, data.std)
    clf.load_state_dict(blob["state_dict"])
    meta = dict(blob["meta"])
    if not isinstance(meta.get("test_acc"), float):
        raise ValueError("its metadata has no test accuracy")
    return clf, meta


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "weights_only" in text or len(text) > 120:  # never pass on torch's unsafe advice
        text = ""
    return f"{type(exc).__name__}{': ' + text if text else ''}"


def get_classifier(
    data: ImageData,
    info: DistInfo,
    cache_dir: str | None = None,
    epochs: int = 10,
    seed: int = 0,
    say=print,
) -> tuple[SmallClassifier, dict]:
    """The dataset's quality classifier: loaded from the cache, or trained once and cached.

    Rank 0 trains and writes the file (atomically); other ranks wait and load it. A cache
    file that cannot be read (truncated, corrupt, or of another shape) is reported in one line
    and rebuilt. Returns the classifier (eval mode, on ``info.device``) and its metadata (test
    accuracy, cache file).

    Raises:
        TrainingError: the rebuilt file cannot be read either (e.g. a full disk).
    """
    cache_dir = cache_dir or default_cache_dir()
    path = _cache_file(data, cache_dir, epochs, seed)
    if info.is_main:
        rebuild = not os.path.isfile(path)
        if not rebuild:
            try:
                _load_classifier(path, data)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
                say(f"quality classifier cache {path} is unreadable ({_why(exc)}); rebuilding it")
                rebuild = True
        if rebuild:
            say(f"training the quality classifier once ({epochs} epochs); cache: {path}")
            clf, acc = _train_classifier(data, info.device, epochs, seed, say)
            meta = {"test_acc": acc, "epochs": epochs, "seed": seed, "dataset": data.name}
            atomic_save({"state_dict": clf.state_dict(), "meta": meta}, path)
    barrier(info)
    try:
        clf, meta = _load_classifier(path, data)
    except Exception as exc:  # noqa: BLE001
        raise TrainingError(
            f"cannot read the quality classifier cache {path} ({_why(exc)}); delete it, check "
            f"the disk, or choose another --classifier-cache"
        ) from None
    clf.to(info.device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    meta["cache_file"] = path
    return clf, meta


class QualityMeter:
    """Classifier FD and IS (and optionally Inception FID) for several sets of samples.

    Real statistics are accumulated once (``add_real``); then for each sampler ``reset_fake``,
    ``add_fake`` batches and ``compute``. Images are (N, C, H, W) in [0, 1].
    """

    def __init__(
        self,
        clf: SmallClassifier,
        device: torch.device,
        is_splits: int = 10,
        inception_weights: str | None = None,
    ):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # IS warns that it buffers features; we know
            self.fd = FrechetInceptionDistance(
                feature=_Features(clf), normalize=True, reset_real_features=False
            ).to(device)
            self.is_ = InceptionScore(feature=_Logits(clf), splits=is_splits).to(device)
        self.inception = None
        if inception_weights is not None:
            self.inception = make_inception_fid(inception_weights).to(device)
        self.device = device

    @torch.no_grad()
    def add_real(self, x: Tensor) -> None:
        x = x.to(self.device).float()
        self.fd.update(x, real=True)
        if self.inception is not None:
            self.inception.update(_rgb(x), real=True)

    def reset_fake(self) -> None:
        self.fd.reset()  # keeps the real statistics (reset_real_features=False)
        self.is_.reset()
        if self.inception is not None:
            self.inception.reset()

    @torch.no_grad()
    def add_fake(self, x: Tensor) -> None:
        x = x.to(self.device).float().clamp(0, 1)
        self.fd.update(x, real=False)
        self.is_.update(x)
        if self.inception is not None:
            self.inception.update(_rgb(x), real=False)

    @torch.no_grad()
    def compute(self) -> dict:
        # InceptionScore shuffles with the global RNG: keep the training streams untouched.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            is_mean, is_std = self.is_.compute()
        out = {
            "classifier_fd": float(self.fd.compute()),
            "classifier_is": float(is_mean),
            "classifier_is_std": float(is_std),
        }
        if self.inception is not None:
            out["inception_fid"] = float(self.inception.compute())
        return out


def _rgb(x: Tensor) -> Tensor:
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def check_inception_weights(path: str | None) -> None:
    """Fail early (before training) when ``--inception-weights`` cannot be used.

    Raises:
        TrainingError: the file does not exist, or torch-fidelity is not installed.
    """
    if path is None:
        return
    if not os.path.isfile(path):
        raise TrainingError(
            f"--inception-weights: no file at {path!r}. Inception FID needs the FID Inception "
            f"weights as a local file (torch-fidelity's 'weights-inception-2015-12-05' .pth); "
            f"nothing is downloaded. Leave the option out to get the classifier metrics only."
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as exc:
        raise TrainingError(
            "--inception-weights: Inception FID uses torchmetrics' Inception network, which "
            "needs the 'torch-fidelity' package (pip install torch-fidelity)"
        ) from exc


def make_inception_fid(path: str):
    """torchmetrics' FrechetInceptionDistance (2048-d pool features) from local weights."""
    check_inception_weights(path)
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=path
    )
