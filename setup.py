"""Build of the optional C loops of the mask writer; the rest of the metadata is in pyproject.toml.

Without a C compiler the extension is skipped and the writer uses its numpy code (the same files, slower)."""
import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3"]
setup(ext_modules=[Extension("totalsegmentator.io._maskcodec", ["totalsegmentator/io/_maskcodec.c"],
                             extra_compile_args=flags, optional=True)])
