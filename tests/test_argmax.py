"""The class of each voxel by amax and a matrix product, against torch.max (ties, NaN, dtypes, rounding)."""
from __future__ import annotations

import pytest
import torch

from totalsegmentator.inference.argmax import (accumulated_first_maxima, as_accumulated, class_sum_rows,
                                               first_max_indices, first_maxima)


def tied_values(dtype: torch.dtype, shape=(9, 500)) -> torch.Tensor:
    torch.manual_seed(1)
    values = torch.randint(-3, 4, shape).to(dtype)  # small integers: many tied maxima
    flat = values.view(shape[0], -1)
    flat[:, 7] = float("nan")
    flat[4, 9] = float("nan")
    flat[:, 11] = float("-inf")
    flat[2, 12] = float("inf")
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_first_maxima_equal_torch_max(dtype):
    values = tied_values(dtype)
    indices, best = first_maxima(values, class_sum_rows(9), torch.empty(values.shape))
    expected = torch.max(values, 0)
    assert torch.equal(indices.long(), expected.indices)
    assert torch.allclose(best, expected.values, equal_nan=True)
    assert bool(torch.isnan(best[7])) and bool(torch.isnan(best[9])) and int(indices[12]) == 2


@pytest.mark.parametrize("dtype, out_dtype", [(torch.float16, torch.uint8), (torch.float32, torch.int16)])
def test_first_max_indices_of_a_volume(dtype, out_dtype):
    values = tied_values(dtype, (6, 7, 5, 4))
    labels = first_max_indices(values, out_dtype)
    assert labels.dtype == out_dtype and labels.shape == (7, 5, 4)
    assert torch.equal(labels.long(), torch.max(values, 0).indices)
    smooth = torch.randn(12, 5, 6, 7)  # no ties: every voxel through the matrix product
    assert torch.equal(first_max_indices(smooth).long(), smooth.argmax(0))
    assert first_max_indices(torch.empty(3, 0, 4)).shape == (0, 4)


def near_ties(seed: int, classes: int = 7, voxels: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 values whose classes differ from the largest by a few float16 last places (some tie after the
    accumulator's rounding, some do not), over weights from Gaussian-like 10 down to float16 subnormals."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.pow(10.0, torch.empty(voxels).uniform_(-9, 4, generator=g))  # also subnormal products
    base = torch.randn(voxels, generator=g) * scale
    steps = torch.randint(-6, 1, (classes, voxels), generator=g).float() * torch.rand((classes, voxels), generator=g)
    values = base * (1 + steps * 2.0 ** -11) + steps * 2.0 ** -26
    far = torch.rand((classes, voxels), generator=g) < 0.3
    values[far] -= 100 * scale.expand(classes, voxels)[far]
    weights = torch.pow(10.0, torch.empty(voxels).uniform_(-7.3, 1, generator=g))
    return values, weights


@pytest.mark.parametrize("weights_dtype", [torch.float16, torch.float32])
def test_accumulated_first_maxima_round_as_the_accumulator(weights_dtype):
    for seed in range(5):
        values, weights = near_ties(seed)
        weights = weights.to(weights_dtype)
        zero = weights == 0
        weights[zero] = weights[~zero].min()
        values[:, 5] = float("nan")
        values[2, 6] = float("-inf")
        values[:, 8] = -1e6  # all beyond float16 after weighting: a tie at -inf (the first class) ...
        values[3, 8] = -1e4  # ... though one is larger before rounding
        weights[8] = 10
        kept = values.clone()
        hits = torch.empty(values.shape)
        indices, best = accumulated_first_maxima(values, weights, class_sum_rows(values.shape[0]), hits)
        assert torch.equal(values, kept) or torch.equal(torch.nan_to_num(values), torch.nan_to_num(kept))
        rounded = as_accumulated(kept.clone(), weights)
        expected = torch.max(rounded, 0)
        assert torch.equal(indices.long(), expected.indices)
        assert torch.equal(torch.nan_to_num(best), torch.nan_to_num(expected.values))
        assert int(indices[6]) != 2
        assert int(indices[8]) == (0 if weights_dtype == torch.float16 else 3)
    # the rounding matters: the float32 argmax differs from the accumulator's on some voxels
    values, weights = near_ties(0)
    rounded = as_accumulated(values.clone(), weights.to(torch.float16))
    assert bool((torch.max(rounded, 0).indices != values.argmax(0)).any())
