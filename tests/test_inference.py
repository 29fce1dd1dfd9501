"""Our in-memory predictor against nnU-Net's own nnUNetPredictor on tiny models; loading errors; devices; cache."""
from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from totalsegmentator.errors import InputImageError, OptionError, WeightsError
from totalsegmentator.inference import cache, device as device_mod, predictor
from totalsegmentator.inference.model import find_dataset_folder, load_model
from totalsegmentator.inference.predictor import predict_labels, predict_logits
from totalsegmentator.registry import get_dataset
from totalsegmentator.testing.tiny_weights import write_tiny_dataset

CPU = torch.device("cpu")
SHAPE_XYZ = (40, 37, 33)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a busy machine threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {
        "root": root,
        # body: nnUNetTrainer, 1.5 mm, 2 classes, one fold
        "single": write_tiny_dataset(root, 299),
        # pulmonary_artery_landmarks: nnUNetTrainer, anisotropic plans spacing, 7 classes; three folds
        "folds": write_tiny_dataset(root, 514, folds=(0, 1, 2)),
    }


@pytest.fixture(scope="module")
def single(weights):
    return load_model(weights["single"], (0,), CPU)


def ct_like(shape=SHAPE_XYZ, seed=0) -> np.ndarray:
    """Random CT-like volume: air border, soft tissue, some bone; one empty slab so that cropping happens."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 60, shape)
    image[rng.random(shape) < 0.1] = 800
    image[:, :, :2] = -1000
    image[:3] = 0
    return image.astype(np.float32)


def nnunet_predictor(folder, folds, step_size=0.5, on_device=False):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=step_size, use_gaussian=True, use_mirroring=False,
                        perform_everything_on_device=on_device, device=CPU, verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), folds, "checkpoint_final.pth")
    return p


def preprocess(model, image_xyz, spacing_xyz):
    data, _, props = model.preprocessor.run_case_npy(image_xyz.transpose(2, 1, 0)[None], None,
                                                     {"spacing": list(reversed(spacing_xyz))}, model.plans_manager,
                                                     model.configuration_manager, model.dataset_json)
    return torch.from_numpy(data), props


def reference_logits_float64(model, data, step_size):
    """Independent float64 Gaussian-weighted sliding window (tile positions and Gaussian as nnU-Net defines)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    patch = model.patch_size
    steps = compute_steps_for_sliding_window(tuple(data.shape[1:]), patch, step_size)
    gaussian = compute_gaussian(patch, 1 / 8, 10, dtype=torch.float64, device=CPU)
    total = torch.zeros((model.num_classes, *data.shape[1:]), dtype=torch.float64)
    for network in model.fold_networks():
        acc = torch.zeros_like(total)
        weight = torch.zeros(data.shape[1:], dtype=torch.float64)
        for start in itertools.product(*steps):
            sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
            with torch.inference_mode():
                out = network(data[(slice(None), *sl)][None].contiguous())[0].double()
            acc[(slice(None), *sl)] += out * gaussian
            weight[sl] += gaussian
        total += acc / weight
    return total / model.num_folds


# ---------------------------------------------------------------------------------------------------------------
# agreement with nnU-Net

@pytest.mark.parametrize("on_device", [False, True])
def test_logits_match_nnunet_exactly_in_half_precision(weights, single, on_device):
    data, _ = preprocess(single, ct_like(), (1.5, 1.5, 1.5))
    reference = nnunet_predictor(weights["single"], (0,), 0.5, on_device).predict_logits_from_preprocessed_data(data)
    ours = predict_logits(single, data, 0.5, accumulate_dtype=torch.float16, mixed_precision="exact")
    assert ours.shape == reference.shape == (single.num_classes, *data.shape[1:])
    assert torch.allclose(ours.float(), reference.float(), atol=1e-4, rtol=0)
    assert torch.equal(ours.argmax(0), reference.argmax(0))


def test_float32_logits_are_the_exact_gaussian_average(single):
    data, _ = preprocess(single, ct_like(seed=1), (1.5, 1.5, 1.5))
    ours = predict_logits(single, data, 0.5, accumulate_dtype=torch.float32)
    assert ours.dtype == torch.float32
    reference = reference_logits_float64(single, data, 0.5)
    assert torch.allclose(ours.double(), reference, atol=1e-4, rtol=1e-5)


