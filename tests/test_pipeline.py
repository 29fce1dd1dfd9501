"""Every task end to end with tiny fixture weights, and the options that shape a run."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator import config
from totalsegmentator.errors import OptionError
from totalsegmentator.inference.cache import clear_cache
from totalsegmentator.io.label_header import load_multilabel_nifti
from totalsegmentator.options import Options
from totalsegmentator.pipeline import ROUGH_KIND_TO_MODE
from totalsegmentator.python_api import totalsegmentator
from totalsegmentator.registry import TASKS, get_task, rough_crop_model
from totalsegmentator.testing.phantoms import Phantom, grid_affine
from totalsegmentator.testing.tiny_weights import install_task_weights, make_constant_model

LICENSE = "aca_" + "A" * 14


def small_ct(shape=(14, 12, 10), spacing=(3.0, 3.0, 3.0), axcodes="LPS") -> nib.Nifti1Image:
    """A tiny CT phantom (about 4 cm across), in LPS order so that reorientation is exercised."""
    return Phantom(body_radius_mm=15.0, blobs=()).nifti(shape, grid_affine(spacing, shape, axcodes))


def _crop_models_find_their_classes(task_name: str, weights_dir: Path) -> None:
    """Make the rough crop models (and crop tasks) of ``task_name`` predict the crop class everywhere, so that
    the cropped main model runs on the whole small image instead of ending with an empty crop."""
    opts = Options(input=small_ct(), task=task_name).validated()
    plan = opts.crop_plan()
    task = get_task(task_name)
    mode = opts.selected_mode()
    wanted: list[tuple[str, str]] = []  # (rough kind or crop task, class name)
    if plan is not None and plan.rough_model is not None:
        wanted.append((plan.rough_model, plan.classes[0]))
    elif plan is not None:
        crop_task = get_task(plan.model)
        wanted.append((f"task:{plan.model}", plan.classes[0]))
        sub = Options(input=small_ct(), task=crop_task.name).validated().crop_plan()
        if sub is not None:
            wanted.append((sub.rough_model, sub.classes[0]))
    if mode.remove_outside is not None and plan is None:
        wanted.append(("ct_robust", mode.remove_outside.classes[0]))
    for kind, class_name in wanted:
        if kind.startswith("task:"):
            crop_task = get_task(kind[5:])
            crop_mode = crop_task.mode()
            dataset_id, trainer, configuration = crop_mode.dataset_ids[0], crop_mode.trainer, crop_mode.configuration
            label = crop_task.class_ids[class_name]
        else:
            entry = rough_crop_model(kind)
            rough_task = get_task(ROUGH_KIND_TO_MODE[kind][0])
            dataset_id, trainer, configuration = entry["dataset_id"], entry["trainer"], entry["configuration"]
            if class_name not in rough_task.class_ids:
                continue  # the task "test" asks for a class its crop model does not have
            label = rough_task.class_ids[class_name]
        folders = list(weights_dir.glob(f"Dataset{int(dataset_id):03d}_*/{trainer}__*__{configuration}"))
        assert folders, f"no fixture weights for dataset {dataset_id}"
        for folder in folders:
            make_constant_model(folder, label)
    del task


@pytest.fixture
def task_home(tmp_path, monkeypatch):
    """A fresh home with a stored license; weights are written per test."""
    home = tmp_path / "home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    config.setup_config()
    config.update_config(license_number=LICENSE)
    clear_cache()
    yield home
    clear_cache()


def _expected_files(task_name: str) -> set[str]:
    task = get_task(task_name)
    names = {f"{name}.nii.gz" for name in task.class_map.values()}
    if task.derived_masks:
        names |= {"body.nii.gz", "skin.nii.gz"}
    return names


@pytest.mark.parametrize("task_name", TASKS)
def test_every_task_runs_end_to_end(task_name, task_home, tmp_path):
    install_task_weights(task_name)
    _crop_models_find_their_classes(task_name, config.weights_dir())
    img = small_ct()
    out = tmp_path / "seg"
    if task_name == "test":  # the official unit-test hook: no weights exist and its crop class is unknown
        with pytest.raises(OptionError, match="517|body"):
            totalsegmentator(img, out, task=task_name, device="cpu", quiet=True)
        return
    seg = totalsegmentator(img, out, task=task_name, device="cpu", quiet=True)
    task = get_task(task_name)

    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine)
    assert seg.get_data_dtype() == np.uint8
    _, label_map = load_multilabel_nifti(seg)
    assert label_map == task.class_map
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, *task.class_map}
    assert {p.name for p in out.iterdir()} == _expected_files(task_name)
    for label, name in task.class_map.items():
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == img.shape
        np.testing.assert_allclose(mask.affine, img.affine)
        assert mask.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(mask.dataobj), (labels == label).astype(np.uint8))
    if task.auxiliary_labels:
        assert not set(np.unique(labels)) & set(task.auxiliary_labels)


@pytest.fixture
def total_fast_home(task_home):
    install_task_weights("total", modes=("fast", "fastest"))
    return task_home



@pytest.mark.parametrize("name, written_as, compressed", [
    ("seg", "seg.nii", False),  # nibabel's save (the official writer) adds .nii to a name without suffix
    ("SEG.NII.GZ", "SEG.NII.GZ", True),
    ("seg.nii", "seg.nii", False),
    ("seg.mgz", "seg.mgz", True),  # converted to a FreeSurfer image, as nibabel's save does
])
def test_multilabel_file_named_as_nibabel_names_it(total_fast_home, tmp_path, capsys, name, written_as, compressed):
    img = small_ct()
    out = tmp_path / "out" / name
    returned = totalsegmentator(img, out, ml=True, fast=True, device="cpu")
    assert [p.name for p in out.parent.iterdir()] == [written_as]
    path = out.parent / written_as
    assert f"Saved the segmentation to {path}" in capsys.readouterr().out
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compressed
    written = nib.load(path)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(returned.dataobj))
    np.testing.assert_allclose(written.affine, img.affine, atol=1e-5)
    if written_as != "seg.mgz":
        assert load_multilabel_nifti(path)[1] == get_task("total").class_map

def test_multilabel_file_with_label_header(total_fast_home, tmp_path):
    img = small_ct()
    out = tmp_path / "out" / "seg.nii.gz"
    returned = totalsegmentator(img, out, ml=True, fast=True, device="cpu", quiet=True)
    written, label_map = load_multilabel_nifti(out)
    assert label_map == get_task("total").class_map
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(returned.dataobj))
    np.testing.assert_allclose(written.affine, img.affine)
    assert [p.name for p in out.parent.iterdir()] == ["seg.nii.gz"]  # no temp files left behind


def test_statistics_are_returned_and_written(total_fast_home, tmp_path):
    img = small_ct()
    seg, stats = totalsegmentator(img, tmp_path / "seg", fastest=True, statistics=True, device="cpu", quiet=True)
    written = json.loads((tmp_path / "seg" / "statistics.json").read_text())
    assert written == stats
    assert list(stats) == list(get_task("total").class_map.values())
    assert set(stats["liver"]) == {"volume", "intensity"}


def test_roi_subset_writes_only_those_classes(task_home, tmp_path):
    install_task_weights("total", modes=("fast",))
    install_task_weights("total", modes=("fastest",))  # the rough crop model
    _crop_rough = get_task("total").modes["fastest"]
    folder = next(config.weights_dir().glob(f"Dataset{_crop_rough.dataset_ids[0]}_*/*"))
    make_constant_model(folder, get_task("total").class_ids["liver"])
    out = tmp_path / "seg"
    seg = totalsegmentator(small_ct(), out, fast=True, roi_subset=["liver", "spleen"], device="cpu", quiet=True)
    assert sorted(p.name for p in out.iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    _, label_map = load_multilabel_nifti(seg)
    assert label_map == {1: "spleen", 5: "liver"}
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 5}


def test_roi_subset_runs_only_the_parts_that_hold_the_classes(task_home, tmp_path, monkeypatch):
    install_task_weights("total")
    install_task_weights("total", modes=("fastest",))
    rough = next(config.weights_dir().glob("Dataset298_*/*"))
    make_constant_model(rough, get_task("total").class_ids["vertebrae_L1"])
    asked = _record_models(monkeypatch)
    totalsegmentator(small_ct(), tmp_path / "seg", roi_subset=["vertebrae_L1", "rib_left_3"], device="cpu",
                     quiet=True, skip_saving=True)
    assert asked == [298, 292, 295]  # rough crop model, then the vertebrae and ribs parts only


def test_save_lowres_keeps_model_resolution(total_fast_home, tmp_path):
    img = small_ct(shape=(20, 18, 16), spacing=(1.5, 1.5, 1.5))
    seg = totalsegmentator(img, tmp_path / "seg.nii.gz", ml=True, fast=True, save_lowres=True, device="cpu",
                           quiet=True)
    assert seg.shape == (10, 9, 8)
    np.testing.assert_allclose(np.abs(np.diag(seg.affine)[:3]), (3.0, 3.0, 3.0))
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(img.affine)


def test_skip_saving_writes_nothing(total_fast_home, tmp_path):
    out = tmp_path / "seg"
    seg = totalsegmentator(small_ct(), out, fast=True, skip_saving=True, device="cpu", quiet=True)
    assert seg.shape == small_ct().shape
    assert not out.exists()


def test_force_split_gives_the_same_labels(total_fast_home):
    img = small_ct(shape=(12, 12, 40))
    whole = totalsegmentator(img, None, fast=True, device="cpu", quiet=True)
    split = totalsegmentator(img, None, fast=True, force_split=True, device="cpu", quiet=True)
    assert split.shape == whole.shape


@pytest.mark.parametrize("memory_short", [False, True])
def test_big_image_is_split_only_when_memory_is_short(memory_short, task_home, monkeypatch):
    from totalsegmentator.preprocessing import splitting

    install_task_weights("total")
    monkeypatch.setattr(splitting, "SPLIT_MIN_VOXELS", 100)  # make the small test image "big"
    monkeypatch.setattr(splitting, "SPLIT_MIN_SLICES", 5)
    monkeypatch.setattr(splitting, "available_memory_bytes",
                        lambda device, fraction=0.7: 1000 if memory_short else 10 ** 12)
    planned = []
    real_plan = splitting.plan_chunks
    monkeypatch.setattr(splitting, "plan_chunks", lambda n, *a, **k: planned.append(n) or real_plan(n, *a, **k))
    img = small_ct(shape=(12, 12, 40))
    seg = totalsegmentator(img, None, device="cpu", quiet=True)
    assert seg.shape == img.shape
    assert bool(planned) == memory_short


def test_v1_order_relabels_the_multilabel_output(total_fast_home, tmp_path):
    seg = totalsegmentator(small_ct(), tmp_path / "seg.nii.gz", ml=True, fast=True, v1_order=True, device="cpu",
                           quiet=True)
    _, label_map = load_multilabel_nifti(tmp_path / "seg.nii.gz")
    assert label_map[7] == "aorta"  # v1 numbering
    assert len(label_map) == 104
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, *label_map}


def test_report_manifest(total_fast_home, tmp_path):
    report = tmp_path / "reports" / "run.json"
    totalsegmentator(small_ct(), tmp_path / "seg", fast=True, device="cpu", quiet=True, report=report)
    data = json.loads(report.read_text())
    assert data["task"] == "total" and data["fast"] is True and data["num_classes"] == 117
    assert data["output_files"] == sorted(f"{n}.nii.gz" for n in get_task("total").class_map.values())


def test_licensed_task_without_license_stops_before_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    from totalsegmentator.errors import LicenseError

    with pytest.raises(LicenseError, match="license"):
        totalsegmentator(small_ct(), tmp_path / "seg", task="heartchambers_highres", device="cpu", quiet=True)
    assert not (tmp_path / "seg").exists()


def test_missing_weights_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    from totalsegmentator.errors import WeightsError

    with pytest.raises(WeightsError) as info:
        totalsegmentator(small_ct(), tmp_path / "seg", fast=True, device="cpu", quiet=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "seg").exists()
    assert not any(p.name.startswith("Dataset") for p in config.weights_dir().glob("*"))


def _record_models(monkeypatch) -> list:
    """Dataset ids of the models the pipeline loads, in order (the background prefetch left out)."""
    import threading

    from totalsegmentator.inference import cache

    asked: list = []
    real = cache.get_model

    def recording(dataset_id, *args, **kwargs):
        if threading.current_thread().name != "totalseg-model-prefetch":
            asked.append(dataset_id)
        return real(dataset_id, *args, **kwargs)

    monkeypatch.setattr(cache, "get_model", recording)
    return asked


def test_body_seg_crops_with_the_body_model_first(task_home, tmp_path, monkeypatch):
    install_task_weights("total", modes=("fast",), body_seg=True)
    body_folder = next(config.weights_dir().glob("Dataset300_*/*"))
    make_constant_model(body_folder, 1)
    asked = _record_models(monkeypatch)
    img = small_ct()
    seg = totalsegmentator(img, None, fast=True, body_seg=True, device="cpu", quiet=True)
    assert asked == [300, 297]
    assert seg.shape == img.shape


def test_save_probabilities_writes_npz_and_pkl(total_fast_home, tmp_path):
    target = tmp_path / "probs" / "probabilities.npz"
    totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True, save_probabilities=target)
    probabilities = np.load(target)["probabilities"]
    assert probabilities.shape[0] == 118  # background + 117 classes, nnU-Net's (c, z, y, x) layout
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-3)
    assert target.with_suffix(".pkl").exists()


def test_remove_small_blobs_leaves_no_small_component(total_fast_home):
    from scipy import ndimage

    img = small_ct(shape=(20, 18, 16))
    seg = totalsegmentator(img, None, fast=True, device="cpu", quiet=True, remove_small_blobs=200.0)
    labels = np.asarray(seg.dataobj)
    # removal happens at the 3 mm model resolution, where one voxel is 27 mm3: 7 voxels or fewer go
    plain = np.asarray(totalsegmentator(img, None, fast=True, device="cpu", quiet=True).dataobj)
    assert (labels > 0).sum() < (plain > 0).sum()
    assert np.all((labels == plain) | (labels == 0))
    for label in np.unique(labels[labels > 0]):
        components, n = ndimage.label(labels == label)
        sizes = np.bincount(components.ravel())[1:]
        assert sizes.min() * 27.0 > 200.0 - 1e-6


@pytest.mark.parametrize("flag", ["higher_order_resampling", "higher_order_resampling_LEGACY"])
def test_resampling_variants_keep_the_input_grid(flag, total_fast_home):
    img = small_ct(shape=(20, 18, 16), spacing=(1.7, 1.7, 2.5))
    seg = totalsegmentator(img, None, fast=True, device="cpu", quiet=True, **{flag: True})
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine)
    assert np.asarray(seg.dataobj).any()


class _FirstLoad(Exception):
    pass


@pytest.mark.parametrize("task_name,kwargs", [(name, {}) for name in TASKS if name != "test"] + [
    ("total", {"roi_subset": ["liver", "spleen"]}), ("total", {"fast": True}), ("total", {"body_seg": True}),
    ("total", {"robust_crop": True, "roi_subset": ["brain"]}), ("total_mr", {"roi_subset": ["liver"]})])
def test_prefetched_model_is_the_first_one_the_run_loads(task_name, kwargs, task_home, monkeypatch):
    """``first_model`` names exactly the model the pipeline loads first (the one loaded while reading)."""
    from totalsegmentator import prefetch, weights
    from totalsegmentator.inference import cache

    def first_load(dataset_id, trainer, plans, configuration, folds, device, *args, **kw):
        raise _FirstLoad((dataset_id, trainer, plans, configuration, folds))

    monkeypatch.setattr(weights, "ensure_dataset", lambda *a, **k: None)
    monkeypatch.setattr(prefetch, "prefetch_model",
                        lambda key, device, quiet=False: prefetch.ModelPrefetch(None, device, quiet))
    monkeypatch.setattr(cache, "get_model", first_load)
    opts = Options(input=small_ct(), task=task_name, device="cpu", quiet=True, **kwargs).validated()
    expected = prefetch.first_model(get_task(task_name), opts.selected_mode(), opts.crop_plan(),
                                    opts.roi_subset_effective)
    with pytest.raises(_FirstLoad) as loaded:
        totalsegmentator(small_ct(), None, task=task_name, device="cpu", quiet=True, **kwargs)
    if expected is None:  # decided by another task's run (teeth's crop task)
        assert opts.crop_plan() is not None and opts.crop_plan().rough_model is None
    else:
        assert loaded.value.args[0] == expected


def test_prefetch_loads_into_the_cache_and_ignores_missing_weights(total_fast_home):
    from totalsegmentator import prefetch
    from totalsegmentator.inference import cache

    import torch

    from totalsegmentator.inference import predictor

    mode = get_task("total").modes["fast"]
    key = prefetch.first_model(get_task("total"), mode)
    predictor.gaussian_weights.cache_clear()
    prefetch.prefetch_model(key, "cpu").join()
    assert [m.result_folder.name.split("__")[0] for m in cache.cached_models()] == ["nnUNetTrainer_4000epochs_NoMirroring"]
    # the first prediction's Gaussian weights (float16 accumulator) are ready as well
    model = cache.cached_models()[0]
    predictor.gaussian_weights(tuple(model.patch_size), predictor.GAUSSIAN_SIGMA_SCALE,
                               predictor.GAUSSIAN_VALUE_SCALING, torch.float16, model.device)
    assert predictor.gaussian_weights.cache_info().hits == 1
    assert cache.cached_models()[0].result_folder.parent.name.startswith(f"Dataset{key[0]}_")
    missing = prefetch.prefetch_model((999, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,)), "cpu")
    missing.join()  # the error is left to the pipeline's own load
    assert len(cache.cached_models()) == 1
    import torch

    assert prefetch.prefetch_model(None, "cpu").device() == torch.device("cpu")
    with pytest.raises(OptionError, match="invalid device 'tpu'"):
        prefetch.prefetch_model(key, "tpu").device()


def test_first_tile_bytes_from_the_plans(total_fast_home):
    from totalsegmentator import prefetch
    from totalsegmentator.inference.locate import result_folder

    key = prefetch.first_model(get_task("total"), get_task("total").modes["fast"])
    plans = json.loads((result_folder(*key[:4]) / "plans.json").read_text())
    conf = plans["configurations"][key[3]]
    values = int(np.prod(conf["patch_size"])) * conf["architecture"]["arch_kwargs"]["features_per_stage"][0]
    assert prefetch.first_tile_bytes(key) == int(prefetch.TILE_WORKING_SET_FACTOR * values * 4)
    assert prefetch.first_tile_bytes(key, "bf16") == int(prefetch.TILE_WORKING_SET_FACTOR * values * 2)
    assert prefetch.first_tile_bytes((999,) + key[1:]) is None  # not installed


def test_first_tile_bytes_follows_inherited_configurations(tmp_path, monkeypatch):
    from totalsegmentator import prefetch

    folder = tmp_path / "Dataset517_x" / "T__P__child"
    folder.mkdir(parents=True)
    plans = {"configurations": {"base": {"patch_size": [16, 8, 4], "UNet_base_num_features": 32},
                                "child": {"inherits_from": "base", "patch_size": [8, 8, 8]}}}
    (folder / "plans.json").write_text(json.dumps(plans))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path))
    assert prefetch.first_tile_bytes((517, "T", "P", "child", (0,))) == int(prefetch.TILE_WORKING_SET_FACTOR *
                                                                           8 * 8 * 8 * 32 * 4)


@pytest.mark.parametrize("device,cuda_present,expected", [("cpu", True, True), ("mps", False, False),
                                                          ("gpu", False, True), ("gpu:1", True, False)])
def test_memory_of_the_first_tile_is_faulted_in_for_cpu_runs(device, cuda_present, expected, total_fast_home,
                                                              monkeypatch):
    """Once the input is read, CPU runs fault in the first model's tile memory on the waiting core."""
    from totalsegmentator import prefetch
    from totalsegmentator.inference import device as devices

    asked: list[int] = []
    monkeypatch.setattr(prefetch, "fault_in_background", lambda nbytes: asked.append(nbytes))
    monkeypatch.setattr(prefetch, "cuda_may_be_present", lambda: cuda_present)
    monkeypatch.setattr(devices, "resolve_device", lambda name, quiet=False: devices.torch.device("cpu"))
    seg = totalsegmentator(small_ct(), None, fast=True, device=device, quiet=True)
    assert seg.shape == small_ct().shape
    key = prefetch.first_model(get_task("total"), get_task("total").modes["fast"])
    assert asked == ([prefetch.first_tile_bytes(key)] if expected else [])


