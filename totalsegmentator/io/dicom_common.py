"""Shared pieces of the DICOM writers: structure codes and colours, and NIfTI-grid -> slice mapping."""
from __future__ import annotations

import colorsys
import copy
import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from totalsegmentator.errors import DicomError

SNOMED_CSV = Path(__file__).resolve().parents[1] / "resources" / "snomed_codes.csv"

# DICOM patient axes are LPS, NIfTI world axes are RAS: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

# How far (in voxels) a slice pixel may lie from a voxel centre of the converted image.
GRID_TOLERANCE_VOXELS = 0.1


@dataclass(frozen=True)
class Coding:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class StructureCodes:
    """SNOMED codes and display colour of one structure."""

    category: Coding
    type: Coding
    type_modifier: Coding | None
    rgb: tuple[int, int, int] | None


FALLBACK_CATEGORY = Coding("SCT", "85756007", "Tissue")
FALLBACK_TYPE = Coding("SCT", "85756007", "Tissue")


@lru_cache(maxsize=1)
def load_structure_table(path: str | None = None) -> dict[str, StructureCodes]:
    """Read our SNOMED table (`resources/snomed_codes.csv`) into ``{structure name: codes}``."""
    table: dict[str, StructureCodes] = {}
    with open(path or SNOMED_CSV, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            def coding(seq: str) -> Coding | None:
                value = (row.get(f"{seq}.CodeValue") or "").strip()
                if not value:
                    return None
                return Coding(row[f"{seq}.CodingSchemeDesignator"].strip(), value,
                              row[f"{seq}.CodeMeaning"].strip())

            colour = (row.get("DicomRGBColor") or "").strip()
            rgb = tuple(int(v) for v in colour.split(",")) if colour else None
            table[row["Structure"].strip()] = StructureCodes(
                category=coding("SegmentedPropertyCategoryCodeSequence") or FALLBACK_CATEGORY,
                type=coding("SegmentedPropertyTypeCodeSequence") or FALLBACK_TYPE,
                type_modifier=coding("SegmentedPropertyTypeModifierCodeSequence"),
                rgb=rgb,  # type: ignore[arg-type]
            )
    return table


def structure_codes(name: str) -> StructureCodes:
    """Codes for a class name; unknown names get category/type "Tissue" and a generated colour."""
    known = load_structure_table().get(name)
    if known is not None and known.rgb is not None:
        return known
    if known is not None:
        return StructureCodes(known.category, known.type, known.type_modifier, vivid_colour(name))
    return StructureCodes(FALLBACK_CATEGORY, FALLBACK_TYPE, None, vivid_colour(name))


def vivid_colour(name: str) -> tuple[int, int, int]:
    """A deterministic saturated colour for a name (HSV with s, v in [0.7, 1])."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    h = digest[0] / 255.0
    s = 0.7 + 0.3 * digest[1] / 255.0
    v = 0.7 + 0.3 * digest[2] / 255.0
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def as_label_array(seg_xyz) -> np.ndarray:
    """The label map as a non-negative integer array (bool/float label maps are converted)."""
    seg = np.asarray(seg_xyz)
    if seg.dtype.kind == "b":
        seg = seg.astype(np.uint8)
    elif seg.dtype.kind == "f":
        seg = np.rint(seg).astype(np.int64)
    elif seg.dtype.kind not in "ui":
        raise DicomError(f"the segmentation has dtype {seg.dtype}; expected integer labels")
    if seg.dtype.kind == "i" and seg.size and seg.min() < 0:
        raise DicomError("the segmentation has negative labels")
    return seg


def non_empty_classes(seg_xyz: np.ndarray, class_map: dict[int, str]) -> list[tuple[int, str]]:
    """(label, name) of the classes present in ``seg_xyz``, in label order; DicomError if none."""
    if seg_xyz.dtype.kind in "ub" or (seg_xyz.dtype.kind == "i" and seg_xyz.size and seg_xyz.min() >= 0):
        present = set(np.flatnonzero(np.bincount(seg_xyz.ravel().astype(np.int64, copy=False))).tolist())
    else:
        present = set(np.unique(seg_xyz).tolist())
    classes = [(int(label), name) for label, name in sorted(class_map.items())
               if int(label) != 0 and int(label) in present]
    if not classes:
        raise DicomError("the segmentation is empty (no class of the task was found), "
                         "so there is nothing to write as DICOM")
    return classes


def _floats(values: Sequence, n: int, what: str, ds: Dataset) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,):
        raise DicomError(f"DICOM slice {getattr(ds, 'SOPInstanceUID', '?')} has no usable {what}")
    return arr


def slice_geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(ImagePositionPatient, row cosine, column cosine, spacing between rows, between columns)."""
    if "PerFrameFunctionalGroupsSequence" in ds and "ImagePositionPatient" not in ds:
        raise DicomError("DICOM output from enhanced multi-frame images is not supported")
    ipp = _floats(getattr(ds, "ImagePositionPatient", []), 3, "ImagePositionPatient", ds)
    iop = _floats(getattr(ds, "ImageOrientationPatient", []), 6, "ImageOrientationPatient", ds)
    spacing = _floats(getattr(ds, "PixelSpacing", []), 2, "PixelSpacing", ds)
    return ipp, iop[:3], iop[3:], float(spacing[0]), float(spacing[1])


@dataclass(frozen=True)
class SlicePlacement:
    """Where the pixels of one DICOM slice lie in the converted image's voxel grid.

    Pixel (row r, column c) is voxel ``origin + r * row_step + c * col_step`` (integer vectors).
    """

    origin: np.ndarray
    row_step: np.ndarray
    col_step: np.ndarray
    rows: int
    cols: int

    @property
    def plane(self) -> tuple[int, int]:
        """(axis, index) of the voxel plane this slice covers."""
        axis = int(3 - np.argmax(np.abs(self.row_step)) - np.argmax(np.abs(self.col_step)))
        return axis, int(self.origin[axis])

    def take(self, volume: np.ndarray) -> np.ndarray:
        """The (rows, cols) slice of ``volume`` (x, y, z) that corresponds to this DICOM slice."""
        r = np.arange(self.rows)[:, None]
        c = np.arange(self.cols)[None, :]
        idx = [self.origin[a] + r * self.row_step[a] + c * self.col_step[a] for a in range(3)]
        return volume[idx[0], idx[1], idx[2]]


def place_slice(ds: Dataset, affine: np.ndarray, shape: Sequence[int]) -> SlicePlacement | None:
    """Map a slice onto the voxel grid of an image with ``affine`` (RAS) and ``shape``.

    Uses only the slice's ImagePositionPatient / ImageOrientationPatient / PixelSpacing and the
    affine, so any orientation (and any axis flips done by the converter) is handled. Returns
    None when the slice does not lie on the grid (other matrix size, position outside).
    """
    ipp, row_cos, col_cos, row_spacing, col_spacing = slice_geometry(ds)
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=float))
    lin, off = to_voxel[:3, :3], to_voxel[:3, 3]
    origin = lin @ (LPS_TO_RAS @ ipp) + off
    # Moving one column goes along the row cosine by the column spacing, and vice versa.
    col_step = lin @ (LPS_TO_RAS @ row_cos) * col_spacing
    row_step = lin @ (LPS_TO_RAS @ col_cos) * row_spacing
    rows, cols = int(ds.Rows), int(ds.Columns)
    rounded = [np.rint(v) for v in (origin, row_step, col_step)]
    # Worst deviation from the grid anywhere in the slice (step errors add up along a row).
    worst = (np.abs(origin - rounded[0]) + (rows - 1) * np.abs(row_step - rounded[1])
             + (cols - 1) * np.abs(col_step - rounded[2]))
    if worst.max() > GRID_TOLERANCE_VOXELS:
        return None
    origin, row_step, col_step = (r.astype(np.int64) for r in rounded)
    # The steps must be distinct unit axes, otherwise slice pixels and voxels are not one to one.
    if (np.abs(row_step).sum() != 1 or np.abs(col_step).sum() != 1
            or np.argmax(np.abs(row_step)) == np.argmax(np.abs(col_step))):
        return None
    corners = [origin + a * (rows - 1) * row_step + b * (cols - 1) * col_step for a in (0, 1) for b in (0, 1)]
    if any((c < 0).any() or (c >= np.asarray(shape[:3])).any() for c in corners):
        return None
    return SlicePlacement(origin, row_step, col_step, rows, cols)


