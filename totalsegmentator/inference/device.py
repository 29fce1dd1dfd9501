"""Turn the user's ``--device`` string into a ``torch.device``.

Accepted names are the official ones: ``cpu``, ``gpu`` (= ``cuda:0``), ``gpu:N`` and ``mps``. A GPU that is not
there (no CUDA, N out of range, no MPS) is not an error: we fall back to the CPU and say so once per process.
"""
from __future__ import annotations

import logging
import re
import sys

import torch

from ..errors import OptionError

logger = logging.getLogger(__name__)

DEVICE_NAMES = ("gpu", "cpu", "mps", "gpu:N")
_GPU_RE = re.compile(r"gpu:(\d+)")
_warned: set[str] = set()


def _warn_once(message: str, quiet: bool) -> None:
    logger.debug(message)
    if message in _warned:
        return
    _warned.add(message)
    if not quiet:
        print(f"TotalSegmentator: warning: {message}", file=sys.stderr)


def check_device_name(name: str) -> None:
    """Raise OptionError unless ``name`` is one of ``cpu``, ``gpu``, ``gpu:N``, ``mps``."""
    if not isinstance(name, str) or not (name in ("cpu", "gpu", "mps") or _GPU_RE.fullmatch(name)):
        raise OptionError(f"invalid device '{name}': choose 'gpu', 'cpu', 'mps' or 'gpu:N' (N = GPU number)")


def resolve_device(name: str | torch.device, quiet: bool = False) -> torch.device:
    """The torch device for a device name; unavailable GPUs fall back to the CPU with a one-time warning."""
    if isinstance(name, torch.device):
        return name
    check_device_name(name)
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        _warn_once("device 'mps' is not available; running on the CPU (this can be slow)", quiet)
        return torch.device("cpu")
    index = 0 if name == "gpu" else int(_GPU_RE.fullmatch(name).group(1))
    if not torch.cuda.is_available():
        _warn_once(f"no CUDA GPU found for device '{name}'; running on the CPU (this can be slow)", quiet)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if index >= count:
        _warn_once(f"device '{name}' does not exist (found {count} GPU(s)); running on the CPU (this can be slow)",
                   quiet)
        return torch.device("cpu")
    return torch.device("cuda", index)


def as_torch_device(device: str | torch.device) -> torch.device:
    """Accept our device names as well as torch's own (``cuda:1``) wherever a device is passed in code."""
    if isinstance(device, torch.device):
        return device
    if device in ("cpu", "gpu", "mps") or _GPU_RE.fullmatch(device):
        return resolve_device(device)
    try:
        return torch.device(device)
    except RuntimeError:
        raise OptionError(f"invalid device '{device}'") from None
