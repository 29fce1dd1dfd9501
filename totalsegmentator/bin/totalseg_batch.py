"""``totalseg_batch``: segment many scans with the models loaded once; resumable; optionally on a Dask cluster.

Every per-case flag of ``TotalSegmentator`` is accepted (the parser is built from ``TotalSegmentator``'s own);
``-i`` takes folders, glob patterns, case lists and files, ``-o`` is the batch folder.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial

from ._common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, OneLineParser, Terminated, absolute_path,
                      print_error, run_command, skip_final_collection)
from .TotalSegmentator import (answer_listing, api_kwargs_from_args, build_parser as build_single_parser,
                               require_input_output)

PROG = "totalseg_batch"
MAX_FAILED_LINES = 20
BATCH_FOLDER_HELP = {
    "statistics": "write statistics.json per case (into the case's output; or <directory>/<case_id>.json "
                  "when a folder is given)",
    "report": "write a JSON report per case to <directory>/<case_id>.json",
    "save_probabilities": "save the probabilities per case to <directory>/<case_id>.npz (and .pkl)",
}


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """``TotalSegmentator``'s parser with ``-i``/``-o`` redefined for many cases, plus the batch flags."""
    p = OneLineParser(
        prog=PROG, parents=[build_single_parser()], conflict_handler="resolve", add_help=False,
        description="Segment many scans in one run: the models are loaded once, reading and writing overlap "
                    "with prediction, finished cases are skipped when the command is run again, and a case that "
                    "fails is recorded while the others go on. With --workers or --scheduler the cases are "
                    "spread over a Dask cluster. All TotalSegmentator flags apply to every case.",
        epilog="Per case: <out>/<case_id>/<class>.nii.gz (default) or <out>/<case_id>.nii.gz (--ml). "
               "Summary: <out>/batch_summary.json and .csv. Exit code 1 if any case failed.")
    p.add_argument("-i", metavar="input", dest="input", nargs="+", default=None,
                   help="the scans: folders (scanned for .nii/.nii.gz files, DICOM series folders and .zip files), "
                        "glob patterns ('scans/**/*.nii.gz'), case lists (.csv with a column input and optional "
                        "case_id/series_uid, or .txt with one path per line) or single files")
    p.add_argument("-o", metavar="directory", dest="output", type=absolute_path, default=None,
                   help="batch output folder: one output per case, the summary and the resume markers")
    for action in p._actions:  # the file options of a single run name a folder here (one file per case)
        if action.dest in BATCH_FOLDER_HELP:
            action.help, action.metavar = BATCH_FOLDER_HELP[action.dest], "directory"
    batch = p.add_argument_group("batch options")
    where = batch.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="start a local Dask cluster with N worker processes (one case at a time each)")
    where.add_argument("--scheduler", type=str, default=None, metavar="tcp://HOST:PORT",
                       help="send the cases to a running Dask scheduler (its address, or the JSON file of "
                            "'dask scheduler --scheduler-file'); inputs and -o must be on storage the workers share")
    batch.add_argument("--torch_threads", type=_positive_int, default=None, metavar="N",
                       help="torch threads per process (default: local run: torch's default; Dask: the host's "
                            "CPUs divided by the workers on it)")
    batch.add_argument("--prefetch", type=_positive_int, default=2, metavar="N",
                       help="local run: cases read ahead while one is predicted (default: 2; memory grows with it)")
    batch.add_argument("--overwrite", action="store_true", default=False,
                       help="redo cases that an earlier run finished")
    batch.add_argument("--no_modality_switch", action="store_true", default=False,
                       help="do not switch total <-> total_mr for DICOM cases of the other modality")
    batch.add_argument("--list_cases", action="store_true", default=False,
                       help="print the cases found (id, done/todo, input) and exit")
    return p


def _options(args: argparse.Namespace) -> dict:
    kwargs = api_kwargs_from_args(args)
    kwargs.pop("input")
    kwargs.pop("output")
    return kwargs


def _list_cases(args: argparse.Namespace, options: dict) -> int:
    from ..batch.cases import discover_cases
    from ..batch.process import BatchSpec, fingerprint
    from ..batch.state import BatchState

    cases = discover_cases(args.input, exclude=[args.output])
    state = BatchState(args.output)
    spec = BatchSpec(str(args.output), options, not args.no_modality_switch)
    for case in cases:
        status = "todo" if args.overwrite or state.done_marker(case, fingerprint(spec, case)) is None else "done"
        print(f"{case.case_id}\t{status}\t{case.input}")
    return EXIT_OK


def _report(summary, quiet: bool) -> None:
    for result in summary.failed[:MAX_FAILED_LINES]:
        print(f"{PROG}: failed: {result.case_id}: {result.error}", file=sys.stderr)
    if len(summary.failed) > MAX_FAILED_LINES:
        print(f"{PROG}: ... {len(summary.failed) - MAX_FAILED_LINES} more failed cases in {summary.csv_path}",
              file=sys.stderr)
    if summary.aborted:
        print_error(PROG, f"stopped early: {summary.aborted}")
    if not quiet:
        print(f"{PROG}: {summary.count_line()} (summary: {summary.json_path})", flush=True)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if answer_listing(args):
        return EXIT_OK
    require_input_output(parser, args)
    options = _options(args)
    if args.list_cases:
        return _list_cases(args, options)

    from ..batch.api import BatchInterrupted, totalsegmentator_batch

    skip_final_collection()
    try:
        summary = totalsegmentator_batch(
            args.input, args.output, workers=args.workers, scheduler=args.scheduler, prefetch=args.prefetch,
            overwrite=args.overwrite, modality_switch=not args.no_modality_switch,
            torch_threads=args.torch_threads, **options)
    except BatchInterrupted as exc:
        _report(exc.summary, args.quiet)
        if isinstance(exc.__cause__, Terminated):
            print_error(PROG, "terminated (SIGTERM)")
            return EXIT_TERMINATED
        print_error(PROG, "interrupted")
        return EXIT_INTERRUPTED
    _report(summary, args.quiet)
    return summary.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``totalseg_batch`` command; returns the exit code."""
    parser = build_parser()  # _run() calls parser.error() for missing -i/-o
    return run_command(PROG, parser, partial(_run, parser), argv, verbose_flags=("verbose",),
                       exit_in_body_is_code=True)


if __name__ == "__main__":
    sys.exit(main())
