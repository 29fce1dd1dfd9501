"""What a batch keeps on disk next to its outputs: staging folders, per-case done markers and failure records.

Layout under the output folder ``<out>``::

    <out>/.totalseg_batch/partial/<case_id>/   outputs of a case while they are written (same file system)
    <out>/.totalseg_batch/done/<case_id>.json  written last, after every output of the case is in place
    <out>/.totalseg_batch/failed/<case_id>.json  the error (one line) and traceback of a failed case
    <out>/.totalseg_batch/lock                  one running batch (client) per output folder

A case is done only when its marker exists, names the same input and options fingerprint, and every output it
lists still exists. Markers are one small file per case, so workers on many machines never write the same file.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path


from ..errors import OptionError
from ..atomic_files import write_json_atomic
from .cases import Case

STATE_DIR = ".totalseg_batch"
MARKER_VERSION = 1


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def output_name(case_id: str, name: str) -> str:
    """Name of a staged entry in ``<out>``: kept when it starts with the case id, else prefixed with it.

    Per-class mode stages one folder ``<case_id>``; multilabel/DICOM mode stages ``<case_id>.nii.gz`` (or
    ``<case_id>_seg.dcm`` ...) plus the extra files a single run writes beside it (``statistics.json``,
    ``preview_total.png``), which become ``<case_id>_statistics.json`` ... so that cases never collide.
    """
    if name == case_id or name.startswith((case_id + ".", case_id + "_")):
        return name
    return f"{case_id}_{name}"


class BatchState:
    """Markers, failure records and staging folders of one output folder."""

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.root = self.output / STATE_DIR
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        self.partial_dir = self.root / "partial"

    # ---------------------------------------------------------------- markers
    def marker_path(self, case_id: str) -> Path:
        return self.done_dir / f"{case_id}.json"

    def failure_path(self, case_id: str) -> Path:
        return self.failed_dir / f"{case_id}.json"

    def read_marker(self, case_id: str) -> dict | None:
        try:
            with open(self.marker_path(case_id)) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def done_marker(self, case: Case, fingerprint: str) -> dict | None:
        """The marker of a finished case with the same input and options whose outputs all exist, else None."""
        marker = self.read_marker(case.case_id)
        if marker is None or marker.get("status") != "done":
            return None
        if marker.get("input") != case.input or marker.get("fingerprint") != fingerprint:
            return None
        outputs = marker.get("outputs")
        if not isinstance(outputs, list) or not all((self.output / name).exists() for name in outputs):
            return None
        return marker

    def forget(self, case_id: str) -> None:
        """Drop the done marker before a case is (re)computed, so a crash midway never looks finished."""
        self.marker_path(case_id).unlink(missing_ok=True)

    def mark_done(self, case: Case, fingerprint: str, outputs: list[str], record: dict) -> None:
        data = {"version": MARKER_VERSION, "case_id": case.case_id, "input": case.input,
                "series_uid": case.series_uid, "status": "done", "fingerprint": fingerprint,
                "outputs": outputs, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        write_json_atomic(data, self.marker_path(case.case_id), indent=2)
        self.failure_path(case.case_id).unlink(missing_ok=True)

    def mark_failed(self, case: Case, record: dict) -> None:
        data = {"version": MARKER_VERSION, "case_id": case.case_id, "input": case.input,
                "series_uid": case.series_uid, "status": "failed",
                "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        write_json_atomic(data, self.failure_path(case.case_id), indent=2)

    # ---------------------------------------------------------------- staging
    def new_staging(self, case_id: str) -> Path:
        """An empty private folder for the outputs of one case (a leftover of a crashed run is removed)."""
        staging = self.partial_dir / case_id
        if staging.exists():
            _remove(staging)
        staging.mkdir(parents=True)
        return staging

    def discard(self, staging: Path | None) -> None:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

    def publish(self, case_id: str, staging: Path) -> list[str]:
        """Move every staged entry into ``<out>`` (replacing older ones); returns the names in ``<out>``."""
        names = []
        for entry in sorted(staging.iterdir()):
            if entry.name.startswith("."):  # a writer's temporary file; never an output
                continue
            name = output_name(case_id, entry.name)
            target = self.output / name
            if target.exists() or target.is_symlink():
                _remove(target)
            os.replace(entry, target)
            names.append(name)
        shutil.rmtree(staging, ignore_errors=True)
        return names

    # ---------------------------------------------------------------- lock
    def lock(self):
        """A lock held while a batch client runs (OptionError when another batch uses this folder).

        None when the file system cannot lock; the markers still keep finished cases safe.
        """
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / "lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OptionError(f"another totalseg_batch is writing to {self.output} (lock file "
                              f"{self.root / 'lock'}); wait for it or use another output folder") from None
        except OSError:  # a file system without locks (some network mounts): run unguarded
            return None
        return lock
