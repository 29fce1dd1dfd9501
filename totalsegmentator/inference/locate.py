"""Where a model's files lie in the weights folder, without importing torch (the start of a run looks there
before torch's import is done)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from .. import config
from ..errors import OptionError, WeightsError
from ..registry import download_task_to_ids, get_dataset

logger = logging.getLogger(__name__)

_DATASET_ID_RE = re.compile(r"^(?:Dataset|Task)(\d+)_")


def download_hint(dataset_id: int | str | None) -> str:
    """The ``totalseg_download_weights -t TASK`` command that installs a dataset id."""
    task = None
    if dataset_id is not None:
        for name, ids in download_task_to_ids().items():
            if any(str(i) == str(dataset_id) for i in ids):
                task = name
                break
    return f"totalseg_download_weights -t {task or 'TASK'}"


def _dataset_id_of(folder: Path) -> str | None:
    for part in (folder.name, folder.parent.name):
        match = _DATASET_ID_RE.match(part)
        if match:
            return str(int(match.group(1)))
    return None


def _missing(what: str, path: Path, dataset_id: str | None) -> WeightsError:
    return WeightsError(f"{what} not found: {path}; install the weights with '{download_hint(dataset_id)}'")


def find_dataset_folder(dataset_id: int | str, weights_dir: Path | str | None = None) -> Path:
    """The folder of a dataset in the weights dir: the registry's folder name first, else nnU-Net's
    ``Dataset%03d_*`` lookup. Raises WeightsError when it is not installed."""
    weights_dir = Path(weights_dir) if weights_dir is not None else config.weights_dir()
    try:
        candidate = weights_dir / get_dataset(dataset_id).folder
        if candidate.is_dir():
            return candidate
    except OptionError:
        candidate = None
    if str(dataset_id).isdigit() and weights_dir.is_dir():
        matches = sorted(p for p in weights_dir.glob(f"Dataset{int(dataset_id):03d}_*") if p.is_dir())
        if matches:
            if len(matches) > 1:
                logger.debug("several folders for dataset %s, using %s", dataset_id, matches[0])
            return matches[0]
    if candidate is None:
        pattern = f"Dataset{int(dataset_id):03d}_*" if str(dataset_id).isdigit() else str(dataset_id)
        candidate = weights_dir / pattern
    raise _missing(f"weights of dataset {dataset_id}", candidate, str(dataset_id))


def result_folder(dataset_id: int | str, trainer: str, plans: str, configuration: str,
                  weights_dir: Path | str | None = None) -> Path:
    """``<weights dir>/<dataset folder>/<trainer>__<plans>__<configuration>`` (WeightsError if not installed)."""
    return find_dataset_folder(dataset_id, weights_dir) / f"{trainer}__{plans}__{configuration}"
