"""benchmarks/tile_batch.py on the tiny fixture network (the realistic one is for the benchmark itself)."""
from __future__ import annotations


def test_tile_batch_benchmark_compares_batch_sizes_on_the_tiny_network():
    """benchmarks/tile_batch.py: every batch size predicts all tiles of the image, the first is the reference and
    batching changes the labels nowhere and the logits only by roundings (a tile put in the wrong place would
    change them by their own size); the tiny network, a few tiles."""
    from benchmarks import tile_batch

    result = tile_batch.measure("cpu", [1, 2, 3], (40, 48, 60), repeat=1, realistic=False)
    assert result["tiles"] > 3
    assert list(result["batches"]) == [1, 2, 3]
    assert result["batches"][1]["max_abs_logit_diff"] == 0.0
    for entry in result["batches"].values():
        assert entry["s_per_tile"] > 0
        assert entry["max_abs_logit_diff"] <= 0.02 * result["max_abs_logit"]
        assert entry["labels_same"] == 1.0
