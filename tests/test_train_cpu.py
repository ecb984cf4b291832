"""A trainer started on a CPU says what it is about to do: the model and checkpoint size, a
pointer to a run that fits a CPU, and the time the run would take, measured on its first steps.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import DDPM_TINY as _DDPM
from helpers import tiny

from timeaware.data import load_digits
from timeaware.train import DDPMConfig, NodeConfig, train_ddpm, train_node
from timeaware.train import ddpm as ddpm_mod
from timeaware.train.cli import resolve_config
from timeaware.train.ddpm import build_unet

DDPM_TINY = tiny(_DDPM, steps=None, log_every=None, sample_grid=None, ckpt_every=0)


class _Stop(Exception):
    pass


def test_ddpm_defaults_on_cpu_warn_before_the_first_step(tmp_path, monkeypatch, capsys):
    """The paper's recipe on a CPU (34.8M parameters at the digits' 16x16): the warning comes
    before any step is taken, with the checkpoint size and the small preset to use instead."""

    def no_step(self, x0):
        raise _Stop

    monkeypatch.setattr(ddpm_mod._DDPMRun, "train_step", no_step)
    with pytest.raises(_Stop):
        train_ddpm(DDPMConfig(device="cpu", threads=1, progress=False, out=str(tmp_path)))
    out = capsys.readouterr().out
    pattern = (
        r"a (\d+\.\d+)M-parameter U-Net, 1,300,000 steps of 128 images; every checkpoint "
        r"\(last\.pt, also written on Ctrl-C\) is about ([\d,]+) MB"
    )
    m = re.search(pattern, out)
    assert m, out
    nparam = sum(p.numel() for p in build_unet(DDPMConfig(), load_digits(16)).parameters())
    assert float(m.group(1)) == round(nparam / 1e6, 2) and nparam > 30e6
    assert int(m.group(2).replace(",", "")) == round(16 * nparam / 1e6)  # 4 fp32 copies
    assert "GPU job" in out and "--preset cpu-small" in out


def test_ddpm_reports_its_speed_after_the_first_steps(tmp_path, capsys):
    train_ddpm(DDPMConfig(**DDPM_TINY, steps=5, out=str(tmp_path)))
    out = capsys.readouterr().out
    lines = out.splitlines()
    note = next(i for i, x in enumerate(lines) if x.startswith("note: training on the CPU"))
    speed = next(i for i, x in enumerate(lines) if x.startswith("speed: "))
    assert note < speed
    assert re.match(
        r"speed: [\d.e+-]+ s/step \(steps 2-3, cpu, 1 thread\(s\)\); the remaining 2 steps "
        r"would take about \d+ s$",
        lines[speed],
    ), lines[speed]
    assert "cpu-small" not in out  # a small run gets no pointer to a small run


def test_node_reports_its_speed_after_the_first_steps(tmp_path, capsys):
    cfg = NodeConfig(channels=4, groups=2, image_size=8, batch_size=256, epochs=2, threads=1)
    cfg.backend, cfg.progress, cfg.out = "reference", False, str(tmp_path)
    train_node(cfg)
    out = capsys.readouterr().out
    assert re.search(
        r"speed: [\d.e+-]+ s/step \(steps 2-3, cpu, 1 thread\(s\)\); the remaining 7 training "
        r"steps \(evaluation not included\) would take about",
        out,
    ), out


def test_speed_report_points_to_a_cpu_run_when_the_rest_takes_over_an_hour():
    from timeaware.train.common import SpeedReport

    said = []
    r = SpeedReport(said.append, torch.device("cpu"), hint="Try the small one.", after=3)
    for step, sec in ((1, 60.0), (2, 36.0), (3, 36.0)):
        r.step(step, sec, remaining=1_300_000 - step)
    r.step(4, 36.0, remaining=1)  # printed once only (36 s x 1,299,997 = 12,999.97 h)
    assert len(said) == 1
    assert said[0].startswith("speed: 36 s/step (steps 2-3, cpu, ")
    assert "the remaining 1,299,997 steps would take about 13,000 h. Try the small one." in said[0]
    said.clear()
    short = SpeedReport(said.append, torch.device("cpu"), hint="Try the small one.")
    for step in (1, 2, 3):
        short.step(step, 0.5, remaining=100)
    assert said == [
        f"speed: 0.5 s/step (steps 2-3, cpu, {torch.get_num_threads()} thread(s)); the "
        f"remaining 100 steps would take about 50 s"
    ]


def test_the_cpu_small_preset_is_small():
    cfg, _ = resolve_config("ddpm", {"preset": "cpu-small"})
    data = load_digits(image_size=cfg.image_size, channels=cfg.image_channels)
    nparam = sum(p.numel() for p in build_unet(cfg, data).parameters())
    assert nparam < 1e6 and cfg.steps <= 2000 and cfg.threads == 1
    assert cfg.eval_samples * cfg.timesteps <= 200_000  # ancestral sampling stays short
    # every sampler is evaluated (pf-ode too: its solve ends exactly at eps since the step_t fix)
    assert set(cfg.eval_samplers) == {"ancestral", "ddim", "pf-ode"}
