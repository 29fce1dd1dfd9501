"""Orientation, resampling, cropping and chunking on small synthetic arrays."""
from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy import ndimage

from totalsegmentator.errors import InputImageError
from totalsegmentator.preprocessing.cropping import bbox_from_mask, crop_to_bbox, margin_voxels, uncrop
from totalsegmentator.preprocessing.orientation import canonical_zooms, to_canonical
from conftest import compiled_or_numpy
from totalsegmentator.preprocessing import resampling
from totalsegmentator.preprocessing.resampling import (
    resample_image,
    resample_labels_legacy,
    resample_labels_to_shape,
    zoom_image,
)
from totalsegmentator.preprocessing.splitting import (available_memory_bytes, merge_chunks, needs_split, plan_chunks,
                                                      split_array, whole_image_bytes)

RNG = np.random.default_rng(7)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(direction: np.ndarray, zooms=(0.8, 1.2, 2.5), origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(zooms)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "ras": _affine(np.eye(3)),
    "lps": _affine(np.diag([-1.0, -1.0, 1.0])),
    "permuted": _affine(np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])),
    "oblique": _affine(_rotation(2, 25) @ _rotation(0, -15) @ np.diag([-1.0, 1.0, 1.0])),
    "near_45": _affine(_rotation(1, 44) @ np.array([[0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])),
}


# ------------------------------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("name", list(AFFINES))
def test_to_canonical_matches_nibabel_and_round_trips(name):
    affine = AFFINES[name]
    data = RNG.normal(size=(5, 6, 7))
    img = nib.Nifti1Image(data, affine)
    ref = nib.as_closest_canonical(img)
    canon, canon_affine, reo = to_canonical(data, affine)
    assert np.array_equal(canon, ref.get_fdata())
    assert np.array_equal(canon_affine, ref.affine)
    assert nib.aff2axcodes(canon_affine) == ("R", "A", "S")
    assert np.allclose(canonical_zooms(img.header.get_zooms(), reo), ref.header.get_zooms())
    assert np.array_equal(reo.undo(canon), data)
    mask = data > 0
    assert np.array_equal(reo.apply(mask), canon > 0)
    # the same world point for the same voxel value
    ijk = np.array([1, 2, 3])
    ijk_c = np.round(apply_affine(np.linalg.inv(canon_affine), apply_affine(affine, ijk))).astype(int)
    assert canon[tuple(ijk_c)] == data[tuple(ijk)]


def test_canonical_input_is_untouched():
    data = RNG.normal(size=(3, 4, 5))
    canon, aff, reo = to_canonical(data, AFFINES["ras"])
    assert canon is data and reo.is_identity and reo.undo(canon) is canon


# -------------------------------------------------------------------------------------------------- resampling

