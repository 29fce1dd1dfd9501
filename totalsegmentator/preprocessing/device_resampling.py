"""``scipy.ndimage.zoom`` of orders 0 and 1 (``mode="nearest"``) with torch, on the device the models run on.

With a CUDA device the pipeline resamples the input there (formats.md §4.2 step 7) instead of with scipy on the
CPU; the official tool does the same with cuCIM when CuPy is installed. Coordinates are scipy's, ``k * (n_in - 1)
/ (n_out - 1)`` in float64, the same products. Order 0 picks scipy's voxels (``floor(x + 0.5)``, clipped), so
the result is identical. Order 1 interpolates in float64 axis by axis, where scipy sums the eight weighted
corners: the values agree to ~1e-12, so after the truncation to int32 a voxel differs (by 1) only where the
exact value is an integer that the two round to opposite sides of (measured: 0.03-0.05 % of the voxels of
example_ct at 1.5 and 3 mm, never by more than 1; tests allow 0.2 %). Higher orders need scipy's spline
prefilter and stay on the CPU.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .resampling import _effective_zoom, zoom_output_shape

DEVICE_ORDERS = (0, 1)


def zoom_on_device(data: np.ndarray, zoom: Sequence[float], order: int, device) -> "torch.Tensor":  # noqa: F821
    """``ndimage.zoom(data, zoom, order=order, mode="nearest")`` of a 3-D array on ``device``: float64 for order
    1, the input's type for order 0. The input goes to the device once, in its own (small) type."""
    import torch

    if order not in DEVICE_ORDERS:
        raise ValueError(f"order {order} needs scipy's spline prefilter; orders {DEVICE_ORDERS} run on a device")
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {data.shape}")
    out_shape = zoom_output_shape(data.shape, zoom)
    scale = _effective_zoom(data.shape, out_shape)
    volume = torch.from_numpy(_torch_ready(data)).to(device)
    if order == 1:
        volume = volume.to(torch.float64)
    # the axis that shrinks the volume most first: smaller intermediates, fewer operations
    for axis in sorted(range(3), key=lambda a: out_shape[a] / max(data.shape[a], 1)):
        volume = _zoom_axis(volume, axis, out_shape[axis], float(scale[axis]), order)
    return volume


def _torch_ready(data: np.ndarray) -> np.ndarray:
    """``data`` as a contiguous array in native byte order (big-endian NIfTI files load as such) of a type that
    every device gathers: unsigned types wider than a byte become int64, which holds all their values."""
    dtype = data.dtype.newbyteorder("=")
    if dtype.kind == "u" and dtype.itemsize > 1:
        dtype = np.dtype(np.int64)
    return np.ascontiguousarray(data, dtype=dtype)


def _zoom_axis(volume: "torch.Tensor", axis: int, n_out: int, scale: float, order: int) -> "torch.Tensor":  # noqa: F821
    import torch

    n_in = volume.shape[axis]
    if n_out == n_in:  # scipy's scale is then 1: every voxel stays
        return volume
    coords = torch.arange(n_out, dtype=torch.float64, device=volume.device) * scale
    if order == 0:
        index = torch.floor(coords + 0.5).long().clamp_(0, n_in - 1)
        return volume.index_select(axis, index)
    low = torch.floor(coords)
    frac = coords - low
    i0 = low.long().clamp_(0, n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    shape = [1, 1, 1]
    shape[axis] = n_out
    frac = frac.view(shape)
    lower = volume.index_select(axis, i0)
    lower.mul_(1.0 - frac)
    return lower.add_(volume.index_select(axis, i1).mul_(frac))


def resample_image_on_device(data: np.ndarray, zoom: Sequence[float], order: int, device) -> np.ndarray:
    """The int32 image of ``resample_image`` computed on ``device`` (truncated there; one int32 copy back)."""
    import torch

    out = zoom_on_device(data, zoom, order, device)
    return out.to(torch.int32).cpu().numpy()
