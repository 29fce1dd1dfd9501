"""statistics_radiomics.json (formats.md §12) computed by the real pyradiomics, on phantoms with known answers.

Skipped where pyradiomics is not installed. On Python 3.11 it installs from PyPI with
``pip install -c constraints-cpu.txt --no-build-isolation pyradiomics==3.0.1`` (numpy and setuptools must already be
installed): the 3.1.0 sdist is broken (metadata says 3.0.1a1, C headers missing) and 3.0.1's setup.py imports numpy.
The stand-in tests in test_statistics.py cover the plumbing without pyradiomics.
"""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("radiomics")

from totalsegmentator import config  # noqa: E402
from totalsegmentator.analysis.radiomics import ZERO_FEATURE_NAMES, get_radiomics_features  # noqa: E402
from totalsegmentator.inference.cache import clear_cache  # noqa: E402
from totalsegmentator.python_api import totalsegmentator  # noqa: E402
from totalsegmentator.registry import get_task  # noqa: E402
from totalsegmentator.statistics import get_radiomics_features_for_entire_dir  # noqa: E402
from totalsegmentator.testing.phantoms import Phantom, grid_affine  # noqa: E402
from totalsegmentator.testing.tiny_weights import install_task_weights  # noqa: E402

# formats.md §12, written out here (not taken from the implementation)
SPEC_SHAPE = ("Elongation Flatness LeastAxisLength MajorAxisLength Maximum2DDiameterColumn Maximum2DDiameterRow "
              "Maximum2DDiameterSlice Maximum3DDiameter MeshVolume MinorAxisLength Sphericity SurfaceArea "
              "SurfaceVolumeRatio VoxelVolume").split()
SPEC_FIRSTORDER = ("10Percentile 90Percentile Energy Entropy InterquartileRange Kurtosis Maximum "
                   "MeanAbsoluteDeviation Mean Median Minimum Range RobustMeanAbsoluteDeviation RootMeanSquared "
                   "Skewness TotalEnergy Uniformity Variance").split()
EXTRACTED_KEYS = {f"shape_{n}" for n in SPEC_SHAPE} | {f"firstorder_{n}" for n in SPEC_FIRSTORDER}

S = 3.0  # voxel size of most phantoms: pyradiomics then resamples nothing, so volumes and means are exact
VOX_MM3 = S ** 3


def _affine(shape, spacing=(S, S, S), axcodes="LPS"):
    return grid_affine(spacing, shape, axcodes)


def _radius_mm(shape, spacing=(S, S, S), centre=None):
    """Distance (mm) of every voxel centre from ``centre`` (voxel coordinates; default: the middle)."""
    centre = (np.array(shape) - 1) / 2 if centre is None else np.asarray(centre, float)
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((idx[i] - centre[i]) * spacing[i]) ** 2 for i in range(3)))
    return r


def _assert_rounded_floats(entry):
    for k, v in entry.items():
        assert isinstance(v, float), (k, v)
        assert round(v, 4) == v, (k, v)


@pytest.fixture
def phantom(tmp_path):
    """CT (int16, 3 mm, LPS, origin off zero) with a box of 120 HU and a ball of 300 HU in -50 HU; their masks."""
    shape = (40, 40, 40)
    affine = _affine(shape)
    ct = np.full(shape, -50, np.int16)
    box = np.zeros(shape, np.uint8)
    box[2:12, 3:15, 4:16] = 1  # 10 x 12 x 12 voxels
    ct[box == 1] = 120
    ball = (_radius_mm(shape, centre=(27, 27, 27)) <= 24).astype(np.uint8)  # r = 24 mm = 8 voxels, apart from box
    assert not (ball & box).any()
    ct[ball == 1] = 300
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(box, affine), masks / "box.nii.gz")
    nib.save(nib.Nifti1Image(ball, affine), masks / "ball.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), masks / "empty.nii.gz")
    one = np.zeros(shape, np.uint8)
    one[5, 35, 35] = 1  # pyradiomics refuses a single voxel
    nib.save(nib.Nifti1Image(one, affine), masks / "single_voxel.nii.gz")
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), affine), masks / "everything.nii.gz")
    nib.save(nib.Nifti1Image(box, affine), masks / "lesion.v2.nii.gz")  # key: name up to the first dot
    (masks / "statistics.json").write_text("{}")
    nib.save(nib.Nifti1Image(box, affine), masks / "not_a_mask.nii")  # only *.nii.gz files count
    return nib.Nifti1Image(ct, affine), masks, box, ball


