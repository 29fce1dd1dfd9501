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

Speed without changing a single logit (each checked against nnU-Net in the tests):

* models with the same preprocessing (the five parts of task total) preprocess an unchanged image once;
* the Gaussian weights are built as an outer product (bit-identical to ``compute_gaussian``, 4x faster);
* an image within one tile gets its accumulator from that tile instead of zeros + tile (same rounding);
  when only its labels are wanted (one fold, float32 on the CPU), the head and the argmax run plane by plane
  with the same weighting and rounding (``FusedUNet.labels``): the tile's logits (~1 GB) are never written;
* the float16 overflow check is one min/max reduction; the argmax is ``argmax.first_max_indices`` (on the
  CPU 2-3x faster than ``torch.max(..).indices``, the same indices).

``mixed_precision`` (or the environment variable ``TOTALSEG_PRECISION``) runs the network in bfloat16/float16
when asked; the default is nnU-Net's choice of type (float32 on the CPU, float16 autocast on CUDA). Float32 on
the CPU runs nnU-Net's plain U-Net through our fused forward (``fused_unet.py``: same arithmetic up to the order
of sums, about 1.3x faster); ``"exact"`` keeps nnU-Net's own modules, for logits identical bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import logging
import os
import threading
import weakref
import zlib
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputImageError
from ..options import PRECISION_ENV, PRECISIONS
from ..timing import StageTimer
from .argmax import first_max_indices
from .compile import network_runner, wants_compile
from .fused_unet import FusedUNet, fused_forward
from .model import LoadedModel

logger = logging.getLogger(__name__)

# Seconds spent in the parts of every prediction of this process (read by the benchmarks): "preprocess" (nnU-Net's
# crop and normalisation, or reuse), "forward" (network calls; asynchronous on CUDA), "sliding_window" (the whole
# tile loop with accumulation, forward included) and "export" (argmax, resampling back, uncrop).
STAGE_TIMER = StageTimer()

# nnUNetPredictor's Gaussian parameters
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
GAUSSIAN_VALUE_SCALING = 10


