"""Model weights: where each dataset lives, how it is downloaded, imported and checked.

A dataset counts as installed when ``<weights dir>/<dataset folder>`` exists, as in the official tool, so an
existing ``~/.totalsegmentator/nnunet/results`` keeps working. Downloads are streamed to
``<weights dir>/.downloads/<folder>.zip.part`` and resumed with an HTTP ``Range`` request when a previous run was
interrupted; the archive is checked (no path escapes, no links, bounded size) and unpacked into a temporary folder
beside the target, then renamed into place, so a crash never leaves a half-filled folder that looks installed. A
file lock per dataset (``<weights dir>/.locks/<folder>.lock``) makes concurrent processes wait for one download.

Environment:
    ``TOTALSEG_WEIGHTS_BASE_URL``: a mirror of the open weights, e.g. a server inside a hospital network. The
    zip of dataset folder ``F`` is then fetched from ``<base url>/F.zip`` instead of the GitHub release.
    Licensed weights always come from the license server, which checks the license number.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3
from filelock import FileLock, Timeout
from tqdm import tqdm

from . import __version__
from . import config
from .atomic_files import write_text_atomic
from .errors import LicenseError, UnknownTaskError, WeightsError
from .registry import (
    ACADEMIC_LICENSE_URL,
    Dataset,
    Mode,
    all_dataset_ids,
    download_task_to_ids,
    get_dataset,
    get_task,
    license_server_url,
)

BASE_URL_ENV = "TOTALSEG_WEIGHTS_BASE_URL"
LICENSE_VALIDATION_URL = "https://backend.totalsegmentator.com:443/is_valid_license_number"

CHUNK_SIZE = 131072
CONNECT_TIMEOUT_S = 15.0
READ_TIMEOUT_S = 60.0
LICENSE_READ_TIMEOUT_S = 300.0
LICENSE_VALIDATION_TIMEOUT_S = 5.0
MAX_ATTEMPTS = 5  # per download; every attempt after the first resumes the partial file
RETRY_WAIT_S = 1.0  # multiplied by the attempt number
MAX_UNPACKED_BYTES = 64 * 1024**3
MAX_ZIP_ENTRIES = 200_000

_NNUNET_FOLDER = re.compile(r"^(Dataset|Task)\d{3,}_")
_DRIVE = re.compile(r"^[A-Za-z]:")
_LEGACY_FOLDERS = (
    "Task258_lung_vessels_248subj", "Task200_covid_challenge", "Task201_covid", "Task150_icb_v0",
    "Task260_hip_implant_71subj", "Task269_Body_extrem_6mm_1200subj", "Task503_cardiac_motion",
    "Task273_Body_extrem_1259subj", "Task315_thoraxCT", "Task008_HepaticVessel", "Task417_heart_mixed_317subj",
    "Task278_TotalSegmentator_part6_bones_1259subj", "Task435_Heart_vessels_118subj",
)
_LEGACY_TOP_LEVEL = (
    "Dataset297_TotalSegmentator_total_3mm_1559subj_v204", "Dataset302_vertebrae_body_1559subj",
    "body_stats_models_2026_02_11",
)
_legacy_checked: set[Path] = set()
# our own bookkeeping folders inside a weights dir, and macOS zip residue
_SKIP_WHEN_SCANNING = (".locks", ".downloads", ".unpack_", ".import_", ".old_", "__MACOSX")


# ----------------------------------------------------------------------------------------------- locations

def dataset_path(dataset_id: int | str, weights_dir: Path | None = None) -> Path:
    """Where the weights of ``dataset_id`` live (whether or not they are installed)."""
    return (weights_dir or config.weights_dir()) / get_dataset(dataset_id).folder


def is_installed(dataset_id: int | str, weights_dir: Path | None = None) -> bool:
    return dataset_path(dataset_id, weights_dir).is_dir()


def dataset_ids_for_download_task(name: str) -> list[int | str]:
    """The dataset ids ``totalseg_download_weights -t NAME`` fetches; ``all`` is the union sorted as text."""
    mapping = download_task_to_ids()
    if name == "all":
        union = {str(i): i for ids in mapping.values() for i in ids}
        return [union[key] for key in sorted(union)]
    if name not in mapping:
        raise UnknownTaskError(f"unknown weights name '{name}'; choose one of: all, {', '.join(mapping)}")
    return list(mapping[name])


def remove_legacy_weights(weights_dir: Path | None = None) -> None:
    """Delete weight folders of old releases that the official tool removes too (best effort)."""
    wdir = weights_dir or config.weights_dir()
    old_root = wdir / "nnUNet" / "3d_fullres"
    candidates = [old_root / name for name in _LEGACY_FOLDERS] + [wdir / name for name in _LEGACY_TOP_LEVEL]
    if old_root.is_dir():
        candidates += [p for p in old_root.glob("Task25[1-6]_*")]
    for path in candidates:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- downloads

@dataclass(frozen=True)
class _Source:
    url: str
    method: str  # "GET" or "POST"
    body: dict | None
    read_timeout: float
    licensed: bool


def _source(ds: Dataset) -> _Source:
    if ds.license_task is not None:
        number = config.require_license(ds.license_task)
        body = {"license_number": number, "task": ds.license_task, "version": __version__}
        return _Source(license_server_url(), "POST", body, LICENSE_READ_TIMEOUT_S, True)
    if ds.url is None:
        raise WeightsError(
            f"no public download exists for the weights '{ds.folder}' (dataset {ds.key}); "
            f"place the folder in {config.weights_dir()} by hand if you have it")
    mirror = os.environ.get(BASE_URL_ENV, "").strip()
    url = f"{mirror.rstrip('/')}/{Path(ds.folder).name}.zip" if mirror else ds.url
    return _Source(url, "GET", None, READ_TIMEOUT_S, False)


def _manual_hint(folder: str) -> str:
    return (f"Install the weights by hand: download the zip on another machine and run "
            f"'totalseg_import_weights -i FILE.zip', or copy the folder {config.weights_dir() / folder} from a "
            f"machine that has it, or set TOTALSEG_WEIGHTS_PATH to a folder that contains it")


def _network_reason(exc: BaseException) -> str:
    """A short description of a requests/urllib3 failure (their messages span several nested reprs)."""
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if any(err is seen for seen in chain):
            continue
        chain.append(err)
        for nested in (*err.args, getattr(err, "reason", None), err.__cause__, err.__context__):
            if isinstance(nested, BaseException):
                todo.append(nested)
    reasons = (  # most specific first; urllib3's NewConnectionError is (oddly) a ConnectTimeoutError
        (socket.gaierror, "the host name could not be resolved (offline or DNS failure)"),
        (ConnectionRefusedError, "connection refused (server down or wrong address)"),
        ((urllib3.exceptions.IncompleteRead, http.client.IncompleteRead),
         "the connection closed before all bytes arrived"),
        (requests.exceptions.SSLError, "TLS/SSL error"),
        ((socket.timeout, TimeoutError, requests.Timeout, urllib3.exceptions.ReadTimeoutError),
         "the connection timed out"),
        (requests.ConnectionError, "the connection failed (offline or server unreachable)"),
        ((urllib3.exceptions.ProtocolError, requests.exceptions.ChunkedEncodingError), "the connection broke"),
    )
    for kinds, text in reasons:
        if any(isinstance(err, kinds) for err in chain):
            return text
    return type(exc).__name__


def _server_message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return ""
    if isinstance(data, dict):
        for key in ("detail", "message", "error", "status"):
            if isinstance(data.get(key), str):
                return " ".join(data[key].split())[:200]
    return ""


def _content_range(value: str | None) -> tuple[int, int] | None:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); None when absent or unusable."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", value or "")
    return (int(m.group(1)), int(m.group(3))) if m else None


def _int_header(response: requests.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _read_meta(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _write_meta(path: Path, data: dict) -> None:
    write_text_atomic(json.dumps(data), path)


def _download(source: _Source, part: Path, label: str, quiet: bool) -> None:
    """Fetch ``source`` into ``part``, resuming what an earlier attempt (or run) left there."""
    meta_path = part.with_name(part.name + ".json")
    meta = _read_meta(meta_path)
    if part.exists() and meta.get("url") != source.url:
        _discard(part)  # left by a different source: cannot be resumed
    part.parent.mkdir(parents=True, exist_ok=True)
    last_problem = "unknown error"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        if attempt > 1:
            if not quiet:
                resume = f", resuming at {have} bytes" if have else ""
                print(f"{last_problem}; retrying ({attempt}/{MAX_ATTEMPTS}){resume}", file=sys.stderr, flush=True)
            time.sleep(RETRY_WAIT_S * (attempt - 1))
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            etag = meta.get("etag") or ""
            validator = etag if etag and not etag.startswith("W/") else meta.get("modified")  # no weak ETags
            if validator:
                headers["If-Range"] = validator  # the server sends the whole file if it changed meanwhile
        try:
            response = requests.request(source.method, source.url, json=source.body, headers=headers, stream=True,
                                        timeout=(CONNECT_TIMEOUT_S, source.read_timeout))
        except requests.RequestException as exc:
            kept = f"; the partial download {part} is kept and resumed next time" if have else ""
            raise WeightsError(f"could not download {label} from {source.url}: {_network_reason(exc)}{kept}. "
                               f"{_manual_hint(label)}") from None
        with response:
            status = response.status_code
            if status == 416 and have:
                complete = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", response.headers.get("Content-Range", ""))
                if complete and int(complete.group(1)) == have:
                    return  # an earlier run got every byte but stopped before unpacking
                _discard(part)  # our partial file is not a prefix of what the server has
                last_problem = "the server rejected the resume request"
                continue
            if status >= 400:
                msg = _server_message(response)
                detail = f"HTTP {status}" + (f": {msg}" if msg else "")
                if status in (502, 503, 504):  # usually a passing hiccup of a proxy or CDN
                    last_problem = detail
                    continue
                if source.licensed and status in (401, 403):
                    raise LicenseError(f"the license server refused to send {label} ({detail}); check the license "
                                       f"number stored with 'totalseg_set_license' ({ACADEMIC_LICENSE_URL})")
                raise WeightsError(f"could not download {label} from {source.url} ({detail}). {_manual_hint(label)}")
            if "json" in response.headers.get("Content-Type", "") and source.licensed:
                msg = _server_message(response) or "no archive in the reply"
                raise LicenseError(f"the license server did not send {label}: {msg}")
            if status == 206:
                start_total = _content_range(response.headers.get("Content-Range"))
                if start_total is None or start_total[0] != have:
                    _discard(part)
                    last_problem = "the server answered the resume request with the wrong range"
                    continue
                total: int | None = start_total[1]
                mode = "ab"
            else:
                have, mode = 0, "wb"
                total = _int_header(response, "Content-Length")
                meta = {"url": source.url, "etag": response.headers.get("ETag"),
                        "modified": response.headers.get("Last-Modified")}
                _write_meta(meta_path, meta)
            if total is not None:
                _check_free_space(part.parent, total - have, label)
            try:
                out = open(part, mode)
            except OSError as exc:
                raise WeightsError(f"could not write {part}: {exc.strerror or exc}") from None
            try:
                with out, tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                               desc=label, disable=quiet, file=sys.stderr, leave=True) as bar:
                    for chunk in _body_chunks(response):
                        _write(out, chunk, part)
                        bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                last_problem = f"the transfer broke off ({_network_reason(exc)})"
                continue
        size = part.stat().st_size
        if total is None or size == total:
            return
        if size > total:
            _discard(part)
            last_problem = f"received {size} bytes but {total} were announced"
        else:
            last_problem = f"the connection closed after {size} of {total} bytes"
    resume = "; run again to resume" if part.exists() else ""
    raise WeightsError(f"could not download {label} from {source.url}: {last_problem} ({MAX_ATTEMPTS} attempts)"
                       f"{resume}. {_manual_hint(label)}")


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The raw body in pieces of at most CHUNK_SIZE, handed on as soon as they arrive, so that bytes read before
    a connection drops reach the partial file (``iter_content`` would lose the last incomplete chunk)."""
    raw = response.raw
    read = getattr(raw, "read1", None) or raw.read  # read1: urllib3 >= 2
    while True:
        chunk = read(CHUNK_SIZE, decode_content=False)
        if not chunk:
            return
        yield chunk


