"""The DDPM trainer's EMA against its formula, and the RNG capture/restore of checkpoints."""

from __future__ import annotations

import random

import torch
from helpers import DDPM_TINY as _DDPM
from helpers import tiny

from timeaware.train import DDPMConfig, load_checkpoint, train_ddpm
from timeaware.train import ddpm as ddpm_mod
from timeaware.train.common import atomic_save, capture_rng, restore_rng

DDPM_TINY = tiny(_DDPM, steps=None, warmup=1, lr=1e-3, log_every=0, sample_grid=None, ckpt_every=0)


def test_ema_follows_its_formula(tmp_path, monkeypatch):
    """ema_1 = w_1 (torch's AveragedModel copies the weights at its first update), then
    ema_k = d * ema_(k-1) + (1 - d) * w_k, with w_k the weights after step k; computed here in
    fp64 from the weights seen after every step."""
    models = []
    real = ddpm_mod.build_unet

    def build(cfg, data):
        models.append(real(cfg, data))
        return models[-1]

    monkeypatch.setattr(ddpm_mod, "build_unet", build)
    seen = []

    def remember(step):
        sd = models[-1].state_dict()
        seen.append({k: v.detach().double().clone() for k, v in sd.items()})

    decay = 0.7
    train_ddpm(
        DDPMConfig(**DDPM_TINY, steps=5, ema_decay=decay, out=str(tmp_path)), on_step=remember
    )
    ema = load_checkpoint(tmp_path, "ddpm")["ema"]
    assert int(ema["n_averaged"]) == 5 and len(seen) == 5
    expected = seen[0]
    for w in seen[1:]:
        expected = {k: decay * expected[k] + (1.0 - decay) * w[k] for k in w}
    moved = 0.0
    for k, v in expected.items():
        if not v.is_floating_point():
            continue
        torch.testing.assert_close(ema[f"module.{k}"].double(), v, rtol=1e-5, atol=1e-7)
        moved = max(moved, float((seen[-1][k] - seen[0][k]).abs().max()))
    assert moved > 1e-4  # the weights moved enough for a wrong formula to show


def _draw(gens: dict[str, torch.Generator]) -> list:
    out = [torch.rand(4), random.random()]
    out += [torch.rand(4, generator=g) for _, g in sorted(gens.items())]
    if torch.cuda.is_available():
        out.append(torch.rand(4, device="cuda").cpu())
    return out


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, b))


def test_restore_rng_restores_every_state_it_saves(tmp_path):
    gens = {"augment": torch.Generator().manual_seed(1), "noise": torch.Generator().manual_seed(2)}
    random.seed(123)
    torch.manual_seed(7)
    state = capture_rng(gens)
    # every stream the state holds is drawn from below (a new one must be added here too)
    assert set(state) == {"torch", "cuda", "python", "generators"}
    assert set(state["generators"]) == set(gens)
    first = _draw(gens)
    assert not _same(first, _draw(gens))  # the streams moved on
    restore_rng(state, gens)
    assert _same(_draw(gens), first)
    # and through a checkpoint file read with weights_only=True
    atomic_save({"rng": state}, tmp_path / "rng.pt")
    _draw(gens)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], gens)
    assert _same(_draw(gens), first)