def tile_slicers(image_size: Sequence[int], patch_size: Sequence[int], step_size: float) -> list[tuple[slice, ...]]:
    """Spatial slices of all sliding-window tiles, in nnU-Net's order (last axis fastest)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    steps = compute_steps_for_sliding_window(tuple(image_size), tuple(patch_size), step_size)
    return [tuple(slice(s, s + p) for s, p in zip(start, patch_size)) for start in itertools.product(*steps)]


@functools.lru_cache(maxsize=4)
def gaussian_weights(tile_size: tuple[int, ...], sigma_scale: float, value_scaling_factor: float,
                     dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """nnU-Net's ``compute_gaussian``, bit for bit, about 4x faster: its ``gaussian_filter`` of a centred delta
    is the outer product of three 1-D kernels (every output sums one non-zero product), built here in the same
    multiplication order. Treat the result as read-only (it is cached)."""
    from scipy.ndimage import gaussian_filter1d

    kernels = []
    for n in tile_size:
        delta = np.zeros(n)
        delta[n // 2] = 1
        kernels.append(gaussian_filter1d(delta, n * sigma_scale, 0, mode="constant", cval=0))
    weights = kernels[0].reshape(-1, *([1] * (len(tile_size) - 1)))
    for axis, kernel in enumerate(kernels[1:], start=1):
        shape = [1] * len(tile_size)
        shape[axis] = -1
        weights = weights * kernel.reshape(shape)
    weights /= np.max(weights) / value_scaling_factor
    result = torch.from_numpy(weights).to(device=device, dtype=dtype)
    zero = result == 0  # no weight may be 0 (division by the summed weights): the smallest other one instead
    result.masked_fill_(zero, result.masked_fill(zero, float("inf")).min())
    return result


def tile_weights(model: LoadedModel, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """nnU-Net's Gaussian weights of ``model``'s tile as ``dtype`` on ``device`` (default: the model's), cached."""
    return gaussian_weights(tuple(model.patch_size), GAUSSIAN_SIGMA_SCALE, GAUSSIAN_VALUE_SCALING, dtype,
                            model.device if device is None else device)


def warm_up(model: LoadedModel, accumulate_dtype: torch.dtype = torch.float16) -> None:
    """Compute what the first prediction with ``model`` would compute first (its tile's Gaussian weights in the
    accumulator's type), e.g. in a background thread while the input is still being read."""
    tile_weights(model, accumulate_dtype)


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
                    accumulate_dtype: torch.dtype, tile_batch_size: int, autocast_dtype: torch.dtype | None,
                    progress: bool, compile_mode: str = "off", fused: bool = False) -> torch.Tensor:
    """Mean over folds of the Gaussian-weighted tile logits, shape (classes, *data.shape[1:])."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    compute_device = model.device
    patch = model.patch_size
    # images smaller than a tile are padded (centred, zeros) as nnU-Net does
    padded, revert_padding = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    slicers = tile_slicers(padded.shape[1:], patch, step_size)
    padded = padded.to(results_device)

    gaussian = tile_weights(model, accumulate_dtype, results_device)
    weight_map = torch.zeros(padded.shape[1:], dtype=accumulate_dtype, device=results_device)
    for sl in slicers:
        weight_map[sl] += gaussian

    autocast = contextlib.nullcontext() if autocast_dtype is None else \
        torch.autocast(compute_device.type, dtype=autocast_dtype)
    # float16 reproduces nnU-Net operation by operation: each fold divided by the weights, then the mean of folds.
    # float32 keeps one accumulator for all folds and divides once (same result, one logits array less).
    per_fold = accumulate_dtype == torch.float16
    total = logits = None
    with tqdm(total=len(slicers) * model.num_folds, disable=not progress, desc="Predicting", unit="tile",
              leave=False) as bar:
        # one fused forward serves every fold: it reads the weights the fold switch loads into the network
        use_fused = fused and autocast_dtype is None and compute_device.type == "cpu"
        fast = fused_forward(model.network) if use_fused else None
        # the fused forward is faster than a compile on the CPU: compile only when asked for explicitly
        compiled = (wants_compile(compile_mode, model, len(slicers))
                    and not (fast is not None and compile_mode == "auto"))
        for network in model.fold_networks():
            if compiled:
                network = network_runner(model)
            elif fast is not None:
                network = fast
            if logits is None or per_fold:
                # one tile covering the (padded) image: zeros + tile is the tile itself, rounded once, so the
                # accumulator is made from it instead of being filled with zeros first
                logits = None if len(slicers) == 1 else torch.zeros(
                    (model.num_classes, *padded.shape[1:]), dtype=accumulate_dtype, device=results_device)
            for batch in _batches(slicers, tile_batch_size):
                tiles = torch.stack([padded[(slice(None), *sl)] for sl in batch]).to(compute_device)
                with autocast, STAGE_TIMER.stage("forward"):
                    out = network(tiles)
                for i, sl in enumerate(batch):
                    # float32 network output stays float32 until added (as in nnU-Net); fp16 output is upcast
                    tile = out[i].to(device=results_device, dtype=torch.promote_types(out.dtype, accumulate_dtype))
                    tile *= gaussian
                    if logits is None:
                        logits = tile.to(accumulate_dtype)
                    else:
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
    if accumulate_dtype == torch.float16 and not _all_finite(total):
        raise RuntimeError("the float16 logit accumulator overflowed; predict with accumulate_dtype=torch.float32")
    return total[(slice(None), *revert_padding[1:])]


def _precision_setting(mixed_precision: bool | str | None) -> bool | str:
    """``mixed_precision``, or ``$TOTALSEG_PRECISION`` (auto when unset) for None."""
    if mixed_precision is None:
        return os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    return mixed_precision


def autocast_dtype_for(device: torch.device, mixed_precision: bool | str | None) -> torch.dtype | None:
    """The autocast type of the network for a ``mixed_precision`` setting (None: no autocast, float32).

    ``None`` takes the setting from the environment variable ``TOTALSEG_PRECISION`` (auto when unset)."""
    mixed_precision = _precision_setting(mixed_precision)
    if mixed_precision in ("auto", "exact"):
        return torch.float16 if device.type == "cuda" else None
    if mixed_precision is False or mixed_precision == "fp32":
        return None
    if mixed_precision is True:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if mixed_precision == "fp16":
        return torch.float16
    if mixed_precision == "bf16":
        return torch.bfloat16
    raise ValueError(f"unknown precision {mixed_precision!r}; choose one of {', '.join(PRECISIONS)}")


def _all_finite(t: torch.Tensor) -> bool:
    """Whether no element is NaN or infinite, by one min/max reduction (NaN propagates into both)."""
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


@torch.inference_mode()
def predict_logits(model: LoadedModel, data_czyx: torch.Tensor | np.ndarray, step_size: float = 0.5,
                   progress: bool = False, accumulate_dtype: torch.dtype = torch.float16,
                   tile_batch_size: int = 1, mixed_precision: bool | str | None = None,
                   results_device: torch.device | None = None, compile_mode: str = "off") -> torch.Tensor:
    """Sliding-window logits of a preprocessed (channels, z, y, x) array, averaged over the model's folds.

    The result lies on ``results_device`` (default: the model's device; the CPU when that runs out of memory).
    ``mixed_precision`` chooses the network's precision: None (default: ``$TOTALSEG_PRECISION``, else "auto") or
    "auto" is nnU-Net's choice, float16 autocast on CUDA and float32 elsewhere; False or "fp32" is float32
    everywhere (on CUDA without TensorFloat-32 products for the call); float32 on the CPU uses the fused forward
    (``fused_unet.py``) unless the setting is "exact", which is nnU-Net's choice run through nnU-Net's own modules
    (logits identical bit for bit). True is autocast with the device's usual half type (CUDA float16, CPU
    bfloat16); "fp16" / "bf16" is autocast with that type.
    Half precision changes the argmax of near-ties (see the README, "Speed and memory"); logits are accumulated
    as ``accumulate_dtype`` either way. ``compile_mode`` (auto/on/off) runs a single-fold network through
    ``torch.compile`` (see ``inference/compile.py``).
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
    mixed_precision = _precision_setting(mixed_precision)
    autocast_dtype = autocast_dtype_for(model.device, mixed_precision)
    fused = mixed_precision != "exact"

    def run(on: torch.device) -> torch.Tensor:
        return _sliding_window(model, data, step_size, on, accumulate_dtype, tile_batch_size, autocast_dtype,
                               progress, compile_mode, fused)

    old_flags = _cuda_flags()
    if model.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # all tiles have one shape
        if autocast_dtype is None:  # float32 asked for: no TensorFloat-32 (10-bit mantissa) products either
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
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
        _set_cuda_flags(old_flags)


