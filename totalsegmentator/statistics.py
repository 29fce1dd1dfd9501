"""Official import path for the statistics helpers (implemented in ``totalsegmentator.analysis``)."""
from __future__ import annotations

from .analysis.radiomics import get_radiomics_features, get_radiomics_features_for_entire_dir
from .analysis.statistics import get_basic_statistics

__all__ = ["get_basic_statistics", "get_radiomics_features", "get_radiomics_features_for_entire_dir"]
