"""Clear errors from the trainers' command line: one line that says what was wrong and what to
do, never a traceback, never torch's advice to unpickle a file of unknown origin."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from timeaware.train.cli import main

NODE_ARGS = [
    "--channels", "4", "--groups", "2", "--image-size", "8", "--batch-size", "256",
    "--backend", "reference", "--threads", "1", "--no-progress",
]  # fmt: skip
# Tiny runs, so that a parser that lets a bad value through fails the test in seconds.
TINY = {
    "node": [*NODE_ARGS, "--epochs", "1"],
    "ddpm": [
        "--ch", "8", "--ch-mult", "1,2", "--num-res-blocks", "1", "--attn-resolutions", "4",
        "--groups", "4", "--image-size", "8", "--timesteps", "10", "--batch-size", "32",
        "--steps", "2", "--eval-samples", "0", "--backend", "reference", "--threads", "1",
        "--no-progress",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch NODE run (its folder)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "node", *NODE_ARGS, "--epochs", "1", "--out", str(out)]) == 0
    return out


def _resume_error(path, capsys) -> str:
    capsys.readouterr()
    rc = main(["train", "node", "--resume", str(path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert "weights_only" not in err and "Errno" not in err
    return err


def test_truncated_checkpoint(finished_run, tmp_path, capsys):
    blob = (finished_run / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    err = _resume_error(tmp_path / "cut.pt", capsys)
    assert "is truncated" in err and "cut.pt" in err and "another copy" in err


def test_empty_checkpoint(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"")
    err = _resume_error(tmp_path, capsys)
    assert "is empty (0 bytes)" in err and "last.pt" in err


def test_damaged_checkpoint(finished_run, tmp_path, capsys):
    """Complete zip structure, garbage inside: damaged, not 'truncated'."""
    with zipfile.ZipFile(finished_run / "last.pt") as z:
        names = z.namelist()
        with zipfile.ZipFile(tmp_path / "bad.pt", "w") as out:
            for n in names:
                data = z.read(n)
                out.writestr(n, b"\x00" * len(data) if n.endswith("data.pkl") else data)
    err = _resume_error(tmp_path / "bad.pt", capsys)
    assert "is damaged" in err


class Foreign:
    """A class torch's restricted unpickler refuses."""