def _cuda_flags() -> tuple[bool, bool, bool]:
    """cuDNN's autotuning and the TensorFloat-32 switches of cuDNN and of CUDA matrix products."""
    return (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)


def _set_cuda_flags(flags: tuple[bool, bool, bool]) -> None:
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


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


def preprocessing_fingerprint(model: LoadedModel) -> str:
    """Everything nnU-Net's preprocessing of a model depends on; models with equal fingerprints (e.g. the five
    parts of task total) produce identical preprocessed images."""
    cm = model.configuration_manager
    pm = model.plans_manager
    config = {key: cm.configuration.get(key) for key in (
        "spacing", "normalization_schemes", "use_mask_for_norm", "resampling_fn_data", "resampling_fn_data_kwargs",
        "resampling_fn_seg", "resampling_fn_seg_kwargs", "preprocessor_name")}
    return json.dumps({"config": config, "transpose": list(pm.transpose_forward),
                       "intensities": pm.foreground_intensity_properties_per_channel,
                       "channels": model.dataset_json.get("channel_names", model.dataset_json.get("modality")),
                       "preprocessor": type(model.preprocessor).__name__}, sort_keys=True, default=str)


class _SharedPreprocessing:
    """The preprocessed versions of the image last predicted, reused by models with the same preprocessing.

    An entry is tied to the image array by a weak reference (it disappears with the array) and is only used
    while the array still has the same voxels (CRC-32 of its bytes, ~10 ms per 40 MB)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: the weak-reference callback may run inside a locked section
        self._ref: weakref.ref | None = None
        self._signature: tuple | None = None
        self._results: dict[str, tuple[np.ndarray, dict]] = {}

    @staticmethod
    def _signature_of(image: np.ndarray, spacing_zyx: list[float]) -> tuple | None:
        if not (image.flags.c_contiguous or image.flags.f_contiguous):
            return None
        flat = image if image.flags.c_contiguous else image.T  # the same bytes, C-ordered
        crc = zlib.crc32(memoryview(flat).cast("B", shape=[flat.nbytes])) if flat.nbytes else 0
        return (image.shape, image.dtype.str, image.strides, image.__array_interface__["data"][0],
                tuple(spacing_zyx), crc)

    def get(self, image: np.ndarray, spacing_zyx: list[float], fingerprint: str):
        signature = self._signature_of(image, spacing_zyx)
        with self._lock:
            ref = self._ref  # read once: the weak reference's callback may clear it from another thread
            same = (signature is not None and ref is not None and ref() is image and self._signature == signature)
            if not same:
                self._clear()
                if signature is not None:
                    try:
                        self._ref = weakref.ref(image, self._forget)
                    except TypeError:  # an array type without weak references: no sharing
                        return signature, None
                    self._signature = signature
            return signature, self._results.get(fingerprint)

    def put(self, signature: tuple | None, fingerprint: str, result: tuple[np.ndarray, dict]) -> None:
        with self._lock:
            if signature is not None and signature == self._signature:
                self._results[fingerprint] = result

    def _forget(self, dead_ref) -> None:
        """Weak-reference callback (any thread): drop the entries, unless they already belong to a newer image."""
        with self._lock:
            if dead_ref is self._ref:
                self._clear()

    def _clear(self) -> None:
        self._ref, self._signature, self._results = None, None, {}

    def clear(self) -> None:
        with self._lock:
            self._clear()


_shared_preprocessing = _SharedPreprocessing()


def release_shared_preprocessing() -> None:
    """Forget the preprocessed image kept for further models (it goes anyway when the image array goes)."""
    _shared_preprocessing.clear()


def _preprocess_shared(model: LoadedModel, image: np.ndarray, spacing_zyx: list[float]) -> tuple[np.ndarray, dict]:
    """nnU-Net's ``run_case_npy`` of the image, or its result for an earlier model with the same preprocessing."""
    fingerprint = preprocessing_fingerprint(model)
    signature, cached = _shared_preprocessing.get(image, spacing_zyx, fingerprint)
    if cached is not None:
        data, properties = cached
        return data, copy.deepcopy(properties)
    data, _, properties = model.preprocessor.run_case_npy(_clean_image(image), None, {"spacing": list(spacing_zyx)},
                                                          model.plans_manager, model.configuration_manager,
                                                          model.dataset_json)
    # shared between models: the sliding window only reads it (padding and tiles are copies)
    _shared_preprocessing.put(signature, fingerprint, (data, copy.deepcopy(properties)))
    return data, properties


