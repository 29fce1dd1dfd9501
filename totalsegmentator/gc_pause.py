"""Automatic garbage collection paused while a segmentation runs.

A run imports torch, nnU-Net and scipy (~280,000 Python objects that stay), and the collections this growth
triggers walk them while every thread waits: five full ones and ~750 younger ones, 0.5-0.6 s before the first
model is ready. Paused only until then, the next two passes over the young objects (0.25 s) would fall into the
prediction and the writing, so the pause lasts until the run returns. A run's own cyclic garbage is small
(~10,000 objects for the default ``total`` task; the tensors among them are views of the cached models' weights),
and what else becomes cyclic garbage (a DICOM RTSTRUCT's millions of elements) does so at the end, when it is
no longer used. The commands end their process right after the run and skip that collection altogether
(``bin/_common.py``).
"""
from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator

from .shared_setting import SharedSetting


def _disable() -> bool:
    was_enabled = gc.isenabled()
    gc.disable()
    return was_enabled


_PAUSE = SharedSetting(_disable, lambda was_enabled: gc.enable() if was_enabled else None)
_thread_depth = threading.local()  # this thread's nesting


@contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """No automatic garbage collection while the block runs; nested and concurrent uses share one pause,
    restored by the last to leave. A collection paused by the caller stays paused.

    Runs that overlap one another without end (a service calling ``totalsegmentator()`` from several threads)
    would never reach the end of the pause, so each run that leaves while another one is inside collects once
    (not the nested uses within one thread): garbage waits at most until one of the runs in progress ends."""
    _PAUSE.enter()
    _thread_depth.value = getattr(_thread_depth, "value", 0) + 1
    try:
        yield
    finally:
        _thread_depth.value -= 1
        if _PAUSE.leave() > 0 and _thread_depth.value == 0 and _PAUSE.saved:
            gc.collect()