def test_box_shape_and_firstorder_are_exact(phantom):
    ct, masks, box, _ = phantom
    res = get_radiomics_features_for_entire_dir(ct, masks, None)
    f = res["box"]
    assert f["shape_VoxelVolume"] == box.sum() * VOX_MM3 == 10 * 12 * 12 * 27
    assert f["shape_MeshVolume"] == pytest.approx(f["shape_VoxelVolume"], rel=0.03)  # marching cubes cuts corners
    # principal axes of a uniform box of n voxels: 4 * sqrt(variance) with variance = s^2 (n^2 - 1) / 12
    axis = {n: 4 * S * math.sqrt((n * n - 1) / 12) for n in (10, 12)}
    assert f["shape_MajorAxisLength"] == pytest.approx(axis[12], abs=1e-3)
    assert f["shape_MinorAxisLength"] == pytest.approx(axis[12], abs=1e-3)
    assert f["shape_LeastAxisLength"] == pytest.approx(axis[10], abs=1e-3)
    assert f["shape_Elongation"] == pytest.approx(1.0, abs=1e-4)
    assert f["shape_Flatness"] == pytest.approx(axis[10] / axis[12], abs=1e-4)
    for name in ("Mean", "Median", "Minimum", "Maximum", "10Percentile", "90Percentile"):
        assert f[f"firstorder_{name}"] == 120.0
    assert f["firstorder_Variance"] == 0.0 and f["firstorder_Range"] == 0.0
    assert f["firstorder_TotalEnergy"] == pytest.approx(box.sum() * VOX_MM3 * 120 ** 2, rel=1e-6)
    assert res["lesion"] == f  # same mask under another file name


def test_ball_volume_close_to_analytic(phantom):
    ct, masks, _, ball = phantom
    f = get_radiomics_features_for_entire_dir(ct, masks, None)["ball"]
    analytic = 4 / 3 * math.pi * 24 ** 3
    assert f["shape_VoxelVolume"] == ball.sum() * VOX_MM3
    assert f["shape_VoxelVolume"] == pytest.approx(analytic, rel=0.03)
    assert f["shape_MeshVolume"] == pytest.approx(analytic, rel=0.04)
    assert f["shape_SurfaceArea"] == pytest.approx(4 * math.pi * 24 ** 2, rel=0.10)
    assert f["shape_Maximum3DDiameter"] == pytest.approx(48, rel=0.10)
    assert 0.85 < f["shape_Sphericity"] <= 1.0
    assert f["firstorder_Mean"] == 300.0 and f["firstorder_Variance"] == 0.0


def test_resampled_to_3mm_ball(tmp_path):
    """1.5 mm voxels: pyradiomics resamples image (B-spline) and mask (nearest) to 3 mm first."""
    sp = (1.5, 1.5, 1.5)
    shape = (54, 54, 54)
    r = _radius_mm(shape, sp)
    ct = np.where(r <= 33, 300, -50).astype(np.int16)  # uniform well beyond the mask: no edge mixing inside it
    masks = tmp_path / "m"
    masks.mkdir()
    nib.save(nib.Nifti1Image((r <= 24).astype(np.uint8), _affine(shape, sp, "RAS")), masks / "ball.nii.gz")
    f = get_radiomics_features_for_entire_dir(nib.Nifti1Image(ct, _affine(shape, sp, "RAS")), masks, None)["ball"]
    analytic = 4 / 3 * math.pi * 24 ** 3
    assert f["shape_VoxelVolume"] % 27 == 0  # counted on the 3 mm grid
    assert f["shape_VoxelVolume"] == pytest.approx(analytic, rel=0.05)
    assert f["shape_MeshVolume"] == pytest.approx(analytic, rel=0.05)
    assert f["firstorder_Mean"] == pytest.approx(300, abs=1.0)  # B-spline result cast back to int16


