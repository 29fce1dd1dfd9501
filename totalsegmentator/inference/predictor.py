"""Run a loaded nnU-Net model on one image held in memory.

The chain is nnU-Net's, without files, worker processes or threads:

1. nnU-Net's ``DefaultPreprocessor.run_case_npy``: transpose, crop to the nonzero region, normalise as the plans
   say, resample to the plans spacing (a no-op when the image already has it);
2. our Gaussian-weighted sliding window (below), with nnU-Net's tile positions and Gaussian, no mirroring;
3. nnU-Net's export (``convert_predicted_logits_to_segmentation_with_correct_shape``): resample the logits back,
   argmax, undo the crop and the transpose.

Differences from ``nnUNetPredictor``, by design:

* logits are accumulated like nnU-Net does by default (float16 accumulator, float16 Gaussian), so that the labels
  are identical to the official tool's. That Gaussian's tails underflow in float16, which makes the logits off by
  up to about two units where only tile borders overlap; ``accumulate_dtype=torch.float32`` gives the exact
  Gaussian average instead (about 0.2-0.5 % of the labels of a random tiny model differ from nnU-Net's) at twice
  the accumulator memory;
* in float32 all folds share one accumulator and one Gaussian weight map (one logits array, not two);
* when no resampling back is needed and no probabilities are asked for, the argmax is taken where the logits are
  (e.g. on the GPU), so only the label map travels back to the host;
* when the accumulators do not fit on the GPU, they move to the CPU and the prediction is repeated there;
* non-finite voxels (NaN, inf) are replaced before preprocessing instead of spreading through the network.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputImageError
from .model import LoadedModel

logger = logging.getLogger(__name__)

# nnUNetPredictor's Gaussian parameters
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_VALUE_SCALING = 10


def tile_slicers(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    """Spatial slices of all sliding-window tiles, in nnU-Net's order (last axis fastest)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(tuple(image_size), tuple(patch_size), step_size)
    return [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in itertools.product(*steps)]


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _sliding_window(model: LoadedModel, data: torch.Tensor, step_size: float, results_device: torch.device,
                    accumulate_dtype: torch.dtype, tile_batch_size: int, mixed_precision: bool,
                    progress: bool) -> torch.Tensor:
    """Mean over folds of the Gaussian-weighted tile logits, shape (classes, *data.shape[1:])."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    compute_device = model.device
    patch = model.patch_size
    # images smaller than a tile are padded (centred, zeros) as nnU-Net does
    padded, revert_padding = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    slicers = tile_slicers(padded.shape[1:], patch, step_size)
    padded = padded.to(results_device)

    gaussian = compute_gaussian(tuple(patch), sigma_scale=GAUSSIAN_SIGMA_SCALE,
                                value_scaling_factor=GAUSSIAN_VALUE_SCALING, dtype=accumulate_dtype,
                                device=results_device)
    weight_map = torch.zeros(padded.shape[1:], dtype=accumulate_dtype, device=results_device)
    for sl in slicers:
        weight_map[sl] += gaussian

    autocast = torch.autocast("cuda", enabled=True) if mixed_precision and compute_device.type == "cuda" \
        else contextlib.nullcontext()
    # float16 reproduces nnU-Net operation by operation: each fold divided by the weights, then the mean of folds.
    # float32 keeps one accumulator for all folds and divides once (same result, one logits array less).
    per_fold = accumulate_dtype == torch.float16
    total = logits = None
    with tqdm(total=len(slicers) * model.num_folds, disable=not progress, desc="Predicting", unit="tile",
              leave=False) as bar:
        for network in model.fold_networks():
            if logits is None or per_fold:
                logits = torch.zeros((model.num_classes, *padded.shape[1:]), dtype=accumulate_dtype,
                                     device=results_device)
            for batch in _batches(slicers, tile_batch_size):
                tiles = torch.stack([padded[(slice(None), *sl)] for sl in batch]).to(compute_device)
                with autocast:
                    out = network(tiles)
                for i, sl in enumerate(batch):
                    # float32 network output stays float32 until added (as in nnU-Net); fp16 output is upcast
                    tile = out[i].to(device=results_device, dtype=torch.promote_types(out.dtype, accumulate_dtype))
                    tile *= gaussian
                    logits[(slice(None), *sl)] += tile
                bar.update(len(batch))
                del tiles, out
            if per_fold:
                torch.div(logits, weight_map, out=logits)
                total = logits if total is None else total.add_(logits)
    if per_fold:
        if model.num_folds > 1:
            total /= model.num_folds
    else:
        total = logits.div_(weight_map.mul_(model.num_folds))
    if accumulate_dtype == torch.float16 and not bool(torch.isfinite(total).all()):
        raise RuntimeError("the float16 logit accumulator overflowed; predict with accumulate_dtype=torch.float32")
    return total[(slice(None), *revert_padding[1:])]


@torch.inference_mode()
def predict_logits(model: LoadedModel, data_czyx: torch.Tensor | np.ndarray, step_size: float = 0.5,
                   progress: bool = False, accumulate_dtype: torch.dtype = torch.float16,
                   tile_batch_size: int = 1, mixed_precision: bool | None = None,
                   results_device: torch.device | None = None) -> torch.Tensor:
    """Sliding-window logits of a preprocessed (channels, z, y, x) array, averaged over the model's folds.

    The result lies on ``results_device`` (default: the model's device; the CPU when that runs out of memory).
    ``mixed_precision`` (default: on for CUDA) runs the network under autocast, as nnU-Net does.
    """
    if not 0 < step_size <= 1:
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if tile_batch_size < 1:
        raise ValueError("tile_batch_size must be at least 1")
    data = torch.as_tensor(data_czyx)
    if data.ndim != 4:
        raise ValueError(f"expected a (channels, z, y, x) array, got shape {tuple(data.shape)}")
    if data.shape[0] != model.num_input_channels:
        raise ValueError(f"the model expects {model.num_input_channels} input channel(s), got {data.shape[0]}")
    results_device = results_device or model.device
    mixed_precision = model.device.type == "cuda" if mixed_precision is None else mixed_precision

    def run(on: torch.device) -> torch.Tensor:
        return _sliding_window(model, data, step_size, on, accumulate_dtype, tile_batch_size, mixed_precision,
                               progress)

    old_benchmark = torch.backends.cudnn.benchmark
    if model.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # all tiles have one shape
    try:
        with model.lock:
            try:
                return run(results_device)
            except RuntimeError as e:
                if results_device.type == "cpu" or not _is_out_of_memory(e):
                    raise
            _empty_cache(results_device)
            logger.warning("not enough %s memory for the logits; accumulating them on the CPU", results_device)
            return run(torch.device("cpu"))
    finally:
        torch.backends.cudnn.benchmark = old_benchmark


def _clean_image(image_xyz: np.ndarray) -> np.ndarray:
    """(1, z, y, x) float32 copy of the image; NaN becomes 0 and +-inf the largest/smallest finite value."""
    data = np.ascontiguousarray(np.asarray(image_xyz).transpose(2, 1, 0), dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        values = data[finite]
        high, low = (float(values.max()), float(values.min())) if values.size else (0.0, 0.0)
        np.nan_to_num(data, copy=False, nan=0.0, posinf=high, neginf=low)
        logger.warning("the image has %d non-finite voxels; they were replaced before prediction",
                       int((~finite).sum()))
    return data[None]


def _check_spacing(spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputImageError(f"invalid voxel spacing {tuple(spacing_xyz)}: need three positive sizes in mm")
    return spacing


def _labels_in_place(model: LoadedModel, logits: torch.Tensor, properties: dict) -> np.ndarray:
    """Argmax on the logits' own device, then nnU-Net's uncrop and transpose (no resampling needed here)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    wide = len(model.label_manager.foreground_labels) >= 255
    seg = logits.argmax(0).to(torch.int16 if wide else torch.uint8).cpu().numpy()
    full = np.zeros(properties["shape_before_cropping"], dtype=np.uint16 if wide else np.uint8)
    full = insert_crop_into_image(full, seg.astype(full.dtype, copy=False), properties["bbox_used_for_cropping"])
    return full.transpose(model.plans_manager.transpose_backward)


def predict_labels(model: LoadedModel, image_xyz: np.ndarray, spacing_xyz: Sequence[float], step_size: float = 0.5,
                   device: torch.device | str | None = None, return_probabilities: bool = False,
                   progress: bool = False, *, accumulate_dtype: torch.dtype = torch.float16,
                   tile_batch_size: int = 1, mixed_precision: bool | None = None
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Label map (x, y, z) of one 3D image with the model's own preprocessing, sliding window and export.

    ``image_xyz`` is in nibabel's axis order with voxel sizes ``spacing_xyz`` (mm). Returns a uint8 array of the
    input's shape (uint16 for models with 255 or more labels); with ``return_probabilities`` also the softmax
    probabilities as float32 (classes, z, y, x) at the input's shape. ``device`` must be the model's device
    (it is where the model was loaded; None means that one).
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    if device is not None:
        from .device import as_torch_device

        wanted = as_torch_device(device)
        if wanted.type != model.device.type:
            raise ValueError(f"the model was loaded on {model.device}, not on {wanted}")
    image = np.asarray(image_xyz)
    if image.ndim != 3:
        raise InputImageError(f"expected a 3D image, got shape {image.shape}")
    if model.num_input_channels != 1:
        raise ValueError(f"model {model.result_folder.name} needs {model.num_input_channels} input channels")
    spacing_zyx = list(reversed(_check_spacing(spacing_xyz)))

    properties = {"spacing": spacing_zyx}
    data, _, properties = model.preprocessor.run_case_npy(_clean_image(image), None, properties, model.plans_manager,
                                                          model.configuration_manager, model.dataset_json)
    logits = predict_logits(model, torch.from_numpy(data), step_size, progress=progress,
                            accumulate_dtype=accumulate_dtype, tile_batch_size=tile_batch_size,
                            mixed_precision=mixed_precision)
    del data

    same_shape = tuple(logits.shape[1:]) == tuple(properties["shape_after_cropping_and_before_resampling"])
    if same_shape and not return_probabilities and not model.label_manager.has_regions:
        seg_zyx = _labels_in_place(model, logits, properties)
        probabilities = None
    else:
        result = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.cpu(), model.plans_manager, model.configuration_manager, model.label_manager, properties,
            return_probabilities=return_probabilities, num_threads_torch=torch.get_num_threads())
        seg_zyx, probabilities = result if return_probabilities else (result, None)
    del logits
    seg_zyx = np.asarray(seg_zyx)
    if seg_zyx.dtype != np.uint8 and len(model.label_manager.foreground_labels) < 255:
        seg_zyx = seg_zyx.astype(np.uint8)
    labels_xyz = np.ascontiguousarray(seg_zyx.transpose(2, 1, 0))
    if return_probabilities:
        return labels_xyz, np.asarray(probabilities, dtype=np.float32)
    return labels_xyz
