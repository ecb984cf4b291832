"""Packaging for timeaware.

``kernels/`` is installed as ``timeaware.kernels`` through ``package_dir`` so that it never
shadows another distribution's top-level ``kernels`` package.
"""

from setuptools import find_packages, setup

setup(
    name="timeaware",
    version="0.1.0",
    description="Fused Triton kernels for time-dependent networks (Neural ODEs, diffusion U-Nets)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["timeaware", "timeaware.*"]), "timeaware.kernels"],
    package_dir={"timeaware.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",
        "torchdiffeq>=0.2.3",
        "numpy",
        "tqdm",
        "matplotlib",
        "scikit-learn",
        "torchmetrics>=1.0",
    ],
    extras_require={
        # timeaware.integrations.diffusers (imported only when asked for). diffusers itself does
        # not require torch, so this never pulls another (CUDA) torch build.
        "diffusers": ["diffusers>=0.42.1"],
        # the version the diffusers tests compare against (diffusers 0.42 needs Python >= 3.11;
        # on 3.10 the tests skip)
        "test": [
            "pytest>=7",
            "pytest-benchmark>=4",
            "ruff>=0.5",
            "diffusers==0.42.1; python_version >= '3.11'",
        ],
    },
    entry_points={"console_scripts": ["timeaware=timeaware.__main__:main"]},
)
