"""Train a tiny nnU-Net v2 model on synthetic phantoms, in seconds on a CPU.

The result is a regular nnU-Net result folder (official layout, as ``tiny_weights`` writes it) whose network
really segments the phantom blobs. Tests use it to prove that the whole pipeline puts labels at the right place
(orientation, cropping, resampling and their inverses), which random weights cannot show.

    python -m totalsegmentator.testing.phantom_model WEIGHTS_DIR [--dataset 297] [--steps 120]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .phantoms import Blob, Phantom, grid_affine
from .tiny_weights import build_network, write_tiny_dataset

PHANTOM_FEATURES = (8, 16)
PHANTOM_PATCH = (32, 32, 32)
TRAIN_CROP = PHANTOM_PATCH
# trunk_cavities: a single open model at 1.5 mm with 4 classes, small enough to train in seconds
PHANTOM_DATASET = 343
PHANTOM_BLOBS = (
    Blob(1, (35.0, -10.0, 15.0), 18.0, 250.0),
    Blob(2, (-30.0, 15.0, -20.0), 15.0, 600.0),
    Blob(3, (-5.0, -30.0, 30.0), 21.0, 1000.0),
)


def random_phantom(rng: np.random.Generator, labels: tuple[int, ...], hus: tuple[float, ...]) -> Phantom:
    """Blobs of the given labels and intensities at random places inside a random body."""
    body = float(rng.uniform(55, 85))
    blobs = []
    for label, hu in zip(labels, hus):
        radius = float(rng.uniform(10, 35))
        r = rng.uniform(0, max(body - radius - 5, 1))
        angle = rng.uniform(0, 2 * np.pi)
        z = rng.uniform(-40, 40)
        blobs.append(Blob(label, (r * np.cos(angle), r * np.sin(angle), z), radius, hu))
    return Phantom(body, tuple(blobs))


def _normalise(image: np.ndarray, intensities: dict) -> np.ndarray:
    """nnU-Net's CTNormalization with the plans' foreground intensity properties."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=intensities)
    return norm.run(image.astype(np.float32), None)


def _soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(logits, 1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    return 1 - ((2 * inter + 1) / (denom + 1))[present].mean()


def train_phantom_model(weights_dir: Path | str, dataset_id: int = PHANTOM_DATASET, steps: int = 150,
                        seed: int = 0, blobs: tuple[Blob, ...] | None = None, lr: float = 1e-2,
                        n_phantoms: int = 6, batch_size: int = 4) -> Path:
    """Write dataset ``dataset_id`` to ``weights_dir`` with a network trained on phantoms; return its folder."""
    blobs = blobs or PHANTOM_BLOBS
    folder = write_tiny_dataset(weights_dir, dataset_id, patch_size=PHANTOM_PATCH, features=PHANTOM_FEATURES,
                                seed=seed)
    plans = json.loads((folder / "plans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    configuration = next(iter(plans["configurations"]))
    # Without normalisation layers the network sees absolute intensities, so even a tile that lies wholly
    # inside one blob can be classified; instance norm would leave such a tile nothing to go by.
    plans["configurations"][configuration]["architecture"]["arch_kwargs"]["norm_op"] = None
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    spacing_xyz = tuple(reversed(plans["configurations"][configuration]["spacing"]))
    intensities = plans["foreground_intensity_properties_per_channel"]["0"]
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    network = build_network(plans, configuration, dataset_json, checkpoint["trainer_name"], seed)

    rng = np.random.default_rng(seed)
    labels = tuple(b.label for b in blobs)
    hus = tuple(b.hu for b in blobs)
    shape = tuple(int(round(160 / s)) for s in spacing_xyz)
    affine = grid_affine(spacing_xyz, shape)
    volumes = []  # a few phantoms, made once, in nnU-Net's (z, y, x) order and normalised
    for i in range(n_phantoms):
        phantom = random_phantom(rng, labels, hus)
        image = phantom.image(shape, affine, noise_hu=10.0, seed=seed + i).transpose(2, 1, 0)
        volumes.append((_normalise(image, intensities), phantom.labels(shape, affine).transpose(2, 1, 0)))
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    network.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            images, targets = [], []
            for _ in range(batch_size):
                image, target = volumes[int(rng.integers(len(volumes)))]
                # centre most crops on a blob so that every class is seen often
                foreground = np.argwhere(target > 0)
                if len(foreground) and rng.random() < 0.7:
                    c = foreground[int(rng.integers(len(foreground)))]
                    start = [int(np.clip(ci - p // 2, 0, s - p)) for ci, s, p in zip(c, image.shape, TRAIN_CROP)]
                else:
                    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(image.shape, TRAIN_CROP)]
                window = tuple(slice(s, s + p) for s, p in zip(start, TRAIN_CROP))
                images.append(image[window][None])
                targets.append(target[window].astype(np.int64))
            x = torch.from_numpy(np.stack(images))
            y = torch.from_numpy(np.stack(targets))
            optimiser.zero_grad()
            out = network(x)
            out = out[0] if isinstance(out, (list, tuple)) else out
            loss = loss_fn(out, y) + _soft_dice_loss(out, y)
            loss.backward()
            optimiser.step()
    network.eval()
    checkpoint["network_weights"] = network.state_dict()
    checkpoint["init_args"]["plans"] = plans
    torch.save(checkpoint, checkpoint_path)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_dir", type=Path)
    parser.add_argument("--dataset", type=int, default=PHANTOM_DATASET)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args(argv)
    print(train_phantom_model(args.weights_dir, args.dataset, args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
