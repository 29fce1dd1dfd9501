"""``totalseg_setup_manually``: create config.json with a given ``totalseg_id`` (e.g. copied from another machine)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import config
from ..errors import OptionError
from ._common import OneLineParser, run_command

PROG = "totalseg_setup_manually"
ID_PREFIX = "totalseg_"
ID_LENGTH = 17


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Create the TotalSegmentator config file by hand.")
    parser.add_argument("-id", "--totalseg_id", required=True, help="id of the form totalseg_XXXXXXXX")
    return parser


def _run(args: argparse.Namespace) -> int:
    """Check the id and write config.json with it."""
    totalseg_id = args.totalseg_id.strip()
    if not totalseg_id.startswith(ID_PREFIX) or len(totalseg_id) != ID_LENGTH:
        raise OptionError(f"totalseg_id '{totalseg_id}' is not valid: it must start with '{ID_PREFIX}' and "
                          f"have {ID_LENGTH} characters")
    config.setup_config(totalseg_id)
    print(f"Config file {config.config_path()} set up with totalseg_id {totalseg_id}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_setup_manually`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
