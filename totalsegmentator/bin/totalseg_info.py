"""``totalseg_info``: the available tasks and their classes, as text tables or JSON."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..registry import TASKS, format_classes_table, format_tasks_table, task_registry
from ._common import EXIT_OK, OneLineParser, parse_args, run_guarded, task_name

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``totalseg_info``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args

    def body() -> int:
        if args.classes and args.task is None:
            try:
                parser.error("--classes needs a task: --classes --task TASK")
            except SystemExit as exc:
                return int(exc.code)
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

    return run_guarded(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
