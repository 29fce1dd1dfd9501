"""Fanning a batch out over a Dask cluster: a running scheduler (``tcp://HOST:PORT`` or a scheduler file written
by ``dask scheduler --scheduler-file``) or a local cluster.

Each case is one Dask task (``process.process_case``): the worker reads, predicts and writes the case itself, so
images never travel through the scheduler and outputs land directly on the shared storage. Worker processes are
long-lived, so the per-process model cache keeps every model loaded between cases. ``BatchWorkerPlugin`` prepares
each worker: the client's ``TOTALSEG_*`` environment (same home/weights folder) and a sensible torch thread count
(the worker host's CPUs shared by the Dask worker threads on that host).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import distributed
from distributed.comm import get_address_host

from ..errors import OptionError
from . import process
from .cases import Case
from .process import BatchSpec, CaseResult, error_text, process_case
from .state import BatchState

PLUGIN_NAME = "totalseg-batch"
FORWARDED_ENV_PREFIXES = ("TOTALSEG_",)


def forwarded_env() -> dict[str, str]:
    """The client's environment variables the workers must share (home and weights folder)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


class BatchWorkerPlugin(distributed.WorkerPlugin):
    """Sets the batch environment and torch threads on every worker (also on workers joining later).

    ``env`` is applied to ``os.environ`` (default: the client's ``TOTALSEG_*`` variables). ``torch_threads``
    None: the CPUs of the worker's host divided by the Dask worker threads on that host (``workers_per_host``,
    counted by the client from the scheduler's worker list; 1 when a host is not listed).
    """

    name = PLUGIN_NAME

    def __init__(self, env: dict[str, str] | None = None, torch_threads: int | None = None,
                 workers_per_host: dict[str, int] | None = None, dicom: bool = False) -> None:
        self.env = forwarded_env() if env is None else dict(env)
        self.torch_threads = torch_threads
        self.workers_per_host = dict(workers_per_host or {})
        self.dicom = dicom

    def setup(self, worker) -> None:
        os.environ.update(self.env)
        # a worker with several threads starts several cases at once: no first-time imports in parallel
        process.import_step_modules(self.dicom)
        threads = self.torch_threads
        if threads is None:
            peers = self.workers_per_host.get(get_address_host(worker.address), 1)
            threads = max(1, usable_cpus() // max(1, peers * worker.state.nthreads))
        process.set_torch_threads(int(threads))  # applied now or when a case first imports torch


def worker_state() -> dict[str, Any]:
    """What a worker holds (for tests and ``client.run``): cached models, torch threads, home folder."""
    import torch

    from ..inference.cache import cached_models

    process._apply_torch_threads()
    return {"models": len(cached_models()), "torch_threads": torch.get_num_threads(),
            "home": os.environ.get("TOTALSEG_HOME_DIR"), "pid": os.getpid()}


def _workers_per_host(client) -> dict[str, int]:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # older distributed: all workers by default
        info = client.scheduler_info()
    counts: Counter = Counter()
    for address, worker in info.get("workers", {}).items():
        counts[worker.get("host") or get_address_host(address)] += 1
    return dict(counts)


class _Cluster:
    """A client on a running scheduler, or on a local cluster this object starts and stops."""

    def __init__(self, scheduler: str | None, workers: int | None, threads_per_worker: int = 1) -> None:
        self.scheduler, self.workers, self.threads_per_worker = scheduler, workers, threads_per_worker
        self.cluster = None
        self.client = None

    def __enter__(self):
        if self.scheduler is not None:
            try:
                if Path(self.scheduler).is_file():  # a scheduler file (dask scheduler --scheduler-file)
                    self.client = distributed.Client(scheduler_file=self.scheduler, timeout="30s")
                else:
                    self.client = distributed.Client(self.scheduler, timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise OptionError(f"cannot connect to the Dask scheduler at {self.scheduler}: "
                                  f"{' '.join(str(exc).split())}") from None
        else:
            self.cluster = distributed.LocalCluster(n_workers=self.workers, threads_per_worker=self.threads_per_worker,
                                                    processes=True, dashboard_address=None)
            self.client = distributed.Client(self.cluster)
            self.client.wait_for_workers(self.workers)
        return self.client

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def run_distributed(cases: Sequence[Case], spec: BatchSpec, state: BatchState, *, scheduler: str | None = None,
                    workers: int | None = None, torch_threads: int | None = None, client=None,
                    on_result: Callable[[CaseResult], None] | None = None,
                    on_ready: Callable[[], None] | None = None) -> list[CaseResult]:
    """Process ``cases`` on Dask workers; returns one result per finished case (completion order).

    Pass a running ``client``, a ``scheduler`` address, or ``workers`` (a local cluster with that many worker
    processes, one thread each, started and stopped here). A worker that dies on a case (killed for memory, a
    crash) fails that case after Dask's retries; a fatal error (missing weights, license) cancels the rest.
    ``on_ready`` is called once the cluster is connected and the cases are submitted.
    """
    if client is not None:
        return _run_on(client, cases, spec, torch_threads, on_result, on_ready)
    if (scheduler is None) == (workers is None):
        raise OptionError("give either a Dask scheduler address or a number of local workers")
    if workers is not None and workers < 1:
        raise OptionError(f"--workers must be at least 1, not {workers}")
    with _Cluster(scheduler, workers) as own_client:
        return _run_on(own_client, cases, spec, torch_threads, on_result, on_ready)


def _run_on(client, cases: Sequence[Case], spec: BatchSpec, torch_threads: int | None,
            on_result: Callable[[CaseResult], None] | None,
            on_ready: Callable[[], None] | None = None) -> list[CaseResult]:
    if not cases:
        return []
    plugin = BatchWorkerPlugin(torch_threads=torch_threads, workers_per_host=_workers_per_host(client),
                               dicom=any(c.is_dicom for c in cases))
    client.register_plugin(plugin, name=PLUGIN_NAME)
    futures = client.map(process_case, list(cases), spec=spec, pure=False,
                         key=[f"totalseg-batch-{c.case_id}-{os.urandom(4).hex()}" for c in cases])
    by_key = {f.key: case for f, case in zip(futures, cases)}
    if on_ready is not None:
        on_ready()
    results: list[CaseResult] = []
    state = BatchState(spec.output)
    try:
        for future in distributed.as_completed(futures):
            case = by_key[future.key]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died on this case (KilledWorker, ...)
                result = CaseResult(case.case_id, case.input, "failed", 0.0, error_text(exc), type(exc).__name__)
                try:
                    state.mark_failed(case, {"stage": "worker", "error": result.error,
                                             "error_type": result.error_type})
                except OSError:
                    pass
            results.append(result)
            if on_result is not None:
                on_result(result)
            if result.fatal:
                break
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    return results
