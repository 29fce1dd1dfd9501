"""Build of the optional C extensions; the rest of the metadata is in pyproject.toml.

The mask writer's loops (io/_maskcodec.c), the order-1 zoom (preprocessing/_linear_zoom.c) and the fused
forward's instance norm (inference/_instance_norm.c). Without a C compiler they are skipped and the same work runs
in numpy or torch (the same results, up to the float32 rounding of the norm's statistics; slower)."""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
# no fused multiply-add: the zoom must round like scipy's separate products and sums, the norm like torch's
# (MSVC does not contract)
exact = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
setup(ext_modules=[
    Extension("totalsegmentator.io._maskcodec", ["totalsegmentator/io/_maskcodec.c"],
              extra_compile_args=flags, optional=True),
    Extension("totalsegmentator.preprocessing._linear_zoom", ["totalsegmentator/preprocessing/_linear_zoom.c"],
              extra_compile_args=exact, optional=True),
    Extension("totalsegmentator.inference._instance_norm", ["totalsegmentator/inference/_instance_norm.c"],
              extra_compile_args=exact, optional=True),
])
