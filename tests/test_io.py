"""NIfTI loading/validation, atomic saving, label-name header extension, segmentation writers."""
from __future__ import annotations

import gzip
import zlib
import logging
import os
import struct

import nibabel as nib
import numpy as np
import pytest
from nibabel.nifti1 import Nifti1Extension

from conftest import compiled_or_numpy
from totalsegmentator.errors import InputImageError
from totalsegmentator.io.label_header import (
    add_label_map_to_nifti,
    label_extension_xml,
    load_multilabel_nifti,
    read_label_map,
    save_multilabel_nifti,
)
from totalsegmentator.io import writers
from totalsegmentator.io.nifti import load_input_image, nifti_bytes, nifti_header_bytes, save_nifti_atomic
from totalsegmentator.io.writers import (
    MaskGzipEncoder,
    multilabel_image,
    write_mask,
    write_multilabel,
    write_multilabel_image,
    write_per_class,
)

# formats.md §10: the extension the official tool writes for {1: "spleen", 2: "kidney_right"}
OFFICIAL_EXAMPLE = (
    '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>   '
    '<VolumeInformation Index="0">   <LabelTable>\n'
    '<Label Key="1" Red="0.0" Green="1.0" Blue="0.0" Alpha="1"><![CDATA[spleen]]></Label>\n'
    '<Label Key="2" Red="0.0" Green="0.0" Blue="1.0" Alpha="1"><![CDATA[kidney_right]]></Label>\n'
    '\n  </LabelTable>  <StudyMetaDataLinkSet>  </StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]></VolumeType>'
    '   </VolumeInformation></CaretExtension>\n              '
)

AFFINE = np.array([[-1.5, 0, 0, 90.0], [0, -1.5, 0, 120.0], [0, 0, 3.0, -50.0], [0, 0, 0, 1]])


def _ref_image(shape=(6, 5, 4), qcode=1, scode=2, extra_ext=True) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), AFFINE)
    img.header.set_qform(AFFINE, code=qcode)
    img.header.set_sform(AFFINE, code=scode)
    if extra_ext:
        img.header.extensions.append(Nifti1Extension(6, b"scanner comment"))
    return img


def _seg(shape=(6, 5, 4)) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[1:3, 1:3, 1:3] = 1
    seg[4, 0, :] = 3
    return seg


# ------------------------------------------------------------------------------------------------ label header

def test_label_extension_is_byte_exact_official_example():
    content = label_extension_xml({1: "spleen", 2: "kidney_right"})
    assert content == OFFICIAL_EXAMPLE.encode("utf-8")
    assert len(content) == 489


