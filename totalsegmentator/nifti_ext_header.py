"""Official import path for the label-name header helpers (``from totalsegmentator.nifti_ext_header import
load_multilabel_nifti``); the implementation lives in :mod:`totalsegmentator.io.label_header`."""
from .io.label_header import add_label_map_to_nifti, load_multilabel_nifti, save_multilabel_nifti

__all__ = ["add_label_map_to_nifti", "load_multilabel_nifti", "save_multilabel_nifti"]
