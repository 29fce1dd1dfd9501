"""Shape and first-order radiomics features per mask (``statistics_radiomics.json``, formats.md §12).

pyradiomics is optional (``pip install --no-build-isolation pyradiomics==3.0.1``: its 3.1.0 sdist does not build
and it has no wheels for current Pythons); it is imported
only when features are requested and its absence is reported before anything is written.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..atomic_files import write_json_atomic
from ..errors import InputImageError, OptionalDependencyError

RADIOMICS_SETTINGS: dict[str, Any] = {"resampledPixelSpacing": [3, 3, 3], "geometryTolerance": 1e-3}
ENABLED_FEATURE_CLASSES = ("shape", "firstorder")

_ZERO_FEATURES = {
    "shape": "Elongation Flatness LeastAxisLength MajorAxisLength Maximum2DDiameterColumn Maximum2DDiameterRow "
             "Maximum2DDiameterSlice Maximum3DDiameter MeshVolume MinorAxisLength Sphericity SurfaceArea "
             "SurfaceVolumeRatio VoxelVolume",
    "firstorder": "10Percentile 90Percentile Energy Entropy InterquartileRange Kurtosis Maximum "
                  "MeanAbsoluteDeviation Mean Median Minimum Range RobustMeanAbsoluteDeviation RootMeanSquared "
                  "Skewness TotalEnergy Uniformity Variance",
    "glcm": "Autocorrelation ClusterProminence ClusterShade ClusterTendency Contrast Correlation "
            "DifferenceAverage DifferenceEntropy DifferenceVariance Id Idm Idmn Idn Imc1 Imc2 InverseVariance "
            "JointAverage JointEnergy JointEntropy MCC MaximumProbability SumAverage SumEntropy SumSquares",
    "gldm": "DependenceEntropy DependenceNonUniformity DependenceNonUniformityNormalized DependenceVariance "
            "GrayLevelNonUniformity GrayLevelVariance HighGrayLevelEmphasis LargeDependenceEmphasis "
            "LargeDependenceHighGrayLevelEmphasis LargeDependenceLowGrayLevelEmphasis LowGrayLevelEmphasis "
            "SmallDependenceEmphasis SmallDependenceHighGrayLevelEmphasis SmallDependenceLowGrayLevelEmphasis",
    "glrlm": "GrayLevelNonUniformity GrayLevelNonUniformityNormalized GrayLevelVariance HighGrayLevelRunEmphasis "
             "LongRunEmphasis LongRunHighGrayLevelEmphasis LongRunLowGrayLevelEmphasis LowGrayLevelRunEmphasis "
             "RunEntropy RunLengthNonUniformity RunLengthNonUniformityNormalized RunPercentage RunVariance "
             "ShortRunEmphasis ShortRunHighGrayLevelEmphasis ShortRunLowGrayLevelEmphasis",
    "glszm": "GrayLevelNonUniformity GrayLevelNonUniformityNormalized GrayLevelVariance HighGrayLevelZoneEmphasis "
             "LargeAreaEmphasis LargeAreaHighGrayLevelEmphasis LargeAreaLowGrayLevelEmphasis "
             "LowGrayLevelZoneEmphasis SizeZoneNonUniformity SizeZoneNonUniformityNormalized SmallAreaEmphasis "
             "SmallAreaHighGrayLevelEmphasis SmallAreaLowGrayLevelEmphasis ZoneEntropy ZonePercentage ZoneVariance",
    "ngtdm": "Busyness Coarseness Complexity Contrast Strength",
}
ZERO_FEATURE_NAMES: tuple[str, ...] = tuple(f"{g}_{n}" for g, names in _ZERO_FEATURES.items() for n in names.split())


def require_pyradiomics() -> None:
    """Raise OptionalDependencyError when pyradiomics is missing (call before a long segmentation run)."""
    _import_featureextractor()


def _import_featureextractor():
    try:
        from radiomics import featureextractor
    except ImportError:
        raise OptionalDependencyError(
            "radiomics features need pyradiomics: pip install --no-build-isolation pyradiomics==3.0.1"
        ) from None
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    return featureextractor


def zero_features() -> dict[str, float]:
    """The entry written for empty masks or failed extractions (107 keys, all 0.0).

    Floats, like every other value: the official tool sends this entry through the same ``round(float(v), 4)``
    as a successful one, so the file holds ``0.0`` (not ``0``).
    """
    return {name: 0.0 for name in ZERO_FEATURE_NAMES}


def _mask_is_constant(mask_file: Path) -> bool:
    data = np.asanyarray(nib.load(str(mask_file)).dataobj)
    return data.size == 0 or data.min() == data.max()


def get_radiomics_features(seg_file: str | Path, img_file: str | Path = "ct.nii.gz",
                           settings: dict[str, Any] | None = None) -> tuple[str, dict[str, float]]:
    """(mask name, {feature: value}) for one mask file ``seg_file`` on the image ``img_file``.

    Same argument order as the official ``totalsegmentator.statistics.get_radiomics_features(seg_file,
    img_file="ct.nii.gz")``. A mask with a single distinct value (empty), one that cannot be read, or one that
    pyradiomics refuses (too small, geometry mismatch, ...) gets the all-zero entry.
    """
    featureextractor = _import_featureextractor()
    seg_file = Path(seg_file)
    name = seg_file.name.split(".")[0]
    try:
        if _mask_is_constant(seg_file):
            return name, zero_features()
        extractor = featureextractor.RadiomicsFeatureExtractor(**dict(settings or RADIOMICS_SETTINGS))
        extractor.disableAllFeatures()
        for cls in ENABLED_FEATURE_CLASSES:
            extractor.enableFeatureClassByName(cls)
        raw = extractor.execute(str(img_file), str(seg_file))
    except Exception:  # pyradiomics raises plain ValueError/RuntimeError for degenerate masks
        return name, zero_features()
    # values are numpy scalars or 0-d arrays; JSON needs plain floats
    features = {k[len("original_"):]: round(float(v), 4) for k, v in raw.items() if k.startswith("original_")}
    return name, features


def get_radiomics_features_for_entire_dir(ct_file: str | Path | nib.Nifti1Image, mask_dir: str | Path,
                                          file_out: str | Path | None) -> dict[str, dict[str, float]]:
    """Features for every ``*.nii.gz`` mask in ``mask_dir`` (sorted); written to ``file_out`` as JSON."""
    require_pyradiomics()  # fail before any work or any file is written
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise InputImageError(f"mask folder not found: {mask_dir}")
    masks = sorted(mask_dir.glob("*.nii.gz"))
    with tempfile.TemporaryDirectory(prefix="totalseg_radiomics_") as tmp:
        if isinstance(ct_file, nib.Nifti1Image):
            ct_path = Path(tmp) / "ct.nii.gz"
            nib.save(ct_file, str(ct_path))
        else:
            ct_path = Path(ct_file)
            if not ct_path.exists():
                raise InputImageError(f"image not found: {ct_path}")
        results = dict(get_radiomics_features(m, ct_path) for m in masks)
    if file_out is not None:
        write_json_atomic(results, file_out)
    return results