def test_prefetch_shortens_the_thread_switch_interval_while_it_runs(monkeypatch):
    """While the prefetch thread holds the GIL (imports, model load), the reading thread's numpy calls get it
    back within half a millisecond instead of 5 ms; the interval before the prefetch comes back after it,
    also when two prefetches overlap."""
    import sys
    import threading

    from totalsegmentator import prefetch
    from totalsegmentator.inference import device as device_module

    release = threading.Event()
    seen: list[float] = []

    def held_resolve(name, quiet=False):
        seen.append(sys.getswitchinterval())
        release.wait(10)
        return name

    monkeypatch.setattr(device_module, "resolve_device", held_resolve)
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.004)
        first = prefetch.prefetch_model(None, "cpu")
        second = prefetch.prefetch_model(None, "cpu")
        assert sys.getswitchinterval() == prefetch.PREFETCH_SWITCH_INTERVAL_S
        release.set()
        first.join()
        second.join()
        assert seen == [prefetch.PREFETCH_SWITCH_INTERVAL_S] * 2
        assert sys.getswitchinterval() == 0.004
    finally:
        release.set()
        sys.setswitchinterval(before)


def test_runs_pause_garbage_collection(total_fast_home, monkeypatch):
    """Automatic collection is off while a run lasts (imports and model loads would trigger full collections
    of ~280,000 objects) and back on after it."""
    import gc

    from totalsegmentator.inference import predictor
    from totalsegmentator.python_api import totalsegmentator

    seen = []
    real = predictor.predict_labels

    def recording(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_labels", recording)
    totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True)
    assert seen == [False]
    assert gc.isenabled()


