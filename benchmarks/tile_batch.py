"""Sliding-window tiles one at a time or several per network call: time per tile and the logits' difference.

    python benchmarks/tile_batch.py [--device cpu|gpu] [--batch-sizes 1,2,4] [--shape Z,Y,X] [--repeat 2]

The network is the random full-size architecture of dataset 297 (``--fast``: PlainConvUNet, 6 stages, 118
classes, patch 128^3), the image random noise of ``--shape`` voxels, predicted with ``predict_logits`` at the
device's default precision (CPU: our fused float32 forward; CUDA: float16 autocast) and step 0.5, as the
pipeline predicts (freed memory kept for reuse). Prints, per batch size, the median wall time per tile, the
ratio to one tile per call, the largest logit difference to one tile per call, the share of equal labels and, on
CUDA, the peak memory the predictions allocated.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from totalsegmentator.heap_reuse import reuse_freed_memory  # noqa: E402
from totalsegmentator.inference.device import as_torch_device  # noqa: E402
from totalsegmentator.inference.model import load_model  # noqa: E402
from totalsegmentator.inference.predictor import predict_logits, tile_slicers  # noqa: E402
from totalsegmentator.testing.tiny_weights import (REALISTIC_FEATURES, REALISTIC_PATCH,  # noqa: E402
                                                   write_tiny_dataset)


def measure(device: str, batch_sizes: list[int], shape: tuple[int, int, int], repeat: int,
            realistic: bool = True) -> dict:
    """Time and logits of ``predict_logits`` per tile batch size (the first is the reference); ``realistic``:
    the full-size network, else the tiny fixture one."""
    torch_device = as_torch_device(device)
    architecture = {"features": REALISTIC_FEATURES, "patch_size": REALISTIC_PATCH} if realistic else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_dataset(Path(tmp), 297, **architecture)
        model = load_model(folder, (0,), torch_device)
    data = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    n_tiles = len(tile_slicers(shape, model.patch_size, 0.5))
    results, reference = {}, None
    for size in batch_sizes:
        predict_logits(model, data, 0.5, tile_batch_size=size)  # warm-up (cuDNN's algorithm search, allocator)
        times = []
        if torch_device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeat):
            start = time.perf_counter()
            logits = predict_logits(model, data, 0.5, tile_batch_size=size)
            if torch_device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        logits = logits.float().cpu()
        if reference is None:
            reference = logits
        per_tile = statistics.median(times) / n_tiles
        results[size] = {"s_per_tile": round(per_tile, 4),
                         "max_abs_logit_diff": float((logits - reference).abs().max()),
                         "labels_same": float((logits.argmax(0) == reference.argmax(0)).float().mean())}
        if torch_device.type == "cuda":
            results[size]["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        print(f"batch {size}: {per_tile:.3f} s per tile, x{results[batch_sizes[0]]['s_per_tile'] / per_tile:.2f}, "
              f"logits within {results[size]['max_abs_logit_diff']:.2e}, labels the same "
              f"{100 * results[size]['labels_same']:.4f} %"
              + (f", peak {results[size]['peak_gpu_mb']} MB" if "peak_gpu_mb" in results[size] else ""), flush=True)
    return {"device": str(torch_device), "shape": list(shape), "tiles": n_tiles,
            "max_abs_logit": float(reference.abs().max()), "batches": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--batch-sizes", default="1,2,4", help="tiles per network call, the first is the reference")
    parser.add_argument("--shape", default="128,128,256", help="image size (z,y,x voxels)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.device == "gpu" and not torch.cuda.is_available():
        print("error: PyTorch sees no CUDA device", file=sys.stderr)
        return 1
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3:
        parser.error("--shape takes three sizes")
    with reuse_freed_memory():  # as the pipeline runs
        result = measure(args.device, [int(v) for v in args.batch_sizes.split(",")], shape, args.repeat)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
