"""Batch segmentation: case discovery, local runs (prefetch/writer threads, resume, fault isolation, summary),
the ``totalseg_batch`` command and a real Dask LocalCluster, all with tiny fixture weights and phantoms."""
from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.batch import STATE_DIR, BatchState, discover_cases, totalsegmentator_batch
from totalsegmentator.bin import totalseg_batch
from totalsegmentator.errors import OptionError, WeightsError
from totalsegmentator.inference import cache
from totalsegmentator.io.label_header import load_multilabel_nifti
from totalsegmentator.registry import get_task
from totalsegmentator.testing.phantoms import Phantom, grid_affine
from totalsegmentator.testing.tiny_weights import install_task_weights

SHAPE = (24, 24, 16)
SPACING = (3.0, 3.0, 3.0)
OPTS = dict(fast=True, device="cpu", quiet=True)
FAST_DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"
CROP_DATASET = "Dataset298_TotalSegmentator_total_6mm_1559subj"


def write_phantom(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(Phantom().nifti(SHAPE, grid_affine(SPACING, SHAPE), seed=seed), str(path))
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x1f\x8b\x08\x00this is not gzip data")
    return path


def fake_dicom(path: Path) -> Path:
    """A file with the DICOM preamble (enough for discovery; never read as an image here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return path


@pytest.fixture
def weights(totalseg_home) -> Path:
    install_task_weights("total", modes=("fast",))
    return totalseg_home


@pytest.fixture
def load_counter(monkeypatch) -> list:
    """Every load_model call of the model cache (the cache is emptied first, so each model loads once)."""
    calls: list = []
    real = cache.load_model

    def counting(folder, *args, **kwargs):
        calls.append(Path(folder).parent.name)
        return real(folder, *args, **kwargs)

    cache.clear_cache()
    monkeypatch.setattr(cache, "load_model", counting)
    yield calls
    cache.clear_cache()


def failure_report(out: Path, summary) -> str:
    """Every case's status and error, with the recorded stage and traceback of each failed case (for asserts)."""
    lines = [f"{r.case_id}: {r.status} {r.error or ''}" for r in summary.results]
    for r in summary.results:
        record = BatchState(out).failure_path(r.case_id)
        if r.status == "failed" and record.exists():
            data = json.loads(record.read_text())
            lines.append(f"--- {r.case_id} failed in stage {data.get('stage')}:\n{data.get('traceback')}")
    return "\n".join(lines)


def read_summary(out: Path) -> tuple[dict, list[dict]]:
    data = json.loads((out / "batch_summary.json").read_text())
    with open(out / "batch_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return data, rows


def statuses(data: dict) -> dict[str, str]:
    return {c["case_id"]: c["status"] for c in data["cases"]}


# ---------------------------------------------------------------------------------------------- discovery
def test_discover_folder_glob_and_lists(tmp_path):
    scans = tmp_path / "scans"
    write_corrupt(scans / "a.nii.gz")  # content does not matter for discovery
    (scans / "b.nii").write_bytes(b"x")
    with zipfile.ZipFile(scans / "series.zip", "w") as zf:
        zf.writestr("x.dcm", b"x")
    fake_dicom(scans / "patient1" / "IM0001")  # no .dcm suffix: found by its preamble
    (scans / "sub1").mkdir()
    (scans / "sub2").mkdir()
    (scans / "sub1" / "ct.nii.gz").write_bytes(b"x")
    (scans / "sub2" / "ct.nii.gz").write_bytes(b"x")
    (scans / "notes.md").write_text("ignored")
    (scans / ".hidden.nii.gz").write_bytes(b"x")
    (scans / "out" / "old.nii.gz").parent.mkdir()
    (scans / "out" / "old.nii.gz").write_bytes(b"x")

    cases = discover_cases(scans, exclude=[scans / "out"])
    found = {c.case_id: (c.kind, Path(c.input).relative_to(scans).as_posix()) for c in cases}
    assert found == {"a": ("nifti", "a.nii.gz"), "b": ("nifti", "b.nii"), "patient1": ("dicom", "patient1"),
                     "series": ("zip", "series.zip"), "sub1_ct": ("nifti", "sub1/ct.nii.gz"),
                     "sub2_ct": ("nifti", "sub2/ct.nii.gz")}
    assert all(Path(c.input).is_absolute() for c in cases)

    # a DICOM folder given directly is one case; a glob expands to its matches
    assert [(c.case_id, c.kind) for c in discover_cases(scans / "patient1")] == [("patient1", "dicom")]
    assert [c.case_id for c in discover_cases(str(scans / "*.nii*"))] == ["a", "b"]
    assert [c.case_id for c in discover_cases(str(scans / "**" / "ct.nii.gz"))] == ["sub1_ct", "sub2_ct"]

    # text list: relative to the list's folder, comments, a missing path kept as a failing case
    listing = tmp_path / "cases.txt"
    listing.write_text("# cohort\nscans/a.nii.gz\n\nscans/patient1  # a DICOM folder\nscans/gone.nii.gz\n")
    got = [(c.case_id, c.kind) for c in discover_cases(listing)]
    assert got == [("a", "nifti"), ("patient1", "dicom"), ("gone", "missing")]

    # CSV with header (ids and series UIDs) and without header
    table = tmp_path / "cases.csv"
    table.write_text("case_id,input,series_uid\nP 01,scans/a.nii.gz,\nP02,scans/patient1,1.2.3\n")
    got = [(c.case_id, Path(c.input).name, c.series_uid) for c in discover_cases(table)]
    assert got == [("P_01", "a.nii.gz", None), ("P02", "patient1", "1.2.3")]
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{scans / 'b.nii'}\n{scans / 'a.nii.gz'}\n")
    assert [c.case_id for c in discover_cases(bare)] == ["b", "a"]

    # the same name in two folders: parent folder names make the ids unique
    other = tmp_path / "other"
    write_corrupt(other / "a.nii.gz")
    ids = [c.case_id for c in discover_cases([scans / "a.nii.gz", other / "a.nii.gz"])]
    assert ids == ["scans_a", "other_a"]


def _made(path: Path, text: str | None) -> Path:
    """A folder (text None) or a text file at ``path``."""
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda d: d / "nope", "does not exist"),
    (lambda d: str(d / "*.nii.gz"), "matches no file"),
    (lambda d: _made(d / "empty", None), "no NIfTI files"),
    (lambda d: _made(d / "x.mha", "x"), "is not a NIfTI file"),
    (lambda d: _made(d / "dup.csv", "case_id,input\nx,a.nii.gz\nx,b.nii.gz\n"),
     "case id 'x' is used by more than one input"),
])
def test_discover_errors(tmp_path, make, fragment):
    with pytest.raises(OptionError, match=fragment):
        discover_cases(make(tmp_path))


