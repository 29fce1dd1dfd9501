"""The TotalSegmentator and totalseg_info command lines: flags, defaults, one-line errors, exit codes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import totalsegmentator.python_api as python_api
from totalsegmentator import __version__
from totalsegmentator.bin import TotalSegmentator as cli
from totalsegmentator.bin import totalseg_info
from totalsegmentator.errors import InputImageError, WeightsError
from totalsegmentator.options import OFFICIAL_API_PARAMS
from totalsegmentator.registry import TASKS, task_registry

# The official API defaults (cli.md section 2); the CLI must pass exactly these when no flag is given,
# except that it never passes `plans` and always passes statistics_normalized_intensities=False.
API_DEFAULTS = {
    "ml": False, "nr_thr_resamp": 1, "nr_thr_saving": 6, "fast": False, "nora_tag": "None", "preview": False,
    "task": "total", "roi_subset": None, "statistics": False, "radiomics": False, "crop_path": None,
    "body_seg": False, "force_split": False, "output_type": "nifti", "quiet": False, "verbose": False, "test": 0,
    "skip_saving": False, "device": "gpu", "license_number": None, "statistics_exclude_masks_at_border": True,
    "no_derived_masks": False, "v1_order": False, "fastest": False, "roi_subset_robust": None,
    "stats_aggregation": "mean", "remove_small_blobs": False, "statistics_normalized_intensities": False,
    "robust_crop": False, "higher_order_resampling_LEGACY": False, "higher_order_resampling": False,
    "save_probabilities": None, "debug": False, "report": None, "statistics_extra": False, "save_lowres": False,
    "resampling_order": 1, "model_size": "big",
}


@pytest.fixture
def nifti(tmp_path) -> Path:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"only its name and existence matter to the CLI")
    return path


@pytest.fixture
def api_calls(monkeypatch) -> list[dict]:
    """Replace the Python API (another room) by a recorder of the keyword arguments it gets."""
    calls: list[dict] = []
    monkeypatch.setattr(python_api, "totalsegmentator", lambda **kw: calls.append(kw))
    return calls


def write_dicom(path: Path, modality: str, series_uid: str | None = None) -> Path:
    """A minimal DICOM file (header only) with the given Modality."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------- parser and defaults
def test_no_flags_pass_the_official_defaults(nifti, tmp_path, api_calls, capsys):
    code, _, err = run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "out")])
    assert code == 0 and err == ""
    (kwargs,) = api_calls
    assert kwargs.pop("input") == nifti and kwargs.pop("output") == tmp_path / "out"
    assert kwargs == API_DEFAULTS
    assert set(API_DEFAULTS) | {"input", "output", "plans"} == set(OFFICIAL_API_PARAMS)


def test_paths_are_made_absolute(nifti, tmp_path, api_calls, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_main(capsys, ["-i", nifti.name, "-o", "out", "-s", "st.json", "-rp", "r/rep.json",
                                   "-sp", "probs.npz", "-cp", "crop"])
    assert code == 0
    kw = api_calls[0]
    assert kw["input"] == nifti and kw["output"] == tmp_path / "out"
    assert kw["statistics"] == tmp_path / "st.json"
    assert kw["report"] == tmp_path / "r" / "rep.json"
    assert kw["save_probabilities"] == tmp_path / "probs.npz"
    assert kw["crop_path"] == tmp_path / "crop"


def test_the_run_has_no_collections_and_the_process_skips_the_last(nifti, tmp_path, capsys, monkeypatch):
    """The command's one run goes without automatic garbage collection, and its process ends without the
    collection of interpreter shutdown (freezing every object at exit leaves it nothing to walk)."""
    import atexit
    import gc

    from totalsegmentator.bin import _common

    seen: list[bool] = []
    registered: list = []
    monkeypatch.setattr(python_api, "totalsegmentator", lambda **kw: seen.append(gc.isenabled()))
    monkeypatch.setattr(_common, "_final_collection_skipped", False)
    monkeypatch.setattr(atexit, "register", registered.append)
    assert run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "out")])[0] == 0
    assert seen == [False] and gc.isenabled()
    assert registered == [gc.freeze]


