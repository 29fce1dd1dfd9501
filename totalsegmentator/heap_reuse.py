"""Reuse of freed heap memory during a run (glibc's malloc only; a no-op elsewhere).

Every 128^3 tile allocates several GB of activations. With glibc's defaults each block above the mmap
threshold (at most 32 MiB) is mapped fresh from the kernel and unmapped again when freed, so every tile
faults in and zeroes its whole working set anew. On a 2-core virtual machine that was ~30 % of the network
time (a 128^3 tile: 5.5 s with the defaults, 3.9-4.4 s reusing memory; default ``total`` on a 458x379x224
CT: 350 s -> 245-267 s). For the duration of a run the mmap and trim thresholds are raised, so the next tile
reuses the pages of the previous one, and threads started meanwhile share the main heap (writing the per-class
files then reuses the network's pages as well); at the end free memory goes back to the kernel
(``malloc_trim``) and the thresholds back to glibc's start values. The price is fragmentation: a higher peak
(default ``total``: 3.4 -> 4.8 GB resident). ``TOTALSEG_HEAP_REUSE=off`` keeps glibc's defaults.

The first tile still faults its pages in (a 128^3 tile of nnU-Net's standard network: 1.5 GB, 0.4-1.2 s of its
4-6 s on such a machine). ``fault_in_background`` does that beforehand on a core that waits anyway (while torch and
the model load), then frees the memory into the heap, where the tile's activations find it.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from contextlib import contextmanager
from typing import Iterator

HEAP_REUSE_ENV = "TOTALSEG_HEAP_REUSE"

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# blocks up to this size come from the heap during a run (a tile's largest activation of a 118-class head at
# 128^3 is 0.99 GB); bigger ones (whole-image arrays of huge inputs) are still mapped and unmapped
_RUN_MMAP_THRESHOLD = 1 << 30
_RUN_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: keep up to 2 GiB of free memory at the heap top
_GLIBC_START_THRESHOLD = 128 * 1024  # both thresholds' initial values in glibc
# memory faulted in ahead of a run's first tile: in blocks below the run's mmap threshold (so they come from the
# heap), at most 1.5 GiB in all (freed at the heap top they must stay below the trim threshold: glibc would hand
# the whole free top back) and at most a quarter of the memory available
_FAULT_IN_BLOCK = 1 << 28
_FAULT_IN_LIMIT = 3 << 29

_lock = threading.Lock()
_depth = 0
_faulted_in = False  # memory was faulted in since the thresholds were raised (the heap keeps it until then)


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library of this process when it is glibc (mallopt and malloc_trim available), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        libc.free.restype = None
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def heap_reuse_enabled() -> bool:
    """Whether runs raise the thresholds: glibc, and ``$TOTALSEG_HEAP_REUSE`` not set to off/0/false/no."""
    setting = os.environ.get(HEAP_REUSE_ENV, "on").strip().lower()
    return setting not in ("off", "0", "false", "no") and _glibc() is not None


@contextmanager
def reuse_freed_memory(trim: bool = True) -> Iterator[bool]:
    """Keep freed memory for reuse while the block runs; yields whether that is in effect.

    Nested and concurrent uses (a batch around its cases, threads of a batch) share one setting: the
    thresholds are raised by the first to enter and restored by the last to leave, which also hands the free
    memory back to the kernel unless its ``trim`` is False (a command about to exit: 0.1 s saved)."""
    global _depth, _faulted_in
    if not heap_reuse_enabled():
        yield False
        return
    libc = _glibc()
    with _lock:
        if _depth == 0:
            _faulted_in = False
            libc.mallopt(_M_TRIM_THRESHOLD, _RUN_TRIM_THRESHOLD)
            libc.mallopt(_M_MMAP_THRESHOLD, _RUN_MMAP_THRESHOLD)
            # threads that start from now on (prefetch, writers) share the main heap, whose pages the network
            # has already faulted in, instead of mapping heaps of their own. glibc fixes its arena limit at the
            # first new arena, so this stays for the life of the process (harmless: malloc then locks one arena).
            libc.mallopt(_M_ARENA_MAX, 1)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_START_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_START_THRESHOLD)
                if trim:
                    libc.malloc_trim(0)


def _allocate(libc: ctypes.CDLL, nbytes: int) -> list[tuple[int, int]]:
    """``(address, size)`` blocks of ``nbytes`` in all (fewer where malloc fails), not yet written."""
    blocks = []
    while nbytes > 0:
        size = min(nbytes, _FAULT_IN_BLOCK)
        block = libc.malloc(size)
        if not block:
            break
        blocks.append((block, size))
        nbytes -= size
    return blocks


def _fault_in(libc: ctypes.CDLL, blocks: list[tuple[int, int]]) -> None:
    try:
        for block, size in blocks:
            ctypes.memset(block, 0, size)  # the page faults; a foreign call, so the GIL is free meanwhile
    finally:
        for block, _ in reversed(blocks):  # back into their heap, coalesced with its top
            libc.free(block)


def fault_in_background(nbytes: int) -> threading.Thread | None:
    """Fault in ``nbytes`` of heap memory in a background thread and free it again, so that a run's first tile
    reuses those pages instead of faulting them in itself. The blocks are allocated here, in the heap of the
    calling thread, which runs the tiles (a thread of its own could get another of glibc's arenas). Only once
    while freed memory is kept (``reuse_freed_memory``; a batch's later cases find the heap warm), and at most
    1.5 GiB and a quarter of the available memory. Returns the thread, or None when there is nothing to do."""
    from .preprocessing.splitting import available_memory_bytes  # the pipeline's own measure (psutil)

    global _faulted_in
    with _lock:
        if _depth == 0 or _faulted_in:
            return None
        quarter = available_memory_bytes("cpu", fraction=0.25)
        size = min(int(nbytes), _FAULT_IN_LIMIT, quarter) if quarter is not None else 0
        if size <= 0:
            return None
        _faulted_in = True
    libc = _glibc()
    blocks = _allocate(libc, size)
    thread = threading.Thread(target=_fault_in, args=(libc, blocks), name="totalseg-heap-fault-in", daemon=True)
    try:
        thread.start()
    except BaseException:
        for block, _ in blocks:
            libc.free(block)
        raise
    return thread
