"""The work on one case, in three steps the local runner overlaps: read, predict, write.

``read_case`` loads the input into memory (NIfTI, or a DICOM series converted to NIfTI), ``predict_case`` calls
``totalsegmentator()`` with the in-memory image (models come from the per-process cache), ``finish_case`` writes
the outputs into a staging folder, moves them into ``<out>`` and writes the done marker. ``process_case`` runs all
three in a row (what a Dask worker does). Every step turns an exception into a failed ``CaseResult`` with a
one-line error, so one bad case never stops the batch.

Output layout per case (the layout a single run writes for ``-o <out>/<case_id>...``):

* per-class (default): ``<out>/<case_id>/<class>.nii.gz`` (+ ``statistics.json`` ... inside that folder);
* ``--ml``: ``<out>/<case_id>.nii.gz``; extra files get the case id as prefix (``<case_id>_statistics.json``);
* DICOM output: ``<out>/<case_id>_rtstruct.dcm`` / ``<out>/<case_id>_seg.dcm``; several output types:
  ``<out>/<case_id>.nii.gz``, ``<out>/<case_id>_rtstruct.dcm``, ``<out>/<case_id>_seg.dcm``.

Options that name one file per run (``statistics`` as a path, ``report``, ``save_probabilities``) name a folder
in a batch and get one file per case: ``<folder>/<case_id>.json`` (``.npz`` for probabilities).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LicenseError, TotalSegmentatorError, WeightsError
from ..options import DICOM_OUTPUT_TYPES, normalise_output_types
from .cases import Case
from .state import BatchState, output_name

# options that name one file per run: in a batch they name a folder holding one file per case
PER_CASE_FILE_OPTIONS: dict[str, str] = {"statistics": ".json", "report": ".json", "save_probabilities": ".npz"}
# options that do not change what is written; a changed value does not make done cases stale
NOT_IN_FINGERPRINT = frozenset({"nr_thr_resamp", "nr_thr_saving", "quiet", "verbose", "device", "debug",
                                "license_number"})
# errors that every following case would hit as well: the batch stops instead of failing each case
FATAL_ERRORS = (WeightsError, LicenseError)
MAX_ERROR_CHARS = 500
_torch_threads: int | None = None  # set by the Dask worker plugin; applied before each prediction


def set_torch_threads(threads: int | None) -> None:
    """Torch threads for the predictions of this process (now if torch is imported, else before the next case)."""
    global _torch_threads
    _torch_threads = threads
    _apply_torch_threads()


def _apply_torch_threads() -> None:
    torch = sys.modules.get("torch")
    if _torch_threads is not None and torch is not None and torch.get_num_threads() != _torch_threads:
        torch.set_num_threads(_torch_threads)


@dataclass(frozen=True)
class BatchSpec:
    """What every case of a batch shares; small and picklable (it travels to Dask workers)."""

    output: str  # absolute output folder
    options: dict[str, Any]  # totalsegmentator() keyword arguments, without input and output
    modality_switch: bool = True  # DICOM input: total <-> total_mr from the Modality tag, as the CLI does
    verbose: bool = False


@dataclass
class CaseResult:
    """The outcome of one case: ``status`` is done, skipped (done in an earlier run), failed or not_run."""

    case_id: str
    input: str
    status: str
    seconds: float = 0.0
    error: str | None = None
    error_type: str | None = None
    outputs: list[str] = field(default_factory=list)
    worker: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    fatal: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "input": self.input, "status": self.status,
                "seconds": round(self.seconds, 3), "error": self.error, "error_type": self.error_type,
                "outputs": list(self.outputs), "worker": self.worker}


@dataclass
class Loaded:
    case: Case
    kwargs: dict[str, Any]  # per-case totalsegmentator() arguments (no input/output)
    image: Any  # nibabel image in memory, or None when the API must read the path itself (DICOM output)
    split: bool  # predict without output, then write here (lets the local runner overlap writing)
    read_s: float


@dataclass
class Predicted:
    loaded: Loaded
    seg: Any  # the returned multilabel image
    stats: dict | None
    staging: Path
    target: Path
    predict_s: float
    stages: dict[str, float]


def worker_name() -> str:
    """The Dask worker's address inside a Dask worker, else ``host:pid``.

    ``distributed`` is only asked when it is already imported (it always is in a Dask worker): a local batch must
    not import that big package from its reader or writer thread while the other threads run (see
    ``import_step_modules``)."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return get_worker().address
        except Exception:  # noqa: BLE001 - not inside a Dask worker
            pass
    return f"{socket.gethostname()}:{os.getpid()}"


