"""statistics.json (formats.md §11) and statistics_radiomics.json (§12)."""
from __future__ import annotations

import json
import sys
import types

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.analysis.radiomics import (RADIOMICS_SETTINGS, ZERO_FEATURE_NAMES,
                                                 get_radiomics_features_for_entire_dir)
from totalsegmentator.analysis.statistics import get_basic_statistics, to_int16
from totalsegmentator.errors import InputImageError, OptionalDependencyError, OptionError

CLASS_MAP = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 7: "pancreas"}
AFFINE = np.diag([1.5, 2.0, 2.5, 1.0])
VOXEL_MM3 = 1.5 * 2.0 * 2.5


@pytest.fixture
def case():
    rng = np.random.default_rng(7)
    ct = rng.normal(40, 25, size=(24, 20, 16)).astype(np.float32)
    seg = np.zeros(ct.shape, np.uint8)
    seg[5:10, 5:9, 4:8] = 1          # inside
    seg[12:15, 10:14, 6:9] = 2       # inside, small
    seg[0:4, 8:12, 6:10] = 3         # touches the first 3 indices along x
    # 7 (pancreas) absent
    return nib.Nifti1Image(seg, AFFINE), nib.Nifti1Image(ct, AFFINE)


def _ref(ct_img, seg_img, label):
    vals = np.trunc(ct_img.get_fdata())[np.asanyarray(seg_img.dataobj) == label]
    return vals


def test_volume_mean_and_order(case):
    seg, ct = case
    stats = get_basic_statistics(seg, ct, class_map=CLASS_MAP)
    assert list(stats) == ["spleen", "kidney_right", "kidney_left", "pancreas"]
    vals = _ref(ct, seg, 1)
    assert stats["spleen"]["volume"] == pytest.approx(vals.size * VOXEL_MM3)
    assert stats["spleen"]["intensity"] == round(float(vals.mean()), 5)
    assert stats["kidney_right"]["intensity"] == round(float(_ref(ct, seg, 2).mean()), 5)
    # border rule: class 3 reaches index 0..3 along x -> zeroed
    assert stats["kidney_left"] == {"volume": 0.0, "intensity": 0.0}
    assert stats["pancreas"] == {"volume": 0.0, "intensity": 0.0}
    assert set(stats["spleen"]) == {"volume", "intensity"}


def test_median_and_border_switch(case):
    seg, ct = case
    stats = get_basic_statistics(seg, ct, class_map=CLASS_MAP, metric="median", exclude_masks_at_border=False)
    for label, name in ((1, "spleen"), (2, "kidney_right"), (3, "kidney_left")):
        vals = _ref(ct, seg, label)
        assert stats[name]["intensity"] == round(float(np.median(vals)), 5)
        assert stats[name]["volume"] == pytest.approx(vals.size * VOXEL_MM3)


@pytest.mark.parametrize("lo,hi,excluded", [(2, 6, True), (3, 6, False), (15, 21, False), (15, 22, True)])
def test_border_rule_exact_indices(lo, hi, excluded):
    shape = (24, 24, 24)
    seg = np.zeros(shape, np.uint8)
    seg[lo:hi, 10:12, 10:12] = 1
    ct = np.full(shape, 50, np.int16)
    stats = get_basic_statistics(seg, ct, class_map={1: "spleen"})
    assert (stats["spleen"]["volume"] == 0.0) is excluded


def test_int16_cast_truncates_and_wraps():
    data = np.array([10.7, -3.9, 40000.0, -40000.5, np.nan])
    assert to_int16(data).tolist() == [10, -3, 40000 - 65536, -40000 + 65536, 0]
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[4:6, 4:6, 4:6] = 1
    ct = np.full((10, 10, 10), 99.9, np.float64)
    stats = get_basic_statistics(seg, ct, class_map={1: "spleen"})
    assert stats["spleen"]["intensity"] == 99.0
    assert stats["spleen"]["volume"] == 8.0  # arrays only: 1 mm³ voxels


