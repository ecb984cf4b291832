"""Trainers: NODE classifier and DDPM, resumable, distributed, with NFE and sample quality.

Command line: ``timeaware train node ...`` / ``timeaware train ddpm ...`` (see
:mod:`timeaware.train.cli`). Python::

    from timeaware.train import NodeConfig, train_node
    summary = train_node(NodeConfig(epochs=5))
"""

from timeaware.train.common import (
    SolverFailed,
    TrainingDiverged,
    TrainingError,
    TrainingInterrupted,
    load_checkpoint,
)
from timeaware.train.ddpm import DDPMConfig, train_ddpm
from timeaware.train.node import NodeConfig, train_node
from timeaware.train.presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "DDPMConfig",
    "NodeConfig",
    "Preset",
    "SolverFailed",
    "TrainingDiverged",
    "TrainingError",
    "TrainingInterrupted",
    "get_preset",
    "load_checkpoint",
    "train_ddpm",
    "train_node",
]