def test_reading_and_resampling_do_not_wait_for_the_device(total_fast_home, monkeypatch):
    """The device (torch's import) is resolved in the background; the run waits for it only at the model."""
    import threading

    from totalsegmentator.inference import device as device_module
    from totalsegmentator.preprocessing import resampling

    resampled = threading.Event()
    events: list[str] = []
    real_resolve, real_resample = device_module.resolve_device, resampling.resample_image

    def slow_resolve(name, quiet=False):
        events.append("device asked")
        resampled.wait(10)  # a run that waited for the device before resampling would stall here
        events.append("device resolved")
        return real_resolve(name, quiet)

    def recording_resample(*args, **kwargs):
        events.append("resampled")
        resampled.set()
        return real_resample(*args, **kwargs)

    monkeypatch.setattr(device_module, "resolve_device", slow_resolve)
    monkeypatch.setattr(resampling, "resample_image", recording_resample)
    seg = totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True)
    assert sorted(events) == ["device asked", "device resolved", "resampled"]
    assert events.index("resampled") < events.index("device resolved")
    assert np.asarray(seg.dataobj).any()


@pytest.mark.parametrize("requested, cuda_present, resolves", [
    ("cpu", True, False), ("mps", True, False), ("gpu", False, False), ("gpu:1", False, False), ("gpu", True, True)])
