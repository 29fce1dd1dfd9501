"""DICOM in (folder / zip -> NIfTI) and out (DICOM-SEG, RTSTRUCT), on synthetic and real series."""
from __future__ import annotations

import colorsys
import csv
import gc
import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

import totalsegmentator
from totalsegmentator.errors import DicomError, OptionError
from totalsegmentator.io.dicom_common import (
    SNOMED_CSV,
    dicom_output_paths,
    write_dicom_outputs,
    load_structure_table,
    structure_codes,
    vivid_colour,
)
from totalsegmentator.io.dicom_input import dicom_modality, extract_zip_safely, load_dicom
from totalsegmentator.io.dicom_rtstruct import write_rtstruct
from totalsegmentator.io.dicom_seg import write_dicom_seg
from totalsegmentator.registry import get_task

from _dicom_helpers import (  # noqa: E402  (tests/ is on sys.path under pytest)
    ORIENTATIONS,
    read_headers,
    write_dicom_without_pixels,
    write_non_dicom_files,
    write_series,
)

CLASS_MAP = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 52: "aorta", 60: "not_a_known_structure"}


# ----------------------------------------------------------------------------- helpers
def expected_on_slices(series, image, volume: np.ndarray) -> list[np.ndarray]:
    """For each written slice: the (rows, cols) values of ``volume`` (NIfTI grid) at its pixels.

    Computed from the geometry the synthetic series was written with (not from the module):
    pixel -> LPS mm -> RAS mm -> voxel index through the inverse affine.
    """
    inv = np.linalg.inv(image.affine)
    r, c = np.mgrid[0:series.rows, 0:series.cols]
    out = []
    for k in range(len(series.positions)):
        lps = (series.positions[k][None, None, :]
               + c[..., None] * series.pixel_spacing[1] * series.row_cosine
               + r[..., None] * series.pixel_spacing[0] * series.col_cosine)
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(vox).astype(int)
        assert np.abs(vox - idx).max() < 1e-3
        out.append(volume[idx[..., 0], idx[..., 1], idx[..., 2]])
    return out


def blob_labels(shape, labels=(1, 2, 5, 52)) -> np.ndarray:
    """Non-overlapping ellipsoids, one per label, filling different parts of the grid."""
    grid = np.indices(shape).astype(float)
    seg = np.zeros(shape, dtype=np.uint8)
    centres = [(0.3, 0.3, 0.3), (0.7, 0.35, 0.65), (0.35, 0.7, 0.7), (0.72, 0.72, 0.3)]
    for label, centre in zip(labels, centres):
        radii = [max(1.6, 0.2 * s) for s in shape]
        d = sum(((grid[a] - centre[a] * (shape[a] - 1)) / radii[a]) ** 2 for a in range(3))
        seg[(d <= 1.0) & (seg == 0)] = label
    return seg


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def read_rtstruct_masks(rt_path: Path, series) -> dict[str, np.ndarray]:
    """Our own rasteriser of RTSTRUCT contours: (n_slices, rows, cols) mask per ROI name.

    Points go to pixel coordinates with each referenced slice's own position, orientation and
    spacing. (rt-utils' reader assumes square images and square pixels.)
    """
    import cv2

    ds = pydicom.dcmread(rt_path)
    headers = read_headers(series.files)
    index = {h.SOPInstanceUID: k for k, h in enumerate(headers)}
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    masks = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros((len(headers), series.rows, series.cols), dtype=np.uint8)
        for contour in roi.ContourSequence:
            k = index[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3) - series.positions[k]
            cols = pts @ series.row_cosine / series.pixel_spacing[1]
            rows = pts @ series.col_cosine / series.pixel_spacing[0]
            # Contour points lie in the slice plane, on pixel centres.
            assert np.abs(pts @ np.cross(series.row_cosine, series.col_cosine)).max() < 1e-3
            assert np.abs(cols - np.rint(cols)).max() < 1e-3 and np.abs(rows - np.rint(rows)).max() < 1e-3
            poly = np.stack([np.rint(cols), np.rint(rows)], axis=1).astype(np.int32)
            cv2.fillPoly(mask[k], [poly], 1)
        masks[names[roi.ReferencedROINumber]] = mask.astype(bool)
    return masks


def zip_folder(folder: Path, zip_path: Path, prefix: str = "export/") -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
    return zip_path