@pytest.mark.parametrize("device", [None, "cpu"])
def test_an_image_thinner_than_half_a_target_voxel_is_refused(device):
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    data = RNG.normal(0, 300, size=(20, 20, 2)).astype(np.int16)
    # two slices of 1.5 mm make one 3 mm voxel ...
    out, _, _ = resample_image(data, affine, (3.0, 3.0, 3.0), order=1, device=device)
    assert out.shape == (10, 10, 1)
    # ... one slice makes none, which no model can segment: a clear error instead of an empty array
    with pytest.raises(InputImageError, match=r"too thin for the model's 3 mm voxels: 1 voxel\(s\) of 1.5 mm "
                                              r"\(1.5 mm\) along one axis; more than 1.5 mm is needed"):
        resample_image(data[:, :, :1], affine, (3.0, 3.0, 3.0), order=1, device=device)
    with pytest.raises(InputImageError, match="6 mm voxels: 2 voxel"):
        resample_image(data, affine, (6.0, 6.0, 6.0), order=0, device=device)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_image_matches_direct_zoom(order):
    data = RNG.normal(0, 300, size=(17, 14, 11)).astype(np.int16)
    affine = AFFINES["lps"]
    target = (1.5, 1.5, 1.5)
    out, new_affine, zoom = resample_image(data, affine, target, order=order, spacing_xyz=(0.8, 1.2, 2.5))
    expected_zoom = np.array([0.8, 1.2, 2.5]) / 1.5
    assert np.allclose(zoom, expected_zoom)
    assert out.shape == tuple(int(round(s * z)) for s, z in zip(data.shape, expected_zoom)) == (9, 11, 18)
    assert out.dtype == np.int32
    direct = ndimage.zoom(data.astype(np.float64), expected_zoom, order=order, mode="nearest").astype(np.int32)
    assert np.array_equal(out, direct)
    assert np.allclose(new_affine[:3, :3], affine[:3, :3] / expected_zoom)
    assert np.array_equal(new_affine[:3, 3], affine[:3, 3])
    assert np.allclose(np.linalg.norm(new_affine[:3, :3], axis=0), target)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_float16_images_are_resampled_like_float32(order):
    data = RNG.normal(0, 300, size=(9, 8, 7)).astype(np.float16)
    half, _, _ = resample_image(data, np.eye(4), (1.5, 0.7, 2.0), order=order)
    single, _, _ = resample_image(data.astype(np.float32), np.eye(4), (1.5, 0.7, 2.0), order=order)
    assert np.array_equal(half, single)


def test_resample_truncates_instead_of_rounding_integers():
    data = np.zeros((2, 2, 2), np.int16)
    data[1] = 10
    out, _, _ = resample_image(data, np.eye(4), (0.25, 1.0, 1.0), order=1)
    along = out[:, 0, 0]  # 8 samples of 0..10 at k * 1/7: 1.43 -> 1, 8.57 -> 8
    assert along.tolist() == [int(k * 10 / 7) for k in range(8)]


def test_resample_identity_when_spacing_equal():
    data = RNG.normal(size=(4, 4, 4))
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    out, new_affine, zoom = resample_image(data, affine, (1.5, 1.5, 1.5))
    assert out is data and out.dtype == np.float64 and np.array_equal(new_affine, affine)
    assert zoom.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("order", [0, 1])
def test_threaded_resampling_is_identical(order):
    for trial in range(8):
        shape = tuple(int(s) for s in RNG.integers(6, 30, 3))
        zoom = tuple(RNG.uniform(0.3, 2.5, 3))
        data = RNG.normal(0, 500, size=shape).astype(np.float32)
        single = ndimage.zoom(data, zoom, output=np.float64, order=order, mode="nearest")
        threaded = zoom_image(data, zoom, order=order, threads=3, output=np.float64)
        assert np.array_equal(single, threaded), (shape, zoom)
    out_t, _, _ = resample_image(data, np.eye(4), (0.7, 1.3, 0.9), order=order, threads=2)
    out_s, _, _ = resample_image(data, np.eye(4), (0.7, 1.3, 0.9), order=order, threads=1)
    assert np.array_equal(out_t, out_s)


_ZOOM_C = resampling._zoom_c


@pytest.fixture(params=["c", "numpy"])
def zoom_loops(request, monkeypatch):
    """Runs a test with the order-1 zoom in C (skipped where the extension is not built) and in numpy."""
    return compiled_or_numpy(request, monkeypatch, resampling, "_zoom_c", _ZOOM_C)


