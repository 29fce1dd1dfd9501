"""Synthetic DICOM series for the DICOM tests: small CT slices written with pydicom.

Each pixel stores a value unique to (row, column, slice), so a test can find where any DICOM
pixel ended up in the converted NIfTI and check geometry and intensities together.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# (row cosine, column cosine) of ImageOrientationPatient, patient LPS axes.
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    # Rows run anterior (negative column cosine): images stored upside down.
    "axial_flipped": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    # Double oblique: rotated 12 degrees about z, then tilted about the row direction.
    "oblique": ((0.978148, 0.207912, 0.0), (-0.186425, 0.877045, 0.442755)),
}

RESCALE_SLOPE = 1.0
RESCALE_INTERCEPT = -1024.0


@dataclass
class SyntheticSeries:
    """What was written: enough to predict every voxel of the conversion."""

    folder: Path
    files: list[Path]
    series_uid: str
    study_uid: str
    patient_id: str
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) as in DICOM
    row_cosine: np.ndarray
    col_cosine: np.ndarray
    positions: list[np.ndarray]  # ImagePositionPatient per slice, in slice order
    stored: list[np.ndarray] = field(default_factory=list)  # stored pixel values per slice

    def pixel_lps(self, k: int, r: int, c: int) -> np.ndarray:
        """Patient (LPS) position in mm of pixel (row r, column c) of slice k."""
        return (self.positions[k] + c * self.pixel_spacing[1] * self.row_cosine
                + r * self.pixel_spacing[0] * self.col_cosine)

    def hu(self, k: int) -> np.ndarray:
        return self.stored[k] * RESCALE_SLOPE + RESCALE_INTERCEPT


def stored_values(rows: int, cols: int, k: int) -> np.ndarray:
    """Unique stored value for each (row, column, slice)."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (r * cols + c + k * rows * cols + 1).astype(np.int16)


def write_series(folder: Path, orientation: str = "axial", rows: int = 20, cols: int = 24,
                 n_slices: int = 12, pixel_spacing: tuple[float, float] = (0.8, 0.7),
                 slice_spacing: float = 2.5, origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
                 series_uid: str | None = None, study_uid: str | None = None,
                 patient_id: str = "TS-PAT-0001", modality: str = "CT",
                 description: str = "synthetic series", seed: int = 0) -> SyntheticSeries:
    """Write one series of single-frame CT slices (files named in shuffled order) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    row_cos, col_cos = (np.array(v) for v in ORIENTATIONS[orientation])
    normal = np.cross(row_cos, col_cos)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    order = list(range(n_slices))
    random.Random(seed).shuffle(order)
    info = SyntheticSeries(folder, [], series_uid, study_uid, patient_id, rows, cols, pixel_spacing,
                           row_cos, col_cos, [])
    for k in range(n_slices):
        position = np.array(origin) + k * slice_spacing * normal
        pixels = stored_values(rows, cols, k)
        info.positions.append(position)
        info.stored.append(pixels)
        ds = _slice_dataset(pixels, position, row_cos, col_cos, pixel_spacing, slice_spacing,
                            series_uid, study_uid, frame_uid, patient_id, modality, description, k)
        path = folder / f"IM{order[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        info.files.append(path)
    return info


def _slice_dataset(pixels, position, row_cos, col_cos, pixel_spacing, slice_spacing, series_uid,
                   study_uid, frame_uid, patient_id, modality, description, k) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.Manufacturer = "SyntheticScanner"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "42"
    ds.AccessionNumber = "ACC42"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    ds.SeriesDescription = description
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
    ds.PixelSpacing = [f"{v:.4f}" for v in pixel_spacing]
    ds.SliceThickness = f"{slice_spacing:.4f}"
    ds.KVP = "120"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = f"{RESCALE_SLOPE:g}"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.astype("<i2").tobytes()
    return ds


def write_non_dicom_files(folder: Path) -> None:
    """Files that a DICOM folder often contains besides slices."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text("exported by a PACS\n")
    (folder / "DICOMDIR.json").write_text("{}\n")
    (folder / "thumbs.db").write_bytes(b"\x00\x01binary junk" * 10)


def write_dicom_without_pixels(folder: Path, series_uid: str | None = None) -> Path:
    """A DICOM file with no pixel data (a structured-report-like object)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = "TS-PAT-0001"
    path = folder / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def read_headers(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
