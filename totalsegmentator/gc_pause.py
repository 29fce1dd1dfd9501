"""Automatic garbage collection paused while a segmentation runs.

A run imports torch, nnU-Net and scipy (~400,000 new Python objects) and each full collection that this growth
triggers walks all of them while every thread waits: 5 full collections, 0.4-0.8 s of the 3 s before the first
model is ready, and one more pass over the young objects after it. A run creates little cyclic garbage of its
own (measured: ~10,000 small objects for the default ``total`` task; the tensors among them are views of the
cached models' weights, so they hold no memory of their own), so collection waits until the run ends. The
commands end their process right after the run and skip that collection altogether (``bin/_common.py``).
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """No automatic garbage collection while the block runs; nested and concurrent uses (a batch's threads)
    share one pause, restored by the last to leave. A collection paused by the caller stays paused."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
