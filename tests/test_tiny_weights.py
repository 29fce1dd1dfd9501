"""Tiny nnU-Net weights: official folder layout, registry defaults, loadable by nnU-Net itself and by us."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from totalsegmentator.inference.model import load_model
from totalsegmentator.registry import get_dataset, get_task, rough_crop_model
from totalsegmentator.testing.tiny_weights import dataset_defaults, install_task_weights, write_tiny_dataset

CPU = torch.device("cpu")


def _folders(paths):
    return {p.parent.name for p in paths}


def test_layout_and_registry_defaults(tmp_path):
    write_tiny_dataset(tmp_path / "warm_up", 300)  # the first call pays for importing nnU-Net
    start = time.perf_counter()
    folder = write_tiny_dataset(tmp_path, 299)
    assert time.perf_counter() - start < 1.0
    task = get_task("body")
    mode = task.modes["default"]
    assert folder == tmp_path / get_dataset(299).folder / f"{mode.trainer}__{mode.plans}__{mode.configuration}"
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "fold_0", "plans.json"]
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    assert not list(folder.rglob("*.tmp"))

    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "CT"}
    assert dataset_json["labels"] == {"background": 0, **{n: i for i, n in task.class_map.items()}}
    assert dataset_json["file_ending"] == ".nii.gz"
    assert dataset_json["numTraining"] == 1559

    plans = json.loads((folder / "plans.json").read_text())
    cfg = plans["configurations"][mode.configuration]
    assert cfg["spacing"] == list(reversed(mode.spacing))
    assert cfg["normalization_schemes"] == ["CTNormalization"]
    assert plans["dataset_name"] == get_dataset(299).folder
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_00_5"] == -1000.0

    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == mode.trainer
    assert checkpoint["init_args"]["configuration"] == mode.configuration
    assert checkpoint["init_args"]["fold"] == 0
    assert checkpoint["inference_allowed_mirroring_axes"] == (0, 1, 2)


def test_nnunet_predictor_loads_tiny_folder(tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = write_tiny_dataset(tmp_path, 300)
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=CPU,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    assert list(predictor.configuration_manager.patch_size) == [32, 32, 32]
    assert predictor.configuration_manager.spacing == [6.0, 6.0, 6.0]
    with torch.inference_mode():
        out = predictor.network(torch.zeros(1, 1, 32, 32, 32))
    assert out.shape == (1, 3, 32, 32, 32)


def test_labels_for_parts_rough_models_and_mr(tmp_path):
    total = get_task("total")
    part = next(p for p in total.modes["default"].parts if p.dataset_id == 292)
    assert dataset_defaults(292).labels == part.class_map
    for rough in ("ct_default", "ct_robust"):
        assert dataset_defaults(rough_crop_model(rough)["dataset_id"]).labels == total.class_map
    assert dataset_defaults(852).labels == get_task("total_mr").class_map
    assert dataset_defaults(305).labels == get_task("vertebrae_body").class_map
    appendicular = get_task("appendicular_bones")
    assert dataset_defaults(304).labels == {**appendicular.class_map, **appendicular.auxiliary_labels}

    folder = write_tiny_dataset(tmp_path, 852)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = json.loads((folder / "plans.json").read_text())
    assert dataset_json["channel_names"] == {"0": "MRI"}
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"]


def test_install_task_weights_includes_crop_and_refine_models(tmp_path):
    teeth = install_task_weights("teeth", tmp_path)
    assert _folders(teeth) == {get_dataset(i).folder for i in (113, 115, 298)}
    refined = install_task_weights("vertebrae_pp_refined", tmp_path)
    assert _folders(refined) == {get_dataset(i).folder for i in (803, 305)}
    abdominal = install_task_weights("abdominal_muscles", tmp_path)
    assert get_dataset(300).folder in _folders(abdominal)
    liver_mr = install_task_weights("liver_lesions_mr", tmp_path)
    assert get_dataset(852).folder in _folders(liver_mr)
    robust = install_task_weights("lung_vessels", tmp_path)  # crop marked robust -> 3 mm model
    assert get_dataset(297).folder in _folders(robust)
    shared = install_task_weights("thigh_shoulder_muscles_mr", tmp_path / "mr")  # 857 also serves a CT task
    assert json.loads((shared[0] / "dataset.json").read_text())["channel_names"] == {"0": "MRI"}
    total_v3 = install_task_weights("total_v3", tmp_path / "v3")
    small = get_task("total_v3").modes["default"].plans_small
    assert any(p.name.split("__")[1] == small for p in total_v3)
    test_task = install_task_weights("test", tmp_path)
    assert "Dataset517_test" in _folders(test_task)
    for path in teeth + refined + abdominal + liver_mr + test_task:
        assert (path / "fold_0" / "checkpoint_final.pth").is_file()


def test_install_defaults_to_config_weights_dir(totalseg_home):
    paths = install_task_weights("body", modes=("default", "fast"))
    assert _folders(paths) == {get_dataset(299).folder, get_dataset(300).folder}
    assert all(str(p).startswith(str(totalseg_home / "nnunet" / "results")) for p in paths)


@pytest.mark.parametrize("trainer", [
    "nnUNetTrainer_MOSAIC_1k_QuarterLR_NoMirroring", "nnUNetTrainerDiceTopK10Loss_2000epochs",
    "nnUNetTrainerSkeletonRecall", "nnUNetTrainer_onlyMirror01", "nnUNetTrainer_DASegOrd0_NoMirroring",
    "nnUNetTrainerV2"])
def test_official_trainer_names_load(tmp_path, trainer):
    folder = write_tiny_dataset(tmp_path, 299, trainer=trainer)
    model = load_model(folder, (0,), CPU)
    assert model.trainer_name == trainer
    assert type(model.network).__name__ == "PlainConvUNet"
    assert model.labels == get_task("body").class_map


def test_seeded_and_not_constant(tmp_path):
    a = write_tiny_dataset(tmp_path / "a", 299)
    b = write_tiny_dataset(tmp_path / "b", 299)
    wa = torch.load(a / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    wb = torch.load(b / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    model = load_model(a, (0,), CPU)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 32, 32, 32)).astype(np.float32))
    with torch.inference_mode():
        labels = model.network(x).argmax(1)
    assert len(torch.unique(labels)) == model.num_classes  # every class wins somewhere


def test_realistic_architecture_is_configurable(tmp_path):
    folder = write_tiny_dataset(tmp_path, 298, features=(8, 16, 32, 64), patch_size=(48, 48, 48))
    plans = json.loads((folder / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 4 and arch["features_per_stage"] == [8, 16, 32, 64]
    assert load_model(folder, (0,), CPU).patch_size == (48, 48, 48)
    with pytest.raises(ValueError, match="divisible"):
        write_tiny_dataset(tmp_path, 298, features=(8, 16, 32, 64), patch_size=(36, 48, 48))