def test_file_schema(phantom, tmp_path):
    ct, masks, _, _ = phantom
    out = tmp_path / "out" / "statistics_radiomics.json"
    res = get_radiomics_features_for_entire_dir(ct, masks, out)
    text = out.read_text()
    written = json.loads(text)
    assert written == res
    # sorted by file name; key = file name up to the first dot; statistics.json and *.nii are not masks
    assert list(written) == ["ball", "box", "empty", "everything", "lesion", "single_voxel"]
    zero_names = {f"shape_{n}" for n in SPEC_SHAPE} | {f"firstorder_{n}" for n in SPEC_FIRSTORDER}
    assert zero_names < set(ZERO_FEATURE_NAMES) and len(ZERO_FEATURE_NAMES) == 107
    for name in ("ball", "box"):
        assert set(written[name]) == EXTRACTED_KEYS  # 32 keys, "original_" prefix removed
        _assert_rounded_floats(written[name])
    for name in ("empty", "everything", "single_voxel"):  # one distinct value, or pyradiomics raises
        assert list(written[name]) == list(ZERO_FEATURE_NAMES)
        assert all(v == 0.0 and isinstance(v, float) for v in written[name].values())
    assert '"ngtdm_Strength": 0.0' in text  # floats like the official file, not 0
    assert text.startswith('{\n    "ball": {\n        "shape_Elongation": ')  # json.dump(indent=4)


def test_single_mask_upstream_argument_order(phantom):
    ct, masks, box, _ = phantom
    ct_path = masks.parent / "ct.nii.gz"
    nib.save(ct, ct_path)
    name, f = get_radiomics_features(masks / "box.nii.gz", img_file=ct_path)
    assert name == "box"
    assert f["shape_VoxelVolume"] == box.sum() * VOX_MM3 and f["firstorder_Mean"] == 120.0
    assert get_radiomics_features(masks / "empty.nii.gz", ct_path) == ("empty", dict.fromkeys(ZERO_FEATURE_NAMES, 0.0))


@pytest.fixture
def tiny_total_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    config.setup_config()
    clear_cache()
    install_task_weights("total", modes=("fastest",))
    yield
    clear_cache()


def test_end_to_end_radiomics_option(tiny_total_home, tmp_path):
    """totalsegmentator(..., radiomics=True) with tiny weights: one entry per written mask, each matching the mask
    file and the input image voxel for voxel (so mask and image geometry agree as pyradiomics reads them)."""
    shape = (14, 12, 10)
    img = Phantom(body_radius_mm=15.0, blobs=()).nifti(shape, grid_affine((S, S, S), shape, "LPS"))
    out = tmp_path / "seg"
    totalsegmentator(img, out, fastest=True, radiomics=True, device="cpu", quiet=True)
    res = json.loads((out / "statistics_radiomics.json").read_text())
    assert list(res) == sorted(get_task("total").class_map.values())
    ct = np.asarray(img.dataobj).astype(np.int16)
    extracted = 0
    for name, entry in res.items():
        m = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj) > 0
        if len(entry) == len(ZERO_FEATURE_NAMES):
            assert all(v == 0.0 for v in entry.values())
            continue
        extracted += 1
        assert set(entry) == EXTRACTED_KEYS
        assert entry["shape_VoxelVolume"] == m.sum() * VOX_MM3
        assert entry["firstorder_Mean"] == pytest.approx(round(float(ct[m].mean()), 4), abs=1e-4)
    assert extracted > 0