def test_float32_labels_differ_from_nnunet_only_by_its_rounding(weights, single):
    """nnU-Net's float16 accumulator (and float16 Gaussian, whose tails underflow) is off by up to about two
    logit units where only Gaussian tails overlap; our float32 result is the exact average, so labels differ only
    there."""
    data, _ = preprocess(single, ct_like(seed=2), (1.5, 1.5, 1.5))
    nnunet = nnunet_predictor(weights["single"], (0,)).predict_logits_from_preprocessed_data(data).argmax(0)
    ours = predict_logits(single, data, 0.5, accumulate_dtype=torch.float32).argmax(0)
    exact = reference_logits_float64(single, data, 0.5)
    top2 = exact.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-4
    assert torch.equal(ours[decided], exact.argmax(0)[decided])
    assert (ours != nnunet).float().mean() < 0.01


@pytest.mark.parametrize("spacing_xyz", [(1.5, 1.5, 1.5), (1.2, 1.9, 1.4)])
def test_labels_and_probabilities_match_nnunet_end_to_end(weights, single, spacing_xyz):
    """Same labels as nnUNetPredictor.predict_single_npy_array, with and without resampling to the plans."""
    image = ct_like(seed=3)
    ref_seg, ref_prob = nnunet_predictor(weights["single"], (0,)).predict_single_npy_array(
        image.transpose(2, 1, 0)[None], {"spacing": list(reversed(spacing_xyz))}, None, None, True)
    labels, prob = predict_labels(single, image, spacing_xyz, 0.5, CPU, return_probabilities=True,
                                  accumulate_dtype=torch.float16, mixed_precision="exact")
    assert labels.shape == SHAPE_XYZ and labels.dtype == np.uint8
    assert np.array_equal(labels, ref_seg.transpose(2, 1, 0))
    assert prob.dtype == np.float32 and prob.shape == (single.num_classes, *SHAPE_XYZ[::-1])
    assert np.allclose(prob, ref_prob, atol=1e-5)
    assert np.array_equal(prob.argmax(0).transpose(2, 1, 0), labels)
    assert set(np.unique(labels)) == {0, 1, 2}

    plain = predict_labels(single, image, spacing_xyz, 0.5, accumulate_dtype=torch.float16)
    assert np.array_equal(plain, labels)  # the label-only export path gives the same answer


def test_multi_fold_ensemble_matches_nnunet(weights):
    model = load_model(weights["folds"], None, CPU)
    assert model.folds == (0, 1, 2)
    data, _ = preprocess(model, ct_like((36, 34, 34), seed=4), (0.9, 0.8, 1.1))
    reference = nnunet_predictor(weights["folds"], None).predict_logits_from_preprocessed_data(data)
    ours = predict_logits(model, data, 0.5, accumulate_dtype=torch.float16, mixed_precision="exact")
    assert torch.allclose(ours.float(), reference.float(), atol=1e-4, rtol=0)
    assert torch.equal(ours.argmax(0), reference.argmax(0))
    ensemble = predict_logits(model, data, 0.5, accumulate_dtype=torch.float32)
    assert torch.allclose(ensemble.double(), reference_logits_float64(model, data, 0.5), atol=1e-4, rtol=1e-5)

    fold0 = predict_logits(load_model(weights["folds"], (0,), CPU), data, 0.5)
    assert (fold0 - ensemble).abs().max() > 0.1  # the ensemble really averages different networks


def test_image_smaller_than_patch_and_other_step_size(weights, single):
    image = ct_like((20, 15, 11), seed=5)
    ref = nnunet_predictor(weights["single"], (0,), 0.8).predict_single_npy_array(
        image.transpose(2, 1, 0)[None], {"spacing": [1.5, 1.5, 1.5]})
    labels = predict_labels(single, image, (1.5, 1.5, 1.5), 0.8, accumulate_dtype=torch.float16)
    assert labels.shape == (20, 15, 11)
    assert np.array_equal(labels, ref.transpose(2, 1, 0))


