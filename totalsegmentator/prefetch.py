"""The start of a run in the background while the input is read: torch imports, the device, the first model
(and its tile's Gaussian weights).

Reading a CT takes about as long as importing torch and loading a model; doing both at once saves that time.
Once the input is read, a core waits for that load: it faults in the memory of the first model's first tile
(``heap_reuse.fault_in_background``). This module stays cheap to import (no torch at import time).
"""
from __future__ import annotations

import json
import math
import sys
import threading
from pathlib import Path

from .heap_reuse import fault_in_background
from .options import CropPlan
from .registry import ROUGH_KIND_TO_MODE, Mode, Task, get_task, model_parts
from .shared_setting import SharedSetting


def first_model(task: Task, mode: Mode, crop_plan: CropPlan | None = None,
                roi_subset: list[str] | None = None) -> tuple | None:
    """``(dataset_id, trainer, plans, configuration, folds)`` of the first model ``segment`` runs, or None when
    that depends on another task's run (e.g. teeth's crop task)."""
    rough_kind = None
    if crop_plan is not None:
        if crop_plan.rough_model is None:
            return None
        rough_kind = crop_plan.rough_model
    elif mode.remove_outside is not None:
        rough_kind = "ct_robust"
    if rough_kind is not None:
        task_name, mode_name = ROUGH_KIND_TO_MODE[rough_kind]
        task, mode = get_task(task_name), get_task(task_name).modes[mode_name]
        roi_subset = None
    elif task.refine:
        task = get_task(task.refine["task"])
        mode, roi_subset = task.mode(), None
    parts = model_parts(task, mode, roi_subset)
    if not parts:
        return None
    return parts[0].dataset_id, mode.trainer, mode.plans, mode.configuration, mode.folds


def cuda_may_be_present() -> bool:
    """False where no CUDA GPU can be present (Linux without NVIDIA device files, macOS), without torch."""
    if sys.platform.startswith("linux"):  # /dev/dxg: the GPU of WSL 2
        return any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists()
    return sys.platform != "darwin"


def may_use_cuda(device) -> bool:
    """Whether the requested device (as the options name it: cpu, gpu, gpu:N, mps) can end up as a CUDA GPU,
    decided without torch."""
    return isinstance(device, str) and device.startswith("gpu") and cuda_may_be_present()


def _runs_on_cpu(device) -> bool:
    return device != "mps" and not may_use_cuda(device)


# a tile's activations at their peak, in tile voxels x first-stage features x bytes per value: nnU-Net's plain
# U-Net in our fused forward faulted in 1.55 GB for a 128^3 tile of 32 float32 features (5.8 of them)
TILE_WORKING_SET_FACTOR = 5.5


def _configuration(plans: dict, name: str) -> dict:
    """A configuration of plans.json with what it inherits (``inherits_from``) filled in."""
    chain, seen = [], set()
    while name is not None and name not in seen:
        seen.add(name)
        entry = plans["configurations"][name]
        chain.append(entry)
        name = entry.get("inherits_from")
    merged: dict = {}
    for entry in reversed(chain):
        merged.update(entry)
    return merged


def first_tile_bytes(model_key: tuple, precision: str = "auto") -> int | None:
    """The memory a tile of the model ``model_key`` (see ``first_model``) works in, from its plans.json; None when
    the plans cannot be read or do not say."""
    from .inference.locate import result_folder

    dataset_id, trainer, plans_name, configuration, _ = model_key
    try:
        folder = result_folder(dataset_id, trainer, plans_name, configuration)
        conf = _configuration(json.loads((folder / "plans.json").read_text()), configuration)
        features = conf.get("architecture", {}).get("arch_kwargs", {}).get("features_per_stage") \
            or [conf.get("UNet_base_num_features")]
        voxels = math.prod(int(s) for s in conf["patch_size"])
        value_bytes = 2 if precision in ("fp16", "bf16") else 4
        return int(TILE_WORKING_SET_FACTOR * voxels * int(features[0]) * value_bytes)
    except Exception:  # noqa: BLE001 - not installed or unusual plans: the model load reports real problems
        return None


# While the prefetch thread imports and loads (Python code, holding the GIL), the reading thread calls numpy
# again and again, and each call waits for the GIL until the interpreter switches threads (by default after
# 5 ms). A shorter interval lets those calls through while the prefetch runs; the default comes back after.
PREFETCH_SWITCH_INTERVAL_S = 0.0005


def _shorten_switch_interval() -> float:
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, PREFETCH_SWITCH_INTERVAL_S))
    return before


_SHORT_SWITCH_INTERVAL = SharedSetting(_shorten_switch_interval, sys.setswitchinterval)


class ModelPrefetch:
    """Background start of a run while the input is read: import torch, resolve the device, load a model.

    ``device()`` waits for the device (and raises what resolving it raised); errors of the model load are
    ignored here, the pipeline's own load reports them."""

    def __init__(self, model_key: tuple | None, device, quiet: bool = False) -> None:
        self._model_key, self._device_arg, self._quiet = model_key, device, quiet
        self._device = None
        self._error: BaseException | None = None
        self._device_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="totalseg-model-prefetch", daemon=True)
        _SHORT_SWITCH_INTERVAL.enter()
        try:
            self._thread.start()
        except BaseException:
            _SHORT_SWITCH_INTERVAL.leave()
            raise

    def _run(self) -> None:
        try:
            self._prefetch()
        finally:
            _SHORT_SWITCH_INTERVAL.leave()

    def _prefetch(self) -> None:
        try:
            from .inference.device import resolve_device

            self._device = resolve_device(self._device_arg, quiet=self._quiet)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by device()
            self._error = e
            return
        finally:
            self._device_ready.set()
        if self._model_key is None:
            return
        try:
            from .inference.cache import get_model
            from .inference.predictor import warm_up

            warm_up(get_model(*self._model_key, self._device))
        except Exception:  # noqa: BLE001 - reported again by the pipeline's own load
            pass

    def fault_in_first_tile(self, precision: str = "auto") -> threading.Thread | None:
        """Fault in the memory of the first model's first tile in the background, for CPU runs (see
        ``heap_reuse.fault_in_background``); call it when the input is read, so that it takes a core that would
        wait for the model load anyway. Returns the thread, or None."""
        if self._model_key is None or not _runs_on_cpu(self._device_arg):
            return None
        nbytes = first_tile_bytes(self._model_key, precision)
        return fault_in_background(nbytes) if nbytes else None

    def device(self):
        """The resolved torch device."""
        self._device_ready.wait()
        if self._error is not None:
            raise self._error
        return self._device

    def join(self) -> None:
        self._thread.join()


def prefetch_model(model_key: tuple | None, device, quiet: bool = False) -> ModelPrefetch:
    """Resolve ``device`` and load the model ``model_key`` (see ``first_model``) into the process-wide cache
    in a background thread."""
    return ModelPrefetch(model_key, device, quiet)