def _write(out, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as exc:  # a full disk is not worth a retry
        raise WeightsError(f"could not write {part}: {exc.strerror or exc}") from None


def _check_free_space(folder: Path, needed: int, label: str) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise WeightsError(f"not enough disk space for {label} in {folder}: {needed / 1e9:.2f} GB needed, "
                           f"{free / 1e9:.2f} GB free")


# ----------------------------------------------------------------------------------------------- archives

class _BadArchive(WeightsError):
    """The archive itself is unusable (corrupt, unsafe, wrong content): a downloaded copy is not worth keeping."""


def _checked_members(archive: zipfile.ZipFile, origin: str) -> list[zipfile.ZipInfo]:
    """All entries of the archive, refusing anything that could write outside the target or explode in size."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise _BadArchive(f"refusing {origin}: {len(infos)} entries are more than the limit of {MAX_ZIP_ENTRIES}")
    total = 0
    for info in infos:
        name = info.filename.replace("\\", "/")
        if "\x00" in name or name.startswith("/") or _DRIVE.match(name):
            raise _BadArchive(f"refusing {origin}: entry {info.filename!r} has an absolute path")
        if ".." in name.split("/"):
            raise _BadArchive(f"refusing {origin}: entry {info.filename!r} points outside the target folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _BadArchive(f"refusing {origin}: entry {info.filename!r} is a symbolic link")
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise _BadArchive(f"refusing {origin}: it would unpack to {total / 1e9:.1f} GB, more than the limit of "
                           f"{MAX_UNPACKED_BYTES / 1e9:.1f} GB")
    return infos


def _extract(zip_path: Path, dest: Path, origin: str) -> None:
    """Unpack a zip into the empty folder ``dest`` after checking every entry."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = _checked_members(archive, origin)
            _check_free_space(dest, sum(i.file_size for i in infos), origin)
            root = dest.resolve()
            for info in infos:
                rel = info.filename.replace("\\", "/").strip("/")
                if not rel:
                    continue
                target = root / rel
                if root not in target.resolve().parents:
                    raise _BadArchive(f"refusing {origin}: entry {info.filename!r} points outside the target folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise _BadArchive(f"{origin} is not a valid zip archive ({exc})") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not zip_path.exists():
            raise WeightsError(f"{zip_path} does not exist") from None
        raise WeightsError(f"could not unpack {origin}: {exc.strerror or exc}") from None


def _validate_dataset_folder(path: Path, origin: str) -> None:
    """A weights folder must hold files; an nnU-Net one needs ``<trainer>__<plans>__<config>/dataset.json``."""
    if not any(p.is_file() for p in path.rglob("*")):
        raise _BadArchive(f"{origin}: the folder {path.name} is empty")
    if _NNUNET_FOLDER.match(path.name) and not any(path.glob("*/dataset.json")):
        raise _BadArchive(f"{origin}: {path.name} is not an nnU-Net results folder "
                           f"(no <trainer>__<plans>__<configuration>/dataset.json inside)")


def _move_into_place(src: Path, target: Path) -> None:
    """Rename ``src`` to ``target`` (same file system), replacing an existing ``target`` as late as possible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".old_{target.name}_"))
        os.replace(target, old / target.name)
    try:
        os.replace(src, target)
    except OSError:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _lock(wdir: Path, folder: str, quiet: bool) -> FileLock:
    """Acquired lock for one dataset folder; tells the user when it waits for another process."""
    locks = wdir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{Path(folder).name}.lock"))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        if not quiet:
            print(f"Waiting for another process that is installing {folder} ...", flush=True)
        lock.acquire()
    return lock


def _clean_stale(wdir: Path, name: str) -> None:
    """Temp folders of an earlier crashed unpack of this dataset (only the lock holder creates them)."""
    for stale in wdir.glob(f".unpack_{name}_*"):
        shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- public API

def _mkdir_weights(wdir: Path) -> None:
    try:
        wdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the weights folder {wdir}: {exc.strerror or exc}") from None
    if not os.access(wdir, os.W_OK):
        raise WeightsError(f"the weights folder {wdir} is not writable; set TOTALSEG_WEIGHTS_PATH or "
                           f"TOTALSEG_HOME_DIR to a writable place")


def _remove_legacy_once(wdir: Path) -> None:
    if wdir not in _legacy_checked:
        _legacy_checked.add(wdir)
        remove_legacy_weights(wdir)


def _unpack_download(part: Path, tmp: Path, folder: str, url: str) -> Path:
    """Unpack a downloaded archive into ``tmp``; the dataset folder inside it, checked."""
    origin = f"the archive downloaded from {url}"
    _extract(part, tmp, origin)
    name = Path(folder).name
    found = next((c for c in (tmp / folder, tmp / name) if c.is_dir()), None)
    if found is None:
        top = sorted(p.name for p in tmp.iterdir())[:5]
        raise _BadArchive(f"{origin} does not contain the folder {name} at its top level "
                          f"(found: {', '.join(top) or 'nothing'})")
    _validate_dataset_folder(found, origin)
    return found


def ensure_dataset(dataset_id: int | str, quiet: bool = False) -> Path:
    """The folder of ``dataset_id``'s weights, downloading and installing them first if missing."""
    ds = get_dataset(dataset_id)
    wdir = config.weights_dir()
    _remove_legacy_once(wdir)
    target = wdir / ds.folder
    if target.is_dir():
        return target
    source = _source(ds)  # license and availability are checked before any network traffic
    _mkdir_weights(wdir)
    name = Path(ds.folder).name
    lock = _lock(wdir, ds.folder, quiet)
    try:
        if target.is_dir():  # another process installed it while we waited
            return target
        _clean_stale(wdir, name)
        part = wdir / ".downloads" / f"{name}.zip.part"
        if not quiet:
            print(f"Downloading weights {ds.folder} from {source.url} ...", flush=True)
        _download(source, part, ds.folder, quiet)
        tmp = Path(tempfile.mkdtemp(dir=wdir, prefix=f".unpack_{name}_"))
        try:
            try:
                found = _unpack_download(part, tmp, ds.folder, source.url)
            except _BadArchive:
                _discard(part, part.with_name(part.name + ".json"))  # complete but unusable: do not resume it
                raise
            _move_into_place(found, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _discard(part, part.with_name(part.name + ".json"))
    finally:
        lock.release()
    if not quiet:
        print(f"Installed {target}", flush=True)
    return target


def ensure_datasets(dataset_ids: Iterable[int | str], quiet: bool = False) -> list[Path]:
    """Install several datasets; availability and licenses of all missing ones are checked before downloading."""
    ids = list(dict.fromkeys(dataset_ids))
    wdir = config.weights_dir()
    for dataset_id in ids:
        ds = get_dataset(dataset_id)
        if not (wdir / ds.folder).is_dir():
            _source(ds)
    return [ensure_dataset(dataset_id, quiet=quiet) for dataset_id in ids]


def ensure_task_weights(task: str, mode: str | Mode = "default", extra_ids: Iterable[int | str] = (),
                        quiet: bool = False) -> list[Path]:
    """Install the datasets of one task mode (``default``/``fast``/``fastest`` or a ``Mode``) plus ``extra_ids``."""
    if isinstance(mode, str):
        mode = get_task(task).mode(fast=mode == "fast", fastest=mode == "fastest")
    return ensure_datasets([*mode.dataset_ids, *extra_ids], quiet=quiet)


def download_weights(name: str, quiet: bool = False) -> list[Path]:
    """What ``totalseg_download_weights -t NAME`` installs (a key of the official id table, or ``all``)."""
    return ensure_datasets(dataset_ids_for_download_task(name), quiet=quiet)


def _known_folders() -> dict[str, str]:
    """Registry folder base name -> folder relative to the weights dir (e.g. body-stats models)."""
    return {Path(get_dataset(k).folder).name: get_dataset(k).folder for k in all_dataset_ids()}


def _find_dataset_dirs(root: Path, known: dict[str, str], depth: int = 0) -> list[tuple[Path, str]]:
    """Weight folders in ``root`` (itself, its children, or deeper like ``nnunet/results/...``)."""
    def classify(d: Path) -> str | None:
        if d.name in known:
            return known[d.name]
        return d.name if _NNUNET_FOLDER.match(d.name) else None

    if classify(root):
        return [(root, classify(root))]  # type: ignore[list-item]
    found: list[tuple[Path, str]] = []
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(_SKIP_WHEN_SCANNING))
    for child in children:
        rel = classify(child)
        if rel:
            found.append((child, rel))
        elif child.name == "lightning_models":
            found += [(g, f"lightning_models/{g.name}") for g in sorted(child.iterdir()) if g.is_dir()]
    if root.name == "lightning_models" and not found:
        found = [(c, f"lightning_models/{c.name}") for c in children]
    if found or depth >= 3:
        return found
    for child in children:
        found += _find_dataset_dirs(child, known, depth + 1)
    return found


def import_weights(source: str | Path, quiet: bool = False) -> list[Path]:
    """Install weights from a zip or a folder (one dataset folder, or a folder such as ``nnunet/results``
    holding several); existing folders of the same name are replaced. Returns the installed folders."""
    source = Path(source).expanduser()
    if not source.exists():
        raise WeightsError(f"{source} does not exist")
    wdir = config.weights_dir()
    _mkdir_weights(wdir)
    staging = Path(tempfile.mkdtemp(dir=wdir, prefix=".import_"))
    try:
        if source.is_dir():
            scan_root = source
        else:
            _extract(source, staging, str(source))
            scan_root = staging
        found = _find_dataset_dirs(scan_root, _known_folders())
        if not found:
            raise WeightsError(f"no weights folder (like Dataset291_...) found in {source}")
        for folder, _ in found:
            _validate_dataset_folder(folder, str(source))
        installed = []
        for index, (folder, rel) in enumerate(found):
            target = wdir / rel
            if source.is_dir():
                if target.resolve() == folder.resolve():
                    installed.append(target)
                    continue
                copy = staging / f"{index}_{folder.name}"
                try:
                    shutil.copytree(folder, copy)
                except OSError as exc:
                    raise WeightsError(f"could not copy {folder}: {exc}") from None
                folder = copy
            lock = _lock(wdir, rel, quiet)
            try:
                _move_into_place(folder, target)
            finally:
                lock.release()
            installed.append(target)
            if not quiet:
                print(f"Imported {target}", flush=True)
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def validate_license_online(number: str) -> None:
    """Ask the license server whether ``number`` is valid; LicenseError when it is not or cannot be asked."""
    try:
        response = requests.post(LICENSE_VALIDATION_URL, json={"license_number": number},
                                 timeout=LICENSE_VALIDATION_TIMEOUT_S)
    except requests.RequestException as exc:
        raise LicenseError(f"could not reach the license server at {LICENSE_VALIDATION_URL} "
                           f"({_network_reason(exc)}); to store the number without checking it use "
                           f"'totalseg_set_license -l {number} -sv'") from None
    try:
        reply = response.json()
    except ValueError:
        reply = None
    status = reply.get("status") if isinstance(reply, dict) else None
    if status == "valid_license":
        return
    if response.status_code >= 500 or status is None:
        raise LicenseError(f"the license server at {LICENSE_VALIDATION_URL} gave no usable answer "
                           f"(HTTP {response.status_code}); try again later or store the number without checking "
                           f"it with 'totalseg_set_license -l {number} -sv'")
    raise LicenseError(f"license number '{number}' is not valid (license server: {status}). "
                       f"Get a valid one at {ACADEMIC_LICENSE_URL}")