# ----------------------------------------------------------------------------- input
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_converted_geometry_matches_slice_headers(tmp_path, orientation):
    series = write_series(tmp_path / "in", orientation)
    with load_dicom(tmp_path / "in") as loaded:
        img = loaded.image
        data = np.asanyarray(img.dataobj)
        assert data.size == series.rows * series.cols * len(series.positions)
        assert sorted(img.shape) == sorted((series.rows, series.cols, len(series.positions)))
        inv = np.linalg.inv(img.affine)
        seen = np.zeros(img.shape, dtype=bool)
        for k in range(len(series.positions)):
            for r, c in [(0, 0), (0, series.cols - 1), (series.rows - 1, 0), (series.rows - 1, series.cols - 1)]:
                lps = series.pixel_lps(k, r, c)
                vox = inv @ np.array([-lps[0], -lps[1], lps[2], 1.0])
                ijk = np.rint(vox[:3]).astype(int)
                assert np.allclose(vox[:3], ijk, atol=1e-3)
                # The NIfTI world is RAS: x and y are the negated DICOM (LPS) coordinates.
                assert np.allclose(img.affine @ np.append(ijk, 1.0), [-lps[0], -lps[1], lps[2], 1.0], atol=1e-3)
            # Every pixel lands on its own voxel with its rescaled value.
            values = expected_on_slices(series, img, data)[k]
            assert np.array_equal(values, series.hu(k))
            # mark voxels of this slice as seen via the value pattern (values are unique)
            seen |= np.isin(data, series.hu(k))
        assert seen.all()
        assert loaded.series_uid == series.series_uid
        assert loaded.modality == "CT"
        assert len(loaded.files) == len(loaded.datasets) == len(series.positions)
        assert all(f.exists() and f.parent == loaded.directory for f in loaded.files)
        assert "PixelData" not in loaded.datasets[0]
        directory = loaded.directory
    assert not directory.exists()


def test_zip_input_identical_to_folder_and_usable_for_dicom_output(tmp_path):
    series = write_series(tmp_path / "in" / "sub", "axial_flipped")
    zip_path = zip_folder(tmp_path / "in", tmp_path / "series.zip")
    folder = load_dicom(tmp_path / "in")
    zipped = load_dicom(zip_path)
    assert np.array_equal(folder.image.affine, zipped.image.affine)
    assert np.array_equal(np.asanyarray(folder.image.dataobj), np.asanyarray(zipped.image.dataobj))
    assert folder.image.header.binaryblock == zipped.image.header.binaryblock
    assert zipped.series_uid == series.series_uid
    assert sorted(d.SOPInstanceUID for d in zipped.datasets) == sorted(d.SOPInstanceUID for d in folder.datasets)
    # The official tool cannot write DICOM output for zip input; we keep the slices.
    seg = blob_labels(zipped.image.shape)
    out = write_rtstruct(seg, CLASS_MAP, zipped, tmp_path / "out" / "rt.dcm")
    assert pydicom.dcmread(out).Modality == "RTSTRUCT"
    folder.close()
    assert not folder.directory.exists()
    directory = zipped.directory
    del zipped
    gc.collect()
    assert not directory.exists()  # removed when the object goes away


@pytest.mark.parametrize("entry", ["../evil.dcm", "a/../../evil.dcm", "/abs/evil.dcm", "C:/evil.dcm"])
def test_zip_with_escaping_entry_is_refused(tmp_path, entry):
    series = write_series(tmp_path / "in", n_slices=3)
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(series.files[0], "ok.dcm")
        zf.writestr(zipfile.ZipInfo(entry), series.files[1].read_bytes())
    with pytest.raises(DicomError, match="points outside the archive"):
        load_dicom(zip_path)
    assert not (tmp_path / "evil.dcm").exists()
    target = tmp_path / "target"
    with pytest.raises(DicomError):
        extract_zip_safely(zip_path, target)
    assert not any(p.name == "evil.dcm" for p in tmp_path.rglob("*"))


def test_zip_with_symlink_entry_is_refused(tmp_path):
    zip_path = tmp_path / "link.zip"
    info = zipfile.ZipInfo("slices/link.dcm")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DicomError, match="symbolic link"):
        load_dicom(zip_path)


