"""The start of a run in the background while the input is read: torch imports, the device, the first model
(and its tile's Gaussian weights).

Reading a CT takes about as long as importing torch and loading a model; doing both at once saves that time.
This module stays cheap to import (no torch at import time).
"""
from __future__ import annotations

import sys
import threading

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
