"""Load and validate NIfTI input images; write NIfTI files atomically.

Input rules (each failure is an :class:`~totalsegmentator.errors.InputImageError` with a one-line message):

* the path must exist and be a readable NIfTI (or another format nibabel reads; converted to NIfTI-1);
  the voxel data are read completely, so truncated or corrupt ``.gz`` files fail here and not later;
* numeric, non-complex, non-structured voxel type;
* 3-D after squeezing trailing length-1 axes: a 4-D image with one volume is accepted as 3-D, a 4-D image
  with several volumes is refused (the official tool silently takes the first volume; we name the shape);
  2-D images and images with a zero-length axis are refused;
* NaN / infinite voxels are *handled*, not refused: NaN becomes the smallest finite value of the image,
  +inf the largest and -inf the smallest (with a warning); an image without any finite voxel is refused;
* geometry: a non-finite or singular affine falls back to the other usable form (sform -> qform -> the
  voxel sizes) with a warning, and is refused when none is usable. A sheared (non-orthogonal) but
  invertible affine is kept unchanged with a warning: reorientation, resampling (voxel size = column
  norms) and the writers only need an invertible affine, and keeping it keeps outputs aligned with the input.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import logging
import mmap
import os
import zlib
from pathlib import Path
from typing import Union

import nibabel as nib
import numpy as np

from ..atomic_files import write_atomic
from ..errors import InputImageError

logger = logging.getLogger("totalsegmentator")

PathLike = Union[str, os.PathLike]

# gzip level of written .nii.gz files. 1 is nibabel's own default (so files match the official tool's sizes)
# and the fastest; measured on a 366x303x336 uint8 mask: level 1 0.15 s / 504 KiB, level 6 0.23 s / 170 KiB
# (an empty mask: 158 KiB vs 35 KiB). Writing speed wins by default; callers may pass a higher level.
DEFAULT_COMPRESSLEVEL = 1

_SHEAR_TOL = 1e-4
# compressed inputs up to this size are decompressed in memory in one call (see _open_nii_gz_fast)
IN_MEMORY_GZIP_BYTES = 512 * 1024 * 1024


def fast_gzip():
    """``isal.igzip`` (Intel ISA-L: 2-3x faster gzip reading, 4-5x faster writing at levels 0-3, same
    decompressed bytes), or None when the ``isal`` package is not installed (the standard library is used)."""
    try:
        from isal import igzip
    except ImportError:
        return None
    return igzip


def load_input_image(path_or_img: PathLike | nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """Load and validate an input image; returns a 3-D :class:`nibabel.Nifti1Image` with its data in memory.

    The returned image keeps the input header (extensions, qform/sform codes, descrip ...) so that writers
    can copy it; only the data shape/type entries follow the loaded array. The array of a ``.nii.gz`` file may
    be a read-only view of its decompressed bytes.
    """
    with contextlib.ExitStack() as files:
        img, source, data = _open(path_or_img, files)
        if data is None:
            data = _read_data(img, source)
    data = _check_dtype(data, img, source)
    data = _squeeze_to_3d(data, source, _header_dims(img))
    data = _replace_non_finite(data, source)
    affine = _usable_affine(img, source)

    header = _nifti1_header(img)
    out = nib.Nifti1Image(data, affine, header=header)
    out.set_data_dtype(data.dtype)  # scaled files load as floats; the header must describe the array
    if not np.allclose(affine, out.header.get_best_affine()):
        # the header's own geometry was unusable or stale: store the affine we use, keeping non-zero codes
        out.set_sform(affine, code=int(out.header["sform_code"]) or "aligned")
        out.set_qform(affine, code=int(out.header["qform_code"]) or "aligned")
    return out


def _nifti1_header(img) -> nib.Nifti1Header:
    """The image's header as NIfTI-1 (NIfTI-2, MGH, Analyze ...: what NIfTI-1 can hold)."""
    if type(img.header) is nib.Nifti1Header:
        return img.header
    if isinstance(img.header, nib.Nifti1Header):  # NIfTI-2: same fields, bigger types
        header = nib.Nifti1Header.from_header(img.header, check=False)
        header["sizeof_hdr"] = 348
        header["magic"] = b"n+1"
        return header
    return nib.Nifti1Image.from_image(img).header


def _open(path_or_img, files: contextlib.ExitStack
          ) -> tuple[nib.spatialimages.SpatialImage, str, np.ndarray | None]:
    """The image (data not read yet), its name for messages and, when the file was decompressed in memory, its
    voxel array (a view of the decompressed bytes); streams it needs are closed with ``files``."""
    if isinstance(path_or_img, nib.spatialimages.SpatialImage):
        return path_or_img, "the input image", None
    if not isinstance(path_or_img, (str, os.PathLike)):
        raise InputImageError(f"input must be a file path or a nibabel image, not {type(path_or_img).__name__}")
    path = Path(path_or_img)
    if not path.exists():
        raise InputImageError(f"input file not found: {path}")
    if path.is_dir():
        raise InputImageError(f"input is a directory, not a NIfTI file: {path}")
    try:
        opened = _open_nii_gz_fast(path, files)
        if opened is None:
            return nib.load(str(path)), str(path), None
        return opened[0], str(path), opened[1]
    except Exception as exc:  # nibabel raises many types (ImageFileError, HeaderDataError, OSError, ...)
        reason = _gzip_problem(path)
        if reason is None and isinstance(exc, nib.filebasedimages.ImageFileError):
            reason = "its content is not a NIfTI (or other nibabel-readable) image header"
        reason = reason or _one_line(exc)
        raise InputImageError(f"cannot read {path} as a NIfTI image: {reason}") from None