@pytest.mark.parametrize("argv, expected", [
    (["-s"], {"statistics": True}),
    (["-rmb"], {"remove_small_blobs": 200.0}),
    (["-rmb", "50.5"], {"remove_small_blobs": 50.5}),
    (["-ot", "dicom_seg"], {"output_type": "dicom_seg"}),
    (["-ot", "nifti,dicom", "dicom_seg"], {"output_type": ["nifti", "dicom_rtstruct", "dicom_seg"]}),
    (["-ot", "dicom"], {"output_type": "dicom_rtstruct"}),
    (["--high_order_resampling_LEGACY"], {"higher_order_resampling_LEGACY": True}),
    (["--higher_order_resampling_LEGACY"], {"higher_order_resampling_LEGACY": True}),
    (["-ho"], {"higher_order_resampling": True}),
    (["--high_order_resampling"], {"higher_order_resampling": True}),
    (["-sii"], {"statistics_exclude_masks_at_border": False}),
    (["-f", "-ta", "body", "-ns", "2", "-nr", "3", "-ro", "0"],
     {"fast": True, "task": "body", "nr_thr_saving": 2, "nr_thr_resamp": 3, "resampling_order": 0}),
    (["-ff", "-sl", "-q", "-v1o", "-ml"], {"fastest": True, "save_lowres": True, "quiet": True,
                                           "v1_order": True, "ml": True}),
    (["-rs", "liver", "spleen", "-rc"], {"roi_subset": ["liver", "spleen"], "robust_crop": True}),
    (["-rsr", "liver"], {"roi_subset_robust": ["liver"]}),
    (["-ta", "total_v3", "-ms", "small"], {"task": "total_v3", "model_size": "small"}),
    (["-d", "cpu", "-t", "proj", "-p", "-bs", "-fs", "-ss", "-ndm", "-sa", "median", "-sx", "--debug",
      "--test", "1"],
     {"device": "cpu", "nora_tag": "proj", "preview": True, "body_seg": True, "force_split": True,
      "skip_saving": True, "no_derived_masks": True, "stats_aggregation": "median", "statistics_extra": True,
      "debug": True, "test": 1}),
    (["--series_uid", "1.2.3"], {"series_uid": "1.2.3"}),
    (["--precision", "bf16"], {"precision": "bf16"}),
    (["--precision", "exact"], {"precision": "exact"}),
    (["--compile", "off"], {"compile": "off"}),
])
def test_flags_reach_the_api(tmp_path, api_calls, capsys, argv, expected):
    dicom = tmp_path / "dcm"  # a DICOM folder so that DICOM output types are allowed
    dicom.mkdir()
    out = tmp_path / ("o.nii.gz" if "-ml" in argv else "o")  # --ml writes one NIfTI file
    code, _, err = run_main(capsys, ["-i", str(dicom), "-o", str(out), *argv])
    assert code == 0, err
    kwargs = api_calls[0]
    assert {k: kwargs[k] for k in expected} == expected
    untouched = {k: v for k, v in API_DEFAULTS.items() if k not in expected}
    assert {k: kwargs[k] for k in untouched} == untouched
    assert "plans" not in kwargs
    assert ("series_uid" in kwargs) == ("series_uid" in expected)
    assert ("precision" in kwargs) == ("precision" in expected)
    assert ("compile" in kwargs) == ("compile" in expected)


def test_unknown_precision_is_a_usage_error(tmp_path, capsys):
    code, _, err = run_main(capsys, ["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--precision", "fp8"])
    assert code == 2
    assert "invalid choice: 'fp8'" in err and "Traceback" not in err


def test_parser_metadata():
    parser = cli.build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    assert by_dest["task"].choices == TASKS and by_dest["task"].metavar == "task"
    assert by_dest["input"].metavar == "filepath" and by_dest["output"].metavar == "directory"
    assert by_dest["statistics"].metavar == "filepath" and by_dest["remove_small_blobs"].metavar == "mm3"
    assert by_dest["test"].metavar == "0|1|3" and list(by_dest["test"].choices) == [0, 1, 3]
    assert list(by_dest["resampling_order"].choices) == [0, 1, 2, 3, 4, 5]
    assert by_dest["higher_order_resampling"].option_strings == ["-ho", "--higher_order_resampling",
                                                                 "--high_order_resampling"]
    assert by_dest["list_classes"].option_strings == ["-lc", "--list-classes"]
    assert by_dest["input"].required is False and by_dest["output"].required is False


