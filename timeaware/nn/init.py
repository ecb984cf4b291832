"""Bias-initialisation policies for the paper's remedy 2 (section 3.2, Table 2).

A timestep embedding added before a normalisation competes with the operand (the convolution's
output) for the normalisation unit's variance. The paper initialises the biases of the operand
branch (the convolutions) to zero and keeps PyTorch's default, nonzero bias initialisation on the
timestep-embedding branch (its MLPs / projections). :func:`apply_zero_bias` implements that and the
three other combinations of Table 2.

Which branch a bias belongs to:

* ``timestep``: every bias inside a module marked with :func:`mark_timestep_branch` (the timestep
  MLPs and projections of :mod:`timeaware.nn.embedding`, the U-Net's per-block ``temb_proj``, the
  ODE function's additive embedding MLPs).
* ``operand``: the bias of every convolution (``nn.Conv*``, including ``ConcatConv2d._layer``)
  outside a timestep branch.

Normalisation affines (already zero-initialised) and other layers (a classifier's final
``nn.Linear``) are never touched.
"""

from __future__ import annotations

import torch
from torch import nn

ZERO_BIAS_POLICIES = ("none", "operand", "timestep", "all")
_BRANCH_ATTR = "_timeaware_timestep_branch"


def mark_timestep_branch(module: nn.Module) -> nn.Module:
    """Mark ``module`` (and everything under it) as part of the timestep-embedding branch.

    Returns ``module`` so it can wrap a constructor call.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: got {type(module).__name__}, expected torch.nn.Module")
    setattr(module, _BRANCH_ATTR, True)
    return module


def is_timestep_branch(module: nn.Module) -> bool:
    """Whether ``module`` itself was marked with :func:`mark_timestep_branch`."""
    return bool(getattr(module, _BRANCH_ATTR, False))


def canonical_zero_bias(policy) -> str:
    """Normalise a policy: bool True -> ``"operand"`` (the paper's remedy), False -> ``"none"``."""
    if isinstance(policy, bool):
        return "operand" if policy else "none"
    if policy is None:
        return "none"
    if not isinstance(policy, str) or policy not in ZERO_BIAS_POLICIES:
        raise ValueError(
            f"zero_bias: got {policy!r}, expected one of {ZERO_BIAS_POLICIES} or a bool "
            "(True = 'operand', False = 'none')"
        )
    return policy


def bias_branches(module: nn.Module) -> dict[str, str]:
    """Map the qualified name of every bias :func:`apply_zero_bias` may touch to its branch,
    ``"operand"`` or ``"timestep"``."""
    out: dict[str, str] = {}

    def visit(m: nn.Module, prefix: str, in_timestep: bool) -> None:
        in_timestep = in_timestep or is_timestep_branch(m)
        if m._parameters.get("bias") is not None:
            name = f"{prefix}bias"
            if in_timestep and isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                out[name] = "timestep"
            elif not in_timestep and isinstance(m, nn.modules.conv._ConvNd):
                out[name] = "operand"
        for child_name, child in m.named_children():
            visit(child, f"{prefix}{child_name}.", in_timestep)

    visit(module, "", False)
    return out


@torch.no_grad()
def apply_zero_bias(module: nn.Module, policy="operand") -> list[str]:
    """Zero the biases of one branch, both, or neither (paper Table 2), in place.

    Call it right after construction: it only zeroes, it never restores default values.

    Args:
        module: any module built from :mod:`timeaware.nn` / :mod:`timeaware.models` (or any
            module whose timestep-embedding submodules were marked with
            :func:`mark_timestep_branch`).
        policy: ``"none"`` (PyTorch default biases everywhere), ``"operand"`` (the paper's
            remedy: zero conv biases, default timestep-branch biases), ``"timestep"`` (the
            opposite), ``"all"`` (zero everywhere); or a bool (True = ``"operand"``).

    Returns:
        The qualified names of the biases that were zeroed.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: got {type(module).__name__}, expected torch.nn.Module")
    policy = canonical_zero_bias(policy)
    if policy == "none":
        return []
    params = dict(module.named_parameters(remove_duplicate=False))
    zeroed = []
    for name, branch in bias_branches(module).items():
        if policy == "all" or policy == branch:
            params[name].zero_()
            zeroed.append(name)
    return zeroed
