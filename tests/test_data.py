"""timeaware.data: the embedded digits set, local CIFAR pickles, augmentation, batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from timeaware.data import (
    Augment,
    BatchSampler,
    load_cifar,
    load_dataset,
    load_digits,
    make_augment,
    shard_indices,
    to_unit,
)


@pytest.fixture(scope="module")
def digits16():
    return load_digits(image_size=16)


def test_digits_shapes_split_and_range(digits16):
    d = digits16
    assert d.train_x.shape == (1437, 3, 16, 16) and d.test_x.shape == (360, 3, 16, 16)
    assert d.train_x.dtype == torch.float32
    assert 0.0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1.0
    assert d.num_classes == 10 and set(d.train_y.tolist()) == set(range(10))
    # stratified: every class has 34-38 test images
    counts = torch.bincount(d.test_y, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38
    # channels are repeats of the grey image
    assert torch.equal(d.train_x[:, 0], d.train_x[:, 2])
    assert d.mean.shape == (3,) and bool((d.std > 0).all())


def test_digits_split_is_fixed_and_seeded(digits16):
    again = load_digits(image_size=16)
    assert torch.equal(again.train_x, digits16.train_x)
    assert torch.equal(again.test_y, digits16.test_y)
    other = load_digits(image_size=16, split_seed=1)
    assert not torch.equal(other.test_y, digits16.test_y)


def test_digits_one_channel_and_native_size():
    d = load_digits(image_size=8, channels=1)
    assert d.train_x.shape[1:] == (1, 8, 8)
    # at the native size the pixels are the sklearn values / 16
    from sklearn.datasets import load_digits as sk

    raw = torch.from_numpy(sk().images).float() / 16
    assert any(torch.equal(d.train_x[0, 0], raw[i]) for i in range(len(raw)))


@pytest.mark.parametrize("kw", [{"channels": 2}, {"image_size": 0}])
def test_digits_bad_arguments(kw):
    with pytest.raises(ValueError):
        load_digits(**kw)


def test_missing_cifar_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and str(tmp_path) in msg and "--data-root" in msg
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def _fake_cifar(folder, files, label_key, n, classes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in files:
        entry = {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, size=n).tolist(),
        }
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)


def test_cifar10_and_cifar100_from_local_pickles(tmp_path):
    files10 = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    _fake_cifar(tmp_path / "cifar-10-batches-py", files10, "labels", 4, 10)
    d = load_cifar("cifar10", root=tmp_path)
    assert d.train_x.shape == (20, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_x.shape == (4, 3, 32, 32) and d.num_classes == 10
    # the folder itself is accepted too, and resizing works
    d16 = load_cifar("cifar10", root=tmp_path / "cifar-10-batches-py", image_size=16)
    assert d16.train_x.shape == (20, 3, 16, 16)
    _fake_cifar(tmp_path / "cifar-100-python", ["train", "test"], "fine_labels", 6, 100)
    d100 = load_dataset("cifar100", root=tmp_path)
    assert d100.num_classes == 100 and d100.train_x.shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="3 channels"):
        load_dataset("cifar10", root=tmp_path, channels=1)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="digits"):
        load_dataset("mnist")


def test_augment_is_reproducible_and_in_range():
    x = torch.rand(8, 3, 16, 16)
    a = Augment()
    y1 = a(x, torch.Generator().manual_seed(3))
    y2 = a(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    assert not torch.equal(y1, a(x, torch.Generator().manual_seed(4)))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    x = torch.rand(16, 3, 8, 8)
    y = Augment(crop_pad=4, saturation=0, hue=0, hflip=False)(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        found = any(
            torch.equal(y[i], padded[i, :, r : r + 8, c : c + 8])
            for r in range(9)
            for c in range(9)
        )
        assert found


def test_flip_only_and_jitter_identity():
    x = torch.rand(32, 3, 4, 4)
    y = make_augment("flip")(x, torch.Generator().manual_seed(0))
    for i in range(32):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    assert make_augment("none") is None
    # saturation factor 1 and hue shift 0 reproduce the image (rgb->hsv->rgb round trip)
    ident = Augment(crop_pad=0, saturation=1e-12, hue=1e-12, hflip=False)
    torch.testing.assert_close(ident(x, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)
    # grey images are unchanged by the colour jitter
    grey = torch.rand(4, 1, 4, 4)
    assert torch.equal(Augment(crop_pad=0, hflip=False)(grey, torch.Generator()), grey)


def test_batch_sampler_order_resume_and_ranks():
    s = BatchSampler(100, 16, seed=5)
    e0 = list(s.batches(0))
    assert len(e0) == len(s) == 6 and all(len(b) == 16 for b in e0)
    assert [b.tolist() for b in s.batches(0, start=2)] == [b.tolist() for b in e0[2:]]
    assert [b.tolist() for b in BatchSampler(100, 16, seed=5).batches(0)] == [
        b.tolist() for b in e0
    ]
    assert e0[0].tolist() != next(iter(s.batches(1))).tolist()
    r0 = torch.cat(list(BatchSampler(100, 10, seed=1, rank=0, world_size=2).batches(0)))
    r1 = torch.cat(list(BatchSampler(100, 10, seed=1, rank=1, world_size=2).batches(0)))
    assert len(set(r0.tolist()) & set(r1.tolist())) == 0 and len(r0) == len(r1) == 50
    with pytest.raises(ValueError, match="batch"):
        BatchSampler(10, 64)
    assert sorted(torch.cat([shard_indices(7, r, 3) for r in range(3)]).tolist()) == list(range(7))


def test_to_unit():
    assert torch.equal(to_unit(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1]))
