"""Splitting of big images into three overlapping chunks along the third axis, and merging back (§5).

The official tool splits every big image of a multi-model task (more than 512*512*900 voxels and 200 slices at
the model's spacing), which leaves seams where the chunks meet. We split such an image only when predicting it
whole would not fit in the memory at hand (``whole_image_bytes`` against ``available_memory_bytes``);
``--force_split`` splits any image, as in the official tool.

With ``n`` slices and ``t = n // 3`` the chunks are ``[0, t+20)``, ``[t-19, 2t+20)``, ``[2t-19, n)``; each
chunk contributes its core ``[0, t)``, ``[t, 2t)``, ``[2t, n)``. Windows are clipped to the image, so very
thin images (possible with ``--force_split``) still split and merge correctly; fewer than three slices are
not split.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPLIT_MARGIN = 20
SPLIT_MIN_VOXELS = 512 * 512 * 900
SPLIT_MIN_SLICES = 200


@dataclass(frozen=True)
class Chunk:
    """One chunk along the split axis: the slices given to the model and the part of them that is kept."""

    window: slice
    core: slice

    @property
    def core_in_window(self) -> slice:
        return slice(self.core.start - self.window.start, self.core.stop - self.window.start)


def needs_split(shape: Sequence[int], multi_model: bool, force: bool = False, cascade: bool = False,
                bytes_needed: int | None = None, bytes_available: int | None = None) -> bool:
    """Whether to predict in chunks: always with ``force``; never with a cascade input; otherwise for
    multi-model tasks on images of more than 512*512*900 voxels and more than 200 slices (the official rule),
    and then only when ``bytes_needed`` exceeds ``bytes_available`` (when both are known)."""
    if cascade:
        return False
    if force:
        return True
    voxels = int(np.prod([int(s) for s in shape[:3]]))
    big = multi_model and voxels > SPLIT_MIN_VOXELS and int(shape[2]) > SPLIT_MIN_SLICES
    if not big or bytes_needed is None or bytes_available is None:
        return big
    return bytes_needed > bytes_available


def whole_image_bytes(shape: Sequence[int], num_classes: int) -> int:
    """Memory of predicting an image whole: the float16 logit accumulator of every class, the float16 Gaussian
    weight map, the float32 preprocessed image and the label maps (per voxel: 2 * classes + 8 bytes)."""
    voxels = int(np.prod([int(s) for s in shape[:3]]))
    return voxels * (2 * int(num_classes) + 8)


def available_memory_bytes(device: object = "cpu", fraction: float = 0.7) -> int | None:
    """``fraction`` of the memory free for the logits: the free memory of a CUDA device, else the host's
    available memory (None when it cannot be read)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free * fraction)
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available * fraction)


def plan_chunks(n_slices: int, parts: int = 3, margin: int = SPLIT_MARGIN) -> list[Chunk]:
    """The chunks for ``n_slices`` slices (one chunk covering everything when too thin to split)."""
    t = n_slices // parts
    if t == 0:
        return [Chunk(slice(0, n_slices), slice(0, n_slices))]
    chunks = []
    for i in range(parts):
        core = slice(i * t, n_slices if i == parts - 1 else (i + 1) * t)
        lo = 0 if i == 0 else max(0, core.start - (margin - 1))
        hi = n_slices if i == parts - 1 else min(n_slices, core.stop + margin)
        chunks.append(Chunk(slice(lo, hi), core))
    return chunks


def split_array(data: np.ndarray, chunks: Sequence[Chunk], axis: int = 2) -> list[np.ndarray]:
    """The chunk windows of ``data`` (views)."""
    index = [slice(None)] * data.ndim
    out = []
    for chunk in chunks:
        index[axis] = chunk.window
        out.append(data[tuple(index)])
    return out


def merge_chunks(results: Sequence[np.ndarray], chunks: Sequence[Chunk], axis: int = 2) -> np.ndarray:
    """Reassemble per-chunk results (each the shape of its window) into one array."""
    if len(results) != len(chunks):
        raise ValueError(f"{len(results)} results for {len(chunks)} chunks")
    first = results[0]
    shape = list(first.shape)
    shape[axis] = chunks[-1].core.stop
    out = np.empty(shape, dtype=first.dtype)
    dst = [slice(None)] * first.ndim
    src = [slice(None)] * first.ndim
    for result, chunk in zip(results, chunks):
        if result.shape[axis] != chunk.window.stop - chunk.window.start:
            raise ValueError(f"chunk result has {result.shape[axis]} slices, its window {chunk.window}")
        dst[axis], src[axis] = chunk.core, chunk.core_in_window
        out[tuple(dst)] = result[tuple(src)]
    return out
