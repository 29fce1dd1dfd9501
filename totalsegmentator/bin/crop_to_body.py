"""``crop_to_body``: crop a CT to the body (task ``body``, 6 mm model) plus a 3 mm margin; output is int32."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._common import OneLineParser, absolute_path, run_command

PROG = "crop_to_body"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Crop a CT image to the body.")
    p.add_argument("-i", metavar="filepath", type=absolute_path, required=True, help="CT NIfTI")
    p.add_argument("-o", metavar="filepath", type=absolute_path, required=True, help="cropped NIfTI")
    p.add_argument("-t", "--only_trunc", action="store_true", default=False,
                   help="crop to body_trunc instead of the whole body (trunc and extremities)")
    p.add_argument("-nr", "--nr_thr_resamp", type=int, default=1, help="resampling threads")
    p.add_argument("-ns", "--nr_thr_saving", type=int, default=6, help="accepted; the body run uses 1")
    p.add_argument("-d", "--device", choices=["gpu", "cpu"], default="gpu", help="gpu (falls back to cpu) or cpu")
    p.add_argument("-q", "--quiet", action="store_true", default=False, help="no progress output")
    p.add_argument("-v", "--verbose", action="store_true", default=False, help="more output")
    return p


def _run(args: argparse.Namespace) -> int:
    """Crop ``-i`` to the body and write it to ``-o``."""
    from ..analysis.crop_to_body import crop_to_body
    from ..errors import OptionError

    if not args.o.name.endswith((".nii.gz", ".nii")):
        raise OptionError(f"-o must be a .nii.gz or .nii file path, got {args.o}")
    crop_to_body(args.i, args.o, only_trunc=args.only_trunc, nr_thr_resamp=args.nr_thr_resamp,
                 device=args.device, quiet=args.quiet, verbose=args.verbose)
    if not args.quiet:
        print(f"Cropped image written to {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crop_to_body`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv, verbose_flags=("verbose",))


if __name__ == "__main__":
    sys.exit(main())
