"""Shared fixtures: an isolated TotalSegmentator home, real scans from ../shared (skipped when absent); the switch
between a C extension and its numpy twin."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def totalseg_home(tmp_path, monkeypatch) -> Path:
    """A fresh ``TOTALSEG_HOME_DIR`` (weights under ``<home>/nnunet/results``) for one test."""
    home = tmp_path / "totalseg_home"
    home.mkdir()
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    return home


@pytest.fixture
def weights_home(weights_dir, tmp_path, monkeypatch) -> Path:
    """A fresh home reading its weights from the module's ``weights_dir`` fixture; the model cache is emptied
    before and after the test."""
    from totalsegmentator.inference.cache import clear_cache

    home = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(weights_dir))
    clear_cache()
    yield home
    clear_cache()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` with the real example scans; tests using it skip when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


def compiled_or_numpy(request, monkeypatch, module, name: str, compiled) -> str:
    """For a fixture with params ["c", "numpy"]: set ``module.<name>`` to the built C extension ``compiled``
    (skip where it is not built) or to None (the module's numpy twin); returns the variant."""
    if request.param == "c" and compiled is None:
        pytest.skip(f"the C extension of {module.__name__} is not built")
    monkeypatch.setattr(module, name, compiled if request.param == "c" else None)
    return request.param
