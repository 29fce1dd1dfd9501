"""The segmentation chain for one image, as a readable sequence of in-memory stage calls.

input image -> crop -> canonical orientation -> resample to the model spacing -> (split) -> models -> merge
-> postprocessing at model resolution -> resample back -> original orientation -> uncrop -> label rules.

``predict_image`` runs one mode of one task; ``segment`` adds what surrounds it: the rough crop model, body
cropping, helper models (vertebrae_pp_refined) and the rules applied at the input's resolution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import ornt_transform

from . import postprocessing as post
from .errors import OptionError
from .options import CropPlan, Options
from .prefetch import may_use_cuda
from .preprocessing import cropping, orientation, resampling, splitting
from .registry import ROUGH_KIND_TO_MODE, Mode, Part, Task, get_task, model_parts, rough_crop_model
from .timing import NULL_TIMER, StageTimer

_CANONICAL = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclass
class RunSettings:
    """Everything of the user's options that changes how one image is predicted."""

    # a torch.device, or a function that returns it: the API resolves the device in the background (with torch's
    # import) and the run waits for it only where a model needs it, so reading and resampling come first
    device_source: object = "cpu"
    requested_device: str = "cpu"  # the user's device name (cpu, gpu, gpu:N, mps)
    resampling_order: int = 1
    nr_thr_resamp: int = 1
    force_split: bool = False
    save_lowres: bool = False
    higher_order_resampling: bool = False
    higher_order_resampling_legacy: bool = False
    remove_small_blobs_mm3: float | None = None
    quiet: bool = False
    save_probabilities: Path | None = None
    precision: str = "auto"  # network precision (options.PRECISIONS)
    compile: str = "auto"  # torch.compile of the networks (options.COMPILE_MODES)
    timer: StageTimer = field(default_factory=lambda: NULL_TIMER)

    @property
    def device(self):
        """The torch device (waits for the background resolution the first time)."""
        if callable(self.device_source):
            self.device_source = self.device_source()
        return self.device_source

    def resampling_device(self):
        """The CUDA device the input is resampled on, or None for scipy on the CPU. Waits for the device only
        when a CUDA GPU was asked for and can be present, so CPU runs resample beside torch's import."""
        if not may_use_cuda(self.requested_device):
            return None
        device = self.device
        return device if getattr(device, "type", None) == "cuda" else None


@dataclass
class LowRes:
    """The prediction at model resolution in canonical orientation (for fast statistics and the preview)."""

    labels: np.ndarray
    image: np.ndarray
    affine: np.ndarray


@dataclass
class Prediction:
    labels: np.ndarray  # uint8, input geometry (or model geometry with save_lowres)
    affine: np.ndarray
    lowres: LowRes | None
    empty_crop: bool = False


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def _predict_models(data: np.ndarray, spacing: tuple, task: Task, mode: Mode, parts: list[Part],
                    s: RunSettings) -> np.ndarray:
    """Run every part model on the same image and merge their labels into the task's class ids."""
    from .inference.cache import get_model
    from .inference.predictor import predict_labels

    multi = len(mode.parts) > 1
    result = np.zeros(data.shape, dtype=np.uint8)
    for part in parts:
        with s.timer.stage("load_model"):
            model = get_model(part.dataset_id, mode.trainer, mode.plans, mode.configuration, mode.folds, s.device)
        with s.timer.stage("network"):
            out = predict_labels(model, data, spacing, mode.step_size, s.device,
                                 return_probabilities=s.save_probabilities is not None, progress=not s.quiet,
                                 mixed_precision=s.precision, compile_mode=s.compile)
        if s.save_probabilities is not None:
            out, probabilities = out
            _save_probabilities(probabilities, spacing, s.save_probabilities)
        with s.timer.stage("merge"):
            if not multi:
                result = out.astype(np.uint8, copy=False)
                continue
            ids = task.class_ids
            lut = np.zeros(max(part.class_map) + 1, dtype=np.uint8)
            for part_label, name in part.class_map.items():
                lut[part_label] = ids[name]
            mapped = lut[out]
            np.copyto(result, mapped, where=mapped > 0)  # later parts win on overlap, as the official does
    return result


def _save_probabilities(probabilities: np.ndarray, spacing: tuple, path: Path) -> None:
    import pickle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path if path.suffix == ".npz" else path.with_suffix(".npz"),
                        probabilities=probabilities)
    with open(path.with_suffix(".pkl"), "wb") as f:
        pickle.dump({"spacing": list(spacing)[::-1], "shape_zyx": probabilities.shape[1:]}, f)


