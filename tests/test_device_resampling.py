"""Resampling on a torch device (orders 0 and 1; CUDA in real runs, the CPU here) against scipy's zoom."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from totalsegmentator.preprocessing.device_resampling import zoom_on_device
from totalsegmentator.preprocessing.resampling import resample_image

CPU = torch.device("cpu")
RNG = np.random.default_rng(11)
ZOOMS = [(0.5, 1.7, 0.9), (2.0, 0.34, 1.0), (0.8 / 1.5, 0.8 / 1.5, 1.0), (3.1, 2.2, 0.26)]


def _scipy(data: np.ndarray, zoom, order: int) -> np.ndarray:
    return ndimage.zoom(data.astype(np.float64), zoom, order=order, mode="nearest")


@pytest.mark.parametrize("zoom", ZOOMS)
def test_order_0_picks_scipys_voxels(zoom):
    data = RNG.integers(-1024, 3000, size=(23, 17, 11)).astype(np.int16)
    out = zoom_on_device(data, zoom, 0, CPU)
    assert out.dtype == torch.int16
    assert np.array_equal(out.numpy(), _scipy(data, zoom, 0).astype(np.int16))


@pytest.mark.parametrize("zoom", ZOOMS)
def test_order_1_values_agree_with_scipy(zoom):
    data = RNG.integers(-1024, 3000, size=(23, 17, 11)).astype(np.int16)
    out = zoom_on_device(data, zoom, 1, CPU)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), _scipy(data, zoom, 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_image_on_a_device_matches_the_cpu_path(order):
    data = RNG.integers(-1024, 3000, size=(30, 25, 12)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    on_cpu, affine_cpu, zoom_cpu = resample_image(data, affine, (1.5, 1.5, 1.5), order=order)
    on_device, affine_dev, zoom_dev = resample_image(data, affine, (1.5, 1.5, 1.5), order=order, device=CPU)
    assert on_device.dtype == np.int32 and on_device.shape == on_cpu.shape
    assert np.array_equal(affine_cpu, affine_dev) and np.array_equal(zoom_cpu, zoom_dev)
    differ = on_device != on_cpu
    if order == 1:  # truncation of values that are integers exactly: both sides of it by rounding
        assert np.abs(on_device.astype(np.int64) - on_cpu).max() <= 1
        assert differ.mean() <= 0.005
    else:  # nearest voxels, and order 3 goes to scipy
        assert not differ.any()


def test_real_ct_within_the_stated_tolerance(shared_data):
    img = nib.load(shared_data / "example_ct.nii.gz")
    data = np.asanyarray(img.dataobj)
    zoom = (3.0 / 1.5, 3.0 / 1.5, 3.0 / 1.5)  # 3 mm example to the 1.5 mm of task total
    expected = _scipy(data, zoom, 1).astype(np.int32)
    got = zoom_on_device(data, zoom, 1, CPU).to(torch.int32).numpy()
    differ = got != expected
    assert np.abs(got.astype(np.int64) - expected).max() <= 1
    assert differ.mean() <= 0.002, differ.mean()


@pytest.mark.parametrize("dtype", [">i2", "<u2", "u4", ">f4", "f2", "i1", "u1"])
@pytest.mark.parametrize("order", [0, 1])
def test_any_voxel_type_and_byte_order(dtype, order):
    data = RNG.integers(0, 120, size=(9, 7, 5)).astype(dtype)
    out, _, _ = resample_image(data, np.eye(4), (0.6, 1.4, 2.0), order=order, device=CPU)
    expected, _, _ = resample_image(data, np.eye(4), (0.6, 1.4, 2.0), order=order)
    assert out.dtype == np.int32
    assert np.abs(out.astype(np.int64) - expected).max() <= (1 if order else 0)


def test_higher_orders_are_refused_on_a_device():
    with pytest.raises(ValueError, match="prefilter"):
        zoom_on_device(np.zeros((4, 4, 4), np.int16), (2, 2, 2), 3, CPU)