def import_step_modules(dicom: bool) -> None:
    """Import now, in the calling thread, what ``read_case`` and ``finish_case`` import on first use.

    The local runner calls this before it starts its reader and writer threads, so those threads never import a
    module for the first time while the predicting thread (and its model-prefetch thread) import or run: first
    imports of overlapping packages in several threads at once are not reliably safe in CPython (a
    ``_DeadlockError`` or a partially initialised module, CPython gh-83065), and an error there would fail one
    case at random. Dask workers call it in their setup for the same reason. DICOM support only with ``dicom``;
    a missing optional package is left to fail the cases that need it, with their own error.
    """
    import importlib

    from .. import atomic_files, outputs, registry, timing  # noqa: F401
    from ..errors import InputImageError  # noqa: F401
    from ..io import label_header, nifti  # noqa: F401

    nifti.fast_gzip()  # imports isal (when installed), which the NIfTI reader and writer use
    if dicom:
        for name in ("dicom2nifti", "dicom2nifti.exceptions", "..io.dicom_input", "..bin.TotalSegmentator"):
            try:
                importlib.import_module(name, __package__)
            except ImportError:
                pass


def error_text(exc: BaseException) -> str:
    """One line: our errors by their message, others prefixed with their type."""
    if isinstance(exc, TotalSegmentatorError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory (MemoryError)"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def fail(case: Case, exc: BaseException, stage: str, seconds: float, state: BatchState) -> CaseResult:
    """A failed result; the failure record (with traceback) is written next to the markers."""
    result = CaseResult(case.case_id, case.input, "failed", seconds, error_text(exc), type(exc).__name__,
                        worker=worker_name(), fatal=isinstance(exc, FATAL_ERRORS))
    try:
        state.mark_failed(case, {"stage": stage, "error": result.error, "error_type": result.error_type,
                                 "seconds": round(seconds, 3), "worker": result.worker,
                                 "traceback": "".join(traceback.format_exception(exc))})
    except OSError:
        pass  # the summary still has the error
    return result


def per_case_options(case: Case, spec: BatchSpec, task: str | None = None) -> dict[str, Any]:
    """The ``totalsegmentator()`` arguments of one case (file options mapped into their per-case files)."""
    kwargs = dict(spec.options)
    if task is not None:
        kwargs["task"] = task
    for name, suffix in PER_CASE_FILE_OPTIONS.items():
        value = kwargs.get(name)
        if isinstance(value, (str, os.PathLike)):
            kwargs[name] = str(Path(value) / f"{case.case_id}{suffix}")
    if case.series_uid is not None:
        kwargs["series_uid"] = case.series_uid
    if not spec.verbose:
        kwargs["quiet"] = True  # the batch shows one progress bar, not the messages of every case
    return kwargs


def fingerprint(spec: BatchSpec, case: Case) -> str:
    """A short hash of everything that changes a case's outputs (defaults filled in, see NOT_IN_FINGERPRINT),
    so the command line and the Python function agree on which cases are done."""
    import dataclasses

    from ..options import Options, normalise_small_blobs

    defaults = {f.name: f.default for f in dataclasses.fields(Options) if f.name not in ("input", "output")}
    values = {**defaults, **spec.options}
    relevant = {k: v for k, v in values.items() if k not in NOT_IN_FINGERPRINT}
    relevant["output_type"] = normalise_output_types(relevant.get("output_type"))
    relevant["remove_small_blobs"] = normalise_small_blobs(relevant.get("remove_small_blobs"))
    relevant = {k: list(v) if isinstance(v, tuple) else v for k, v in relevant.items()}
    relevant["series_uid"] = case.series_uid or relevant.get("series_uid")
    relevant["modality_switch"] = spec.modality_switch
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def uses_split_writing(kwargs: dict[str, Any]) -> bool:
    """Plain NIfTI output can be written by the batch after ``totalsegmentator(output=None)``.

    Everything else (DICOM output, preview, radiomics, report, probabilities, per-class files in v1 order) is
    written by ``totalsegmentator()`` itself into the staging folder.
    """
    from ..registry import get_task

    if normalise_output_types(kwargs.get("output_type", "nifti")) != ["nifti"]:
        return False
    if any(kwargs.get(name) for name in ("preview", "radiomics", "report", "save_probabilities")):
        return False
    return not (kwargs.get("v1_order") and not kwargs.get("ml") and get_task(kwargs["task"]).v1_order)


def case_target(case: Case, kwargs: dict[str, Any], staging: Path) -> Path:
    """The ``output`` argument of a single run writing this case into ``staging`` (see the module doc)."""
    types = normalise_output_types(kwargs.get("output_type", "nifti"))
    if len(types) > 1:
        return staging / case.case_id  # not an existing folder: files <case_id>.nii.gz, <case_id>_seg.dcm ...
    if types[0] in DICOM_OUTPUT_TYPES:
        return staging / f"{case.case_id}_{types[0].split('_', 1)[1]}.dcm"
    if kwargs.get("ml"):
        return staging / f"{case.case_id}.nii.gz"
    return staging / case.case_id


def read_case(case: Case, spec: BatchSpec, state: BatchState) -> Loaded | CaseResult:
    """Load the case's image (the part the local runner prefetches)."""
    start = time.perf_counter()
    try:
        from ..errors import InputImageError
        from ..io.nifti import load_input_image

        if case.kind == "missing":
            raise InputImageError(f"input '{case.input}' does not exist")
        task = spec.options.get("task", "total")
        if case.is_dicom and spec.modality_switch:
            from ..bin.TotalSegmentator import switch_task_for_modality

            task = switch_task_for_modality(task, Path(case.input), case.series_uid) or task
        kwargs = per_case_options(case, spec, task)
        split = uses_split_writing(kwargs)
        image = None
        if not case.is_dicom:
            image = load_input_image(case.input)
        elif split:
            from ..io.dicom_input import load_dicom

            with load_dicom(case.input, series_uid=case.series_uid) as series:
                image = load_input_image(series.image)
        return Loaded(case, kwargs, image, split, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - fault isolation: any problem fails this case only
        return fail(case, exc, "read", time.perf_counter() - start, state)


def predict_case(loaded: Loaded, spec: BatchSpec, state: BatchState) -> Predicted | CaseResult:
    """Run ``totalsegmentator()`` on the loaded case (writing into staging unless the batch writes)."""
    from ..python_api import totalsegmentator
    from ..timing import StageTimer

    _apply_torch_threads()
    case = loaded.case
    start = time.perf_counter()
    staging = None
    try:
        state.forget(case.case_id)
        staging = state.new_staging(case.case_id)
        target = case_target(case, loaded.kwargs, staging)
        timer = StageTimer()
        source = loaded.image if loaded.image is not None else case.input
        output = None if loaded.split else str(target)
        result = totalsegmentator(input=source, output=output, **loaded.kwargs, timer=timer)
        seg, stats = result if isinstance(result, tuple) else (result, None)
        loaded.image = loaded.image if loaded.split else None  # the writer needs it only for split writing
        return Predicted(loaded, seg, stats, staging, target, time.perf_counter() - start, timer.as_dict())
    except BaseException as exc:  # noqa: BLE001 - fault isolation; Ctrl-C still stops the batch
        state.discard(staging)
        if not isinstance(exc, Exception):
            raise
        return fail(case, exc, "predict", loaded.read_s + time.perf_counter() - start, state)


def _write_split(pred: Predicted) -> None:
    """What ``totalsegmentator()`` writes for NIfTI output, from its returned image and statistics."""
    import numpy as np

    from ..io.label_header import read_label_map
    from ..atomic_files import write_json_atomic
    from ..outputs import extras_dir, write_body_derived_masks, write_nifti_outputs
    from ..registry import get_task

    kwargs, target, seg, image = pred.loaded.kwargs, pred.target, pred.seg, pred.loaded.image
    ml = bool(kwargs.get("ml"))
    if not kwargs.get("skip_saving"):
        labels = np.asanyarray(seg.dataobj)
        label_map = read_label_map(seg) or {}
        write_nifti_outputs(labels, seg.affine, image, label_map, target, ml, int(kwargs.get("nr_thr_saving", 6)),
                            ml_label_map=label_map, ml_labels=labels)
        if get_task(kwargs["task"]).derived_masks and not ml and not kwargs.get("no_derived_masks"):
            write_body_derived_masks(labels, label_map, np.asanyarray(image.dataobj), seg.affine, target)
    if pred.stats is not None:
        where = kwargs.get("statistics")
        path = Path(where) if isinstance(where, (str, os.PathLike)) else extras_dir(target, ml) / "statistics.json"
        write_json_atomic(pred.stats, path)


def _point_report_at_outputs(report: Path, case: Case, output: Path) -> None:
    """The run report names the staging folder and an in-memory input; name the case's real paths instead."""
    from ..atomic_files import write_json_atomic

    data = json.loads(report.read_text())
    data["input"], data["output"] = case.input, str(output)
    write_json_atomic(data, report, indent=2)


def finish_case(pred: Predicted, spec: BatchSpec, state: BatchState) -> CaseResult:
    """Write (split mode), move the outputs into ``<out>``, then mark the case done."""
    case = pred.loaded.case
    start = time.perf_counter()
    try:
        if pred.loaded.split:
            _write_split(pred)
        outputs = state.publish(case.case_id, pred.staging)
        if pred.loaded.kwargs.get("report"):
            _point_report_at_outputs(Path(pred.loaded.kwargs["report"]), case,
                                     state.output / output_name(case.case_id, pred.target.name))
        write_s = time.perf_counter() - start
        seconds = pred.loaded.read_s + pred.predict_s + write_s
        stages = {"read": round(pred.loaded.read_s, 4), **pred.stages, "batch_write": round(write_s, 4)}
        result = CaseResult(case.case_id, case.input, "done", seconds, outputs=outputs, worker=worker_name(),
                            stages=stages)
        state.mark_done(case, fingerprint(spec, case), outputs,
                        {"task": pred.loaded.kwargs.get("task"), "seconds": round(seconds, 3), "stages": stages,
                         "worker": result.worker})
        return result
    except BaseException as exc:  # noqa: BLE001 - fault isolation; Ctrl-C still stops the batch
        state.discard(pred.staging)
        if not isinstance(exc, Exception):
            raise
        seconds = pred.loaded.read_s + pred.predict_s + time.perf_counter() - start
        return fail(case, exc, "write", seconds, state)
    finally:
        pred.seg = pred.loaded.image = None  # let the arrays go before the next case arrives


def process_case(case: Case, spec: BatchSpec) -> CaseResult:
    """Read, predict and write one case in a row (a Dask task); never raises for a bad case."""
    state = BatchState(spec.output)
    loaded = read_case(case, spec, state)
    if isinstance(loaded, CaseResult):
        return loaded
    predicted = predict_case(loaded, spec, state)
    if isinstance(predicted, CaseResult):
        return predicted
    return finish_case(predicted, spec, state)
