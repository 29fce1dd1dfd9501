"""totalseg_combine_masks (formats.md §14) and the pure part of crop_to_body (§20)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.analysis.combine_masks import CLASS_GROUPS, HEART_CHAMBERS, combine_masks
from totalsegmentator.analysis.crop_to_body import crop_to_mask_bbox, mask_bbox
from totalsegmentator.bin import totalseg_combine_masks as cli
from totalsegmentator.errors import InputImageError, OptionError
from totalsegmentator.io.label_header import add_label_map_to_nifti, read_label_map

SHAPE = (12, 10, 8)
AFF1 = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 3.0, 7], [0, 0, 0, 1]])


def _write_masks(folder, names, affine=AFF1):
    folder.mkdir(exist_ok=True)
    masks = {}
    for i, name in enumerate(names):
        m = np.zeros(SHAPE, np.uint8)
        m[i % SHAPE[0], :, i % SHAPE[2]] = 1
        masks[name] = m
        nib.save(nib.Nifti1Image(m, affine), folder / f"{name}.nii.gz")
    return masks


def test_lung_from_folder_and_alias(tmp_path):
    lobes = CLASS_GROUPS["lung"]
    masks = _write_masks(tmp_path / "seg", list(lobes) + ["liver"])
    img = combine_masks(tmp_path / "seg", "lung")
    expected = np.any([masks[n] for n in lobes], axis=0)
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), expected.astype(np.uint8))
    assert np.allclose(img.affine, AFF1)
    assert not np.asanyarray(img.dataobj)[len(lobes) % SHAPE[0], :, len(lobes) % SHAPE[2]].any()  # liver not in
    alias = combine_masks(tmp_path / "seg", "lungcomm")
    assert np.array_equal(np.asanyarray(alias.dataobj), np.asanyarray(img.dataobj))
    assert read_label_map(img) is None


def test_group_lists():
    assert len(CLASS_GROUPS["vertebrae"]) == 26 and CLASS_GROUPS["vertebrae"][0] == "sacrum"
    assert CLASS_GROUPS["vertebrae"][-1] == "vertebrae_C1"
    assert len(CLASS_GROUPS["ribs"]) == 24
    assert CLASS_GROUPS["vertebrae_ribs"] == CLASS_GROUPS["vertebrae"] + CLASS_GROUPS["ribs"]
    assert CLASS_GROUPS["pelvis"] == ("femur_left", "femur_right", "hip_left", "hip_right")


def test_missing_class_file_is_named(tmp_path):
    _write_masks(tmp_path / "seg", ["lung_upper_lobe_left"])
    with pytest.raises(InputImageError, match="lung_lower_lobe_left.nii.gz"):
        combine_masks(tmp_path / "seg", "lung_left")
    with pytest.raises(OptionError, match="unknown mask group"):
        combine_masks(tmp_path / "seg", "kidneys")
    with pytest.raises(InputImageError, match="not found"):
        combine_masks(tmp_path / "nothing", "lung")


def test_heart_from_heart_class_or_chambers(tmp_path):
    masks = _write_masks(tmp_path / "total", ["heart", "aorta"])
    img = combine_masks(tmp_path / "total", "heart")
    assert np.array_equal(np.asanyarray(img.dataobj), masks["heart"])
    masks = _write_masks(tmp_path / "chambers", list(HEART_CHAMBERS) + ["aorta", "pulmonary_artery"])
    img = combine_masks(tmp_path / "chambers", "heart")
    assert np.array_equal(np.asanyarray(img.dataobj), np.any([masks[n] for n in HEART_CHAMBERS], axis=0))
    _write_masks(tmp_path / "none", ["aorta"])
    with pytest.raises(InputImageError, match="heart.nii.gz"):
        combine_masks(tmp_path / "none", "heart")


def test_multilabel_input_and_ml_header(tmp_path):
    data = np.zeros(SHAPE, np.uint8)
    data[1:3] = 10
    data[4:6] = 11
    data[7:9] = 5
    img = add_label_map_to_nifti(nib.Nifti1Image(data, AFF1), {5: "liver", 10: "lung_upper_lobe_left",
                                                                 11: "lung_lower_lobe_left"})
    path = tmp_path / "seg.nii.gz"
    nib.save(img, path)
    out = combine_masks(path, "lung_left", multilabel=True)
    assert np.array_equal(np.asanyarray(out.dataobj), np.isin(data, [10, 11]).astype(np.uint8))
    assert np.allclose(out.affine, AFF1)
    assert read_label_map(out) == {1: "lung_left"}
    with pytest.raises(InputImageError, match="lung_middle_lobe_right"):
        combine_masks(path, "lung_right")
    nib.save(nib.Nifti1Image(data, AFF1), tmp_path / "plain.nii.gz")
    with pytest.raises(InputImageError, match="label-name header"):
        combine_masks(tmp_path / "plain.nii.gz", "lung_left")


def test_cli(tmp_path, capsys):
    masks = _write_masks(tmp_path / "seg", list(CLASS_GROUPS["pelvis"]))
    out = tmp_path / "out" / "pelvis.nii.gz"
    assert cli.main(["-i", str(tmp_path / "seg"), "-o", str(out), "-m", "pelvis", "-ml"]) == 0
    img = nib.load(out)
    assert np.array_equal(np.asanyarray(img.dataobj), np.any(list(masks.values()), axis=0))
    assert read_label_map(img) == {1: "pelvis"}

    assert cli.main(["-i", str(tmp_path / "seg"), "-o", str(out), "-m", "ribs"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("totalseg_combine_masks: error:") and "rib_left_1.nii.gz" in err
    assert "\n" not in err and "Traceback" not in err

    assert cli.main(["-i", str(tmp_path / "seg"), "-o", str(out), "-m", "brain"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_libs_face():
    from totalsegmentator.libs import combine_masks as face

    assert face is combine_masks


# --- crop_to_body (pure part) ----------------------------------------------------------------------------------

def test_crop_to_mask_bbox_margin_and_affine():
    affine = np.array([[-1.5, 0, 0, 100], [0, 2.0, 0, -50], [0, 0, 1.0, 20], [0, 0, 0, 1]])
    data = np.arange(40 * 30 * 50, dtype=np.float32).reshape(40, 30, 50) + 0.7
    img = nib.Nifti1Image(data, affine)
    body = np.zeros(data.shape, np.uint8)
    body[10:21, 5:16, 20:31] = 1   # trunc
    body[25:28, 5:8, 40:45] = 2    # extremities
    out = crop_to_mask_bbox(img, body, 3.0)
    # margin: int(3 / 1.5) = 2, int(3 / 2) = 1, int(3 / 1) = 3 voxels
    assert out.shape == (28 + 2 - 8, 16 + 1 - 4, 45 + 3 - 17)
    assert out.get_data_dtype() == np.int32
    assert np.array_equal(np.asanyarray(out.dataobj), np.trunc(data[8:30, 4:17, 17:48]).astype(np.int32))
    assert np.allclose(out.affine[:3, 3], affine[:3, :3] @ [8, 4, 17] + affine[:3, 3])
    assert np.allclose(out.affine[:3, :3], affine[:3, :3])

    trunc = crop_to_mask_bbox(img, body, 3.0, only_trunc=True)
    assert trunc.shape == (21 + 2 - 8, 16 + 1 - 4, 31 + 3 - 17)


def test_crop_clips_at_image_edges_and_empty():
    img = nib.Nifti1Image(np.ones((10, 10, 10), np.int16), np.eye(4))
    body = np.zeros((10, 10, 10), np.uint8)
    body[0:2, 8:10, 4:5] = 1
    assert mask_bbox(body, (3, 3, 3)) == (slice(0, 5), slice(5, 10), slice(1, 8))
    out = crop_to_mask_bbox(img, body, 3.0)
    assert out.shape == (5, 5, 7) and np.allclose(out.affine[:3, 3], [0, 5, 1])
    with pytest.raises(InputImageError, match="no body"):
        crop_to_mask_bbox(img, np.zeros((10, 10, 10)), 3.0)
    with pytest.raises(InputImageError, match="body_trunc"):
        crop_to_mask_bbox(img, body * 2, 3.0, only_trunc=True)
    with pytest.raises(InputImageError, match="does not match"):
        crop_to_mask_bbox(img, np.zeros((9, 10, 10)), 3.0)


def test_crop_to_body_command(tmp_path, monkeypatch):
    import totalsegmentator.python_api as api
    from totalsegmentator.bin import crop_to_body as cli

    data = np.arange(20 * 16 * 12, dtype=np.int16).reshape(20, 16, 12)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), src)
    body = np.zeros(data.shape, np.uint8)
    body[6:12, 4:9, 3:8] = 1
    body[14:16, 4:6, 3:5] = 2
    seen = {}

    def fake(input, output=None, **kw):
        seen.update(kw)
        return nib.Nifti1Image(body, np.eye(4))

    monkeypatch.setattr(api, "totalsegmentator", fake)
    out = tmp_path / "cropped.nii.gz"
    assert cli.main(["-i", str(src), "-o", str(out), "-t", "-d", "cpu", "-q"]) == 0
    assert seen["task"] == "body" and seen["fast"] is True and seen["device"] == "cpu"
    img = nib.load(out)
    assert img.get_data_dtype() == np.int32
    assert np.array_equal(np.asanyarray(img.dataobj), data[3:15, 1:12, 0:11])  # trunc box + 3 voxels (1 mm)
    assert np.allclose(img.affine[:3, 3], [3, 1, 0])
