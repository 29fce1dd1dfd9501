"""DICOM through the whole pipeline: each DICOM output of a run, read back, equals the NIfTI output of the
same run on every slice."""
from __future__ import annotations

import stat

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from _dicom_helpers import read_headers, write_series
from test_dicom import expected_on_slices, read_rtstruct_masks, zip_folder
from totalsegmentator.bin.TotalSegmentator import main
from totalsegmentator.inference.cache import clear_cache
from totalsegmentator.io.dicom_input import load_dicom
from totalsegmentator.io.label_header import load_multilabel_nifti
from totalsegmentator.python_api import totalsegmentator
from totalsegmentator import config
from totalsegmentator.registry import get_task
from totalsegmentator.testing.tiny_weights import install_task_weights, make_constant_model


@pytest.fixture
def fast_home(totalseg_home):
    install_task_weights("total", modes=("fast",))
    clear_cache()
    yield totalseg_home
    clear_cache()


def _segment_numbers(seg_dcm, label_map) -> np.ndarray:
    """label id -> segment number of the DICOM-SEG file (by segment label = class name)."""
    lut = np.zeros(256, np.uint8)
    ids = {name: idx for idx, name in label_map.items()}
    for segment in seg_dcm.SegmentSequence:
        lut[ids[segment.SegmentLabel]] = segment.SegmentNumber
    return lut


@pytest.mark.parametrize("orientation", ["axial", "axial_flipped", "coronal"])
@pytest.mark.parametrize("as_zip", [False, True])
def test_dicom_outputs_equal_the_nifti_output(orientation, as_zip, fast_home, tmp_path):
    series = write_series(tmp_path / "in", orientation, rows=30, cols=34, n_slices=14,
                          pixel_spacing=(2.0, 2.5), slice_spacing=3.0)
    source = zip_folder(tmp_path / "in", tmp_path / "in.zip") if as_zip else tmp_path / "in"
    out = tmp_path / "out" / "case"
    totalsegmentator(source, out, fast=True, device="cpu", quiet=True,
                     output_type=["nifti", "dicom_seg", "dicom_rtstruct"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.nii.gz", "case_rtstruct.dcm", "case_seg.dcm"]
    # all three readable alike (a PACS import service runs as another user): not the 0600 of a temp file
    assert len({stat.S_IMODE(p.stat().st_mode) for p in out.parent.iterdir()}) == 1

    nifti, label_map = load_multilabel_nifti(out.parent / "case.nii.gz")
    labels = np.asarray(nifti.dataobj)
    with load_dicom(tmp_path / "in") as loaded:
        np.testing.assert_allclose(nifti.affine, loaded.image.affine)
        expected = expected_on_slices(series, loaded.image, labels)
    present = {label_map[v] for v in np.unique(labels) if v}
    assert present, "the fixture model should label something"

    seg_dcm = hd.seg.segread(out.parent / "case_seg.dcm")
    assert {s.SegmentLabel for s in seg_dcm.SegmentSequence} == present
    headers = read_headers(series.files)
    pixels = seg_dcm.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], combine_segments=True,
                                                   assert_missing_frames_are_empty=True)
    lut = _segment_numbers(seg_dcm, label_map)
    for k in range(len(headers)):
        np.testing.assert_array_equal(pixels[k], lut[expected[k]], err_msg=f"slice {k}")
    assert seg_dcm.PatientID == headers[0].PatientID
    assert seg_dcm.StudyInstanceUID == headers[0].StudyInstanceUID

    rt = pydicom.dcmread(out.parent / "case_rtstruct.dcm")
    assert {roi.ROIName for roi in rt.StructureSetROISequence} == present
    masks = read_rtstruct_masks(out.parent / "case_rtstruct.dcm", series)
    union = np.zeros_like(next(iter(masks.values())))
    for mask in masks.values():
        union |= mask
    truth = np.stack(expected) > 0
    # contours run through boundary pixel centres and are filled again: near, not exactly, identical
    assert 2 * (union & truth).sum() / (union.sum() + truth.sum()) > 0.9


def test_real_series_dicom_seg_equals_nifti(shared_data, fast_home, tmp_path):
    folder = shared_data / "example_ct_dicom"
    out = tmp_path / "out" / "case"
    seg = totalsegmentator(folder, out, fast=True, device="cpu", quiet=True, output_type=["nifti", "dicom_seg"])
    nifti, label_map = load_multilabel_nifti(out.parent / "case.nii.gz")
    labels = np.asarray(nifti.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(seg.dataobj))
    headers = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    assert labels.shape == (int(headers[0].Columns), int(headers[0].Rows), len(headers))

    seg_dcm = hd.seg.segread(out.parent / "case_seg.dcm")
    uids = [h.file_meta.MediaStorageSOPInstanceUID for h in headers]  # anonymised: empty in the data set
    pixels = seg_dcm.get_pixels_by_source_instance(uids, combine_segments=True,
                                                   assert_missing_frames_are_empty=True)
    lut = _segment_numbers(seg_dcm, label_map)
    inv = np.linalg.inv(nifti.affine)
    spacing = [float(v) for v in headers[0].PixelSpacing]
    iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    for k, ds in enumerate(headers):
        r, c = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
        lps = (np.array([float(v) for v in ds.ImagePositionPatient])[None, None]
               + c[..., None] * spacing[1] * iop[:3] + r[..., None] * spacing[0] * iop[3:])
        vox = np.rint((lps * [-1, -1, 1]) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        np.testing.assert_array_equal(pixels[k], lut[labels[vox[..., 0], vox[..., 1], vox[..., 2]]])


def test_cli_refuses_dicom_output_for_nifti_input(fast_home, tmp_path, capsys):
    img = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), img)
    assert main(["-i", str(img), "-o", str(tmp_path / "seg.dcm"), "-ot", "dicom_seg", "-d", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DICOM" in err[0]
    assert not (tmp_path / "seg.dcm").exists()


def test_nothing_found_with_dicom_output_writes_no_file(fast_home, tmp_path, capsys):
    write_series(tmp_path / "in", rows=30, cols=34, n_slices=14, pixel_spacing=(2.0, 2.5), slice_spacing=3.0)
    fast = get_task("total").modes["fast"]
    make_constant_model(next(config.weights_dir().glob(f"Dataset{fast.dataset_ids[0]}_*/*")), 0)
    clear_cache()
    out = tmp_path / "out" / "case"
    code = main(["-i", str(tmp_path / "in"), "-o", str(out), "--fast", "-d", "cpu", "-q",
                 "-ot", "nifti,dicom_seg,dicom_rtstruct"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["TotalSegmentator: error: the segmentation is empty (no class of the task was "
                                 "found), so there is nothing to write as DICOM"]
    assert not out.parent.exists() or not list(out.parent.iterdir())  # not even the NIfTI of the three


def test_preview_with_dicom_output_lies_beside_the_file(fast_home, tmp_path):
    write_series(tmp_path / "in", rows=30, cols=34, n_slices=14, pixel_spacing=(2.0, 2.5), slice_spacing=3.0)
    out = tmp_path / "out" / "seg.dcm"
    totalsegmentator(tmp_path / "in", out, fast=True, device="cpu", quiet=True, output_type="dicom_seg", preview=True)
    # formats.md section 9: extra files go next to the file with --ml or DICOM output (not inside seg.dcm)
    assert sorted(p.name for p in out.parent.iterdir()) == ["preview_total.png", "seg.dcm"]