def test_single_tile_logits_match_nnunet_exactly(weights, single):
    """Images within one tile take a shortcut (no zero-filled accumulator); the logits stay nnU-Net's."""
    for name, model, shape in (("single", single, (20, 15, 11)),
                               ("folds", load_model(weights["folds"], None, CPU), (14, 12, 10))):
        data, _ = preprocess(model, ct_like(shape, seed=15), (1.5, 1.5, 1.5))
        assert all(n <= p for n, p in zip(data.shape[1:], model.patch_size))  # one tile
        reference = nnunet_predictor(weights[name], model.folds).predict_logits_from_preprocessed_data(data)
        assert torch.equal(predict_logits(model, data, 0.5, mixed_precision="exact"), reference)
        # float32: one accumulator for all folds; with one tile the weighted mean is the mean network output
        exact = predict_logits(model, data, 0.5, accumulate_dtype=torch.float32, mixed_precision="exact")
        from acvl_utils.cropping_and_padding.padding import pad_nd_image

        padded, revert = pad_nd_image(data, model.patch_size, "constant", {"value": 0}, True, None)
        with torch.inference_mode():
            mean = sum(net(padded[None])[0] for net in model.fold_networks()) / model.num_folds
        assert torch.allclose(exact, mean[(slice(None), *revert[1:])], atol=1e-5)