def test_label_extension_on_disk_layout(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    path = save_multilabel_nifti(img, tmp_path / "ml.nii", {1: "spleen", 2: "kidney_right"})
    raw = path.read_bytes()
    assert raw[348:352] == b"\x01\x00\x00\x00"  # extension flag
    esize, ecode = struct.unpack("<ii", raw[352:360])
    assert (esize, ecode) == (512, 0)
    assert raw[360:360 + 489] == OFFICIAL_EXAMPLE.encode()
    assert set(raw[360 + 489:352 + 512]) == {0}
    assert nib.load(path).header.extensions[0].get_content() == OFFICIAL_EXAMPLE.encode()


def test_label_colours_cycle_through_palette():
    text = label_extension_xml({7: "a", 12: "b", 11: "c"}).decode()
    assert '<Label Key="7" Red="1.0" Green="0.0" Blue="0.5019607843137255" Alpha="1"><![CDATA[a]]>' in text
    assert '<Label Key="12" Red="1.0" Green="0.0" Blue="0.0" Alpha="1"><![CDATA[b]]>' in text
    assert 'Key="11" Red="0.7254901960784313" Green="0.6666666666666666" Blue="0.6078431372549019"' in text
    assert text.index('Key="7"') < text.index('Key="12"') < text.index('Key="11"')  # dict order kept


def test_label_map_from_list_and_none():
    img = nib.Nifti1Image(np.array([[[0, 5], [9, 5]]], np.uint8), np.eye(4))
    assert read_label_map(add_label_map_to_nifti(img, ["liver", "spleen"])) == {1: "liver", 2: "spleen"}
    assert read_label_map(add_label_map_to_nifti(img, None)) == {5: "L5", 9: "L9"}
    # replaced, not stacked
    assert sum(e.get_code() == 0 for e in img.header.extensions) == 1


def test_multilabel_round_trip_and_foreign_extension_first(tmp_path):
    img = nib.Nifti1Image(_seg(), AFFINE)
    img.header.extensions.append(Nifti1Extension(0, b"not xml at all"))  # foreign ecode-0 extension first
    img.header.extensions.append(Nifti1Extension(6, b"comment"))
    path = save_multilabel_nifti(img, tmp_path / "seg.nii.gz", {1: "liver", 3: "aorta"})
    loaded, label_map = load_multilabel_nifti(path)
    assert label_map == {1: "liver", 3: "aorta"}
    assert [e.get_code() for e in loaded.header.extensions] == [0, 6, 0]
    assert np.array_equal(np.asanyarray(loaded.dataobj), _seg())
    # the official import path gives the same function
    from totalsegmentator.nifti_ext_header import load_multilabel_nifti as official_path
    assert official_path(path)[1] == label_map


def test_single_label_and_names_with_markup(tmp_path):
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    path = save_multilabel_nifti(img, tmp_path / "one.nii.gz", {1: "a&b <c> ]]> d"})
    assert load_multilabel_nifti(path)[1] == {1: "a&b <c> ]]> d"}


def test_load_multilabel_without_extension_is_clear_error(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "plain.nii.gz")
    with pytest.raises(InputImageError, match="no label-name header extension"):
        load_multilabel_nifti(tmp_path / "plain.nii.gz")
    with pytest.raises(InputImageError, match="not found"):
        load_multilabel_nifti(tmp_path / "missing.nii.gz")


# ------------------------------------------------------------------------------------------------------ writers

def test_write_per_class_files(tmp_path):
    ref = _ref_image()
    add_label_map_to_nifti(ref, {1: "stale"})  # a label extension on the input must not be copied
    seg = _seg()
    classes = {1: "liver", 2: "spleen", 3: "aorta"}
    paths = write_per_class(seg, classes, ref, tmp_path / "out", nr_threads=3)
    assert [p.name for p in paths] == ["liver.nii.gz", "spleen.nii.gz", "aorta.nii.gz"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(p.name for p in paths)
    for label, path in zip(classes, paths):
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        assert img.get_data_dtype() == np.uint8 and data.dtype == np.uint8
        assert np.array_equal(data, (seg == label).astype(np.uint8))
        assert np.array_equal(img.affine, AFFINE)
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
        assert [(e.get_code(), e.get_content()) for e in img.header.extensions] == [(6, b"scanner comment")]
        assert read_label_map(img) is None
        assert np.isnan(img.header["scl_slope"]) and np.isnan(img.header["scl_inter"])
    assert not np.asanyarray(nib.load(paths[1]).dataobj).any()  # empty class still written


def test_write_per_class_threads_give_identical_bytes(tmp_path):
    ref, seg = _ref_image(), _seg()
    classes = {1: "liver", 2: "spleen", 3: "aorta"}
    one = write_per_class(seg, classes, ref, tmp_path / "a", nr_threads=1)
    many = write_per_class(seg, classes, ref, tmp_path / "b", nr_threads=4)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in many]


def test_writer_keeps_codes_with_a_different_affine(tmp_path):
    ref = _ref_image(qcode=1, scode=1)
    low = AFFINE.copy()
    low[:3, :3] *= 2
    img = nib.load(write_per_class(_seg(), {1: "liver"}, ref, tmp_path, affine=low)[0])
    assert np.allclose(img.affine, low)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)


def test_write_multilabel(tmp_path):
    ref, seg = _ref_image(), _seg()
    path = write_multilabel(seg, {1: "liver", 3: "aorta"}, ref, tmp_path / "sub" / "seg.nii.gz")
    img, label_map = load_multilabel_nifti(path)
    assert label_map == {1: "liver", 3: "aorta"}
    assert [e.get_code() for e in img.header.extensions] == [6, 0]  # label extension appended last
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), seg)
    assert np.array_equal(img.affine, AFFINE)
    built = multilabel_image(seg, ["a", "b", "c"], ref)
    assert read_label_map(built) == {1: "a", 2: "b", 3: "c"}
    again = write_multilabel_image(built, tmp_path / "again.nii.gz")
    assert load_multilabel_nifti(again)[1] == {1: "a", 2: "b", 3: "c"}