def place_series(datasets: Sequence[Dataset], affine: np.ndarray,
                 shape: Sequence[int]) -> list[tuple[int, SlicePlacement]]:
    """Placements of the slices that lie on the grid, one per voxel plane (duplicates dropped).

    Returns ``[(index into datasets, placement), ...]``; DicomError unless the slices cover every
    plane of the grid exactly once.
    """
    placed: list[tuple[int, SlicePlacement]] = []
    planes: dict[tuple[int, int], int] = {}
    for i, ds in enumerate(datasets):
        placement = place_slice(ds, affine, shape)
        if placement is None or placement.plane in planes:
            continue
        planes[placement.plane] = i
        placed.append((i, placement))
    if not placed:
        raise DicomError("none of the DICOM slices lies on the grid of the converted image; "
                         "cannot map the segmentation back to the slices")
    axes = {axis for axis, _ in planes}
    axis = axes.pop()
    if axes or len(planes) != int(shape[axis]):
        raise DicomError(f"the DICOM slices cover {len(planes)} of the {int(shape[axis])} planes of the "
                         "converted image; cannot map the segmentation back to the slices")
    return placed


# SOP classes to assume for source slices without one, by Modality.
_SOP_CLASS_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def repair_source_uids(datasets: Sequence[Dataset], in_place: bool = False) -> list[Dataset]:
    """Fill empty or absent identifying UIDs of source slices (e.g. of badly anonymised data).

    SOP Instance/Class UIDs come from the file meta (else Modality); missing Study, Series and
    Frame of Reference UIDs are derived deterministically from the slices' SOP Instance UIDs, so
    every writer references the same values. Present values are never changed.
    """
    out = list(datasets) if in_place else [copy.deepcopy(ds) for ds in datasets]
    for ds in out:
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = str(meta.MediaStorageSOPInstanceUID)
        if not ds.get("SOPInstanceUID"):
            raise DicomError("a DICOM source slice has no SOPInstanceUID; cannot reference it")
        if not ds.get("SOPClassUID"):
            if meta is not None and meta.get("MediaStorageSOPClassUID"):
                ds.SOPClassUID = str(meta.MediaStorageSOPClassUID)
            else:
                ds.SOPClassUID = _SOP_CLASS_BY_MODALITY.get(str(ds.get("Modality", "")).upper(), _SECONDARY_CAPTURE)
    seed = sorted(str(ds.SOPInstanceUID) for ds in out)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        present = next((str(ds.get(keyword)) for ds in out if ds.get(keyword)), None)
        value = present or generate_uid(entropy_srcs=[keyword, *seed])
        for ds in out:
            if not ds.get(keyword):
                setattr(ds, keyword, value)
    return out