def test_zip_over_size_limit_is_refused(tmp_path):
    zip_path = tmp_path / "big.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * 200_000)
    with pytest.raises(DicomError, match="more than the limit"):
        load_dicom(zip_path, max_zip_bytes=100_000)


def test_several_series_error_lists_them_and_series_uid_selects(tmp_path):
    a = write_series(tmp_path / "in" / "a", "axial", n_slices=5, description="thin axial")
    b = write_series(tmp_path / "in" / "b", "coronal", n_slices=7, description="coronal recon")
    with pytest.raises(DicomError) as err:
        load_dicom(tmp_path / "in")
    message = str(err.value)
    assert "\n" not in message
    assert a.series_uid in message and b.series_uid in message
    assert "'thin axial', 5 slices" in message and "'coronal recon', 7 slices" in message
    assert "series_uid" in message
    with load_dicom(tmp_path / "in", series_uid=b.series_uid) as chosen:
        assert chosen.series_uid == b.series_uid
        assert len(chosen.files) == 7
        assert 7 in chosen.image.shape
    with pytest.raises(DicomError, match="not found"):
        load_dicom(tmp_path / "in", series_uid="1.2.3.4")


def test_non_dicom_files_and_pixelless_dicom_are_ignored(tmp_path):
    series = write_series(tmp_path / "in", n_slices=6)
    write_non_dicom_files(tmp_path / "in")
    write_dicom_without_pixels(tmp_path / "in")
    with load_dicom(tmp_path / "in") as loaded:
        assert loaded.series_uid == series.series_uid
        assert len(loaded.files) == 6


def test_our_own_dicom_outputs_in_the_input_folder_are_ignored(tmp_path):
    series = write_series(tmp_path / "in", n_slices=5)
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape)
        paths = dicom_output_paths(tmp_path / "in", "dicom_seg", "total", loaded.series_uid)
        write_dicom_seg(seg, CLASS_MAP, loaded, paths["dicom_seg"])
        write_rtstruct(seg, CLASS_MAP, loaded, tmp_path / "in" / "rt.dcm")
    assert paths["dicom_seg"] == tmp_path / "in" / f"{series.series_uid}.dcm"
    with load_dicom(tmp_path / "in") as again:  # SEG and RTSTRUCT are not slices of a series
        assert again.series_uid == series.series_uid and len(again.files) == 5


def test_folder_without_dicom_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match="no DICOM image files"):
        load_dicom(tmp_path / "empty")
    write_non_dicom_files(tmp_path / "junk")
    write_dicom_without_pixels(tmp_path / "junk")
    with pytest.raises(DicomError, match="no DICOM image files"):
        load_dicom(tmp_path / "junk")
    with pytest.raises(DicomError, match="not found"):
        load_dicom(tmp_path / "missing")
    (tmp_path / "ct.mha").write_text("ObjectType = Image")
    with pytest.raises(DicomError, match=r"ct.mha is neither a NIfTI file \(.nii, .nii.gz\) nor a folder or .zip of "
                                         r"DICOM slices; convert other image formats"):
        load_dicom(tmp_path / "ct.mha")
    series = write_series(tmp_path / "series", n_slices=3)
    with pytest.raises(DicomError, match="is a single DICOM file; pass the folder"):
        load_dicom(series.files[0])


