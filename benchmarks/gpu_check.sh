#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the tests of the CUDA paths (tests/test_cuda.py, the device
# resampling tests), the time per tile with 1, 2 and 4 tiles per network call (tile_batch.py), then our --fast
# and default total on the realistic CT with device gpu (run_benchmarks.py; the official tool side by side when
# --official-python is given). Logs and the JSON results go to OUT_DIR.
#
#   benchmarks/gpu_check.sh OUT_DIR [run_benchmarks.py options, e.g. --official-python PATH]
#
# GPU_MODES overrides the benchmark modes (default: fast,total). Exits non-zero when a test or a run failed.
set -uo pipefail
out="${1:?usage: benchmarks/gpu_check.sh OUT_DIR [run_benchmarks.py options]}"
shift
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."

python3 - <<'EOF' 2>&1 | tee "$out/gpu.txt" || exit 1
import torch
assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_device_resampling.py 2>&1 | tee "$out/tests.log"
tests_rc=${PIPESTATUS[0]}

python3 benchmarks/tile_batch.py --device gpu --batch-sizes 1,2,4 --shape 256,256,256 --repeat 3 \
    --out "$out/tile_batch.json" 2>&1 | tee "$out/tile_batch.log"
batch_rc=${PIPESTATUS[0]}

python3 benchmarks/run_benchmarks.py --device gpu --modes "${GPU_MODES:-fast,total}" --repeat 1 \
    --out "$out/gpu_benchmark.json" "$@" 2>&1 | tee "$out/benchmark.log"
bench_rc=${PIPESTATUS[0]}

echo "tests: exit $tests_rc, tile batches: exit $batch_rc, benchmark: exit $bench_rc" | tee -a "$out/gpu.txt"
[ "$tests_rc" -eq 0 ] && [ "$batch_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
