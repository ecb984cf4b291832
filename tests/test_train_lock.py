"""The run folder: one run at a time (a lock the OS releases when the process dies), created
only when the run starts, and a resume that never starts from a checkpoint replaced under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from timeaware.train import NodeConfig, TrainingError, load_checkpoint, train_node
from timeaware.train.cli import main
from timeaware.train.common import atomic_save

NODE_ARGS = [
    "--channels", "4", "--groups", "2", "--image-size", "8", "--batch-size", "256",
    "--backend", "reference", "--threads", "1", "--no-progress",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CLI = [sys.executable, "-m", "timeaware", "train", "node"]


def _wait_for_checkpoint(path, proc, timeout=180) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended early: " + proc.stderr.read()[-2000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_one_run_per_folder_and_a_killed_run_resumes_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [*CLI, *NODE_ARGS, "--epochs", "50", "--ckpt-every-steps", "1", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        _wait_for_checkpoint(out / "last.pt", first)
        # a new run into the same folder, and a resume of it, while the first one trains
        others = [
            subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
            for args in ([*NODE_ARGS, "--epochs", "1", "--out", str(out)], ["--resume", str(out)])
        ]  # fmt: skip
        for p in others:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 1, err
            assert f"run folder {out} is in use by another timeaware run (pid {first.pid}" in err
            assert len(err.strip().splitlines()) == 1, err
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    # the killed run's folder can be resumed at once (the OS released the lock)
    ck = torch.load(out / "last.pt", weights_only=True)
    epochs = ck["progress"]["epoch"] + 1
    r = subprocess.run(
        [*CLI, "--resume", str(out), "--epochs", str(epochs)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(out / "last.pt", weights_only=True)["progress"]["finished"]


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    from timeaware.train.common import RunFolderBusy, RunLock

    a = RunLock(str(tmp_path / "run"))
    a.acquire()
    try:
        with pytest.raises(
            RunFolderBusy, match=rf"in use by another timeaware run \(pid {os.getpid()}"
        ):
            RunLock(str(tmp_path / "run")).acquire()
        cfg = NodeConfig(channels=4, groups=2, image_size=8, epochs=1, batch_size=256, threads=1)
        cfg.out, cfg.progress = str(tmp_path / "run"), False
        with pytest.raises(RunFolderBusy):
            train_node(cfg)
    finally:
        a.release()
    b = RunLock(str(tmp_path / "run"))
    b.acquire()  # free again
    b.release()


def test_a_resume_refuses_a_checkpoint_replaced_after_it_was_read(tmp_path):
    cfg = dict(channels=4, groups=2, image_size=8, epochs=1, batch_size=256, threads=1)
    train_node(NodeConfig(**cfg, progress=False, out=str(tmp_path)))
    ck = load_checkpoint(tmp_path, "node")
    newer = torch.load(tmp_path / "last.pt", weights_only=True)
    atomic_save(newer, tmp_path / "last.pt")  # what another process writing it would do
    with pytest.raises(TrainingError, match="was replaced after it was read"):
        train_node(NodeConfig(**{**cfg, "epochs": 2}, progress=False, out=str(tmp_path)), ck)


def test_an_early_error_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "node", *NODE_ARGS, "--dataset", "cifar10", "--data-root",
               str(tmp_path / "nowhere"), "--out", str(out)])  # fmt: skip
    assert rc == 1 and "dataset not found" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["train", "ddpm", "--dataset", "cifar100", "--data-root", str(tmp_path / "nowhere"),
               "--threads", "1", "--out", str(out)])  # fmt: skip
    assert rc == 1 and "dataset not found" in capsys.readouterr().err
    assert not out.exists()
