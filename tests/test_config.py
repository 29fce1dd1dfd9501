"""Home directory rules, config.json and the offline license checks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from totalsegmentator import config
from totalsegmentator.errors import ConfigError, LicenseError

ACADEMIC_URL = "https://backend.totalsegmentator.com/license-academic/"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("TOTALSEG_HOME_DIR", raising=False)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)


def test_home_dir_from_env(tmp_path, monkeypatch, clean_env):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "h"))
    assert config.home_dir() == tmp_path / "h"
    assert config.weights_dir() == tmp_path / "h" / "nnunet" / "results"
    assert config.config_path() == tmp_path / "h" / "config.json"


def test_home_dir_default_under_user_home(tmp_path, monkeypatch, clean_env):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.home_dir() == tmp_path / ".totalsegmentator"
    assert config.weights_dir() == tmp_path / ".totalsegmentator" / "nnunet" / "results"


def test_home_dir_when_user_home_is_root(monkeypatch, clean_env):
    monkeypatch.setenv("HOME", "/")
    assert config.home_dir() == Path("/tmp/.totalsegmentator")


def test_weights_path_env_used_as_is(tmp_path, monkeypatch, clean_env):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "h"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    assert config.weights_dir() == tmp_path / "w"  # no nnunet/results appended
    assert config.config_path() == tmp_path / "h" / "config.json"


def test_setup_config_creates_official_keys(totalseg_home):
    assert config.load_config() is None
    created = config.setup_config()
    text = (totalseg_home / "config.json").read_text()
    assert json.loads(text) == created
    assert '\n    "totalseg_id"' in text  # 4-space indentation as the official file
    assert re.fullmatch(r"totalseg_[A-Z0-9]{8}", created["totalseg_id"])
    assert created["send_usage_stats"] is True and created["prediction_counter"] == 0
    assert config.setup_config()["totalseg_id"] == created["totalseg_id"]  # kept on later calls


def test_setup_config_with_explicit_id(totalseg_home):
    config.setup_config()
    config.setup_config("totalseg_ABCD1234")
    assert config.load_config()["totalseg_id"] == "totalseg_ABCD1234"


def test_update_config_and_counter(totalseg_home):
    config.update_config(statistics_disclaimer_shown=True)
    config.increase_prediction_counter()
    config.increase_prediction_counter()
    data = json.loads((totalseg_home / "config.json").read_text())
    assert data["statistics_disclaimer_shown"] is True and data["prediction_counter"] == 2
    assert not [p.name for p in totalseg_home.iterdir() if p.name != "config.json"]  # no temp files left


@pytest.mark.parametrize("content", ['{"license_number": "aca_', "[1, 2]", ""])
def test_unusable_config_is_set_aside_and_replaced(totalseg_home, content, capsys):
    (totalseg_home / "config.json").write_text(content)
    assert config.load_config() is None
    assert "totalseg_id" in config.setup_config()
    assert "totalseg_id" in json.loads((totalseg_home / "config.json").read_text())
    # what it held (perhaps a license number) is kept for the user, and they are told where
    assert (totalseg_home / "config.json.unreadable").read_text() == content
    assert capsys.readouterr().err.strip() == (f"TotalSegmentator: warning: {totalseg_home / 'config.json'} was not "
                                               "a valid JSON object; kept as config.json.unreadable and replaced by a "
                                               "new one")


def test_home_that_is_a_file_is_one_clear_error(tmp_path, monkeypatch, clean_env):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    with pytest.raises(ConfigError, match=f"the TotalSegmentator home '{home}' is a file, not a folder"):
        config.setup_config()
    config.increase_prediction_counter()  # after a finished run a counter that cannot be kept is no error
    assert home.read_text() == "not a folder"


def test_license_format():
    config.check_license_format("aca_ABCDEFGHIJ1234")
    for bad in ["aca_short", "xyz_ABCDEFGHIJ1234", "aca_ABCDEFGHIJ12345"]:
        with pytest.raises(LicenseError, match="aca_") as info:
            config.check_license_format(bad)
        assert ACADEMIC_URL in str(info.value) and "\n" not in str(info.value)


def test_set_license_number_stores_it(totalseg_home):
    config.set_license_number("aca_ABCDEFGHIJ1234")
    assert config.get_license_number() == "aca_ABCDEFGHIJ1234"
    with pytest.raises(LicenseError):
        config.set_license_number("aca_bad")
    assert config.get_license_number() == "aca_ABCDEFGHIJ1234"


def test_require_license(totalseg_home):
    with pytest.raises(LicenseError, match="no config file"):
        config.require_license("face")
    config.setup_config()
    with pytest.raises(LicenseError, match="needs a license number") as info:
        config.require_license("face")
    assert ACADEMIC_URL in str(info.value) and "totalseg_set_license" in str(info.value)
    config.update_config(license_number="too_short")
    with pytest.raises(LicenseError, match="invalid"):
        config.require_license("face")
    config.update_config(license_number="aca_ABCDEFGHIJ1234")
    assert config.require_license("face") == "aca_ABCDEFGHIJ1234"
