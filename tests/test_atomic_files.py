"""Files written in one piece, with the permissions of any new file (not the 0600 of a temp file)."""
from __future__ import annotations

import json
import stat

import pytest

from totalsegmentator.atomic_files import (atomic_path, write_atomic, write_bytes_atomic, write_json_atomic,
                                           write_text_atomic)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def plain_mode(tmp_path) -> int:
    """The mode a file gets from a plain ``open(..., "w")`` under this process's umask."""
    reference = tmp_path / "reference"
    with open(reference, "w"):
        pass
    return _mode(reference)


def test_each_writer_gives_content_and_the_mode_of_a_new_file(tmp_path, plain_mode):
    assert plain_mode != 0o600  # mkstemp's own mode: the test could not tell the two apart otherwise
    written = [
        write_bytes_atomic(b"\x00\x01", tmp_path / "a" / "b.bin"),
        write_text_atomic("x\r\ny\n", tmp_path / "t.csv"),
        write_json_atomic({"liver": {"volume": 1.5}}, tmp_path / "s.json"),
        write_atomic(tmp_path / "w.bin", lambda f: f.write(b"abc")),
    ]
    assert written[0].read_bytes() == b"\x00\x01"
    assert written[1].read_bytes() == b"x\r\ny\n"  # as given: no newline translation (csv writes \r\n itself)
    assert written[2].read_text() == json.dumps({"liver": {"volume": 1.5}}, indent=4)
    assert written[2].is_absolute()
    assert written[3].read_bytes() == b"abc"
    assert [_mode(p) for p in written] == [plain_mode] * 4
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "reference", "s.json", "t.csv", "w.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "stats.json"
    write_json_atomic({"old": 1}, target)

    def fail(f):
        f.write(b"half of a new file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, fail)
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]


def test_atomic_path_serves_writers_that_take_a_file_name(tmp_path, plain_mode):
    target = tmp_path / "out" / "seg.dcm"
    with atomic_path(target, suffix=".tmp.dcm") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.dcm") and tmp.name.startswith(".seg.dcm.")
        assert not target.exists()
        tmp.write_bytes(b"DICM")
    assert target.read_bytes() == b"DICM" and _mode(target) == plain_mode
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"broken")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"DICM"
    assert [p.name for p in target.parent.iterdir()] == ["seg.dcm"]
