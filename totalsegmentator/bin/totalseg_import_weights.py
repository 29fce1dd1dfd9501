"""``totalseg_import_weights``: install weights from a downloaded zip (or a folder) into the weights folder."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from .. import weights
from ._common import OneLineParser, parse_args, run_guarded

PROG = "totalseg_import_weights"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Import manually downloaded model weights.")
    parser.add_argument("-i", "--weights_file", required=True,
                        help="weights zip (as released) or a folder holding dataset folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args

    def body() -> int:
        weights.import_weights(args.weights_file)
        return 0

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
