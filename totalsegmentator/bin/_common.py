"""Shared pieces of the console commands: one-line errors, exit codes and the ``-v`` traceback switch.

Every command prints problems as ``<prog>: error: <message>`` on stderr (one line) and exits non-zero:
2 for usage and option errors, the exception's ``exit_code`` for our own errors (1 for most), 1 for
unexpected exceptions, 130 for Ctrl-C and 143 for SIGTERM (a job scheduler's stop or time limit; the run unwinds
as for Ctrl-C, so temp folders are removed and no output is left half-written). Tracebacks only with ``-v``.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from ..errors import TotalSegmentatorError
from ..registry import TASKS

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


_final_collection_skipped = False


def skip_final_collection() -> None:
    """Let this process end without the garbage collection of interpreter shutdown.

    After a run, that collection walks every object torch, nnU-Net and scipy created at import (~280,000):
    0.6-0.8 s of a command's time spent on memory the process gives back anyway. Freezing all objects at exit
    (atexit runs before the shutdown's collection) leaves nothing to walk. Python makes no promise to run
    ``__del__`` of objects still alive at exit, and every output is complete before a command returns."""
    global _final_collection_skipped
    if not _final_collection_skipped:
        atexit.register(gc.freeze)
        _final_collection_skipped = True


@contextmanager
def last_run_of_process() -> Iterator[None]:
    """Where a command makes its one segmentation call, the process ending right after it: no automatic garbage
    collection (nor the one at shutdown) and freed memory kept for reuse, not handed back (both would only cost
    time)."""
    from ..gc_pause import garbage_collection_paused  # noqa: PLC0415
    from ..heap_reuse import reuse_freed_memory  # noqa: PLC0415

    skip_final_collection()
    with garbage_collection_paused(), reuse_freed_memory(trim=False):
        yield


def one_line(text: object) -> str:
    """Collapse any whitespace (newlines included) so a message always fits on one line."""
    return " ".join(str(text).split())


def print_error(prog: str, message: object) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def print_warning(prog: str, message: object) -> None:
    print(f"{prog}: warning: {one_line(message)}", file=sys.stderr, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (no multi-line usage dump) and exit with code 2."""

    def error(self, message: str) -> NoReturn:
        print_error(self.prog, f"{message} (see '{self.prog} -h')")
        sys.exit(EXIT_USAGE)


def absolute_path(value: str) -> Path:
    """argparse type: a path made absolute (not resolved, so symlinks stay as given)."""
    if not value:
        raise argparse.ArgumentTypeError("empty path")
    return Path(value).expanduser().absolute()


def task_name(value: str) -> str:
    """argparse type: a task name of the registry; unknown names get the closest names as suggestions."""
    if value in TASKS:
        return value
    from ..options import suggest  # noqa: PLC0415 - keeps this module importable without options

    raise argparse.ArgumentTypeError(f"unknown task '{value}'{suggest(value, TASKS)}, list all tasks with --list-tasks")


def wants_verbose(argv: Sequence[str]) -> bool:
    """``-v``/``--verbose`` anywhere on the command line (known before parsing succeeds)."""
    return any(a in ("-v", "--verbose") for a in argv)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    """Parse ``argv``; return the exit code instead of raising SystemExit (``-h``, ``--version``, errors)."""
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread; a KeyboardInterrupt so that everything handling Ctrl-C handles it."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated()


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated instead of ending the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set in the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_guarded(prog: str, body: Callable[[], int | None], verbose: bool = False) -> int:
    """Run a command body; turn every exception into one error line and an exit code."""
    try:
        with _sigterm_unwinds():
            code = body()
        return EXIT_OK if code is None else int(code)
    except Terminated:
        print_error(prog, "terminated (SIGTERM)")
        return EXIT_TERMINATED
    except TotalSegmentatorError as exc:
        if verbose:
            traceback.print_exc()
        print_error(prog, exc)
        return int(getattr(exc, "exit_code", EXIT_FAILURE))
    except KeyboardInterrupt:
        print_error(prog, "interrupted")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # a library calling sys.exit(); keep its code but do not let it escape main()
        if exc.code is None or isinstance(exc.code, int):
            return EXIT_OK if exc.code is None else exc.code
        print_error(prog, exc.code)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without -v
        if verbose:
            traceback.print_exc()
            print_error(prog, f"unexpected {type(exc).__name__}: {exc}")
        else:
            print_error(prog, f"unexpected {type(exc).__name__}: {exc} (rerun with -v to see the traceback)")
        return EXIT_FAILURE


def run_command(prog: str, parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int | None],
                argv: Sequence[str] | None = None, *, verbose_flags: Sequence[str] = (),
                exit_in_body_is_code: bool = False) -> int:
    """The whole ``main()`` of a command: parse ``argv`` (default ``sys.argv[1:]``), run ``body(args)`` guarded.

    ``-h``/``--version``/usage errors return their exit code without running the body. Tracebacks are shown
    when ``-v``/``--verbose`` is on the command line or any Namespace attribute named in ``verbose_flags`` is
    true. With ``exit_in_body_is_code``, a SystemExit out of the body (``parser.error()`` for checks made
    after parsing) ends the command quietly with its code (EXIT_USAGE when that is not a number).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(parser, argv)
    if isinstance(args, int):
        return args

    def guarded_body() -> int | None:
        try:
            return body(args)
        except SystemExit as exc:
            if not exit_in_body_is_code:
                raise
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    verbose = wants_verbose(argv) or any(getattr(args, flag) for flag in verbose_flags)
    return run_guarded(prog, guarded_body, verbose=verbose)
