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
