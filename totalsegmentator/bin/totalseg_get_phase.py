"""``totalseg_get_phase``: contrast phase of a CT (native, arterial early/late, portal venous).

Our estimator fits physiological enhancement curves to organ/vessel intensities; see
``totalsegmentator.analysis.phase`` for the method. No xgboost needed.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..analysis.phase import get_ct_contrast_phase, pi_time_to_phase  # noqa: F401 - official import path
from ._common import OneLineParser, absolute_path, run_command

PROG = "totalseg_get_phase"


def build_parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Estimate the contrast phase of a CT image.")
    p.add_argument("-i", metavar="filepath", type=absolute_path, required=True,
                   help="CT: .nii.gz, .nii or .zip of DICOM slices")
    p.add_argument("-o", metavar="filepath", type=absolute_path, required=True, help="output JSON")
    p.add_argument("-m", metavar="filepath", type=absolute_path, default=None,
                   help="JSON table of enhancement curves replacing the built-in one")
    p.add_argument("-s", metavar="filepath", type=absolute_path, default=None,
                   help="statistics JSON of a 'total' run (median intensities) to use instead of segmenting")
    p.add_argument("-d", "--device", type=str, default="gpu", help="gpu, cpu, mps or gpu:N")
    p.add_argument("-q", action="store_true", default=False, help="no output on stdout")
    p.add_argument("--call_via_subprocess", action="store_true", default=False,
                   help="accepted for compatibility; the Python API is always used")
    p.add_argument("--debug", action="store_true", default=False, help="forwarded to the segmentation")
    return p


def f_type_of(path: str) -> str:
    """Input kind from the file name, as the official tool: .nii.gz, .zip (DICOM), else .nii."""
    name = str(path).lower()
    if name.endswith(".nii.gz"):
        return "niigz"
    if name.endswith(".zip"):
        return "zip"
    return "nii"


def _run(args: argparse.Namespace) -> int:
    """Estimate the contrast phase of ``-i`` and write the result JSON to ``-o``."""
    from ..atomic_files import write_json_atomic

    result = None
    for step in get_ct_contrast_phase(str(args.i), f_type=f_type_of(args.i), model_file=args.m, quiet=args.q,
                                      device=args.device, existing_stats=args.s,
                                      call_via_subprocess=args.call_via_subprocess, debug=args.debug):
        result = step.get("result", result)
    write_json_atomic(result, args.o)
    if not args.q:
        print(f"Predicted phase: {result['phase']} (pi_time {result['pi_time']} s, "
              f"probability {result['probability']})")
        print(f"Result written to {args.o}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_get_phase`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv, verbose_flags=("debug",))


if __name__ == "__main__":
    sys.exit(main())