# ----------------------------------------------------------------- list and version
def test_list_tasks(capsys):
    code, out, err = run_main(capsys, ["--list-tasks"])
    assert code == 0 and err == ""
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split() == ["TASK", "MODALITY", "LICENSE", "CLASSES"]
    rows = [line.split() for line in lines[2:] if line.strip() and not line[0].isdigit()]
    assert len(rows) == 53
    assert [r[0] for r in rows] == TASKS
    assert rows[0] == ["total", "CT", "no", "117"]
    assert lines[-1].startswith("53 tasks.") and "license-academic" in lines[-1]
    assert run_main(capsys, ["-lt", "-i", "ignored.nii"])[0] == 0


def test_list_classes(capsys):
    code, out, _ = run_main(capsys, ["--list-classes"])
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert lines[0] == "Task 'total'  [CT, open license, 117 classes]"
    assert len(lines) - 1 == 117
    assert lines[1] == "   1  spleen" and lines[-1] == " 117  costal_cartilages"
    code, out, _ = run_main(capsys, ["-lc", "heartchambers_highres"])
    assert code == 0 and out.startswith("Task 'heartchambers_highres'  [CT, license required,")
    code, out, err = run_main(capsys, ["-lc", "hart"])
    assert code == 2 and out == "" and "unknown task 'hart'" in err


def test_version(capsys):
    code, out, _ = run_main(capsys, ["--version"])
    assert code == 0 and out.strip() == __version__


def test_help(capsys):
    code, out, _ = run_main(capsys, ["-h"])
    assert code == 0
    for flag in ("--output_type", "--roi_subset_robust", "--high_order_resampling_LEGACY", "--list-classes",
                 "--remove_small_blobs", "--stats_include_incomplete", "--save_probabilities"):
        assert flag in out


# ----------------------------------------------------------------- errors
def _assert_one_error_line(err: str, fragment: str) -> None:
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("TotalSegmentator: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, fragment", [
    (["-ta", "totl"], "unknown task 'totl' (did you mean 'total'"),
    (["-rs", "livr"], "'livr' (did you mean 'liver'?)"),
    (["-ta", "body", "-rs", "liver"], "only works with the tasks total"),
    (["-ta", "teeth", "-f"], "task 'teeth' does not work with option --fast"),
    (["-ms", "small"], "only works with task total_v3"),
    (["-ms", "tiny"], "invalid choice: 'tiny'"),
    (["-ot", "png"], "invalid output type 'png'"),
    (["-ot", "dicom_seg"], "needs a DICOM input"),
    (["-sl"], "only works together with --fast or --fastest"),
    (["-sl", "-f", "-bs"], "does not work when the input is cropped"),
    (["-sl", "-ff", "-ta", "lung_vessels"], "does not work when the input is cropped"),
    (["-d", "gpu:one"], "invalid device 'gpu:one'"),
    (["-rmb", "0"], "greater than 0"),
    (["-rmb", "-3"], "greater than 0"),
    (["-ro", "6"], "invalid choice: 6"),
    (["-sa", "max"], "invalid choice: 'max'"),
    (["-r", "-ml"], "--radiomics does not work with --ml"),
    (["--test", "2"], "invalid choice: 2"),
    (["-nr", "0"], "nr_thr_resamp must be a whole number of at least 1"),
    (["--fsat"], "unrecognized arguments: --fsat"),
])
def test_invalid_combinations_exit_2_with_one_line(nifti, tmp_path, api_calls, capsys, extra, fragment):
    code, out, err = run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "o"), *extra])
    assert code == 2
    _assert_one_error_line(err, fragment)
    assert api_calls == []


def test_missing_input_and_output_name_the_flags(nifti, capsys):
    code, _, err = run_main(capsys, [])
    assert code == 2
    _assert_one_error_line(err, "the following arguments are required: -i, -o")
    code, _, err = run_main(capsys, ["-i", str(nifti)])
    assert code == 2
    _assert_one_error_line(err, "the following arguments are required: -o")


def test_missing_input_file_exits_1(tmp_path, api_calls, capsys):
    code, _, err = run_main(capsys, ["-i", str(tmp_path / "none.nii.gz"), "-o", str(tmp_path / "o")])
    assert code == 1
    _assert_one_error_line(err, "does not exist")
    assert api_calls == []


