"""Models: the paper's Neural ODE classifier and ODE function, the DDPM U-Net, and Gaussian
diffusion with its samplers."""

from .diffusion import GaussianDiffusion
from .node import NODEClassifier, ODEBlock, ODESolverError, PreActResBlock
from .odefunc import ODEFunc
from .unet import AttnBlock, Downsample, ResBlock, UNet, Upsample, num_parameters

__all__ = [
    "AttnBlock",
    "Downsample",
    "GaussianDiffusion",
    "NODEClassifier",
    "ODEBlock",
    "ODEFunc",
    "ODESolverError",
    "PreActResBlock",
    "ResBlock",
    "UNet",
    "Upsample",
    "num_parameters",
]
