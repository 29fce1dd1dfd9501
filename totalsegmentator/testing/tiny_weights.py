"""Tiny, randomly initialised nnU-Net v2 result folders in the official weights layout.

``write_tiny_dataset`` writes ``<weights_dir>/<dataset folder>/<trainer>__<plans>__<configuration>/`` with
``dataset.json``, ``plans.json`` and ``fold_<k>/checkpoint_final.pth`` exactly as nnU-Net v2 training leaves them,
so that both our loader and nnU-Net's own ``nnUNetPredictor`` can load them. Labels, trainer, plans, configuration,
folds and spacing default to what the task registry says for the dataset id. The network is a small PlainConvUNet
(3 stages, 4-8-16 features, 32^3 patch) unless asked for more, e.g. the realistic 6-stage 32..320 / 128^3 one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from .. import config
from ..atomic_files import write_atomic, write_json_atomic
from ..errors import OptionError
from ..registry import Mode, Task, get_dataset, get_task, rough_crop_model, task_registry

TINY_FEATURES = (4, 8, 16)
TINY_PATCH = (32, 32, 32)
REALISTIC_FEATURES = (32, 64, 128, 256, 320, 320)
REALISTIC_PATCH = (128, 128, 128)
DEFAULT_SPACING_ZYX = (1.5, 1.5, 1.5)
# CT-like foreground intensity statistics (what CTNormalization clips and scales with)
CT_INTENSITIES = {"max": 3000.0, "mean": 100.0, "median": 60.0, "min": -1024.0,
                  "percentile_00_5": -1000.0, "percentile_99_5": 1500.0, "std": 300.0}
MR_INTENSITIES = {"max": 2000.0, "mean": 300.0, "median": 250.0, "min": 0.0,
                  "percentile_00_5": 0.0, "percentile_99_5": 1200.0, "std": 200.0}


@dataclass(frozen=True)
class DatasetDefaults:
    """What the registry says about one dataset id: the task/mode using it and the labels it predicts."""

    dataset_id: int
    folder: str
    task: Task | None
    mode: Mode | None
    labels: dict[int, str]
    modality: str


def _dataset_folder_name(dataset_id: int, task_name: str | None) -> str:
    try:
        return get_dataset(dataset_id).folder
    except OptionError:
        return f"Dataset{int(dataset_id):03d}_{task_name or 'tiny'}"


def dataset_defaults(dataset_id: int) -> DatasetDefaults:
    """Registry defaults for a dataset id: the first task (official order) whose mode runs it."""
    for task in task_registry().values():
        for mode in task.modes.values():
            if dataset_id not in mode.dataset_ids:
                continue
            part = next((p for p in mode.parts if p.dataset_id == dataset_id), None)
            if part is not None:
                labels = dict(part.class_map)
            else:
                labels = {**task.class_map, **task.auxiliary_labels}
            labels = dict(sorted(labels.items()))
            return DatasetDefaults(dataset_id, _dataset_folder_name(dataset_id, task.name), task, mode, labels,
                                   task.modality)
    return DatasetDefaults(dataset_id, _dataset_folder_name(dataset_id, None), None, None, {1: "foreground"}, "CT")


def _write_json(path: Path, data: dict) -> None:
    write_json_atomic(data, path)


def make_dataset_json(labels: dict[int, str], modality: str = "CT", num_training: int = 1) -> dict:
    """A nnU-Net v2 dataset.json for a single-channel model."""
    channel = "CT" if modality.upper() == "CT" else "MRI"
    label_dict = {"background": 0}
    label_dict.update({name: int(idx) for idx, name in sorted(labels.items())})
    return {"channel_names": {"0": channel}, "labels": label_dict, "numTraining": int(num_training),
            "file_ending": ".nii.gz"}


def make_plans(dataset_name: str, plans_name: str, configuration: str, spacing_zyx: Sequence[float],
               modality: str = "CT", patch_size: Sequence[int] = TINY_PATCH,
               features: Sequence[int] = TINY_FEATURES) -> dict:
    """A nnU-Net v2 plans.json with one configuration using a PlainConvUNet of ``len(features)`` stages."""
    n_stages = len(features)
    divisor = 2 ** (n_stages - 1)
    if any(int(p) % divisor for p in patch_size):
        raise ValueError(f"patch size {tuple(patch_size)} must be divisible by {divisor} for {n_stages} stages")
    spacing = [float(s) for s in spacing_zyx]
    ct = modality.upper() == "CT"
    resampling_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration_dict = {
        "data_identifier": f"{plans_name}_{configuration}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": [int(p) for p in patch_size],
        "median_image_size_in_voxels": [int(p) * 2 for p in patch_size],
        "spacing": spacing,
        "normalization_schemes": ["CTNormalization" if ct else "ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling_kwargs,
        "resampling_fn_seg_kwargs": {**resampling_kwargs, "is_seg": True, "order": 1},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**resampling_kwargs, "order": 1},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": [int(f) for f in features],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n_stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1),
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": True,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": spacing,
        "original_median_shape_after_transp": [int(p) * 2 for p in patch_size],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {configuration: configuration_dict},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(CT_INTENSITIES if ct else MR_INTENSITIES)},
    }


def build_network(plans: dict, configuration: str, dataset_json: dict, trainer: str, seed: int,
                  logit_scale: float = 4.0) -> torch.nn.Module:
    """The network our loader (and nnU-Net) builds for these plans and trainer, initialised reproducibly
    without touching the global random state."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from ..inference.model import build_network as build_inference_network

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_inference_network(trainer, plans_manager, configuration_manager, dataset_json, 1,
                                          num_outputs)
        # default init with instance norm gives logits of similar size for all classes; a larger last layer and
        # a random bias make the argmax vary in space without one class winning everywhere
        seg_layers = getattr(getattr(network, "decoder", None), "seg_layers", None)
        if seg_layers is not None:
            with torch.no_grad():
                last = seg_layers[-1]
                last.weight.mul_(logit_scale)
                if last.bias is not None:
                    last.bias.copy_(torch.randn_like(last.bias) * 0.5)
    return network


