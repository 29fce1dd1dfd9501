"""Load a trained nnU-Net v2 result folder into memory: plans, labels, network and per-fold weights.

A result folder is ``<weights dir>/<dataset folder>/<trainer>__<plans>__<configuration>`` with ``dataset.json``,
``plans.json`` and ``fold_<k>/<checkpoint>``. We read it with nnU-Net's own plans/label managers and build the
network the way nnU-Net does, but without walking through every trainer module of nnU-Net (slow, and some of them
import optional packages): a trainer's own ``build_network_architecture`` is used only when the trainer class, found
by reading nnU-Net's sources, overrides it. Every other trainer name, including the custom ones the official weights
were trained with, gets nnU-Net's default architecture builder.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import logging
import pickle
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import WeightsError
from .locate import _dataset_id_of, _missing, download_hint
from .locate import find_dataset_folder  # noqa: F401 - part of this module's interface

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass
class LoadedModel:
    """A network with everything needed to run it: plans, labels, weights of every fold, device."""

    result_folder: Path
    trainer_name: str
    configuration_name: str
    folds: tuple[int | str, ...]
    device: torch.device
    network: torch.nn.Module
    plans_manager: Any
    configuration_manager: Any
    label_manager: Any
    dataset_json: dict
    labels: dict[int, str]
    num_input_channels: int
    preprocessor: Any
    allowed_mirroring_axes: tuple[int, ...] | None = None
    # state dicts (on the CPU) of all folds when there are several; empty for one fold, whose weights stay loaded
    fold_weights: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)
    # predictions with one model run one at a time (fold switching changes the shared network's weights)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # torch.compile state of the network (inference/compile.py)
    compiled: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        """Output channels of the network (background included; regions for region-based models)."""
        return int(self.label_manager.num_segmentation_heads)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Sliding-window tile size in nnU-Net's (z, y, x) axis order."""
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Voxel spacing the network expects, in mm, (z, y, x) as in plans.json."""
        return tuple(float(s) for s in self.configuration_manager.spacing)

    @property
    def spacing_xyz(self) -> tuple[float, ...]:
        return tuple(reversed(self.spacing_zyx))

    @property
    def num_folds(self) -> int:
        return len(self.folds)

    def fold_networks(self):
        """Yield the network once per fold with that fold's weights loaded (just once for a single fold)."""
        if not self.fold_weights:
            yield self.network
            return
        for weights in self.fold_weights:
            self.network.load_state_dict(weights)
            yield self.network


# ---------------------------------------------------------------------------------------------------------------
# network construction

@lru_cache(maxsize=1)
def _trainer_source_index() -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """Trainer classes in nnU-Net's sources: name -> (module, base class names, overrides the architecture)."""
    import nnunetv2

    root = Path(nnunetv2.__file__).parent
    trainer_dir = root / "training" / "nnUNetTrainer"
    index: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    for path in sorted(trainer_dir.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        module = ".".join(("nnunetv2",) + path.relative_to(root).with_suffix("").parts)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                bases = tuple(b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases)
                overrides = any(isinstance(n, ast.FunctionDef) and n.name == "build_network_architecture"
                                for n in node.body)
                index.setdefault(node.name, (module, bases, overrides))
    return index


def _overriding_trainer_class(trainer_name: str) -> type | None:
    """nnU-Net's trainer class when it (or a base below nnUNetTrainer) has its own architecture, else None."""
    index = _trainer_source_index()
    pending, seen = [trainer_name], set()
    overrides = False
    while pending:
        name = pending.pop()
        if name in seen or name == "nnUNetTrainer" or name not in index:
            continue
        seen.add(name)
        _, bases, own = index[name]
        overrides |= own
        pending.extend(bases)
    if not overrides:
        return None
    try:
        module = importlib.import_module(index[trainer_name][0])
        return getattr(module, trainer_name)
    except Exception as e:  # a trainer module with unmet optional imports: use the default builder
        logger.debug("could not import trainer %s (%s); using the default architecture", trainer_name, e)
        return None


def _default_builder(plans_manager, configuration_manager, dataset_json, num_input_channels: int,
                     num_output_channels: int) -> torch.nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    params = inspect.signature(get_network_from_plans).parameters
    if "arch_class_name" in params:
        return get_network_from_plans(configuration_manager.network_arch_class_name,
                                      configuration_manager.network_arch_init_kwargs,
                                      configuration_manager.network_arch_init_kwargs_req_import,
                                      num_input_channels, num_output_channels,
                                      allow_init=False, deep_supervision=False)
    # nnunetv2 < 2.4
    return get_network_from_plans(plans_manager, dataset_json, configuration_manager, num_input_channels,
                                  deep_supervision=False)


def build_network(trainer_name: str, plans_manager, configuration_manager, dataset_json: dict,
                  num_input_channels: int, num_output_channels: int) -> torch.nn.Module:
    """The inference network of a trainer, as nnU-Net's predictor would build it (no deep supervision)."""
    trainer_class = _overriding_trainer_class(trainer_name)
    if trainer_class is None:
        return _default_builder(plans_manager, configuration_manager, dataset_json, num_input_channels,
                                num_output_channels)
    build: Callable = trainer_class.build_network_architecture
    if "plans_manager" in inspect.signature(build).parameters:
        return build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                     enable_deep_supervision=False)
    return build(configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                 configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                 num_output_channels, enable_deep_supervision=False)