def test_tile_batches_give_the_same_logits(single):
    data, _ = preprocess(single, ct_like(seed=6), (1.5, 1.5, 1.5))
    one = predict_logits(single, data, 0.5, accumulate_dtype=torch.float32)
    batched = predict_logits(single, data, 0.5, tile_batch_size=3, accumulate_dtype=torch.float32)
    assert torch.allclose(one, batched, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# robustness and options

def test_non_finite_voxels_are_replaced(single):
    image = ct_like(seed=7)
    clean = predict_labels(single, image, (1.5, 1.5, 1.5))
    broken = image.copy()
    broken[5, 5, 5] = np.nan
    broken[6, 6, 6] = np.inf
    repaired = image.copy()
    repaired[5, 5, 5] = 0
    repaired[6, 6, 6] = image[np.isfinite(image)].max()
    labels = predict_labels(single, broken, (1.5, 1.5, 1.5))
    assert np.array_equal(labels, predict_labels(single, repaired, (1.5, 1.5, 1.5)))
    assert labels.shape == clean.shape


def test_all_zero_image_and_integer_input(single):
    zeros = predict_labels(single, np.zeros((12, 10, 9), np.int16), (1.5, 1.5, 1.5))
    assert zeros.shape == (12, 10, 9) and zeros.dtype == np.uint8
    image = ct_like(seed=8)
    as_int = predict_labels(single, image.astype(np.int16), (1.5, 1.5, 1.5))
    assert np.array_equal(as_int, predict_labels(single, image.astype(np.int16).astype(np.float64), (1.5, 1.5, 1.5)))


def test_bad_arguments(single):
    with pytest.raises(InputImageError, match="spacing"):
        predict_labels(single, ct_like(), (1.5, 0, 1.5))
    with pytest.raises(InputImageError, match="3D"):
        predict_labels(single, np.zeros((4, 4)), (1.5, 1.5, 1.5))
    with pytest.raises(ValueError, match="step_size"):
        predict_labels(single, ct_like(), (1.5, 1.5, 1.5), 0)
    with pytest.raises(ValueError, match="loaded on cpu"):
        predict_labels(single, ct_like(), (1.5, 1.5, 1.5), 0.5, torch.device("meta"))


def test_progress_bar_over_tiles(single, capsys):
    predict_labels(single, ct_like(), (1.5, 1.5, 1.5), 0.5, progress=True)
    err = capsys.readouterr().err
    assert "Predicting" in err and "tile" in err
    predict_labels(single, ct_like(), (1.5, 1.5, 1.5), 0.5, progress=False)
    assert "Predicting" not in capsys.readouterr().err


@pytest.mark.parametrize("precision, float32", [("fp32", True), ("auto", False), ("fp16", False)])
def test_float32_on_cuda_runs_without_tensorfloat32(monkeypatch, precision, float32):
    """Asked for float32 on CUDA, cuDNN and CUDA's matrix products do not round to TensorFloat-32 (PyTorch's
    default for convolutions) while the sliding window runs; the switches are restored after it."""
    seen = []

    def fake(model, data, *args):
        seen.append(predictor._cuda_flags())
        return torch.zeros((2, *data.shape[1:]))

    monkeypatch.setattr(predictor, "_sliding_window", fake)
    model = SimpleNamespace(device=torch.device("cuda"), num_input_channels=1, lock=threading.Lock())
    before = predictor._cuda_flags()
    predict_logits(model, torch.zeros((1, 4, 4, 4)), mixed_precision=precision)
    assert seen == [(True, before[1] and not float32, before[2] and not float32)]
    assert predictor._cuda_flags() == before


def test_out_of_memory_on_device_falls_back_to_cpu(single, monkeypatch, caplog):
    data, _ = preprocess(single, ct_like(seed=9), (1.5, 1.5, 1.5))
    expected = predict_logits(single, data, 0.5)
    real = predictor._sliding_window
    used = []

    def fake(model, data, step_size, results_device, *args):
        used.append(results_device.type)
        if results_device.type != "cpu":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(model, data, step_size, results_device, *args)

    monkeypatch.setattr(predictor, "_sliding_window", fake)
    logits = predict_logits(single, data, 0.5, results_device=torch.device("meta"))
    assert used == ["meta", "cpu"]
    assert torch.equal(logits, expected)
    assert "accumulating them on the CPU" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# speed: finiteness check, shared preprocessing

@pytest.mark.parametrize("tile", [(32, 32, 32), (128, 128, 128), (112, 160, 128), (40, 56, 24), (7, 9, 5)])
def test_gaussian_weights_are_nnunets(tile):
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    for dtype in (torch.float16, torch.float32, torch.float64):
        ours = predictor.gaussian_weights(tile, 1 / 8, 10, dtype, CPU)
        assert torch.equal(ours, compute_gaussian(tile, 1 / 8, 10, dtype=dtype, device=CPU))
        assert ours.dtype == dtype and ours.shape == tile


def test_max_indices_are_argmax_with_ties():
    """The export takes torch.max(...).indices for speed; it must pick the first maximum as argmax does."""
    rng = np.random.default_rng(11)
    for dtype in (np.float16, np.float32):
        logits = torch.from_numpy(rng.integers(-2, 3, (9, 13, 8, 7)).astype(dtype))  # many exact ties
        assert torch.equal(torch.max(logits, 0).indices, logits.argmax(0))


def test_all_finite_sees_nan_and_inf():
    t = torch.zeros(3, 4, 5, dtype=torch.float16)
    assert predictor._all_finite(t)
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = t.clone()
        u[1, 2, 3] = bad
        assert not predictor._all_finite(u)


def test_precision_switch(single, monkeypatch):
    data, _ = preprocess(single, ct_like(seed=14), (1.5, 1.5, 1.5))
    default = predict_logits(single, data, 0.5)
    assert torch.equal(predict_logits(single, data, 0.5, mixed_precision="fp32"), default)  # CPU default: fp32
    assert predictor.autocast_dtype_for(torch.device("cuda"), None) == torch.float16  # nnU-Net's choice on CUDA
    assert predictor.autocast_dtype_for(torch.device("cpu"), True) == torch.bfloat16
    half = predict_logits(single, data, 0.5, mixed_precision="bf16")
    assert half.dtype == torch.float16 and not torch.equal(half, default)
    assert (half.argmax(0) == default.argmax(0)).float().mean() > 0.9
    monkeypatch.setenv(predictor.PRECISION_ENV, "bf16")
    assert torch.equal(predict_logits(single, data, 0.5), half)
    monkeypatch.setenv(predictor.PRECISION_ENV, "fp64")
    with pytest.raises(ValueError, match="unknown precision 'fp64'"):
        predict_logits(single, data, 0.5)


def test_preprocessing_is_shared_by_models_with_the_same_plans(weights, single, tmp_path, monkeypatch):
    """Parts of a multi-model task preprocess the same image once; a changed image is preprocessed again."""
    other = load_model(write_tiny_dataset(tmp_path, 299, seed=5), (0,), CPU)
    assert predictor.preprocessing_fingerprint(other) == predictor.preprocessing_fingerprint(single)
    assert predictor.preprocessing_fingerprint(other) != predictor.preprocessing_fingerprint(
        load_model(weights["folds"], (0,), CPU))
    image = ct_like(seed=12)
    expected = [predict_labels(m, image.copy(), (1.5, 1.5, 1.5)) for m in (single, other)]
    assert not np.array_equal(expected[0], expected[1])  # different networks

    calls = []
    real = type(single.preprocessor).run_case_npy

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(single.preprocessor), "run_case_npy", counting)
    predictor.release_shared_preprocessing()
    assert np.array_equal(predict_labels(single, image, (1.5, 1.5, 1.5)), expected[0])
    assert np.array_equal(predict_labels(other, image, (1.5, 1.5, 1.5)), expected[1])
    assert len(calls) == 1
    predict_labels(other, image, (1.5, 1.5, 2.0))  # other spacing
    assert len(calls) == 2
    image[10:20] = 300.0  # changed in place: not reused
    changed = predict_labels(single, image, (1.5, 1.5, 1.5))
    assert len(calls) == 3
    predictor.release_shared_preprocessing()
    assert np.array_equal(changed, predict_labels(single, image.copy(), (1.5, 1.5, 1.5)))
    # Fortran-ordered images are shared too; strided views are predicted, just not shared
    fortran = np.asfortranarray(image)
    assert np.array_equal(predict_labels(single, fortran, (1.5, 1.5, 1.5)), changed)
    assert np.array_equal(predict_labels(other, fortran, (1.5, 1.5, 1.5)), predict_labels(other, image, (1.5,) * 3))
    calls.clear()
    view = np.zeros((80, 37, 33), np.float32)[::2]
    view[:] = image
    predict_labels(single, view, (1.5, 1.5, 1.5))
    predict_labels(other, view, (1.5, 1.5, 1.5))
    assert len(calls) == 2


