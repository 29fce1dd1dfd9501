"""``torch.compile`` of a model's network for long predictions, with a fallback to eager execution.

Inductor with frozen weights fuses each instance norm with its leaky ReLU and keeps the convolution weights
in oneDNN's own layout; the float32 arithmetic stays float32 (labels agree with eager execution on more than
99.999 % of the voxels; the logits differ by rounding only). Measured on 2 CPU cores with nnU-Net's standard
3d_fullres network (128^3 tiles): 5.8 s instead of 6.3 s per tile (8 % less), for a compile of ~25 s the
first time and ~5 s once inductor's cache (in its cache directory) holds the graph. So ``auto`` compiles only
on the CPU, only real-size networks, and only when a model runs on so many tiles that even a first compile pays
(large scans at 1.5 mm) and when our fused float32 forward (``fused_unet.py``, faster still and without a
compile) does not apply; ``on`` compiles whenever possible. Anything that goes wrong while compiling (no C++
compiler, an unsupported operation) leaves the model eager.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from ..options import COMPILE_MODES
from .model import LoadedModel

logger = logging.getLogger(__name__)

# auto: tiles of one model (times folds) that pay for a compile, and the smallest tile worth it
AUTO_MIN_FORWARDS = 48
AUTO_MIN_PATCH_VOXELS = 96 ** 3


def wants_compile(setting: str, model: LoadedModel, n_forwards: int) -> bool:
    """Whether to run ``model`` compiled for ``n_forwards`` tile forwards under ``setting`` (auto/on/off)."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"unknown compile setting {setting!r}; choose one of {', '.join(COMPILE_MODES)}")
    if setting == "off" or model.fold_weights:  # several folds swap weights; frozen graphs would not see it
        return False
    if setting == "on":
        return True
    return (model.device.type == "cpu" and n_forwards >= AUTO_MIN_FORWARDS
            and math.prod(model.patch_size) >= AUTO_MIN_PATCH_VOXELS)


def network_runner(model: LoadedModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network of a single-fold ``model`` compiled (once per model), falling back to eager on failure."""
    network, state = model.network, model.compiled
    if "module" not in state:
        state["module"] = torch.compile(network, dynamic=False, options={"freezing": True})

    def run(tiles: torch.Tensor) -> torch.Tensor:
        if state.get("failed"):
            return network(tiles)
        try:
            return state["module"](tiles)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the eager network gives the same labels
            if "out of memory" in str(e).lower() or isinstance(e, torch.cuda.OutOfMemoryError):
                raise
            state["failed"] = True
            logger.warning("torch.compile failed for %s (%s: %s); running it uncompiled", model.result_folder.name,
                           type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
            return network(tiles)

    return run
