"""``totalsegmentator()``: the official Python entry point, a thin layer over options, weights and the pipeline."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import config
from .atomic_files import write_json_atomic
from .errors import OptionError, OutputError
from .gc_pause import garbage_collection_paused
from .heap_reuse import reuse_freed_memory
from .options import Options
from .outputs import DICOM_TYPES, multilabel_image, write_body_derived_masks, write_nifti_outputs
from .registry import ROUGH_KIND_TO_MODE, extra_class_map, get_task
from .timing import StageTimer


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr if msg.startswith("WARNING") else sys.stdout, flush=True)


def totalsegmentator(input: str | Path | nib.Nifti1Image, output: str | Path | None = None, ml: bool = False,
                     nr_thr_resamp: int = 1, nr_thr_saving: int = 6, fast: bool = False, nora_tag: str = "None",
                     preview: bool = False, task: str = "total", roi_subset: list[str] | None = None,
                     statistics: bool | str | Path = False, radiomics: bool = False, crop_path=None,
                     body_seg: bool = False, force_split: bool = False, output_type: str | list[str] = "nifti",
                     quiet: bool = False, verbose: bool = False, test: int = 0, skip_saving: bool = False,
                     device: str = "gpu", license_number: str | None = None,
                     statistics_exclude_masks_at_border: bool = True, no_derived_masks: bool = False,
                     v1_order: bool = False, fastest: bool = False, roi_subset_robust: list[str] | None = None,
                     stats_aggregation: str = "mean", remove_small_blobs: bool | float = False,
                     statistics_normalized_intensities: bool = False, robust_crop: bool = False,
                     higher_order_resampling_LEGACY: bool = False, higher_order_resampling: bool = False,
                     save_probabilities: str | Path | None = None, debug: bool = False,
                     report: str | Path | None = None, statistics_extra: bool = False, save_lowres: bool = False,
                     resampling_order: int = 1, plans: str = "nnUNetPlans", model_size: str = "big",
                     series_uid: str | None = None, precision: str | None = None, compile: str | None = None,
                     timer: StageTimer | None = None):
    """Segment ``input`` with ``task``; write the outputs to ``output`` (unless None) and return the image.

    Returns the multilabel segmentation (uint8, input geometry, label names in the header extension), or
    ``(image, statistics_dict)`` when ``statistics`` is set. Our additions: ``series_uid`` (which series of a
    DICOM folder), ``precision`` (network precision: auto, fp32, fp16, bf16; None: ``$TOTALSEG_PRECISION``),
    ``compile`` (torch.compile of the networks: auto, on, off; None: ``$TOTALSEG_COMPILE``).
    """
    kwargs = {k: v for k, v in locals().items() if k != "timer"}
    opts = Options(**kwargs).validated()
    with reuse_freed_memory(), garbage_collection_paused():
        return run(opts, timer or StageTimer())


def _settings(opts: Options, device_source, timer: StageTimer):
    from .pipeline import RunSettings

    blobs = opts.remove_small_blobs
    return RunSettings(
        device_source=device_source, requested_device=str(opts.device), resampling_order=opts.resampling_order,
        nr_thr_resamp=opts.nr_thr_resamp,
        force_split=opts.force_split, save_lowres=opts.save_lowres,
        higher_order_resampling=opts.higher_order_resampling,
        higher_order_resampling_legacy=opts.higher_order_resampling_LEGACY,
        remove_small_blobs_mm3=float(blobs) if blobs else None, quiet=opts.quiet,
        precision=opts.precision_effective(), compile=opts.compile_effective(),
        save_probabilities=Path(opts.save_probabilities) if opts.save_probabilities else None, timer=timer)


def _load_input(opts: Options, timer: StageTimer):
    """The input as a validated image, plus the DICOM series when the input is DICOM."""
    from .io.nifti import load_input_image

    with timer.stage("load"):
        if not opts.input_is_dicom:
            return load_input_image(opts.input), None
        from .io.dicom_input import load_dicom

        series = load_dicom(Path(opts.input), series_uid=opts.series_uid)
        return load_input_image(series.image), series


def _dataset_ids_needed(opts: Options) -> list[int]:
    """All dataset ids the run will use: crop models, the mode's models, helper models."""
    task = get_task(opts.task)
    mode = opts.selected_mode()
    roi = opts.roi_subset_effective
    ids = list(mode.dataset_ids)
    if mode.parts and roi:
        ids = [p.dataset_id for p in mode.parts if set(roi) & set(p.class_map.values())]
    plan = opts.crop_plan()
    rough = plan.rough_model if plan is not None else None
    if plan is not None and rough is None:
        sub = Options(input=opts.input, task=plan.model, device=opts.device, quiet=True).validated()
        ids = _dataset_ids_needed(sub) + ids
    if rough is None and mode.remove_outside is not None:
        rough = "ct_robust"
    if rough is not None:
        t, m = ROUGH_KIND_TO_MODE[rough]
        ids = list(get_task(t).modes[m].dataset_ids) + ids
    if task.refine:
        ids += list(get_task(task.refine["task"]).mode().dataset_ids)
    return list(dict.fromkeys(ids))