# ---------------------------------------------------------------------------------------------- local runs
def test_cli_folder_with_failing_case_summary_and_rerun(weights, tmp_path, load_counter, capsys):
    scans = tmp_path / "scans"
    for i in range(3):
        write_phantom(scans / f"case{i}.nii.gz", seed=i)
    write_corrupt(scans / "broken.nii.gz")
    out = tmp_path / "out"

    code = totalseg_batch.main(["-i", str(scans), "-o", str(out), "-f", "-d", "cpu"])
    captured = capsys.readouterr()
    assert code == 1
    assert "4 cases: 3 done, 1 failed" in captured.out
    failed_lines = [line for line in captured.err.splitlines() if "failed: broken" in line]
    assert len(failed_lines) == 1 and "gzip" in failed_lines[0]
    assert "Traceback" not in captured.err
    assert load_counter == [FAST_DATASET]  # once for three cases

    data, rows = read_summary(out)
    assert data["counts"] == {"done": 3, "skipped": 0, "failed": 1, "not_run": 0}
    assert statuses(data) == {"broken": "failed", "case0": "done", "case1": "done", "case2": "done"}
    broken = next(c for c in data["cases"] if c["case_id"] == "broken")
    assert "cannot read" in broken["error"] and "\n" not in broken["error"]
    assert [r["case_id"] for r in rows] == ["broken", "case0", "case1", "case2"]
    assert rows[0]["status"] == "failed" and rows[0]["error"] == broken["error"]
    assert all(float(r["seconds"]) > 0 for r in rows[1:])
    record = json.loads((out / STATE_DIR / "failed" / "broken.json").read_text())
    assert record["stage"] == "read" and "Traceback" in record["traceback"]

    # per-class layout of a single run, one folder per case; nothing half-written left behind
    files = sorted(p.name for p in (out / "case0").iterdir())
    assert len(files) == 117 and "liver.nii.gz" in files and "spleen.nii.gz" in files
    spleen = nib.load(str(out / "case0" / "spleen.nii.gz"))
    assert spleen.shape == SHAPE and spleen.get_data_dtype() == np.uint8
    assert np.allclose(spleen.affine, grid_affine(SPACING, SHAPE))
    assert not list((out / STATE_DIR / "partial").iterdir())
    assert not [p for p in out.rglob("*.tmp")]

    # rerun: done cases are skipped (files untouched), the broken one is tried again
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("case*/*.nii.gz")}
    markers = {p: p.stat().st_mtime_ns for p in (out / STATE_DIR / "done").iterdir()}
    code = totalseg_batch.main(["-i", str(scans), "-o", str(out), "-f", "-d", "cpu", "-q"])
    assert code == 1
    data, _ = read_summary(out)
    assert statuses(data) == {"broken": "failed", "case0": "skipped", "case1": "skipped", "case2": "skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.glob("case*/*.nii.gz")} == mtimes
    assert {p: p.stat().st_mtime_ns for p in (out / STATE_DIR / "done").iterdir()} == markers
    capsys.readouterr()

    # repaired input: only that case runs, exit code 0
    write_phantom(scans / "broken.nii.gz", seed=7)
    assert totalseg_batch.main(["-i", str(scans), "-o", str(out), "-f", "-d", "cpu", "-q"]) == 0
    data, _ = read_summary(out)
    assert statuses(data) == {"broken": "done", "case0": "skipped", "case1": "skipped", "case2": "skipped"}
    assert not (out / STATE_DIR / "failed" / "broken.json").exists()
    assert (out / "broken" / "liver.nii.gz").exists()

    # an option that changes the outputs makes the done cases stale
    capsys.readouterr()
    assert totalseg_batch.main(["-i", str(scans / "case0.nii.gz"), "-o", str(out), "-f", "-d", "cpu", "-q",
                                "-rs", "liver", "spleen"]) == 0
    data, _ = read_summary(out)
    assert statuses(data) == {"case0": "done"}
    assert sorted(p.name for p in (out / "case0").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    assert load_counter == [FAST_DATASET, CROP_DATASET]  # the 3 mm model still cached; + the 6 mm crop model


def test_batch_outputs_equal_single_runs(weights, tmp_path):
    from totalsegmentator.python_api import totalsegmentator

    scan = write_phantom(tmp_path / "scans" / "ct1.nii.gz", seed=3)
    single = tmp_path / "single"
    totalsegmentator(str(scan), str(single / "ct1.nii.gz"), ml=True, statistics=True, **OPTS)
    totalsegmentator(str(scan), str(single / "perclass"), **OPTS)

    summary = totalsegmentator_batch(tmp_path / "scans", tmp_path / "ml", ml=True, statistics=True, **OPTS)
    assert summary.exit_code == 0 and summary.results[0].outputs == ["ct1.nii.gz", "ct1_statistics.json"]
    assert (tmp_path / "ml" / "ct1.nii.gz").read_bytes() == (single / "ct1.nii.gz").read_bytes()
    assert json.loads((tmp_path / "ml" / "ct1_statistics.json").read_text()) == \
        json.loads((single / "statistics.json").read_text())
    img, label_map = load_multilabel_nifti(tmp_path / "ml" / "ct1.nii.gz")
    assert label_map[5] == "liver" and img.shape == SHAPE

    summary = totalsegmentator_batch(scan, tmp_path / "pc", **OPTS)
    assert summary.results[0].outputs == ["ct1"]
    names = sorted(p.name for p in (single / "perclass").iterdir())
    assert sorted(p.name for p in (tmp_path / "pc" / "ct1").iterdir()) == names
    for name in ("liver.nii.gz", "spleen.nii.gz", "brain.nii.gz"):
        assert (tmp_path / "pc" / "ct1" / name).read_bytes() == (single / "perclass" / name).read_bytes()


def test_csv_list_dicom_cases_and_per_case_files(weights, tmp_path):
    from _dicom_helpers import write_series

    from totalsegmentator.io.dicom_input import load_dicom

    write_phantom(tmp_path / "data" / "scan_a.nii.gz", seed=1)
    write_series(tmp_path / "data" / "dcm_series", rows=20, cols=24, n_slices=10, pixel_spacing=(3.0, 3.0),
                 slice_spacing=3.0)
    dcm_zip = tmp_path / "data" / "zipped.zip"
    with zipfile.ZipFile(dcm_zip, "w") as zf:
        for f in sorted((tmp_path / "data" / "dcm_series").iterdir()):
            zf.write(f, f"slices/{f.name}")
    table = tmp_path / "data" / "cohort.csv"
    write_series(tmp_path / "data" / "mr_series", rows=20, cols=24, n_slices=10, pixel_spacing=(3.0, 3.0),
                 slice_spacing=3.0, modality="MR")
    install_task_weights("total_mr", modes=("fast",))
    table.write_text("subject,path\nsubj-A,scan_a.nii.gz\nsubj-B,dcm_series\nsubj-C,zipped.zip\n"
                     "subj-D,missing.nii.gz\nsubj-E,mr_series\n")
    out = tmp_path / "out"
    summary = totalsegmentator_batch(table, out, ml=True, statistics=str(tmp_path / "stats"), **OPTS)

    assert summary.exit_code == 1
    assert {r.case_id: r.status for r in summary.results} == {
        "subj-A": "done", "subj-B": "done", "subj-C": "done", "subj-D": "failed", "subj-E": "done"}, \
        failure_report(out, summary)
    assert "missing.nii.gz' does not exist" in summary.results[3].error
    for case_id in ("subj-A", "subj-B", "subj-C"):
        img, label_map = load_multilabel_nifti(out / f"{case_id}.nii.gz")
        assert label_map[1] == "spleen"
        stats = json.loads((tmp_path / "stats" / f"{case_id}.json").read_text())
        assert "liver" in stats and set(stats["liver"]) >= {"volume", "intensity"}
    # the DICOM series converted the same way from a folder and from a zip
    b = nib.load(str(out / "subj-B.nii.gz"))
    c = nib.load(str(out / "subj-C.nii.gz"))
    with load_dicom(tmp_path / "data" / "dcm_series") as series:
        assert b.shape == series.image.shape and np.allclose(b.affine, series.image.affine)
    assert np.array_equal(np.asarray(b.dataobj), np.asarray(c.dataobj)) and np.allclose(b.affine, c.affine)
    marker = json.loads((out / STATE_DIR / "done" / "subj-B.json").read_text())
    assert marker["task"] == "total" and marker["outputs"] == ["subj-B.nii.gz"]
    # an MR series with task total is segmented with total_mr, as TotalSegmentator's command line does
    marker = json.loads((out / STATE_DIR / "done" / "subj-E.json").read_text())
    assert marker["task"] == "total_mr"
    assert load_multilabel_nifti(out / "subj-E.nii.gz")[1] == get_task("total_mr").class_map


_FIRST_IMPORTS_PROBE = """
import sys, threading
from pathlib import Path

sys.path.insert(0, sys.argv[1])  # the tests folder: _dicom_helpers
import nibabel as nib
from _dicom_helpers import write_series

from totalsegmentator.batch import totalsegmentator_batch
from totalsegmentator.testing.phantoms import Phantom, grid_affine
from totalsegmentator.testing.tiny_weights import install_task_weights

root = Path(sys.argv[2])
install_task_weights("total", modes=("fast",))
shape = (24, 24, 16)
nib.save(Phantom().nifti(shape, grid_affine((3.0, 3.0, 3.0), shape), seed=1), str(root / "a.nii.gz"))
write_series(root / "dcm", rows=20, cols=24, n_slices=10, pixel_spacing=(3.0, 3.0), slice_spacing=3.0)
(root / "cases.csv").write_text("path\\na.nii.gz\\ndcm\\nmissing.nii.gz\\n")


class FirstImports:  # sees every import of a module not imported before, in the thread importing it
    found = []

    def find_spec(self, name, path=None, target=None):
        self.found.append((threading.current_thread().name, name))
        return None


sys.meta_path.insert(0, FirstImports())
summary = totalsegmentator_batch(root / "cases.csv", root / "out", ml=True, statistics=str(root / "stats"),
                                 fast=True, device="cpu", quiet=True)
print({r.case_id: r.status for r in summary.results})
print(sorted({f"{thread}:{name}" for thread, name in FirstImports.found if thread.startswith("totalseg-batch")}))
print("distributed" in sys.modules)
"""


def test_reader_and_writer_threads_import_nothing(tmp_path):
    """A fresh process: the batch's reader and writer threads never import a module for the first time.

    First imports of overlapping packages in several threads at once can fail in CPython (``_DeadlockError``, a
    partially initialised module: gh-83065), which would fail one case at random (the first DICOM case used to
    import dicom2nifti in the reader thread while the first case was predicted); a local batch does not import
    dask's ``distributed`` at all."""
    import subprocess
    import sys

    env = {**os.environ, "TOTALSEG_HOME_DIR": str(tmp_path / "home")}
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    proc = subprocess.run([sys.executable, "-c", _FIRST_IMPORTS_PROBE, str(Path(__file__).parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    statuses_line, imports_line, distributed_line = proc.stdout.strip().splitlines()[-3:]
    assert statuses_line == "{'a': 'done', 'dcm': 'done', 'missing': 'failed'}"
    assert imports_line == "[]", f"first imported by a batch thread (add them to import_step_modules): {imports_line}"
    assert distributed_line == "False"


def test_dicom_output_per_case(weights, tmp_path):
    import pydicom
    from _dicom_helpers import write_series

    series = write_series(tmp_path / "data" / "ser1", rows=20, cols=24, n_slices=10, pixel_spacing=(3.0, 3.0),
                          slice_spacing=3.0)
    write_phantom(tmp_path / "data" / "nifti_case.nii.gz")
    summary = totalsegmentator_batch(tmp_path / "data", tmp_path / "out", output_type="dicom_seg", **OPTS)
    results = {r.case_id: r for r in summary.results}
    assert results["ser1"].status == "done" and results["ser1"].outputs == ["ser1_seg.dcm"]
    seg = pydicom.dcmread(tmp_path / "out" / "ser1_seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == series.study_uid
    # an option that does not fit one case fails that case only
    assert results["nifti_case"].status == "failed" and results["nifti_case"].error_type == "OptionError"
    assert "needs a DICOM input" in results["nifti_case"].error


def test_fatal_error_stops_the_batch(weights, tmp_path, monkeypatch):
    import totalsegmentator.python_api as python_api

    for i in range(3):
        write_phantom(tmp_path / "scans" / f"s{i}.nii.gz", seed=i)
    calls = []

    def no_weights(**kwargs):
        calls.append(kwargs)
        raise WeightsError("dataset 297 is not installed and cannot be downloaded")

    monkeypatch.setattr(python_api, "totalsegmentator", no_weights)
    summary = totalsegmentator_batch(tmp_path / "scans", tmp_path / "out", **OPTS)
    assert len(calls) == 1
    assert [r.status for r in summary.results] == ["failed", "not_run", "not_run"]
    assert summary.aborted.startswith("dataset 297 is not installed") and summary.exit_code == 1
    data, _ = read_summary(tmp_path / "out")
    assert data["counts"]["not_run"] == 2 and data["aborted"] == summary.aborted


def test_memory_is_bounded_by_the_prefetch_queue(weights, tmp_path, monkeypatch):
    import time

    from totalsegmentator.batch import runner

    for i in range(8):
        write_phantom(tmp_path / "scans" / f"s{i}.nii.gz", seed=i)
    in_memory, peak = [0], [0]
    real_read, real_predict, real_finish = runner.read_case, runner.predict_case, runner.finish_case

    def read(*args):
        loaded = real_read(*args)
        in_memory[0] += 1
        peak[0] = max(peak[0], in_memory[0])
        return loaded

    def slow_predict(*args):
        time.sleep(0.05)  # prediction is the slow step: reading must wait for it, not run ahead
        return real_predict(*args)

    def finish(*args):
        result = real_finish(*args)
        in_memory[0] -= 1
        return result

    monkeypatch.setattr(runner, "read_case", read)
    monkeypatch.setattr(runner, "predict_case", slow_predict)
    monkeypatch.setattr(runner, "finish_case", finish)
    summary = totalsegmentator_batch(tmp_path / "scans", tmp_path / "out", prefetch=1, ml=True, **OPTS)
    assert [r.status for r in summary.results] == ["done"] * 8
    # reader (1) + queue (prefetch) + predicting (1) + write queue (1) + writing (1)
    assert 2 <= peak[0] <= 1 + 4


def _raise_ctrl_c() -> None:
    raise KeyboardInterrupt


def _send_sigterm() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGTERM)  # the command's handler raises at once, here in the predicting thread


@pytest.mark.parametrize("stop, code, message", [
    (_raise_ctrl_c, 130, "interrupted"),
    (_send_sigterm, 143, "terminated (SIGTERM)"),  # a scheduler's stop or time limit
])
def test_interrupt_writes_the_summary(weights, tmp_path, monkeypatch, capsys, stop, code, message):
    import totalsegmentator.python_api as python_api

    for i in range(3):
        write_phantom(tmp_path / "scans" / f"s{i}.nii.gz", seed=i)
    real = python_api.totalsegmentator
    calls = []

    def stopped_in_second(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            stop()
        return real(**kwargs)

    monkeypatch.setattr(python_api, "totalsegmentator", stopped_in_second)
    out = tmp_path / "out"
    got = totalseg_batch.main(["-i", str(tmp_path / "scans"), "-o", str(out), "-f", "-d", "cpu", "--ml"])
    captured = capsys.readouterr()
    assert got == code and captured.err.strip().splitlines()[-1] == f"totalseg_batch: error: {message}"
    assert "3 cases: 1 done, 0 failed, 2 not run" in captured.out
    data, _ = read_summary(out)
    assert data["interrupted"] is True and statuses(data) == {"s0": "done", "s1": "not_run", "s2": "not_run"}
    assert not (out / STATE_DIR / "done" / "s1.json").exists() and not list((out / STATE_DIR / "partial").iterdir())
    monkeypatch.setattr(python_api, "totalsegmentator", real)
    assert totalseg_batch.main(["-i", str(tmp_path / "scans"), "-o", str(out), "-f", "-d", "cpu", "--ml", "-q"]) == 0
    assert statuses(read_summary(out)[0]) == {"s0": "skipped", "s1": "done", "s2": "done"}


@pytest.mark.parametrize("argv, fragment", [
    (["-rs", "livr"], "did you mean 'liver'"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
    (["--prefetch", "0"], "must be at least 1"),
    (["--ml", "-ot", "dicom_seg", "-r"], "--radiomics does not work with --ml"),
])
def test_cli_option_errors_exit_2(tmp_path, capsys, argv, fragment):
    write_phantom(tmp_path / "scans" / "a.nii.gz")
    code = totalseg_batch.main(["-i", str(tmp_path / "scans"), "-o", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("totalseg_batch: error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "batch_summary.json").exists()


def test_cli_list_cases_and_api_errors(weights, tmp_path, capsys):
    write_phantom(tmp_path / "scans" / "a.nii.gz")
    write_corrupt(tmp_path / "scans" / "b.nii.gz")
    out = tmp_path / "out"
    totalsegmentator_batch(tmp_path / "scans", out, ml=True, **OPTS)
    assert totalseg_batch.main(["-i", str(tmp_path / "scans"), "-o", str(out), "--ml", "-f", "--list_cases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"a\tdone\t{tmp_path / 'scans' / 'a.nii.gz'}", f"b\ttodo\t{tmp_path / 'scans' / 'b.nii.gz'}"]
    with pytest.raises(OptionError, match="unknown option"):
        totalsegmentator_batch(tmp_path / "scans", out, fastt=True)
    with pytest.raises(OptionError, match="only one of"):
        totalsegmentator_batch(tmp_path / "scans", out, workers=2, scheduler="tcp://127.0.0.1:1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="is a file"):
        totalsegmentator_batch(tmp_path / "scans", tmp_path / "file")
    held = BatchState(out).lock()  # another batch writing to the same folder
    try:
        with pytest.raises(OptionError, match="another totalseg_batch is writing to"):
            totalsegmentator_batch(tmp_path / "scans", out, ml=True, **OPTS)
    finally:
        held.release()


# ---------------------------------------------------------------------------------------------- Dask
def test_cli_workers_starts_a_local_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    write_corrupt(tmp_path / "scans" / "w1.nii.gz")  # a failing read: the worker needs neither torch nor weights
    out = tmp_path / "out"
    code = totalseg_batch.main(["-i", str(tmp_path / "scans"), "-o", str(out), "-f", "-d", "cpu", "--ml",
                                "--workers", "1"])
    assert code == 1
    assert "1 case: 0 done, 1 failed" in capsys.readouterr().out
    data, _ = read_summary(out)
    assert data["mode"] == "local-cluster:1" and statuses(data) == {"w1": "failed"}
    assert data["cases"][0]["worker"].startswith("tcp://") and "gzip" in data["cases"][0]["error"]


def test_dask_local_cluster_with_failing_case_and_rerun(weights, tmp_path):
    distributed = pytest.importorskip("distributed")
    from totalsegmentator.batch.distributed import worker_state, usable_cpus

    scans = tmp_path / "scans"
    for i in range(3):
        write_phantom(scans / f"p{i}.nii.gz", seed=i)
    write_corrupt(scans / "bad.nii.gz")
    out = tmp_path / "out"
    # the workers start with a wrong home folder: the batch's worker plugin must hand them the client's
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, env={"TOTALSEG_HOME_DIR": str(tmp_path / "wrong")}) \
            as cluster, distributed.Client(cluster) as client:
        assert set(client.run(lambda: os.environ["TOTALSEG_HOME_DIR"]).values()) == {str(tmp_path / "wrong")}
        summary = totalsegmentator_batch(scans, out, scheduler=cluster.scheduler_address, ml=True, **OPTS)
        assert summary.mode == cluster.scheduler_address
        assert {r.case_id: r.status for r in summary.results} == {
            "bad": "failed", "p0": "done", "p1": "done", "p2": "done"}
        assert summary.exit_code == 1 and "gzip" in summary.results[0].error
        workers = set(client.scheduler_info(n_workers=-1)["workers"])
        assert {r.worker for r in summary.results} <= workers
        for i in range(3):
            img, label_map = load_multilabel_nifti(out / f"p{i}.nii.gz")
            assert img.shape == SHAPE and label_map[5] == "liver"

        states = client.run(worker_state)
        busy = {r.worker for r in summary.results if r.status == "done"}
        for address, state in states.items():
            assert state["home"] == str(os.environ["TOTALSEG_HOME_DIR"])
            assert state["torch_threads"] == max(1, usable_cpus() // 2)
            assert state["models"] == (1 if address in busy else 0)  # one model, kept between cases

        mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("p*.nii.gz")}
        write_phantom(scans / "p3.nii.gz", seed=3)
        summary = totalsegmentator_batch(scans, out, scheduler=cluster.scheduler_address, ml=True, **OPTS)
        assert {r.case_id: r.status for r in summary.results} == {
            "bad": "failed", "p0": "skipped", "p1": "skipped", "p2": "skipped", "p3": "done"}
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("p[012].nii.gz")} == mtimes
        assert (out / "p3.nii.gz").exists()
        data, rows = read_summary(out)
        assert data["counts"] == {"done": 1, "skipped": 3, "failed": 1, "not_run": 0}
        assert [r["status"] for r in rows] == ["failed", "skipped", "skipped", "skipped", "done"]