def test_shared_preprocessing_is_dropped_with_the_image(single):
    import gc

    image = ct_like(seed=13)
    predict_labels(single, image, (1.5, 1.5, 1.5))
    assert predictor._shared_preprocessing._results
    del image
    gc.collect()
    assert not predictor._shared_preprocessing._results


# ---------------------------------------------------------------------------------------------------------------
# loading errors

def test_find_dataset_folder(weights, tmp_path):
    assert find_dataset_folder(299, weights["root"]) == weights["root"] / get_dataset(299).folder
    (tmp_path / "Dataset517_something").mkdir()
    assert find_dataset_folder(517, tmp_path) == tmp_path / "Dataset517_something"
    with pytest.raises(WeightsError) as info:
        find_dataset_folder(291, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / get_dataset(291).folder) in message
    assert "totalseg_download_weights -t total" in message


def test_missing_fold_and_broken_checkpoint(weights, tmp_path):
    with pytest.raises(WeightsError, match=r"fold_3.*totalseg_download_weights -t body"):
        load_model(weights["single"], (0, 3), CPU)
    with pytest.raises(WeightsError, match="model folder"):
        load_model(weights["root"] / get_dataset(299).folder / "nnUNetTrainer__nnUNetPlans__2d", (0,), CPU)

    folder = write_tiny_dataset(tmp_path, 305)
    checkpoint = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # an interrupted download
    with pytest.raises(WeightsError, match=r"unreadable.*totalseg_download_weights -t vertebrae_body") as info:
        load_model(folder, (0,), CPU)
    assert "\n" not in str(info.value)
    (folder / "plans.json").unlink()
    with pytest.raises(WeightsError, match="plans.json"):
        load_model(folder, (0,), CPU)


def test_checkpoint_loads_without_full_unpickling(weights, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_model(weights["single"], (0,), CPU)
    assert calls == [True]  # numpy scalars in the training log are allow-listed
    assert model.labels == {1: "body_trunc", 2: "body_extremities"}
    assert model.num_classes == 3 and model.patch_size == (32, 32, 32) and model.spacing_zyx == (1.5, 1.5, 1.5)


def test_checkpoint_with_arbitrary_objects_falls_back_to_full_load(tmp_path, caplog):
    import logging
    from pathlib import PurePosixPath

    folder = write_tiny_dataset(tmp_path, 300)
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["init_args"]["output_folder"] = PurePosixPath("/somewhere")  # not allowed by weights_only
    torch.save(checkpoint, path)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    with caplog.at_level(logging.DEBUG, logger="totalsegmentator.inference.model"):
        model = load_model(folder, (0,), CPU)
    assert "weights_only=False" in caplog.text
    assert model.labels == {1: "body_trunc", 2: "body_extremities"}


def test_trainer_with_its_own_architecture(tmp_path):
    folder = write_tiny_dataset(tmp_path, 299, trainer="nnUNetTrainerBN")
    model = load_model(folder, (0,), CPU)
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.network.modules())


