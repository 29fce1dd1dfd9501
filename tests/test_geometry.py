"""Geometry proven on meaning: a model trained on phantoms must find the blobs where they are in the input's
own voxel grid, whatever the orientation, axis order, spacing and size of the input."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from totalsegmentator.python_api import totalsegmentator
from totalsegmentator.registry import get_task
from totalsegmentator.testing.phantom_model import PHANTOM_BLOBS, PHANTOM_DATASET, train_phantom_model
from totalsegmentator.testing.phantoms import Blob, Phantom, dice, grid_affine

TASK = "trunk_cavities"  # the task whose single model (dataset 343) the phantom model stands in for
# Large blobs: the comparison is made in the input's own (coarser, anisotropic) grid, where even a perfect
# 1.5 mm prediction loses about 2 % Dice at the border of a 31 mm sphere (3 % for a 20 mm one).
BLOBS = tuple(Blob(b.label, centre, 31.0, b.hu) for b, centre in
              zip(PHANTOM_BLOBS, ((33.0, 0.0, -35.0), (-33.0, 0.0, -35.0), (0.0, 0.0, 33.0))))
PHANTOM = Phantom(body_radius_mm=75.0, blobs=BLOBS)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """The phantom-trained model (read by conftest's ``weights_home``)."""
    weights = tmp_path_factory.mktemp("phantom_weights")
    assert get_task(TASK).mode().dataset_ids == (PHANTOM_DATASET,)
    train_phantom_model(weights)
    return weights


CASES = {
    # name: (spacing of the voxel axes, shape, axis codes, which world axis each voxel axis follows)
    "RAS isotropic": ((1.5, 1.5, 1.5), (100, 100, 94), "RAS", (0, 1, 2)),
    "LPS anisotropic odd": ((1.2, 1.6, 2.0), (125, 94, 71), "LPS", (0, 1, 2)),
    "permuted axes": ((2.0, 1.3, 1.7), (71, 116, 89), "SLA", (2, 0, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_blobs_are_found_where_they_are(case, weights_home, tmp_path):
    spacing, shape, axcodes, permutation = CASES[case]
    affine = grid_affine(spacing, shape, axcodes, permutation)
    assert nib.aff2axcodes(affine) == tuple(axcodes)
    img = PHANTOM.nifti(shape, affine)
    truth = PHANTOM.labels(shape, affine)

    out = tmp_path / "seg"
    seg = totalsegmentator(img, out, task=TASK, device="cpu", quiet=True)

    labels = np.asarray(seg.dataobj)
    assert labels.shape == shape
    np.testing.assert_allclose(seg.affine, affine)
    class_map = get_task(TASK).class_map
    for blob in BLOBS:
        assert dice(labels == blob.label, truth == blob.label) >= 0.95, f"{class_map[blob.label]} in {case}"
        written = nib.load(out / f"{class_map[blob.label]}.nii.gz")
        np.testing.assert_allclose(written.affine, affine)
        np.testing.assert_array_equal(np.asarray(written.dataobj), (labels == blob.label).astype(np.uint8))


def test_nnunet_internal_resampling_path(weights_home, tmp_path):
    """With --higher_order_resampling our resampling is skipped and nnU-Net resamples image and logits itself;
    the labels must still sit on the blobs."""
    spacing, shape, axcodes, permutation = CASES["LPS anisotropic odd"]
    affine = grid_affine(spacing, shape, axcodes, permutation)
    seg = totalsegmentator(PHANTOM.nifti(shape, affine), None, task=TASK, device="cpu", quiet=True,
                           higher_order_resampling=True)
    labels = np.asarray(seg.dataobj)
    truth = PHANTOM.labels(shape, affine)
    for blob in BLOBS:
        assert dice(labels == blob.label, truth == blob.label) >= 0.9


def test_default_float32_forward_agrees_with_nnunet_arithmetic(weights_home):
    """The default CPU forward (our fused float32 U-Net) against nnU-Net's own modules (``precision="exact"``)
    on the phantom-trained model: the labels agree on at least 99.9 % of the voxels."""
    spacing, shape, axcodes, permutation = CASES["LPS anisotropic odd"]
    img = PHANTOM.nifti(shape, grid_affine(spacing, shape, axcodes, permutation), seed=5)
    default = np.asarray(totalsegmentator(img, None, task=TASK, device="cpu", quiet=True).dataobj)
    exact = np.asarray(totalsegmentator(img, None, task=TASK, device="cpu", quiet=True, precision="exact").dataobj)
    assert default.shape == exact.shape == shape
    assert set(np.unique(exact)) == {0} | {b.label for b in BLOBS}
    assert np.mean(default == exact) >= 0.999
