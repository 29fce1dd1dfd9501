"""DICOM input: a folder of slices or a .zip of them -> NIfTI (via dicom2nifti) + the source slices.

The chosen series is copied into a private temporary folder that lives as long as the returned
``DicomSeries``; the DICOM writers use it (also for zip input, unlike the official tool).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import weakref
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import nibabel as nib
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom

from totalsegmentator.errors import DicomError

# dicom2nifti explains a refused series in many log lines; with no handler anywhere Python prints them to stderr
# ahead of our one-line error. An application that configures logging still receives them.
logging.getLogger("dicom2nifti").addHandler(logging.NullHandler())

MAX_ZIP_BYTES = 8 * 1024**3  # uncompressed size limit of a zip input
MAX_ZIP_RATIO = 200  # uncompressed / compressed size above which a big zip is refused as a bomb
RATIO_CHECK_MIN_BYTES = 64 * 1024**2  # small archives may compress arbitrarily well
MAX_ZIP_ENTRIES = 200_000

# Objects that are not images of a volume; a folder may contain them next to the slices.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "RWV"}


@dataclass
class DicomSeries:
    """A converted DICOM series.

    ``image``: the NIfTI converted by dicom2nifti (fully in memory); ``files``: the slice files of
    the series (copies in a private folder ``directory``); ``datasets``: their headers (no pixels),
    in the order of ``files``. Call ``close()`` (or use ``with``) to remove the private folder
    early; it is also removed when the object is garbage collected.
    """

    image: nib.Nifti1Image
    series_uid: str
    modality: str | None
    directory: Path
    files: list[Path]
    datasets: list[Dataset]
    _cleanup: weakref.finalize = field(repr=False, default=None)  # type: ignore[assignment]

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> DicomSeries:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Slice:
    path: Path
    header: Dataset


def load_dicom(path: str | Path, series_uid: str | None = None,
               max_zip_bytes: int = MAX_ZIP_BYTES) -> DicomSeries:
    """Convert the DICOM series in a folder or zip at ``path`` to NIfTI.

    With several series, ``series_uid`` picks one (DicomError listing them otherwise). Non-DICOM
    files and DICOM objects without pixel data are ignored.
    """
    path = Path(path)
    if not path.exists():
        raise DicomError(f"DICOM input not found: {path}")
    workdir = Path(tempfile.mkdtemp(prefix="totalseg_dicom_"))
    try:
        if path.is_dir():
            source = path
        elif zipfile.is_zipfile(path):
            source = workdir / "extracted_dcm"
            extract_zip_safely(path, source, max_bytes=max_zip_bytes)
        else:
            raise DicomError(_not_an_input(path))
        chosen_uid, slices = _choose_series(_scan_slices(source), series_uid, path)
        series_dir = workdir / "series"
        files = _link_series(slices, series_dir)
        image = _convert(series_dir, workdir / "converted", chosen_uid)
        if source != path:
            shutil.rmtree(source, ignore_errors=True)  # the series copy is all we keep
        shutil.rmtree(workdir / "converted", ignore_errors=True)
        modality = str(slices[0].header.get("Modality", "")) or None
        series = DicomSeries(image=image, series_uid=chosen_uid, modality=modality, directory=series_dir,
                             files=files, datasets=[s.header for s in slices])
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    series._cleanup = weakref.finalize(series, shutil.rmtree, str(workdir), ignore_errors=True)
    return series


def dicom_modality(path: str | Path) -> str | None:
    """Modality tag of the first readable DICOM file in a folder or zip (``*.dcm`` first); None if none."""
    path = Path(path)
    try:
        if path.is_dir():
            candidates = sorted(path.rglob("*.dcm")) + sorted(p for p in path.rglob("*") if p.suffix != ".dcm")
            for candidate in candidates:
                if not candidate.is_file():
                    continue
                modality = _read_modality(candidate)
                if modality:
                    return modality
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir() and i.file_size < 64 * 1024**2]
                infos.sort(key=lambda i: (not i.filename.lower().endswith(".dcm"), i.filename))
                for info in infos[:1000]:
                    with zf.open(info) as f:
                        modality = _read_modality(f)
                    if modality:
                        return modality
    except (OSError, zipfile.BadZipFile):
        return None
    return None


def _read_modality(source) -> str | None:
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    value = str(ds.get("Modality", "")).strip()
    return value.upper() or None


def extract_zip_safely(zip_path: Path, target: Path, max_bytes: int = MAX_ZIP_BYTES) -> None:
    """Extract ``zip_path`` into ``target``, refusing path escapes, links and zip bombs."""
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DicomError(f"cannot read zip file {zip_path}: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise DicomError(f"zip file {zip_path} has {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
        total = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos)
        if total > max_bytes:
            raise DicomError(f"zip file {zip_path} unpacks to {total} bytes, more than the limit of {max_bytes}")
        if total > RATIO_CHECK_MIN_BYTES and total > MAX_ZIP_RATIO * max(packed, 1):
            raise DicomError(f"zip file {zip_path} is refused: compression ratio {total / max(packed, 1):.0f} "
                             "suggests a zip bomb")
        plan = []
        for info in infos:
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if (name.startswith("/") or (parts and len(parts[0]) == 2 and parts[0][1] == ":")
                    or ".." in parts):
                raise DicomError(f"zip file {zip_path} is refused: entry '{info.filename}' points outside the archive")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DicomError(f"zip file {zip_path} is refused: entry '{info.filename}' is a symbolic link")
            dest = (root / Path(*parts)) if parts else root
            if not dest.resolve().is_relative_to(root):
                raise DicomError(f"zip file {zip_path} is refused: entry '{info.filename}' points outside the archive")
            plan.append((info, dest))
        written = 0
        for info, dest in plan:
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(dest, "wb") as out:
                    while chunk := src.read(1024 * 1024):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DicomError(f"zip file {zip_path} unpacks to more than {max_bytes} bytes")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as e:
                raise DicomError(f"cannot extract '{info.filename}' from {zip_path}: {e}") from None


def _scan_slices(folder: Path) -> list[_Slice]:
    """Headers of the DICOM image files below ``folder`` (other files are skipped)."""
    slices = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            file_path = Path(root) / name
            if not file_path.is_file():
                continue
            try:
                # Deferred (lazy) large values: pixel data presence is checked without reading it.
                probe = pydicom.dcmread(file_path, defer_size="1 KB")
                if not any(tag in probe for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                    continue
                if str(probe.get("Modality", "")).upper() in NON_IMAGE_MODALITIES or "SeriesInstanceUID" not in probe:
                    continue
                ds = pydicom.dcmread(file_path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
                continue
            slices.append(_Slice(file_path, ds))
    return slices


def _choose_series(slices: list[_Slice], series_uid: str | None, path: Path) -> tuple[str, list[_Slice]]:
    if not slices:
        raise DicomError(f"no DICOM image files found in {path}")
    groups: dict[str, list[_Slice]] = defaultdict(list)
    for s in slices:
        groups[str(s.header.SeriesInstanceUID)].append(s)
    if series_uid is not None:
        if series_uid not in groups:
            raise DicomError(f"series {series_uid} not found in {path}; available: {_describe(groups)}")
        return series_uid, groups[series_uid]
    if len(groups) > 1:
        raise DicomError(f"{path} contains {len(groups)} DICOM series: {_describe(groups)}; "
                         "choose one with series_uid (--series_uid)")
    uid, chosen = next(iter(groups.items()))
    return uid, chosen


def _not_an_input(path: Path) -> str:
    """What to do with a file that is neither NIfTI (by its name) nor a zip."""
    if is_dicom(path):
        return f"{path} is a single DICOM file; pass the folder (or a .zip) holding all slices of the series"
    return (f"{path} is neither a NIfTI file (.nii, .nii.gz) nor a folder or .zip of DICOM slices; convert other "
            "image formats (.mha, .nrrd, ...) to NIfTI first")


def _describe(groups: dict[str, list[_Slice]]) -> str:
    parts = []
    for uid, members in groups.items():
        description = str(members[0].header.get("SeriesDescription", "")).strip() or "no description"
        parts.append(f"{uid} ('{description}', {len(members)} slices)")
    return "; ".join(parts)


def _link_series(slices: list[_Slice], folder: Path) -> list[Path]:
    """Hard-link (or copy) the series' files into ``folder`` with unique names."""
    folder.mkdir(parents=True)
    files = []
    for i, s in enumerate(slices):
        dest = folder / f"{i:06d}_{s.path.name}"
        try:
            os.link(s.path, dest)
        except OSError:
            shutil.copyfile(s.path, dest)
        files.append(dest)
    return files


