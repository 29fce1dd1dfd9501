"""Input/output: NIfTI loading and validation, atomic writers, the label-name header extension.

DICOM input/output lives in its own modules of this package and is imported only when needed.
"""
from .label_header import add_label_map_to_nifti, load_multilabel_nifti, save_multilabel_nifti
from .nifti import load_input_image, save_nifti_atomic
from .writers import write_multilabel, write_per_class

__all__ = [
    "add_label_map_to_nifti",
    "load_input_image",
    "load_multilabel_nifti",
    "save_multilabel_nifti",
    "save_nifti_atomic",
    "write_multilabel",
    "write_per_class",
]
