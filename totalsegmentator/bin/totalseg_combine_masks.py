"""``totalseg_combine_masks``: merge the masks of a class group (e.g. all lung lobes) into one file."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ._common import OneLineParser, absolute_path, print_warning, run_command

PROG = "totalseg_combine_masks"
NORA_EXECUTABLE = "/opt/nora/src/node/nora"


def build_parser() -> OneLineParser:
    from ..analysis.combine_masks import GROUP_CHOICES

    p = OneLineParser(prog=PROG, description="Combine the masks of a group of classes into one binary mask.")
    p.add_argument("-i", metavar="directory", type=absolute_path, required=True,
                   help="output folder of a per-class run, or a multilabel NIfTI with label header")
    p.add_argument("-o", metavar="filepath", type=absolute_path, required=True, help="combined mask (.nii.gz)")
    p.add_argument("-m", "--masks", choices=GROUP_CHOICES, required=True,
                   help="group to combine ('lungcomm' is an alias of 'lung'; 'heart' = heart, or the chambers "
                        "and myocardium of heartchambers_highres)")
    p.add_argument("-t", "--nora_tag", type=str, default="None", help="tag the output in the nora project")
    p.add_argument("-ml", "--multilabel", action="store_true", default=False,
                   help="attach a label-name header extension {1: <group>}")
    return p


def nora_tag(path: Path, tag: str) -> None:
    """Register ``path`` with the external nora tool (only when a tag is given and nora is installed)."""
    if tag == "None":
        return
    exe = NORA_EXECUTABLE if Path(NORA_EXECUTABLE).exists() else shutil.which("nora")
    if exe is None:
        print_warning(PROG, f"nora is not installed, --nora_tag {tag} ignored")
        return
    subprocess.run([exe, "-p", tag, "--add", str(path), "--addtag", "mask"], check=False)


def _run(args: argparse.Namespace) -> int:
    """Combine the group's masks of ``-i`` into ``-o`` (and tag it in nora)."""
    from ..analysis.combine_masks import combine_masks
    from ..errors import OptionError
    from ..io.nifti import save_nifti_atomic

    if not args.o.name.endswith((".nii.gz", ".nii")):
        raise OptionError(f"-o must be a .nii.gz or .nii file path, got {args.o}")
    img = combine_masks(args.i, args.masks, multilabel=args.multilabel)
    nora_tag(save_nifti_atomic(img, args.o), args.nora_tag)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_combine_masks`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
