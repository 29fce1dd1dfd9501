"""Evans index from brain, skull and ventricle masks (``totalseg_evans_index``, formats.md §19).

Evans index = maximal width of the frontal horns / maximal inner width of the skull in the same axial slice.
The official tool registers the CT rigidly to a bundled brain atlas (antspyx) before measuring. We align the
masks ourselves, without an atlas or extra dependency:

1. left–right axis = normal of the brain's mid-sagittal symmetry plane: the plane (within ±30° of the scanner's
   x axis) that maps the smoothed brain mask best onto itself when mirrored (grid search, then Nelder–Mead);
2. anterior–posterior axis = main axis of the brain within that plane (principal component), superior = cross
   product;
3. brain, skull and ventricles are resampled into this frame on a 1 mm grid with nearest neighbour (as the
   official labels), the frontal horns with linear interpolation.

The measurement then follows the official steps: brain dilated twice, skull voxels removed, largest component
kept; frontal-horn components of <= 10 voxels dropped; in every axial slice and row the width of a mask is
measured along left–right and the slice with the widest frontal horns is chosen; the widest brain row in that
slice is the denominator. Where the official takes "last minus first voxel index", we place each edge between
voxels (where the interpolated horn mask crosses 0.5, or where the interpolated skull begins), which removes
the ~1 voxel quantisation of the official numbers. Volumes are voxel counts at 1 mm³ in the aligned frame
(the brain after the dilation step, ventricles = all ventricle labels), as in the official tool.
"""
from __future__ import annotations

import io
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
from scipy import ndimage, optimize

from ..atomic_files import write_bytes_atomic
from ..errors import InputImageError, OptionError

FRONTAL_HORNS = ("ventricle_frontal_horn_left", "ventricle_frontal_horn_right")
MAX_TILT_DEG = 30.0
SYMMETRY_GRID_MM = 2.0
MIN_HORN_COMPONENT_VOXELS = 10
MIN_BRAIN_COMPONENT_VOXELS = 200
EMPTY_RESULT = {"evans_index": None, "brain_volume_ml": None, "ventricle_volume_ml": None,
                "ventricle_brain_ratio": None}
DISCLAIMER = "Automatic measurement for research use only; not for diagnostic use."