@pytest.mark.parametrize("exc, code, fragment", [
    (WeightsError("weights for dataset 291 are missing"), 1, "weights for dataset 291 are missing"),
    (InputImageError("input is 2D"), 1, "input is 2D"),
    (RuntimeError("boom\nsecond line"), 1, "unexpected RuntimeError: boom second line (rerun with -v"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_errors_from_the_api(nifti, tmp_path, monkeypatch, capsys, exc, code, fragment):
    def fail(**kwargs):
        raise exc

    monkeypatch.setattr(python_api, "totalsegmentator", fail)
    got, _, err = run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "o")])
    assert got == code
    _assert_one_error_line(err, fragment)



def test_sigterm_unwinds_the_run_like_ctrl_c(nifti, tmp_path, monkeypatch, capsys):
    # a scheduler's stop or time limit: the run's cleanup (temp folders, temp files) must still happen
    cleaned = []

    def terminated_while_running(**kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler interrupts this at once
        finally:
            cleaned.append(True)

    monkeypatch.setattr(python_api, "totalsegmentator", terminated_while_running)
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    got, _, err = run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "o")])
    assert got == 143 and cleaned == [True] and time.monotonic() - started < 20
    _assert_one_error_line(err, "terminated (SIGTERM)")
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back

def test_verbose_shows_the_traceback(nifti, tmp_path, monkeypatch, capsys):
    def fail(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(python_api, "totalsegmentator", fail)
    code, _, err = run_main(capsys, ["-i", str(nifti), "-o", str(tmp_path / "o"), "-v"])
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err
    assert err.strip().split("\n")[-1] == "TotalSegmentator: error: unexpected RuntimeError: boom"


# ----------------------------------------------------------------- DICOM modality switch
def test_mr_dicom_switches_total_to_total_mr(tmp_path, api_calls, capsys):
    series = tmp_path / "series"
    series.mkdir()
    (series / "README.txt").write_text("not a DICOM file")  # unreadable files are skipped
    write_dicom(series / "IM0001", "MR")
    code, _, err = run_main(capsys, ["-i", str(series), "-o", str(tmp_path / "o")])
    assert code == 0
    assert api_calls[0]["task"] == "total_mr"
    assert "switching task 'total' to 'total_mr'" in err and err.startswith("TotalSegmentator: warning:")


def test_ct_dicom_switches_total_mr_to_total_quietly(tmp_path, api_calls, capsys):
    write_dicom(tmp_path / "series" / "a.dcm", "CT")
    code, _, err = run_main(capsys, ["-i", str(tmp_path / "series"), "-o", str(tmp_path / "o"),
                                     "-ta", "total_mr", "-q"])
    assert code == 0 and err == ""
    assert api_calls[0]["task"] == "total"


def test_dicom_zip_and_other_tasks(tmp_path, api_calls, capsys):
    mr = write_dicom(tmp_path / "mr" / "x.dcm", "MR")
    archive = tmp_path / "mr.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(mr, "slices/x.dcm")
    assert run_main(capsys, ["-i", str(archive), "-o", str(tmp_path / "o")])[0] == 0
    assert api_calls[-1]["task"] == "total_mr"
    # other tasks and matching modalities are left alone
    assert run_main(capsys, ["-i", str(tmp_path / "mr"), "-o", str(tmp_path / "o"), "-ta", "body_mr"])[0] == 0
    assert api_calls[-1]["task"] == "body_mr"
    assert run_main(capsys, ["-i", str(tmp_path / "mr"), "-o", str(tmp_path / "o"), "-ta", "total_mr"])[0] == 0
    assert api_calls[-1]["task"] == "total_mr"


def test_switch_ignores_unreadable_input_and_nifti(tmp_path, nifti):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"\x00" * 10)
    assert cli.dicom_modality(junk) is None
    assert cli.switch_task_for_modality("total", junk) is None
    assert cli.switch_task_for_modality("total", nifti) is None
    assert cli.switch_task_for_modality("total", tmp_path / "missing") is None


