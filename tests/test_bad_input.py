"""Bad input through the main command: one clear line, a non-zero exit, nothing written, no traceback."""
from __future__ import annotations

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from _dicom_helpers import write_series
from totalsegmentator.bin.TotalSegmentator import main
from totalsegmentator.inference.cache import clear_cache
from totalsegmentator.testing.phantoms import Phantom, grid_affine
from totalsegmentator.testing.tiny_weights import install_task_weights


@pytest.fixture
def fast_weights(totalseg_home):
    install_task_weights("total", modes=("fast",))
    clear_cache()
    yield totalseg_home
    clear_cache()


def _good(shape=(12, 12, 10)) -> nib.Nifti1Image:
    return Phantom(body_radius_mm=15.0, blobs=()).nifti(shape, grid_affine((3.0, 3.0, 3.0), shape))


def _write_bad(kind: str, folder):
    path = folder / f"{kind}.nii.gz"
    if kind == "missing":
        return path
    if kind == "truncated_gzip":
        nib.save(_good(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_bytes(gzip.compress(b"this is not a NIfTI file" * 40))
    elif kind == "2d":
        nib.save(nib.Nifti1Image(np.zeros((20, 20), np.int16), np.eye(4)), path)
    elif kind == "4d_two_volumes":
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 8, 2), np.int16), np.eye(4)), path)
    elif kind == "zero_axis":
        nib.save(nib.Nifti1Image(np.zeros((10, 0, 8), np.int16), np.eye(4)), path)
    elif kind == "one_slice":  # one 1 mm slice: no voxel at the model's 3 mm
        nib.save(nib.Nifti1Image(np.zeros((10, 10, 1), np.int16), np.eye(4)), path)
    elif kind == "all_nan":
        nib.save(nib.Nifti1Image(np.full((10, 10, 8), np.nan, np.float32), np.eye(4)), path)
    return path


@pytest.mark.parametrize("kind", ["missing", "truncated_gzip", "not_an_image", "2d", "4d_two_volumes",
                                  "zero_axis", "one_slice", "all_nan"])
def test_bad_input_is_one_clear_line(kind, fast_weights, tmp_path, capsys):
    bad = _write_bad(kind, tmp_path)
    out = tmp_path / "seg"
    code = main(["-i", str(bad), "-o", str(out), "--fast", "-d", "cpu", "-q"])
    captured = capsys.readouterr()
    assert code != 0
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "error" in lines[0].lower()
    assert "unexpected" not in lines[0]  # recognised as bad input, not caught as a crash
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists()


def test_verbose_shows_the_traceback(fast_weights, tmp_path, capsys):
    bad = _write_bad("truncated_gzip", tmp_path)
    code = main(["-i", str(bad), "-o", str(tmp_path / "seg"), "--fast", "-d", "cpu", "-v"])
    assert code != 0
    assert "Traceback" in capsys.readouterr().err


def test_single_volume_4d_and_nan_voxels_are_handled(fast_weights, tmp_path, capsys):
    good = _good()
    data = np.asarray(good.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    four_d = nib.Nifti1Image(data[..., None], good.affine)
    path = tmp_path / "one_volume.nii.gz"
    nib.save(four_d, path)
    out = tmp_path / "seg"
    assert main(["-i", str(path), "-o", str(out), "--fast", "-d", "cpu", "-q"]) == 0
    written = nib.load(out / "liver.nii.gz")
    assert written.shape == good.shape
    np.testing.assert_allclose(written.affine, good.affine)



def test_nifti_name_in_capitals_is_read_as_nifti(fast_weights, tmp_path):
    # names from Windows or PACS exports: option checks and the reader agree that CT.NII.GZ is a NIfTI
    good = _good()
    path = tmp_path / "CT.NII.GZ"
    nib.save(good, tmp_path / "ct.nii.gz")
    (tmp_path / "ct.nii.gz").rename(path)
    out = tmp_path / "seg"
    assert main(["-i", str(path), "-o", str(out), "--fast", "-d", "cpu", "-q"]) == 0
    assert nib.load(out / "liver.nii.gz").shape == good.shape

def test_sheared_affine_is_segmented_in_its_own_grid(fast_weights, tmp_path):
    good = _good()
    affine = good.affine.copy()
    affine[0, 1] = 0.8  # a non-orthogonal direction matrix (gantry tilt style shear)
    path = tmp_path / "sheared.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(good.dataobj), affine), path)
    out = tmp_path / "seg"
    assert main(["-i", str(path), "-o", str(out), "--fast", "-d", "cpu", "-q"]) == 0
    written = nib.load(out / "liver.nii.gz")
    assert written.shape == good.shape
    np.testing.assert_allclose(written.affine, affine)


def test_refused_dicom_series_is_one_line_on_stderr(fast_weights, tmp_path):
    # a subprocess: pytest's log capture would hide what a user's terminal shows (dicom2nifti's own log lines)
    series = write_series(tmp_path / "series", n_slices=8)
    series.files[3].unlink()  # files are listed in slice order: a gap inside the series
    out = tmp_path / "seg"
    proc = subprocess.run([sys.executable, "-m", "totalsegmentator.bin.TotalSegmentator", "-i",
                           str(tmp_path / "series"), "-o", str(out), "--fast", "-d", "cpu", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"TotalSegmentator: error: DICOM series {series.series_uid} cannot be converted: slices are missing or "
        "unevenly spaced (SLICE_INCREMENT_INCONSISTENT)"]
    assert not out.exists()


def test_full_disk_while_writing_is_one_clear_line(fast_weights, tmp_path, capsys, monkeypatch):
    import errno

    from totalsegmentator import atomic_files

    path = tmp_path / "ct.nii.gz"
    nib.save(_good(), path)
    real_replace = atomic_files.os.replace

    def disk_full(src, dst):
        if str(dst).endswith("spleen.nii.gz"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_files.os, "replace", disk_full)
    out = tmp_path / "seg"
    code = main(["-i", str(path), "-o", str(out), "--fast", "-d", "cpu", "-q", "-ns", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == [f"TotalSegmentator: error: cannot write {out / 'spleen.nii.gz'}: No space left on device"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind
