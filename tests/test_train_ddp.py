"""Resume under torchrun: an epoch (NODE) or a logging window (DDPM) interrupted in the middle
and resumed gives the metrics rows of an uninterrupted run, every rank's share included.

Two real processes (gloo) started by torchrun; the script runs, for each trainer, an
uninterrupted run, a run that rank 0 interrupts with SIGINT in the middle of an epoch/window,
and its resume, all in one process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, signal, sys

from timeaware.train import DDPMConfig, NodeConfig, TrainingInterrupted, load_checkpoint
from timeaware.train import ddpm, node

# keep one process group for all the runs of this script
node.cleanup_distributed = ddpm.cleanup_distributed = lambda info: None
root = sys.argv[1]
rank = int(os.environ["RANK"])
common = dict(backend="reference", threads=1, progress=False)
runs = {
    # 1437 images, 2 x 128 per step: 5 steps per epoch; stopped after step 3 of epoch 2
    "node": (node.train_node, node.node_config_from_dict, NodeConfig, 8,
             dict(channels=4, groups=2, image_size=8, batch_size=256, epochs=2, **common)),
    # rows every 4 steps; stopped after step 6, in the middle of the window 5..8
    "ddpm": (ddpm.train_ddpm, ddpm.ddpm_config_from_dict, DDPMConfig, 6,
             dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), groups=4,
                  image_size=8, timesteps=10, batch_size=32, steps=10, warmup=2, log_every=4,
                  sample_every=0, ckpt_every=0, eval_samples=0, **common)),
}
for kind, (train, from_dict, Config, stop_at, kw) in runs.items():
    train(Config(**kw, out=f"{root}/{kind}-full"))

    def stop(step, stop_at=stop_at):
        if rank == 0 and step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    try:
        train(Config(**kw, out=f"{root}/{kind}-part"), on_step=stop)
        raise SystemExit(f"{kind}: the run was not interrupted")
    except TrainingInterrupted:
        pass
    ck = load_checkpoint(f"{root}/{kind}-part", kind)
    assert ck["progress"]["step"] == stop_at, ck["progress"]
    train(from_dict(ck["config"]), resume=ck)
print("script done", flush=True)
"""

NODE_KEYS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
NODE_KEYS += ("test_nfe_f", "nfe_f", "nfe_b")
DDPM_KEYS = ("step", "epoch", "lr", "loss", "grad_norm")


def _rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_ddp_mid_epoch_resume_keeps_every_ranks_metrics(tmp_path):
    script = tmp_path / "ddp_resume.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "script done" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    for kind, keys, n in (("node", NODE_KEYS, 2), ("ddpm", DDPM_KEYS, 3)):
        full = _rows(tmp_path / f"{kind}-full" / "metrics.jsonl")
        part = _rows(tmp_path / f"{kind}-part" / "metrics.jsonl")
        assert len(full) == len(part) == n
        for a, b in zip(full, part):
            assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, kind


def test_running_totals_when_the_number_of_processes_changes():
    """Resumed with another number of processes, rank 0 takes the old ranks' totals (the max for
    seconds) and the others start from zero, so the sums across ranks are kept."""
    import torch

    from timeaware.train.common import DistInfo, restore_rank_totals

    zero = {"loss": 0.0, "count": 0.0, "seconds": 0.0}
    progress = {
        "acc": {"loss": 1.0, "count": 2.0, "seconds": 3.0},
        "acc_ranks": [
            {"loss": 1.0, "count": 2.0, "seconds": 3.0},
            {"loss": 10.0, "count": 20.0, "seconds": 5.0},
        ],
    }

    def info(rank, world):
        return DistInfo(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))

    assert restore_rank_totals(progress, info(1, 2), zero) == progress["acc_ranks"][1]
    assert restore_rank_totals(progress, info(0, 1), zero) == {
        "loss": 11.0,
        "count": 22.0,
        "seconds": 5.0,
    }
    three = [restore_rank_totals(progress, info(r, 3), zero) for r in range(3)]
    assert three[0] == {"loss": 11.0, "count": 22.0, "seconds": 5.0}
    assert three[1] == three[2] == zero
    # a checkpoint without per-rank totals (older format): rank 0's only, never duplicated
    old = {"acc": progress["acc"]}
    assert restore_rank_totals(old, info(0, 2), zero) == progress["acc"]
    assert restore_rank_totals(old, info(1, 2), zero) == zero