def _num_training(folder: str) -> int:
    match = re.search(r"_(\d+)subj", folder)
    return int(match.group(1)) if match else 1


def write_tiny_dataset(weights_dir: Path | str | None, dataset_id: int, labels: dict[int, str] | None = None,
                       trainer: str | None = None, plans: str | None = None, configuration: str | None = None,
                       folds: Iterable[int | str] | None = None, modality: str | None = None,
                       spacing_zyx: Sequence[float] | None = None, patch_size: Sequence[int] = TINY_PATCH,
                       features: Sequence[int] = TINY_FEATURES, seed: int | None = None,
                       logit_scale: float = 4.0, numpy_extras: bool = True) -> Path:
    """Write one tiny result folder and return it (``<weights_dir>/<dataset>/<trainer>__<plans>__<config>``).

    Everything not given comes from the registry entry of ``dataset_id``. Each fold gets its own seed so that a
    multi-fold ensemble differs from any single fold. ``numpy_extras`` adds numpy scalars to the checkpoint's
    training log, as real nnU-Net checkpoints have.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else config.weights_dir()
    defaults = dataset_defaults(int(dataset_id))
    mode = defaults.mode
    labels = dict(sorted((labels if labels is not None else defaults.labels).items()))
    trainer = trainer or (mode.trainer if mode else "nnUNetTrainer")
    plans_name = plans or (mode.plans if mode else "nnUNetPlans")
    configuration = configuration or (mode.configuration if mode else "3d_fullres")
    if folds is None:
        folds = mode.folds if mode is not None and mode.folds is not None else (0,)
    modality = modality or defaults.modality
    if spacing_zyx is None:
        spacing_zyx = tuple(reversed(mode.spacing)) if mode is not None and mode.spacing else DEFAULT_SPACING_ZYX
    seed = int(dataset_id) if seed is None else seed

    dataset_folder = weights_dir / defaults.folder
    result_folder = dataset_folder / f"{trainer}__{plans_name}__{configuration}"
    dataset_json = make_dataset_json(labels, modality, _num_training(defaults.folder))
    plans_dict = make_plans(dataset_folder.name, plans_name, configuration, spacing_zyx, modality, patch_size,
                            features)
    _write_json(result_folder / "dataset.json", dataset_json)
    _write_json(result_folder / "plans.json", plans_dict)
    for i, fold in enumerate(folds):
        network = build_network(plans_dict, configuration, dataset_json, trainer, seed * 100 + i, logit_scale)
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {"ema_fg_dice": [np.float64(0.5)], "epoch_end_timestamps": [1.0]} if numpy_extras else {},
            "_best_ema": np.float64(0.5) if numpy_extras else None,
            "current_epoch": 1000,
            "init_args": {"plans": plans_dict, "configuration": configuration, "fold": fold,
                          "dataset_json": dataset_json},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        write_atomic(result_folder / f"fold_{fold}" / "checkpoint_final.pth", lambda f, c=checkpoint: torch.save(c, f))
    return result_folder


ROUGH_TASKS = ("total", "total_mr", "body")


def _rough_kinds(mode: Mode, robust_crop: bool) -> list[str]:
    """The ``rough_crop_model`` kinds a mode's crop rule runs (a crop by another task runs that task instead)."""
    crop = mode.crop
    if crop is None:
        return []
    if crop.model == "total":
        return ["ct_robust"] if crop.robust or robust_crop else ["ct_default"]
    if crop.model == "total_mr":
        return ["mr_always"]
    if crop.model == "body":
        return ["body"]
    return []


