"""Home directory, weights directory, config.json and the license number.

We follow the official layout so that an existing ``~/.totalsegmentator`` works unchanged. Unlike the official
tool we never send usage statistics: ``send_usage_stats`` is kept in config.json for compatibility only.
"""
from __future__ import annotations

import json
import os
import random
import string
import sys
from pathlib import Path
from typing import Any

from .atomic_files import write_json_atomic
from .errors import ConfigError, LicenseError, TotalSegmentatorError
from .registry import ACADEMIC_LICENSE_URL

LICENSE_PREFIX = "aca_"
LICENSE_LENGTH = 18


def home_dir() -> Path:
    """``$TOTALSEG_HOME_DIR``, else ``~/.totalsegmentator`` (``/tmp/.totalsegmentator`` when home is ``/``)."""
    env = os.environ.get("TOTALSEG_HOME_DIR")
    if env:
        return Path(env)
    try:
        home = Path.home()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry (some containers)
        home = Path("/")
    if str(home) == "/":
        return Path("/tmp/.totalsegmentator")
    return home / ".totalsegmentator"


def weights_dir() -> Path:
    """``$TOTALSEG_WEIGHTS_PATH`` as is, else ``<home>/nnunet/results``."""
    env = os.environ.get("TOTALSEG_WEIGHTS_PATH")
    if env:
        return Path(env)
    return home_dir() / "nnunet" / "results"


def config_path() -> Path:
    return home_dir() / "config.json"


def _new_id() -> str:
    return "totalseg_" + "".join(random.choices(string.ascii_uppercase + string.digits, k=8))


def load_config() -> dict[str, Any] | None:
    """config.json as a dict, or None when it does not exist (or is not valid JSON)."""
    try:
        data = json.loads(config_path().read_text())
    except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _write_config(config: dict[str, Any]) -> None:
    home = home_dir()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"the TotalSegmentator home '{home}' is a file, not a folder "
                          "(TOTALSEG_HOME_DIR must name a folder)")
    try:
        write_json_atomic(config, config_path())
    except OSError as e:
        raise ConfigError(f"cannot write {config_path()}: {e.strerror or e}") from None


def _set_aside_unreadable(path: Path) -> None:
    """Keep an existing but unreadable config.json (it may hold a license number) beside the new one."""
    if not path.is_file():
        return
    aside = path.with_name(path.name + ".unreadable")
    try:
        os.replace(path, aside)
    except OSError:  # another process set it aside first, or the folder is read-only (writing fails next)
        return
    print(f"TotalSegmentator: warning: {path} was not a valid JSON object; kept as {aside.name} and replaced "
          "by a new one", file=sys.stderr)


def setup_config(totalseg_id: str | None = None) -> dict[str, Any]:
    """Create config.json with the official keys if missing (an unreadable one is set aside); return its content."""
    config = load_config()
    if config is None:
        _set_aside_unreadable(config_path())
        config = {"totalseg_id": totalseg_id or _new_id(), "send_usage_stats": True, "prediction_counter": 0}
        _write_config(config)
    elif totalseg_id is not None and config.get("totalseg_id") != totalseg_id:
        config["totalseg_id"] = totalseg_id
        _write_config(config)
    return config


def update_config(**changes: Any) -> dict[str, Any]:
    config = setup_config()
    config.update(changes)
    _write_config(config)
    return config


def increase_prediction_counter() -> None:
    """Count successful predictions as the official tool does; a failure to write is not an error."""
    try:
        config = setup_config()
        update_config(prediction_counter=int(config.get("prediction_counter", 0)) + 1)
    except (OSError, TotalSegmentatorError):
        pass


def check_license_format(number: str) -> None:
    """The official offline check of ``totalseg_set_license``: prefix ``aca_`` and 18 characters."""
    if not number.startswith(LICENSE_PREFIX) or len(number) != LICENSE_LENGTH:
        raise LicenseError(
            f"license number '{number}' is not valid: it must start with '{LICENSE_PREFIX}' and have "
            f"{LICENSE_LENGTH} characters. Get one at {ACADEMIC_LICENSE_URL}")


def set_license_number(number: str) -> None:
    check_license_format(number)
    update_config(license_number=number)


def get_license_number() -> str | None:
    config = load_config()
    return None if config is None else config.get("license_number")


def require_license(task: str) -> str:
    """The stored license number for a licensed task, checked offline as the official tool does."""
    config = load_config()
    if config is None:
        raise LicenseError(
            f"task '{task}' needs a license, but no config file was found at {config_path()}. "
            f"Get a license at {ACADEMIC_LICENSE_URL} and store it with 'totalseg_set_license -l YOUR_KEY'")
    number = config.get("license_number")
    if not number:
        raise LicenseError(
            f"task '{task}' needs a license number. Academic users can get one for free at "
            f"{ACADEMIC_LICENSE_URL}; store it with 'totalseg_set_license -l YOUR_KEY'")
    if len(number) != LICENSE_LENGTH:
        raise LicenseError(
            f"the license number stored in {config_path()} is invalid. Get a valid one at "
            f"{ACADEMIC_LICENSE_URL} and store it with 'totalseg_set_license -l YOUR_KEY'")
    return number
