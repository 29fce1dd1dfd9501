"""Crop an image to the body (``crop_to_body``, formats.md §20).

The body mask comes from task ``body`` in fast mode (dataset 300, 6 mm; body postprocessing applied by the
pipeline); :func:`crop_to_mask_bbox` is the pure part: bounding box of the mask, enlarged by ``margin_mm``
converted to whole voxels per axis (``int(margin_mm / voxel_size)``), clipped to the image, data cast to int32,
affine origin moved to the box corner, fresh header.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputImageError

DEFAULT_MARGIN_MM = 3.0


def mask_bbox(mask: np.ndarray, margin_vox: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    """Slices of the bounding box of ``mask`` > 0 enlarged by ``margin_vox`` and clipped; None when empty."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        lo = max(int(hits[0]) - int(margin_vox[axis]), 0)
        hi = min(int(hits[-1]) + 1 + int(margin_vox[axis]), mask.shape[axis])
        out.append(slice(lo, hi))
    return tuple(out)


def crop_to_mask_bbox(img: nib.Nifti1Image, body_mask: np.ndarray, margin_mm: float = DEFAULT_MARGIN_MM,
                      only_trunc: bool = False) -> nib.Nifti1Image:
    """``img`` cropped to the body: label 1 (``body_trunc``) when ``only_trunc``, else any label > 0."""
    body_mask = np.asarray(body_mask)
    if body_mask.shape[:3] != img.shape[:3]:
        raise InputImageError(f"body mask shape {body_mask.shape} does not match image shape {img.shape[:3]}")
    mask = body_mask == 1 if only_trunc else body_mask > 0
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    margin_vox = tuple(int(margin_mm / z) for z in zooms)
    box = mask_bbox(mask, margin_vox)
    if box is None:
        what = "body_trunc" if only_trunc else "body"
        raise InputImageError(f"no {what} found in the image; nothing to crop to")
    data = np.asanyarray(img.dataobj)[box]
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        data = np.trunc(np.nan_to_num(data))
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array([s.start for s in box], float) + img.affine[:3, 3]
    return nib.Nifti1Image(data.astype(np.int32), affine)


def crop_to_body(input_path: str | Path | nib.Nifti1Image, output_path: str | Path | None = None,
                 only_trunc: bool = False, nr_thr_resamp: int = 1, device: str = "gpu", quiet: bool = False,
                 verbose: bool = False) -> nib.Nifti1Image:
    """Segment the body (task ``body``, fast) and crop the input to it; writes ``output_path`` when given."""
    from ..io.nifti import load_input_image, save_nifti_atomic
    from ..python_api import totalsegmentator  # lazy: the pipeline is heavy

    img = load_input_image(input_path)
    seg: Any = totalsegmentator(img, None, ml=True, task="body", fast=True, nr_thr_resamp=nr_thr_resamp,
                                nr_thr_saving=1, device=device, quiet=quiet, verbose=verbose)
    cropped = crop_to_mask_bbox(img, np.asanyarray(seg.dataobj), DEFAULT_MARGIN_MM, only_trunc)
    if output_path is not None:
        save_nifti_atomic(cropped, output_path)
    return cropped
