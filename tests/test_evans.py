"""Evans index measurement (formats.md §19) on synthetic heads, and the totalseg_evans_index command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from totalsegmentator.analysis import evans_index as ev
from totalsegmentator.bin import totalseg_evans_index as cli
from totalsegmentator.errors import InputImageError

BRAIN_AXES = (65.0, 85.0, 60.0)   # semi-axes (left-right, anterior-posterior, inferior-superior), mm
SKULL_AXES = (72.0, 92.0, 67.0)
HORN_CENTRE = (11.0, 25.0, 10.0)  # right horn; the left one is mirrored in x
HORN_AXES = (8.0, 14.0, 8.0)
BODY_CENTRE, BODY_AXES = (7.0, -5.0, 15.0), (4.0, 20.0, 6.0)
# widest frontal-horn chord: outer edge to outer edge; inner skull width in the horn slice (z = 10 mm)
HORN_WIDTH = 2 * (HORN_CENTRE[0] + HORN_AXES[0])
SKULL_WIDTH = 2 * BRAIN_AXES[0] * np.sqrt(1 - (HORN_CENTRE[2] / BRAIN_AXES[2]) ** 2)
EXPECTED_INDEX = HORN_WIDTH / SKULL_WIDTH
BRAIN_ML = 4 / 3 * np.pi * np.prod(BRAIN_AXES) / 1000
VENTRICLE_ML = 2 * 4 / 3 * np.pi * (np.prod(HORN_AXES) + np.prod(BODY_AXES)) / 1000


def rotation(yaw: float, roll: float, pitch: float) -> np.ndarray:
    y, r, p = np.deg2rad([yaw, roll, pitch])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    ry = np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


def make_head(rot=np.eye(3), spacing=1.5, half=100.0):
    """Voxelised head (brain, skull shell, frontal horns, all ventricles, affine) rotated by ``rot``."""
    axis = np.arange(-half, half + 1e-6, spacing, dtype=np.float32)
    n = len(axis)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -half
    rot = rot.astype(np.float32)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    out = {k: np.zeros((n, n, n), bool) for k in ("brain", "skull", "horns", "vent")}
    for k, z in enumerate(axis):
        q = np.stack([xx, yy, np.full_like(xx, z)], -1) @ rot  # head coordinates

        def ell(centre, radii):
            return (((q - np.asarray(centre, np.float32)) / np.asarray(radii, np.float32)) ** 2).sum(-1) <= 1

        brain = ell((0, 0, 0), BRAIN_AXES)
        horns = ell(HORN_CENTRE, HORN_AXES) | ell((-HORN_CENTRE[0],) + HORN_CENTRE[1:], HORN_AXES)
        out["brain"][:, :, k] = brain
        out["skull"][:, :, k] = ell((0, 0, 0), SKULL_AXES) & ~brain
        out["horns"][:, :, k] = horns
        out["vent"][:, :, k] = horns | ell(BODY_CENTRE, BODY_AXES) | ell((-BODY_CENTRE[0],) + BODY_CENTRE[1:],
                                                                          BODY_AXES)
    return out["brain"], out["skull"], out["horns"], out["vent"].astype(np.uint8) * 3, affine


@pytest.fixture(scope="module")
def straight():
    head = make_head()
    return head, ev.measure_evans_index(*head)


def test_straight_head(straight):
    _, m = straight
    r = m.result
    assert list(r) == ["evans_index", "brain_volume_ml", "ventricle_volume_ml", "ventricle_brain_ratio"]
    assert r["evans_index"] == pytest.approx(EXPECTED_INDEX, abs=0.01)
    assert r["brain_volume_ml"] == pytest.approx(BRAIN_ML, rel=0.02)
    assert r["ventricle_volume_ml"] == pytest.approx(VENTRICLE_ML, rel=0.05)
    assert r["ventricle_brain_ratio"] == pytest.approx(r["ventricle_volume_ml"] / r["brain_volume_ml"], abs=0.001)
    assert r["evans_index"] == round(r["evans_index"], 3) and r["brain_volume_ml"] == round(r["brain_volume_ml"], 1)
    assert m.details["horn_width_mm"] == pytest.approx(HORN_WIDTH, abs=1.5)


def test_rotated_head_gives_same_index(straight):
    _, m0 = straight
    head = make_head(rotation(15.0, 10.0, 20.0))
    m1 = ev.measure_evans_index(*head)
    assert abs(m1.result["evans_index"] - m0.result["evans_index"]) <= 0.01
    assert m1.result["evans_index"] == pytest.approx(EXPECTED_INDEX, abs=0.01)
    assert m1.result["brain_volume_ml"] == pytest.approx(m0.result["brain_volume_ml"], rel=0.01)
    # the frame found is the head's own: left-right axis = first column of the rotation
    lr = np.array(m1.details["frame"][0])
    assert abs(lr @ rotation(15.0, 10.0, 20.0)[:, 0]) > 0.995


def test_empty_inputs_give_nulls_and_png(straight, tmp_path):
    (brain, skull, horns, vent, affine), _ = straight
    m = ev.measure_evans_index(brain, skull, np.zeros_like(horns), vent, affine)
    assert m.result == {"evans_index": None, "brain_volume_ml": None, "ventricle_volume_ml": None,
                        "ventricle_brain_ratio": None}
    png = ev.save_evans_png(m, tmp_path / "empty.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputImageError, match="one grid"):
        ev.evans_index_from_masks(brain, skull[:-1], horns, vent, affine)


def test_png_shows_measurement(straight, tmp_path):
    from PIL import Image

    _, m = straight
    path = ev.save_evans_png(m, tmp_path / "sub" / "evans.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape[1] == 1200  # 6 inch at 200 dpi
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 200) & (img[..., 2] < 60)
    assert red.sum() > 50 and yellow.sum() > 50  # both diameters are drawn
    # the yellow (skull) line is wider than the red (frontal horn) line, in the ratio of the index
    ratio = np.ptp(np.nonzero(red)[1]) / np.ptp(np.nonzero(yellow)[1])
    assert ratio == pytest.approx(m.result["evans_index"], abs=0.03)


def test_cli_with_stubbed_segmentation(straight, tmp_path, monkeypatch, capsys):
    head, m0 = straight
    ct = tmp_path / "head.nii.gz"
    ct.write_bytes(b"not read by the stub")
    seen = {}

    def fake_masks(path, device="gpu", verbose=False):
        seen["path"] = path
        return head

    monkeypatch.setattr(ev, "masks_from_ct", fake_masks)
    out, png = tmp_path / "evans.json", tmp_path / "evans.png"
    assert cli.main(["-i", str(ct), "-o", str(out), "-p", str(png)]) == 0
    assert seen["path"] == str(ct)
    assert json.loads(out.read_text()) == m0.result
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == ""
    assert cli.main(["-i", str(tmp_path / "missing.nii.gz"), "-o", str(out), "-p", str(png)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("totalseg_evans_index: error:") and "missing.nii.gz" in err


def test_masks_from_ct_asks_pipeline_for_brain_skull_and_ventricles(monkeypatch):
    import nibabel as nib

    import totalsegmentator.python_api as api
    from totalsegmentator.io.label_header import add_label_map_to_nifti

    total = np.zeros((6, 6, 6), np.uint8)
    total[1, :, :], total[2, :, :] = 90, 91
    vent = np.zeros((6, 6, 6), np.uint8)
    vent[3, 0, :], vent[3, 1, :], vent[3, 2, :] = 1, 6, 11
    calls = []

    def fake(input, output=None, **kw):
        calls.append(kw)
        if kw["task"] == "total":
            return add_label_map_to_nifti(nib.Nifti1Image(total, np.eye(4)), {90: "brain", 91: "skull"})
        return add_label_map_to_nifti(nib.Nifti1Image(vent, np.eye(4)),
                                      {1: "ventricle_frontal_horn_left", 6: "ventricle_frontal_horn_right",
                                       11: "third_ventricle"})

    monkeypatch.setattr(api, "totalsegmentator", fake)
    brain, skull, horns, ventricles, affine = ev.masks_from_ct("ct.nii.gz", device="cpu")
    assert calls[0]["task"] == "total" and calls[0]["roi_subset"] == ["brain", "skull"] and calls[0]["ml"]
    assert calls[1]["task"] == "ventricle_parts" and all(c["device"] == "cpu" for c in calls)
    assert np.array_equal(brain, total == 90) and np.array_equal(skull, total == 91)
    assert np.array_equal(horns, np.isin(vent, [1, 6])) and np.array_equal(ventricles, vent > 0)
    assert np.allclose(affine, np.eye(4))
