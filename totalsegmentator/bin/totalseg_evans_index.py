"""``totalseg_evans_index``: Evans index of a head CT, with a PNG of the measured diameters.

Unlike the official 2.18.0 module this one has a ``main()``, so the console script works, and it needs no
antspyx: the masks are aligned by their own symmetry (see ``totalsegmentator.analysis.evans_index``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..analysis.evans_index import evans_index  # noqa: F401 - official import path (generator)
from ._common import OneLineParser, absolute_path, run_command

PROG = "totalseg_evans_index"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Measure the Evans index of a head CT.")
    p.add_argument("-i", "--ct_img", type=absolute_path, required=True, help="head CT: .nii.gz, .nii or .zip DICOM")
    p.add_argument("-o", "--output_file", type=absolute_path, required=True, help="output JSON")
    p.add_argument("-p", "--preview_file", type=absolute_path, required=True, help="output PNG")
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="progress output")
    return p


def _run(args: argparse.Namespace) -> int:
    """Measure the Evans index; write the JSON result and the PNG preview."""
    from ..atomic_files import write_bytes_atomic, write_json_atomic

    final = None
    for step in evans_index(str(args.ct_img), verbose=args.verbose):
        if args.verbose:
            print(f"{step['progress']:3d}% {step['status']}")
        final = step
    write_json_atomic(final["result"], args.output_file)
    write_bytes_atomic(final["preview_png"], args.preview_file)
    if args.verbose:
        print(f"Result written to {args.output_file}, preview to {args.preview_file}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_evans_index`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv, verbose_flags=("verbose",))


if __name__ == "__main__":
    sys.exit(main())
