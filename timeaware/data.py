"""Datasets for the trainers: an embedded default (scikit-learn digits) and local CIFAR-10/100.

Everything lives in memory as tensors (digits: 1797 images; CIFAR: 60k uint8 images, 180 MB), so
the trainers need no DataLoader workers and the data order and the augmentation are exactly
reproducible from a seed, which is what checkpoint/resume relies on.

- ``digits`` (default, no download): scikit-learn's ``load_digits`` (1797 real 8x8 greyscale
  images, 10 classes, shipped inside the scikit-learn wheel), scaled to [0, 1], resized with
  bilinear ``F.interpolate`` to ``image_size`` (default 32, so a NODE's ODE state is 8x8 as in
  the paper) and repeated to 3 channels (``channels=3``, default, so the CIFAR architectures run
  unchanged) or kept as 1 channel (``channels=1``). Fixed stratified split: 360 test images
  (20 %), 1437 train images, chosen by ``split_seed`` (default 0).
- ``cifar10`` / ``cifar100``: the Python pickles from the official archives, read from a local
  folder (``cifar-10-batches-py`` / ``cifar-100-python``); nothing is downloaded.

The paper's augmentation (random crop with 4-pixel zero padding, colour jitter with hue and
saturation 0.05, horizontal flip with p = 0.5) is :class:`Augment`: plain batched torch ops on the
batch's device, driven by an explicit ``torch.Generator``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

DATASETS = ("digits", "cifar10", "cifar100")

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
    },
}


@dataclass
class ImageData:
    """A dataset held in memory.

    Attributes:
        name: ``digits``, ``cifar10`` or ``cifar100``.
        train_x, test_x: images, (N, C, H, W), float32 in [0, 1] (digits) or uint8 (CIFAR);
            :func:`to_unit` turns either into float in [0, 1].
        train_y, test_y: int64 labels, (N,).
        num_classes: number of classes.
        mean, std: per-channel statistics of ``train_x`` in [0, 1] units, (C,), for the
            mean-std normalisation.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: Tensor
    std: Tensor

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def to_unit(x: Tensor) -> Tensor:
    """Return images as float32 in [0, 1] (uint8 is divided by 255)."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    x = to_unit(x).double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return mean.float(), std.float()


def load_digits(
    image_size: int = 32, channels: int = 3, split_seed: int = 0, test_fraction: float = 0.2
) -> ImageData:
    """scikit-learn's digits (1797 8x8 images), resized and split; see the module docstring.

    Raises:
        ValueError: ``image_size`` < 1, ``channels`` not 1 or 3, ``test_fraction`` not in (0, 1).
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    if image_size < 1:
        raise ValueError(f"image_size: got {image_size}, expected a positive integer")
    if channels not in (1, 3):
        raise ValueError(f"channels: got {channels}, expected 1 or 3")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: got {test_fraction}, expected a value in (0, 1)")
    bunch = _sk_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()
    idx = torch.arange(len(labels)).numpy()
    tr, te = train_test_split(
        idx, test_size=test_fraction, random_state=split_seed, stratify=labels.numpy()
    )
    tr, te = torch.from_numpy(tr).sort().values, torch.from_numpy(te).sort().values
    images = _resize(images, image_size)
    if channels == 3:
        images = images.repeat(1, 3, 1, 1)
    train_x, test_x = images[tr].contiguous(), images[te].contiguous()
    mean, std = _stats(train_x)
    return ImageData("digits", train_x, labels[tr], test_x, labels[te], 10, mean, std)


def _find_cifar_folder(name: str, root: str | os.PathLike | None) -> str:
    spec = _CIFAR[name]
    root = os.fspath(root) if root is not None else os.environ.get("TIMEAWARE_DATA", "data")
    candidates = [os.path.join(root, spec["folder"]), root]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, f)) for f in spec["train"] + spec["test"]):
            return folder
    files = ", ".join(spec["train"] + spec["test"])
    raise FileNotFoundError(
        f"{name}: dataset not found. Expected the folder '{spec['folder']}' (with {files}) "
        f"inside '{os.path.abspath(root)}' (looked in "
        f"{' and '.join(repr(os.path.abspath(c)) for c in candidates)}). Nothing is downloaded: "
        f"get {spec['archive']}, extract it there (it unpacks to {spec['folder']}/), or pass "
        f"--data-root DIR (or set TIMEAWARE_DATA=DIR) where DIR contains {spec['folder']}/. "
        f"The embedded default '--dataset digits' needs no files."
    )


