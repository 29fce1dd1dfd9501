"""The class of each voxel, the first of its maxima, faster than ``torch.max(.., 0).indices`` on the CPU.

``torch.max`` over the class axis of a (classes, voxels) array reduces along the outer axis with indices, which
is slow on the CPU (0.7 s for 25 classes of a 224 x 202 x 244 float16 volume on 2 cores). The maxima alone
(``amax``) are several times faster, and a voxel's class follows from them by one small matrix product: the
0/1 map of the classes that reach the maximum, summed with weights 0, 1, 2, ... and with weights 1 (how many
reach it). Voxels where more than one class reaches it (ties) or the maximum is NaN go through ``torch.max``,
so the result is the same, first maximum on ties included.
"""
from __future__ import annotations

import torch


def class_sum_rows(num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2, classes): the class numbers and ones, the weights of ``first_maxima``'s matrix product."""
    return torch.stack([torch.arange(num_classes, dtype=dtype), torch.ones(num_classes, dtype=dtype)])


def first_maxima(values: torch.Tensor, class_sums: torch.Tensor, hits: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.max(values, 0)`` as (indices, maxima), 2-3x faster for many classes: the maxima come from
    ``amax``, the class of a voxel's single maximum from one small matrix product (``class_sums`` @ the 0/1
    map ``hits``, a float buffer of ``values``' shape); voxels with tied or NaN maxima go through torch.max."""
    best = torch.amax(values, 0)
    torch.ge(values, best, out=hits)
    found = class_sums @ hits
    indices, count = found[0], found[1]
    tied = count != 1
    if bool(tied.any()):
        indices[tied] = torch.max(values[:, tied], 0).indices.to(indices.dtype)
    return indices, best


def as_accumulated(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``values * weights`` rounded to the weights' type and divided by them (in place where the type allows):
    what the accumulator of a sliding window holds where a single tile covers a voxel."""
    return values.mul_(weights).to(weights.dtype).div_(weights)


def subnormal_slack(weights: torch.Tensor) -> torch.Tensor:
    """The part of ``accumulated_first_maxima``'s tolerance that depends on the weights only (float32): 8 last
    places of the subnormals (4 of the quotient, 4 of the product / weight), at least float32's smallest normal
    number (no subnormal arithmetic needed). Computed once for a tile, it saves work per chunk."""
    info = torch.finfo(weights.dtype)
    slack = torch.reciprocal(weights.float()).add_(1).mul_(4 * info.tiny * info.eps)
    return slack.clamp_(min=torch.finfo(torch.float32).tiny)


def accumulated_first_maxima(values: torch.Tensor, weights: torch.Tensor, class_sums: torch.Tensor,
                             hits: torch.Tensor, slack: torch.Tensor | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``first_maxima(as_accumulated(values, weights))`` for float32 ``values`` (classes, voxels) and positive
    ``weights`` (voxels), without rounding every class: (indices, accumulated maxima). ``values`` is left as it is;
    ``slack`` is ``subnormal_slack(weights)`` when computed beforehand.

    Rounding is monotonic, so the accumulated maximum is that of the largest value, and a class can only tie
    with it after rounding when its value lies within a few units of the accumulator's last place of the
    largest one (``tolerance``, in value units also where the products are subnormal). Voxels with one class
    within that distance take it; the others (near ties, NaN, maxima beyond the accumulator's range) are
    rounded class by class as the accumulator would and go through ``torch.max``."""
    best = torch.amax(values, 0)
    accumulated_best = as_accumulated(best.clone(), weights)
    # twice the bound: 2 last places of the largest value (one rounding of the product, one of the quotient),
    # plus those of the subnormals (``subnormal_slack``, the same for every class)
    tolerance = torch.abs(best).mul_(4 * torch.finfo(weights.dtype).eps)
    tolerance.add_(subnormal_slack(weights) if slack is None else slack)
    torch.ge(values, best.sub_(tolerance), out=hits)
    found = class_sums @ hits
    indices, count = found[0], found[1]
    unsure = torch.nonzero((count != 1) | ~torch.isfinite(accumulated_best)).view(-1)  # -inf: all tie
    if unsure.numel():
        columns = as_accumulated(values.index_select(1, unsure), weights.index_select(0, unsure))
        indices.index_copy_(0, unsure, torch.max(columns, 0).indices.to(indices.dtype))
    return indices, accumulated_best


def first_max_indices(values: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """``torch.max(values, 0).indices`` as ``dtype`` for values (classes, *spatial), one slice of the first
    spatial axis at a time (small temporaries); on other devices than the CPU it is ``torch.max`` itself."""
    if values.device.type != "cpu" or values.ndim < 2 or values.numel() == 0:
        return torch.max(values, 0).indices.to(dtype)
    out = torch.empty(values.shape[1:], dtype=dtype)
    flat_out = out.view(values.shape[1], -1)
    sums = class_sum_rows(values.shape[0])
    hits = torch.empty((values.shape[0], flat_out.shape[1]))
    for i in range(values.shape[1]):
        flat_out[i] = first_maxima(values[:, i].reshape(values.shape[0], -1), sums, hits)[0]
    return out
