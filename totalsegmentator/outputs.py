"""Where results go on disk: per-class NIfTI, one multilabel NIfTI, DICOM outputs, derived masks, reports.

File names and locations follow the official tool (formats.md sections 9 and 13).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from .io import writers

NIFTI_TYPES = {"nifti"}
DICOM_TYPES = {"dicom_seg", "dicom_rtstruct"}


def multilabel_image(labels: np.ndarray, affine: np.ndarray, ref_img: nib.Nifti1Image,
                     label_map: dict[int, str]) -> nib.Nifti1Image:
    """The returned image: uint8 labels, the input's header, the label-name extension."""
    return writers.multilabel_image(labels, label_map, ref_img, affine)


def extras_dir(output: Path, multilabel: bool) -> Path:
    """Statistics, previews and derived masks go inside ``-o`` (per-class) or beside the file (``--ml``)."""
    return output.parent if multilabel else output


def write_nifti_outputs(labels: np.ndarray, affine: np.ndarray, ref_img: nib.Nifti1Image,
                        label_map: dict[int, str], output: Path, multilabel: bool, nr_threads: int,
                        ml_label_map: dict[int, str] | None = None, ml_labels: np.ndarray | None = None) -> list[Path]:
    """``--ml``: one file with the label extension; else one ``<class>.nii.gz`` per class inside ``output``."""
    if multilabel:
        output.parent.mkdir(parents=True, exist_ok=True)
        return [writers.write_multilabel(ml_labels if ml_labels is not None else labels, ml_label_map or label_map,
                                         ref_img, output, affine)]
    return writers.write_per_class(labels, label_map, ref_img, output, nr_threads=nr_threads, affine=affine)


def write_body_derived_masks(labels: np.ndarray, class_map: dict[int, str], intensities: np.ndarray,
                             affine: np.ndarray, out_dir: Path) -> list[Path]:
    """``body.nii.gz`` and ``skin.nii.gz`` of task body (per-class output only)."""
    from . import postprocessing as post

    ids = {name: idx for idx, name in class_map.items()}
    body = post.body_mask(labels, (ids["body_trunc"], ids["body_extremities"]))
    skin = post.skin_mask(body, intensities)
    return [writers.write_mask(body, affine, out_dir / "body.nii.gz"),
            writers.write_mask(skin, affine, out_dir / "skin.nii.gz")]
