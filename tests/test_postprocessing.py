"""Postprocessing rules on small synthetic label maps with known answers."""
from __future__ import annotations

import numpy as np
import pytest

from totalsegmentator.postprocessing import (
    apply_lut,
    body_mask,
    body_postprocessing,
    dilate_labels,
    ellipsoid_footprint,
    keep_largest_component,
    labels_touch,
    refine_vertebrae,
    relabel_by_name,
    relabel_vertebrae,
    remove_labels,
    remove_outside,
    remove_small_blobs,
    skin_mask,
    vertebrae_postprocessing,
)
from totalsegmentator.registry import extra_class_map, get_task


def _blob(seg, value, start, n):
    """``n`` voxels in a straight line along x from ``start``."""
    x, y, z = start
    seg[x:x + n, y, z] = value


# ----------------------------------------------------------------------------------------------- label values

def test_remove_auxiliary_labels():
    seg = np.array([[[0, 12, 13, 3, 15]]], np.uint8)
    aux = get_task("appendicular_bones").auxiliary_labels
    assert remove_labels(seg, aux).tolist() == [[[0, 0, 0, 3, 0]]]
    assert remove_labels(seg, []) is seg


def test_v1_relabel_by_name():
    total, v1 = get_task("total").class_map, extra_class_map("total_v1")
    ids = {name: i for i, name in total.items()}
    seg = np.array([[[ids["spleen"], ids["vertebrae_L5"], ids["vertebrae_C1"], ids["thyroid_gland"], 0]]],
                   np.uint8)
    out = relabel_by_name(seg, total, v1)
    assert out.tolist() == [[[1, 18, 41, 0, 0]]]  # v1: spleen 1, L5 18, C1 41; thyroid absent in v1


def test_apply_lut_keeps_or_drops_unmapped():
    seg = np.array([1, 2, 3], np.uint8)
    assert apply_lut(seg, {2: 7}).tolist() == [1, 7, 3]
    assert apply_lut(seg, {2: 7}, keep_unmapped=False).tolist() == [0, 7, 0]


# --------------------------------------------------------------------------------------------------- components

def test_keep_largest_component_six_connectivity():
    mask = np.zeros((6, 6, 6), bool)
    mask[0:2, 0:2, 0:2] = True  # 8 voxels
    mask[4, 4, 4] = mask[5, 5, 5] = mask[5, 5, 4] = True  # 3 voxels, (4,4,4) only touches by an edge
    out = keep_largest_component(mask)
    assert out.sum() == 8 and out[0:2, 0:2, 0:2].all()
    assert not keep_largest_component(np.zeros((2, 2, 2), bool)).any()


def test_remove_small_blobs_exact_threshold():
    seg = np.zeros((20, 8, 8), np.uint8)
    _blob(seg, 1, (0, 0, 0), 8)   # 8 voxels * 1.5 mm3 = 12 mm3 -> removed (<= 12)
    _blob(seg, 1, (0, 4, 4), 9)   # 13.5 mm3 -> kept
    _blob(seg, 2, (10, 0, 0), 8)  # other class, same size -> removed
    seg[15, 6, 6] = 3             # single voxels of class 3
    seg[16, 7, 7] = 3             # touches the other only by an edge: separate component
    out = remove_small_blobs(seg, voxel_volume=1.5, mm3=12.0)
    assert (out[0:8, 0, 0] == 0).all() and (out[0:9, 4, 4] == 1).all()
    assert not (out == 2).any() and not (out == 3).any()
    only_two = remove_small_blobs(seg, voxel_volume=1.5, mm3=12.0, class_ids=[2])
    assert (only_two[0:8, 0, 0] == 1).all() and not (only_two == 2).any() and (only_two == 3).sum() == 2
    assert seg[0, 0, 0] == 1  # input untouched


def test_body_postprocessing():
    seg = np.zeros((30, 10, 10), np.uint8)
    seg[0:3, 0:3, 0:3] = 1      # trunc, 27 voxels: largest
    seg[10:12, 0:2, 0:2] = 1    # trunc, 8 voxels: removed
    _blob(seg, 2, (0, 8, 8), 8)   # extremities 8 voxels: 8 * 6250 = 50000 mm3 -> removed (<=)
    _blob(seg, 2, (15, 8, 8), 9)  # 9 voxels -> kept
    out = body_postprocessing(seg, voxel_volume=50000 / 8)
    assert (out == 1).sum() == 27 and out[0:3, 0:3, 0:3].all()
    assert (out[0:8, 8, 8] == 0).all() and (out[15:24, 8, 8] == 2).all()


