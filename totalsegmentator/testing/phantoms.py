"""Synthetic CT phantoms defined in world (RAS, mm) coordinates, sampled on any voxel grid.

A body-like cylinder of soft tissue in air holds a few spheres of distinct intensity. Because the anatomy is
defined in millimetres, the same phantom can be written in any orientation, spacing and size, and the ground
truth is known exactly in each voxel grid: that is what the geometry tests compare against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

AIR_HU = -1000.0
TISSUE_HU = 40.0


@dataclass(frozen=True)
class Blob:
    label: int
    center_mm: tuple[float, float, float]
    radius_mm: float
    hu: float


@dataclass(frozen=True)
class Phantom:
    """A cylinder along z (radius in mm) with spherical blobs; label ids are those of the model's classes."""

    body_radius_mm: float = 70.0
    blobs: tuple[Blob, ...] = field(default_factory=lambda: DEFAULT_BLOBS)

    def world_coordinates(self, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
        ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
        xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
        return xyz.reshape((3,) + tuple(shape))

    def labels(self, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
        xyz = self.world_coordinates(shape, affine)
        out = np.zeros(shape, np.uint8)
        for blob in self.blobs:
            c = np.asarray(blob.center_mm, np.float32).reshape(3, 1, 1, 1)
            out[((xyz - c) ** 2).sum(0) <= blob.radius_mm ** 2] = blob.label
        return out

    def image(self, shape: tuple[int, int, int], affine: np.ndarray, noise_hu: float = 10.0,
              seed: int = 0) -> np.ndarray:
        xyz = self.world_coordinates(shape, affine)
        data = np.full(shape, AIR_HU, np.float32)
        data[xyz[0] ** 2 + xyz[1] ** 2 <= self.body_radius_mm ** 2] = TISSUE_HU
        hu_of = {b.label: b.hu for b in self.blobs}
        labels = self.labels(shape, affine)
        for label, hu in hu_of.items():
            data[labels == label] = hu
        if noise_hu:
            data += np.random.default_rng(seed).normal(0.0, noise_hu, shape).astype(np.float32)
        return np.round(data).astype(np.int16)

    def nifti(self, shape: tuple[int, int, int], affine: np.ndarray, **kw) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.image(shape, affine, **kw), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        return img


# Labels 1, 2 and 5 are spleen, kidney_right and liver in the "total" class map.
DEFAULT_BLOBS = (
    Blob(1, (35.0, -10.0, 15.0), 18.0, 250.0),
    Blob(2, (-30.0, 15.0, -20.0), 15.0, 600.0),
    Blob(5, (-5.0, -30.0, 30.0), 21.0, 1000.0),
)


def grid_affine(spacing: tuple[float, float, float], shape: tuple[int, int, int], axcodes: str = "RAS",
                permutation: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """An affine whose voxel axes point along ``axcodes`` (e.g. ``"LPS"``), centred on the world origin.

    ``permutation`` reorders which world axis each voxel axis follows (``(2, 0, 1)``: the first voxel axis
    runs along z), to produce non-canonical axis orders.
    """
    sign = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
    affine = np.zeros((4, 4))
    for voxel_axis, world_axis in enumerate(permutation):
        code = axcodes[voxel_axis]
        affine[world_axis, voxel_axis] = sign[code] * spacing[voxel_axis]
    affine[3, 3] = 1.0
    centre = (np.asarray(shape) - 1) / 2.0
    affine[:3, 3] = -affine[:3, :3] @ centre
    return affine


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