def _check_spacing(spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_xyz)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputImageError(f"invalid voxel spacing {tuple(spacing_xyz)}: need three positive sizes in mm")
    return spacing


def _label_dtype(model: LoadedModel) -> torch.dtype:
    return torch.int16 if len(model.label_manager.foreground_labels) >= 255 else torch.uint8


def _uncropped(model: LoadedModel, seg: torch.Tensor, properties: dict) -> np.ndarray:
    """nnU-Net's uncrop and transpose of a label map at the preprocessed shape (no resampling needed)."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    seg = seg.cpu().numpy()
    full = np.zeros(properties["shape_before_cropping"], dtype=np.uint16 if seg.dtype == np.int16 else np.uint8)
    full = insert_crop_into_image(full, seg.astype(full.dtype, copy=False), properties["bbox_used_for_cropping"])
    return full.transpose(model.plans_manager.transpose_backward)


def _labels_in_place(model: LoadedModel, logits: torch.Tensor, properties: dict) -> np.ndarray:
    """Argmax on the logits' own device, then nnU-Net's uncrop and transpose (no resampling needed here)."""
    return _uncropped(model, first_max_indices(logits, _label_dtype(model)), properties)


def _single_tile_network(model: LoadedModel, data: torch.Tensor, mixed_precision: bool | str | None,
                         compile_mode: str) -> FusedUNet | None:
    """The fused forward when the labels can come straight from one network call: one fold, one tile, float32
    on the CPU (the default there), no compile asked for; else None."""
    if (model.num_folds != 1 or model.device.type != "cpu" or compile_mode == "on"
            or autocast_dtype_for(model.device, mixed_precision) is not None
            or _precision_setting(mixed_precision) == "exact"
            or any(n > p for n, p in zip(data.shape[1:], model.patch_size))):
        return None
    return fused_forward(model.network)


def _single_tile_labels(model: LoadedModel, network: FusedUNet, data: torch.Tensor,
                        accumulate_dtype: torch.dtype) -> torch.Tensor:
    """Labels (z, y, x) of a preprocessed image within one tile, the argmax of the logits exactly as
    ``predict_logits`` would accumulate them (weighted, rounded to ``accumulate_dtype``, divided by the weights)
    without the logits of the whole tile: the head runs plane by plane with the argmax (``FusedUNet.labels``)."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    padded, revert_padding = pad_nd_image(data, model.patch_size, "constant", {"value": 0}, True, None)
    region = tuple(revert_padding[1:])
    weights = tile_weights(model, accumulate_dtype)
    with model.lock, torch.inference_mode():
        with STAGE_TIMER.stage("forward"):
            features = network.features(padded[None])
        return network.labels(features[0], region, _label_dtype(model), weights,
                              network_stage=lambda: STAGE_TIMER.stage("forward"))


