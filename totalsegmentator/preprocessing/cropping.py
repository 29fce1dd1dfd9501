"""Crop an image to the bounding box of a mask plus a margin in mm, and paste results back (§4.2 steps 5, 19).

Margins in mm become voxels per axis as ``int(margin_mm / voxel_size)`` (truncation); the box is the
inclusive extent of ``mask > 0`` grown by that many voxels on both sides and clipped to the image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BBox = tuple[slice, slice, slice]


def margin_voxels(margin_mm: Sequence[float], spacing_xyz: Sequence[float]) -> tuple[int, int, int]:
    """``int(mm / voxel size)`` per axis."""
    return tuple(int(float(m) / float(s)) for m, s in zip(margin_mm, spacing_xyz))  # type: ignore[return-value]


def bbox_from_mask(mask: np.ndarray, margin_mm: Sequence[float] = (0, 0, 0),
                   spacing_xyz: Sequence[float] = (1, 1, 1)) -> BBox | None:
    """Bounding box of ``mask > 0`` enlarged by ``margin_mm`` (clipped), or None for an empty mask."""
    margins = margin_voxels(margin_mm, spacing_xyz)
    foreground = np.asarray(mask) > 0
    box = []
    for axis in range(3):
        other = tuple(a for a in range(foreground.ndim) if a != axis)
        hit = np.flatnonzero(np.any(foreground, axis=other))
        if hit.size == 0:
            return None
        lo = max(0, int(hit[0]) - margins[axis])
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + margins[axis])
        box.append(slice(lo, hi))
    return box[0], box[1], box[2]


def crop_affine(affine: np.ndarray, bbox: BBox) -> np.ndarray:
    """``affine`` with its origin moved to the corner voxel of ``bbox``."""
    affine = np.asarray(affine, dtype=np.float64)
    start = np.array([sl.start for sl in bbox], dtype=np.float64)
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return out


def crop_to_bbox(data: np.ndarray, affine: np.ndarray, bbox: BBox,
                 dtype: np.dtype | type | None = np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``data`` to ``bbox`` -> ``(cropped copy, shifted affine)``; cast to ``dtype`` (official: int32 for
    images, uint8 for masks; None keeps the type)."""
    cropped = data[bbox].astype(dtype if dtype is not None else data.dtype, copy=True)
    return cropped, crop_affine(affine, bbox)


def uncrop(data: np.ndarray, bbox: BBox, original_shape: Sequence[int]) -> np.ndarray:
    """Paste ``data`` (the shape of ``bbox``) into zeros of ``original_shape``."""
    expected = tuple(sl.stop - sl.start for sl in bbox)
    if tuple(data.shape[:3]) != expected:
        raise ValueError(f"data shape {data.shape} does not match the crop box shape {expected}")
    out = np.zeros(tuple(original_shape), dtype=data.dtype, order="F" if data.flags.f_contiguous else "C")
    out[bbox] = data
    return out
