"""Finding the cases of a batch: NIfTI files, DICOM series folders and zips, from folders, globs and lists.

Rules (what ``discover_cases`` accepts as one input value):

* a ``.nii``/``.nii.gz`` file or a ``.zip`` (DICOM slices): one case;
* a ``.csv``/``.tsv`` file: one case per row; the path column is ``input`` (or ``path``, ``image``, ``file``,
  ``filepath``), optional columns ``case_id`` (or ``id``, ``case``, ``subject``) and ``series_uid``; without a
  header row the first column is the path; relative paths are relative to the list file's folder;
* a ``.txt``/``.lst``/``.list`` file: one path per line (``#`` starts a comment), relative as above;
* a folder holding DICOM files directly: one case (a DICOM series folder);
* any other folder: scanned recursively for NIfTI files, zips and DICOM series folders (hidden entries and the
  batch output folder are skipped);
* a glob pattern (``*``, ``?``, ``[``; ``**`` recurses): each match as above.

A path named in a list that does not exist still becomes a case (it fails when read), so one bad row does not
stop a cohort. Case ids are file/folder names without extension; names found twice get their parent folder
names as prefix (``a/ct.nii.gz``, ``b/ct.nii.gz`` -> ``a_ct``, ``b_ct``) until they are unique; a CSV may give ids.
"""
from __future__ import annotations

import csv
import glob
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ZIP_SUFFIXES = (".zip",)
CSV_SUFFIXES = (".csv", ".tsv")
TEXT_LIST_SUFFIXES = (".txt", ".lst", ".list")
PATH_COLUMNS = ("input", "path", "image", "file", "filepath", "filename")
ID_COLUMNS = ("case_id", "id", "case", "subject", "subject_id")
SERIES_COLUMNS = ("series_uid", "seriesinstanceuid")
DICOM_PROBE_FILES = 20  # files looked at when deciding whether a folder is a DICOM series
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._+\-]+")


@dataclass(frozen=True)
class Case:
    """One scan of a batch: ``input`` is an absolute path (NIfTI file, DICOM folder or zip)."""

    case_id: str
    input: str
    kind: str  # "nifti", "dicom" (folder) or "zip"; "missing" when a listed path does not exist
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.kind in ("dicom", "zip")


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    """``ct.nii.gz`` -> ``ct``, ``series.zip`` -> ``series``, a folder name stays as is."""
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES + ZIP_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def safe_case_id(text: str) -> str:
    """A case id usable as a file name on every system: unsafe characters become ``_``."""
    cleaned = _UNSAFE_ID.sub("_", text.strip()).strip("._")
    if not cleaned:
        raise OptionError(f"case id {text!r} has no usable characters; use letters, digits, '.', '_' or '-'")
    return cleaned


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    """True when the folder directly holds DICOM files (``.dcm`` names or the ``DICM`` preamble)."""
    checked = 0
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.name.lower().endswith(".dcm"):
            return True
        if checked < DICOM_PROBE_FILES:
            checked += 1
            if _has_dicom_magic(Path(entry.path)):
                return True
    return False


