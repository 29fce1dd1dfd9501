"""Preview PNG (formats.md §16): layout, colours, orientation, renderer choice; no display needed."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.analysis import preview as pv
from totalsegmentator.errors import OptionError

SHAPE = (40, 30, 60)
SPACING = 3.0
CLASS_MAP = {1: "liver", 2: "spleen", 3: "aorta"}
GROUPS = (("liver", "spleen"), ("aorta", "not_in_this_task"))


def _ellipsoid(centre, radii):
    g = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    return (((g - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1


def phantom(flip_x: bool = False):
    """RAS torso: liver on the patient's right (high x), spleen on the left, aorta in the middle."""
    body = _ellipsoid((20, 15, 30), (18, 13, 40))
    ct = np.where(body, 40, -1000).astype(np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    seg[_ellipsoid((29, 16, 35), (7, 6, 8))] = 1
    seg[_ellipsoid((10, 12, 38), (4, 4, 5))] = 2
    seg[_ellipsoid((20, 10, 30), (2, 2, 20))] = 3
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    if flip_x:  # same anatomy stored left-to-right (LAS)
        ct, seg = ct[::-1].copy(), seg[::-1].copy()
        affine[0, 0] = -SPACING
        affine[0, 3] = (SHAPE[0] - 1) * SPACING
    return nib.Nifti1Image(ct, affine), seg


def _read(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(float) / 255.0


def _cosine(pixels, colour):
    p = pixels / np.linalg.norm(pixels, axis=-1, keepdims=True).clip(1e-6)
    return p @ (colour / np.linalg.norm(colour))


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)


def test_2d_layout_colours_and_orientation(tmp_path):
    ct, seg = phantom()
    out = pv.generate_preview(ct, seg, CLASS_MAP, GROUPS, tmp_path / "p" / "preview_total.png", renderer="2d")
    img = _read(out)
    side, front, height = int(30 * SPACING * 0.9), int(40 * SPACING * 0.9), int(60 * SPACING * 0.9)
    assert img.shape == (height, side + 2 * front, 3)

    panel1 = img[:, side:side + front]
    liver_c, spleen_c = pv.group_colors(2)
    liver_px = _cosine(panel1, liver_c) > 0.995
    spleen_px = _cosine(panel1, spleen_c) > 0.995
    assert liver_px.sum() > 100 and spleen_px.sum() > 20
    # front view: patient's right (liver) on the viewer's left, spleen on the right
    assert np.nonzero(liver_px)[1].mean() < front / 2 < np.nonzero(spleen_px)[1].mean()
    # superior at the top: the spleen (z 38) sits higher than the liver centre (z 35)
    assert np.nonzero(spleen_px)[0].mean() < np.nonzero(liver_px)[0].mean()

    panel2 = img[:, side + front:]
    aorta_px = _cosine(panel2, pv.group_colors(2)[0]) > 0.995
    assert aorta_px.sum() > 20 and abs(np.nonzero(aorta_px)[1].mean() - front / 2) < 6
    # faint body silhouette behind, black outside the body
    assert panel2[height // 2, 3].max() < 0.05 and 0.1 < panel2[height // 2, front // 4].max() < 0.4

    sagittal = img[:, :side]
    # window -115..225: soft tissue (40 HU) is mid grey, air black
    assert sagittal[height // 2, side // 2] == pytest.approx([(40 + 115) / 340] * 3, abs=0.02)
    assert sagittal[2, 2].max() < 0.01


def test_orientation_independent(tmp_path):
    a = pv.generate_preview(*phantom(), CLASS_MAP, GROUPS, tmp_path / "ras.png", renderer="2d")
    b = pv.generate_preview(*phantom(flip_x=True), CLASS_MAP, GROUPS, tmp_path / "las.png", renderer="2d")
    assert np.array_equal(_read(a), _read(b))


def test_errors(tmp_path):
    ct, seg = phantom()
    with pytest.raises(OptionError, match="no preview groups"):
        pv.generate_preview(ct, seg, CLASS_MAP, (), tmp_path / "x.png", renderer="2d")
    with pytest.raises(OptionError, match="does not match"):
        pv.generate_preview(ct, seg[:-1], CLASS_MAP, GROUPS, tmp_path / "x.png", renderer="2d")
    assert not (tmp_path / "x.png").exists()


def test_renderer_choice(monkeypatch):
    monkeypatch.setenv(pv.RENDERER_ENV, "2d")
    assert pv.choose_renderer() == "2d"
    monkeypatch.setenv(pv.RENDERER_ENV, "bogus")
    with pytest.raises(OptionError, match="2d, 3d or auto"):
        pv.choose_renderer()
    monkeypatch.setattr(pv, "vtk_offscreen_available", lambda: False)
    monkeypatch.setenv(pv.RENDERER_ENV, "auto")
    assert pv.choose_renderer() == "2d"
    monkeypatch.setenv(pv.RENDERER_ENV, "3d")
    with pytest.raises(OptionError, match="pip install vtk"):
        pv.choose_renderer()


def test_3d_renderer_when_available(tmp_path):
    if not pv.vtk_offscreen_available():
        pytest.skip("vtk with off-screen rendering is not installed")
    ct, seg = phantom()
    out = pv.generate_preview(ct, seg, CLASS_MAP, GROUPS, tmp_path / "p3d.png", renderer="3d")
    img = _read(out)
    side, front = int(30 * SPACING * 0.9), int(40 * SPACING * 0.9)
    panel1 = img[:, side:side + front]
    liver_px = (_cosine(panel1, pv.group_colors(2)[0]) > 0.99) & (panel1.max(axis=-1) > 0.1)
    assert liver_px.sum() > 50
    assert np.nonzero(liver_px)[1].mean() < front / 2