def _open_nii_gz_fast(path: Path, files: contextlib.ExitStack
                      ) -> tuple[nib.spatialimages.SpatialImage, np.ndarray | None] | None:
    """A ``.nii.gz`` image read through ISA-L, and its voxels when they are a plain view of the decompressed
    bytes (None: use nibabel's own opener).

    Files up to ``IN_MEMORY_GZIP_BYTES`` are mapped and decompressed in one call, which releases the GIL: the
    read then really runs beside torch's import in the prefetch thread (0.2 s instead of 0.7 s for a 43 MB CT
    next to it); unscaled voxels are then used where they lie (read-only, no copy). Bigger files are streamed
    (no second copy of the voxels in memory)."""
    igzip = fast_gzip()
    if igzip is None or not path.name.lower().endswith(".nii.gz"):
        return None
    decompressed = None
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return None
        if os.fstat(fh.fileno()).st_size <= IN_MEMORY_GZIP_BYTES:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                decompressed = igzip.decompress(view)
    if decompressed is not None:
        stream = io.BytesIO(decompressed)
    else:
        stream = files.enter_context(igzip.open(path, "rb"))
    head = stream.read(4)
    sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
    klass = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if klass is None:
        return None
    stream.seek(0)
    img = klass.from_file_map(klass.make_file_map({"image": stream, "header": stream}))
    return img, (None if decompressed is None else _voxels_in(decompressed, img))


def _voxels_in(buffer: bytes, img: nib.spatialimages.SpatialImage) -> np.ndarray | None:
    """The voxel array of ``img`` as a read-only view of ``buffer`` (the whole file's bytes), or None when
    nibabel must scale the values or the buffer is too short (nibabel then reads, and reports, as usual)."""
    proxy = img.dataobj
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy) or proxy.slope != 1 or proxy.inter != 0:
        return None
    dtype = np.dtype(proxy.dtype)
    if dtype.hasobject or int(proxy.offset) + int(np.prod(proxy.shape)) * dtype.itemsize > len(buffer):
        return None
    return np.ndarray(proxy.shape, dtype, buffer=buffer, offset=int(proxy.offset), order=proxy.order)


