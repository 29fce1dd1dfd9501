"""The optional C extensions (setup.py): skipped by installs without a compiler, built wherever there is one."""
from __future__ import annotations

import importlib
import shutil

import pytest

EXTENSIONS = ["totalsegmentator.io._maskcodec", "totalsegmentator.preprocessing._linear_zoom",
              "totalsegmentator.inference._instance_norm"]


@pytest.mark.parametrize("name", EXTENSIONS)
def test_the_extensions_are_built_where_a_compiler_is(name):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here")
    try:
        importlib.import_module(name)
    except ImportError:
        pytest.fail(f"pip install should have built {name}")
