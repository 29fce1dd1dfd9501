"""``totalsegmentator_batch()``: many scans in one call, locally or on a Dask cluster, resumable."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import OptionError
from ..options import Options, suggest
from .cases import Case, discover_cases
from .process import PER_CASE_FILE_OPTIONS, BatchSpec, CaseResult, fingerprint
from .state import BatchState
from .summary import BatchSummary

BATCH_OUTPUT_OPTIONS = frozenset({"input", "output"})


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a batch; ``summary`` holds what was finished (already written to disk)."""

    def __init__(self, summary: BatchSummary) -> None:
        super().__init__("batch interrupted")
        self.summary = summary


def _check_options(options: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(Options)} - BATCH_OUTPUT_OPTIONS
    unknown = sorted(set(options) - names)
    if unknown:
        raise OptionError(f"unknown option(s) for a batch: {', '.join(unknown)}{suggest(unknown[0], sorted(names))}")


def _normalised(options: dict[str, Any]) -> dict[str, Any]:
    """Options as plain values; per-case file options as absolute folders (workers may run elsewhere)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in PER_CASE_FILE_OPTIONS and isinstance(value, (str, os.PathLike)):
            folder = Path(value).expanduser().absolute()
            if folder.is_file():
                raise OptionError(f"{name}: in a batch this names a folder for one file per case, "
                                  f"but {folder} is a file")
            value = str(folder)
        elif isinstance(value, os.PathLike):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def validate_batch_options(options: dict[str, Any], output: Path) -> Options:
    """Check the per-case options once, before any case runs (one-line OptionError otherwise)."""
    import nibabel as nib
    import numpy as np

    kwargs = dict(options)
    types = Options(input=None, **kwargs).output_types
    dicom = any(t != "nifti" for t in types)
    # stand-in input: a folder for DICOM output (which needs DICOM input), else a tiny image
    dummy: Any = str(output.parent) if dicom else nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.eye(4))
    # a stand-in case output too: <out>/<case_id>/ per class, <out>/<case_id>.nii.gz with ml (process.py)
    case = "case.nii.gz" if kwargs.get("ml") and types == ["nifti"] else "case"
    return Options(input=dummy, output=str(output / case), **kwargs).validated()


def _warn(message: str) -> None:
    print(f"totalseg_batch: warning: {message}", file=sys.stderr, flush=True)


def totalsegmentator_batch(inputs: str | os.PathLike | Iterable[str | os.PathLike] | Iterable[Case],
                           output: str | os.PathLike, *, workers: int | None = None, scheduler: str | None = None,
                           client: Any = None, prefetch: int = 2, overwrite: bool = False,
                           progress: bool | None = None, modality_switch: bool = True,
                           torch_threads: int | None = None, **options: Any) -> BatchSummary:
    """Segment many scans with the models loaded once; resumable; optionally on a Dask cluster.

    ``inputs``: folders, glob patterns, case lists (``.csv``/``.txt``), files, or ``Case`` objects (see
    ``batch.cases``). ``output``: the batch folder; each case gets the layout a single run writes (per-class
    folder ``<output>/<case_id>/``, or ``<output>/<case_id>.nii.gz`` with ``ml=True``). ``options``: any
    ``totalsegmentator()`` keyword except input/output. Runs locally in this process unless ``workers``
    (a local Dask cluster of that many processes), ``scheduler`` (``tcp://host:port``) or a Dask ``client``
    is given. Cases done by an earlier run with the same options are skipped unless ``overwrite``.

    Writes ``batch_summary.json`` and ``batch_summary.csv`` into ``output`` and returns the summary; a failed
    case never raises (see ``summary.failed`` / ``summary.exit_code``). Option problems raise OptionError before
    any case runs; Ctrl-C raises ``BatchInterrupted`` (a KeyboardInterrupt) after the summary is written.
    """
    _check_options(options)
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise OptionError("give only one of workers, scheduler and client")
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise OptionError(f"prefetch must be a whole number of at least 1, not {prefetch!r}")
    if torch_threads is not None and (isinstance(torch_threads, bool) or not isinstance(torch_threads, int)
                                      or torch_threads < 1):
        raise OptionError(f"torch_threads must be a whole number of at least 1, not {torch_threads!r}")
    out = Path(output).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OptionError(f"the batch output {out} is a file; give a folder")
    options = _normalised(options)
    opts = validate_batch_options(options, out)
    quiet = bool(options.get("quiet"))
    show = (not quiet) if progress is None else bool(progress)

    if isinstance(inputs, (str, os.PathLike)):
        cases = discover_cases(inputs, exclude=[out])
    else:
        items = list(inputs)
        cases = items if items and all(isinstance(i, Case) for i in items) else discover_cases(items, exclude=[out])
    if len({c.case_id.lower() for c in cases}) != len(cases):
        raise OptionError("case ids must be unique")

    out.mkdir(parents=True, exist_ok=True)
    state = BatchState(out)
    lock = state.lock()
    try:
        if not quiet:
            for notice in opts.notices():
                _warn(notice)
        spec = BatchSpec(str(out), options, modality_switch, verbose=bool(options.get("verbose")))
        return _run(cases, spec, state, show, overwrite, prefetch, workers, scheduler, client, torch_threads)
    finally:
        if lock is not None:
            lock.release()


def _run(cases: list[Case], spec: BatchSpec, state: BatchState, show: bool, overwrite: bool, prefetch: int,
         workers: int | None, scheduler: str | None, client: Any, torch_threads: int | None) -> BatchSummary:
    from tqdm import tqdm

    started_at, start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    results: dict[str, CaseResult] = {}
    todo: list[Case] = []
    for case in cases:
        marker = None if overwrite else state.done_marker(case, fingerprint(spec, case))
        if marker is None:
            todo.append(case)
        else:
            results[case.case_id] = CaseResult(case.case_id, case.input, "skipped", float(marker.get("seconds", 0.0)),
                                               outputs=list(marker["outputs"]), worker=marker.get("worker"))
    mode = "local" if workers is None and scheduler is None and client is None else \
        (scheduler or ("dask-client" if client is not None else f"local-cluster:{workers}"))
    if show and results:
        _warn(f"{len(results)} of {len(cases)} cases already done in {state.output}; skipped "
              "(use --overwrite to redo them)")

    bar = None
    failed = 0

    def start_bar() -> None:
        nonlocal bar
        if bar is None:  # after a cluster is connected, so a connection error does not leave a bar behind
            bar = tqdm(total=len(todo), unit="case", desc="totalseg_batch", disable=not show or not todo,
                       dynamic_ncols=True, file=sys.stderr)

    def on_result(result: CaseResult) -> None:
        nonlocal failed
        start_bar()
        results[result.case_id] = result
        failed += result.status == "failed"
        if failed:
            bar.set_postfix(failed=failed, refresh=False)
        bar.update(1)

    interrupted: KeyboardInterrupt | None = None
    try:
        if mode == "local":
            from .runner import run_local

            if torch_threads is not None:
                import torch

                torch.set_num_threads(torch_threads)
            start_bar()
            run_local(todo, spec, state, prefetch=prefetch, on_result=on_result)
        elif todo:
            from .distributed import run_distributed

            run_distributed(todo, spec, state, scheduler=scheduler, workers=workers, client=client,
                            torch_threads=torch_threads, on_result=on_result, on_ready=start_bar)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in the command (its Terminated)
        interrupted = exc
    finally:
        if bar is not None:
            bar.close()
    ordered = [results.get(c.case_id) or CaseResult(c.case_id, c.input, "not_run") for c in cases]
    fatal = next((r for r in ordered if r.fatal), None)
    summary = BatchSummary(state.output, ordered, time.perf_counter() - start, started_at, mode,
                           interrupted=interrupted is not None, aborted=fatal.error if fatal else None,
                           options={k: v for k, v in spec.options.items() if k != "license_number"})
    summary.write()
    if interrupted is not None:
        raise BatchInterrupted(summary) from interrupted
    return summary
