"""``totalseg_get_modality``: is an image CT or MR? (method in ``totalsegmentator.analysis.modality``)."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from ..analysis.modality import get_modality, get_modality_from_rois  # noqa: F401 - official import path
from ._common import OneLineParser, absolute_path, parse_args, run_guarded

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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), sys.argv[1:] if argv is None else argv)
    if isinstance(args, int):
        return args

    def body() -> int:
        from ..jsonfile import write_json_atomic
        from ..io.nifti import load_input_image

        img = load_input_image(args.i)
        result = get_modality_from_rois(img, device=args.device, quiet=args.q) if args.n else get_modality(img)
        write_json_atomic(result, args.o)
        if not args.q:
            print(f"Modality: {result['modality']} (probability {result['probability']})")
        return 0

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
