"""The per-class mask writer's loops in C against the same loops in numpy: time, size and equal bytes.

    python benchmarks/mask_writer.py [--shape 458,379,224] [--classes 117] [--threads 2] [--repeat 7]

Two label maps of ``--shape`` (default: the full-size CT of run_benchmarks.py): "noisy", random labels at 3 mm
upsampled by nearest neighbour (about as many runs as the argmax of the random benchmark weights), and
"organs", one ellipsoid per class, like a trained model's output. Both encoders (``MaskGzipEncoder.encode``
with and without the extension ``totalsegmentator.io._maskcodec``) write the gzip contents of every class,
alternating, freed memory kept for reuse as in the pipeline; prints the median time of each, their ratio, the
megabytes written and the number of runs, and checks that the bytes are the same.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from totalsegmentator.heap_reuse import reuse_freed_memory  # noqa: E402
from totalsegmentator.io import writers  # noqa: E402


def label_maps(shape: tuple[int, int, int], classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The "noisy" and the "organs" uint8 label maps (Fortran order, as the pipeline hands them over)."""
    rng = np.random.default_rng(seed)
    coarse = [max(1, round(s / f)) for s, f in zip(shape, (7.5, 3.75, 2.0))]
    low = rng.integers(0, classes + 1, coarse).astype(np.uint8)
    index = np.ix_(*[np.minimum(np.arange(s) * c // s, c - 1) for s, c in zip(shape, coarse)])
    noisy = np.asfortranarray(low[index])
    organs = np.zeros(shape, np.uint8, order="F")
    for label in range(1, classes + 1):
        centre = [rng.uniform(0, s) for s in shape]
        radii = [rng.uniform(0.03, 0.12) * s + 1 for s in shape]
        lo = [max(0, int(c - r)) for c, r in zip(centre, radii)]
        hi = [min(s, int(c + r) + 1) for c, r, s in zip(centre, radii, shape)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        x, y, z = (((np.arange(a, b) - c) / r) ** 2 for a, b, c, r in zip(lo, hi, centre, radii))
        inside = x[:, None, None] + y[None, :, None] + z[None, None, :] <= 1
        organs[box][inside] = label
    return {"noisy": noisy, "organs": organs}


def measure(shape: tuple[int, int, int], classes: int, threads: int, repeat: int) -> dict:
    """Median seconds per encoder and label map; raises when the C loops are not built or the bytes differ."""
    compiled = writers._maskcodec
    if compiled is None:
        raise RuntimeError("the C extension totalsegmentator.io._maskcodec is not built (pip install needs a "
                           "C compiler)")
    labels = list(range(1, classes + 1))
    encoder = writers.MaskGzipEncoder(b"\0" * 352, shape)
    results = {}
    try:
        with reuse_freed_memory():
            for name, seg in label_maps(shape, classes).items():
                times: dict[str, list[float]] = {"c": [], "numpy": []}
                contents = {}
                for _ in range(repeat):
                    for loops, module in (("c", compiled), ("numpy", None)):
                        writers._maskcodec = module
                        start = time.perf_counter()
                        contents[loops] = encoder.encode(seg, labels, threads)
                        times[loops].append(time.perf_counter() - start)
                if contents["c"] != contents["numpy"]:
                    raise AssertionError(f"{name}: the C loops wrote other bytes than numpy's")
                c_s, numpy_s = statistics.median(times["c"]), statistics.median(times["numpy"])
                results[name] = {"c_s": round(c_s, 4), "numpy_s": round(numpy_s, 4),
                                 "speedup": round(numpy_s / c_s, 2),
                                 "mb": round(sum(map(len, contents["c"])) / 1e6, 2),
                                 "runs": int(np.count_nonzero(np.diff(seg.ravel(order="F")))) + 1}
    finally:
        writers._maskcodec = compiled
    return {"shape": list(shape), "classes": classes, "threads": threads, "repeat": repeat, "maps": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="458,379,224", help="X,Y,Z voxels of the label maps")
    parser.add_argument("--classes", type=int, default=117)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    result = measure(shape, args.classes, args.threads, args.repeat)
    print(f"{args.classes} masks of {shape}, {args.threads} threads, medians of {args.repeat}; same bytes")
    print(f"{'map':8} {'runs':>10} {'C s':>7} {'numpy s':>8} {'ratio':>6} {'MB':>6}")
    for name, r in result["maps"].items():
        print(f"{name:8} {r['runs']:>10} {r['c_s']:>7.3f} {r['numpy_s']:>8.3f} {r['speedup']:>5.2f}x {r['mb']:>6.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