@dataclass
class EvansMeasurement:
    """Result numbers plus what the preview needs (slices in the aligned frame, x = left-right, y = AP)."""

    result: dict[str, Any]
    skull_slice: np.ndarray | None = None
    ventricle_slice: np.ndarray | None = None
    brain_slice: np.ndarray | None = None
    horn_line: tuple[int, float, float] | None = None  # (row, left edge x, right edge x)
    brain_line: tuple[int, float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _world_points(mask: np.ndarray, affine: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """World coordinates (mm) of at most ``max_points`` random voxels of ``mask``."""
    flat = np.flatnonzero(mask)
    if len(flat) > max_points:
        flat = rng.choice(flat, max_points, replace=False)
    idx = np.stack(np.unravel_index(flat, mask.shape), axis=1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _plane_normal(yaw: float, roll: float) -> np.ndarray:
    n = np.array([1.0, np.tan(yaw), np.tan(roll)])
    return n / np.linalg.norm(n)


def _symmetry_normal(brain: np.ndarray, affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Normal (world, pointing to +x) of the plane that mirrors the brain best onto itself."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    step = np.maximum(1, np.floor(SYMMETRY_GRID_MM / zooms)).astype(int)  # work on a ~2 mm grid
    coarse = brain[::step[0], ::step[1], ::step[2]].astype(np.float32)
    smooth = ndimage.gaussian_filter(coarse, sigma=3.0 / (zooms * step))
    coarse_affine = affine.copy()
    coarse_affine[:3, :3] = affine[:3, :3] * step[None, :]
    inv = np.linalg.inv(coarse_affine)
    centroid = points.mean(axis=0)

    def overlap(params: np.ndarray) -> float:
        yaw, roll, offset = params
        n = _plane_normal(yaw, roll)
        d = n @ centroid + offset
        mirrored = points - 2.0 * ((points @ n) - d)[:, None] * n[None, :]
        vox = mirrored @ inv[:3, :3].T + inv[:3, 3]
        return -float(ndimage.map_coordinates(smooth, vox.T, order=1, mode="constant").mean())

    limit = np.deg2rad(MAX_TILT_DEG)
    grid = np.deg2rad(np.arange(-MAX_TILT_DEG, MAX_TILT_DEG + 1e-6, 6.0))
    best = min(((overlap(np.array([y, r, 0.0])), y, r) for y in grid for r in grid))
    start = np.array([best[1], best[2], 0.0])
    simplex = np.array([start, start + [0.05, 0, 0], start + [0, 0.05, 0], start + [0, 0, 2.0]])
    res = optimize.minimize(overlap, start, method="Nelder-Mead",
                            options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 300, "initial_simplex": simplex})
    yaw, roll = np.clip(res.x[:2], -limit, limit)
    return _plane_normal(yaw, roll)


def brain_frame(brain: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rotation R with rows = left-right, anterior-posterior, inferior-superior axes in world coordinates,
    brain centroid in world mm)."""
    rng = np.random.default_rng(0)
    points = _world_points(brain, affine, 8000, rng)
    e_x = _symmetry_normal(brain, affine, points)
    centred = points - points.mean(axis=0)
    in_plane = centred - (centred @ e_x)[:, None] * e_x[None, :]
    _, vecs = np.linalg.eigh(in_plane.T @ in_plane)
    e_y = vecs[:, -1] - (vecs[:, -1] @ e_x) * e_x
    e_y /= np.linalg.norm(e_y)
    if e_y[1] < 0:  # anterior = +y in RAS world coordinates
        e_y = -e_y
    e_z = np.cross(e_x, e_y)
    return np.stack([e_x, e_y, e_z]), points.mean(axis=0)


@dataclass(frozen=True)
class _Frame:
    """Aligned 1 mm grid: frame coordinate q = rot @ (world - centre); voxel (i, j, k) sits at q = lo + (i, j, k)."""

    rot: np.ndarray
    centre: np.ndarray
    lo: np.ndarray
    shape: tuple[int, int, int]

    def sample(self, mask: np.ndarray, affine: np.ndarray, order: int, start: np.ndarray | None = None,
               shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Mask resampled into the frame (or the sub-box at integer ``start`` of ``shape``)."""
        start = np.zeros(3) if start is None else np.asarray(start, float)
        inv = np.linalg.inv(affine)
        matrix = inv[:3, :3] @ self.rot.T
        offset = inv[:3, :3] @ (self.rot.T @ (self.lo + start) + self.centre) + inv[:3, 3]
        src = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
        out = ndimage.affine_transform(src, matrix, offset=offset, output_shape=shape or self.shape, order=order,
                                       output=np.uint8 if order == 0 else np.float32, mode="constant", cval=0)
        return out.astype(bool) if order == 0 else np.clip(out, 0.0, 1.0)

    def sample_plane(self, mask: np.ndarray, affine: np.ndarray, k: int) -> np.ndarray:
        """Linear interpolation of ``mask`` on frame slice ``k`` (x, y)."""
        return self.sample(mask, affine, 1, start=np.array([0, 0, k]), shape=(self.shape[0], self.shape[1], 1))[..., 0]


def _make_frame(rot: np.ndarray, centre: np.ndarray, world_points: np.ndarray) -> _Frame:
    q = (world_points - centre) @ rot.T
    lo = np.floor(q.min(axis=0)) - 4.0
    hi = np.ceil(q.max(axis=0)) + 4.0
    return _Frame(rot, centre, lo, tuple(int(v) for v in (hi - lo + 1)))


def _box_corners(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates of the 8 corners of the mask's voxel bounding box (grown by one voxel)."""
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(hits[0] - 1)
        hi.append(hits[-1] + 1)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    return corners @ affine[:3, :3].T + affine[:3, 3]


def _remove_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes > min_voxels
    keep[0] = False
    return keep[lab]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _crossing(inside: float, outside: float) -> float:
    """Distance (0..1 voxel) from an inside sample (>= 0.5) towards the outside one where the field is 0.5."""
    if inside <= outside:
        return 0.5
    return float(np.clip((inside - 0.5) / (inside - outside), 0.0, 1.0))


def _row_extent(row: np.ndarray, field: np.ndarray | None, wall: np.ndarray | None = None,
                wall_field: np.ndarray | None = None) -> tuple[float, float] | None:
    """Continuous (left, right) edges of the mask in one row along x, or None for an empty row.

    The edge lies where ``field`` (the interpolated mask) crosses 0.5; for masks without a field (the processed
    brain) where the neighbouring ``wall`` (skull) field crosses 0.5, else half a voxel out."""
    hits = np.flatnonzero(row)
    if hits.size == 0:
        return None
    i0, i1 = int(hits[0]), int(hits[-1])
    n = row.shape[0]

    def edge(i: int, step: int) -> float:
        j = i + step
        if j < 0 or j >= n:
            return i + 0.5 * step
        if field is not None:
            return i + step * _crossing(field[i], field[j])
        if wall is not None and wall[j]:
            # the skull field goes from < 0.5 (at i) to >= 0.5 (at j): its inner surface is the brain edge
            return j - step * _crossing(wall_field[j], wall_field[i])
        return i + 0.5 * step

    return edge(i0, -1), edge(i1, +1)


def _max_row_width(mask2d: np.ndarray, field2d: np.ndarray | None = None, wall2d: np.ndarray | None = None,
                   wall_field2d: np.ndarray | None = None) -> tuple[float, int, float, float]:
    """(width, row, left, right) of the widest row (rows = second axis) of a 2D mask (x, y)."""
    best = (0.0, -1, 0.0, 0.0)
    for y in np.flatnonzero(mask2d.any(axis=0)):
        field, wall, wall_field = (None if a is None else a[:, y] for a in (field2d, wall2d, wall_field2d))
        ext = _row_extent(mask2d[:, y], field, wall, wall_field)
        if ext is not None and ext[1] - ext[0] > best[0]:
            best = (ext[1] - ext[0], int(y), ext[0], ext[1])
    return best


def measure_evans_index(brain: np.ndarray, skull: np.ndarray, frontal_horns: np.ndarray, ventricles: np.ndarray,
                        affine: np.ndarray) -> EvansMeasurement:
    """Align the masks (see module docstring) and measure; empty brain/skull/frontal horns -> all None."""
    masks = [np.asarray(m) > 0 for m in (brain, skull, frontal_horns, ventricles)]
    shapes = {m.shape for m in masks}
    if len(shapes) != 1 or masks[0].ndim != 3:
        raise InputImageError(f"brain, skull and ventricle masks must be 3D on one grid, got shapes {sorted(shapes)}")
    brain_m, skull_m, horns_m, vent_m = masks
    if not (brain_m.any() and skull_m.any() and horns_m.any()):
        return EvansMeasurement(dict(EMPTY_RESULT))
    affine = np.asarray(affine, dtype=float)

    rot, centre = brain_frame(brain_m, affine)
    frame = _make_frame(rot, centre, _box_corners(brain_m | skull_m | vent_m, affine))
    # labels with nearest neighbour (as the official resampling); the frontal horns, whose width is the
    # numerator, linearly inside their own box so that their edges can be placed between voxels
    brain_a = frame.sample(brain_m, affine, 0)
    skull_a = frame.sample(skull_m, affine, 0)
    vent_a = frame.sample(vent_m, affine, 0)
    hq = (_box_corners(horns_m, affine) - centre) @ rot.T - frame.lo
    h_start = np.clip(np.floor(hq.min(axis=0)) - 2, 0, None).astype(int)
    h_stop = np.minimum(np.ceil(hq.max(axis=0)) + 3, frame.shape).astype(int)
    horns_f = np.zeros(frame.shape, np.float32)
    horns_f[tuple(slice(a, b) for a, b in zip(h_start, h_stop))] = frame.sample(
        horns_m, affine, 1, start=h_start, shape=tuple(int(v) for v in h_stop - h_start))

    brain_a = ndimage.binary_dilation(brain_a, iterations=2) & ~skull_a
    brain_a = _remove_small(brain_a, MIN_BRAIN_COMPONENT_VOXELS)
    brain_a = _largest_component(brain_a)
    horns_a = _remove_small(horns_f >= 0.5, MIN_HORN_COMPONENT_VOXELS)

    brain_ml = float(brain_a.sum()) * 0.001
    vent_ml = float(vent_a.sum()) * 0.001
    if not horns_a.any() or not brain_a.any():
        result = dict(EMPTY_RESULT)
        result.update(brain_volume_ml=round(brain_ml, 1), ventricle_volume_ml=round(vent_ml, 1))
        return EvansMeasurement(result)

    horn_slices = np.flatnonzero(horns_a.any(axis=(0, 1)))
    per_slice = {int(z): _max_row_width(horns_a[:, :, z], horns_f[:, :, z]) for z in horn_slices}
    z_star = max(per_slice, key=lambda z: (per_slice[z][0], -abs(z - horn_slices.mean())))
    horn_width, h_row, h_left, h_right = per_slice[z_star]
    skull_plane = frame.sample_plane(skull_m, affine, z_star)
    brain_width, b_row, b_left, b_right = _max_row_width(brain_a[:, :, z_star], None, skull_a[:, :, z_star],
                                                         skull_plane)

    evans = horn_width / brain_width if brain_width > 0 else None
    result = {
        "evans_index": round(evans, 3) if evans is not None else None,
        "brain_volume_ml": round(brain_ml, 1),
        "ventricle_volume_ml": round(vent_ml, 1),
        "ventricle_brain_ratio": round(vent_ml / brain_ml, 3) if brain_ml > 0 else None,
    }
    return EvansMeasurement(
        result, skull_slice=skull_a[:, :, z_star], ventricle_slice=vent_a[:, :, z_star],
        brain_slice=brain_a[:, :, z_star], horn_line=(h_row, h_left, h_right),
        brain_line=(b_row, b_left, b_right),
        details={"horn_width_mm": round(horn_width, 2), "brain_width_mm": round(brain_width, 2), "slice": z_star,
                 "frame": rot.tolist()})


def evans_index_from_masks(brain: np.ndarray, skull: np.ndarray, frontal_horns: np.ndarray, ventricles: np.ndarray,
                           affine: np.ndarray) -> dict[str, Any]:
    """``{"evans_index", "brain_volume_ml", "ventricle_volume_ml", "ventricle_brain_ratio"}`` (rounded 3/1/1/3)."""
    return measure_evans_index(brain, skull, frontal_horns, ventricles, affine).result


def render_evans_png(measurement: EvansMeasurement) -> bytes:
    """PNG (200 dpi): skull and ventricles in the measured slice with both diameters, numbers, disclaimer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6.6), facecolor="black")
    ax = fig.add_axes((0.02, 0.08, 0.96, 0.8))
    ax.set_facecolor("black")
    ax.set_axis_off()
    r = measurement.result
    if measurement.skull_slice is None:
        ax.text(0.5, 0.5, "empty: brain, skull or frontal horns not found", color="white", ha="center",
                va="center", transform=ax.transAxes)
    else:
        # display: rows = anterior (top) .. posterior, columns = patient right (left side) .. left
        def disp(a: np.ndarray) -> np.ndarray:
            return a.T[::-1, ::-1]

        ny, nx = measurement.skull_slice.shape[1], measurement.skull_slice.shape[0]
        rgb = np.zeros((ny, nx, 3))
        rgb[disp(measurement.brain_slice)] = (0.18, 0.18, 0.18)
        rgb[disp(measurement.skull_slice)] = (0.9, 0.9, 0.9)
        rgb[disp(measurement.ventricle_slice)] = (0.2, 0.5, 1.0)
        ax.imshow(rgb, interpolation="nearest")
        for line, colour in ((measurement.horn_line, "red"), (measurement.brain_line, "yellow")):
            row, x0, x1 = line
            ax.plot([nx - 1 - x0, nx - 1 - x1], [ny - 1 - row] * 2, color=colour, linewidth=1.5)
    title = (f"Evans index: {r['evans_index']}   brain: {r['brain_volume_ml']} ml\n"
             f"ventricles: {r['ventricle_volume_ml']} ml   ventricle/brain: {r['ventricle_brain_ratio']}")
    fig.suptitle(title, color="white", fontsize=10)
    fig.text(0.5, 0.02, DISCLAIMER, color="gray", ha="center", fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=200, facecolor="black")
    return buf.getvalue()


def save_evans_png(measurement: EvansMeasurement, out_png: str | Path) -> Path:
    """Write the preview PNG of a measurement (atomically); returns its absolute path."""
    out_png = Path(out_png).absolute()
    write_bytes_atomic(render_evans_png(measurement), out_png)
    return out_png


def _label_ids(img: nib.Nifti1Image, fallback: dict[int, str]) -> dict[str, int]:
    from ..io.label_header import read_label_map

    label_map = read_label_map(img) or fallback
    return {name: int(k) for k, name in label_map.items()}


def masks_from_ct(ct: Any, device: str = "gpu", verbose: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Segment brain/skull (``total``, roi_subset) and ventricle parts; returns (brain, skull, frontal horns,
    all ventricles, affine) on the grid of the input."""
    from ..python_api import totalsegmentator  # lazy: heavy, not needed for the measurement itself
    from ..registry import get_task

    quiet = not verbose
    seg1 = totalsegmentator(ct, None, ml=True, task="total", roi_subset=["brain", "skull"], device=device,
                            quiet=quiet, verbose=verbose)
    seg2 = totalsegmentator(ct, None, ml=True, task="ventricle_parts", device=device, quiet=quiet, verbose=verbose)
    ids1 = _label_ids(seg1, get_task("total").class_map)
    ids2 = _label_ids(seg2, get_task("ventricle_parts").class_map)
    d1 = np.asanyarray(seg1.dataobj)
    d2 = np.asanyarray(seg2.dataobj)
    horns = np.isin(d2, [ids2[n] for n in FRONTAL_HORNS if n in ids2])
    return d1 == ids1["brain"], d1 == ids1["skull"], horns, d2 > 0, seg1.affine


def _input_from_bytes(ct_bytes: bytes, f_type: str, tmp: Path) -> str:
    suffix = {"niigz": ".nii.gz", "nii.gz": ".nii.gz", "nii": ".nii", "zip": ".zip", "dicom": ".zip"}.get(f_type)
    if suffix is None:
        raise OptionError(f"unknown input type {f_type!r} (niigz, nii or zip)")
    path = tmp / f"ct{suffix}"
    path.write_bytes(bytes(ct_bytes))
    return str(path)


def evans_index(ct_bytes: bytes | str | Path | nib.Nifti1Image, f_type: str = "niigz", verbose: bool = False,
                device: str = "gpu") -> Iterator[dict[str, Any]]:
    """Generator of progress dicts ``{"id", "progress", "status"}``; the last one has ``"result"`` (the JSON
    dict) and ``"preview_png"`` (PNG bytes)."""
    job = uuid.uuid4().hex
    yield {"id": job, "progress": 2, "status": "starting"}
    with tempfile.TemporaryDirectory(prefix="totalseg_evans_") as tmp:
        ct = _input_from_bytes(ct_bytes, f_type, Path(tmp)) if isinstance(ct_bytes, (bytes, bytearray)) else ct_bytes
        if isinstance(ct, (str, Path)) and not Path(ct).exists():
            raise InputImageError(f"input not found: {ct}")
        yield {"id": job, "progress": 10, "status": "segmenting brain, skull and ventricles"}
        brain, skull, horns, ventricles, affine = masks_from_ct(ct, device=device, verbose=verbose)
    yield {"id": job, "progress": 85, "status": "measuring"}
    m = measure_evans_index(brain, skull, horns, ventricles, affine)
    yield {"id": job, "progress": 100, "status": "done", "result": m.result, "preview_png": render_evans_png(m)}
