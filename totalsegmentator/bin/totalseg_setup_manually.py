"""``totalseg_setup_manually``: create config.json with a given ``totalseg_id`` (e.g. copied from another machine)."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import config
from ..errors import OptionError
from ._common import OneLineParser, parse_args, run_guarded

PROG = "totalseg_setup_manually"
ID_PREFIX = "totalseg_"
ID_LENGTH = 17


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Create the TotalSegmentator config file by hand.")
    parser.add_argument("-id", "--totalseg_id", required=True, help="id of the form totalseg_XXXXXXXX")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args
    totalseg_id = args.totalseg_id.strip()

    def body() -> int:
        if not totalseg_id.startswith(ID_PREFIX) or len(totalseg_id) != ID_LENGTH:
            raise OptionError(f"totalseg_id '{totalseg_id}' is not valid: it must start with '{ID_PREFIX}' and "
                              f"have {ID_LENGTH} characters")
        config.setup_config(totalseg_id)
        print(f"Config file {config.config_path()} set up with totalseg_id {totalseg_id}.")
        return 0

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