class _Wanted(NamedTuple):
    dataset_id: int
    mode: Mode | None  # the mode that runs it, when it is a model of the task itself
    overrides: dict  # arguments for write_tiny_dataset


def _rough(kind: str) -> _Wanted:
    entry = rough_crop_model(kind)
    return _Wanted(int(entry["dataset_id"]), None,
                   {"trainer": entry["trainer"], "configuration": entry["configuration"]})


def _own_model(task: Task, mode: Mode, dataset_id: int) -> _Wanted:
    """A model of the task itself, described as this task sees it (a dataset can serve several tasks)."""
    part = next((p for p in mode.parts if p.dataset_id == dataset_id), None)
    labels = dict(part.class_map) if part else {**task.class_map, **task.auxiliary_labels}
    return _Wanted(dataset_id, mode, {
        "labels": labels, "modality": task.modality, "trainer": mode.trainer, "plans": mode.plans,
        "configuration": mode.configuration, "folds": mode.folds,
        "spacing_zyx": tuple(reversed(mode.spacing)) if mode.spacing else None})


def _task_mode(task: Task, mode_name: str) -> Mode | None:
    """The mode that ``--fast``/``--fastest`` select, with the official fallbacks; None if not allowed."""
    if mode_name in task.modes:
        return task.modes[mode_name]
    try:
        return task.mode(fast=mode_name == "fast", fastest=mode_name == "fastest")
    except OptionError:
        return None


def _datasets_for_task(task_name: str, modes: Sequence[str], robust_crop: bool, body_seg: bool,
                       seen_tasks: set[str]) -> list[_Wanted]:
    """Everything a task needs, its rough crop models and crop/refine tasks included."""
    if task_name in seen_tasks:
        return []
    seen_tasks.add(task_name)
    task = get_task(task_name)
    out: list[_Wanted] = []
    for mode_name in modes:
        mode = _task_mode(task, mode_name)
        if mode is None:
            continue
        out += [_own_model(task, mode, ds) for ds in mode.dataset_ids]
        out += [_rough(kind) for kind in _rough_kinds(mode, robust_crop)]
        if mode.crop is not None and mode.crop.model not in ROUGH_TASKS and mode.crop.model in task_registry():
            out += _datasets_for_task(mode.crop.model, ("default",), robust_crop, False, seen_tasks)
    out += [_Wanted(ds, None, {}) for ds in task.download_ids if isinstance(ds, int)]
    if task.refine:
        out += _datasets_for_task(task.refine["task"], ("default",), robust_crop, False, seen_tasks)
    if robust_crop and task.roi_subset_supported and task.modality == "CT":
        out.append(_rough("ct_robust"))
    if body_seg and task.modality == "CT":
        out.append(_rough("body"))
    return out


def install_task_weights(task: str, weights_dir: Path | str | None = None, modes: Sequence[str] = ("default",),
                         robust_crop: bool = False, body_seg: bool = False, **kwargs: Any) -> list[Path]:
    """Write tiny weights for every dataset ``task`` needs in ``modes`` (rough crop models included).

    Returns the result folders written, one per dataset (plus one per small-plans variant). ``robust_crop`` and
    ``body_seg`` add the models those options run; ``kwargs`` go to ``write_tiny_dataset``.
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else config.weights_dir()
    wanted = _datasets_for_task(task, tuple(modes), robust_crop, body_seg, set())
    written: list[Path] = []
    done: set[int] = set()
    for dataset_id, mode, overrides in wanted:
        if dataset_id in done:
            continue
        done.add(dataset_id)
        written.append(write_tiny_dataset(weights_dir, dataset_id, **{**overrides, **kwargs}))
        if mode is not None and mode.plans_small:
            written.append(write_tiny_dataset(weights_dir, dataset_id,
                                              **{**overrides, **kwargs, "plans": mode.plans_small}))
    return written


def make_constant_model(result_folder: Path | str, label: int) -> None:
    """Turn a written tiny model into one that predicts ``label`` everywhere (e.g. a rough crop model that
    "finds" the crop class in the whole image, so that the cropped main model really runs in tests)."""
    result_folder = Path(result_folder)
    for checkpoint_path in sorted(result_folder.glob("fold_*/checkpoint_final.pth")):
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        weights = checkpoint["network_weights"]
        head = max((k for k in weights if k.startswith("decoder.seg_layers.") and k.endswith(".weight")),
                   key=lambda k: int(k.split(".")[2]))
        weights[head].zero_()
        bias = weights[head[: -len("weight")] + "bias"]
        bias.zero_()
        bias[int(label)] = 10.0
        write_atomic(checkpoint_path, lambda f, c=checkpoint: torch.save(c, f))
