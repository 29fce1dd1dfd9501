"""The class of each voxel by amax and a matrix product, against torch.max (ties, NaN, dtypes)."""
from __future__ import annotations

import pytest
import torch

from totalsegmentator.inference.argmax import class_sum_rows, first_max_indices, first_maxima


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