def predict_labels(model: LoadedModel, image_xyz: np.ndarray, spacing_xyz: Sequence[float], step_size: float = 0.5,
                   device: torch.device | str | None = None, return_probabilities: bool = False,
                   progress: bool = False, *, accumulate_dtype: torch.dtype = torch.float16,
                   tile_batch_size: int = 1, mixed_precision: bool | str | None = None, compile_mode: str = "off"
                   ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Label map (x, y, z) of one 3D image with the model's own preprocessing, sliding window and export.

    ``image_xyz`` is in nibabel's axis order with voxel sizes ``spacing_xyz`` (mm). Returns a uint8 array of the
    input's shape (uint16 for models with 255 or more labels); with ``return_probabilities`` also the softmax
    probabilities as float32 (classes, z, y, x) at the input's shape. ``device`` must be the model's device
    (it is where the model was loaded; None means that one).
    """
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

    with STAGE_TIMER.stage("preprocess"):
        data, properties = _preprocess_shared(model, image, spacing_zyx)
    data = torch.from_numpy(data)
    same_shape = tuple(data.shape[1:]) == tuple(properties["shape_after_cropping_and_before_resampling"])
    labels_only = same_shape and not return_probabilities and not model.label_manager.has_regions
    single_tile = _single_tile_network(model, data, mixed_precision, compile_mode) if labels_only else None
    with STAGE_TIMER.stage("sliding_window"):
        logits = None
        if single_tile is not None:
            seg = _single_tile_labels(model, single_tile, data, accumulate_dtype)
        else:
            logits = predict_logits(model, data, step_size, progress=progress, accumulate_dtype=accumulate_dtype,
                                    tile_batch_size=tile_batch_size, mixed_precision=mixed_precision,
                                    compile_mode=compile_mode)
    del data
    with STAGE_TIMER.stage("export"):
        probabilities = None
        if single_tile is not None:
            seg_zyx = _uncropped(model, seg, properties)
        elif labels_only:
            seg_zyx = _labels_in_place(model, logits, properties)
        else:
            from nnunetv2.inference.export_prediction import \
                convert_predicted_logits_to_segmentation_with_correct_shape

            result = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits.cpu(), model.plans_manager, model.configuration_manager, model.label_manager, properties,
                return_probabilities=return_probabilities, num_threads_torch=torch.get_num_threads())
            seg_zyx, probabilities = result if return_probabilities else (result, None)
        del logits
        seg_zyx = np.asarray(seg_zyx)
        if seg_zyx.dtype != np.uint8 and _label_dtype(model) == torch.uint8:
            seg_zyx = seg_zyx.astype(np.uint8)
        labels_xyz = np.ascontiguousarray(seg_zyx.transpose(2, 1, 0))
    if return_probabilities:
        return labels_xyz, np.asarray(probabilities, dtype=np.float32)
    return labels_xyz