# ------------------------------------------------------------------------------------------------------ dilation

def test_ellipsoid_footprint():
    fp = ellipsoid_footprint(3.0, (1.5, 1.5, 3.0))  # radii 2, 2, 1 voxels
    assert fp.shape == (5, 5, 3)
    assert fp[4, 2, 1] and fp[2, 2, 2] and fp[3, 3, 1]
    assert not fp[4, 3, 1] and not fp[3, 2, 2]  # (2,1,0): 1 + 0.25 > 1; (1,0,1): 0.25 + 1 > 1
    assert ellipsoid_footprint(1.0, (1.5, 1.5, 1.5)).sum() == 1


def test_dilate_labels_background_only_ascending():
    seg = np.zeros((9, 3, 3), np.uint8)
    seg[2, 1, 1] = 2
    seg[6, 1, 1] = 1
    seg[4, 0, 0] = 5  # a voxel of another label is never overwritten
    out = dilate_labels(seg, 2.0, (1.0, 1.0, 1.0))
    assert out[4, 1, 1] == 1  # equidistant background: the lower label claims it first
    assert out[0, 1, 1] == 2 and out[8, 1, 1] == 1 and out[4, 0, 0] == 5
    assert out[3, 1, 1] == 2 and out[5, 1, 1] == 1


# ------------------------------------------------------------------------------------------------------ vertebrae

def _spine(labels_bottom_to_top, sizes=None) -> np.ndarray:
    """Separate 3x3x2 blocks stacked along z (gap 1 slice) with the given labels, bottom first."""
    seg = np.zeros((5, 5, 3 * len(labels_bottom_to_top)), np.uint8)
    for i, label in enumerate(labels_bottom_to_top):
        seg[1:4, 1:4, 3 * i:3 * i + 2] = label
    return seg


def test_vertebrae_without_touching_labels_only_dilate():
    seg = _spine([20, 18, 7])
    assert not labels_touch(seg)
    out = vertebrae_postprocessing(seg, (1.0, 1.0, 1.0), dilation_mm=1.0)
    assert set(np.unique(out)) == {0, 7, 18, 20}
    assert out[0, 2, 0] == 20 and out[2, 2, 1] == 20
    assert out[2, 2, 2] == 18 and out[2, 2, 5] == 7  # gap slices go to the smaller label (dilated first)


def test_vertebrae_relabel_from_bottom():
    seg = _spine([20, 3, 5])
    seg[1, 1, 0] = 21  # two labels touching inside the lowest block
    assert labels_touch(seg)
    out = relabel_vertebrae(seg, voxel_volume=100.0)
    assert np.unique(out[:, :, 0:2]).tolist() == [0, 21]  # lowest component: largest label present
    assert np.unique(out[:, :, 3:5]).tolist() == [0, 20]
    assert np.unique(out[:, :, 6:8]).tolist() == [0, 19]


def test_vertebrae_relabel_from_top_when_c1_without_l5():
    seg = _spine([9, 4, 1])
    seg[1, 1, 0] = 8
    out = relabel_vertebrae(seg, voxel_volume=100.0)
    assert np.unique(out[:, :, 6:8]).tolist() == [0, 1]  # top component = C1
    assert np.unique(out[:, :, 3:5]).tolist() == [0, 2]
    assert np.unique(out[:, :, 0:2]).tolist() == [0, 3]


def test_vertebrae_relabel_l5_present_counts_from_bottom():
    seg = _spine([24, 1, 2])
    seg[1, 1, 0] = 23
    out = relabel_vertebrae(seg, voxel_volume=100.0)
    assert [np.unique(out[:, :, 3 * i:3 * i + 2])[-1] for i in range(3)] == [24, 23, 22]


def test_vertebrae_small_components_dropped_at_100_mm3():
    seg = _spine([5, 6])  # blocks of 18 voxels
    seg[1, 1, 0] = 7
    exact = relabel_vertebrae(seg, voxel_volume=100 / 18)  # 18 voxels = 100 mm3: kept (>= 100)
    assert (exact > 0).sum() == 36
    below = relabel_vertebrae(seg, voxel_volume=99.9 / 18)
    assert not below.any()