# ---------------------------------------------------------------------------------------------------------------
# devices and cache

def test_resolve_device_names(monkeypatch, capsys):
    monkeypatch.setattr(device_mod, "_warned", set())
    assert device_mod.resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.resolve_device("gpu") == CPU
    assert device_mod.resolve_device("gpu") == CPU
    err = capsys.readouterr().err
    assert err.count("no CUDA GPU found") == 1  # warned once

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_mod.resolve_device("gpu") == torch.device("cuda", 0)
    assert device_mod.resolve_device("gpu:1") == torch.device("cuda", 1)
    assert device_mod.resolve_device("gpu:2") == CPU
    assert "does not exist (found 2 GPU(s))" in capsys.readouterr().err
    assert device_mod.resolve_device("gpu:5", quiet=True) == CPU
    assert capsys.readouterr().err == ""

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_mod.resolve_device("mps") == CPU
    for bad in ("cuda", "GPU", "gpu:", "gpu:x", "gpu:-1", "tpu", ""):
        with pytest.raises(OptionError, match="invalid device"):
            device_mod.resolve_device(bad)


def test_model_cache(weights):
    cache.clear_cache()
    root = weights["root"]
    a = cache.get_model(299, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,), "cpu", weights_dir=root)
    b = cache.get_model(299, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,), CPU, weights_dir=root)
    assert a is b
    assert a.result_folder == weights["single"].resolve()
    other_folds = cache.get_model(514, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0, 2), CPU, weights_dir=root)
    assert other_folds.folds == (0, 2)
    assert len(cache.cached_models()) == 2
    cache.clear_cache()
    assert cache.cached_models() == []
    c = cache.get_model(299, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,), CPU, weights_dir=root)
    assert c is not a
    cache.clear_cache()


def test_cache_uses_configured_weights_dir(totalseg_home):
    from totalsegmentator import config

    write_tiny_dataset(config.weights_dir(), 300)
    model = cache.get_model(300, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,), CPU)
    assert model.spacing_zyx == (6.0, 6.0, 6.0)
    with pytest.raises(WeightsError, match="totalseg_download_weights -t body"):
        cache.get_model(299, "nnUNetTrainer", "nnUNetPlans", "3d_fullres", (0,), CPU)
    cache.clear_cache()


def test_single_fold_model_holds_the_checkpoint_tensors(weights, single):
    """One fold: the network is built on the meta device and the checkpoint's tensors become its parameters."""
    from totalsegmentator.inference.model import load_checkpoint

    stored = load_checkpoint(weights["single"] / "fold_0" / "checkpoint_final.pth")["network_weights"]
    state = single.network.state_dict()
    assert set(state) == set(stored)
    for name, value in stored.items():
        assert not state[name].is_meta and state[name].dtype == torch.float32
        assert torch.equal(state[name], value), name
    fresh = load_model(weights["single"], (0,), CPU)
    assert all(torch.equal(a, b) for a, b in zip(fresh.network.state_dict().values(), state.values()))


def test_network_with_weights_falls_back_to_a_copy():
    """Architectures with tensors outside the state dict, and checkpoints in another dtype, are copied into."""
    from totalsegmentator.inference.model import network_with_weights

    class WithBuffer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)
            self.register_buffer("scale", torch.full((1,), 3.0), persistent=False)

        def forward(self, x):
            return self.conv(x) * self.scale

    weights = {"weight": torch.ones(2, 1, 1, 1, 1), "bias": torch.zeros(2)}
    plain = network_with_weights(lambda: torch.nn.Conv3d(1, 2, 1), dict(weights), own_tensors=True)
    assert plain.weight.data_ptr() == weights["weight"].data_ptr()  # no copy
    buffered = network_with_weights(WithBuffer, {f"conv.{k}": v for k, v in weights.items()}, own_tensors=True)
    assert not buffered.scale.is_meta and float(buffered.scale) == 3.0
    assert torch.equal(buffered.conv.weight, weights["weight"])
    half = network_with_weights(lambda: torch.nn.Conv3d(1, 2, 1), {k: v.half() for k, v in weights.items()},
                                own_tensors=True)
    assert half.weight.dtype == torch.float32 and torch.equal(half.weight, weights["weight"])
    with pytest.raises(RuntimeError):
        network_with_weights(lambda: torch.nn.Conv3d(1, 3, 1), dict(weights), own_tensors=True)


