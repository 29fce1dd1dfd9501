"""Official import path for assorted helpers (implemented in the rooms of the package)."""
from __future__ import annotations

from .analysis.combine_masks import combine_masks

__all__ = ["combine_masks"]