def run(opts: Options, timer: StageTimer) -> Any:
    """Run validated options; see ``totalsegmentator``."""
    from .prefetch import first_model, prefetch_model

    start = time.perf_counter()
    task = get_task(opts.task)
    mode = opts.selected_mode()
    config.setup_config()
    if opts.license_number:
        config.set_license_number(opts.license_number)
    if task.license_required:
        config.require_license(task.name)
    if task.info_message:
        _log(task.info_message, opts.quiet)
    for notice in opts.notices():
        _log(notice, opts.quiet)
    _check_optional_features(opts, task)

    # torch's import, the device and the first model (when its weights are installed) in the background, while
    # this thread imports the pipeline, reads the input (gzip outside the GIL) and resamples it
    prefetch = prefetch_model(first_model(task, mode, opts.crop_plan(), opts.roi_subset_effective), opts.device,
                              quiet=opts.quiet)
    try:
        # reading first: its decompression runs outside the GIL, beside torch's import; the pipeline's own
        # imports would wait for that import's locks (scipy) and hold the GIL against it
        img, series = _load_input(opts, timer)  # input errors before any download
        prefetch.fault_in_first_tile(opts.precision_effective())  # on the core that read the input
        from .pipeline import segment
        from .weights import ensure_dataset

        with timer.stage("weights"):
            for dataset_id in _dataset_ids_needed(opts):
                ensure_dataset(dataset_id, quiet=opts.quiet)
        settings = _settings(opts, prefetch.device, timer)
        _log(f"Segmenting with task '{task.name}' ({mode.name} mode, {len(mode.dataset_ids)} model(s))",
             opts.quiet)
        result = segment(img, task, mode, settings, opts.crop_plan(), roi_subset=opts.roi_subset_effective)
    except BaseException:
        prefetch.join()  # no half-loaded model left behind in a process that goes on
        raise
    prefetch.device()  # runs that never needed a model still end with the device resolved, as the others

    labels, label_map = result.labels, result.label_map
    out_affine = result.affine
    ref_img = img  # header source; the writers set the (possibly low-res) affine and shape
    ml_labels, ml_map = labels, label_map
    if opts.v1_order and task.v1_order:
        ml_labels, ml_map = _relabel_v1(labels, label_map, task.v1_order)
    seg_img = multilabel_image(ml_labels, out_affine, ref_img, ml_map)

    stats = None
    if opts.statistics:
        stats = _statistics(opts, img, labels, label_map, result, task)

    output = Path(opts.output) if opts.output is not None else None
    saved = output
    with _output_errors():
        if output is not None and not opts.skip_saving:
            with timer.stage("write"):
                saved = _write_outputs(opts, task, img, series, labels, out_affine, ref_img, label_map, ml_labels,
                                       ml_map, output)
        if output is not None and stats is not None:
            write_json_atomic(stats, opts.statistics_file)
        if output is not None and opts.preview and result.lowres is not None:
            _preview(opts, task, result, output)
        if opts.radiomics and output is not None:
            from .analysis.radiomics import get_radiomics_features_for_entire_dir

            get_radiomics_features_for_entire_dir(img, output, output / "statistics_radiomics.json")
    config.increase_prediction_counter()
    if opts.report:
        _write_report(opts, task, label_map, output, time.perf_counter() - start)
    if output is not None and not opts.skip_saving:
        _log(f"Saved the segmentation to {saved}", opts.quiet)
    if opts.verbose:
        _log(f"stage times (s): {timer.as_dict()}", opts.quiet)
    return (seg_img, stats) if opts.statistics else seg_img


def _check_optional_features(opts: Options, task) -> None:
    """Fail before any work when an asked-for extra cannot be produced at the end."""
    if opts.radiomics:
        from .analysis.radiomics import require_pyradiomics

        require_pyradiomics()
    if opts.preview and not task.preview_roi_groups:
        raise OptionError(f"task '{task.name}' has no preview definition; run it without --preview")