def test_foreign_torch_file_is_not_unpickled(tmp_path, capsys):
    torch.save({"format": 1, "obj": Foreign()}, tmp_path / "foreign.pt")
    err = _resume_error(tmp_path / "foreign.pt", capsys)
    assert "is not a timeaware checkpoint" in err and "was not loaded" in err
    torch.save({"x": np.zeros(3)}, tmp_path / "numpy.pt")
    assert "is not a timeaware checkpoint" in _resume_error(tmp_path / "numpy.pt", capsys)
    with open(tmp_path / "plain.pkl", "wb") as fh:
        pickle.dump({"format": 1}, fh)
    assert "is not a timeaware checkpoint" in _resume_error(tmp_path / "plain.pkl", capsys)
    torch.save([1, 2], tmp_path / "list.pt")
    assert "not a timeaware trainer checkpoint" in _resume_error(tmp_path / "list.pt", capsys)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--eps", "a"], "unrecognized arguments: --eps a; did you mean --epochs?"),
        (["--lr", "a"], "argument --lr: got 'a', expected a number > 0"),
        (["--lr", "nan"], "argument --lr: got 'nan', expected a number > 0"),
        (["--rtol", "1e-3x"], "argument --rtol: got '1e-3x', expected a number > 0"),
        (["--epochs", "1.5"], "argument --epochs: got '1.5', expected an integer >= 1"),
        (["--groups", "x"], "argument --groups: got 'x', expected an integer >= 1 or 'auto'"),
    ],
)
def test_malformed_numbers(args, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "node", *TINY["node"], *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.strip().splitlines() == [
        f"timeaware train node: error: {expected} (see 'timeaware train node --help')"
    ]


@pytest.mark.parametrize(
    "trainer, args, expected",
    [
        ("node", ["--max-num-steps", "-1"], "argument --max-num-steps: got '-1', expected an "
         "integer >= 0"),
        ("node", ["--dropout", "1"], "argument --dropout: got '1', expected a number in [0, 1)"),
        ("node", ["--plateau-factor", "1.5"], "expected a number in (0, 1)"),
        ("node", ["--epochs", "0"], "argument --epochs: got '0', expected an integer >= 1"),
        ("ddpm", ["--ema-decay", "1"], "argument --ema-decay: got '1', expected a number in "
         "[0, 1)"),
        ("ddpm", ["--grad-clip", "0"], "argument --grad-clip: got '0', expected a number > 0"),
        ("ddpm", ["--timesteps", "-5"], "argument --timesteps: got '-5', expected an integer"),
        ("ddpm", ["--beta-1", "2"], "argument --beta-1: got '2', expected a number in (0, 1)"),
    ],
)  # fmt: skip
def test_out_of_range_values_are_rejected_by_the_parser(trainer, args, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", trainer, *TINY[trainer], *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_out_of_range_values_in_the_python_api(tmp_path):
    from timeaware.train import NodeConfig, TrainingError, train_node

    tiny = dict(channels=4, groups=2, image_size=8, batch_size=256, epochs=1, threads=1)
    tiny.update(backend="reference", progress=False, out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="--max-num-steps: got -1, expected an integer >= 0"):
        train_node(NodeConfig(**{**tiny, "max_num_steps": -1}))
    with pytest.raises(ValueError, match="--lr: got nan"):
        train_node(NodeConfig(**{**tiny, "lr": float("nan")}))
    with pytest.raises(TypeError, match="--epochs: got '1' of type str"):
        train_node(NodeConfig(**{**tiny, "epochs": "1"}))
    with pytest.raises(TrainingError):  # and a TrainingError, which the CLI reports
        train_node(NodeConfig(**{**tiny, "epochs": 1.5}))
    assert not (tmp_path / "a").exists()


def _cifar_folder(root, bad_file: str, payload) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(folder / f, "wb") as fh:
            pickle.dump(payload if f == bad_file else entry, fh)


@pytest.mark.parametrize(
    "payload, reason",
    [
        ([1, 2, 3], "it holds a list, not a dict"),  # today a raw TypeError
        ({"labels": [0]}, "no 'data'"),
        (
            {"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]},
            "expected uint8 (N, 3072)",
        ),
        ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]}, "labels have shape (2,)"),
    ],
)
def test_malformed_cifar_folder(tmp_path, capsys, payload, reason):
    _cifar_folder(tmp_path / "data", "data_batch_3", payload)
    out = tmp_path / "run"
    rc = main(["train", "node", *NODE_ARGS, "--dataset", "cifar10", "--data-root",
               str(tmp_path / "data"), "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "data_batch_3 is not a file of the official CIFAR Python archive" in err
    assert reason in err and "cifar-10-python.tar.gz" in err
    assert not out.exists()


def test_stale_temporary_checkpoints_are_removed_at_the_next_start(finished_run, capsys):
    stale = finished_run / ".last.pt.tmp-999999"  # what a run killed while writing leaves
    stale.write_bytes(b"half a checkpoint")
    (finished_run / "summary.json.tmp").write_text("{")
    capsys.readouterr()
    assert main(["train", "node", "--resume", str(finished_run), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert not stale.exists() and not (finished_run / "summary.json.tmp").exists()
    assert "removed temporary files of an interrupted run: .last.pt.tmp-999999" in out


def test_helpers_check_their_arguments(tmp_path):
    from timeaware.train.common import Num, format_duration, load_checkpoint

    with pytest.raises(TypeError, match="kind: got <class 'str'>, expected int or float"):
        Num(str)
    with pytest.raises(ValueError, match="lo, hi: got 3 > 1"):
        Num(int, 3, 1)
    with pytest.raises(ValueError, match="seconds: got -1"):
        format_duration(-1)
    with pytest.raises(ValueError, match="kind: got 'gan'"):
        load_checkpoint(tmp_path, "gan")
    assert [format_duration(v) for v in (42, 720, 12240, 46_742_400)] == [
        "42 s",
        "12 min",
        "3.4 h",
        "12,984 h",
    ]
