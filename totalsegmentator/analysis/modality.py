"""CT or MR? (``totalseg_get_modality``, formats.md §18).

The official tool uses xgboost classifiers that are not part of this project. We use what makes CT different
from MR by construction: CT voxels are calibrated Hounsfield units, so every CT that contains air (outside the
body, lungs, bowel, sinuses) has a cluster of voxels near -1000 and fat gives many voxels in -150..-50; MR
intensities are arbitrary and (almost) never that negative.

Whole-image method (default), two pieces of evidence, each the log10 of a voxel fraction relative to 0.1 %,
clipped to ±3:

* ``e_air``: fraction of voxels in [-1100, -900] (air),
* ``e_neg``: fraction of voxels in [-1100, -50] (air, lung, fat; padding values like -2048/-3024 excluded),

``logit = 1.0 * e_air + 1.5 * e_neg``; ``p(CT) = 1 / (1 + exp(-logit))``. A CT with no air and no fat (e.g. cropped
inside the skull) is reported as MR; use ``-n`` for such images.

ROI method (``-n``): additionally segments ``total_mr`` (fast) and checks whether the median intensities of
structures with a narrow HU range on CT fall into it (muscles -30..100 HU, brain 15..60, spinal cord 10..80,
esophagus -200..100); ``logit_roi = 8 * (fraction plausible - 0.5)`` is added to the image logit.
The output probability is that of the reported modality, rounded to 4 decimals.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import nibabel as nib
import numpy as np

from ..errors import InputImageError

AIR_RANGE = (-1100.0, -900.0)
NEGATIVE_RANGE = (-1100.0, -50.0)
REFERENCE_FRACTION = 1e-3
EVIDENCE_CLIP = 3.0
W_AIR, W_NEG = 1.0, 1.5
MAX_SAMPLES = 4_000_000

ROI_FEATURES = ("brain", "esophagus", "colon", "spinal_cord", "scapula_left", "scapula_right", "femur_left",
                "femur_right", "hip_left", "hip_right", "gluteus_maximus_left", "gluteus_maximus_right",
                "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right")
CT_PLAUSIBLE_HU: dict[str, tuple[float, float]] = {
    "brain": (15.0, 60.0), "spinal_cord": (10.0, 80.0), "esophagus": (-200.0, 100.0),
    **{m: (-30.0, 100.0) for m in ("gluteus_maximus_left", "gluteus_maximus_right", "autochthon_left",
                                   "autochthon_right", "iliopsoas_left", "iliopsoas_right")},
}
ROI_WEIGHT = 8.0


def _evidence(fraction: float) -> float:
    return float(np.clip(math.log10((fraction + 1e-9) / REFERENCE_FRACTION), -EVIDENCE_CLIP, EVIDENCE_CLIP))


def _sample(data: np.ndarray) -> np.ndarray:
    flat = np.asarray(data).ravel()
    step = max(1, flat.size // MAX_SAMPLES)
    return flat[::step]


def image_logit(data: np.ndarray) -> float:
    """Log-odds that the intensities are CT Hounsfield units (see module docstring)."""
    v = _sample(data).astype(np.float32)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise InputImageError("image has no finite intensities")
    p_air = float(np.count_nonzero((v >= AIR_RANGE[0]) & (v <= AIR_RANGE[1]))) / v.size
    p_neg = float(np.count_nonzero((v >= NEGATIVE_RANGE[0]) & (v <= NEGATIVE_RANGE[1]))) / v.size
    return W_AIR * _evidence(p_air) + W_NEG * _evidence(p_neg)


def roi_logit(roi_intensities: Mapping[str, float | None]) -> float:
    """Log-odds from ROI median intensities; 0 when none of the checked structures is available."""
    checked = [(n, v) for n, v in roi_intensities.items() if n in CT_PLAUSIBLE_HU and v is not None]
    if not checked:
        return 0.0
    plausible = sum(CT_PLAUSIBLE_HU[n][0] <= float(v) <= CT_PLAUSIBLE_HU[n][1] for n, v in checked)
    return ROI_WEIGHT * (plausible / len(checked) - 0.5)


def _decide(logit: float) -> dict[str, Any]:
    p_ct = 1.0 / (1.0 + math.exp(-logit))
    if p_ct >= 0.5:
        return {"modality": "ct", "probability": round(p_ct, 4)}
    return {"modality": "mr", "probability": round(1.0 - p_ct, 4)}


def _image_data(img: Any) -> np.ndarray:
    if isinstance(img, (str, Path)):
        from ..io.nifti import load_input_image

        img = load_input_image(img)
    if isinstance(img, nib.spatialimages.SpatialImage):
        return np.asanyarray(img.dataobj)
    return np.asarray(img)


def modality_from_image(img: Any, roi_intensities: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """``{"modality": "ct"|"mr", "probability": p}`` from the image (Nifti1Image, path or array), optionally
    combined with ROI median intensities (raw, not normalised)."""
    logit = image_logit(_image_data(img))
    if roi_intensities:
        logit += roi_logit(roi_intensities)
    return _decide(logit)


def get_modality(img: Any) -> dict[str, Any]:
    """Official API name: whole-image method."""
    return modality_from_image(img)


def get_modality_from_rois(img: Any, device: str = "gpu", quiet: bool = True) -> dict[str, Any]:
    """ROI method: segment ``total_mr`` (fast) and combine ROI and whole-image evidence."""
    from ..python_api import totalsegmentator  # lazy: heavy, and not needed by the whole-image method

    if isinstance(img, (str, Path)):
        from ..io.nifti import load_input_image

        img = load_input_image(img)
    _, stats = totalsegmentator(img, None, ml=True, task="total_mr", fast=True, statistics=True,
                                stats_aggregation="median", statistics_exclude_masks_at_border=False,
                                device=device, quiet=quiet)
    rois = {n: (float(stats[n]["intensity"]) if float(stats[n].get("volume", 0.0)) > 0 else None)
            for n in ROI_FEATURES if n in stats}
    return modality_from_image(img, rois)