def test_write_mask_fresh_header(tmp_path):
    img = nib.load(write_mask(np.ones((2, 3, 4), bool), AFFINE, tmp_path / "body.nii.gz"))
    assert img.get_data_dtype() == np.uint8 and len(img.header.extensions) == 0
    assert np.array_equal(img.affine, AFFINE) and np.asanyarray(img.dataobj).sum() == 24


# ----------------------------------------------------------------------------------------------- atomic saving

def test_save_atomic_gzip_and_plain(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), AFFINE)
    gz = save_nifti_atomic(img, tmp_path / "x.nii.gz", compresslevel=9)
    plain = save_nifti_atomic(img, tmp_path / "x.nii")
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and plain.read_bytes()[:2] != b"\x1f\x8b"
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["x.nii", "x.nii.gz"]
    assert np.array_equal(nib.load(gz).get_fdata(), np.arange(24).reshape(2, 3, 4))


def test_save_atomic_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"old")
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))

    def boom(fileobj):
        fileobj.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(img, "to_stream", boom)
    with pytest.raises(RuntimeError):
        save_nifti_atomic(img, target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["seg.nii.gz"]


# ---------------------------------------------------------------------------------------------- input checking

def _save(img, path):
    nib.save(img, path)
    return path


def test_load_valid_image_keeps_header(tmp_path):
    path = _save(_ref_image(), tmp_path / "ct.nii.gz")
    img = load_input_image(path)
    assert isinstance(img, nib.Nifti1Image) and img.shape == (6, 5, 4)
    assert np.array_equal(img.affine, AFFINE)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
    assert img.header.extensions[0].get_content() == b"scanner comment"
    assert np.array_equal(np.asanyarray(img.dataobj), np.arange(120).reshape(6, 5, 4))


def test_load_in_memory_image_and_scaled_data(tmp_path):
    raw = nib.Nifti1Image(np.array([[[1, 2], [3, 4]]], np.int16), np.eye(4))
    raw.header.set_slope_inter(2.0, -1.0)
    path = _save(raw, tmp_path / "scaled.nii")
    img = load_input_image(path)
    assert np.array_equal(np.asanyarray(img.dataobj), [[[1, 3], [5, 7]]])
    assert img.get_data_dtype() == np.asanyarray(img.dataobj).dtype
    same = load_input_image(img)
    assert np.array_equal(same.get_fdata(), img.get_fdata())


@pytest.fixture(params=["isal", "isal_stream", "stdlib"])
def gzip_impl(request, monkeypatch):
    """Run a test with ISA-L's gzip (when installed; decompressed in memory or streamed, as for big files) and
    with the standard library's."""
    from totalsegmentator.io import nifti

    if request.param.startswith("isal"):
        if nifti.fast_gzip() is None:
            pytest.skip("isal is not installed")
        if request.param == "isal_stream":
            monkeypatch.setattr(nifti, "IN_MEMORY_GZIP_BYTES", 0)
    else:
        monkeypatch.setattr(nifti, "fast_gzip", lambda: None)
    return request.param


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("klass, scaled, dtype", [
    (nib.Nifti1Image, True, "<i2"), (nib.Nifti2Image, True, "<i2"),
    (nib.Nifti1Image, False, "<i2"), (nib.Nifti1Image, False, ">f4"),
])
def test_gzip_implementations_read_and_write_the_same(tmp_path, klass, scaled, dtype, in_memory, monkeypatch):
    from totalsegmentator.io import nifti

    if not in_memory:
        monkeypatch.setattr(nifti, "IN_MEMORY_GZIP_BYTES", 0)
    data = np.random.default_rng(3).integers(-1024, 3000, size=(30, 20, 10)).astype(dtype)
    img = klass(data, AFFINE)
    img.set_data_dtype(np.dtype(dtype))
    if scaled:
        img.header.set_slope_inter(0.5, -10)
    img.header.extensions.append(Nifti1Extension(6, b"a comment"))
    path = tmp_path / "in.nii.gz"
    nib.save(img, path)
    if nifti.fast_gzip() is None:
        pytest.skip("isal is not installed")
    fast = load_input_image(path)
    fast_file = nifti_bytes(fast)
    monkeypatch.setattr(nifti, "fast_gzip", lambda: None)
    slow = load_input_image(path)
    np.testing.assert_array_equal(np.asanyarray(fast.dataobj), np.asanyarray(slow.dataobj))
    assert np.asanyarray(fast.dataobj).dtype == np.asanyarray(slow.dataobj).dtype  # scaled like nibabel does
    # unscaled voxels of a file decompressed in memory stay where they lie: a read-only view, no copy
    assert np.asanyarray(fast.dataobj).flags.writeable == (scaled or not in_memory)
    if not scaled:
        np.testing.assert_array_equal(np.asanyarray(fast.dataobj), data)
    np.testing.assert_array_equal(fast.affine, slow.affine)
    assert fast.header == slow.header and fast.header.extensions == slow.header.extensions
    assert gzip.decompress(fast_file) == gzip.decompress(nifti_bytes(slow))


@pytest.mark.parametrize("case, message", [
    ("missing", "input file not found"),
    ("directory", "is a directory"),
    ("truncated", "truncated"),
    ("short_content", "truncated"),
    ("random_gz", "not gzip-compressed"),
    ("random_nii", "not a NIfTI"),
    ("two_d", "is 2-D with shape (4, 5)"),
    ("two_volumes", "shape (4, 4, 3, 2): 2 volumes"),
    ("zero_axis", "empty axis"),
    ("all_nan", "no finite voxel"),
    ("rgb", "structured voxel type"),
    ("complex", "complex"),
])
def test_bad_inputs_raise_clear_one_line_error(tmp_path, case, message, gzip_impl):
    p = tmp_path / "in.nii.gz"
    if case == "directory":
        p = tmp_path
    elif case == "truncated":
        _save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)), p)
        p.write_bytes(p.read_bytes()[:3000])
    elif case == "short_content":  # a complete gzip stream of a file cut short before compression
        whole = nifti_bytes(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)), gz=False)
        p.write_bytes(gzip.compress(whole[:5000]))
    elif case == "random_gz":
        p.write_bytes(os.urandom(600))
    elif case == "random_nii":
        p = tmp_path / "in.nii"
        p.write_bytes(b"\x00\x01" * 300)
    elif case == "two_d":
        _save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), p)
    elif case == "two_volumes":
        _save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), p)
    elif case == "zero_axis":
        _save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), p)
    elif case == "all_nan":
        _save(nib.Nifti1Image(np.full((3, 3, 3), np.nan, np.float32), np.eye(4)), p)
    elif case == "rgb":
        rgb = np.zeros((3, 3, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        _save(nib.Nifti1Image(rgb, np.eye(4)), p)
    elif case == "complex":
        _save(nib.Nifti1Image(np.zeros((3, 3, 3), np.complex64), np.eye(4)), p)
    with pytest.raises(InputImageError) as info:
        load_input_image(p)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_single_volume_4d_is_squeezed(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5, 1)
    img = load_input_image(_save(nib.Nifti1Image(data, AFFINE), tmp_path / "v.nii.gz"))
    assert img.shape == (3, 4, 5) and img.header.get_data_shape() == (3, 4, 5)
    assert np.array_equal(np.asanyarray(img.dataobj), data[..., 0])


def test_nan_and_inf_are_replaced_with_a_warning(tmp_path, caplog):
    data = np.array([[[1.0, np.nan], [np.inf, -np.inf]], [[-3.0, 7.5], [0.0, 2.0]]], np.float32)
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    with caplog.at_level(logging.WARNING, logger="totalsegmentator"):
        out = np.asanyarray(load_input_image(path).dataobj)
    assert out[0, 0, 1] == -3.0 and out[0, 1, 1] == -3.0 and out[0, 1, 0] == 7.5
    assert np.array_equal(out[1], data[1])
    assert "3 NaN/infinite voxels" in caplog.text


def test_singular_sform_falls_back_to_qform(tmp_path, caplog):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None)  # affine None: nibabel keeps our header
    img.header.set_qform(AFFINE, code=1)
    img.header.set_sform(np.zeros((4, 4)), code=2)
    path = _save(img, tmp_path / "sing.nii")
    with caplog.at_level(logging.WARNING, logger="totalsegmentator"):
        out = load_input_image(path)
    assert np.allclose(out.affine, AFFINE) and "using its qform" in caplog.text


def test_nan_sform_without_qform_falls_back_to_voxel_sizes(tmp_path, caplog):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None)
    img.header.set_zooms((2.0, 3.0, 4.0))
    img.header.set_sform(np.full((4, 4), np.nan), code=2)
    img.header["qform_code"] = 0
    with caplog.at_level(logging.WARNING, logger="totalsegmentator"):
        out = load_input_image(_save(img, tmp_path / "nan_sform.nii"))
    assert np.allclose(out.affine, np.diag([2.0, 3.0, 4.0, 1.0])) and "voxel sizes" in caplog.text