def _convert(series_dir: Path, out_dir: Path, series_uid: str) -> nib.Nifti1Image:
    # dicom2nifti is imported here: it is slow to import and only needed for DICOM input.
    import dicom2nifti
    import dicom2nifti.exceptions as d2n_errors

    name = f"DICOM series {series_uid}" if series_uid else "the DICOM series (no SeriesInstanceUID)"
    out_dir.mkdir(parents=True)
    # Uncompressed: the file is private and read back at once; gzip would only cost time
    # (the image, header included, is identical to the official converted_dcm.nii.gz).
    out_file = out_dir / "converted_dcm.nii"
    try:
        dicom2nifti.dicom_series_to_nifti(str(series_dir), str(out_file), reorient_nifti=True)
    except (d2n_errors.ConversionValidationError, d2n_errors.ConversionError) as e:
        raise DicomError(f"{name} cannot be converted: {_explain(e)}") from None
    except Exception as e:  # dicom2nifti raises plain errors for many kinds of broken series
        message = " ".join(str(e).split()) or type(e).__name__
        raise DicomError(f"{name} cannot be converted: {message}") from None
    if not out_file.exists():
        raise DicomError(f"{name} cannot be converted: dicom2nifti wrote no image")
    # Load from bytes so the image does not depend on the temporary file.
    return nib.Nifti1Image.from_bytes(out_file.read_bytes())


_REASONS = {
    "SLICE_INCREMENT_INCONSISTENT": "slices are missing or unevenly spaced",
    "IMAGE_ORIENTATION_INCONSISTENT": "the slices have different orientations",
    "IMAGE_ORIENTATION_NOT_ORTHOGONAL": "the slices have different orientations",
    "SLICE_ORIENTATION_INCONSISTENT": "the slices have different orientations",
    "NOT_A_VOLUME": "the series has too few slices to form a volume",
    "TOO_FEW_SLICES/LOCALIZER": "the series has too few slices (a localizer?)",
    "IMAGE_SHAPE_INCONSISTENT": "the slices have different matrix sizes",
    "NON_IMAGING_DICOM_FILES": "the files are not images",
}


def _explain(error: Exception) -> str:
    text = " ".join(str(error).split())
    for key, reason in _REASONS.items():
        if key in text:
            return f"{reason} ({key})"
    return text or type(error).__name__