OUTPUT_TYPES = ("nifti", "dicom_rtstruct", "dicom_seg")
_OUTPUT_ALIASES = {"dicom": "dicom_rtstruct"}


def normalize_output_types(output_types: str | Sequence[str] | None) -> list[str]:
    """Output type names as a list: comma-separated values split, ``dicom`` -> ``dicom_rtstruct``."""
    if output_types is None:
        return ["nifti"]
    values = [output_types] if isinstance(output_types, str) else list(output_types)
    result: list[str] = []
    for value in values:
        for part in str(value).split(","):
            part = _OUTPUT_ALIASES.get(part.strip(), part.strip())
            if not part:
                continue
            if part not in OUTPUT_TYPES:
                from totalsegmentator.errors import OptionError
                raise OptionError(f"unknown output type '{part}' (choose from {', '.join(OUTPUT_TYPES)}, dicom)")
            if part not in result:
                result.append(part)
    return result or ["nifti"]


def dicom_output_paths(output: str | Path, output_types: str | Sequence[str] | None, task: str,
                       series_uid: str) -> dict[str, Path]:
    """Where each output type is written (formats.md §9); creates nothing.

    One type: ``dicom_rtstruct`` -> ``output``; ``dicom_seg`` -> ``output``, or
    ``<output>/<series_uid>.dcm`` when ``output`` is an existing folder (``segmentation.dcm`` if
    the series has no UID); ``nifti`` -> ``output``.
    Several types: base folder = ``output`` if it is an existing folder (base name
    ``<task>_segmentation``) else its parent (base name = file name up to the first dot);
    files ``<base>.nii.gz``, ``<base>_rtstruct.dcm``, ``<base>_seg.dcm``. The caller creates the
    base folder.
    """
    output = Path(output)
    types = normalize_output_types(output_types)
    if len(types) == 1:
        kind = types[0]
        if kind == "dicom_seg" and output.is_dir():
            return {kind: output / f"{series_uid or 'segmentation'}.dcm"}
        return {kind: output}
    if output.is_dir():
        base_dir, base = output, f"{task}_segmentation"
    else:
        base_dir, base = output.parent, output.name.split(".")[0]
    names = {"nifti": f"{base}.nii.gz", "dicom_rtstruct": f"{base}_rtstruct.dcm", "dicom_seg": f"{base}_seg.dcm"}
    return {kind: base_dir / names[kind] for kind in types}


def write_dicom_outputs(seg_xyz: np.ndarray, class_map: dict[int, str], series,
                        targets: dict[str, Path], task: str | None = None) -> dict[str, Path]:
    """Write the DICOM output types in ``targets`` (``{"dicom_seg"|"dicom_rtstruct": path}``).

    A ``dicom_seg`` target that is an existing folder becomes ``<folder>/<SeriesInstanceUID>.dcm``
    (formats.md §9). ``series`` is the ``DicomSeries`` of the input; OptionError when the input
    was not DICOM. Returns the written paths. ``task`` is accepted for symmetry with the callers.
    """
    from totalsegmentator.errors import OptionError

    wanted = {kind: Path(path) for kind, path in targets.items() if kind in ("dicom_seg", "dicom_rtstruct")}
    if not wanted:
        return {}
    if series is None:
        raise OptionError("DICOM output (dicom_seg, dicom_rtstruct) needs a DICOM input "
                          "(a folder or .zip of slices)")
    from totalsegmentator.io.dicom_rtstruct import write_rtstruct
    from totalsegmentator.io.dicom_seg import write_dicom_seg

    written = {}
    for kind, path in wanted.items():
        if kind == "dicom_seg":
            if path.is_dir():
                path = path / f"{series.series_uid or 'segmentation'}.dcm"
            written[kind] = write_dicom_seg(seg_xyz, class_map, series, path)
        else:
            written[kind] = write_rtstruct(seg_xyz, class_map, series, path)
    return written