def test_linear_resampling_is_scipys_bit_for_bit(zoom_loops):
    """Order 1, in C or on numpy's own arithmetic: every type (also explicitly little- and big-endian ones) and
    memory layout, edges where k * scale lands a hair beyond the last voxel, single-voxel axes, NaN (their signs
    too) and infinities, float32 and float64 output."""
    rng = np.random.default_rng(3)
    native = np.dtype(np.int16).newbyteorder("<" if sys.byteorder == "little" else ">")  # as nibabel's: '<h'
    types = [np.float32, np.int16, np.uint8, np.float64, np.int32, np.uint16, native, ">f4", np.int8, np.uint64]
    for trial in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 30, 3))
        zoom = tuple(rng.uniform(0.2, 3.0, 3))
        data = (rng.normal(0, 500, size=shape) if trial % 6 < 4 else rng.integers(0, 200, size=shape))
        data = data.astype(types[trial % len(types)])
        if data.dtype.kind == "f" and trial % 4 == 0:
            data[rng.random(shape) < 0.05] = np.nan
            data[rng.random(shape) < 0.05] = -np.inf
        data = [np.asfortranarray(data), data, data.transpose(1, 2, 0)[::-1]][trial % 3]
        for output in (np.float64, np.float32):
            expected = ndimage.zoom(data, zoom, output=output, order=1, mode="nearest")
            result = zoom_image(data, zoom, order=1, threads=1 + trial % 3, output=output)
            assert result.shape == expected.shape and result.dtype == expected.dtype
            assert np.array_equal(result.view(np.uint8), expected.view(np.uint8)), (shape, zoom, data.dtype)
    # 28 / 51 * 51 = 28.000000000000004: scipy weighs the last voxel 1 - 4e-15 and, beyond it, 4e-15
    data = rng.normal(0, 500, size=(3, 29, 3))
    edge = ndimage.zoom(data, (1, 52 / 29, 1), output=np.float64, order=1, mode="nearest")
    assert np.array_equal(zoom_image(data, (1, 52 / 29, 1), order=1, output=np.float64), edge)


@pytest.mark.skipif(_ZOOM_C is None, reason="the C extension is not built")
def test_c_zoom_takes_native_types_and_checks_its_input():
    out = np.empty((2, 2, 2), np.float32)
    native = "<" if sys.byteorder == "little" else ">"
    for dtype in (np.dtype(np.int16).newbyteorder(native), "=u1", np.float64, np.int64, "<f4"):
        assert _ZOOM_C.supports(np.zeros((3, 3, 3), dtype), out)
    foreign = np.dtype(np.int16).newbyteorder("S")
    for data, target in ((np.zeros((3, 3, 3), foreign), out), (np.zeros((3, 3, 3), np.complex64), out),
                         (np.zeros((3, 3), np.int16), out), (np.zeros((3, 3, 3), np.int16), out.astype(np.int32))):
        assert not _ZOOM_C.supports(data, target)
    index = tuple(np.zeros((2, 2), np.int64) for _ in range(3))
    weight = tuple(np.ones((2, 2)) for _ in range(3))
    data = np.zeros((3, 3, 3), np.int16)
    with pytest.raises(ValueError, match="outside the input"):
        _ZOOM_C.zoom_range(data, out, (index[0] + 3, *index[1:]), weight, (0, 1, 2), 0, 2)
    with pytest.raises(ValueError, match="permutation"):
        _ZOOM_C.zoom_range(data, out, index, weight, (0, 0, 2), 0, 2)
    with pytest.raises(ValueError, match="range"):
        _ZOOM_C.zoom_range(data, out, index, weight, (0, 1, 2), 0, 3)
    with pytest.raises(ValueError, match="indices"):
        _ZOOM_C.zoom_range(data, out, (np.zeros((2, 3), np.int64), *index[1:]), weight, (0, 1, 2), 0, 2)
    with pytest.raises(TypeError, match="native"):
        _ZOOM_C.zoom_range(data.astype(foreign), out, index, weight, (0, 1, 2), 0, 2)


def test_labels_back_to_shape_equal_scipy_nearest_zoom():
    for trial in range(20):
        shape = tuple(int(s) for s in RNG.integers(1, 25, 3))
        target = tuple(int(s) for s in RNG.integers(1, 40, 3))
        labels = RNG.integers(0, 6, size=shape).astype(np.uint8)
        zoom = np.array(target) / np.array(shape)
        expected = ndimage.zoom(labels, zoom, order=0, mode="nearest")
        assert np.array_equal(resample_labels_to_shape(labels, target), expected)
        quirk = ndimage.zoom(labels, zoom, order=0)  # scipy default mode, as the official tool calls it
        assert np.array_equal(resample_labels_to_shape(labels, target, official_edge_quirk=True), quirk)


