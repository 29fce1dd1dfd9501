"""Garbage collection during runs: paused while a run lasts, and skipped at the end of a command's process."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from typing import Iterator

import pytest

from totalsegmentator.gc_pause import garbage_collection_paused


@pytest.fixture(autouse=True)
def _gc_enabled_around():
    was = gc.isenabled()
    gc.enable()
    yield
    gc.enable() if was else gc.disable()


class _Cycle:
    """An object in a reference cycle; counts its collections."""

    collected = 0

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        type(self).collected += 1


def test_no_automatic_collection_inside_and_collection_back_after():
    _Cycle.collected = 0
    with garbage_collection_paused():
        assert not gc.isenabled()
        for _ in range(20_000):  # far beyond the young generation's threshold (700)
            _Cycle()
        assert _Cycle.collected == 0
    assert gc.isenabled()
    for _ in range(2_000):
        [[]]  # allocations after the pause trigger the collections again
    assert _Cycle.collected == 20_000


@contextmanager
def _another_run_inside() -> Iterator[None]:
    """Another run's pause, held by a second thread for as long as the block lasts."""
    inside, done = threading.Event(), threading.Event()

    def other_run():
        with garbage_collection_paused():
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=other_run)
    thread.start()
    assert inside.wait(10)
    try:
        yield
    finally:
        done.set()
        thread.join(10)


def test_nested_and_concurrent_pauses_end_with_the_last():
    with _another_run_inside():
        with garbage_collection_paused():
            with garbage_collection_paused():
                pass
            assert not gc.isenabled()
        assert not gc.isenabled()  # the other run is still going
    assert gc.isenabled()


def test_runs_that_overlap_without_end_still_collect():
    """Two threads whose runs always overlap never end the pause; each run that ends collects."""
    _Cycle.collected = 0
    with _another_run_inside():
        with garbage_collection_paused():
            with garbage_collection_paused():  # nested in this thread: leaving it does not collect
                for _ in range(1_000):
                    _Cycle()
            assert _Cycle.collected == 0
        # this run ended while the other one is still inside: the pause goes on, the garbage is gone
        assert not gc.isenabled()
        assert _Cycle.collected == 1_000
    assert gc.isenabled()


def test_a_pause_of_the_caller_is_left_alone():
    gc.disable()
    with garbage_collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_collection_comes_back_after_a_failing_run():
    with pytest.raises(RuntimeError):
        with garbage_collection_paused():
            raise RuntimeError("run failed")
    assert gc.isenabled()


_EXIT_SCRIPT = textwrap.dedent("""
    import sys
    from totalsegmentator.bin._common import skip_final_collection

    class Cycle:
        def __init__(self):
            self.me = self
        def __del__(self):
            sys.stdout.write("collected\\n")
            sys.stdout.flush()

    if sys.argv[1] == "skip":
        skip_final_collection()
        skip_final_collection()  # registered once
    import gc
    gc.disable()  # the cycle is left to the collection at shutdown
    Cycle()
    print("end")
""")


@pytest.mark.parametrize("mode", ["skip", "default"])
def test_commands_skip_the_collection_at_shutdown(mode):
    out = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # Python collects the cycle at shutdown unless the command skips that collection
    assert out.stdout.split() == (["end"] if mode == "skip" else ["end", "collected"])
