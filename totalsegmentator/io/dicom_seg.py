"""DICOM-SEG output (highdicom): one binary segment per non-empty class."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

import totalsegmentator
from totalsegmentator.atomic_files import atomic_path
from totalsegmentator.errors import DicomError
from totalsegmentator.io.dicom_common import (
    Coding,
    as_label_array,
    non_empty_classes,
    place_series,
    repair_source_uids,
    structure_codes,
)

# Patient/study attributes highdicom copies from the source; filled only when absent.
_DEFAULTS = {
    "PatientID": "UNKNOWN",
    "PatientName": "UNKNOWN",
    "PatientBirthDate": "",
    "PatientSex": "",
    "StudyDate": "",
    "StudyTime": "",
    "StudyID": "",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
}


def write_dicom_seg(seg_xyz: np.ndarray, class_map: dict[int, str], series, out_path: str | Path) -> Path:
    """Write ``seg_xyz`` (labels on the grid of ``series.image``) as a DICOM-SEG to ``out_path``.

    ``series`` is the ``DicomSeries`` from ``load_dicom`` (needs ``image`` and ``datasets``).
    Segments are the non-empty classes numbered 1..n in label order. Returns the written path.
    """
    import highdicom as hd  # slow import, only needed here

    seg_xyz = as_label_array(seg_xyz)
    image = series.image
    if seg_xyz.shape[:3] != tuple(image.shape[:3]) or seg_xyz.ndim != 3:
        raise DicomError(f"segmentation shape {seg_xyz.shape} does not match the DICOM series grid "
                         f"{tuple(image.shape[:3])}")
    classes = non_empty_classes(seg_xyz, class_map)
    placed = place_series(series.datasets, image.affine, seg_xyz.shape)
    placed.sort(key=lambda item: item[1].plane[1])

    lut = np.zeros(max(int(seg_xyz.max()), max(label for label, _ in classes)) + 1,
                   dtype=np.uint8 if len(classes) < 256 else np.uint16)
    for number, (label, _) in enumerate(classes, start=1):
        lut[label] = number
    frames = np.stack([lut[placement.take(seg_xyz)] for _, placement in placed])
    sources = _prepare_sources([series.datasets[i] for i, _ in placed])

    version = totalsegmentator.__version__
    algorithm = hd.AlgorithmIdentificationSequence(
        name="TotalSegmentator",
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"),
        version=version,
    )
    descriptions = []
    for number, (_, name) in enumerate(classes, start=1):
        codes = structure_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=_concept(hd, codes.category),
            segmented_property_type=_concept(hd, codes.type, codes.type_modifier),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*codes.rgb),
        ))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=100,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="TotalSegmentator",
            manufacturer_model_name="TotalSegmentator",
            software_versions=version,
            device_serial_number="1",
            series_description="TotalSegmentator segmentation",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        detail = " ".join(str(e).split())
        raise DicomError(f"cannot build the DICOM-SEG: {type(e).__name__}: {detail}") from None
    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".tmp.dcm") as tmp:
        seg.save_as(tmp)
    return out_path


def _concept(hd, coding: Coding, modifier: Coding | None = None):
    concept = hd.sr.CodedConcept(coding.value, coding.scheme, coding.meaning)
    if modifier is not None:
        # Laterality (left/right) qualifies the type, e.g. "Kidney" + "Left".
        concept.SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(modifier.value, modifier.scheme, modifier.meaning)]
    return concept


def _prepare_sources(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers with absent required attributes filled in (never overwritten)."""
    prepared = repair_source_uids(datasets)
    for ds in prepared:
        for keyword, value in _DEFAULTS.items():
            if keyword not in ds:
                setattr(ds, keyword, value)
    return prepared
