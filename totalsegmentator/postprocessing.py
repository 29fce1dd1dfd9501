"""Postprocessing rules on label maps (formats.md §8); plain numpy/scipy, no files.

Connected components use face connectivity (6-neighbourhood, scipy's default) throughout; ``cc3d`` labels
them when installed (it comes with nnunetv2), scipy otherwise. Voxel counts are
compared with volume thresholds as ``count <= mm3 / voxel_volume`` (float, no rounding).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

VERTEBRAE_MIN_COMPONENT_MM3 = 100.0
BODY_EXTREMITIES_MIN_MM3 = 50000.0
SMALL_BLOBS_DEFAULT_MM3 = 200.0


# --------------------------------------------------------------------------------------------------- label maps

def apply_lut(seg: np.ndarray, mapping: Mapping[int, int], keep_unmapped: bool = True) -> np.ndarray:
    """Replace label values by ``mapping`` in one vectorised lookup; unmapped values stay (or become 0)."""
    seg = np.asarray(seg)
    top = max([int(seg.max()) if seg.size else 0] + [int(k) for k in mapping])
    lut = np.arange(top + 1, dtype=seg.dtype) if keep_unmapped else np.zeros(top + 1, dtype=seg.dtype)
    for old, new in mapping.items():
        lut[int(old)] = new
    return lut[seg]


def remove_labels(seg: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """``seg`` with the given label values set to 0 (e.g. a task's auxiliary labels)."""
    labels = [int(v) for v in labels]
    return apply_lut(seg, {v: 0 for v in labels}) if labels else seg


def relabel_by_name(seg: np.ndarray, source_map: Mapping[int, str], target_map: Mapping[int, str]) -> np.ndarray:
    """Move labels from ``source_map`` ids to the ids of the same names in ``target_map``; names missing
    there become 0 (``--v1_order``: total -> total_v1)."""
    target_ids = {name: idx for idx, name in target_map.items()}
    mapping = {int(idx): int(target_ids.get(name, 0)) for idx, name in source_map.items()}
    return apply_lut(seg, mapping, keep_unmapped=False)


# ------------------------------------------------------------------------------------------ connected components

try:  # fast multi-label connected components; installed with nnunetv2 (acvl-utils dependency)
    import cc3d as _cc3d
except ImportError:  # pragma: no cover - exercised only without cc3d
    _cc3d = None


def label_components(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """Face-connected components of every non-zero label separately (touching voxels of different labels
    belong to different components) -> ``(component ids, count)``. A bool mask gives its components."""
    seg = np.asarray(seg)
    if seg.dtype == bool:
        seg = seg.view(np.uint8)
    if _cc3d is not None and seg.ndim == 3:
        comp, n = _cc3d.connected_components(seg, connectivity=6, return_N=True)
        return comp, int(n)
    return _label_per_class(seg)


def _label_per_class(seg: np.ndarray) -> tuple[np.ndarray, int]:
    """scipy fallback: label each class inside its own bounding box and number the components globally."""
    comp = np.zeros(seg.shape, dtype=np.int64)
    total = 0
    for value, box in enumerate(ndimage.find_objects(seg) if seg.size else [], start=1):
        if box is None:
            continue
        mask = seg[box] == value
        labels, n = ndimage.label(mask)
        comp[box][mask] = labels[mask] + total
        total += n
    return comp, total


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels of ``mask`` and the voxel count of each (index 0 = background)."""
    comp, n = label_components(np.asarray(mask) > 0)
    return comp, np.bincount(comp.ravel(), minlength=n + 1)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Only the largest connected component of ``mask`` (bool; empty stays empty; ties: first found)."""
    comp, counts = _components(mask)
    if counts.size <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return comp == int(np.argmax(counts[1:])) + 1


def remove_small_components(mask: np.ndarray, max_voxels: float) -> np.ndarray:
    """``mask`` (bool) without components of ``count <= max_voxels`` voxels."""
    comp, counts = _components(mask)
    keep = counts > max_voxels
    keep[0] = False
    return keep[comp]


def remove_small_blobs(seg: np.ndarray, voxel_volume: float, mm3: float = SMALL_BLOBS_DEFAULT_MM3,
                       class_ids: Iterable[int] | None = None) -> np.ndarray:
    """Per class, remove components with ``count <= mm3 / voxel_volume`` voxels (``--remove_small_blobs``).

    One multi-label component pass for all classes; ``class_ids`` limits the classes touched.
    """
    out = np.array(seg, copy=True)
    if not out.size:
        return out
    comp, n = label_components(out)
    counts = np.bincount(comp.ravel(), minlength=n + 1)
    comp_class = np.zeros(n + 1, dtype=np.int64)
    comp_class[comp.ravel()] = out.ravel()
    remove = counts <= float(mm3) / float(voxel_volume)
    if class_ids is not None:
        remove &= np.isin(comp_class, [int(c) for c in class_ids])
    remove[0] = False
    out[remove[comp]] = 0
    return out


def body_postprocessing(seg: np.ndarray, voxel_volume: float, trunc_label: int = 1, extremities_label: int = 2,
                        min_extremities_mm3: float = BODY_EXTREMITIES_MIN_MM3) -> np.ndarray:
    """Task ``body``: keep the largest component of ``body_trunc``; drop ``body_extremities`` components of
    ``count <= 50000 mm3 / voxel_volume`` voxels."""
    out = np.array(seg, copy=True)
    trunc = out == trunc_label
    out[trunc & ~keep_largest_component(trunc)] = 0
    extremities = out == extremities_label
    out[extremities & ~remove_small_components(extremities, min_extremities_mm3 / voxel_volume)] = 0
    return out


# ------------------------------------------------------------------------------------------------------ dilation

def ellipsoid_footprint(radius_mm: float, spacing_xyz: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid with radii ``radius_mm / spacing`` voxels (offsets with sum((d/r)^2) <= 1)."""
    radii = float(radius_mm) / np.asarray(spacing_xyz, dtype=np.float64)
    half = np.floor(radii).astype(int)
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    return sum((g / r) ** 2 for g, r in zip(grids, radii)) <= 1.0


def _grow(box: tuple[slice, ...], by: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, sl.start - b), min(n, sl.stop + b)) for sl, b, n in zip(box, by, shape))


def dilate_labels(seg: np.ndarray, radius_mm: float, spacing_xyz: Sequence[float]) -> np.ndarray:
    """Dilate every label by an ellipsoid of ``radius_mm`` into background only, in ascending label order
    (a lower label claims contested background first)."""
    footprint = ellipsoid_footprint(radius_mm, spacing_xyz)
    out = np.array(seg, copy=True)
    if footprint.sum() <= 1 or not out.size:
        return out
    half = [s // 2 for s in footprint.shape]
    for value, box in enumerate(ndimage.find_objects(out), start=1):
        if box is None:
            continue
        region = out[_grow(box, half, out.shape)]
        grown = ndimage.binary_dilation(region == value, structure=footprint)
        region[grown & (region == 0)] = value
    return out


# ------------------------------------------------------------------------------------------------------ vertebrae

def labels_touch(seg: np.ndarray) -> bool:
    """Whether two different non-zero labels share a face anywhere."""
    for axis in range(seg.ndim):
        a = np.moveaxis(seg, axis, 0)
        lo, hi = a[:-1], a[1:]
        if np.any((lo != hi) & (lo > 0) & (hi > 0)):
            return True
    return False


def _centre_z(comp: np.ndarray, n_comp: int) -> np.ndarray:
    """Mean index along the third axis of every component (slice-wise bincount, no index volume)."""
    zsum = np.zeros(n_comp + 1)
    for z in range(comp.shape[2]):
        zsum += z * np.bincount(comp[:, :, z].ravel(), minlength=n_comp + 1)
    counts = np.bincount(comp.ravel(), minlength=n_comp + 1)
    return zsum / np.maximum(counts, 1)


def relabel_vertebrae(seg: np.ndarray, voxel_volume: float, n_labels: int = 24, top_label: int = 1,
                      bottom_label: int = 24, min_component_mm3: float = VERTEBRAE_MIN_COMPONENT_MM3) -> np.ndarray:
    """Relabel vertebra components by height (the relabelling part of ``vertebrae_pp``).

    Components of the foreground below ``min_component_mm3`` are dropped. If ``bottom_label`` (L5) is absent
    and ``top_label`` (C1) present among the kept components, components are numbered from the top (highest
    centre z first) 1, 2, 3 ...; otherwise from the bottom starting at the largest label present, descending.
    Numbers outside 1..n_labels (more components than labels left) become 0.
    """
    comp, n_comp = label_components(seg > 0)
    counts = np.bincount(comp.ravel(), minlength=n_comp + 1)
    keep = counts * float(voxel_volume) >= min_component_mm3
    keep[0] = False
    kept_ids = np.flatnonzero(keep)
    present = np.unique(seg[keep[comp]])
    present = present[(present >= 1) & (present <= n_labels)]
    if kept_ids.size == 0 or present.size == 0:
        return np.zeros_like(seg)
    z = _centre_z(comp, n_comp)[kept_ids]
    if bottom_label not in present and top_label in present:
        order = kept_ids[np.argsort(-z, kind="stable")]
        new_values = np.arange(1, order.size + 1)
    else:
        order = kept_ids[np.argsort(z, kind="stable")]
        new_values = int(present.max()) - np.arange(order.size)
    new_values[(new_values < 1) | (new_values > n_labels)] = 0
    lut = np.zeros(n_comp + 1, dtype=seg.dtype)
    lut[order] = new_values
    return lut[comp]


def vertebrae_postprocessing(seg: np.ndarray, spacing_xyz: Sequence[float], dilation_mm: float = 3.0,
                             n_labels: int = 24) -> np.ndarray:
    """Task ``vertebrae_pp`` at model resolution: relabel by height when different labels touch, then dilate
    every label by a ``dilation_mm`` ellipsoid into background (ascending labels)."""
    voxel_volume = float(np.prod(np.asarray(spacing_xyz, dtype=np.float64)))
    if labels_touch(seg):
        seg = relabel_vertebrae(seg, voxel_volume, n_labels=n_labels)
    return dilate_labels(seg, dilation_mm, spacing_xyz)


def refine_vertebrae(seg: np.ndarray, body_seg: np.ndarray, spacing_xyz: Sequence[float],
                     dilation_mm: float = 2.0, keep_label: int = 1) -> np.ndarray:
    """``vertebrae_pp_refined`` at original resolution: dilate labels by ``dilation_mm`` then keep only voxels
    where the ``vertebrae_body`` model says ``keep_label`` (vertebral body, not disc)."""
    if body_seg.shape != seg.shape:
        raise ValueError(f"vertebrae_body shape {body_seg.shape} differs from the segmentation {seg.shape}")
    out = dilate_labels(seg, dilation_mm, spacing_xyz)
    out[body_seg != keep_label] = 0
    return out


# ---------------------------------------------------------------------------------------------- remove outside

def remove_outside(seg: np.ndarray, mask: np.ndarray, spacing_xyz: Sequence[float],
                   dilation_mm: float = 10.0) -> np.ndarray:
    """Zero ``seg`` outside ``mask`` dilated ``int(dilation_mm / mean voxel size)`` times with the 6-neighbour
    cross (``heartchambers_highres``). An empty mask zeroes everything.

    **QUIRK fixed:** for voxels larger than ``dilation_mm`` the count is 0, which scipy treats as "dilate until
    nothing changes" (the whole image); we dilate once instead.
    """
    iterations = max(1, int(float(dilation_mm) / float(np.mean(np.asarray(spacing_xyz, dtype=np.float64)))))
    out = np.array(seg, copy=True)
    box = ndimage.find_objects((np.asarray(mask) > 0).view(np.uint8))
    if not box or box[0] is None:
        out[...] = 0
        return out
    grown_box = _grow(box[0], [iterations] * 3, mask.shape)
    inside = np.zeros(mask.shape, dtype=bool)
    inside[grown_box] = ndimage.binary_dilation(np.asarray(mask)[grown_box] > 0, iterations=iterations)
    out[~inside] = 0
    return out


# ------------------------------------------------------------------------------------------------ derived masks

def body_mask(seg: np.ndarray, labels: Iterable[int] = (1, 2)) -> np.ndarray:
    """Union of the body labels (``body_trunc`` | ``body_extremities``) as uint8 0/1."""
    return np.isin(seg, list(labels)).view(np.uint8)


def skin_mask(body: np.ndarray, intensity: np.ndarray, low: float = -200, high: float = 250,
              min_component_voxels: int = 5) -> np.ndarray:
    """``skin.nii.gz``: body dilated once minus body eroded three times, only where ``low < intensity < high``,
    without components of ``<= min_component_voxels`` voxels. uint8 0/1."""
    body = np.asarray(body) > 0
    shell = ndimage.binary_dilation(body) & ~ndimage.binary_erosion(body, iterations=3)
    shell &= (intensity > low) & (intensity < high)
    return remove_small_components(shell, min_component_voxels).view(np.uint8)