def test_missing_slice_gives_one_line_error(tmp_path, monkeypatch):
    import tempfile

    series = write_series(tmp_path / "in", n_slices=8)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    by_position = sorted(series.files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    by_position[3].unlink()
    with pytest.raises(DicomError) as err:
        load_dicom(tmp_path / "in")
    assert "\n" not in str(err.value)
    assert series.series_uid in str(err.value) and "cannot be converted" in str(err.value)
    assert list(private_tmp.iterdir()) == []  # the private working folder is removed on failure



def test_refused_series_without_series_uid_is_named_plainly(tmp_path):
    series = write_series(tmp_path / "in", n_slices=8)
    for f in series.files:  # anonymised exports may leave the UID empty (so does ../shared's example series)
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = ""
        ds.save_as(f)
    series.files[3].unlink()
    with pytest.raises(DicomError, match=r"^the DICOM series \(no SeriesInstanceUID\) cannot be converted: "
                                         r"slices are missing"):
        load_dicom(tmp_path / "in")

def test_dicom_modality(tmp_path):
    write_series(tmp_path / "ct", n_slices=2)
    write_series(tmp_path / "mr", n_slices=2, modality="MR")
    write_non_dicom_files(tmp_path / "junk")
    assert dicom_modality(tmp_path / "ct") == "CT"
    assert dicom_modality(tmp_path / "mr") == "MR"
    assert dicom_modality(zip_folder(tmp_path / "mr", tmp_path / "mr.zip")) == "MR"
    assert dicom_modality(tmp_path / "junk") is None
    assert dicom_modality(tmp_path / "nothing_here") is None


# ----------------------------------------------------------------------------- DICOM-SEG
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_dicom_seg_round_trip(tmp_path, orientation):
    import highdicom as hd

    series = write_series(tmp_path / "in", orientation)
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape)
        out = write_dicom_seg(seg, CLASS_MAP, loaded, tmp_path / "out" / "seg.dcm")
    assert out == tmp_path / "out" / "seg.dcm"
    assert [p.name for p in out.parent.iterdir()] == ["seg.dcm"]  # no temporary left behind
    dcm = hd.seg.segread(out)
    present = [(1, "spleen"), (2, "kidney_right"), (5, "liver"), (52, "aorta")]
    assert [s.SegmentNumber for s in dcm.SegmentSequence] == [1, 2, 3, 4]
    assert [s.SegmentLabel for s in dcm.SegmentSequence] == [name for _, name in present]

    headers = read_headers(series.files)
    pixels = dcm.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    expected = expected_on_slices(series, loaded.image, seg)
    to_segment = np.zeros(256, np.uint8)
    for number, (label, _) in enumerate(present, start=1):
        to_segment[label] = number
    for k in range(len(headers)):
        assert np.array_equal(pixels[k], to_segment[expected[k]]), f"slice {k} differs"


def test_dicom_seg_attributes(tmp_path):
    import highdicom as hd

    series = write_series(tmp_path / "in", "axial")
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape, labels=(3, 60))
        out = write_dicom_seg(seg, CLASS_MAP, loaded, tmp_path / "seg.dcm")
    dcm = hd.seg.segread(out)
    src = pydicom.dcmread(series.files[0])
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                    "StudyID", "AccessionNumber", "FrameOfReferenceUID"):
        assert dcm.get(keyword) == src.get(keyword), keyword
    assert dcm.SeriesInstanceUID != src.SeriesInstanceUID
    assert dcm.SeriesNumber == 100 and dcm.InstanceNumber == 1
    assert dcm.Manufacturer == "TotalSegmentator" and dcm.ManufacturerModelName == "TotalSegmentator"
    assert dcm.SoftwareVersions == totalsegmentator.__version__ and dcm.DeviceSerialNumber == "1"
    assert dcm.SegmentationType == "BINARY"
    assert dcm.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian

    kidney, unknown = dcm.SegmentSequence
    assert kidney.SegmentLabel == "kidney_left" and unknown.SegmentLabel == "not_a_known_structure"
    assert kidney.SegmentAlgorithmType == "AUTOMATIC"
    algo = kidney.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "TotalSegmentator" and algo.AlgorithmVersion == totalsegmentator.__version__
    assert (algo.AlgorithmFamilyCodeSequence[0].CodeValue, algo.AlgorithmFamilyCodeSequence[0].CodingSchemeDesignator,
            algo.AlgorithmFamilyCodeSequence[0].CodeMeaning) == ("123110", "DCM", "Artificial Intelligence")
    category = kidney.SegmentedPropertyCategoryCodeSequence[0]
    kind = kidney.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, kind.CodeValue, kind.CodeMeaning) == ("91723000", "64033007", "Kidney")
    assert kind.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    # Unknown structures fall back to "Tissue" for both category and type.
    assert unknown.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    assert unknown.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"
    # The recommended display colour is the table's colour in CIELab.
    lab = hd.color.CIELabColor.from_rgb(*structure_codes("kidney_left").rgb)
    assert list(kidney.RecommendedDisplayCIELabValue) == list(lab.value)


