"""Merge several class masks of a finished run into one binary mask (``totalseg_combine_masks``).

Groups follow the official tool; ``lungcomm`` (the name used in the published README) is an alias of
``lung``. ``heart`` is broken in the official 2.18.0 tool; here it means: the ``heart`` class when the
source has it (tasks ``total``/``total_mr``), otherwise the union of the five chamber/wall classes of
``heartchambers_highres`` / the v1 ``total`` map (myocardium, both atria, both ventricles).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputImageError, OptionError
from ..io.label_header import add_label_map_to_nifti, load_multilabel_nifti

_VERTEBRAE = (["sacrum", "vertebrae_S1"] + [f"vertebrae_L{i}" for i in range(5, 0, -1)]
              + [f"vertebrae_T{i}" for i in range(12, 0, -1)] + [f"vertebrae_C{i}" for i in range(7, 0, -1)])
_RIBS = [f"rib_left_{i}" for i in range(1, 13)] + [f"rib_right_{i}" for i in range(1, 13)]
HEART_CHAMBERS = ("heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right",
                  "heart_ventricle_right")

CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "lung": ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
             "lung_lower_lobe_right"),
    "lung_left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
    "lung_right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "vertebrae": tuple(_VERTEBRAE),
    "ribs": tuple(_RIBS),
    "vertebrae_ribs": tuple(_VERTEBRAE + _RIBS),
    "heart": ("heart",),  # alternative: HEART_CHAMBERS, see _group_classes
    "pelvis": ("femur_left", "femur_right", "hip_left", "hip_right"),
    "body": ("body_trunc", "body_extremities"),
}
GROUP_ALIASES = {"lungcomm": "lung"}
GROUP_CHOICES = ("lung", "lungcomm", "lung_left", "lung_right", "vertebrae", "ribs", "vertebrae_ribs", "heart",
                 "pelvis", "body")


def canonical_group(class_type: str) -> str:
    """Group name with aliases resolved; OptionError for unknown groups."""
    name = GROUP_ALIASES.get(class_type, class_type)
    if name not in CLASS_GROUPS:
        raise OptionError(f"unknown mask group {class_type!r}; choose from {', '.join(GROUP_CHOICES)}")
    return name


def _group_classes(group: str, available: set[str]) -> list[str]:
    """The classes to merge for ``group`` given the class names the source offers."""
    if group == "heart" and "heart" not in available and any(c in available for c in HEART_CHAMBERS):
        return list(HEART_CHAMBERS)
    return list(CLASS_GROUPS[group])


# --- combining ------------------------------------------------------------------------------------------------

def _combine_from_dir(mask_dir: Path, group: str) -> nib.Nifti1Image:
    available = {p.name[: -len(".nii.gz")] for p in mask_dir.glob("*.nii.gz")}
    classes = _group_classes(group, available)
    missing = [c for c in classes if c not in available]
    if missing:
        raise InputImageError(f"mask group '{group}' needs {', '.join(m + '.nii.gz' for m in missing)} "
                              f"in {mask_dir}")
    combined = None
    affine = None
    for c in classes:
        try:
            img = nib.load(str(mask_dir / f"{c}.nii.gz"))
            data = np.asanyarray(img.dataobj)
        except Exception as e:  # nibabel/gzip raise many unrelated types for broken files
            raise InputImageError(f"cannot read {c}.nii.gz in {mask_dir}: {' '.join(str(e).split())}") from None
        if combined is None:
            combined = np.zeros(data.shape[:3], dtype=bool)
            affine = img.affine
        elif data.shape[:3] != combined.shape:
            raise InputImageError(f"{c}.nii.gz has shape {data.shape[:3]}, expected {combined.shape}")
        combined |= data.reshape(data.shape[:3]) > 0.5
    return nib.Nifti1Image(combined.astype(np.uint8), affine)


def _combine_from_multilabel(path_or_img: str | Path | nib.Nifti1Image, group: str) -> nib.Nifti1Image:
    img, label_map = load_multilabel_nifti(path_or_img)
    name_to_id = {v: k for k, v in label_map.items()}
    classes = _group_classes(group, set(name_to_id))
    missing = [c for c in classes if c not in name_to_id]
    if missing:
        raise InputImageError(f"mask group '{group}' needs classes missing in the label map of the input: "
                              f"{', '.join(missing)}")
    data = np.asanyarray(img.dataobj)
    combined = np.isin(data, [name_to_id[c] for c in classes]).astype(np.uint8)
    return nib.Nifti1Image(combined, img.affine)


def combine_masks(mask_dir: str | Path | nib.Nifti1Image, class_type: str, multilabel: bool = False
                  ) -> nib.Nifti1Image:
    """Union of the masks of group ``class_type`` (formats.md §14) as a uint8 0/1 image.

    ``mask_dir``: a per-class output folder, or a multilabel NIfTI (path or image) with the label header.
    ``multilabel``: attach the label header ``{1: <group>}``.
    """
    group = canonical_group(class_type)
    if isinstance(mask_dir, nib.Nifti1Image):
        out = _combine_from_multilabel(mask_dir, group)
    else:
        src = Path(mask_dir)
        if src.is_dir():
            out = _combine_from_dir(src, group)
        elif src.is_file():
            out = _combine_from_multilabel(src, group)
        else:
            raise InputImageError(f"input not found: {src}")
    if multilabel:
        out = add_label_map_to_nifti(out, {1: group})
    return out
