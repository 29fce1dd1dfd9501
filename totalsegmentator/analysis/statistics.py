"""Per-class volume and intensity statistics (``statistics.json``).

All labels are handled in one vectorised pass: counts, sums and sums of squares with ``np.bincount``,
bounding boxes with ``ndimage.find_objects``, and medians/minima/maxima from one sort of the foreground
voxels by (label, intensity).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..atomic_files import write_json_atomic
from ..errors import InputImageError, OptionError

BORDER_VOXELS = 3


def to_int16(data: np.ndarray) -> np.ndarray:
    """Cast like a C cast to int16: truncation toward zero, wrap-around outside the int16 range; NaN -> 0."""
    data = np.asarray(data)
    if data.dtype == np.int16:
        return data
    if np.issubdtype(data.dtype, np.floating):
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        data = np.trunc(data)
        data = np.clip(data, np.iinfo(np.int64).min // 2, np.iinfo(np.int64).max // 2).astype(np.int64)
    return data.astype(np.int16)


def _load_array(obj: Any, what: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(data, zooms or None) from a Nifti1Image, a path or an array."""
    if isinstance(obj, (str, Path)):
        if not Path(obj).exists():
            raise InputImageError(f"{what} not found: {obj}")
        try:
            obj = nib.load(str(obj))
        except Exception as e:  # nibabel raises several unrelated types
            raise InputImageError(f"cannot read {what} {obj}: {e}") from None
    if isinstance(obj, nib.spatialimages.SpatialImage):
        data = np.asanyarray(obj.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        return data, tuple(float(z) for z in obj.header.get_zooms()[:3])
    return np.asarray(obj), None


def _resolve_class_map(task: str, class_map: dict[int, str] | None, roi_subset: Iterable[str] | None
                       ) -> dict[int, str]:
    if class_map is None:
        from ..registry import get_task

        class_map = get_task(task).class_map
    class_map = {int(k): v for k, v in sorted(class_map.items(), key=lambda kv: int(kv[0]))}
    if roi_subset is not None:
        wanted = set(roi_subset)
        unknown = wanted - set(class_map.values())
        if unknown:
            raise OptionError(f"roi_subset classes not in the class map: {', '.join(sorted(unknown))}")
        class_map = {k: v for k, v in class_map.items() if v in wanted}
    return class_map


def _sorted_by_label(labels: np.ndarray, values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground values sorted by (label, value) and the start offset of every label's run."""
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    if values.dtype == np.int16:  # one sort of a packed (label, value) key is much faster than lexsort
        key = (labels.astype(np.int64) << 17) | (values.astype(np.int64) + 32768)
        key.sort()
        return ((key & 0x1FFFF) - 32768).astype(np.float64), starts
    order = np.lexsort((values, labels))
    return values[order].astype(np.float64), starts


def _median_per_label(sorted_vals: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    med = np.zeros(len(counts))
    nz = counts > 0
    lo = starts[nz] + (counts[nz] - 1) // 2
    hi = starts[nz] + counts[nz] // 2
    med[nz] = (sorted_vals[lo] + sorted_vals[hi]) / 2.0
    return med


def compute_label_statistics(seg: np.ndarray, intensities: np.ndarray, labels: Iterable[int],
                             metric: str = "mean", extra: bool = False) -> dict[int, dict[str, Any]]:
    """Raw per-label numbers (no border rule, no rounding): n_voxels, intensity, and with ``extra`` std, min,
    max, centroid (voxel index per axis) and inclusive bbox. Labels absent from ``seg`` get n_voxels 0."""
    labels = [int(x) for x in labels]
    if seg.shape != intensities.shape:
        raise InputImageError(f"segmentation shape {seg.shape} does not match image shape {intensities.shape}")
    if metric not in ("mean", "median"):
        raise OptionError(f"stats_aggregation must be 'mean' or 'median', not {metric!r}")
    out: dict[int, dict[str, Any]] = {}
    if not labels:
        return out
    nbins = max(max(labels), 0) + 1
    seg_int = np.asarray(seg)
    if not np.issubdtype(seg_int.dtype, np.integer):
        seg_int = np.rint(seg_int).astype(np.int32)
    flat_seg = seg_int.ravel()
    fg = np.flatnonzero((flat_seg > 0) & (flat_seg < nbins))
    lab = flat_seg[fg].astype(np.intp)
    val = intensities.ravel()[fg]
    val64 = val.astype(np.float64)
    counts = np.bincount(lab, minlength=nbins)
    sums = np.bincount(lab, weights=val64, minlength=nbins)
    if metric == "median" or extra:
        sorted_vals, starts = _sorted_by_label(lab, val, counts)
    if metric == "median":
        agg = _median_per_label(sorted_vals, starts, counts)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            agg = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)

    if extra:
        mean = sums / np.maximum(counts, 1)
        dev = val64 - mean[lab]
        var = np.bincount(lab, weights=dev * dev, minlength=nbins) / np.maximum(counts, 1)
        nz = counts > 0
        mins, maxs = np.zeros(nbins), np.zeros(nbins)
        mins[nz] = sorted_vals[starts[nz]]
        maxs[nz] = sorted_vals[starts[nz] + counts[nz] - 1]
        coords = np.unravel_index(fg, seg_int.shape)
        centroid_sums = [np.bincount(lab, weights=c.astype(np.float64), minlength=nbins) for c in coords]

    boxes = []
    if nbins > 1 and len(fg):
        in_range = seg_int if (seg_int.min() >= 0 and seg_int.max() < nbins) else \
            np.where((seg_int > 0) & (seg_int < nbins), seg_int, 0)
        boxes = ndimage.find_objects(in_range, max_label=nbins - 1)
    for lb in labels:
        n = int(counts[lb]) if lb < nbins else 0
        rec: dict[str, Any] = {"n_voxels": n, "intensity": float(agg[lb]) if n else 0.0,
                               "bbox": None}
        if n:
            box = boxes[lb - 1]
            rec["bbox"] = [[int(s.start), int(s.stop) - 1] for s in box]
        if extra:
            rec["std"] = float(np.sqrt(var[lb])) if n else 0.0
            rec["min"] = float(mins[lb]) if n else 0.0
            rec["max"] = float(maxs[lb]) if n else 0.0
            rec["centroid"] = [float(cs[lb] / n) for cs in centroid_sums] if n else None
        out[lb] = rec
    return out


def touches_border(bbox: list[list[int]] | None, shape: tuple[int, ...], margin: int = BORDER_VOXELS) -> bool:
    """True if the box reaches into the first or last ``margin`` indices of any axis."""
    if bbox is None:
        return False
    return any(lo < margin or hi > n - 1 - margin for (lo, hi), n in zip(bbox, shape))


def get_basic_statistics(seg: Any, ct_file: Any, file_out: str | Path | None = None, quiet: bool = False,
                         task: str = "total", exclude_masks_at_border: bool = True,
                         roi_subset: Iterable[str] | None = None, metric: str = "mean",
                         normalized_intensities: bool = False, extra_metrics: bool = False,
                         class_map: dict[int, str] | None = None) -> dict[str, dict[str, Any]]:
    """Volume (mm³) and mean/median intensity of every class of ``task`` (formats.md §11).

    ``seg``: multilabel Nifti1Image, path or array; ``ct_file``: Nifti1Image, path or array on the same grid.
    ``class_map`` overrides the task's class map. Writes ``file_out`` (JSON, indent 4) when given.
    """
    seg_data, seg_zooms = _load_array(seg, "segmentation")
    ct_data, ct_zooms = _load_array(ct_file, "image")
    if seg_data.ndim != 3 or ct_data.ndim != 3:
        raise InputImageError(f"statistics need 3D volumes, got segmentation {seg_data.shape}, image {ct_data.shape}")
    zooms = ct_zooms or seg_zooms or (1.0, 1.0, 1.0)
    voxel_volume = float(np.prod(zooms))

    intensities = to_int16(ct_data)
    if normalized_intensities:
        lo, hi = float(intensities.min()), float(intensities.max())
        intensities = (intensities - lo) / (hi - lo) if hi > lo else np.zeros(intensities.shape)

    cmap = _resolve_class_map(task, class_map, roi_subset)
    raw = compute_label_statistics(seg_data, intensities, cmap.keys(), metric=metric, extra=extra_metrics)

    stats: dict[str, dict[str, Any]] = {}
    for lb, name in cmap.items():
        r = raw[lb]
        excluded = r["n_voxels"] == 0 or (exclude_masks_at_border and touches_border(r["bbox"], seg_data.shape))
        entry: dict[str, Any] = {
            "volume": 0.0 if excluded else r["n_voxels"] * voxel_volume,
            "intensity": 0.0 if excluded else round(r["intensity"], 5),
        }
        if extra_metrics:
            if excluded:
                entry.update(n_voxels=0, intensity_std=0.0, intensity_min=0.0, intensity_max=0.0,
                             centroid_vox=None, bbox_vox=None)
            else:
                entry.update(n_voxels=r["n_voxels"], intensity_std=round(r["std"], 5),
                             intensity_min=r["min"], intensity_max=r["max"],
                             centroid_vox=[round(c, 2) for c in r["centroid"]], bbox_vox=r["bbox"])
        stats[name] = entry

    if file_out is not None:
        write_json_atomic(stats, file_out)
        if not quiet:
            print(f"Statistics written to {Path(file_out).absolute()}")
    return stats