def test_dicom_seg_fills_only_absent_patient_attributes(tmp_path):
    import highdicom as hd

    series = write_series(tmp_path / "in", n_slices=4)
    for f in series.files:
        ds = pydicom.dcmread(f)
        del ds.PatientID
        del ds.AccessionNumber
        ds.save_as(f)
    with load_dicom(tmp_path / "in") as loaded:
        seg = np.zeros(loaded.image.shape, np.uint8)
        seg[5:9, 5:9, 1:3] = 5
        dcm = hd.seg.segread(write_dicom_seg(seg, CLASS_MAP, loaded, tmp_path / "seg.dcm"))
    assert dcm.PatientID == "UNKNOWN"
    assert dcm.AccessionNumber in ("", None)
    assert str(dcm.PatientName) == "Synthetic^Patient"
    assert dcm.StudyInstanceUID == series.study_uid


def test_dicom_seg_refuses_image_not_on_the_slice_grid(tmp_path):
    import nibabel as nib

    write_series(tmp_path / "in", n_slices=4)
    with load_dicom(tmp_path / "in") as loaded:
        shifted = loaded.image.affine.copy()
        shifted[:3, 3] += loaded.image.affine[:3, 0] * 0.5  # half a voxel off
        loaded.image = nib.Nifti1Image(np.asanyarray(loaded.image.dataobj), shifted)
        seg = np.zeros(loaded.image.shape, np.uint8)
        seg[2:5, 2:5, 1:3] = 1
        with pytest.raises(DicomError, match="grid"):
            write_dicom_seg(seg, CLASS_MAP, loaded, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_dicom_writers_refuse_empty_or_mismatched_segmentations(tmp_path):
    write_series(tmp_path / "in", n_slices=4)
    with load_dicom(tmp_path / "in") as loaded:
        empty = np.zeros(loaded.image.shape, np.uint8)
        empty[0, 0, 0] = 9  # a label that is not a class of the task counts as empty
        for writer in (write_dicom_seg, write_rtstruct):
            with pytest.raises(DicomError, match="empty"):
                writer(empty, CLASS_MAP, loaded, tmp_path / "x.dcm")
            with pytest.raises(DicomError, match="does not match"):
                writer(np.ones((3, 3, 3), np.uint8), CLASS_MAP, loaded, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


# ----------------------------------------------------------------------------- RTSTRUCT
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_rtstruct_round_trip_with_rt_utils(tmp_path, orientation):
    from rt_utils import RTStructBuilder

    # rt-utils' reader needs square images with square pixels.
    series = write_series(tmp_path / "in", orientation, rows=24, cols=24, pixel_spacing=(0.75, 0.75))
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape)
        out = write_rtstruct(seg, CLASS_MAP, loaded, tmp_path / "rt.dcm")
    expected = expected_on_slices(series, loaded.image, seg)
    rt = RTStructBuilder.create_from(str(tmp_path / "in"), str(out))
    assert rt.get_roi_names() == ["spleen", "kidney_right", "liver", "aorta"]
    uids = [h.SOPInstanceUID for h in read_headers(series.files)]
    order = [uids.index(ds.SOPInstanceUID) for ds in rt.series_data]
    for label, name in [(1, "spleen"), (2, "kidney_right"), (5, "liver"), (52, "aorta")]:
        got = rt.get_roi_mask_by_name(name)  # (rows, cols, slices in rt-utils' order)
        want = np.stack([expected[k] == label for k in order], axis=-1)
        # Contours run through the centres of the boundary pixels and are filled again by
        # rasterising the polygon, so pixels on thin or diagonal borders may flip. Near-identity:
        assert dice(got, want) > 0.97, name
        assert np.allclose(np.argwhere(got).mean(0), np.argwhere(want).mean(0), atol=1.0), name


@pytest.mark.parametrize("orientation", ["axial_flipped", "coronal"])
def test_rtstruct_geometry_with_non_square_pixels(tmp_path, orientation):
    series = write_series(tmp_path / "in", orientation, rows=20, cols=24, pixel_spacing=(0.8, 0.7))
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape)
        out = write_rtstruct(seg, CLASS_MAP, loaded, tmp_path / "rt.dcm")
    expected = np.stack(expected_on_slices(series, loaded.image, seg))
    masks = read_rtstruct_masks(out, series)
    assert list(masks) == ["spleen", "kidney_right", "liver", "aorta"]
    for label, name in [(1, "spleen"), (2, "kidney_right"), (5, "liver"), (52, "aorta")]:
        want = expected == label
        assert dice(masks[name], want) > 0.97, name  # see the rt-utils test for why not identical
        assert np.allclose(np.argwhere(masks[name]).mean(0), np.argwhere(want).mean(0), atol=1.0), name
    ds = pydicom.dcmread(out)
    colours = {roi.ReferencedROINumber: [int(v) for v in roi.ROIDisplayColor] for roi in ds.ROIContourSequence}
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    assert colours[next(n for n, v in names.items() if v == "liver")] == list(structure_codes("liver").rgb)
    assert ds.PatientID == series.patient_id and ds.StudyInstanceUID == series.study_uid


