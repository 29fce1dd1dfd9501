"""Overview PNG of a segmentation (``--preview`` -> ``preview_<task>.png``, formats.md §16).

Layout as in the official tool: one panel with a sagittal CT slice (window -115..225 HU), then one panel per ROI
group of the task, each about ``nx*sx*0.9`` x ``nz*sz*0.9`` pixels of the canonical (RAS) image, structures in
colours drawn from a numpy RNG seeded 1234, viewed from the front (patient's right on the left).

Two renderers:

* ``3d`` (used when the ``vtk`` package is installed and can render off-screen, which VTK >= 9.4 wheels do
  without a display via EGL/OSMesa): smoothed surfaces (marching cubes + 20 windowed-sinc smoothing
  iterations) under a parallel front camera. No fury or X server needed.
* ``2d`` (always available, matplotlib/Pillow only): a depth-shaded projection: for every pixel the structure
  nearest to the viewer is shown, shaded by the surface slope of its depth map, over a faint body silhouette.

``TOTALSEG_PREVIEW_RENDERER=2d|3d|auto`` forces a renderer (``auto`` is the default).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..atomic_files import atomic_path
from ..errors import OptionError

CT_WINDOW = (-115.0, 225.0)
PANEL_SCALE = 0.9
MIN_PANEL_PX = 48
COLOR_SEED = 1234
SMOOTHING_ITERATIONS = 20
BODY_THRESHOLD_HU = -300.0
BACKGROUND = np.array([0.0, 0.0, 0.0])
RENDERER_ENV = "TOTALSEG_PREVIEW_RENDERER"

_VTK_PROBE = (
    "import vtk\n"
    "vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)\n"
    "w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8)\n"
    "r = vtk.vtkRenderer(); w.AddRenderer(r); w.Render()\n"
    "f = vtk.vtkWindowToImageFilter(); f.SetInput(w); f.Update()\n"
    "assert f.GetOutput().GetDimensions()[0] == 8\n"
)


@functools.lru_cache(maxsize=1)
def vtk_offscreen_available() -> bool:
    """True when ``vtk`` is installed and an off-screen render works (probed once, in a child process, so
    that a broken OpenGL stack cannot crash this process)."""
    if importlib.util.find_spec("vtk") is None:
        return False
    try:
        proc = subprocess.run([sys.executable, "-c", _VTK_PROBE], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def choose_renderer() -> str:
    """'3d' or '2d' according to ``TOTALSEG_PREVIEW_RENDERER`` and what is installed."""
    wanted = os.environ.get(RENDERER_ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "2d", "3d"):
        raise OptionError(f"{RENDERER_ENV} must be 2d, 3d or auto, not {wanted!r}")
    if wanted == "2d":
        return "2d"
    if vtk_offscreen_available():
        return "3d"
    if wanted == "3d":
        raise OptionError("3d preview needs the vtk package with off-screen rendering: pip install vtk")
    return "2d"


def group_colors(n: int) -> np.ndarray:
    """``n`` vivid RGB colours in [0, 1] from a numpy RNG seeded 1234 (same colours for every preview)."""
    rng = np.random.default_rng(COLOR_SEED)
    return rng.uniform(0.25, 1.0, size=(n, 3))


def _canonical(ct_img: nib.Nifti1Image, seg_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CT, segmentation, zooms) in RAS orientation."""
    ornt = nib.orientations.io_orientation(ct_img.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    xform = nib.orientations.ornt_transform(ornt, ras)
    ct = nib.orientations.apply_orientation(np.asanyarray(ct_img.dataobj), xform)
    seg = nib.orientations.apply_orientation(np.asarray(seg_xyz), xform)
    # input axis j becomes output axis xform[j, 0]
    in_zooms = np.sqrt((ct_img.affine[:3, :3] ** 2).sum(axis=0))
    zooms = np.empty(3)
    for j in range(3):
        zooms[int(xform[j, 0])] = in_zooms[j]
    return ct, seg, zooms


def _panel_size(width_mm: float, height_mm: float) -> tuple[int, int]:
    return (max(MIN_PANEL_PX, int(width_mm * PANEL_SCALE)), max(MIN_PANEL_PX, int(height_mm * PANEL_SCALE)))


def _fit(image: np.ndarray, size: tuple[int, int], order: int) -> np.ndarray:
    """Resize a (rows, cols[, 3]) image to (height, width) = (size[1], size[0])."""
    h, w = size[1], size[0]
    factors = (h / image.shape[0], w / image.shape[1]) + ((1,) if image.ndim == 3 else ())
    out = ndimage.zoom(image, factors, order=order, grid_mode=True, mode="nearest")
    return out[:h, :w]


def _sagittal_panel(ct: np.ndarray, zooms: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    sl = ct[ct.shape[0] // 2].astype(np.float32)  # (y, z)
    lo, hi = CT_WINDOW
    gray = np.clip((sl - lo) / (hi - lo), 0.0, 1.0)
    img = gray.T[::-1, ::-1]  # rows: superior at the top; columns: anterior on the left
    img = _fit(img, size, order=1)
    return np.repeat(img[..., None], 3, axis=2)


def _projection_panel(ct: np.ndarray, seg: np.ndarray, zooms: np.ndarray, labels: Sequence[int],
                      colors: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth-shaded front view of ``labels`` over a faint body silhouette (2D renderer)."""
    lut = np.zeros(int(max(int(seg.max()), max(labels, default=0))) + 1, dtype=np.int32)
    for i, lb in enumerate(labels):
        lut[lb] = i + 1
    group = lut[seg.astype(np.int64)] if seg.size else np.zeros(seg.shape, np.int32)
    ny = group.shape[1]
    occupied = group[:, ::-1, :] > 0  # view from the front: anterior (high y) first
    hit = occupied.any(axis=1)
    first = np.argmax(occupied, axis=1)  # (x, z) index from the front
    which = np.take_along_axis(group[:, ::-1, :], first[:, None, :], axis=1)[:, 0, :]
    depth_mm = ndimage.gaussian_filter(first * zooms[1], 1.0)  # soften the voxel steps of the depth map
    # Lambert shading from the slope of the depth map (light from the front, slightly above and to the right)
    gx = np.gradient(depth_mm, zooms[0], axis=0) if depth_mm.shape[0] > 1 else np.zeros_like(depth_mm)
    gz = np.gradient(depth_mm, zooms[2], axis=1) if depth_mm.shape[1] > 1 else np.zeros_like(depth_mm)
    normal = np.stack([gx, gz, -np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.3, 0.4, -0.87])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(normal @ light, 0.0, 1.0)
    shade *= 1.0 - 0.35 * first / max(ny - 1, 1)

    body = (ct > BODY_THRESHOLD_HU).any(axis=1)
    rgb = np.zeros(hit.shape + (3,))
    rgb[body] = 0.22
    palette = np.vstack([BACKGROUND, colors])
    rgb[hit] = palette[which[hit]] * shade[hit, None]
    img = rgb.transpose(1, 0, 2)[::-1, ::-1]  # rows: z (superior top); columns: x reversed (patient right left)
    return np.clip(_fit(img, size, order=0), 0.0, 1.0)


def _render_3d_panel(seg: np.ndarray, zooms: np.ndarray, labels: Sequence[int], colors: np.ndarray,
                     size: tuple[int, int]) -> np.ndarray:
    """Smoothed surfaces of ``labels`` rendered off-screen with VTK (front view, parallel projection)."""
    import vtk
    from vtk.util import numpy_support

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND)
    for lb, color in zip(labels, colors):
        mask = seg == lb
        if not mask.any():
            continue
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        sub = np.ascontiguousarray(mask[box].astype(np.uint8))
        image = vtk.vtkImageData()
        image.SetDimensions(*sub.shape)
        image.SetSpacing(*zooms)
        image.SetOrigin(*(s.start * z for s, z in zip(box, zooms)))
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(sub.ravel(order="F"), deep=True))
        surface = vtk.vtkMarchingCubes()
        surface.SetInputData(image)
        surface.SetValue(0, 0.5)
        smoother = vtk.vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(surface.GetOutputPort())
        smoother.SetNumberOfIterations(SMOOTHING_ITERATIONS)
        smoother.SetPassBand(0.1)
        smoother.NormalizeCoordinatesOn()
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smoother.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        renderer.AddActor(actor)

    extent = np.asarray(seg.shape) * zooms
    centre = extent / 2.0
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(centre[0], centre[1] + 2.0 * extent[1] + 100.0, centre[2])  # in front (anterior)
    camera.SetViewUp(0.0, 0.0, 1.0)
    camera.SetParallelScale(extent[2] / 2.0)
    renderer.ResetCameraClippingRange()

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    w, h, _ = out.GetDimensions()
    arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
    window.Finalize()
    return _fit(arr.astype(np.float32) / 255.0, size, order=0)


def _write_png_atomic(rgb: np.ndarray, out_png: Path) -> None:
    from PIL import Image

    with atomic_path(out_png, suffix=".png") as tmp:
        Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), mode="RGB").save(tmp, format="PNG")


def generate_preview(ct_img: nib.Nifti1Image, seg_xyz: np.ndarray, class_map: Mapping[int, str],
                     roi_groups: Sequence[Sequence[str]], out_png: str | Path, renderer: str | None = None) -> Path:
    """Write the overview PNG; returns its path. ``seg_xyz`` is on the grid of ``ct_img`` (any orientation)."""
    if not roi_groups:
        raise OptionError("this task has no preview groups; --preview is not available for it")
    if tuple(np.shape(seg_xyz)) != tuple(ct_img.shape[:3]):
        raise OptionError(f"segmentation shape {np.shape(seg_xyz)} does not match image shape {ct_img.shape[:3]}")
    renderer = renderer or choose_renderer()
    ct, seg, zooms = _canonical(ct_img, seg_xyz)
    name_to_id = {name: int(k) for k, name in class_map.items()}
    front = _panel_size(ct.shape[0] * zooms[0], ct.shape[2] * zooms[2])
    side = _panel_size(ct.shape[1] * zooms[1], ct.shape[2] * zooms[2])
    panels = [_sagittal_panel(ct, zooms, side)]
    for group in roi_groups:
        labels = [name_to_id[n] for n in group if n in name_to_id]
        colors = group_colors(len(group))[[i for i, n in enumerate(group) if n in name_to_id]]
        if renderer == "3d":
            panels.append(_render_3d_panel(seg, zooms, labels, colors, front))
        else:
            panels.append(_projection_panel(ct, seg, zooms, labels, colors, front))
    height = max(p.shape[0] for p in panels)
    canvas = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels], axis=1)
    out_png = Path(out_png).absolute()
    _write_png_atomic(canvas, out_png)
    return out_png