def test_resampling_device_waits_for_the_device_only_where_cuda_can_be(requested, cuda_present, resolves,
                                                                      monkeypatch):
    import torch

    from totalsegmentator import pipeline, prefetch

    resolved = []
    monkeypatch.setattr(prefetch, "cuda_may_be_present", lambda: cuda_present)
    settings = pipeline.RunSettings(device_source=lambda: resolved.append(1) or torch.device("cpu"),
                                    requested_device=requested)
    assert settings.resampling_device() is None  # no CUDA here: scipy on the CPU
    assert resolved == ([1] if resolves else [])


def test_pipeline_resamples_on_the_device_it_is_given(total_fast_home, monkeypatch):
    """The device resampling path inside a whole run (the CPU standing in for CUDA): same geometry, labels
    as with scipy's resampling but for the voxels whose input moved by one HU."""
    import torch

    from totalsegmentator import pipeline
    from totalsegmentator.preprocessing import device_resampling

    img = small_ct(shape=(40, 36, 30), spacing=(1.7, 1.7, 2.5))
    reference = totalsegmentator(img, None, fast=True, device="cpu", quiet=True)
    used = []
    real = device_resampling.resample_image_on_device
    monkeypatch.setattr(device_resampling, "resample_image_on_device",
                        lambda *a, **k: used.append(a[1:]) or real(*a, **k))
    monkeypatch.setattr(pipeline.RunSettings, "resampling_device", lambda self: torch.device("cpu"))
    seg = totalsegmentator(img, None, fast=True, device="cpu", quiet=True)
    assert len(used) == 1 and used[0][1] == 1  # order 1, the default
    assert seg.shape == reference.shape and np.array_equal(seg.affine, reference.affine)
    same = np.asarray(seg.dataobj) == np.asarray(reference.dataobj)
    assert same.mean() >= 0.99 and np.asarray(seg.dataobj).any()


def test_precision_reaches_the_predictor(total_fast_home, monkeypatch):
    from totalsegmentator.inference import predictor

    seen, compiled = [], []
    real = predictor.predict_labels

    def recording(*args, **kwargs):
        seen.append(kwargs["mixed_precision"])
        compiled.append(kwargs["compile_mode"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict_labels", recording)
    monkeypatch.delenv("TOTALSEG_PRECISION", raising=False)
    monkeypatch.delenv("TOTALSEG_COMPILE", raising=False)
    reference = totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True)
    half = totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True, precision="bf16", compile="off")
    monkeypatch.setenv("TOTALSEG_PRECISION", "fp32")
    monkeypatch.setenv("TOTALSEG_COMPILE", "off")
    totalsegmentator(small_ct(), None, fast=True, device="cpu", quiet=True)
    assert seen == ["auto", "bf16", "fp32"]
    assert compiled == ["auto", "off", "off"]
    assert half.shape == reference.shape