def test_vertebrae_numbers_outside_range_are_dropped():
    seg = _spine([3, 2, 2, 2])
    seg[1, 1, 0] = 2  # from the bottom starting at 3: 3, 2, 1, then nothing left for the top block
    out = relabel_vertebrae(seg, 100.0)
    assert [np.unique(out[:, :, 3 * i:3 * i + 2])[-1] for i in range(4)] == [3, 2, 1, 0]
    seg = _spine([2, 2, 2])
    seg[1, 1, 6] = 1  # C1 without L5, from the top: 1, 2, then beyond n_labels=2
    out = relabel_vertebrae(seg, 100.0, n_labels=2)
    assert [np.unique(out[:, :, 3 * i:3 * i + 2])[-1] for i in range(3)] == [0, 2, 1]


def test_refine_vertebrae_keeps_only_vertebral_body():
    seg = np.zeros((7, 3, 3), np.uint8)
    seg[3, 1, 1] = 4
    body = np.zeros_like(seg)
    body[:, 1, 1] = 1
    body[5, 1, 1] = 2  # disc
    out = refine_vertebrae(seg, body, (1.0, 1.0, 1.0), dilation_mm=2.0)
    assert np.argwhere(out == 4)[:, 0].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        refine_vertebrae(seg, body[:-1], (1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------------------------ remove outside

def test_remove_outside_iterations_from_mean_voxel_size():
    seg = np.ones((1, 1, 20), np.uint8)
    mask = np.zeros_like(seg)
    mask[0, 0, 0] = 1
    out = remove_outside(seg, mask, (2.0, 2.0, 2.0))  # int(10 / 2) = 5 iterations
    assert out[0, 0].tolist() == [1] * 6 + [0] * 14
    coarse = remove_outside(seg, mask, (12.0, 12.0, 12.0))  # 0 iterations in scipy; we dilate once
    assert coarse[0, 0].tolist() == [1, 1] + [0] * 18
    assert not remove_outside(seg, np.zeros_like(seg), (1.0, 1.0, 1.0)).any()


# ------------------------------------------------------------------------------------------------ derived masks

def test_body_mask_union():
    seg = np.array([[[0, 1, 2, 3]]], np.uint8)
    assert body_mask(seg).tolist() == [[[0, 1, 1, 0]]]


def test_skin_of_a_box():
    body = np.zeros((20, 20, 20), np.uint8)
    body[5:15, 5:15, 5:15] = 1
    intensity = np.zeros(body.shape)
    intensity[:, :, 10:] = -200  # excluded (bounds are exclusive)
    skin = skin_mask(body, intensity)
    idx = np.indices(body.shape)
    outside = sum(np.maximum(0, np.maximum(5 - i, i - 14)) for i in idx)  # L1 distance to the box
    inner = np.all([(i >= 8) & (i <= 11) for i in idx], axis=0)  # box eroded 3 times
    expected = (outside <= 1) & ~inner & (idx[2] < 10)
    assert np.array_equal(skin.astype(bool), expected)


@pytest.mark.parametrize("allowed, kept", [(5, False), (6, True)])
def test_skin_small_components_removed(allowed, kept):
    body = np.zeros((7, 7, 7), np.uint8)
    body[3, 3, 3] = 1  # its shell is the 7-voxel cross
    intensity = np.full(body.shape, 1000.0)
    cross = [(3, 3, 3), (2, 3, 3), (4, 3, 3), (3, 2, 3), (3, 4, 3), (3, 3, 2), (3, 3, 4)]
    for v in cross[:allowed]:
        intensity[v] = 0
    assert bool(skin_mask(body, intensity).any()) is kept


def test_scipy_fallback_gives_same_components(monkeypatch):
    import totalsegmentator.postprocessing as pp

    rng = np.random.default_rng(3)
    seg = rng.integers(0, 4, size=(12, 11, 10)).astype(np.uint8)
    fast, n_fast = pp.label_components(seg)
    monkeypatch.setattr(pp, "_cc3d", None)
    slow, n_slow = pp.label_components(seg)
    assert n_fast == n_slow
    pairs = np.unique(np.stack([fast.ravel(), slow.ravel()]), axis=1)
    assert pairs.shape[1] == n_fast + 1  # one-to-one correspondence, background included
    monkeypatch.undo()
    expected = remove_small_blobs(seg, 1.0, 2.0)
    monkeypatch.setattr(pp, "_cc3d", None)
    assert np.array_equal(pp.remove_small_blobs(seg, 1.0, 2.0), expected)
