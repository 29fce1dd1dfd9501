"""RTSTRUCT output (rt-utils): one contour ROI per non-empty class."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from pydicom.valuerep import DSfloat

from totalsegmentator.atomic_files import atomic_path
from totalsegmentator.errors import DicomError
from totalsegmentator.io.dicom_common import (
    as_label_array,
    non_empty_classes,
    place_series,
    repair_source_uids,
    slice_geometry,
    structure_codes,
)


def write_rtstruct(seg_xyz: np.ndarray, class_map: dict[int, str], series, out_path: str | Path) -> Path:
    """Write ``seg_xyz`` (labels on the grid of ``series.image``) as an RTSTRUCT to ``out_path``.

    ``series`` is the ``DicomSeries`` from ``load_dicom`` (its private folder of slice files is
    what rt-utils reads). One ROI per non-empty class, named after the class. Returns the path.
    """
    from rt_utils import RTStructBuilder  # slow import (OpenCV), only needed here

    seg_xyz = as_label_array(seg_xyz)
    image = series.image
    if seg_xyz.shape[:3] != tuple(image.shape[:3]) or seg_xyz.ndim != 3:
        raise DicomError(f"segmentation shape {seg_xyz.shape} does not match the DICOM series grid "
                         f"{tuple(image.shape[:3])}")
    classes = non_empty_classes(seg_xyz, class_map)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_deprecations():  # rt-utils prints progress
            rtstruct = RTStructBuilder.create_new(dicom_series_path=str(series.directory))
    except Exception as e:  # rt-utils raises bare Exceptions
        raise DicomError(f"cannot read the DICOM slices for the RTSTRUCT: {' '.join(str(e).split())}") from None
    slices = rtstruct.series_data  # rt-utils' own slice order: the mask's third axis follows it
    if _needs_uid_repair(slices):
        # rt-utils copies these UIDs into the references; rebuild its dataset from repaired slices.
        from rt_utils import ds_helper
        from rt_utils.rtstruct import RTStruct

        repair_source_uids(slices, in_place=True)
        with _quiet_deprecations():
            rtstruct = RTStruct(slices, ds_helper.create_rtstruct_dataset(slices))
    placements = dict(place_series(slices, image.affine, seg_xyz.shape))
    if len(placements) != len(slices):
        raise DicomError("the DICOM slices contain duplicates or slices off the image grid; "
                         "cannot write an RTSTRUCT for them")
    labels_on_slices = np.stack([placements[i].take(seg_xyz) for i in range(len(slices))], axis=-1)

    for label, name in classes:
        codes = structure_codes(name)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                rtstruct.add_roi(mask=labels_on_slices == label, color=list(codes.rgb), name=name)
        except Exception as e:
            raise DicomError(f"cannot add ROI '{name}' to the RTSTRUCT: {' '.join(str(e).split())}") from None
    _exact_contour_positions(rtstruct)

    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".tmp.dcm") as tmp, _quiet_deprecations():
        rtstruct.ds.save_as(tmp, enforce_file_format=True)
    return out_path


@contextlib.contextmanager
def _quiet_deprecations():
    """rt-utils sets encoding attributes that pydicom 3 deprecates (the file meta is complete)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _needs_uid_repair(slices) -> bool:
    keywords = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    return any(not ds.get(k) for ds in slices for k in keywords)


def _exact_contour_positions(rtstruct) -> None:
    """Recompute contour points in patient space from each slice's own geometry.

    rt-utils places contour points with the first slice's position plus a mean slice step, in
    float32, and swaps the two PixelSpacing values (only harmless for square pixels). The contour
    points are integer pixel coordinates before that transform, so they are recovered exactly by
    inverting it and then placed with the referenced slice's ImagePositionPatient,
    ImageOrientationPatient and PixelSpacing.
    """
    from rt_utils import image_helper

    slices = rtstruct.series_data
    by_uid = {str(ds.SOPInstanceUID): ds for ds in slices}
    to_pixel = image_helper.get_patient_to_pixel_transformation_matrix(slices).astype(float)
    for roi_contour in rtstruct.ds.ROIContourSequence:
        for contour in getattr(roi_contour, "ContourSequence", []):
            ds = by_uid[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            ipp, row_cos, col_cos, row_spacing, col_spacing = slice_geometry(ds)
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            pixel = np.rint(points @ to_pixel[:3, :3].T + to_pixel[:3, 3])
            x, y = pixel[:, :1], pixel[:, 1:2]  # x: column index, y: row index
            exact = ipp + x * col_spacing * row_cos + y * row_spacing * col_cos
            contour.ContourData = [DSfloat(float(f"{v:.4f}"), auto_format=True) for v in exact.ravel()]
