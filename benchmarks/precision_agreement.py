"""How often our precisions change the labels: argmax agreement with nnU-Net's own float32, and time.

    python benchmarks/precision_agreement.py [--precisions fp32,bf16,fp16] [--realistic] [--out agreement.json]

The reference is ``exact`` (nnU-Net's modules in float32); ``fp32`` is our fused float32 forward (the CPU
default), ``bf16`` / ``fp16`` are autocast.

Models and images:

* ``phantom``: a small network trained on synthetic phantoms (``testing.phantom_model``), on unseen phantoms;
* ``fixture``: the tiny random fixture network of dataset 297 on the real scans of ``../shared/data`` (when
  present) resampled to its 3 mm;
* ``realistic`` (``--realistic``, slow: one 128^3 tile per image and precision): the random full-size
  architecture of dataset 297 on the same real scan.

Agreement is the fraction of voxels whose label equals the reference label; "decided" restricts it to voxels whose
two best reference logits differ by more than 0.1 (random networks have many near-ties that no precision can
decide the same way).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from totalsegmentator.inference.model import load_model  # noqa: E402
from totalsegmentator.inference.predictor import predict_logits  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _preprocessed(model, image_xyz: np.ndarray, spacing_xyz) -> torch.Tensor:
    data, _, _ = model.preprocessor.run_case_npy(
        np.ascontiguousarray(image_xyz.transpose(2, 1, 0), dtype=np.float32)[None], None,
        {"spacing": list(reversed(spacing_xyz))}, model.plans_manager, model.configuration_manager,
        model.dataset_json)
    return torch.from_numpy(data)


def compare(model, data: torch.Tensor, precisions: list[str], step_size: float = 0.5) -> dict:
    """Agreement of each precision's argmax with nnU-Net's float32 (float32 accumulation, so only the network
    differs)."""
    out = {}
    start = time.perf_counter()
    reference = predict_logits(model, data, step_size, accumulate_dtype=torch.float32, mixed_precision="exact")
    out["exact_s"] = round(time.perf_counter() - start, 3)
    labels = reference.argmax(0)
    top2 = reference.topk(2, dim=0).values if reference.shape[0] > 1 else None
    decided = (top2[0] - top2[1] > 0.1) if top2 is not None else torch.ones_like(labels, dtype=torch.bool)
    out["voxels"] = int(labels.numel())
    out["decided_fraction"] = round(float(decided.float().mean()), 5)
    for precision in precisions:
        start = time.perf_counter()
        try:
            logits = predict_logits(model, data, step_size, accumulate_dtype=torch.float32,
                                    mixed_precision=precision)
        except RuntimeError as e:  # e.g. a type the CPU kernels lack
            out[precision] = {"error": str(e).splitlines()[0]}
            continue
        seconds = time.perf_counter() - start
        same = logits.argmax(0) == labels
        out[precision] = {"agreement": round(float(same.float().mean()), 6),
                          "agreement_decided": round(float(same[decided].float().mean()), 6),
                          "seconds": round(seconds, 3)}
    return out


def phantom_cases(work: Path, precisions: list[str], n_images: int = 3) -> dict:
    from totalsegmentator.testing.phantom_model import PHANTOM_BLOBS, random_phantom, train_phantom_model
    from totalsegmentator.testing.phantoms import grid_affine

    folder = train_phantom_model(work / "phantom", steps=150)
    model = load_model(folder, (0,), torch.device("cpu"))
    spacing = model.spacing_xyz
    shape = tuple(int(round(160 / s)) for s in spacing)
    affine = grid_affine(spacing, shape)
    rng = np.random.default_rng(123)
    results = {}
    for i in range(n_images):
        phantom = random_phantom(rng, tuple(b.label for b in PHANTOM_BLOBS), tuple(b.hu for b in PHANTOM_BLOBS))
        image = phantom.image(shape, affine, noise_hu=10.0, seed=1000 + i)
        results[f"phantom_{i}"] = compare(model, _preprocessed(model, image, spacing), precisions)
    return results


def _real_scans() -> list[Path]:
    return [p for p in (SHARED / "example_ct.nii.gz", SHARED / "example_ct_sm.nii.gz") if p.is_file()]


def _at_model_spacing(path: Path, model):
    import nibabel as nib

    from totalsegmentator.preprocessing import orientation, resampling

    img = nib.load(str(path))
    data, affine, _ = orientation.to_canonical(np.asanyarray(img.dataobj), img.affine)
    data, affine, _ = resampling.resample_image(data, affine, model.spacing_xyz, 1)
    return data, resampling.spacing_from_affine(affine)


def fixture_cases(work: Path, precisions: list[str], realistic: bool) -> dict:
    from totalsegmentator.testing.tiny_weights import REALISTIC_FEATURES, REALISTIC_PATCH, write_tiny_dataset

    results = {}
    variants = [("fixture", {})]
    if realistic:
        variants.append(("realistic", {"features": REALISTIC_FEATURES, "patch_size": REALISTIC_PATCH}))
    for name, kwargs in variants:
        folder = write_tiny_dataset(work / name, 297, **kwargs)
        model = load_model(folder, (0,), torch.device("cpu"))
        scans = _real_scans()
        if not scans:
            results[name] = {"skipped": f"no real scans in {SHARED}"}
        for path in scans[:1] if realistic and name == "realistic" else scans:
            image, spacing = _at_model_spacing(path, model)
            results[f"{name}_{path.name}"] = compare(model, _preprocessed(model, image, spacing), precisions, 0.8)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--realistic", action="store_true", help="also the full-size random architecture (slow)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    precisions = args.precisions.split(",")
    with tempfile.TemporaryDirectory(prefix="totalseg_precision_") as tmp:
        work = Path(tmp)
        results = {"phantom": phantom_cases(work, precisions),
                   "fixture": fixture_cases(work, precisions, args.realistic)}
    for group in results.values():
        for case, r in group.items():
            if "voxels" not in r:
                print(f"{case}: {r}")
                continue
            parts = [f"{case}: {r['voxels']} voxels ({100 * r['decided_fraction']:.1f}% decided), "
                     f"exact {r['exact_s']} s"]
            for precision in precisions:
                q = r[precision]
                parts.append(f"{precision}: " + (q["error"] if "error" in q else
                                                 f"{100 * q['agreement']:.3f}% same "
                                                 f"({100 * q['agreement_decided']:.3f}% of decided), {q['seconds']} s"))
            print("; ".join(parts))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