def test_switch_respects_series_uid(tmp_path):
    write_dicom(tmp_path / "s" / "1.dcm", "CT", series_uid="1.2.3")
    write_dicom(tmp_path / "s" / "2.dcm", "MR", series_uid="1.2.4")
    assert cli.dicom_modality(tmp_path / "s") == "CT"
    assert cli.dicom_modality(tmp_path / "s", series_uid="1.2.4") == "MR"
    assert cli.switch_task_for_modality("total", tmp_path / "s", "1.2.4") == "total_mr"


def test_switch_on_the_real_ct_series(shared_data):
    series = shared_data / "example_ct_dicom"
    if not series.is_dir():
        pytest.skip("example_ct_dicom not available")
    assert cli.dicom_modality(series) == "CT"
    assert cli.switch_task_for_modality("total_mr", series) == "total"


# ----------------------------------------------------------------- subprocess: no traceback, no torch
_PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['TotalSegmentator'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('totalsegmentator.bin.TotalSegmentator', run_name='__main__')\n"
    "    code = 0\n"
    "except SystemExit as e:\n"
    "    code = e.code\n"
    "print('torch' in sys.modules, 'nnunetv2' in sys.modules, code)\n"
)


@pytest.mark.parametrize("extra, fragment", [
    (["-ta", "teeth", "-f"], "does not work with option --fast"),
    (["-rs", "livr"], "did you mean 'liver'"),
    (["-d", "npu"], "invalid device 'npu'"),
])
def test_subprocess_validation_fails_before_heavy_imports(nifti, tmp_path, extra, fragment):
    proc = subprocess.run([sys.executable, "-c", _PROBE, "-i", str(nifti), "-o", str(tmp_path / "o"), *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False", "2"]
    _assert_one_error_line(proc.stderr, fragment)


def test_module_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "totalsegmentator.bin.TotalSegmentator", "-i",
                           str(tmp_path / "x.nii.gz")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, "required: -o")


# ----------------------------------------------------------------- totalseg_info
def _info(capsys, argv):
    code = totalseg_info.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_default_is_table_plus_hint(capsys):
    code, out, _ = _info(capsys, [])
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split() == ["TASK", "MODALITY", "LICENSE", "CLASSES"]
    assert any(line.startswith("53 tasks.") for line in lines)
    assert "--classes --task" in lines[-1]


def test_info_list_tasks_json(capsys):
    code, out, _ = _info(capsys, ["--list-tasks", "--json"])
    data = json.loads(out)
    assert code == 0 and isinstance(data, list) and len(data) == 53
    assert data[0] == {"name": "total", "modality": "CT", "license_required": False, "num_classes": 117}
    assert all(set(d) == {"name", "modality", "license_required", "num_classes"} for d in data)
    code, out, _ = _info(capsys, ["-lt"])
    assert out.rstrip("\n").split("\n")[-1].startswith("53 tasks.")


def test_info_classes(capsys):
    code, out, _ = _info(capsys, ["--classes", "-ta", "body", "--json"])
    assert code == 0 and json.loads(out) == {"1": "body_trunc", "2": "body_extremities"}
    code, out, _ = _info(capsys, ["-cl", "--task", "total_mr"])
    lines = out.rstrip("\n").split("\n")
    assert lines[0].startswith("Task 'total_mr'  [MR, open license,")
    assert len(lines) - 1 == len(task_registry()["total_mr"].class_map)


def test_info_everything_json(capsys):
    code, out, _ = _info(capsys, ["--json"])
    data = json.loads(out)
    assert code == 0 and set(data) == {"totalsegmentator_version", "tasks"}
    assert data["totalsegmentator_version"] == __version__
    assert list(data["tasks"]) == TASKS
    total = data["tasks"]["total"]
    assert set(total) == {"modality", "license_required", "classes"}
    assert total["classes"]["1"] == "spleen" and len(total["classes"]) == 117
    assert data["tasks"]["brain_aneurysm"]["modality"] == "MR"


@pytest.mark.parametrize("argv, fragment", [
    (["--classes"], "--classes needs a task"),
    (["--classes", "--list-tasks"], "not allowed with argument"),
    (["--classes", "-ta", "bdy"], "unknown task 'bdy' (did you mean 'body'"),
])
def test_info_errors(capsys, argv, fragment):
    code, out, err = _info(capsys, argv)
    assert code == 2 and out == ""
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("totalseg_info: error: ") and fragment in lines[0]