def _kind_of_file(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    return None


@dataclass(frozen=True)
class _Found:
    path: Path
    kind: str
    case_id: str | None = None  # given explicitly (CSV column)
    series_uid: str | None = None


def _scan_folder(root: Path, exclude: Sequence[Path]) -> list[_Found]:
    found: list[_Found] = []

    def walk(folder: Path) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise OptionError(f"cannot read the input folder {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if any(_same_or_inside(path, ex) for ex in exclude):
                continue
            if entry.is_dir():
                if is_dicom_folder(path):
                    found.append(_Found(path, "dicom"))
                else:
                    walk(path)
            elif entry.is_file():
                kind = _kind_of_file(path)
                if kind is not None:
                    found.append(_Found(path, kind))

    walk(root)
    return found


def _same_or_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _resolve_listed(value: str, base: Path) -> Path:
    path = Path(value.strip()).expanduser()
    return (path if path.is_absolute() else base / path).absolute()


def _listed(path: Path, case_id: str | None = None, series_uid: str | None = None) -> _Found:
    """A path named in a list: always one case (a folder is a DICOM series), missing paths included."""
    if not path.exists():
        kind = "missing"
    elif path.is_dir():
        kind = "dicom"
    else:
        kind = _kind_of_file(path) or ("zip" if zipfile.is_zipfile(path) else "nifti")
    return _Found(path, kind, case_id, series_uid)


def _read_text_list(path: Path) -> list[_Found]:
    out = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(_listed(_resolve_listed(line, path.parent)))
    return out


def _pick(header: list[str], names: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _read_csv_list(path: Path) -> list[_Found]:
    delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [row for row in csv.reader(fh, delimiter=delimiter) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    path_col = _pick(rows[0], PATH_COLUMNS)
    if path_col is None:  # no header: the first column holds the paths
        path_col, id_col, series_col, body = 0, None, None, rows
    else:
        id_col, series_col, body = _pick(rows[0], ID_COLUMNS), _pick(rows[0], SERIES_COLUMNS), rows[1:]
    out = []
    for number, row in enumerate(body, start=2 if body is not rows else 1):
        if path_col >= len(row) or not row[path_col].strip():
            raise OptionError(f"{path}: row {number} has no input path")
        case_id = row[id_col].strip() if id_col is not None and id_col < len(row) and row[id_col].strip() else None
        series = (row[series_col].strip() or None) if series_col is not None and series_col < len(row) else None
        out.append(_listed(_resolve_listed(row[path_col], path.parent), case_id, series))
    return out


def _expand_one(value: str, exclude: Sequence[Path]) -> list[_Found]:
    path = Path(value).expanduser()
    if not path.exists() and _GLOB_CHARS.search(value):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise OptionError(f"the pattern '{value}' matches no file or folder")
        out: list[_Found] = []
        for match in matches:
            out += _expand_path(Path(match).absolute(), exclude, from_glob=True)
        return out
    if not path.exists():
        raise OptionError(f"input '{value}' does not exist")
    return _expand_path(path.absolute(), exclude, from_glob=False)


def _expand_path(path: Path, exclude: Sequence[Path], from_glob: bool) -> list[_Found]:
    name = path.name.lower()
    if path.is_dir():
        if is_dicom_folder(path):
            return [_Found(path, "dicom")]
        found = _scan_folder(path, exclude)
        if not found and not from_glob:
            raise OptionError(f"no NIfTI files, DICOM folders or zips found in {path}")
        return found
    if name.endswith(CSV_SUFFIXES):
        return _read_csv_list(path)
    if name.endswith(TEXT_LIST_SUFFIXES):
        return _read_text_list(path)
    kind = _kind_of_file(path)
    if kind is None:
        if from_glob:
            return []  # e.g. '*' matching a README next to the scans
        raise OptionError(f"input '{path}' is not a NIfTI file (.nii/.nii.gz), a DICOM folder or zip, "
                          "or a case list (.csv/.txt)")
    return [_Found(path, kind)]


def _name_chain(f: _Found) -> tuple[str, ...]:
    parents = tuple(p for p in f.path.parent.parts if p != f.path.anchor)
    return parents + (strip_image_suffix(f.path.name),)


def _unique_ids(found: list[_Found]) -> list[str]:
    """Shortest unique ids: the file/folder name, with parent folder names as prefix where names clash."""
    chains = [_name_chain(f) for f in found]
    depth = [1] * len(found)

    def make(i: int) -> str:
        given = found[i].case_id
        return safe_case_id(given if given is not None else "_".join(chains[i][-depth[i]:]))

    while True:
        ids = [make(i) for i in range(len(found))]
        groups: dict[str, list[int]] = {}
        for i, case_id in enumerate(ids):
            groups.setdefault(case_id.lower(), []).append(i)  # case-insensitive file systems
        clashes = [idx for idx in groups.values() if len(idx) > 1]
        if not clashes:
            return ids
        grown = False
        for idx in clashes:
            for i in idx:
                if found[i].case_id is None and depth[i] < len(chains[i]):
                    depth[i] += 1
                    grown = True
        if not grown:
            idx = clashes[0]
            paths = ", ".join(str(found[i].path) for i in idx[:3])
            raise OptionError(f"case id '{ids[idx[0]]}' is used by more than one input ({paths}); "
                              "give unique ids in a CSV list (column case_id)")


def discover_cases(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                   exclude: Sequence[str | os.PathLike] = ()) -> list[Case]:
    """All cases named by ``inputs`` (folders, globs, lists, files), in a stable order, with unique ids.

    ``exclude``: folders never scanned (the batch output folder). Raises OptionError for inputs that name
    nothing usable; the same input path found twice is kept once.
    """
    values = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not values:
        raise OptionError("no input given; pass a folder, a glob pattern, a case list (.csv/.txt) or files")
    excluded = [Path(e).absolute() for e in exclude]
    found: list[_Found] = []
    seen: set[tuple[str, str | None]] = set()
    for value in values:
        for item in _expand_one(str(value), excluded):
            key = (str(item.path), item.series_uid)
            if key not in seen:
                seen.add(key)
                found.append(item)
    if not found:
        raise OptionError("no cases found in the given inputs")
    ids = _unique_ids(found)
    return [Case(case_id, str(f.path), f.kind, f.series_uid) for case_id, f in zip(ids, found)]
