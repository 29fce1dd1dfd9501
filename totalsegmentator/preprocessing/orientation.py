"""Reorientation to the closest canonical (RAS+) voxel order and back.

Identical to ``nibabel.as_closest_canonical`` (same orientation, same data, same affine), but on plain
arrays, with an object that undoes the change for label maps predicted in canonical space.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

_IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


@dataclass(frozen=True)
class Reorientation:
    """The voxel-axis change from an image to its closest canonical form."""

    ornt: np.ndarray  # nibabel orientation transform original -> canonical
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    canonical_affine: np.ndarray

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.ornt, _IDENTITY))

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Bring another array on the original grid (e.g. a cascade mask) into canonical order."""
        if tuple(data.shape[:3]) != self.original_shape:
            raise ValueError(f"array shape {data.shape} does not match the original shape {self.original_shape}")
        return data if self.is_identity else apply_orientation(data, self.ornt)

    def undo(self, data: np.ndarray) -> np.ndarray:
        """Bring an array on the canonical grid back to the original voxel order (a view where possible)."""
        if self.is_identity:
            return data
        back = apply_orientation(data, ornt_transform(_IDENTITY, self.ornt))
        if tuple(back.shape[:3]) != self.original_shape:
            raise ValueError(f"array shape {data.shape} does not match the canonical grid")
        return back


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, Reorientation]:
    """``(data, affine)`` in closest canonical order plus the :class:`Reorientation` to undo it.

    The data is returned as a view (flips/transposes) or unchanged when already canonical.
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    shape = tuple(int(s) for s in data.shape[:3])
    if np.array_equal(ornt, _IDENTITY):
        new_data, new_affine = data, affine
    else:
        new_data = apply_orientation(data, ornt)
        new_affine = affine.dot(inv_ornt_aff(ornt, shape))
    return new_data, new_affine, Reorientation(ornt, shape, affine, new_affine)


def from_canonical(data: np.ndarray, reorientation: Reorientation) -> np.ndarray:
    """Undo :func:`to_canonical` on an array of the canonical grid."""
    return reorientation.undo(data)


def canonical_zooms(zooms_xyz, reorientation: Reorientation) -> tuple[float, float, float]:
    """Voxel sizes reordered like the axes (what ``as_closest_canonical`` does to the header zooms)."""
    zooms = [float(z) for z in zooms_xyz[:3]]
    out = [0.0, 0.0, 0.0]
    for src, (dst, _flip) in enumerate(reorientation.ornt):
        out[int(dst)] = zooms[src]
    return out[0], out[1], out[2]
