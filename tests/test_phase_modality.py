"""Contrast phase (formats.md §17) and modality (§18) estimators, and their commands."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.analysis.modality import modality_from_image, roi_logit
from totalsegmentator.analysis.phase import (TOTAL_FEATURES, get_ct_contrast_phase, phase_from_intensities,
                                             pi_time_to_phase)
from totalsegmentator.bin import totalseg_get_modality, totalseg_get_phase
from totalsegmentator.errors import InputImageError

# Typical median HU of an adult abdominal CT per phase (textbook ranges, e.g. Bae, Radiology 2010), not
# taken from our curve table.
NATIVE = dict(aorta=40, portal_vein_and_splenic_vein=38, liver=55, pancreas=40, inferior_vena_cava=38, heart=38,
              pulmonary_vein=40, iliac_artery_left=40, iliac_artery_right=41, iliac_vena_left=38,
              iliac_vena_right=39, gallbladder=10, urinary_bladder=8, colon=20, small_bowel=25)
ARTERIAL_EARLY = dict(aorta=250, iliac_artery_left=220, iliac_artery_right=225, pulmonary_vein=290, heart=200,
                      portal_vein_and_splenic_vein=50, inferior_vena_cava=45, liver=60, pancreas=60,
                      iliac_vena_left=40, iliac_vena_right=41, gallbladder=10, urinary_bladder=8, colon=20,
                      small_bowel=28)
ARTERIAL_LATE = dict(aorta=300, portal_vein_and_splenic_vein=160, liver=75, pancreas=115, inferior_vena_cava=80,
                     heart=220, iliac_artery_left=290, iliac_artery_right=285, pulmonary_vein=260,
                     iliac_vena_left=45, iliac_vena_right=44, gallbladder=10, urinary_bladder=8, colon=22,
                     small_bowel=45)
PORTAL_VENOUS = dict(aorta=170, portal_vein_and_splenic_vein=185, liver=110, pancreas=100, inferior_vena_cava=140,
                     heart=150, iliac_artery_left=165, iliac_artery_right=160, iliac_vena_left=105,
                     iliac_vena_right=100, pulmonary_vein=160, gallbladder=10, urinary_bladder=9, colon=30,
                     small_bowel=55)
CASES = [(NATIVE, "native"), (ARTERIAL_EARLY, "arterial_early"), (ARTERIAL_LATE, "arterial_late"),
         (PORTAL_VENOUS, "portal_venous")]
BLOOD_BASELINE = 40.0


@pytest.mark.parametrize("features,phase", CASES)
def test_phase_recognised(features, phase):
    res = phase_from_intensities(features)
    assert list(res) == ["pi_time", "phase", "probability", "pi_time_min", "pi_time_max", "stddev"]
    assert res["phase"] == phase and res["probability"] == 1.0
    assert res["pi_time_min"] <= res["pi_time"] <= res["pi_time_max"]
    assert res["stddev"] >= 0 and res["pi_time_max"] - res["pi_time_min"] < 15


@pytest.mark.parametrize("features,phase", CASES)
def test_phase_robust_to_dose_missing_structures_and_oral_contrast(features, phase):
    low_dose = {k: (BLOOD_BASELINE + 0.7 * (v - BLOOD_BASELINE) if v > BLOOD_BASELINE else v)
                for k, v in features.items()}
    assert phase_from_intensities(low_dose)["phase"] == phase
    half = {k: v for i, (k, v) in enumerate(features.items()) if i % 2 == 0}
    assert phase_from_intensities(half)["phase"] == phase
    oral = dict(features, colon=400.0, small_bowel=350.0)
    assert phase_from_intensities(oral)["phase"] == phase
    with_missing = dict(features, brain=None, pulmonary_vein=float("nan"), unknown_structure=999.0)
    assert phase_from_intensities(with_missing)["phase"] == phase


def test_phase_order_in_time():
    times = [phase_from_intensities(f)["pi_time"] for f, _ in CASES]
    assert times == sorted(times) and times[0] < 10 and times[-1] > 60


@pytest.mark.parametrize("t,expected", [(0, ("native", 1.0)), (4.99, ("native", 1.0)), (5, ("native", 0.7)),
                                        (10, ("arterial_early", 0.7)), (20, ("arterial_early", 1.0)),
                                        (30, ("arterial_late", 1.0)), (50, ("arterial_late", 0.7)),
                                        (60, ("portal_venous", 1.0)), (90, ("portal_venous", 0.7)),
                                        (100, ("portal_venous", 0.3)), (250, ("portal_venous", 0.3))])
def test_pi_time_thresholds(t, expected):
    assert pi_time_to_phase(t) == expected


def test_phase_needs_some_structure():
    with pytest.raises(InputImageError, match="no usable"):
        phase_from_intensities({"brain": None, "spleen": 50.0})


def _stats_json(path, features, brain_volume=0.0):
    stats = {n: {"volume": 1000.0, "intensity": float(features[n])} if n in features else
             {"volume": 0.0, "intensity": 0.0} for n in TOTAL_FEATURES}
    stats["brain"]["volume"] = brain_volume
    stats["spleen"] = {"volume": 100.0, "intensity": 50.0}
    path.write_text(json.dumps(stats))
    return path


def test_generator_with_existing_stats(tmp_path):
    steps = list(get_ct_contrast_phase(None, existing_stats=_stats_json(tmp_path / "s.json", ARTERIAL_LATE)))
    assert [s["progress"] for s in steps] == [2, 85, 100]
    assert all(set(s) >= {"id", "progress", "status"} for s in steps) and len({s["id"] for s in steps}) == 1
    assert steps[-1]["result"]["phase"] == "arterial_late"


def test_phase_cli_with_statistics(tmp_path, capsys):
    stats = _stats_json(tmp_path / "statistics.json", PORTAL_VENOUS)
    out = tmp_path / "phase.json"
    assert totalseg_get_phase.main(["-i", str(tmp_path / "ct.nii.gz"), "-o", str(out), "-s", str(stats), "-q"]) == 0
    res = json.loads(out.read_text())
    assert res["phase"] == "portal_venous" and set(res) == {"pi_time", "phase", "probability", "pi_time_min",
                                                           "pi_time_max", "stddev"}
    assert capsys.readouterr().out == ""
    # a custom curve table (-m): a single flat aorta curve cannot tell the phase -> native (earliest time)
    curves = tmp_path / "curves.json"
    curves.write_text(json.dumps({"aorta": {"knots": [[0, 40], [300, 40]], "sigma": 30}}))
    assert totalseg_get_phase.main(["-i", "x.nii.gz", "-o", str(out), "-s", str(stats), "-m", str(curves),
                                    "-q"]) == 0
    assert json.loads(out.read_text())["phase"] == "native"


def test_phase_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"liver": {"volume": 1.0, "intensity": 50.0}}))
    assert totalseg_get_phase.main(["-i", "x.nii.gz", "-o", str(tmp_path / "o.json"), "-s", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("totalseg_get_phase: error:") and "aorta" in err and err.count("\n") == 1
    pickle_like = tmp_path / "model.pkl"
    pickle_like.write_bytes(b"\x80\x04not json")
    assert totalseg_get_phase.main(["-i", "x.nii.gz", "-o", str(tmp_path / "o.json"), "-m", str(pickle_like),
                                    "-s", str(bad)]) == 2
    assert "-m expects a JSON curve table" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


# --- modality --------------------------------------------------------------------------------------------------

def _ellipsoid(shape, centre, radii):
    g = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return (((g - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1


def synthetic_ct(shape=(40, 36, 30)):
    body = _ellipsoid(shape, np.array(shape) / 2, (17, 14, 40))
    inner = _ellipsoid(shape, np.array(shape) / 2, (14, 11, 40))
    ct = np.full(shape, -1000.0)
    ct[body] = -100.0  # subcutaneous fat
    ct[inner] = 45.0   # soft tissue
    ct[_ellipsoid(shape, (20, 10, 15), (3, 3, 40))] = 700.0  # spine
    return ct + np.random.default_rng(1).normal(0, 10, shape)


def synthetic_mr(shape=(40, 36, 30), offset=0.0, scale=1.0):
    body = _ellipsoid(shape, np.array(shape) / 2, (17, 14, 40))
    mr = np.random.default_rng(2).rayleigh(8.0, shape)  # background noise of a magnitude image
    mr[body] = 300.0 + np.random.default_rng(3).normal(0, 40, body.sum())
    mr[_ellipsoid(shape, (20, 10, 15), (3, 3, 40))] = 650.0
    return mr * scale + offset


def test_modality_synthetic():
    ct = modality_from_image(synthetic_ct())
    assert ct["modality"] == "ct" and ct["probability"] > 0.95
    mr = modality_from_image(nib.Nifti1Image(synthetic_mr().astype(np.float32), np.eye(4)))
    assert mr["modality"] == "mr" and mr["probability"] > 0.95
    zscored = synthetic_mr()
    zscored = (zscored - zscored.mean()) / zscored.std()
    assert modality_from_image(zscored)["modality"] == "mr"
    # an MR with a few negative ringing voxels is still MR
    ringing = synthetic_mr(offset=-30.0)
    assert modality_from_image(ringing)["modality"] == "mr"
    assert set(ct) == {"modality", "probability"} and 0.5 <= mr["probability"] <= 1.0


def test_modality_roi_evidence():
    ct_like = {"gluteus_maximus_left": 45.0, "autochthon_right": 50.0, "brain": 32.0, "spinal_cord": 40.0}
    mr_like = {"gluteus_maximus_left": 310.0, "autochthon_right": 280.0, "brain": 520.0, "spinal_cord": 400.0}
    assert roi_logit(ct_like) > 0 > roi_logit(mr_like)
    assert roi_logit({"colon": 12.0}) == 0.0  # colon is not checked
    assert modality_from_image(synthetic_mr(), roi_intensities=mr_like)["modality"] == "mr"


def test_modality_real_images(shared_data):
    for name, expected in (("example_ct_sm.nii.gz", "ct"), ("example_ct.nii.gz", "ct"),
                           ("example_mr_sm.nii.gz", "mr")):
        path = shared_data / name
        if not path.exists():
            pytest.skip(f"{name} not available")
        res = modality_from_image(nib.load(path))
        assert res["modality"] == expected and res["probability"] > 0.9, name


def test_modality_cli(tmp_path, capsys):
    img = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(synthetic_ct().astype(np.int16), np.eye(4)), img)
    out = tmp_path / "m.json"
    assert totalseg_get_modality.main(["-i", str(img), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["modality"] == "ct"
    assert "Modality: ct" in capsys.readouterr().out
    assert totalseg_get_modality.main(["-i", str(tmp_path / "missing.nii.gz"), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("totalseg_get_modality: error:") and err.count("\n") == 1


# --- wiring to the segmentation pipeline (stubbed: these tests check what we ask the pipeline for) -------------

def _stub_pipeline(monkeypatch, stats_by_task):
    import totalsegmentator.python_api as api

    calls = []

    def fake(input, output=None, **kw):
        calls.append(dict(kw, input=input, output=output))
        return None, stats_by_task[kw["task"]]

    monkeypatch.setattr(api, "totalsegmentator", fake)
    return calls


def test_phase_runs_total_fast_then_headneck_with_device(tmp_path, monkeypatch):
    total = {n: {"volume": 500.0, "intensity": float(v)} for n, v in ARTERIAL_EARLY.items()}
    total.update(brain={"volume": 5000.0, "intensity": 35.0})
    for n in TOTAL_FEATURES:
        total.setdefault(n, {"volume": 0.0, "intensity": 0.0})
    headneck = {"internal_carotid_artery_right": {"volume": 300.0, "intensity": 240.0},
                "internal_carotid_artery_left": {"volume": 300.0, "intensity": 245.0},
                "internal_jugular_vein_right": {"volume": 300.0, "intensity": 60.0},
                "internal_jugular_vein_left": {"volume": 0.0, "intensity": 0.0}}
    calls = _stub_pipeline(monkeypatch, {"total": total, "headneck_bones_vessels": headneck})
    ct = tmp_path / "ct.nii.gz"
    ct.write_bytes(b"stub")
    steps = list(get_ct_contrast_phase(str(ct), device="cpu", quiet=True))
    assert [s["progress"] for s in steps] == [2, 10, 50, 85, 100]
    assert steps[-1]["result"]["phase"] == "arterial_early"
    first, second = calls
    assert first["input"] == str(ct) and first["output"] is None
    assert first["task"] == "total" and first["fast"] is True and first["ml"] is True
    assert first["statistics"] is True and first["stats_aggregation"] == "median"
    assert first["statistics_exclude_masks_at_border"] is False and first["device"] == "cpu"
    assert second["task"] == "headneck_bones_vessels" and second["fast"] is False and second["device"] == "cpu"


def test_modality_rois_uses_total_mr_fast(monkeypatch):
    from totalsegmentator.analysis.modality import ROI_FEATURES, get_modality_from_rois

    stats = {n: {"volume": 100.0, "intensity": 300.0} for n in ROI_FEATURES}
    calls = _stub_pipeline(monkeypatch, {"total_mr": stats})
    img = nib.Nifti1Image(synthetic_mr().astype(np.float32), np.eye(4))
    assert get_modality_from_rois(img, device="cpu")["modality"] == "mr"
    (call,) = calls
    assert call["task"] == "total_mr" and call["fast"] is True and call["stats_aggregation"] == "median"
    assert call["device"] == "cpu"

