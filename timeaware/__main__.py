"""``python -m timeaware ...`` and the ``timeaware`` console script.

The command line itself is :mod:`timeaware.train.cli`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the ``timeaware`` command line; returns the exit status."""
    from timeaware.train.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
