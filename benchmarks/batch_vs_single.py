"""N small scans: one ``totalseg_batch`` run vs N separate ``TotalSegmentator`` calls (same fixture weights).

Every variant runs as its own subprocess tree in a temporary TOTALSEG_HOME_DIR holding tiny fixture weights for
``total --fast``; wall time and peak RSS (sum over the whole process tree, sampled every 20 ms with psutil) are
measured from outside. The outputs of the batch are compared byte for byte with the single runs'.

    python benchmarks/batch_vs_single.py [--n 8] [--shape 48 48 32] [--ml] [--dask-workers 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of the command's process tree; raises on a non-zero exit."""
    peak = [0]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], tree_rss(ps))
            except psutil.NoSuchProcess:
                return
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output.decode(errors='replace')}")
    return wall, peak[0]


def command(module: str, script: str) -> list[str]:
    exe = shutil.which(script)
    return [exe] if exe else [sys.executable, "-m", module]


def make_cases(folder: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    import nibabel as nib

    from totalsegmentator.testing.phantoms import Phantom, grid_affine

    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = folder / f"case{i:02d}.nii.gz"
        nib.save(Phantom().nifti(shape, grid_affine((3.0, 3.0, 3.0), shape), seed=i), str(path))
        paths.append(path)
    return paths


def same_outputs(batch_out: Path, single_out: Path, ml: bool, case_ids: list[str]) -> tuple[int, int]:
    """(files compared, files identical) between the batch and the single runs."""
    compared = identical = 0
    for case_id in case_ids:
        if ml:
            pairs = [(batch_out / f"{case_id}.nii.gz", single_out / f"{case_id}.nii.gz")]
        else:
            pairs = [(batch_out / case_id / p.name, p) for p in sorted((single_out / case_id).iterdir())]
        for a, b in pairs:
            compared += 1
            identical += a.is_file() and a.read_bytes() == b.read_bytes()
    return compared, identical


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 32), help="voxels at 3 mm (default 48 48 32)")
    parser.add_argument("--ml", action="store_true", help="multilabel output instead of one file per class")
    parser.add_argument("--dask-workers", type=int, default=0, help="also time the batch on a local Dask cluster")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="totalseg_bench_"))
    try:
        env = {**os.environ, "TOTALSEG_HOME_DIR": str(tmp / "home")}
        env.pop("TOTALSEG_WEIGHTS_PATH", None)
        os.environ.update(TOTALSEG_HOME_DIR=env["TOTALSEG_HOME_DIR"])
        from totalsegmentator.testing.tiny_weights import install_task_weights

        install_task_weights("total", modes=("fast",))
        cases = make_cases(tmp / "scans", args.n, tuple(args.shape))
        case_ids = [p.name[: -len(".nii.gz")] for p in cases]
        flags = ["-f", "-d", "cpu", "-q"] + (["--ml"] if args.ml else [])
        single_cmd = command("totalsegmentator.bin.TotalSegmentator", "TotalSegmentator")
        batch_cmd = command("totalsegmentator.bin.totalseg_batch", "totalseg_batch")

        # warm the file cache and Python's bytecode once, outside the timings
        run_measured(single_cmd + ["-i", str(cases[0]), "-o", str(tmp / "warm"), *flags], env)

        rows = []
        single_out = tmp / "single"
        start, peak = time.perf_counter(), 0
        for path, case_id in zip(cases, case_ids):
            target = single_out / (f"{case_id}.nii.gz" if args.ml else case_id)
            _, rss = run_measured(single_cmd + ["-i", str(path), "-o", str(target), *flags], env)
            peak = max(peak, rss)
        rows.append({"variant": f"{args.n} x TotalSegmentator", "wall_s": time.perf_counter() - start,
                     "peak_rss_mib": peak / 2**20})

        wall, rss = run_measured(batch_cmd + ["-i", str(tmp / "scans"), "-o", str(tmp / "batch"), *flags], env)
        compared, identical = same_outputs(tmp / "batch", single_out, args.ml, case_ids)
        rows.append({"variant": "totalseg_batch (local)", "wall_s": wall, "peak_rss_mib": rss / 2**20,
                     "files_compared": compared, "files_identical": identical})
        if args.dask_workers:
            wall, rss = run_measured(batch_cmd + ["-i", str(tmp / "scans"), "-o", str(tmp / "dask"), *flags,
                                                  "--workers", str(args.dask_workers)], env)
            compared, identical = same_outputs(tmp / "dask", single_out, args.ml, case_ids)
            rows.append({"variant": f"totalseg_batch --workers {args.dask_workers}", "wall_s": wall,
                         "peak_rss_mib": rss / 2**20, "files_compared": compared, "files_identical": identical})
        base = rows[0]["wall_s"]
        for row in rows:
            row["speedup_vs_single"] = base / row["wall_s"]

        result = {"n_cases": args.n, "shape_voxels": list(args.shape), "spacing_mm": 3.0, "ml": args.ml,
                  "cpus": os.cpu_count(), "weights": "tiny fixture weights, total --fast (dataset 297)",
                  "results": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]}
        print(f"{'variant':<30} {'wall s':>8} {'speedup':>8} {'peak RSS MiB':>13} {'identical outputs':>18}")
        for r in rows:
            same = f"{r['files_identical']}/{r['files_compared']}" if "files_compared" in r else "-"
            print(f"{r['variant']:<30} {r['wall_s']:>8.2f} {r['speedup_vs_single']:>7.2f}x "
                  f"{r['peak_rss_mib']:>13.0f} {same:>18}")
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
