"""The local batch: one process, models loaded once, reading and writing overlapped with prediction.

Three threads: a reader fills a bounded queue with loaded images (``prefetch`` cases ahead), the calling thread
predicts (models come from the process-wide cache, so each is loaded once), a writer thread writes the outputs,
moves them into place and writes the done markers. At most ``prefetch`` + 4 cases are in memory at once, however
many cases the batch has (one held by the reader, ``prefetch`` queued, one predicted, one queued for and one
in the writer). Reading (gzip, DICOM conversion) and writing (gzip) spend most of their time outside
the GIL, so they really run beside the network.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from ..heap_reuse import reuse_freed_memory
from .cases import Case
from .process import (BatchSpec, CaseResult, Loaded, Predicted, finish_case, import_step_modules, predict_case,
                      read_case)
from .state import BatchState

_END = object()
_POLL_S = 0.2


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put unless the batch is stopping; False when the item was dropped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def run_local(cases: Sequence[Case], spec: BatchSpec, state: BatchState, prefetch: int = 2,
              on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Process ``cases`` in this process; returns one result per case processed (in completion order).

    Stops early (remaining cases absent from the result) when a case fails with a fatal error (missing
    weights, license) or on KeyboardInterrupt, which is re-raised after the threads have stopped.
    """
    loaded_q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    write_q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    results: list[CaseResult] = []
    lock = threading.Lock()

    def record(result: CaseResult) -> None:
        with lock:
            results.append(result)
        if result.fatal:
            stop.set()
        if on_result is not None:
            on_result(result)

    def reader() -> None:
        try:
            for case in cases:
                if stop.is_set() or not _put(loaded_q, read_case(case, spec, state), stop):
                    break
        finally:
            _put(loaded_q, _END, stop)

    def writer() -> None:
        while True:
            item = write_q.get()
            if item is _END:
                return
            record(item if isinstance(item, CaseResult) else finish_case(item, spec, state))

    # the threads below must not import anything for the first time
    import_step_modules(any(c.is_dicom for c in cases))
    threads = [threading.Thread(target=reader, name="totalseg-batch-reader", daemon=True),
               threading.Thread(target=writer, name="totalseg-batch-writer", daemon=True)]
    # freed memory stays for the next case instead of being trimmed after each, and the threads started here
    # share the main heap (see heap_reuse.py)
    with reuse_freed_memory():
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set():
                try:
                    item = loaded_q.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                out: CaseResult | Predicted = (item if isinstance(item, CaseResult)
                                               else predict_case(item, spec, state))
                del item
                if isinstance(out, CaseResult) and out.fatal:
                    record(out)
                    break
                write_q.put(out)  # blocks while the writer is busy with the previous case: bounded memory
        except BaseException:
            stop.set()
            raise
        finally:
            write_q.put(_END)
            threads[1].join()
            stop.set()  # the reader stops at its next case
            _drain(loaded_q)
            threads[0].join(timeout=30)
    return results


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, Loaded):
            item.image = None
