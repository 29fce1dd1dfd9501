"""Shared fixtures: an isolated TotalSegmentator home, real scans from ../shared (skipped when absent)."""
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