def _gzip_problem(path: Path) -> str | None:
    """Why a gzip file is unreadable ('truncated', 'not gzip data'), or None if it decompresses fine."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        return None if not path.name.endswith(".gz") else "the file is not gzip-compressed data"
    try:
        with gzip.open(path, "rb") as gz:
            while gz.read(1 << 24):
                pass
    except EOFError:
        return "the gzip data is truncated (incomplete download or copy?)"
    except (OSError, zlib.error) as exc:
        return f"the gzip data is corrupt ({_one_line(exc)})"
    return None


def _read_data(img, source: str) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except MemoryError:
        raise
    except Exception as exc:  # EOFError / zlib.error / BadGzipFile for truncated or corrupt files
        if isinstance(exc, EOFError):
            reason = "the file is truncated (incomplete download or copy?)"
        else:
            reason = f"the file is truncated or corrupt ({_one_line(exc)})"
        raise InputImageError(f"cannot read the voxel data of {source}: {reason}") from None


def _check_dtype(data: np.ndarray, img, source: str) -> np.ndarray:
    dtype = data.dtype
    if dtype.fields is not None or dtype.kind == "V":
        raise InputImageError(f"{source} has a structured voxel type ({img.get_data_dtype()}, e.g. RGB); "
                              "a scalar grey-value image is needed")
    if dtype.kind == "c":
        raise InputImageError(f"{source} has complex voxel values; a real-valued image is needed")
    if dtype.kind not in "biuf":
        raise InputImageError(f"{source} has an unsupported voxel type {dtype}")
    if dtype.kind == "b":
        return data.astype(np.uint8)
    return data


def _header_dims(img) -> tuple[int, ...]:
    try:
        dim = img.header["dim"]
    except Exception:  # headers of other formats
        dim = None
    if dim is None or not 1 <= int(dim[0]) <= 7:
        return tuple(img.shape)
    return tuple(int(d) for d in dim[1:int(dim[0]) + 1])


def _squeeze_to_3d(data: np.ndarray, source: str, header_dims: tuple[int, ...]) -> np.ndarray:
    shape = data.shape
    if data.size == 0 or 0 in header_dims:
        raise InputImageError(f"{source} has dimensions {header_dims} with an empty axis; it contains no voxels")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise InputImageError(f"{source} is {data.ndim}-D with shape {shape}; a 3-D image is needed")
    if data.ndim > 3:
        raise InputImageError(f"{source} has shape {shape}: {int(np.prod(shape[3:]))} volumes along the extra "
                              "axes; a single 3-D volume is needed (extract one volume first)")
    return data


def _replace_non_finite(data: np.ndarray, source: str) -> np.ndarray:
    if data.dtype.kind != "f":
        return data
    finite = np.isfinite(data)
    if finite.all():
        return data
    if not finite.any():
        raise InputImageError(f"{source} contains no finite voxel value (all NaN or infinite)")
    low, high = data[finite].min(), data[finite].max()
    n_bad = int(finite.size - np.count_nonzero(finite))
    logger.warning("%s contains %d NaN/infinite voxels; NaN and -inf set to %s, +inf to %s",
                   source, n_bad, low, high)
    data = np.array(data, copy=True)
    np.copyto(data, low, where=np.isnan(data) | np.isneginf(data))
    np.copyto(data, high, where=np.isposinf(data))
    return data


def _is_usable(affine: np.ndarray | None) -> bool:
    if affine is None or not np.all(np.isfinite(affine)):
        return False
    return abs(np.linalg.det(affine[:3, :3])) > 1e-12


def _usable_affine(img, source: str) -> np.ndarray:
    affine = img.affine
    if not _is_usable(affine):
        candidates = []
        header = img.header
        if isinstance(header, nib.Nifti1Header):
            for name in ("sform", "qform"):
                matrix, code = getattr(header, f"get_{name}")(coded=True)
                if code:
                    candidates.append((name, matrix))
        candidates.append(("voxel sizes", _base_affine(img)))
        for name, cand in candidates:
            if _is_usable(cand):
                logger.warning("%s has an unusable (singular or non-finite) affine; using its %s instead",
                               source, name)
                affine = cand
                break
        else:
            raise InputImageError(f"{source} has no usable geometry: the affine is singular or non-finite and "
                                  "the voxel sizes are not positive")
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.abs(cols.T @ cols - np.eye(3)).max() > _SHEAR_TOL:
        logger.warning("%s has a sheared (non-orthogonal) affine; it is kept as is and the segmentation is "
                       "computed on the voxel grid", source)
    return np.asarray(affine, dtype=np.float64)


def _base_affine(img) -> np.ndarray | None:
    try:
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    except Exception:
        return None
    if zooms.size < 3 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        return None
    return np.diag([*zooms, 1.0])


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def nifti_bytes(img: nib.Nifti1Image, gz: bool = True, compresslevel: int = DEFAULT_COMPRESSLEVEL) -> bytes:
    """The file content :func:`save_nifti_atomic` would write (``gz``: a ``.nii.gz`` name)."""
    buffer = io.BytesIO()
    _write_stream(img, buffer, gz, compresslevel)
    return buffer.getvalue()


class _HeaderSink(io.RawIOBase):
    """A write-only stream that keeps the first ``keep`` bytes and counts the rest."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.head = bytearray()
        self.size = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if len(self.head) < self.keep:
            self.head += bytes(memoryview(data).cast("B")[:self.keep - len(self.head)])
        self.size += size
        return size

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.size
        elif whence != 0:
            raise io.UnsupportedOperation("the header sink cannot seek from the end")
        if offset < self.size:
            raise io.UnsupportedOperation("the header sink only moves forward")
        self.write(bytes(offset - self.size))
        return self.size


def nifti_header_bytes(img: nib.Nifti1Image) -> bytes:
    """The bytes nibabel writes before the voxel data of ``img`` (header, extensions, padding) in a single
    ``.nii`` file: what precedes the data in :func:`nifti_bytes` ``(img, gz=False)``."""
    sink = _HeaderSink(1 << 20)
    img.to_stream(sink)
    data_bytes = int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    offset = sink.size - data_bytes
    if offset < 0 or offset > len(sink.head):
        raise ValueError("unexpected NIfTI layout: the header does not precede the data")
    return bytes(sink.head[:offset])


def _gzip_writer(raw, compresslevel: int):
    """A gzip stream onto ``raw``: ISA-L for levels 0-3 when installed, else the standard library."""
    igzip = fast_gzip()
    if igzip is not None and 0 <= compresslevel <= 3:
        return igzip.IGzipFile(filename="", fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0)
    return gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=compresslevel, mtime=0)


def _write_stream(img: nib.Nifti1Image, raw, gz: bool, compresslevel: int) -> None:
    if gz:
        with _gzip_writer(raw, compresslevel) as stream:
            img.to_stream(stream)
    else:
        img.to_stream(raw)


def save_nifti_atomic(img: nib.Nifti1Image, path: PathLike, compresslevel: int = DEFAULT_COMPRESSLEVEL) -> Path:
    """Write ``img`` to ``path`` via a temporary file in the same folder and :func:`os.replace`.

    Names ending in ``.gz`` (any case, as nibabel) are gzip-compressed at ``compresslevel`` (gzip time stamp 0, so
    identical images give identical files); any other name is written uncompressed. The parent folder is created
    if needed.
    """
    path = Path(path)
    gz = path.name.lower().endswith(".gz")
    return write_atomic(path, lambda raw: _write_stream(img, raw, gz, compresslevel))