def _read_cifar_file(path: str, label_key: str) -> tuple[Tensor, Tensor]:
    with open(path, "rb") as fh:
        # The official CIFAR archives are Python pickles of numpy arrays; a local file the
        # user put there is trusted like any other local dataset.
        entry = pickle.load(fh, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"it holds a {type(entry).__name__}, not a dict")
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        raise ValueError(f"it has no {' or '.join(repr(k) for k in missing)} entry")
    data = torch.as_tensor(entry["data"])
    labels = torch.as_tensor(entry[label_key])
    if data.dim() != 2 or data.shape[1] != 3072 or data.dtype != torch.uint8:
        raise ValueError(
            f"its images are {data.dtype} of shape {tuple(data.shape)}, expected uint8 "
            f"(N, 3072) (3x32x32 each)"
        )
    if labels.shape != (data.shape[0],) or labels.is_floating_point():
        raise ValueError(
            f"its labels have shape {tuple(labels.shape)}, expected {data.shape[0]} integers"
        )
    return data.view(-1, 3, 32, 32), labels.to(torch.int64)


def _read_cifar_split(
    folder: str, files: list[str], label_key: str, name: str = "cifar10"
) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for f in files:
        path = os.path.join(folder, f)
        try:
            x, y = _read_cifar_file(path, label_key)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the advice is the same
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"{name}: {path} is not a file of the official CIFAR Python archive "
                f"({type(exc).__name__}: {reason}); replace the folder with the extracted "
                f"{_CIFAR[name]['archive']}"
            ) from None
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def load_cifar(
    name: str = "cifar10", root: str | os.PathLike | None = None, image_size: int = 32
) -> ImageData:
    """CIFAR-10 or CIFAR-100 from local pickles (no download).

    Args:
        name: ``cifar10`` or ``cifar100``.
        root: a folder that contains ``cifar-10-batches-py/`` / ``cifar-100-python/``, or that
            folder itself; default ``$TIMEAWARE_DATA`` or ``./data``.
        image_size: images are resized from 32x32 when different.

    Raises:
        FileNotFoundError: the folder or one of its files is missing; the message says what to
            put where.
        ValueError: a file is not one of the official archive's (not a pickle, no images or
            labels, images not 3x32x32 uint8); the message names the file.
    """
    if name not in _CIFAR:
        raise ValueError(f"name: got {name!r}, expected one of {tuple(_CIFAR)}")
    spec = _CIFAR[name]
    folder = _find_cifar_folder(name, root)
    train_x, train_y = _read_cifar_split(folder, spec["train"], spec["label_key"], name)
    test_x, test_y = _read_cifar_split(folder, spec["test"], spec["label_key"], name)
    if image_size != 32:
        train_x = (_resize(to_unit(train_x), image_size) * 255).round_().to(torch.uint8)
        test_x = (_resize(to_unit(test_x), image_size) * 255).round_().to(torch.uint8)
    mean, std = _stats(train_x)
    return ImageData(name, train_x, train_y, test_x, test_y, spec["classes"], mean, std)


def load_dataset(
    name: str = "digits",
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    channels: int = 3,
    split_seed: int = 0,
) -> ImageData:
    """Load ``digits``, ``cifar10`` or ``cifar100`` (see :func:`load_digits`, :func:`load_cifar`).

    Raises:
        ValueError: unknown ``name``, or ``channels`` != 3 for CIFAR.
        FileNotFoundError: CIFAR folder missing.
    """
    if name == "digits":
        return load_digits(image_size=image_size, channels=channels, split_seed=split_seed)
    if name in _CIFAR:
        if channels != 3:
            raise ValueError(f"channels: got {channels}, but {name} images have 3 channels")
        return load_cifar(name, root=root, image_size=image_size)
    raise ValueError(f"dataset: got {name!r}, expected one of {DATASETS}")


# ----------------------------------------------------------------------------- augmentation


def _rgb_to_hsv(img: Tensor) -> Tensor:
    r, g, b = img.unbind(dim=-3)
    maxc = img.amax(dim=-3)
    minc = img.amin(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: Tensor) -> Tensor:
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sector = i.unsqueeze(-3) == torch.arange(6, device=i.device).view(-1, 1, 1)  # (N, 6, H, W)
    r = torch.stack((v, q, p, p, t, v), dim=-3)
    g = torch.stack((t, v, v, q, p, p), dim=-3)
    b = torch.stack((p, p, t, v, v, q), dim=-3)
    pick = sector.to(img.dtype)
    return torch.stack([(pick * c).sum(dim=-3) for c in (r, g, b)], dim=-3)