# ----------------------------------------------------------------------------- output naming
def test_dicom_output_paths(tmp_path):
    uid = "1.2.3.4.5"
    existing = tmp_path / "outdir"
    existing.mkdir()
    assert dicom_output_paths(tmp_path / "rt.dcm", "dicom_rtstruct", "total", uid) == {
        "dicom_rtstruct": tmp_path / "rt.dcm"}
    assert dicom_output_paths(tmp_path / "x", "dicom", "total", uid) == {"dicom_rtstruct": tmp_path / "x"}
    assert dicom_output_paths(existing, "dicom_seg", "total", uid) == {"dicom_seg": existing / f"{uid}.dcm"}
    assert dicom_output_paths(tmp_path / "seg.dcm", ["dicom_seg"], "total", uid) == {
        "dicom_seg": tmp_path / "seg.dcm"}
    assert dicom_output_paths(existing, ["nifti", "dicom_seg", "dicom_rtstruct"], "total_mr", uid) == {
        "nifti": existing / "total_mr_segmentation.nii.gz",
        "dicom_seg": existing / "total_mr_segmentation_seg.dcm",
        "dicom_rtstruct": existing / "total_mr_segmentation_rtstruct.dcm",
    }
    assert dicom_output_paths(tmp_path / "new" / "result.nii.gz", "nifti,dicom_seg", "total", uid) == {
        "nifti": tmp_path / "new" / "result.nii.gz",
        "dicom_seg": tmp_path / "new" / "result_seg.dcm",
    }
    with pytest.raises(OptionError, match="unknown output type"):
        dicom_output_paths(tmp_path, "png", "total", uid)


def test_write_dicom_outputs_resolves_targets(tmp_path):
    series = write_series(tmp_path / "in", n_slices=4)
    outdir = tmp_path / "out"
    outdir.mkdir()
    with load_dicom(tmp_path / "in") as loaded:
        seg = blob_labels(loaded.image.shape)
        written = write_dicom_outputs(seg, CLASS_MAP, loaded, {"dicom_seg": outdir, "nifti": tmp_path / "x.nii.gz",
                                                               "dicom_rtstruct": tmp_path / "rt.dcm"}, "total")
    assert written == {"dicom_seg": outdir / f"{series.series_uid}.dcm", "dicom_rtstruct": tmp_path / "rt.dcm"}
    assert pydicom.dcmread(written["dicom_seg"]).Modality == "SEG"
    assert pydicom.dcmread(written["dicom_rtstruct"]).Modality == "RTSTRUCT"
    assert not (tmp_path / "x.nii.gz").exists()
    with pytest.raises(OptionError, match="needs a DICOM input"):
        write_dicom_outputs(seg, CLASS_MAP, None, {"dicom_seg": tmp_path / "s.dcm"}, "total")


# ----------------------------------------------------------------------------- SNOMED table
def test_snomed_table_covers_main_tasks_and_matches_dicom_dictionary():
    import pydicom.sr._concepts_dict as concepts

    table = load_structure_table()
    for task in ("total", "total_mr"):
        missing = [n for n in get_task(task).class_map.values() if n not in table]
        assert not missing, (task, missing)
    meanings: dict[str, set[str]] = {}
    for entries in concepts.concepts["SCT"].values():
        for code, (meaning, _) in entries.items():
            meanings.setdefault(code, set()).add(meaning.lower())
    with open(SNOMED_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["Structure"] for r in rows}) == len(rows)
    for row in rows:
        name = row["Structure"]
        for seq in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence",
                    "SegmentedPropertyTypeModifierCodeSequence"):
            code = row[f"{seq}.CodeValue"]
            if code and code in meanings:  # codes DICOM's dictionary knows must mean the same
                assert row[f"{seq}.CodeMeaning"].lower() in meanings[code], (name, seq, code)
        assert row["SegmentedPropertyCategoryCodeSequence.CodeValue"] in {"91723000", "49755003", "85756007"}
        modifier = row["SegmentedPropertyTypeModifierCodeSequence.CodeMeaning"]
        if modifier:
            assert modifier.lower() in name.split("_"), name
        rgb = [int(v) for v in row["DicomRGBColor"].split(",")]
        assert len(rgb) == 3 and all(0 <= v <= 255 for v in rgb)
    assert table["spleen"].type.value == "78961009" and table["liver"].type.value == "10200004"
    assert table["kidney_right"].type.value == "64033007" and table["kidney_right"].type_modifier.meaning == "Right"
    assert table["vertebrae_T11"].type.value == "12989004"