def test_no_usable_geometry_is_refused():
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), None)  # in memory: nibabel does not fix pixdim
    img.header.set_zooms((0.0, 0.0, 0.0))
    img.header["qform_code"] = 0
    img.header["sform_code"] = 0
    with pytest.raises(InputImageError, match="no usable geometry"):
        load_input_image(img)


def test_sheared_affine_is_kept_with_warning(tmp_path, caplog):
    sheared = np.array([[1.0, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), sheared)
    with caplog.at_level(logging.WARNING, logger="totalsegmentator"):
        out = load_input_image(_save(img, tmp_path / "shear.nii"))
    assert np.allclose(out.affine, sheared) and "sheared" in caplog.text


def test_wrong_argument_type():
    with pytest.raises(InputImageError, match="file path or a nibabel image"):
        load_input_image(42)


def test_real_scan_round_trip(shared_data, tmp_path):
    img = load_input_image(shared_data / "example_ct_sm.nii.gz")
    seg = (np.asanyarray(img.dataobj) > 200).astype(np.uint8)
    path = write_multilabel(seg, {1: "bone"}, img, tmp_path / "seg.nii.gz")
    out, label_map = load_multilabel_nifti(path)
    assert label_map == {1: "bone"} and out.shape == img.shape
    assert np.array_equal(out.affine, img.affine)
    assert np.array_equal(np.asanyarray(out.dataobj), seg)


def test_empty_classes_share_the_same_file_content(tmp_path):
    ref, seg = _ref_image(), _seg()
    paths = write_per_class(seg, {2: "a", 4: "b", 1: "c"}, ref, tmp_path, nr_threads=2)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    direct = write_per_class(np.zeros_like(seg, dtype=np.int16), {2: "x"}, ref, tmp_path / "d")[0]
    assert direct.read_bytes() == paths[0].read_bytes()  # the shared content equals a normally written file
    assert not np.asanyarray(nib.load(paths[1]).dataobj).any()


def test_other_formats_become_nifti1(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    n2 = nib.Nifti2Image(np.ones((3, 4, 5), np.int16), affine)
    n2.header.extensions.append(Nifti1Extension(6, b"kept"))
    nib.save(n2, tmp_path / "n2.nii")
    nib.save(nib.MGHImage(np.ones((3, 4, 5), np.float32), affine), tmp_path / "m.mgz")
    for name in ("n2.nii", "m.mgz"):
        img = load_input_image(tmp_path / name)
        assert type(img) is nib.Nifti1Image and img.shape == (3, 4, 5)
        assert np.allclose(img.affine, affine)
        back = nib.load(save_nifti_atomic(img, tmp_path / f"{name}.out.nii.gz"))
        assert np.allclose(back.affine, affine) and int(back.header["sizeof_hdr"]) == 348
    assert load_input_image(tmp_path / "n2.nii").header.extensions[0].get_content() == b"kept"



# ------------------------------------------------------------------------------------ fast per-class gzip files

_COMPILED = writers._maskcodec


@pytest.fixture(params=["c", "numpy"])
def encoder_loops(request, monkeypatch):
    """Runs a test with the writer's C loops (skipped where the extension is not built) and with numpy's."""
    return compiled_or_numpy(request, monkeypatch, writers, "_maskcodec", _COMPILED)


def _blobby_labels(shape, n_labels, seed):
    """Labels in blobs and runs of all lengths (runs > 258, single voxels, whole rows) plus scattered noise."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        lo = [int(rng.integers(0, s)) for s in shape]
        hi = [min(s, a + int(rng.integers(1, s + 1))) for a, s in zip(lo, shape)]
        seg[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    noise = rng.random(shape) < 0.02
    seg[noise] = rng.integers(0, n_labels + 1, int(noise.sum()))
    return seg


@pytest.mark.parametrize("shape,slab", [((40, 30, 20), None), ((300, 7, 5), 1000), ((1, 1, 1), None),
                                        ((517, 3, 2), 517 * 3), ((130, 120, 11), None)])
def test_mask_gzip_is_nibabels_file_content(tmp_path, monkeypatch, shape, slab, encoder_loops):
    """Decompressed, every per-class file is byte for byte what nibabel writes for that mask (gzip checks the
    CRC and the size while decompressing); slabs of any size give the same files."""
    if slab:
        monkeypatch.setattr(writers, "_SLAB_VOXELS", slab)
        monkeypatch.setattr(writers, "_PART_VOXELS", slab)
    ref = _ref_image()
    seg = _blobby_labels(shape, 5, seed=sum(shape))
    seg.flat[-1] = 2  # a run ending at the very last byte
    classes = {1: "a", 2: "b", 3: "c", 4: "d", 5: "e", 7: "never", 0: "background"}
    paths = write_per_class(seg, classes, ref, tmp_path / "fast")
    for (label, _), path in zip(classes.items(), paths):
        expected = nifti_bytes(writers.segmentation_image((seg == label).astype(np.uint8), ref), gz=False)
        assert gzip.decompress(path.read_bytes()) == expected
    zlib_paths = write_per_class(seg, classes, ref, tmp_path / "zlib", compresslevel=6)
    for fast, slow in zip(paths, zlib_paths):
        assert gzip.decompress(fast.read_bytes()) == gzip.decompress(slow.read_bytes())


@pytest.mark.parametrize("n", [1, 5, 65535, 65536, 65537, 300001])
def test_crc_of_runs_is_zlibs(n):
    """The CRC-32 of header + mask from the runs of ones alone equals zlib's over all the bytes."""
    rng = np.random.default_rng(n)
    mask = np.zeros(n, np.uint8)
    for _ in range(int(rng.integers(1, 40))):
        a = int(rng.integers(0, n))
        mask[a:a + int(rng.integers(1, 70000))] = 1
    mask[:1] = n % 2  # runs at the very start and end too
    mask[-1:] = 1
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    starts, ends = edges[0::2], edges[1::2]
    header = b"header bytes" * 29
    crc = writers._zero_extend(zlib.crc32(header), n) ^ writers._RunsCrc(n)(starts, ends)
    assert crc == zlib.crc32(header + mask.tobytes())


@pytest.mark.parametrize("seed", range(8))
def test_bit_packing_matches_a_plain_bit_writer(seed):
    """Tokens (set bits in their first 32, lengths up to several 64-bit words of zeros), some with extra bits
    further in, packed LSB-first after a started byte give the bytes and the carry of a bit-by-bit writer."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 3000))
    bits = rng.integers(1, 33, count)
    if seed % 2:  # long tokens (full matches: zero bits after the heads)
        bits[rng.random(count) < 0.1] += rng.integers(1, 300)
    heads = np.minimum(bits, 32)
    val = (rng.integers(0, 1 << 32, count) & ((1 << heads) - 1)).astype(np.uint64)
    carry = (int(rng.integers(0, 1 << 7)) & ((1 << (seed % 8)) - 1), seed % 8)
    starts = np.cumsum(bits) - bits + carry[1]
    stream = carry[0] | sum(int(v) << int(p) for v, p in zip(val, starts))
    extra = None
    if seed % 2:  # extra bits beyond the first 32 of some long tokens, one next to the other's last bit
        where = np.flatnonzero(bits > 48)[::2]
        offsets = np.array([int(rng.integers(33, b - 15)) for b in bits[where]], np.int64)
        offsets[-1:] = bits[where[-1:]] - 16
        values = rng.integers(1, 1 << 16, where.size).astype(np.uint64)
        extra = (where, offsets, values)
        stream |= sum(int(v) << int(starts[i] + o) for i, o, v in zip(where, offsets, values))
    total = int(bits.sum()) + carry[1]
    data, (value, nbits) = writers._pack_bits(val, bits.astype(np.int64), carry, extra)
    assert data == (stream & ((1 << (total // 8 * 8)) - 1)).to_bytes(total // 8, "little")
    assert (value, nbits) == (stream >> (total // 8 * 8), total % 8)


def test_mask_runs_around_full_matches(encoder_loops):
    """Runs of ones and zeros of every length around the 258-byte matches, next to each other in all orders
    (a run of ones with full matches before a short zero run puts that zero run's bits past the pair's first
    32), at the start and the end of the mask."""
    lengths = [1, 2, 3, 4, 257, 258, 259, 260, 515, 516, 517, 1000]
    rng = np.random.default_rng(7)
    for ends_with_one in (False, True):
        pieces = []
        for ones in lengths:
            for zeros in lengths:
                pieces += [np.ones(ones, np.uint8), np.zeros(zeros, np.uint8)]
        order = rng.permutation(len(pieces) // 2)
        mask = np.concatenate([np.zeros(259, np.uint8)] + [pieces[2 * i + k] for i in order for k in (0, 1)]
                              + [np.ones(int(ends_with_one), np.uint8)])
        content = MaskGzipEncoder(b"HEAD" * 90, (mask.size, 1, 1)).encode(mask[:, None, None], [1])[0]
        assert gzip.decompress(content) == b"HEAD" * 90 + mask.tobytes()


def test_mask_gzip_special_volumes(encoder_loops):
    header = b"HEADER" * 60
    for shape, fill in (((70, 50, 9), 0), ((170, 150, 9), 1), ((600, 1, 1), 1), ((3, 1, 1), 1)):
        seg = np.full(shape, fill, np.uint8)
        content = MaskGzipEncoder(header, shape).encode(seg, [1])[0]
        mask = (seg == 1).astype(np.uint8).tobytes(order="F")
        assert gzip.decompress(content) == header + mask
    with pytest.raises(ValueError, match="shape"):
        MaskGzipEncoder(header, (2, 2, 2)).encode(np.zeros((2, 2, 3), np.uint8), [1])


def test_mask_gzip_compresses_like_zlib(tmp_path, encoder_loops):
    """Compact masks: no bigger than zlib's level 1 (which nibabel and the official tool use); an empty mask costs
    2 bits per 258 voxels."""
    seg = np.zeros((200, 160, 90), np.uint8)
    seg[50:120, 40:100, 20:70] = 1
    seg[150:160, 10:20, 5:9] = 2
    encoder = MaskGzipEncoder(b"\0" * 352, seg.shape)
    organ, small, empty = encoder.encode(seg, [1, 2, 3])
    for label, content in ((1, organ), (2, small), (3, empty)):
        raw = b"\0" * 352 + (seg == label).astype(np.uint8).tobytes(order="F")
        assert gzip.decompress(content) == raw
        assert len(content) <= len(gzip.compress(raw, compresslevel=1))
    assert len(empty) < seg.size / 258 * 2 / 8 + 400  # + the 352 header bytes as literals


def test_mask_gzip_of_other_label_types_and_layouts(tmp_path, encoder_loops):
    ref = _ref_image()
    seg = _blobby_labels((33, 21, 17), 4, seed=3)
    classes = {1: "a", 4: "b", 300: "c"}
    expected = [gzip.decompress(p.read_bytes()) for p in write_per_class(seg, classes, ref, tmp_path / "u8")]
    wide = seg.astype(np.int16)
    wide[seg == 4] = 300  # a label above 255 in an int16 map
    for variant in (seg.astype(np.int32), np.asfortranarray(seg), seg.transpose(2, 1, 0).copy().transpose(2, 1, 0)):
        got = [gzip.decompress(p.read_bytes()) for p in write_per_class(variant, classes, ref, tmp_path / "v")]
        assert got == expected
    got = write_per_class(wide, {300: "c"}, ref, tmp_path / "w")[0]
    assert np.array_equal(np.asanyarray(nib.load(got).dataobj), (seg == 4).astype(np.uint8))


@pytest.mark.skipif(_COMPILED is None, reason="the C extension is not built")
@pytest.mark.parametrize("seed", range(4))
def test_c_and_numpy_loops_write_the_same_files(monkeypatch, seed):
    """Noisy and blobby label maps in either memory layout, split into parts at run boundaries for several
    threads: the C loops give the numpy encoder's bytes for every class, present or not."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(20, 90)), int(rng.integers(1, 40)), int(rng.integers(1, 30)))
    seg = _blobby_labels(shape, 6, seed) if seed % 2 else rng.integers(0, 5, shape).astype(np.uint8)
    if seed == 2:
        seg[:, :, : shape[2] // 2] = 3  # a long run across the part edges
    if seed == 3:
        seg = np.ascontiguousarray(seg)
    labels = [0, 1, 2, 3, 4, 5, 6, 9]
    encoder = MaskGzipEncoder(b"H" * 352, shape)
    monkeypatch.setattr(writers, "_maskcodec", None)
    expected = encoder.encode(seg, labels, 2)
    monkeypatch.setattr(writers, "_maskcodec", _COMPILED)
    for part_voxels, threads in ((1 << 20, 1), (97, 2), (1, 3), (1, 7)):
        monkeypatch.setattr(writers, "_PART_VOXELS", part_voxels)
        assert encoder.encode(seg, labels, threads) == expected


@pytest.mark.skipif(_COMPILED is None, reason="the C extension is not built")
def test_c_run_search_matches_numpy_and_checks_its_input():
    c = _COMPILED
    rng = np.random.default_rng(5)
    flat = np.repeat(rng.integers(0, 4, 3000).astype(np.uint8), rng.integers(1, 30, 3000))
    n = flat.size
    begins = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    ends = np.append(begins[1:], n)
    assert c.next_boundary(flat, 0) == 0 and c.next_boundary(flat, n) == n
    for i in (1, 17, n // 2, n - 1):
        assert c.next_boundary(flat, i) == (begins[begins >= i][0] if (begins >= i).any() else n)
    edges = sorted({0, n, *(c.next_boundary(flat, int(i)) for i in rng.integers(1, n, 5))})
    counts = np.zeros((len(edges) - 1, 256), np.int64)
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        c.count_runs(flat, a, b, counts[i])
    assert np.array_equal(counts.sum(axis=0), np.bincount(flat[begins], minlength=256))
    bounds = np.concatenate([[0], np.cumsum(counts.sum(axis=0))])
    cursors = bounds[:-1] + np.cumsum(counts, axis=0) - counts
    starts, stops = np.full(bounds[-1], -1, np.int64), np.full(bounds[-1], -1, np.int64)
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        c.fill_runs(flat, a, b, cursors[i], starts, stops)
    order = np.argsort(flat[begins], kind="stable")
    assert np.array_equal(starts, begins[order]) and np.array_equal(stops, ends[order])

    inside = int(begins[np.flatnonzero(ends - begins > 1)[0]]) + 1  # inside a run of 2 or more: no boundary
    with pytest.raises(ValueError, match="run boundaries"):
        c.count_runs(flat, inside, n, np.zeros(256, np.int64))
    with pytest.raises(ValueError, match="counts"):
        c.count_runs(flat, 0, n, np.zeros(255, np.int64))
    with pytest.raises(ValueError, match="cursor"):  # too small arrays for the runs: an error, not a crash
        c.fill_runs(flat, 0, n, np.zeros(256, np.int64), starts[:10].copy(), stops[:10].copy())
    t = writers._deflate_tables()
    tables = (t["head_val"], t["head_bits"], t["pair_val"], t["pair_bits"], t["zero_val"], t["zero_bits"])
    far = 1 << 40  # beyond the mask: rejected before its zero bits would overrun the output
    for bad_starts, bad_ends in (([5, 7], [8, 9]), ([5], [5]), ([0], [n + 1]), ([3, 9], [9, 12]), ([far], [far + 1]),
                                 ([3, far], [5, far + 1])):
        with pytest.raises(ValueError, match="ascending"):
            c.encode_mask(np.array(bad_starts, np.int64), np.array(bad_ends, np.int64), n, 0, 0, *tables,
                          t["full_bits"], *t["end"])
    with pytest.raises(ValueError, match="pair_val"):
        c.encode_mask(starts[:0], stops[:0], n, 0, 0, t["head_val"], t["head_bits"], t["pair_val"][:-1],
                      t["pair_bits"], t["zero_val"], t["zero_bits"], t["full_bits"], *t["end"])
    crc = writers._RunsCrc(n)
    with pytest.raises(ValueError, match="within"):
        c.runs_crc(np.array([n + 1], np.int64), np.array([n + 2], np.int64), n, crc.low, crc.ops, crc.at_chunks)


def test_nifti_header_bytes_precede_the_data():
    ref = _ref_image()
    img = writers.segmentation_image(np.ones((4, 3, 2), np.uint8), ref)
    head = nifti_header_bytes(img)
    full = nifti_bytes(img, gz=False)
    assert full == head + np.ones((4, 3, 2), np.uint8).tobytes(order="F")
    assert len(head) == struct.unpack_from("<f", full, 108)[0] > 352  # vox_offset, after the extension