def test_compile_decision(single, weights):
    from totalsegmentator.inference.compile import AUTO_MIN_FORWARDS, wants_compile

    assert not wants_compile("off", single, 1000)
    assert wants_compile("on", single, 1)
    assert not wants_compile("auto", single, 1000)  # a tiny patch never pays for the compile time
    multi = load_model(weights["folds"], (0, 1, 2), CPU)
    assert not wants_compile("on", multi, 1000)  # fold switching and frozen weights do not mix
    big = type(single)(**{**single.__dict__, "compiled": {}})
    big.configuration_manager = type("CM", (), {"patch_size": [128, 128, 128]})()
    assert wants_compile("auto", big, AUTO_MIN_FORWARDS) and not wants_compile("auto", big, AUTO_MIN_FORWARDS - 1)
    with pytest.raises(ValueError, match="auto, on, off"):
        wants_compile("yes", single, 1)


def test_compiled_network_gives_the_eager_labels(single):
    image = ct_like()
    eager = predict_labels(single, image, (1.5, 1.5, 1.5), compile_mode="off")
    compiled = predict_labels(single, image, (1.5, 1.5, 1.5), compile_mode="on")
    assert single.compiled.get("module") is not None and not single.compiled.get("failed")
    assert (compiled == eager).mean() >= 0.999
    logits_eager = predict_logits(single, torch.from_numpy(image[None]), accumulate_dtype=torch.float32)
    logits_compiled = predict_logits(single, torch.from_numpy(image[None]), accumulate_dtype=torch.float32,
                                     compile_mode="on")
    torch.testing.assert_close(logits_compiled, logits_eager, rtol=1e-4, atol=1e-4)


def test_compile_failure_falls_back_to_eager(weights, monkeypatch, caplog):
    model = load_model(weights["single"], (0,), CPU)

    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    image = ct_like()
    with caplog.at_level("WARNING"):
        labels = predict_labels(model, image, (1.5, 1.5, 1.5), compile_mode="on")
    assert model.compiled["failed"]
    assert "torch.compile failed" in caplog.text and "no C++ compiler found" in caplog.text
    np.testing.assert_array_equal(labels, predict_labels(model, image, (1.5, 1.5, 1.5), compile_mode="off"))


def test_shared_preprocessing_ignores_the_late_death_of_an_older_image():
    """The weak-reference callback of an image that died may run late, in any thread: it must not drop the
    entries of the image that replaced it."""
    import gc

    shared = predictor._SharedPreprocessing()
    first = np.zeros((4, 5, 6), np.float32)
    shared.get(first, [1.0, 1.0, 1.0], "f")
    first_ref = shared._ref
    second = np.ones((4, 5, 6), np.float32)
    signature, cached = shared.get(second, [1.0, 1.0, 1.0], "f")
    assert cached is None
    shared.put(signature, "f", ("data", {}))
    shared._forget(first_ref)  # the first image's callback, arriving after the second image took over
    assert shared.get(second, [1.0, 1.0, 1.0], "f")[1] == ("data", {})
    del second
    gc.collect()
    assert shared._results == {} and shared._ref is None


def test_the_standard_preprocessor_is_taken_without_nnunets_search(weights, monkeypatch):
    """DefaultPreprocessor is imported directly; any other name still goes through nnU-Net's lookup."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling import plans_handler

    from totalsegmentator.inference import model as model_module

    searched: list[str] = []

    def search(folder, name, current_module):
        searched.append(name)
        return DefaultPreprocessor

    monkeypatch.setattr(plans_handler, "recursive_find_python_class", search)
    loaded = load_model(weights["single"], (0,), CPU)
    assert type(loaded.preprocessor) is DefaultPreprocessor and searched == []

    other = plans_handler.ConfigurationManager(
        dict(loaded.configuration_manager.configuration, preprocessor_name="MyPreprocessor"))
    assert type(model_module._preprocessor(other)) is DefaultPreprocessor
    assert searched == ["MyPreprocessor"]