def test_extra_metrics(case):
    seg, ct = case
    stats = get_basic_statistics(seg, ct, class_map=CLASS_MAP, extra_metrics=True)
    s = stats["spleen"]
    vals = _ref(ct, seg, 1)
    assert s["n_voxels"] == vals.size == 5 * 4 * 4
    assert s["intensity_std"] == round(float(vals.std()), 5)
    assert s["intensity_min"] == float(vals.min()) and s["intensity_max"] == float(vals.max())
    assert s["centroid_vox"] == [7.0, 6.5, 5.5]
    assert s["bbox_vox"] == [[5, 9], [5, 8], [4, 7]]
    for name in ("kidney_left", "pancreas"):
        assert stats[name] == {"volume": 0.0, "intensity": 0.0, "n_voxels": 0, "intensity_std": 0.0,
                               "intensity_min": 0.0, "intensity_max": 0.0, "centroid_vox": None, "bbox_vox": None}


def test_roi_subset_normalized_and_file(case, tmp_path):
    seg, ct = case
    out = tmp_path / "sub" / "statistics.json"
    stats = get_basic_statistics(seg, ct, file_out=out, quiet=True, class_map=CLASS_MAP,
                                 roi_subset=["kidney_right", "spleen"], normalized_intensities=True)
    assert list(stats) == ["spleen", "kidney_right"]
    raw = to_int16(ct.get_fdata())
    norm = (raw - raw.min()) / (raw.max() - raw.min())
    mask = np.asanyarray(seg.dataobj) == 1
    assert stats["spleen"]["intensity"] == round(float(norm[mask].mean()), 5)
    assert 0.0 <= stats["kidney_right"]["intensity"] <= 1.0
    med = get_basic_statistics(seg, ct, class_map=CLASS_MAP, normalized_intensities=True, metric="median")
    assert med["spleen"]["intensity"] == round(float(np.median(norm[mask])), 5)
    text = out.read_text()
    assert json.loads(text) == stats
    assert text.startswith('{\n    "spleen": {\n        "volume"')  # indent 4
    assert not [p for p in out.parent.iterdir() if p.name != "statistics.json"]  # no temp files left


def test_task_class_map_and_paths(tmp_path):
    seg = np.zeros((12, 12, 12), np.uint8)
    seg[5:7, 5:7, 5:7] = 5  # 'liver' in task total
    seg_path, ct_path = tmp_path / "seg.nii.gz", tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(seg, np.eye(4)), seg_path)
    nib.save(nib.Nifti1Image(np.full(seg.shape, 60, np.int16), np.diag([2.0, 2.0, 2.0, 1.0])), ct_path)
    stats = get_basic_statistics(str(seg_path), ct_path)
    assert len(stats) == 117 and list(stats)[0] == "spleen"
    assert stats["liver"] == {"volume": 8 * 8.0, "intensity": 60.0}  # voxel volume from the CT zooms


def test_errors(case):
    seg, ct = case
    with pytest.raises(InputImageError, match="does not match"):
        get_basic_statistics(np.zeros((3, 3, 3), np.uint8), ct, class_map=CLASS_MAP)
    with pytest.raises(OptionError, match="median"):
        get_basic_statistics(seg, ct, class_map=CLASS_MAP, metric="max")
    with pytest.raises(OptionError, match="liver"):
        get_basic_statistics(seg, ct, class_map=CLASS_MAP, roi_subset=["liver"])
    with pytest.raises(InputImageError, match="not found"):
        get_basic_statistics(seg, "/nonexistent/ct.nii.gz", class_map=CLASS_MAP)


def test_official_import_paths():
    import totalsegmentator.statistics as face

    assert face.get_basic_statistics is get_basic_statistics
    assert face.get_radiomics_features_for_entire_dir is get_radiomics_features_for_entire_dir


# --- radiomics -------------------------------------------------------------------------------------------------

