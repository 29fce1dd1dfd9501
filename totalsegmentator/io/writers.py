"""Segmentation writers: one file per class, or one multilabel file with label names (formats.md §9, §10).

Output headers are copies of the reference (input) header: extensions, qform/sform codes and the rest are
kept, the data type becomes uint8 and scaling is unset. Every file is written atomically.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from .label_header import LabelMap, add_label_map_to_nifti, remove_label_extensions
from .nifti import DEFAULT_COMPRESSLEVEL, nifti_bytes, save_nifti_atomic, write_bytes_atomic

PathLike = Union[str, os.PathLike]

# above this many voxels per-class files are written one at a time (each writer thread holds a full mask)
SINGLE_THREAD_VOXELS = 512 * 512 * 1000


def segmentation_image(seg_xyz: np.ndarray, ref_img: nib.Nifti1Image, affine: np.ndarray | None = None,
                       keep_label_extensions: bool = False) -> nib.Nifti1Image:
    """A uint8 image of ``seg_xyz`` with a copy of ``ref_img``'s header (codes kept) and ``affine``
    (default: the reference affine). Label-name extensions of the reference are dropped unless asked."""
    affine = np.asarray(ref_img.affine if affine is None else affine, dtype=np.float64)
    header = ref_img.header.copy() if isinstance(ref_img.header, nib.Nifti1Header) else None
    if header is not None and not keep_label_extensions:
        remove_label_extensions(header)
    img = nib.Nifti1Image(np.asarray(seg_xyz, dtype=np.uint8), affine, header=header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(None, None)
    if header is not None and not np.allclose(affine, header.get_best_affine()):
        # nibabel would store a new affine with sform 'aligned' / qform 'unknown'; keep the input's codes
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        if qcode or scode:
            img.set_sform(affine, code=scode)
            img.set_qform(affine, code=qcode)
    return img


def write_per_class(seg_xyz: np.ndarray, class_map: Mapping[int, str], ref_img: nib.Nifti1Image,
                    out_dir: PathLike, nr_threads: int = 6, compresslevel: int = DEFAULT_COMPRESSLEVEL,
                    affine: np.ndarray | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.nii.gz`` (uint8 0/1) for every class of ``class_map``, also empty ones.

    Files are written in parallel threads (gzip releases the GIL); volumes above ``SINGLE_THREAD_VOXELS``
    are written one at a time to bound memory. Returns the paths in class-map order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seg = np.asarray(seg_xyz)
    template = segmentation_image(np.zeros((1, 1, 1), np.uint8), ref_img, affine)
    affine = template.affine
    header = template.header
    present = None
    if seg.dtype == np.uint8:
        present = set(np.flatnonzero(np.bincount(seg.ravel(), minlength=256)).tolist())
    empty_file: list[bytes] = []  # all empty classes share one compressed file content

    def write_one(item: tuple[int, str]) -> Path:
        label, name = item
        path = out_dir / f"{name}.nii.gz"
        if present is not None and label not in present:
            if not empty_file:
                empty = nib.Nifti1Image(np.zeros(seg.shape, np.uint8), affine, header=header)
                empty_file.append(nifti_bytes(empty, gz=True, compresslevel=compresslevel))
            return write_bytes_atomic(empty_file[0], path)
        mask = (seg == label).view(np.uint8)
        return save_nifti_atomic(nib.Nifti1Image(mask, affine, header=header), path, compresslevel)

    items = list(class_map.items())
    threads = max(1, int(nr_threads))
    if seg.size > SINGLE_THREAD_VOXELS:
        threads = 1
    if threads == 1 or len(items) <= 1:
        return [write_one(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(write_one, items))


def write_multilabel(seg_xyz: np.ndarray, label_map: LabelMap, ref_img: nib.Nifti1Image, path: PathLike,
                     affine: np.ndarray | None = None,
                     compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write the multilabel uint8 volume with the label-name extension appended after the copied ones."""
    img = add_label_map_to_nifti(segmentation_image(seg_xyz, ref_img, affine), label_map)
    return save_nifti_atomic(img, path, compresslevel)


def write_multilabel_image(img: nib.Nifti1Image, path: PathLike,
                           compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write an already built multilabel image (e.g. from :func:`multilabel_image`) atomically."""
    return save_nifti_atomic(img, path, compresslevel)


def multilabel_image(seg_xyz: np.ndarray, label_map: LabelMap, ref_img: nib.Nifti1Image,
                     affine: np.ndarray | None = None) -> nib.Nifti1Image:
    """The in-memory multilabel image (what ``totalsegmentator()`` returns), label extension included."""
    return add_label_map_to_nifti(segmentation_image(seg_xyz, ref_img, affine), label_map)


def write_mask(mask_xyz: np.ndarray, affine: np.ndarray, path: PathLike,
               compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write a uint8 mask with a fresh header (derived masks such as ``body``/``skin``)."""
    img = nib.Nifti1Image(np.asarray(mask_xyz, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    return save_nifti_atomic(img, path, compresslevel)
