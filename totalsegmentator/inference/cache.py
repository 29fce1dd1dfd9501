"""Models are loaded once per process and reused, per result folder, folds and device."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from .device import as_torch_device
from .locate import result_folder
from .model import DEFAULT_CHECKPOINT, LoadedModel, load_model

_models: dict[tuple, LoadedModel] = {}
_lock = threading.Lock()


def get_model(dataset_id: int | str, trainer: str, plans: str, configuration: str,
              folds: tuple[int | str, ...] | None, device: torch.device | str,
              weights_dir: Path | str | None = None, checkpoint_name: str = DEFAULT_CHECKPOINT) -> LoadedModel:
    """The loaded model of a dataset, from the process-wide cache when it was loaded before."""
    device = as_torch_device(device)
    folder = result_folder(dataset_id, trainer, plans, configuration, weights_dir).resolve()
    key = (str(folder), tuple(folds) if folds is not None else None, str(device), checkpoint_name)
    with _lock:
        model = _models.get(key)
        if model is None:
            model = load_model(folder, key[1], device, checkpoint_name)
            _models[key] = model
        return model


def cached_models() -> list[LoadedModel]:
    with _lock:
        return list(_models.values())


def clear_cache() -> None:
    """Forget all loaded models (and give their GPU memory back)."""
    with _lock:
        devices = {m.device for m in _models.values()}
        _models.clear()
    if any(d.type == "cuda" for d in devices) and torch.cuda.is_available():
        torch.cuda.empty_cache()
