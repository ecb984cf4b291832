"""Test set-up: run Triton kernels under the interpreter when there is no CUDA GPU, seed tests.

TRITON_INTERPRET must be in the environment before triton is imported, so it is set here, at
collection time, before any test module imports timeaware.kernels.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# The tests use tiny tensors: intra-op threads only add synchronisation (measured 25x slower per
# ODE-function call with 2 threads on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # numpy is optional for the tests that seed it
        pass
    yield


@pytest.fixture
def device() -> str:
    return DEVICE
