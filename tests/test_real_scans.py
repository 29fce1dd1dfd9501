"""The real example scans of ../shared/data through the whole pipeline with fixture weights (skipped without
../shared). Fixture weights are random, so these tests check geometry, headers and files, not anatomy."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.io.label_header import load_multilabel_nifti
from totalsegmentator.python_api import totalsegmentator
from totalsegmentator.registry import get_task
from totalsegmentator.testing.tiny_weights import install_task_weights

# the smallest network the fixtures can build: real scans are large, the tests check geometry and files
FAST_FIXTURE = {"features": (2, 4), "patch_size": (64, 64, 64)}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Fixture weights of total and total_mr (read by conftest's ``weights_home``)."""
    weights = tmp_path_factory.mktemp("weights")
    for task in ("total", "total_mr"):
        install_task_weights(task, weights, modes=("default", "fast", "fastest"), **FAST_FIXTURE)
    return weights


RUNS = [
    ("example_ct_sm.nii.gz", "total", "default"),
    ("example_ct_sm.nii.gz", "total", "fast"),
    ("example_ct_sm.nii.gz", "total", "fastest"),
    ("example_ct.nii.gz", "total", "default"),
    ("example_ct.nii.gz", "total", "fast"),
    ("example_ct.nii.gz", "total", "fastest"),
    ("example_mr_sm.nii.gz", "total_mr", "default"),
    ("example_mr_sm.nii.gz", "total_mr", "fast"),
]


@pytest.mark.parametrize("scan,task,mode", RUNS)
def test_real_scan(scan, task, mode, shared_data, weights_home, tmp_path):
    source = nib.load(shared_data / scan)
    out = tmp_path / "seg.nii.gz"
    seg = totalsegmentator(shared_data / scan, out, ml=True, task=task, fast=mode == "fast",
                           fastest=mode == "fastest", device="cpu", quiet=True)
    written, label_map = load_multilabel_nifti(out)
    assert label_map == get_task(task).class_map
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert written.header.get_data_dtype() == np.uint8
    assert written.header["qform_code"] == source.header["qform_code"]
    assert written.header["sform_code"] == source.header["sform_code"]
    labels = np.asarray(written.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(seg.dataobj))
    assert set(np.unique(labels)) <= {0, *label_map}
    assert labels.any()


@pytest.mark.parametrize("scan,task", [("example_ct.nii.gz", "total"), ("example_mr_sm.nii.gz", "total_mr")])
def test_default_float32_forward_agrees_with_nnunet_arithmetic(scan, task, shared_data, weights_home):
    """The default CPU forward (our fused float32 U-Net) against nnU-Net's own modules on a real scan:
    the labels agree on at least 99.9 % of the voxels."""
    default = np.asarray(totalsegmentator(shared_data / scan, None, task=task, fast=True, device="cpu",
                                          quiet=True).dataobj)
    exact = np.asarray(totalsegmentator(shared_data / scan, None, task=task, fast=True, device="cpu", quiet=True,
                                        precision="exact").dataobj)
    assert default.shape == exact.shape == nib.load(shared_data / scan).shape
    assert len(np.unique(exact)) > 2
    assert np.mean(default == exact) >= 0.999
