"""Inputs of the benchmarks: the realistic CT and synthetic weights with the realistic nnU-Net architecture.

Nothing here is a test fixture: the files are big (a 457x379x224 CT, ~125 MB per checkpoint) and are written
to a temporary folder chosen by the caller.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np

# the realistic CT: example_ct.nii.gz (3 mm) resampled to 0.8 x 0.8 x 1.5 mm -> 457 x 379 x 224 voxels
REALISTIC_SPACING = (0.8, 0.8, 1.5)
REALISTIC_SHAPE = (457, 379, 224)
QUICK_SPACING = (1.5, 1.5, 3.0)  # --quick: the same body at half the resolution (244 x 202 x 112)
EXAMPLE_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "example_ct.nii.gz"

# the datasets the benchmarked modes of task total use (291-295 default, 297 fast, 298 fastest / rough crop)
TOTAL_DATASETS = (291, 292, 293, 294, 295, 297, 298)


def resample_ct(img: nib.Nifti1Image, target_spacing: Sequence[float], order: int = 3) -> nib.Nifti1Image:
    """``img`` zoomed to ``target_spacing`` as the official tool resamples (``ndimage.zoom`` by spacing / target,
    affine columns divided by the zoom), spline ``order``, rounded to int16."""
    from scipy import ndimage

    data = np.asanyarray(img.dataobj).astype(np.float32)
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    zoom = spacing / np.asarray(target_spacing, dtype=np.float64)
    out = ndimage.zoom(data, zoom, order=order, mode="nearest", output=np.float32)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / zoom
    out = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
    new = nib.Nifti1Image(out, affine)
    new.set_qform(affine, code=1)
    new.set_sform(affine, code=1)
    return new


def synthetic_ct(shape: Sequence[int], spacing: Sequence[float], seed: int = 0) -> nib.Nifti1Image:
    """A CT-like int16 volume (air, an elliptic body of soft tissue with organs and a spine) when
    ``../shared`` is absent."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    data = np.full(shape, -1000, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    data[body] = -80  # fat
    data[body & ((x / 0.7) ** 2 + (y / 0.5) ** 2 < 1)] = 40  # soft tissue
    data[((x - 0.3) / 0.25) ** 2 + ((y + 0.1) / 0.2) ** 2 + ((z - 0.2) / 0.4) ** 2 < 1] = 60  # liver-like
    data[((x + 0.35) / 0.12) ** 2 + ((y + 0.1) / 0.1) ** 2 + ((z - 0.3) / 0.2) ** 2 < 1] = 50  # spleen-like
    data[(x / 0.07) ** 2 + ((y - 0.4) / 0.07) ** 2 < 1] = 700  # spine
    data += rng.normal(0, 15, shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2
    img = nib.Nifti1Image(data.astype(np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def make_ct(out_path: Path, quick: bool = False, source: Path | None = None) -> tuple[Path, str]:
    """Write the benchmark CT to ``out_path``; returns the path and a one-line description."""
    spacing = QUICK_SPACING if quick else REALISTIC_SPACING
    source = EXAMPLE_CT if source is None else source
    if source.is_file():
        img = resample_ct(nib.load(str(source)), spacing, order=3)
        what = f"{source.name} resampled to {spacing} mm (order 3, int16)"
    else:
        zoom = 3.0 / np.asarray(spacing)  # example_ct: 122 x 101 x 112 voxels of 3 mm
        img = synthetic_ct(tuple(int(round(n * z)) for n, z in zip((122, 101, 112), zoom)), spacing)
        what = f"synthetic CT at {spacing} mm ({source} not found)"
    nib.save(img, str(out_path))
    return out_path, f"{what}: {img.shape}"


def install_weights(weights_dir: Path, dataset_ids: Iterable[int] = TOTAL_DATASETS,
                    realistic: bool = True) -> list[Path]:
    """Synthetic weights (random network) for the datasets of task total, with nnU-Net's standard 3d_fullres
    architecture: PlainConvUNet, 6 stages, 32-64-128-256-320-320 features, patch 128^3."""
    from totalsegmentator.registry import get_task
    from totalsegmentator.testing.tiny_weights import (REALISTIC_FEATURES, REALISTIC_PATCH, _own_model,
                                                       write_tiny_dataset)

    task = get_task("total")
    kwargs = {"features": REALISTIC_FEATURES, "patch_size": REALISTIC_PATCH} if realistic else {}
    written = []
    wanted = set(int(i) for i in dataset_ids)
    for mode in task.modes.values():
        for dataset_id in mode.dataset_ids:
            if dataset_id in wanted:
                wanted.discard(dataset_id)
                _, _, overrides = _own_model(task, mode, dataset_id)
                written.append(write_tiny_dataset(weights_dir, dataset_id, **overrides, **kwargs))
    for dataset_id in sorted(wanted):
        written.append(write_tiny_dataset(weights_dir, dataset_id, **kwargs))
    return written


def prepare_home(home: Path) -> Path:
    """A TOTALSEG_HOME_DIR whose config.json turns off usage statistics (there is no network here) and marks
    the setup as done, for both our tool and the official one. Returns the weights folder."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = {"totalseg_id": "totalseg_benchmark0", "send_usage_stats": False, "prediction_counter": 0}
    (home / "config.json").write_text(json.dumps(cfg, indent=4))
    weights = home / "nnunet" / "results"
    weights.mkdir(parents=True, exist_ok=True)
    return weights


def benchmark_env(home: Path) -> dict[str, str]:
    """Environment of a benchmark subprocess: the temporary home, no inherited weights path."""
    env = dict(os.environ)
    env["TOTALSEG_HOME_DIR"] = str(home)
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