def _predict_resampled(data: np.ndarray, spacing: tuple, task: Task, mode: Mode, parts: list[Part],
                       s: RunSettings) -> np.ndarray:
    """Models on the resampled canonical image, in overlapping z-chunks when the image is too big for memory."""
    num_classes = max(len(p.class_map) for p in parts) + 1 if parts else 2
    with s.timer.stage("load_model"):  # the device comes with torch's import in the background
        device = s.device
    split = splitting.needs_split(data.shape, multi_model=len(mode.parts) > 1, force=s.force_split,
                                  bytes_needed=splitting.whole_image_bytes(data.shape, num_classes),
                                  bytes_available=splitting.available_memory_bytes(device))
    if not split:
        return _predict_models(data, spacing, task, mode, parts, s)
    chunks = splitting.plan_chunks(data.shape[2])
    results = [_predict_models(np.ascontiguousarray(window), spacing, task, mode, parts, s)
               for window in splitting.split_array(data, chunks)]
    return splitting.merge_chunks(results, chunks)


def _release_shared_preprocessing() -> None:
    from .inference.predictor import release_shared_preprocessing

    release_shared_preprocessing()


def _postprocess_lowres(labels: np.ndarray, task: Task, affine: np.ndarray, s: RunSettings) -> np.ndarray:
    voxel_volume = float(np.prod(_voxel_sizes(affine)))
    if task.auxiliary_labels:
        labels = post.remove_labels(labels, list(task.auxiliary_labels))
    if "body" in task.postprocessing:
        labels = post.body_postprocessing(labels, voxel_volume)
    if "vertebrae_pp" in task.postprocessing:
        labels = post.vertebrae_postprocessing(labels, _voxel_sizes(affine))
    if s.remove_small_blobs_mm3:
        labels = post.remove_small_blobs(labels, voxel_volume, s.remove_small_blobs_mm3)
    return labels


def predict_image(img: nib.Nifti1Image, task: Task, mode: Mode, s: RunSettings,
                  crop_mask: np.ndarray | None = None, crop_margin_mm: tuple = (0.0, 0.0, 0.0),
                  roi_subset: list[str] | None = None) -> Prediction:
    """One mode of one task on one image; returns labels in the image's own voxel grid."""
    data = np.asanyarray(img.dataobj)
    affine = img.affine
    input_shape = data.shape
    bbox = None
    if crop_mask is not None:
        bbox = cropping.bbox_from_mask(crop_mask, crop_margin_mm, _voxel_sizes(affine))
        if bbox is None:
            return Prediction(np.zeros(input_shape, np.uint8), affine, None, empty_crop=True)
        data, affine = cropping.crop_to_bbox(data, affine, bbox)

    with s.timer.stage("reorient"):
        data_c, affine_c, reorientation = orientation.to_canonical(data, affine)
    resample = mode.spacing is not None and not s.higher_order_resampling
    with s.timer.stage("resample"):
        if resample:
            data_r, affine_r, _ = resampling.resample_image(data_c, affine_c, mode.spacing, s.resampling_order,
                                                            threads=resampling_threads(s.nr_thr_resamp),
                                                            device=s.resampling_device())
        else:
            data_r, affine_r = data_c, affine_c

    parts = model_parts(task, mode, roi_subset)
    labels_r = _predict_resampled(data_r, tuple(_voxel_sizes(affine_r)), task, mode, parts, s)
    _release_shared_preprocessing()  # all models of this image have run
    with s.timer.stage("postprocess"):
        labels_r = _postprocess_lowres(labels_r, task, affine_r, s)
    lowres = LowRes(labels_r, data_r, affine_r)

    with s.timer.stage("resample_back"):
        if s.save_lowres and resample:
            # stays at model resolution, only the axis order goes back (the official low-res output)
            low = nib.Nifti1Image(labels_r, affine_r).as_reoriented(
                ornt_transform(_CANONICAL, reorientation.ornt))
            return Prediction(np.asarray(low.dataobj).astype(np.uint8), low.affine, lowres)
        if resample and s.higher_order_resampling_legacy:
            labels_c = resampling.resample_labels_legacy(labels_r, data_c.shape, order=s.resampling_order)
        elif resample:
            labels_c = resampling.resample_labels_to_shape(labels_r, data_c.shape)
        else:
            labels_c = labels_r
        labels = reorientation.undo(labels_c)
        if bbox is not None:
            labels = cropping.uncrop(labels, bbox, input_shape)
    return Prediction(labels.astype(np.uint8, copy=False), img.affine, lowres)


