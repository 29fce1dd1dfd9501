"""Speed and memory benchmark of the whole tool on a realistic CT with synthetic full-size weights.

    python benchmarks/run_benchmarks.py [--quick] [--modes fast,total] [--repeat 3]
                                        [--official-python /path/to/venv/bin/python] [--out results.json]

Builds (in a temporary folder, or ``--workdir`` to keep and reuse them) synthetic weights with nnU-Net's
standard 3d_fullres architecture for the datasets of task ``total`` and the realistic CT, then runs every mode
in a fresh process and reports per stage wall time, total wall time, CPU time (the process and its children) and
the peak resident memory of the whole process tree (sampled every 20 ms). With ``--official-python`` the
official TotalSegmentator, installed in that separate environment, runs on the same weights and input and the
ratios are printed. Times are medians over ``--repeat`` runs; the load of the machine before each run is
recorded, since on a shared machine other processes slow runs down.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks import fixtures  # noqa: E402
from benchmarks.worker import MODES  # noqa: E402

# what each mode needs, and the official command line flags for it
MODE_DATASETS = {"fast": (297,), "fastest": (298,), "total": (291, 292, 293, 294, 295),
                 "roi_subset": (291, 292, 293, 294, 295, 298),  # the official tool wants all parts installed
                 "ml": (291, 292, 293, 294, 295)}
OFFICIAL_FLAGS = {"fast": ["--fast"], "fastest": ["--fastest"], "total": [],
                  "roi_subset": ["--roi_subset", "liver", "spleen"], "ml": ["--ml"]}
LEGEND = ("start: process start and imports before the call, and the exit; load: reading the input; resample: "
          "reorientation and resampling to the model spacing; model: waiting for torch's import and the model load "
          "(background thread); forward: network calls; pred.other: nnU-Net preprocessing, tile accumulation, "
          "argmax; post: merging and postprocessing; back: resampling to the input grid; write: output files; rest: "
          "the rest of the call (the pipeline's imports, rough crop bookkeeping). Each column is a median over the "
          "runs, so a row need not add up to its wall time.")
FULL_MODES = ("fast", "fastest", "total", "roi_subset", "ml")
QUICK_MODES = ("fast", "fastest")


class GpuProcessMemory:
    """GPU memory in use per process id, summed over all GPUs, read through NVML (``nvidia-ml-py``)."""

    def __init__(self, nvml) -> None:
        self.nvml = nvml
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    @classmethod
    def open(cls) -> "GpuProcessMemory | None":
        """The reader, or None where NVML (the package or an NVIDIA driver) is not available."""
        try:
            import pynvml

            pynvml.nvmlInit()
            return cls(pynvml)
        except Exception:  # ImportError, NVMLError (no driver, no device)
            return None

    def by_pid(self) -> dict[int, int]:
        used: dict[int, int] = {}
        for handle in self.handles:
            try:
                processes = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # a device that went away, a driver that cannot tell
                continue
            for proc in processes:
                if proc.usedGpuMemory is not None:  # None where the driver cannot attribute memory
                    used[proc.pid] = used.get(proc.pid, 0) + int(proc.usedGpuMemory)
        return used


class TreeMemory:
    """Peak of the summed resident memory of a process and all its descendants, sampled in a thread; with a
    ``GpuProcessMemory`` also the peak of their summed GPU memory."""

    def __init__(self, pid: int, interval: float = 0.02, gpu: GpuProcessMemory | None = None) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.gpu = gpu
        self.peak = 0
        self.gpu_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> tuple[int, int]:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return 0, 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        gpu_total = 0
        if self.gpu is not None:
            used = self.gpu.by_pid()
            gpu_total = sum(used.get(proc.pid, 0) for proc in procs)
        return total, gpu_total

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, gpu = self._sample()
            self.peak = max(self.peak, rss)
            self.gpu_peak = max(self.gpu_peak, gpu)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path, gpu: GpuProcessMemory | None = None) -> dict:
    """Run ``cmd``; wall time, CPU time (with all reaped descendants), peak tree RSS and, with ``gpu``, the peak
    GPU memory of the tree (as NVML reports it per process: the CUDA context included)."""
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid, gpu=gpu)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    peak = memory.stop()
    run = {"returncode": proc.returncode, "wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
           "peak_rss_mb": round(max(peak, usage.ru_maxrss * 1024) / 2**20, 1),
           "max_single_rss_mb": round(usage.ru_maxrss / 1024, 1), "load_before": round(load_before, 2)}
    if gpu is not None:
        run["peak_gpu_mb"] = round(memory.gpu_peak / 2**20, 1)
    return run


def ours(mode: str, ct: Path, work: Path, env: dict, index: int, extra: dict,
         gpu: GpuProcessMemory | None = None) -> dict:
    out = work / "out" / f"ours_{mode}_{index}"
    out = out.with_suffix(".nii.gz") if mode == "ml" else out
    result_json = work / "out" / f"ours_{mode}_{index}.json"
    log = work / "out" / f"ours_{mode}_{index}.log"
    cmd = [sys.executable, str(HERE / "worker.py"), mode, str(ct), str(out), str(result_json), json.dumps(extra)]
    run = run_measured(cmd, env, HERE.parent, log, gpu)
    if run["returncode"] != 0:
        raise RuntimeError(f"our {mode} run failed, see {log}:\n" + log.read_text()[-3000:])
    inner = json.loads(result_json.read_text())
    run.update(inner)
    _remove(out)
    return run


def official(mode: str, ct: Path, work: Path, env: dict, index: int, python: Path, device: str = "cpu",
             gpu: GpuProcessMemory | None = None) -> dict:
    out = work / "out" / f"official_{mode}_{index}"
    out = out.with_suffix(".nii.gz") if mode == "ml" else out
    log = work / "out" / f"official_{mode}_{index}.log"
    script = Path(python).parent / "TotalSegmentator"
    # run from the work folder with a clean PYTHONPATH, so that our package of the same name is never imported
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    cmd = ([str(python), str(script)] if script.is_file() else
           [str(python), "-c", "from totalsegmentator.bin.TotalSegmentator import main; main()"])
    cmd += ["-i", str(ct), "-o", str(out), "-d", device, *OFFICIAL_FLAGS[mode]]
    run = run_measured(cmd, env, work, log, gpu)
    if run["returncode"] != 0:
        raise RuntimeError(f"official {mode} run failed, see {log}:\n" + log.read_text()[-3000:])
    _remove(out)
    return run


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def summarize(runs: list[dict]) -> dict:
    """Medians over repeated runs (stage times per stage)."""
    keys = ("wall_s", "cpu_s", "peak_rss_mb", "peak_gpu_mb", "call_wall_s", "call_cpu_s", "import_s", "load_before")
    out = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys if all(k in r for r in runs)}
    for part in ("stages", "predictor"):
        if all(part in r for r in runs):
            names = {n for r in runs for n in r[part]}
            out[part] = {n: round(statistics.median(r[part].get(n, 0.0) for r in runs), 3) for n in names}
    if all("stages" in r and "call_wall_s" in r for r in runs):
        # the time of the call outside the stages, per run: medians of different runs' stages do not add up
        out["rest_s"] = round(statistics.median(r["call_wall_s"] - sum(r["stages"].get(k, 0.0) for k in TOP_STAGES)
                                                for r in runs), 3)
    out["runs"] = len(runs)
    return out


# stages around the network forward (issue 6: at most 20 % of the network time on the full-size CT in --fast);
# model loading and the process start (imports) are reported on their own
OVERHEAD_STAGES = ("load", "reorient", "resample", "merge", "postprocess", "resample_back", "write")
# the stages the pipeline's timer reports at the top level (the predictor's own split is inside "network")
TOP_STAGES = ("load", "weights", "reorient", "resample", "load_model", "network", "merge", "postprocess",
              "resample_back", "write")


def breakdown(summary: dict) -> dict | None:
    """Our run split into forward, overhead (everything else of the image's way), model loading, start-up."""
    st, pr = summary.get("stages"), summary.get("predictor")
    if not st or not pr or not pr.get("forward"):
        return None
    forward = pr["forward"]
    around = st.get("network", 0.0) - forward  # preprocessing, accumulation, argmax/export
    overhead = sum(st.get(k, 0.0) for k in OVERHEAD_STAGES) + around
    # reading and resampling run while the background thread loads the first model; with one model, a wait for
    # it afterwards ("load_model") shows they overlapped it (on two cores they still compete for CPU time)
    before_model = sum(st.get(k, 0.0) for k in ("load", "reorient", "resample"))
    after_model = overhead - before_model
    return {"forward_s": round(forward, 3), "predictor_other_s": round(around, 3), "overhead_s": round(overhead, 3),
            "overhead_vs_forward": round(overhead / forward, 3), "before_model_s": round(before_model, 3),
            "after_model_s": round(after_model, 3), "after_model_vs_forward": round(after_model / forward, 3),
            "load_model_s": st.get("load_model", 0.0),
            "startup_s": round(summary["wall_s"] - summary["call_wall_s"], 3),
            "unaccounted_in_call_s": summary.get("rest_s")}


def format_table(results: dict) -> str:
    cols = ["mode", "tool", "wall s", "cpu s", "peak MB", "start", "load", "resample", "model", "forward",
            "pred.other", "post", "back", "write", "rest"]
    rows = [cols]

    def f(v):
        return "-" if v is None else f"{v:.1f}"

    for mode, entry in results["modes"].items():
        for tool in ("ours", "official"):
            s = entry.get(tool)
            if not s:
                continue
            st, b = s.get("stages", {}), s.get("breakdown")
            if not b:
                rows.append([mode, tool, f(s["wall_s"]), f(s["cpu_s"]), f"{s['peak_rss_mb']:.0f}"] + ["-"] * 10)
                continue
            rows.append([mode, tool, f(s["wall_s"]), f(s["cpu_s"]), f"{s['peak_rss_mb']:.0f}", f(b["startup_s"]),
                         f(st.get("load")), f(st.get("resample", 0) + st.get("reorient", 0)), f(st.get("load_model")),
                         f(b["forward_s"]), f(b["predictor_other_s"]), f(st.get("postprocess", 0) + st.get("merge", 0)),
                         f(st.get("resample_back")), f(st.get("write")), f(b["unaccounted_in_call_s"])])
        if entry.get("ratio"):
            r = entry["ratio"]
            rows.append([mode, "official/ours", f"{r['wall']:.2f}x", f"{r['cpu']:.2f}x", f"{r['memory']:.2f}x",
                         *[""] * 10])
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="half-resolution CT (244x202x112), modes fast and fastest")
    p.add_argument("--modes", help=f"comma-separated subset of {','.join(FULL_MODES)}")
    p.add_argument("--repeat", type=int, default=None, help="runs per mode and tool (default 3, --quick 1)")
    p.add_argument("--official-python", type=Path, help="python of a separate venv with the official package")
    p.add_argument("--official-modes", help="modes to run with the official tool (default: all selected)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--workdir", type=Path, help="keep weights and CT here and reuse them (default: temporary)")
    p.add_argument("--input", type=Path, help="use this CT instead of the generated one")
    p.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                   help="extra totalsegmentator() argument for our runs, e.g. --option nr_thr_saving=2")
    p.add_argument("--device", default="cpu", help="device of both tools: cpu (default), gpu, gpu:N")
    args = p.parse_args(argv)

    modes = tuple(args.modes.split(",")) if args.modes else (QUICK_MODES if args.quick else FULL_MODES)
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown modes {sorted(unknown)}; choose from {','.join(FULL_MODES)}")
    official_modes = tuple(args.official_modes.split(",")) if args.official_modes else modes
    repeat = args.repeat or (1 if args.quick else 3)
    extra = {"device": args.device, **{k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)}}
    gpu = GpuProcessMemory.open() if args.device != "cpu" else None  # GPU memory of each run's processes

    work = args.workdir or Path(tempfile.mkdtemp(prefix="totalseg_bench_"))
    work = work.resolve()
    (work / "out").mkdir(parents=True, exist_ok=True)
    home = work / "home"
    weights = fixtures.prepare_home(home)
    env = fixtures.benchmark_env(home)

    t0 = time.perf_counter()
    needed = sorted({d for m in modes for d in MODE_DATASETS[m]})
    missing = [d for d in needed if not any(weights.glob(f"Dataset{d:03d}_*/*/fold_0/checkpoint_final.pth"))]
    if missing:
        print(f"writing synthetic weights for datasets {missing} ...", flush=True)
        fixtures.install_weights(weights, missing)
    if args.input:
        ct, what = args.input.resolve(), f"{args.input} (given)"
    else:
        ct = work / ("ct_quick.nii.gz" if args.quick else "ct_full.nii.gz")
        desc = ct.with_suffix(".txt")
        if not ct.exists() or not desc.exists():
            print("building the CT ...", flush=True)
            _, what = fixtures.make_ct(ct, quick=args.quick)
            desc.write_text(what)
        what = desc.read_text()
    print(f"input: {what}; setup {time.perf_counter() - t0:.0f} s; work folder {work}", flush=True)

    results = {"input": what, "machine": machine_info(), "repeat": repeat, "options": extra, "modes": {}}
    for mode in modes:
        entry: dict = {}
        runs = []
        for i in range(repeat):
            runs.append(ours(mode, ct, work, env, i, dict(extra), gpu))
            print(f"  ours     {mode:10s} run {i + 1}: {runs[-1]['wall_s']:.1f} s, {runs[-1]['peak_rss_mb']:.0f} MB "
                  f"(load avg before {runs[-1]['load_before']})", flush=True)
        entry["ours"] = summarize(runs)
        entry["ours"]["all_runs"] = runs
        entry["ours"]["breakdown"] = breakdown(entry["ours"])
        if args.official_python and mode in official_modes:
            oruns = []
            for i in range(repeat):
                oruns.append(official(mode, ct, work, env, i, args.official_python, args.device, gpu))
                print(f"  official {mode:10s} run {i + 1}: {oruns[-1]['wall_s']:.1f} s, "
                      f"{oruns[-1]['peak_rss_mb']:.0f} MB (load avg before {oruns[-1]['load_before']})", flush=True)
            entry["official"] = summarize(oruns)
            entry["official"]["all_runs"] = oruns
            o, u = entry["official"], entry["ours"]
            entry["ratio"] = {"wall": round(o["wall_s"] / u["wall_s"], 2), "cpu": round(o["cpu_s"] / u["cpu_s"], 2),
                              "memory": round(o["peak_rss_mb"] / u["peak_rss_mb"], 2)}
            if o.get("peak_gpu_mb") and u.get("peak_gpu_mb"):
                entry["ratio"]["gpu_memory"] = round(o["peak_gpu_mb"] / u["peak_gpu_mb"], 2)
        results["modes"][mode] = entry

    table = format_table(results)
    print()
    print(table)
    print(LEGEND)
    for mode, entry in results["modes"].items():
        gpu_peaks = [f"{tool} {entry[tool]['peak_gpu_mb']:.0f} MB" for tool in ("ours", "official")
                     if entry.get(tool, {}).get("peak_gpu_mb") is not None]
        if gpu_peaks:
            print(f"{mode}: peak GPU memory (NVML, all processes of a run): {', '.join(gpu_peaks)}")
        b = entry["ours"].get("breakdown")
        if b:
            print(f"{mode}: overhead around the network forward {b['overhead_s']:.1f} s = "
                  f"{100 * b['overhead_vs_forward']:.0f}% of the forward time ({b['forward_s']:.1f} s)")
            if len(MODE_DATASETS[mode]) == 1 and b["load_model_s"] > 0.05:
                print(f"  of it, reading and resampling ({b['before_model_s']:.1f} s) ran while the model was still "
                      f"loading (then waited for: {b['load_model_s']:.1f} s); after it was ready: "
                      f"{b['after_model_s']:.1f} s = {100 * b['after_model_vs_forward']:.0f}% of the forward time")
    results["table"] = table
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"results written to {args.out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def machine_info() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


if __name__ == "__main__":
    sys.exit(main())
