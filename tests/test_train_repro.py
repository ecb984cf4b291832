"""Issue 10 item 18: what the README's digits numbers depend on, tested.

The README says a run reproduces bit for bit on the same machine with the same thread count and
library versions, and that every run records those in ``summary.json``. Both are checked here
with the README's flags (``--threads 1 --deterministic``) on a tiny NODE run.
"""

from __future__ import annotations

import json
from importlib import metadata

import torch

from timeaware.train.cli import main

ARGS = [
    "train", "node", "--channels", "4", "--groups", "2", "--image-size", "8",
    "--batch-size", "256", "--epochs", "2", "--backend", "reference", "--threads", "1",
    "--deterministic", "--no-progress",
]  # fmt: skip
TIMING = ("epoch_seconds", "seconds", "time", "elapsed")


def _rows(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def test_the_readme_command_reproduces_and_records_its_environment(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            assert main([*ARGS, "--out", str(tmp_path / name)]) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    capsys.readouterr()
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert len(a) == 2 and a == b  # every metric of every epoch, to the last bit
    env = json.loads((tmp_path / "a" / "summary.json").read_text())["environment"]
    assert env["threads"] == 1 and env["deterministic"] is True
    assert env["versions"]["torch"] == metadata.version("torch")
    for key in ("cpu", "cpu_capability", "platform", "device"):
        assert env[key], key
    for pkg in ("python", "torch", "torchdiffeq", "numpy", "scikit-learn"):
        assert env["versions"][pkg], pkg