def test_back_resampling_fixes_zeroed_edge_plane():
    labels = np.ones((30, 4, 4), np.uint8)
    assert not ndimage.zoom(labels, (0.5, 1, 1), order=0)[-1].any()  # scipy's quirk for 30 -> 15
    assert resample_labels_to_shape(labels, (15, 4, 4)).all()


def test_back_resampling_restores_label_positions():
    # an image resampled to a coarse grid and a label predicted there must land on the same world spot
    shape, spacing = (40, 36, 30), np.array([0.8, 0.9, 1.0])
    affine = np.diag([*spacing, 1.0])
    data = np.zeros(shape, np.int16)
    data[10:20, 5:15, 12:22] = 100
    low, low_affine, _ = resample_image(data, affine, (2.0, 2.0, 2.0), order=0)
    labels_low = (low > 50).astype(np.uint8)
    labels = resample_labels_to_shape(labels_low, shape)
    assert labels.shape == shape
    centre = np.array(ndimage.center_of_mass(labels))
    assert np.allclose(centre, [14.5, 9.5, 16.5], atol=1.0)
    overlap = (labels > 0) & (data > 0)
    assert overlap.sum() / (data > 0).sum() > 0.7


def test_legacy_label_resampling_box_and_order():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[3:7, 3:7, 3:7] = 1
    labels[5:7, 5:7, 5:7] = 2  # overlapping higher label overwrites
    out = resample_labels_legacy(labels, (20, 20, 20))
    ones = np.argwhere(out > 0)
    assert ones.min(axis=0).tolist() == [6, 6, 6] and ones.max(axis=0).tolist() == [13, 13, 13]
    twos = np.argwhere(out == 2)
    assert twos.min(axis=0).tolist() == [10, 10, 10] and twos.max(axis=0).tolist() == [13, 13, 13]
    only_one = resample_labels_legacy(labels, (20, 20, 20), keep_labels=[1])
    assert set(np.unique(only_one)) == {0, 1} and not only_one[10:14, 10:14, 10:14].all()


# ---------------------------------------------------------------------------------------------------- cropping

def test_bbox_margin_in_mm_with_anisotropic_voxels():
    spacing = (0.8, 1.5, 3.0)
    assert margin_voxels((5, 5, 5), spacing) == (6, 3, 1)
    mask = np.zeros((30, 30, 30), np.uint8)
    mask[10, 12:14, 20] = 1
    box = bbox_from_mask(mask, (5, 5, 5), spacing)
    assert box == (slice(4, 17), slice(9, 17), slice(19, 22))
    mask[:] = 0
    mask[1, 28, 29] = 1  # clipped at the borders
    assert bbox_from_mask(mask, (5, 5, 5), spacing) == (slice(0, 8), slice(25, 30), slice(28, 30))
    assert bbox_from_mask(np.zeros((3, 3, 3)), (5, 5, 5), spacing) is None


def test_crop_casts_to_int32_and_shifts_origin():
    affine = AFFINES["oblique"]
    data = RNG.normal(0, 100, size=(12, 10, 8))
    box = (slice(2, 9), slice(3, 10), slice(1, 5))
    cropped, crop_aff = crop_to_bbox(data, affine, box)
    assert cropped.dtype == np.int32 and cropped.shape == (7, 7, 4)
    assert np.array_equal(cropped, data[2:9, 3:10, 1:5].astype(np.int32))
    assert np.allclose(apply_affine(crop_aff, [0, 0, 0]), apply_affine(affine, [2, 3, 1]))
    assert np.allclose(apply_affine(crop_aff, [4, 1, 2]), apply_affine(affine, [6, 4, 3]))
    assert np.array_equal(crop_aff[:3, :3], affine[:3, :3])
    mask_crop, _ = crop_to_bbox(data > 0, affine, box, dtype=np.uint8)
    assert mask_crop.dtype == np.uint8
    back = uncrop(cropped, box, data.shape)
    assert back.shape == data.shape and np.array_equal(back[box], cropped)
    assert back.sum() == cropped.sum()


