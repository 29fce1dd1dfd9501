"""benchmarks/mask_writer.py on small label maps (the full-size ones are for the benchmark itself)."""
from __future__ import annotations

import numpy as np
import pytest

from totalsegmentator.io import writers


@pytest.mark.skipif(writers._maskcodec is None, reason="the C extension is not built")
def test_mask_writer_benchmark_times_both_loops_on_both_maps():
    """Both label maps hold every class; both encoders are timed and agree byte for byte (else measure raises);
    the C module is put back afterwards."""
    from benchmarks import mask_writer

    maps = mask_writer.label_maps((60, 50, 40), 12)
    assert set(maps) == {"noisy", "organs"}
    for seg in maps.values():
        assert seg.flags.f_contiguous and seg.dtype == np.uint8
        assert set(np.unique(seg)) <= set(range(13)) and np.unique(seg).size > 10
    result = mask_writer.measure((60, 50, 40), 12, threads=2, repeat=1)
    assert writers._maskcodec is not None
    for entry in result["maps"].values():
        assert entry["c_s"] > 0 and entry["numpy_s"] > 0 and entry["mb"] > 0
    assert result["maps"]["noisy"]["runs"] > 10 * result["maps"]["organs"]["runs"]