def test_unknown_structure_falls_back_to_tissue_and_vivid_colour():
    codes = structure_codes("made_up_structure")
    assert codes.category.meaning == codes.type.meaning == "Tissue"
    assert codes.rgb == vivid_colour("made_up_structure") == structure_codes("made_up_structure").rgb
    for name in ("a", "b", "something_else", "teeth_lower"):
        h, s, v = colorsys.rgb_to_hsv(*(x / 255 for x in vivid_colour(name)))
        assert s >= 0.69 and v >= 0.69


# ----------------------------------------------------------------------------- real data
def test_real_ct_series(shared_data, tmp_path):
    import highdicom as hd

    folder = shared_data / "example_ct_dicom"
    headers = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    with load_dicom(folder) as loaded:
        img = loaded.image
        assert img.shape == (int(headers[0].Columns), int(headers[0].Rows), len(headers))
        assert loaded.modality == "CT" and dicom_modality(folder) == "CT"
        data = np.asanyarray(img.dataobj)
        inv = np.linalg.inv(img.affine)
        spacing = [float(v) for v in headers[0].PixelSpacing]
        iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        for ds in (headers[0], headers[-1]):
            pix = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            for r, c in [(0, 0), (0, 511), (511, 0), (300, 200)]:
                lps = (np.array([float(v) for v in ds.ImagePositionPatient]) + c * spacing[1] * iop[:3]
                       + r * spacing[0] * iop[3:])
                vox = inv @ np.array([-lps[0], -lps[1], lps[2], 1.0])
                ijk = np.rint(vox[:3]).astype(int)
                assert np.allclose(vox[:3], ijk, atol=1e-2)
                assert data[tuple(ijk)] == pix[r, c]

        seg = np.zeros(img.shape, np.uint8)
        seg[100:180, 200:260, 3:9] = 5
        seg[300:340, 250:300, 12:18] = 1
        out = write_dicom_seg(seg, {1: "spleen", 5: "liver"}, loaded, tmp_path / "real_seg.dcm")
        dcm = hd.seg.segread(out)
        # This anonymised example has empty SOPInstanceUIDs in the data set; the file meta keeps them.
        uids = [h.file_meta.MediaStorageSOPInstanceUID for h in headers]
        pixels = dcm.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
        for k, ds in enumerate(headers):
            r, c = np.mgrid[0:int(ds.Rows), 0:int(ds.Columns)]
            lps = (np.array([float(v) for v in ds.ImagePositionPatient])[None, None]
                   + c[..., None] * spacing[1] * iop[:3] + r[..., None] * spacing[0] * iop[3:])
            vox = np.rint((lps * [-1, -1, 1]) @ inv[:3, :3].T + inv[:3, 3]).astype(int)
            to_segment = np.zeros(6, np.uint8)
            to_segment[[1, 5]] = [1, 2]
            labels = seg[vox[..., 0], vox[..., 1], vox[..., 2]]
            assert np.array_equal(pixels[k], to_segment[labels]), k
        assert dcm.PatientID == headers[0].PatientID  # empty in the source: kept, not invented
        assert dcm.StudyDate == headers[0].StudyDate
        assert dcm.StudyInstanceUID  # empty in the source: filled
        assert dcm.FrameOfReferenceUID == headers[0].FrameOfReferenceUID

        rt_path = write_rtstruct(seg, {1: "spleen", 5: "liver"}, loaded, tmp_path / "real_rt.dcm")
    rt = pydicom.dcmread(rt_path)
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                  for roi in rt.ROIContourSequence for c in roi.ContourSequence}
    assert referenced and referenced <= set(uids)
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["spleen", "liver"]
