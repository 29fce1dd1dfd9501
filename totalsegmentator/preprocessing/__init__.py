"""Geometry steps around the model: canonical orientation, crop/uncrop, resampling, splitting."""
from .cropping import bbox_from_mask, crop_to_bbox, uncrop
from .orientation import Reorientation, to_canonical
from .resampling import resample_image, resample_labels_to_shape
from .splitting import merge_chunks, needs_split, plan_chunks, split_array

__all__ = [
    "Reorientation",
    "bbox_from_mask",
    "crop_to_bbox",
    "merge_chunks",
    "needs_split",
    "plan_chunks",
    "resample_image",
    "resample_labels_to_shape",
    "split_array",
    "to_canonical",
    "uncrop",
]
