"""``totalseg_import_weights``: install weights from a downloaded zip (or a folder) into the weights folder."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import weights
from ._common import OneLineParser, run_command

PROG = "totalseg_import_weights"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Import manually downloaded model weights.")
    parser.add_argument("-i", "--weights_file", required=True,
                        help="weights zip (as released) or a folder holding dataset folders")
    return parser


def _run(args: argparse.Namespace) -> int:
    """Install the weights of ``-i``."""
    weights.import_weights(args.weights_file)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_import_weights`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
