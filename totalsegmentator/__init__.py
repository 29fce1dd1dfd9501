"""TotalSegmentator-compatible segmentation of anatomical structures in CT and MR images."""
import os as _os

__version__ = "2.18.0"

# Transparent huge pages for PyTorch's large CPU tensors: a 3D network allocates hundreds of MB per layer, and
# with 4 KB pages every fresh allocation costs page faults (measured: a 128^3 tile of nnU-Net's 3d_fullres network
# 11 % faster on 2 CPU cores). PyTorch reads the variable once, at its first allocation, so it is set here, before
# torch is imported; without effect when torch was imported first. THP_MEM_ALLOC_ENABLE=0 opts out.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