# ---------------------------------------------------------------------------------------------------- chunking

def test_chunk_plan_matches_spec():
    n, t = 300, 100
    chunks = plan_chunks(n)
    assert [(c.window.start, c.window.stop) for c in chunks] == [(0, t + 20), (t - 19, 2 * t + 20), (2 * t - 19, n)]
    assert [(c.core.start, c.core.stop) for c in chunks] == [(0, t), (t, 2 * t), (2 * t, n)]


@pytest.mark.parametrize("n", [300, 301, 302, 61, 10, 3, 2])
def test_split_merge_identity(n):
    data = RNG.integers(0, 100, size=(3, 2, n))
    chunks = plan_chunks(n)
    parts = split_array(data, chunks)
    assert all(p.shape[2] == c.window.stop - c.window.start for p, c in zip(parts, chunks))
    assert np.array_equal(merge_chunks([p.copy() for p in parts], chunks), data)


def test_merge_uses_only_core_slices():
    n = 300
    chunks = plan_chunks(n)
    results = [np.full((1, 1, c.window.stop - c.window.start), i + 1) for i, c in enumerate(chunks)]
    merged = merge_chunks(results, chunks)[0, 0]
    assert (merged[:100] == 1).all() and (merged[100:200] == 2).all() and (merged[200:] == 3).all()


def test_needs_split_rule():
    big = (512, 512, 901)
    assert needs_split(big, multi_model=True)
    assert not needs_split(big, multi_model=False)
    assert needs_split((10, 10, 10), multi_model=False, force=True)
    assert not needs_split(big, multi_model=True, force=True, cascade=True)
    assert not needs_split((2000, 2000, 200), multi_model=True)  # > voxel limit but only 200 slices
    assert not needs_split((512, 512, 900), multi_model=True)  # exactly the voxel limit


def test_big_images_are_split_only_when_memory_is_short():
    big = (512, 512, 901)
    need = whole_image_bytes(big, 25)
    assert need == 512 * 512 * 901 * (2 * 25 + 8)
    assert not needs_split(big, multi_model=True, bytes_needed=need, bytes_available=need)
    assert needs_split(big, multi_model=True, bytes_needed=need, bytes_available=need - 1)
    assert not needs_split((100, 100, 100), multi_model=True, bytes_needed=need, bytes_available=0)
    assert needs_split((10, 10, 10), multi_model=False, force=True, bytes_needed=1, bytes_available=10)
    assert needs_split(big, multi_model=True, bytes_needed=need, bytes_available=None)  # unknown: official rule
    available = available_memory_bytes("cpu")
    assert available is None or 0 < available


def test_real_mr_scan_geometry_round_trip(shared_data):
    from totalsegmentator.io.nifti import load_input_image

    img = load_input_image(shared_data / "example_mr_sm.nii.gz")  # LPS, 3 mm
    data = np.asanyarray(img.dataobj)
    canon, canon_affine, reo = to_canonical(data, img.affine)
    assert np.array_equal(canon, np.asanyarray(nib.as_closest_canonical(img).dataobj))
    low, low_affine, zoom = resample_image(canon, canon_affine, (6.0, 6.0, 6.0), order=1,
                                           spacing_xyz=canonical_zooms(img.header.get_zooms(), reo))
    assert np.allclose(zoom, 0.5) and low.dtype == np.int32
    labels_low = (low > np.percentile(low, 90)).astype(np.uint8)
    labels = reo.undo(resample_labels_to_shape(labels_low, canon.shape))
    assert labels.shape == data.shape
    # labelled voxels are the bright ones of the original image
    assert data[labels > 0].mean() > 2 * data.mean()
