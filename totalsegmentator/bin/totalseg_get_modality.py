"""``totalseg_get_modality``: is an image CT or MR? (method in ``totalsegmentator.analysis.modality``)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..analysis.modality import get_modality, get_modality_from_rois  # noqa: F401 - official import path
from ._common import OneLineParser, absolute_path, run_command

PROG = "totalseg_get_modality"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Tell whether an image is a CT or an MR.")
    p.add_argument("-i", metavar="filepath", type=absolute_path, required=True, help="CT or MR NIfTI image")
    p.add_argument("-o", metavar="filepath", type=absolute_path, required=True, help="output JSON")
    p.add_argument("-d", "--device", type=str, default="gpu", help="device for -n (gpu, cpu, mps, gpu:N)")
    p.add_argument("-q", action="store_true", default=False, help="no output on stdout")
    p.add_argument("-n", action="store_true", default=False,
                   help="also segment total_mr (fast) and check organ intensities against CT values")
    return p


def _run(args: argparse.Namespace) -> int:
    """Classify ``-i`` as CT or MR and write the result JSON to ``-o``."""
    from ..atomic_files import write_json_atomic
    from ..io.nifti import load_input_image

    img = load_input_image(args.i)
    result = get_modality_from_rois(img, device=args.device, quiet=args.q) if args.n else get_modality(img)
    write_json_atomic(result, args.o)
    if not args.q:
        print(f"Modality: {result['modality']} (probability {result['probability']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_get_modality`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