def rough_segmentation(img: nib.Nifti1Image, kind: str, s: RunSettings) -> tuple[np.ndarray, dict[int, str]]:
    """Labels of a rough crop model (``ct_default``, ``ct_robust``, ``mr_always``, ``body``) at input geometry."""
    task_name, mode_name = ROUGH_KIND_TO_MODE[kind]
    rough_task = get_task(task_name)
    mode = rough_task.modes[mode_name]
    assert mode.dataset_ids[0] == rough_crop_model(kind)["dataset_id"]
    rough_settings = RunSettings(device_source=s.device_source, requested_device=s.requested_device,
                                 resampling_order=s.resampling_order, nr_thr_resamp=s.nr_thr_resamp, quiet=s.quiet,
                                 precision=s.precision, compile=s.compile, timer=s.timer)
    pred = predict_image(img, rough_task, mode, rough_settings)
    return pred.labels, rough_task.class_map


def _mask_of(labels: np.ndarray, class_map: dict[int, str], names) -> np.ndarray:
    ids = {name: idx for idx, name in class_map.items()}
    missing = [n for n in names if n not in ids]
    if missing:
        raise OptionError(f"crop classes {missing} are not predicted by the crop model")
    return np.isin(labels, [ids[n] for n in names])


@dataclass
class Segmentation:
    """The result of ``segment``: labels in the input grid (or model grid with save_lowres) and their names."""

    labels: np.ndarray
    affine: np.ndarray
    label_map: dict[int, str]
    lowres: LowRes | None
    empty_crop: bool = False


def task_crop_plan(img: nib.Nifti1Image, task: Task) -> CropPlan | None:
    """The crop plan a task has with default options (for nested runs such as teeth's crop task)."""
    return Options(input=img, task=task.name).validated().crop_plan()


def segment(img: nib.Nifti1Image, task: Task, mode: Mode, s: RunSettings, crop_plan: CropPlan | None = None,
            roi_subset: list[str] | None = None) -> Segmentation:
    """Run a task on an image with everything around the main models (crop, helper models, label rules)."""
    crop_mask, margin, rough = None, (0.0, 0.0, 0.0), None
    if crop_plan is not None and crop_plan.rough_model is None:
        crop_task = get_task(crop_plan.model)  # the crop mask comes from a full run of another task
        crop_run = segment(img, crop_task, crop_task.mode(), s, task_crop_plan(img, crop_task))
        crop_mask = _mask_of(crop_run.labels, crop_task.class_map, crop_plan.classes)
        margin = crop_plan.margin_mm
    elif crop_plan is not None:
        with s.timer.stage("rough_crop_model"):
            rough = rough_segmentation(img, crop_plan.rough_model, s)
        crop_mask = _mask_of(rough[0], rough[1], crop_plan.classes)
        margin = crop_plan.margin_mm
    if mode.remove_outside is not None and rough is None:
        with s.timer.stage("rough_crop_model"):
            rough = rough_segmentation(img, "ct_robust", s)

    helper_labels = None
    if task.refine:
        helper_task = get_task(task.refine["task"])
        helper_labels = predict_image(img, helper_task, helper_task.mode(), s).labels

    label_task = get_task(task.label_map_task) if task.label_map_task else task
    pred = predict_image(img, label_task, mode, s, crop_mask, margin, roi_subset)
    labels = pred.labels
    label_map = dict(task.class_map)
    if pred.empty_crop:
        return Segmentation(labels, pred.affine, _filtered(label_map, roi_subset), None, empty_crop=True)

    with s.timer.stage("postprocess"):
        voxel_sizes = _voxel_sizes(img.affine)
        if helper_labels is not None:
            labels = post.refine_vertebrae(labels, helper_labels, voxel_sizes, task.refine["dilation_mm"],
                                           task.refine["keep_label"])
        if roi_subset:
            keep = [idx for idx, name in label_map.items() if name in set(roi_subset)]
            labels = np.where(np.isin(labels, keep), labels, 0).astype(np.uint8)
        if mode.remove_outside is not None:
            outside = _mask_of(rough[0], rough[1], mode.remove_outside.classes)
            labels = post.remove_outside(labels, outside, voxel_sizes, mode.remove_outside.dilation_mm)
    return Segmentation(labels, pred.affine, _filtered(label_map, roi_subset), pred.lowres)


def resampling_threads(requested: int) -> int:
    """Threads for image resampling: at least the usable cores (the threaded result is bit-identical)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(int(requested), cores)


def _filtered(label_map: dict[int, str], roi_subset: list[str] | None) -> dict[int, str]:
    if not roi_subset:
        return label_map
    wanted = set(roi_subset)
    return {idx: name for idx, name in label_map.items() if name in wanted}
