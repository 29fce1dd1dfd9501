"""``totalseg_info``: the available tasks and their classes, as text tables or JSON."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

from ..registry import TASKS, format_classes_table, format_tasks_table, task_registry
from ._common import EXIT_OK, OneLineParser, run_command, task_name

PROG = "totalseg_info"


def package_version() -> str | None:
    """The installed package version (metadata first, then the module attribute), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("totalsegmentator")
        except PackageNotFoundError:
            pass
        from .. import __version__
        return __version__
    except Exception:  # noqa: BLE001 - the version is informative only
        return None


def tasks_json() -> list[dict[str, Any]]:
    """``--list-tasks --json``: one object per task."""
    return [{"name": name, "modality": t.modality, "license_required": t.license_required,
             "num_classes": len(t.class_map)} for name, t in task_registry().items()]


def classes_json(task: str) -> dict[str, str]:
    """``--classes --json``: label index (as text) -> class name."""
    return {str(idx): name for idx, name in task_registry()[task].class_map.items()}


def everything_json() -> dict[str, Any]:
    """Bare ``--json``: the version and every task with its classes."""
    return {
        "totalsegmentator_version": package_version(),
        "tasks": {name: {"modality": t.modality, "license_required": t.license_required,
                         "classes": classes_json(name)} for name, t in task_registry().items()},
    }


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Show the tasks of TotalSegmentator and the classes of a task.")
    what = p.add_mutually_exclusive_group()
    what.add_argument("-lt", "--list-tasks", dest="list_tasks", action="store_true", default=False,
                      help="list all tasks with modality, license and number of classes")
    what.add_argument("-cl", "--classes", action="store_true", default=False,
                      help="list the classes of the task given with --task")
    p.add_argument("-ta", "--task", type=task_name, choices=TASKS, metavar="task", default=None,
                   help="task for --classes")
    p.add_argument("--json", action="store_true", default=False, help="print JSON instead of a table")
    return p


def _dump(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Print the table or JSON the flags ask for."""
    if args.classes and args.task is None:
        parser.error("--classes needs a task: --classes --task TASK")
    if args.list_tasks:
        if args.json:
            _dump(tasks_json())
        else:
            print(format_tasks_table())
    elif args.task is not None:
        if args.json:
            _dump(classes_json(args.task))
        else:
            print(format_classes_table(args.task))
    elif args.json:
        _dump(everything_json())
    else:
        print(format_tasks_table())
        print("\nShow the classes of a task with: totalseg_info --classes --task TASK")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``totalseg_info``; returns the exit code."""
    parser = build_parser()  # _run() calls parser.error() (exit code 2) for --classes without --task
    return run_command(PROG, parser, partial(_run, parser), argv)


if __name__ == "__main__":
    sys.exit(main())