def _mask_dir(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    m = np.zeros((10, 10, 10), np.uint8)
    m[3:7, 3:7, 3:7] = 1
    nib.save(nib.Nifti1Image(m, np.eye(4)), d / "liver.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(m), np.eye(4)), d / "spleen.nii.gz")
    nib.save(nib.Nifti1Image(m, np.eye(4)), d / "aorta.nii.gz")
    (d / "statistics.json").write_text("{}")
    return d


def test_radiomics_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "radiomics", None)  # makes `import radiomics` raise ImportError
    out = tmp_path / "statistics_radiomics.json"
    with pytest.raises(OptionalDependencyError, match="pip install --no-build-isolation pyradiomics==3.0.1"):
        get_radiomics_features_for_entire_dir(tmp_path / "ct.nii.gz", _mask_dir(tmp_path), out)
    assert not out.exists()


def test_radiomics_with_stand_in_extractor(tmp_path, monkeypatch):
    """Our plumbing around pyradiomics: settings, enabled classes, key handling, empty masks, failures."""
    calls = []

    class Extractor:
        def __init__(self, **settings):
            self.settings, self.enabled = settings, []

        def disableAllFeatures(self):
            self.enabled = []

        def enableFeatureClassByName(self, name):
            self.enabled.append(name)

        def execute(self, image, mask):
            calls.append((self.settings, list(self.enabled), image, mask))
            if mask.endswith("aorta.nii.gz"):
                raise ValueError("degenerate mask")
            return {"diagnostics_Versions_PyRadiomics": "x", "original_shape_Elongation": 0.123456,
                    "original_firstorder_Mean": np.float64(42.000049)}

    fe = types.ModuleType("radiomics.featureextractor")
    fe.RadiomicsFeatureExtractor = Extractor
    pkg = types.ModuleType("radiomics")
    pkg.featureextractor = fe
    monkeypatch.setitem(sys.modules, "radiomics", pkg)
    monkeypatch.setitem(sys.modules, "radiomics.featureextractor", fe)

    ct = nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4))
    out = tmp_path / "statistics_radiomics.json"
    res = get_radiomics_features_for_entire_dir(ct, _mask_dir(tmp_path), out)
    assert list(res) == ["aorta", "liver", "spleen"]
    assert res["liver"] == {"shape_Elongation": 0.1235, "firstorder_Mean": 42.0}
    zero = {k: 0 for k in ZERO_FEATURE_NAMES}
    assert res["spleen"] == zero and res["aorta"] == zero and len(zero) == 107
    assert json.loads(out.read_text()) == res
    settings, enabled, image, _ = calls[0]
    assert settings == RADIOMICS_SETTINGS == {"resampledPixelSpacing": [3, 3, 3], "geometryTolerance": 1e-3}
    assert enabled == ["shape", "firstorder"]
    assert image.endswith("ct.nii.gz")
    assert len(calls) == 2  # the empty spleen mask is not sent to the extractor


def test_radiomics_real_pyradiomics(tmp_path):
    pytest.importorskip("radiomics")
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])  # pyradiomics resamples to 3 mm: a 1 mm cube of 4 voxels would vanish
    ct = nib.Nifti1Image(rng.normal(50, 10, (20, 20, 20)).astype(np.int16), affine)
    masks = tmp_path / "masks"
    masks.mkdir()
    liver = np.zeros((20, 20, 20), np.uint8)
    liver[5:11, 5:11, 5:11] = 1
    nib.save(nib.Nifti1Image(liver, affine), masks / "liver.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(liver), affine), masks / "spleen.nii.gz")
    res = get_radiomics_features_for_entire_dir(ct, masks, None)
    assert res["liver"]["shape_VoxelVolume"] == 6 ** 3 * 27.0
    assert abs(res["liver"]["firstorder_Mean"] - ct.get_fdata()[liver > 0].mean()) < 1e-3
    assert set(res["spleen"].values()) == {0.0}
