"""The benchmark's memory readings of a run's process tree: resident memory, and GPU memory through a stand-in for
NVML (the per-process figures a driver reports), so no GPU is needed."""
from __future__ import annotations

import os
import sys
import types

import psutil

from benchmarks import run_benchmarks as rb

MIB = 2**20


def _process(pid: int, used: int | None) -> types.SimpleNamespace:
    return types.SimpleNamespace(pid=pid, usedGpuMemory=used)


def _nvml(devices: list) -> types.ModuleType:
    """A stand-in ``pynvml``: ``devices`` holds, per GPU, a function returning its running processes."""
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda handle: devices[handle]()
    return nvml


def test_gpu_memory_is_summed_per_process_over_the_gpus():
    def broken():
        raise RuntimeError("NVML: not supported")

    nvml = _nvml([lambda: [_process(10, 5 * MIB), _process(11, None)], lambda: [_process(10, 3 * MIB)], broken])
    assert rb.GpuProcessMemory(nvml).by_pid() == {10: 8 * MIB}  # unattributed memory and failing devices skipped


def test_no_nvml_means_no_gpu_reading(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert rb.GpuProcessMemory.open() is None
    monkeypatch.setitem(sys.modules, "pynvml", _nvml([]))
    assert isinstance(rb.GpuProcessMemory.open(), rb.GpuProcessMemory)


def test_run_measures_the_gpu_memory_of_its_own_process_tree(tmp_path):
    """A run (a process and its child) is charged 64 MiB per process it has on the GPU; other processes (the test
    itself: 1 GiB) are not counted."""
    def everyone():
        return [_process(p.pid, (1024 if p.pid == os.getpid() else 64) * MIB) for p in psutil.process_iter()]

    child = "import time; time.sleep(1.0)"
    cmd = [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"]
    run = rb.run_measured(cmd, dict(os.environ), tmp_path, tmp_path / "log", rb.GpuProcessMemory(_nvml([everyone])))
    assert run["returncode"] == 0
    assert run["peak_gpu_mb"] == 128.0
    assert run["peak_rss_mb"] > 0
    assert "peak_gpu_mb" not in rb.run_measured([sys.executable, "-c", "pass"], dict(os.environ), tmp_path,
                                                tmp_path / "log2")
