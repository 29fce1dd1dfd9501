"""Reuse of freed heap memory during runs (glibc only): faults, trimming, nesting, the switch."""
from __future__ import annotations

import resource
import threading

import pytest

from totalsegmentator import heap_reuse
from totalsegmentator.preprocessing import splitting

pytestmark = pytest.mark.skipif(heap_reuse._glibc() is None, reason="needs glibc's malloc")

BLOCK = 64 * 1024 * 1024  # far above glibc's default mmap threshold (at most 32 MiB)


def _faults_of_block() -> int:
    """Minor page faults of allocating (and zero-filling) one block and freeing it."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(BLOCK)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_freed_blocks_are_reused_inside_and_returned_after():
    with heap_reuse.reuse_freed_memory() as active:
        assert active
        _faults_of_block()  # the heap grows once
        inside = [_faults_of_block() for _ in range(3)]
        held = _resident_bytes()
    after = _resident_bytes()
    outside = _faults_of_block()
    # inside: the same pages again, no faults; outside: a fresh mapping, faulted in page by page (16384
    # pages of 4 KiB, or 32 huge pages where the kernel gives those)
    assert max(inside) < 16, inside
    assert outside >= 32, outside
    # the block freed inside stayed resident until the end, then malloc_trim gave it back
    assert held - after > BLOCK // 2, (held, after)


@pytest.fixture
def libc_calls(monkeypatch) -> list[tuple[str, tuple]]:
    """The mallopt and malloc_trim calls of the block, in order (they still reach glibc)."""
    calls: list[tuple[str, tuple]] = []
    libc = heap_reuse._glibc()

    class Recorder:
        def mallopt(self, *args):
            calls.append(("mallopt", args))
            return libc.mallopt(*args)

        def malloc_trim(self, *args):
            calls.append(("trim", args))
            return libc.malloc_trim(*args)

    recorder = Recorder()
    monkeypatch.setattr(heap_reuse, "_glibc", lambda: recorder)
    return calls


def test_nested_and_concurrent_uses_restore_once(libc_calls):
    calls = libc_calls
    entered, release = threading.Event(), threading.Event()

    def other_run():
        with heap_reuse.reuse_freed_memory():
            entered.set()
            release.wait(10)

    with heap_reuse.reuse_freed_memory():
        thread = threading.Thread(target=other_run)
        thread.start()
        assert entered.wait(10)
        with heap_reuse.reuse_freed_memory():
            pass
        raised = {param: value for name, (param, value) in [c for c in calls if c[0] == "mallopt"]}
        assert raised == {heap_reuse._M_TRIM_THRESHOLD: heap_reuse._RUN_TRIM_THRESHOLD,
                          heap_reuse._M_MMAP_THRESHOLD: heap_reuse._RUN_MMAP_THRESHOLD, heap_reuse._M_ARENA_MAX: 1}
        assert len(calls) == 3  # raised once for all three uses
        assert not any(c[0] == "trim" for c in calls)  # the inner and the concurrent use did not restore
        release.set()
        thread.join()
        assert not any(c[0] == "trim" for c in calls)
    assert calls[-1] == ("trim", (0,))
    restored = calls[-3:-1]
    assert restored == [("mallopt", (heap_reuse._M_MMAP_THRESHOLD, heap_reuse._GLIBC_START_THRESHOLD)),
                        ("mallopt", (heap_reuse._M_TRIM_THRESHOLD, heap_reuse._GLIBC_START_THRESHOLD))]
    assert len([c for c in calls if c[0] == "trim"]) == 1


@pytest.mark.parametrize("value", ["off", "0", "False", "no"])
def test_the_switch_keeps_glibc_defaults(value, monkeypatch):
    monkeypatch.setenv(heap_reuse.HEAP_REUSE_ENV, value)
    calls = []
    monkeypatch.setattr(heap_reuse, "_glibc", lambda: calls.append("used") or None)
    with heap_reuse.reuse_freed_memory() as active:
        assert not active
    assert calls == []


def test_the_outermost_use_decides_about_trimming(libc_calls):
    def trims() -> list[tuple]:
        return [args for name, args in libc_calls if name == "trim"]

    with heap_reuse.reuse_freed_memory(trim=False):
        with heap_reuse.reuse_freed_memory():  # an API call inside the command
            pass
    assert trims() == []
    with heap_reuse.reuse_freed_memory():
        pass
    assert trims() == [(0,)]


def test_fault_in_leaves_pages_for_the_first_block_of_a_run():
    pages = BLOCK // resource.getpagesize()
    with heap_reuse.reuse_freed_memory():
        fresh = _faults_of_block()  # the control: a run's first block faults its pages in
    with heap_reuse.reuse_freed_memory():
        thread = heap_reuse.fault_in_background(2 * BLOCK)
        assert thread is not None
        thread.join()
        warm = _faults_of_block()
        assert heap_reuse.fault_in_background(2 * BLOCK) is None  # once while freed memory is kept
    assert fresh >= 32, fresh
    assert warm < min(fresh, pages) // 4, (warm, fresh)


@pytest.fixture
def fault_in_sizes(monkeypatch) -> list[int]:
    """The sizes the background thread is asked to fault in (its blocks are freed unwritten)."""
    sizes: list[int] = []

    def record(libc, blocks):
        sizes.append(sum(size for _, size in blocks))
        for block, _ in blocks:
            libc.free(block)

    monkeypatch.setattr(heap_reuse, "_fault_in", record)
    return sizes


def test_fault_in_only_inside_a_run_and_once_per_run(fault_in_sizes):
    assert heap_reuse.fault_in_background(BLOCK) is None
    with heap_reuse.reuse_freed_memory(trim=False):  # a batch around its cases
        for _ in range(2):
            with heap_reuse.reuse_freed_memory():
                thread = heap_reuse.fault_in_background(BLOCK)
                if thread is not None:
                    thread.join()
    with heap_reuse.reuse_freed_memory():  # a later run starts with a trimmed heap
        heap_reuse.fault_in_background(3 * BLOCK).join()
    assert fault_in_sizes == [BLOCK, 3 * BLOCK]


def test_fault_in_is_bounded_by_the_available_memory_and_its_limit(fault_in_sizes, monkeypatch):
    for available, asked, expected in [(4 * BLOCK, 10 * BLOCK, BLOCK), (1 << 40, 1 << 34, heap_reuse._FAULT_IN_LIMIT),
                                       (None, BLOCK, None), (4 * BLOCK, 0, None)]:
        monkeypatch.setattr(splitting, "available_memory_bytes",
                            lambda device, fraction, a=available: None if a is None else int(a * fraction))
        with heap_reuse.reuse_freed_memory():
            thread = heap_reuse.fault_in_background(asked)
            if thread is not None:
                thread.join()
            assert (thread is None) == (expected is None)
    assert fault_in_sizes == [BLOCK, heap_reuse._FAULT_IN_LIMIT]
    assert heap_reuse._FAULT_IN_LIMIT < heap_reuse._RUN_TRIM_THRESHOLD  # freed, it stays in the heap
    assert heap_reuse._FAULT_IN_BLOCK < heap_reuse._RUN_MMAP_THRESHOLD  # allocated from the heap


def test_no_fault_in_with_the_switch_off(fault_in_sizes, monkeypatch):
    monkeypatch.setenv(heap_reuse.HEAP_REUSE_ENV, "off")
    with heap_reuse.reuse_freed_memory():
        assert heap_reuse.fault_in_background(BLOCK) is None
    assert fault_in_sizes == []