class Augment:
    """The paper's CIFAR augmentation on a batch, reproducible from a generator.

    Applied in this order, each with per-image random parameters: random crop with
    ``pad``-pixel zero padding (torchvision ``RandomCrop(32, padding=4)``), saturation factor
    uniform in [1 - s, 1 + s] and hue shift uniform in [-h, h] of the colour circle
    (torchvision ``ColorJitter(saturation=s, hue=h)``, fixed order saturation then hue;
    skipped for 1-channel images), horizontal flip with probability 0.5.

    Args:
        crop_pad: padding of the random crop; 0 disables it.
        saturation, hue: jitter strengths (paper: 0.05 each); 0 disables.
        hflip: random horizontal flip.

    Call with ``x`` (N, C, H, W) float in [0, 1] on any device and a CPU ``torch.Generator``;
    returns a new tensor in [0, 1]. The generator is advanced by a fixed amount per call.
    """

    def __init__(
        self, crop_pad: int = 4, saturation: float = 0.05, hue: float = 0.05, hflip: bool = True
    ):
        self.crop_pad = int(crop_pad)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.hflip = bool(hflip)

    def __repr__(self) -> str:
        return (
            f"Augment(crop_pad={self.crop_pad}, saturation={self.saturation}, hue={self.hue}, "
            f"hflip={self.hflip})"
        )

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        dev = x.device
        if self.crop_pad > 0:
            p = self.crop_pad
            off = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(dev)
            padded = F.pad(x, (p, p, p, p))
            rows = off[0][:, None] + torch.arange(h, device=dev)  # (N, H)
            cols = off[1][:, None] + torch.arange(w, device=dev)  # (N, W)
            nidx = torch.arange(n, device=dev)[:, None, None]
            x = padded.permute(0, 2, 3, 1)[nidx, rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2).contiguous()
        if c == 3 and (self.saturation > 0 or self.hue > 0):
            u = torch.rand(2, n, generator=generator).to(dev, x.dtype)
            if self.saturation > 0:
                f = (1.0 - self.saturation + 2.0 * self.saturation * u[0]).view(n, 1, 1, 1)
                gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
                x = (f * x + (1.0 - f) * gray).clamp(0.0, 1.0)
            if self.hue > 0:
                shift = (-self.hue + 2.0 * self.hue * u[1]).view(n, 1, 1)
                hsv = _rgb_to_hsv(x)
                hue = torch.remainder(hsv[:, 0] + shift, 1.0)
                x = _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))
        if self.hflip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(dev).view(n, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        return x


AUGMENTATIONS = ("none", "flip", "paper")


def make_augment(name: str) -> Augment | None:
    """``none`` -> None; ``flip`` -> horizontal flip only (the paper's DDPM recipe);
    ``paper`` -> crop + jitter + flip (the paper's NODE recipe)."""
    if name == "none":
        return None
    if name == "flip":
        return Augment(crop_pad=0, saturation=0.0, hue=0.0, hflip=True)
    if name == "paper":
        return Augment()
    raise ValueError(f"augment: got {name!r}, expected one of {AUGMENTATIONS}")


# ----------------------------------------------------------------------------- batching


class BatchSampler:
    """Batches of indices over ``n`` examples for one rank, reproducible from (seed, epoch).

    Wraps :class:`torch.utils.data.DistributedSampler` (``num_replicas=1`` without DDP), so the
    order of epoch ``e`` depends only on ``seed`` and ``e`` and a resumed run can skip to any
    batch of any epoch. ``batch_size`` is per rank.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
        self.sampler = DistributedSampler(
            range(n),
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.batch_size = batch_size
        self.drop_last = drop_last
        per_rank = self.sampler.num_samples
        if drop_last:
            self.num_batches = per_rank // batch_size
        else:
            self.num_batches = -(-per_rank // batch_size)
        if self.num_batches == 0:
            raise ValueError(
                f"batch_size: got {batch_size} per rank, but a rank sees only {per_rank} "
                f"examples per epoch; lower the batch size"
            )

    def __len__(self) -> int:
        return self.num_batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tensor]:
        """Yield index tensors of epoch ``epoch``, starting at batch ``start``."""
        self.sampler.set_epoch(epoch)
        order = torch.as_tensor(list(self.sampler), dtype=torch.int64)
        for b in range(start, self.num_batches):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """Indices of an evaluation shard: every example exactly once across ranks, no padding."""
    return torch.arange(rank, n, world_size)