def network_with_weights(build: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor],
                         own_tensors: bool = False) -> torch.nn.Module:
    """The network from ``build()`` holding ``weights`` (RuntimeError when they do not fit).

    With ``own_tensors`` the checkpoint's tensors become the parameters: the network is built on the meta
    device (no random initialisation, no copy of the weights). Architectures that create tensors of their own
    (buffers outside the state dict) or checkpoints in another dtype are built and copied into as usual."""
    if own_tensors:
        with torch.device("meta"):
            network = build()
        network.load_state_dict(weights, assign=True)
        tensors = list(network.parameters()) + list(network.buffers())
        default = torch.get_default_dtype()
        if not any(t.is_meta for t in tensors) and all(t.dtype == default for t in network.parameters()):
            return network
    network = build()
    network.load_state_dict(weights)
    return network


# ---------------------------------------------------------------------------------------------------------------
# checkpoints

def _numpy_safe_globals() -> list:
    """Numpy types that nnU-Net checkpoints pickle in their training log; harmless to allow."""
    allowed: list = [np.dtype]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            allowed.append(importlib.import_module(module_name).scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType")
                    if hasattr(dtypes, n)]
    return allowed


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` a local checkpoint safely (``weights_only``); fall back to a full unpickle only when the
    safe loader refuses it (these are files in the user's own weights dir)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is not None:
            with safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        if not _is_weights_only_refusal(e):
            raise
        logger.debug("safe loading of %s failed (%s); loading it with weights_only=False", path, e)
        return torch.load(path, map_location="cpu", weights_only=False)


def _is_weights_only_refusal(e: Exception) -> bool:
    text = str(e)
    return isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text


def _clean_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes DDP (``module.``) and torch.compile (``_orig_mod.``) leave in parameter names."""
    out = {}
    for key, value in weights.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def available_folds(result_folder: Path, checkpoint_name: str = DEFAULT_CHECKPOINT) -> tuple[int, ...]:
    """Folds with a checkpoint, as nnU-Net detects them when no folds are given (``fold_all`` excluded)."""
    folds = []
    for sub in sorted(result_folder.glob("fold_*")):
        suffix = sub.name[len("fold_"):]
        if suffix.isdigit() and (sub / checkpoint_name).is_file():
            folds.append(int(suffix))
    return tuple(sorted(folds))


def _labels_of(dataset_json: dict, label_manager) -> dict[int, str]:
    """Label id -> class name from dataset.json (background and the ignore label left out)."""
    labels: dict[int, str] = {}
    names = [name for name, value in dataset_json["labels"].items() if name not in ("background", "ignore")]
    if label_manager.has_regions:
        regions = [name for name in names if dataset_json["labels"][name] not in (0, [0])]
        for name, label in zip(regions, label_manager.regions_class_order):
            labels[int(label)] = name
    else:
        for name in names:
            value = int(dataset_json["labels"][name])
            if value != 0:
                labels[value] = name
    return dict(sorted(labels.items()))


def _read_json(path: Path, dataset_id: str | None) -> dict:
    import json

    if not path.is_file():
        raise _missing("model file", path, dataset_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"model file {path} is unreadable ({e}); reinstall the weights with "
                           f"'{download_hint(dataset_id)}'") from None


def _preprocessor(configuration_manager) -> Any:
    """nnU-Net's preprocessor of a configuration. The standard one is imported directly: nnU-Net's own lookup by
    name imports every module of its preprocessing package first (0.3-0.5 s at the start of each run)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    if configuration_manager.preprocessor_name == DefaultPreprocessor.__name__:
        return DefaultPreprocessor(verbose=False)
    return configuration_manager.preprocessor_class(verbose=False)


def load_model(result_folder: Path | str, folds: tuple[int | str, ...] | None, device: torch.device,
               checkpoint_name: str = DEFAULT_CHECKPOINT) -> LoadedModel:
    """Load ``<dataset>/<trainer>__<plans>__<configuration>`` with the given folds (None: all available) onto
    ``device``. Missing or broken files raise WeightsError naming the path and the download command."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    result_folder = Path(result_folder)
    dataset_id = _dataset_id_of(result_folder)
    if not result_folder.is_dir():
        raise _missing("model folder", result_folder, dataset_id)
    dataset_json = _read_json(result_folder / "dataset.json", dataset_id)
    plans = _read_json(result_folder / "plans.json", dataset_id)

    if folds is None:
        folds = available_folds(result_folder, checkpoint_name)
        if not folds:
            raise _missing("checkpoint", result_folder / "fold_0" / checkpoint_name, dataset_id)
    folds = tuple(f if f == "all" else int(f) for f in folds)
    if not folds:
        raise ValueError("folds must not be empty")

    fold_weights: list[dict[str, torch.Tensor]] = []
    trainer_name = configuration_name = None
    mirroring = None
    for fold in folds:
        path = result_folder / f"fold_{fold}" / checkpoint_name
        if not path.is_file():
            raise _missing("checkpoint", path, dataset_id)
        try:
            checkpoint = load_checkpoint(path)
            weights = _clean_state_dict(checkpoint["network_weights"])
        except Exception as e:  # truncated download, wrong format, not a checkpoint at all
            raise WeightsError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); reinstall the weights "
                               f"with '{download_hint(dataset_id)}'") from None
        if trainer_name is None:
            trainer_name = checkpoint.get("trainer_name") or result_folder.name.split("__")[0]
            configuration_name = (checkpoint.get("init_args") or {}).get("configuration") or \
                result_folder.name.split("__")[-1]
            mirroring = checkpoint.get("inference_allowed_mirroring_axes")
        fold_weights.append(weights)
        del checkpoint

    plans_manager = PlansManager(plans)
    try:
        configuration_manager = plans_manager.get_configuration(configuration_name)
    except (RuntimeError, ValueError, KeyError):
        raise WeightsError(f"plans.json in {result_folder} has no configuration '{configuration_name}'; reinstall "
                           f"the weights with '{download_hint(dataset_id)}'") from None
    label_manager = plans_manager.get_label_manager(dataset_json)
    num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    def build() -> torch.nn.Module:
        return build_network(trainer_name, plans_manager, configuration_manager, dataset_json, num_input_channels,
                             label_manager.num_segmentation_heads)

    try:
        network = network_with_weights(build, fold_weights[0], own_tensors=len(fold_weights) == 1)
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[0]
        raise WeightsError(f"checkpoint of fold {folds[0]} in {result_folder} does not fit the network described by "
                           f"its plans.json ({first_line}); reinstall the weights with "
                           f"'{download_hint(dataset_id)}'") from None
    network.to(device)
    network.eval()
    if len(fold_weights) == 1:
        fold_weights = []  # its weights are in the network; do not keep a second copy

    return LoadedModel(
        result_folder=result_folder,
        trainer_name=trainer_name,
        configuration_name=configuration_name,
        folds=folds,
        device=device,
        network=network,
        plans_manager=plans_manager,
        configuration_manager=configuration_manager,
        label_manager=label_manager,
        dataset_json=dataset_json,
        labels=_labels_of(dataset_json, label_manager),
        num_input_channels=int(num_input_channels),
        preprocessor=_preprocessor(configuration_manager),
        allowed_mirroring_axes=tuple(mirroring) if mirroring is not None else None,
        fold_weights=fold_weights,
    )
