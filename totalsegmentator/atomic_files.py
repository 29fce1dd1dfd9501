"""Files written in one piece: a temp file beside the target, moved over it only once complete.

A crash or an interrupt leaves the old file (or none), never half of a new one. The moved file gets the
permissions any newly created file gets (0666 less the umask), not the 0600 of a temp file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike


def _read_umask() -> int:
    # os.umask can only be read by setting it, which is not safe while writer threads run: read once at import
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp path beside ``path`` (parent folders created) for a writer that takes a file name; when the block
    ends without an error it replaces ``path``, otherwise it is removed. ``suffix`` serves writers that pick
    the format from the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(binary file)``; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_bytes_atomic(content: bytes, path: PathLike) -> Path:
    """Write ready-made file content; returns the path."""
    return write_atomic(path, lambda f: f.write(content))


def write_text_atomic(text: str, path: PathLike) -> Path:
    """Write ``text`` as UTF-8 exactly as given (no newline translation); returns the path."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(data: Any, path: PathLike, indent: int = 4) -> Path:
    """Write ``data`` as JSON (``json.dump`` with ``indent``) to ``path``; returns the absolute path."""
    path = Path(path).absolute()
    return write_text_atomic(json.dumps(data, indent=indent), path)
