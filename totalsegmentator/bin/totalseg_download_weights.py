"""``totalseg_download_weights``: download the weights of one task (or ``all``) into the weights folder."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import config, weights
from ..errors import LicenseError
from ..registry import download_task_to_ids, get_dataset
from ._common import OneLineParser, run_command

PROG = "totalseg_download_weights"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Download the model weights of a task.")
    parser.add_argument("-t", "--task", choices=[*download_task_to_ids(), "all"], default="total",
                        metavar="TASK", help="task whose weights to download, or 'all' (default: total)")
    return parser


def _ids(name: str) -> list[int | str]:
    """Dataset ids to fetch; with ``all`` the licensed ones are left out when no license number is stored."""
    ids = weights.dataset_ids_for_download_task(name)
    if name != "all":
        return ids
    try:
        config.require_license("all")
    except LicenseError:
        licensed = [i for i in ids if get_dataset(i).license_task is not None]
        if licensed:
            print(f"Skipping {len(licensed)} licensed datasets: no valid license number is stored "
                  f"(see 'totalseg_set_license').")
        return [i for i in ids if i not in licensed]
    return ids


def _run(args: argparse.Namespace) -> int:
    """Download the weights of the task (or all)."""
    config.setup_config()
    config.update_config(statistics_disclaimer_shown=True)
    paths = weights.ensure_datasets(_ids(args.task))
    print(f"Weights ready in {config.weights_dir()} ({len(paths)} dataset folder{'' if len(paths) == 1 else 's'})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_download_weights`` command; returns the exit code."""
    return run_command(PROG, build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
