"""TotalSegmentator-compatible segmentation of anatomical structures in CT and MR images."""
__version__ = "2.18.0"