@contextlib.contextmanager
def _output_errors() -> Iterator[None]:
    """A file system's refusal while the outputs are written (no permission, disk full) as one clear line."""
    try:
        yield
    except OSError as e:
        where = f" {e.filename}" if e.filename else " the outputs"
        raise OutputError(f"cannot write{where}: {e.strerror or e}") from e


def _relabel_v1(labels: np.ndarray, label_map: dict[int, str], v1_name: str):
    v1 = extra_class_map(v1_name)
    v1_ids = {name: idx for idx, name in v1.items()}
    lut = np.zeros(max(max(label_map), 0) + 1, np.uint8)
    for idx, name in label_map.items():
        lut[idx] = v1_ids.get(name, 0)
    return lut[labels], v1


def _write_outputs(opts: Options, task, img, series, labels, affine, ref_img, label_map, ml_labels, ml_map,
                   output: Path) -> Path:
    """Write the outputs ``opts`` ask for; returns where they are (``output``, or the ``--ml`` file written)."""
    from .io.dicom_common import dicom_output_paths, non_empty_classes, write_dicom_outputs

    types = opts.output_types
    targets = dicom_output_paths(output, types, task.name, series.series_uid if series is not None else "")
    if DICOM_TYPES.intersection(targets):
        non_empty_classes(labels, label_map)  # a DICOM output of nothing is refused before any file is written
    saved = output
    if "nifti" in targets:
        multilabel = opts.ml or len(types) > 1
        written = write_nifti_outputs(labels, affine, ref_img, label_map, targets["nifti"], multilabel,
                                      opts.nr_thr_saving, ml_label_map=ml_map, ml_labels=ml_labels)
        if multilabel and len(types) == 1:
            saved = written[0]
        if task.derived_masks and not multilabel and not opts.no_derived_masks:
            write_body_derived_masks(labels, label_map, np.asanyarray(img.dataobj), affine, output)
    if len(types) > 1:
        next(iter(targets.values())).parent.mkdir(parents=True, exist_ok=True)
    write_dicom_outputs(labels, label_map, series, targets, task.name)
    return saved


def _statistics(opts: Options, img, labels, label_map, result, task) -> dict:
    from .analysis.statistics import get_basic_statistics

    fast_stats = opts.fast and result.lowres is not None
    if fast_stats:
        low = result.lowres
        seg = nib.Nifti1Image(low.labels, low.affine)
        ct = nib.Nifti1Image(low.image, low.affine)
        extra = False  # official quirk: --statistics_extra is not applied at fast-mode resolution
    else:
        seg = nib.Nifti1Image(labels, result.affine)
        ct, extra = img, opts.statistics_extra
    return get_basic_statistics(seg, ct, quiet=True, task=task.name,
                                exclude_masks_at_border=opts.statistics_exclude_masks_at_border,
                                roi_subset=opts.roi_subset_effective, metric=opts.stats_aggregation,
                                normalized_intensities=opts.statistics_normalized_intensities,
                                extra_metrics=extra, class_map=label_map)


def _preview(opts: Options, task, result, output: Path) -> None:
    from .analysis.preview import generate_preview

    low = result.lowres
    target = opts.output_dir / f"preview_{task.name}.png"
    generate_preview(nib.Nifti1Image(low.image, low.affine), low.labels, result.label_map,
                     task.preview_roi_groups, target)


def _write_report(opts: Options, task, label_map, output: Path | None, seconds: float) -> None:
    import torch

    from importlib.metadata import PackageNotFoundError, version

    try:
        nnunet_version = version("nnunetv2")
    except PackageNotFoundError:  # pragma: no cover - nnunetv2 is a dependency
        nnunet_version = None
    from . import __version__

    types = opts.output_types
    report = {
        "totalsegmentator_version": __version__, "nnunetv2_version": nnunet_version,
        "torch_version": torch.__version__, "task": task.name, "modality": task.modality,
        "license_required": task.license_required, "device": str(opts.device).split(":")[0],
        "fast": opts.fast, "fastest": opts.fastest, "save_lowres": bool(opts.save_lowres and (opts.fast or opts.fastest)),
        "multilabel": opts.ml, "output_type": types[0] if len(types) == 1 else types,
        "roi_subset": opts.roi_subset_effective,
        "input": "Nifti1Image" if isinstance(opts.input, nib.Nifti1Image) else str(opts.input),
        "output": str(output) if output is not None else None, "num_classes": len(label_map),
        "classes": {str(k): v for k, v in label_map.items()}, "runtime_seconds": round(seconds, 2),
        "output_files": sorted(p.name for p in output.glob("*.nii.gz")) if output is not None and output.is_dir() else [],
    }
    write_json_atomic(report, Path(opts.report), indent=2)
