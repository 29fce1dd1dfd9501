"""``totalseg_set_license``: store a license number in config.json (checked online unless ``-sv``)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import config, weights
from ._common import OneLineParser, run_command

PROG = "totalseg_set_license"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Store the license number for licensed tasks.")
    parser.add_argument("-l", "--license_number", required=True, help="license number, e.g. aca_XXXXXXXXXXXXXX")
    parser.add_argument("-sv", "--skip_validation", action="store_true",
                        help="store the number without asking the license server")
    return parser


def _run(args: argparse.Namespace) -> int:
    """Check the number (format, then online unless ``-sv``) and store it."""
    number = args.license_number.strip()
    config.check_license_format(number)
    if not args.skip_validation and config.get_license_number() != number:
        weights.validate_license_online(number)
    config.set_license_number(number)
    print(f"License number stored in {config.config_path()}.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_set_license`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
