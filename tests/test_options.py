"""Options: official parameter names/defaults, every cross-option check, and the computed helpers."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from totalsegmentator.errors import InputImageError, LicenseError, OptionError, UnknownTaskError
from totalsegmentator.options import (OFFICIAL_API_PARAMS, Options, normalise_output_types, validate_options)

# The official totalsegmentator() signature (cli.md section 2), written out by hand.
OFFICIAL_DEFAULTS = {
    "output": None, "ml": False, "nr_thr_resamp": 1, "nr_thr_saving": 6, "fast": False, "nora_tag": "None",
    "preview": False, "task": "total", "roi_subset": None, "statistics": False, "radiomics": False,
    "crop_path": None, "body_seg": False, "force_split": False, "output_type": "nifti", "quiet": False,
    "verbose": False, "test": 0, "skip_saving": False, "device": "gpu", "license_number": None,
    "statistics_exclude_masks_at_border": True, "no_derived_masks": False, "v1_order": False, "fastest": False,
    "roi_subset_robust": None, "stats_aggregation": "mean", "remove_small_blobs": False,
    "statistics_normalized_intensities": False, "robust_crop": False, "higher_order_resampling_LEGACY": False,
    "higher_order_resampling": False, "save_probabilities": None, "debug": False, "report": None,
    "statistics_extra": False, "save_lowres": False, "resampling_order": 1, "plans": "nnUNetPlans",
    "model_size": "big",
}


@pytest.fixture
def nifti(tmp_path) -> Path:
    """An existing NIfTI path (validation only checks that it exists and how it is named)."""
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"not read by the option checks")
    return path


@pytest.fixture
def dicom_dir(tmp_path) -> Path:
    path = tmp_path / "series"
    path.mkdir()
    return path


def test_fields_are_the_official_signature_plus_our_additions():
    params = inspect.signature(Options).parameters
    names = list(params)
    assert names[:len(OFFICIAL_API_PARAMS)] == list(OFFICIAL_API_PARAMS)
    assert names == ["input", *OFFICIAL_DEFAULTS, "series_uid", "precision", "compile"]
    assert params["input"].default is inspect.Parameter.empty
    assert {n: params[n].default for n in OFFICIAL_DEFAULTS} == OFFICIAL_DEFAULTS
    assert params["series_uid"].default is None and params["precision"].default is None
    assert params["compile"].default is None


def test_precision_option_and_environment(nifti, monkeypatch):
    monkeypatch.delenv("TOTALSEG_PRECISION", raising=False)
    assert Options(input=nifti).validated().precision_effective() == "auto"
    monkeypatch.setenv("TOTALSEG_PRECISION", "BF16")
    assert Options(input=nifti).validated().precision_effective() == "bf16"
    assert Options(input=nifti, precision="fp32").validated().precision_effective() == "fp32"
    assert Options(input=nifti, precision="exact").validated().precision_effective() == "exact"
    monkeypatch.setenv("TOTALSEG_PRECISION", "fp8")
    with pytest.raises(OptionError, match="TOTALSEG_PRECISION must be one of auto, fp32, exact, fp16, bf16"):
        Options(input=nifti).validated().precision_effective()
    with pytest.raises(OptionError, match="precision must be one of auto, fp32, exact, fp16, bf16, not 'half'"):
        Options(input=nifti, precision="half").validated()


def test_compile_option_and_environment(nifti, monkeypatch):
    monkeypatch.delenv("TOTALSEG_COMPILE", raising=False)
    assert Options(input=nifti).validated().compile_effective() == "auto"
    monkeypatch.setenv("TOTALSEG_COMPILE", "off")
    assert Options(input=nifti).validated().compile_effective() == "off"
    assert Options(input=nifti, compile="on").validated().compile_effective() == "on"
    assert Options(input=nifti, compile="on").api_kwargs()["compile"] == "on"
    assert "compile" not in Options(input=nifti).api_kwargs()
    with pytest.raises(OptionError, match="compile must be one of auto, on, off, not 'yes'"):
        Options(input=nifti, compile="yes").validated()


def test_defaults_validate_and_are_not_changed(nifti):
    opts = Options(input=nifti).validated()
    assert opts == Options(input=nifti)
    assert opts.output_types == ["nifti"]
    assert opts.selected_mode().name == "default"
    assert opts.crop_plan() is None
    assert opts.notices() == []


def test_api_kwargs_round_trip(nifti):
    opts = Options(input=nifti, task="body", fast=True)
    kwargs = opts.api_kwargs()
    assert list(kwargs) == list(OFFICIAL_API_PARAMS)
    assert Options(**kwargs) == opts
    assert Options(input=nifti, series_uid="1.2.3").api_kwargs()["series_uid"] == "1.2.3"


def _error(**kwargs) -> str:
    with pytest.raises(OptionError) as info:
        Options(**kwargs).validated()
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


def test_unknown_task(nifti):
    with pytest.raises(UnknownTaskError, match="unknown task 'totl'"):
        Options(input=nifti, task="totl").validated()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"roi_subset": "liver"}, "roi_subset must be a list"),
    ({"roi_subset": ["liver"], "task": "lung_vessels"}, "only works with the tasks total, total_v3"),
    ({"roi_subset_robust": ["liver"], "task": "body"}, "--roi_subset_robust only works"),
    ({"roi_subset": ["livr", "spleen"]}, "'livr' (did you mean 'liver'?)"),
    ({"roi_subset": ["lung_left"]}, "unknown class name(s) for task 'total': 'lung_left'"),
    ({"fast": True, "task": "teeth"}, "does not work with option --fast"),
    ({"model_size": "medium"}, "model_size must be 'big' or 'small'"),
    ({"model_size": "small", "task": "total"}, "only works with task total_v3"),
    ({"output_type": "png"}, "unknown output type 'png'"),
    ({"output_type": ["nifti", "dicom_seg"]}, "needs a DICOM input"),
    ({"output_type": "dicom"}, "needs a DICOM input"),
    ({"save_lowres": True}, "only works together with --fast or --fastest"),
    ({"save_lowres": True, "fast": True, "roi_subset": ["liver"]}, "does not work when the input is cropped"),
    ({"save_lowres": True, "fast": True, "body_seg": True}, "does not work when the input is cropped"),
    ({"save_lowres": True, "task": "lung_vessels", "fast": True}, "does not work when the input is cropped"),
    ({"device": "cuda:x"}, "invalid device 'cuda:x'"),
    ({"device": "tpu"}, "invalid device 'tpu'"),
    ({"device": 0}, "device must be a string"),
    ({"remove_small_blobs": 0}, "greater than 0"),
    ({"remove_small_blobs": -5.0}, "greater than 0"),
    ({"remove_small_blobs": "big"}, "remove_small_blobs must be"),
    ({"resampling_order": 6}, "resampling_order must be a spline order from 0 to 5"),
    ({"stats_aggregation": "max"}, "stats_aggregation must be 'mean' or 'median'"),
    ({"radiomics": True, "ml": True}, "--radiomics does not work with --ml"),
    ({"radiomics": True}, "radiomics needs an output directory"),
    ({"test": 2}, "test must be 0, 1 or 3"),
    ({"nr_thr_resamp": 0}, "nr_thr_resamp must be a whole number"),
    ({"nr_thr_saving": 1.5}, "nr_thr_saving must be a whole number"),
    ({"statistics": 3}, "statistics must be True/False or a file path"),
])
def test_invalid_combinations(nifti, kwargs, fragment):
    kwargs.setdefault("input", nifti)
    assert fragment in _error(**kwargs)


def test_save_lowres_with_dicom_output(dicom_dir, tmp_path):
    msg = _error(input=dicom_dir, output=tmp_path / "seg.dcm", save_lowres=True, fast=True, output_type="dicom_seg")
    assert "--save_lowres does not work with DICOM output" in msg


def test_radiomics_refuses_dicom_input(dicom_dir, tmp_path):
    assert "does not work with a DICOM input" in _error(input=dicom_dir, output=tmp_path / "o", radiomics=True)


def test_dicom_output_refuses_in_memory_image():
    nib = pytest.importorskip("nibabel")
    import numpy as np

    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    assert "needs a DICOM input" in _error(input=img, output_type="dicom_seg")
    assert Options(input=img).validated().input is img


def test_input_checks(tmp_path):
    assert "no input given" in _error(input=None)
    assert "input must be a path or a nibabel Nifti1Image" in _error(input=42)
    with pytest.raises(InputImageError, match="does not exist"):
        Options(input=tmp_path / "missing.nii.gz").validated()


def test_license_number_format(nifti):
    with pytest.raises(LicenseError, match="must start with 'aca_'"):
        Options(input=nifti, license_number="xyz").validated()
    Options(input=nifti, license_number="aca_" + "A" * 14).validated()


def test_normalised_values(nifti, dicom_dir):
    opts = Options(input=nifti, device="CUDA:1", remove_small_blobs=True, task=" total ").validated()
    assert (opts.device, opts.remove_small_blobs, opts.task) == ("gpu:1", 200.0, "total")
    assert opts.remove_small_blobs_mm3 == 200.0
    assert Options(input=nifti, remove_small_blobs=55).validated().remove_small_blobs == 55.0
    assert Options(input=nifti, device="cuda").validated().device == "gpu"
    assert Options(input=nifti, remove_small_blobs=False).validated().remove_small_blobs_mm3 is None
    opts = Options(input=dicom_dir, output_type=["nifti,dicom", "dicom_seg", "nifti"]).validated()
    assert opts.output_types == ["nifti", "dicom_rtstruct", "dicom_seg"]
    assert opts.dicom_output and opts.multilabel and opts.input_is_dicom


def test_normalise_output_types():
    assert normalise_output_types(None) == ["nifti"]
    assert normalise_output_types("DICOM") == ["dicom_rtstruct"]
    assert normalise_output_types(" nifti , dicom_seg ") == ["nifti", "dicom_seg"]
    with pytest.raises(OptionError, match="output_type is empty"):
        normalise_output_types(",")


def test_selected_mode_and_plans(nifti):
    assert Options(input=nifti, fast=True).validated().selected_mode().name == "fast"
    assert Options(input=nifti, fastest=True).validated().selected_mode().name == "fastest"
    body = Options(input=nifti, task="body", fastest=True).validated()
    assert body.selected_mode().name == "fast"  # body has no fastest mode: falls back to fast
    assert body.selected_mode().spacing == (6.0, 6.0, 6.0)
    single = Options(input=nifti, task="vertebrae_mr", fast=True).validated()
    assert single.selected_mode().name == "default"
    assert any("single model configuration" in n for n in single.notices())
    # --fastest is silently allowed for a task that disallows --fast
    assert Options(input=nifti, task="teeth", fastest=True).validated().selected_mode().name == "default"
    small = Options(input=nifti, task="total_v3", model_size="small", fast=True).validated()
    assert small.selected_mode().plans == "nnUNetResEncUNetLPlans_8"
    assert Options(input=nifti, task="total_v3").validated().selected_mode().plans == "nnUNetPlans"
    assert Options(input=nifti, plans="MyPlans").validated().selected_mode().plans == "MyPlans"


def test_roi_subset_helpers(nifti):
    opts = Options(input=nifti, roi_subset=["liver"], roi_subset_robust=["spleen", "aorta"]).validated()
    assert opts.roi_subset_effective == ["spleen", "aorta"]
    assert opts.roi_subset_is_robust and opts.robust_crop_effective
    plain = Options(input=nifti, roi_subset=["liver"]).validated()
    assert plain.roi_subset_effective == ["liver"] and not plain.roi_subset_is_robust
    assert not plain.robust_crop_effective
    mr = Options(input=nifti, task="total_mr", roi_subset=["liver", "lung_left"]).validated()
    assert mr.roi_subset_is_robust
    assert Options(input=nifti, roi_subset=[]).validated().roi_subset_effective is None


def test_body_seg_effective(nifti):
    assert Options(input=nifti, body_seg=True).validated().body_seg_effective
    mr = Options(input=nifti, body_seg=True, task="total_mr").validated()
    assert not mr.body_seg_effective
    assert any("body_seg is ignored" in n for n in mr.notices())
    assert not Options(input=nifti, body_seg=True, task="lung_vessels").validated().body_seg_effective
    assert not Options(input=nifti, body_seg=True, roi_subset=["liver"]).validated().body_seg_effective


def test_crop_plans(nifti):
    def plan(**kw):
        return Options(input=nifti, **kw).validated().crop_plan()

    p = plan(task="lung_vessels")  # the task forces the robust rough model
    assert (p.kind, p.model, p.rough_model, p.margin_mm) == ("task", "total", "ct_robust", (20.0, 20.0, 20.0))
    assert "lung_upper_lobe_left" in p.classes
    p = plan(task="teeth")  # full run of another task, its configured margin
    assert (p.model, p.rough_model, p.margin_mm) == ("craniofacial_structures", None, (10.0, 10.0, 10.0))
    assert plan(task="abdominal_muscles").rough_model == "body"
    assert plan(task="liver_segments_mr").rough_model == "mr_always"
    assert plan(task="liver_vessels").rough_model == "ct_default"
    assert plan(task="liver_vessels", robust_crop=True).rough_model == "ct_robust"
    p = plan(roi_subset=["liver", "spleen"])
    assert (p.kind, p.classes, p.rough_model, p.margin_mm) == ("roi_subset", ("liver", "spleen"), "ct_default",
                                                                (20.0, 20.0, 20.0))
    assert plan(roi_subset_robust=["liver"]).rough_model == "ct_robust"
    assert plan(task="total_mr", roi_subset=["liver"]).rough_model == "mr_always"
    p = plan(body_seg=True)
    assert (p.kind, p.rough_model, p.margin_mm) == ("body_seg", "body", (3.0, 3.0, 3.0))


def test_save_lowres_rules(nifti, dicom_dir):
    assert Options(input=nifti, save_lowres=True, fastest=True).validated().save_lowres_effective
    ho = Options(input=nifti, save_lowres=True, fast=True, roi_subset=["liver"],
                 higher_order_resampling=True).validated()  # -ho turns save_lowres off: no crop conflict
    assert not ho.save_lowres_effective
    assert any("switches --save_lowres off" in n for n in ho.notices())
    # body_seg ignored for MR tasks: no crop, so save_lowres is fine
    assert Options(input=nifti, save_lowres=True, fast=True, body_seg=True,
                   task="total_mr").validated().save_lowres_effective


def test_output_locations(tmp_path, nifti):
    out = tmp_path / "seg"
    per_class = Options(input=nifti, output=out, statistics=True).validated()
    assert per_class.output_dir == out and per_class.statistics_file == out / "statistics.json"
    ml = Options(input=nifti, output=out / "seg.nii.gz", ml=True, statistics=True).validated()
    assert ml.output_dir == out and ml.statistics_file == out / "statistics.json"
    given = Options(input=nifti, output=out, statistics="stats/s.json").validated()
    assert given.statistics_file == Path("stats/s.json").absolute()
    assert Options(input=nifti, statistics=True).validated().statistics_file is None
    assert Options(input=nifti, statistics=True, fast=True).validated().fast_statistics
    assert not Options(input=nifti, statistics=True, fastest=True).validated().fast_statistics



def test_output_that_cannot_be_written_is_refused_before_any_model_runs(tmp_path, nifti, dicom_dir):
    a_file = tmp_path / "taken"
    a_file.write_bytes(b"x")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert f"output '{a_file}' is a file; per-class output needs a folder" in _error(input=nifti, output=a_file)
    assert (f"output '{folder}' is a folder; with --ml it is the file to write, "
            f"e.g. '{folder / 'segmentation.nii.gz'}'") in _error(input=nifti, output=folder, ml=True)
    assert "with --output_type dicom_rtstruct it is the file to write" in _error(
        input=dicom_dir, output=folder, output_type="dicom_rtstruct")
    # the names nibabel's save (the official tool's writer) cannot write as one file
    for name in ("seg.gz", "seg.nii.bz2", "seg.img"):
        assert f"with --ml the output is one image file: name it .nii.gz, .nii or .mgz, not '{name}'" in _error(
            input=nifti, output=tmp_path / name, ml=True)
    below_a_file = a_file / "sub" / "seg.nii.gz"
    assert f"cannot make the output folder '{below_a_file.parent}': '{a_file}' is a file" in _error(
        input=nifti, output=below_a_file, ml=True)
    assert "taken' is a file" in _error(input=nifti, output=a_file / "seg")
    assert "taken' is a file" in _error(input=dicom_dir, output=a_file / "x", output_type="nifti,dicom_seg")
    # what the official tool accepts stays accepted: a per-class folder that exists or not, an existing --ml file
    # (overwritten), a DICOM SEG or several types into an existing folder
    a_file = a_file.rename(tmp_path / "taken.nii.gz")
    for kwargs in ({"output": folder}, {"output": tmp_path / "new" / "seg"}, {"output": a_file, "ml": True},
                   {"output": tmp_path / "SEG.NII", "ml": True}, {"output": tmp_path / "seg", "ml": True},
                   {"output": tmp_path / "seg.mgz", "ml": True}, {"input": dicom_dir, "output": tmp_path / "rt",
                                                                 "output_type": "dicom_rtstruct"},
                   {"input": dicom_dir, "output": folder, "output_type": "dicom_seg"},
                   {"input": dicom_dir, "output": folder, "output_type": "nifti,dicom_rtstruct"}):
        kwargs.setdefault("input", nifti)
        Options(**kwargs).validated()


def test_output_folder_without_write_permission_is_refused_before_the_run(tmp_path, nifti, monkeypatch):
    from totalsegmentator import options as options_module
    from totalsegmentator.errors import OutputError

    locked = tmp_path / "locked"
    locked.mkdir()
    # the permission bits themselves cannot be tested as root (which ignores them): os.access says no instead
    monkeypatch.setattr(options_module.os, "access", lambda path, mode: Path(path) != locked)
    for output, ml in ((locked / "seg", False), (locked / "seg.nii.gz", True), (locked, False)):
        with pytest.raises(OutputError, match=f"cannot write to the output folder '{locked}': permission denied"):
            Options(input=nifti, output=output, ml=ml).validated()
    Options(input=nifti, output=tmp_path / "free" / "seg").validated()

def test_notices(nifti, tmp_path):
    opts = Options(input=nifti, nora_tag="proj1", v1_order=True, task="body", crop_path=tmp_path).validated()
    notes = opts.notices()
    assert any("nora" in n and "'proj1' is ignored" in n for n in notes)
    assert any("v1_order only applies to task 'total'" in n for n in notes)
    assert any("crop_path has no effect" in n for n in notes)
    assert Options(input=nifti, v1_order=True).validated().v1_order_effective


def test_validate_options_reports_unknown_keywords(nifti):
    with pytest.raises(OptionError, match="unknown option\\(s\\): fsat .*did you mean 'fast'"):
        validate_options(input=nifti, fsat=True)
    assert validate_options(input=nifti, fast=True).fast


def test_options_are_immutable(nifti):
    opts = Options(input=nifti)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.task = "body"  # type: ignore[misc]


def test_no_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, totalsegmentator.options; "
            "print(sorted(m for m in ('torch', 'nnunetv2', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
