"""Build of the optional C extensions; the rest of the metadata is in pyproject.toml.

The mask writer's loops (io/_maskcodec.c) and the order-1 zoom (preprocessing/_linear_zoom.c). Without a C
compiler they are skipped and the same work runs in numpy (the same results, slower)."""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
# no fused multiply-add: the zoom must round like scipy's separate products and sums (MSVC does not contract)
exact = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
setup(ext_modules=[
    Extension("totalsegmentator.io._maskcodec", ["totalsegmentator/io/_maskcodec.c"],
              extra_compile_args=flags, optional=True),
    Extension("totalsegmentator.preprocessing._linear_zoom", ["totalsegmentator/preprocessing/_linear_zoom.c"],
              extra_compile_args=exact, optional=True),
])
