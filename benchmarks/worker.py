"""One benchmark run of our tool in a fresh process: ``python benchmarks/worker.py MODE INPUT OUTPUT RESULT_JSON``.

Writes the stage times (``StageTimer``), the wall and CPU time of the ``totalsegmentator()`` call and the time
spent importing to ``RESULT_JSON``. The call is made as the ``TotalSegmentator`` command makes it (freed memory
kept, no garbage collection at exit). The parent process measures the peak memory of the whole process tree.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()
# this checkout's package, whatever copy of it is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# benchmark mode -> totalsegmentator() arguments
MODES: dict[str, dict] = {
    "fast": {"fast": True},
    "fastest": {"fastest": True},
    "total": {},
    "roi_subset": {"roi_subset": ["liver", "spleen"]},
    "ml": {"ml": True},
}


def main(argv: list[str]) -> int:
    mode, input_path, output_path, result_path = argv[:4]
    extra = json.loads(argv[4]) if len(argv) > 4 else {}
    from totalsegmentator.bin._common import last_run_of_process
    from totalsegmentator.timing import StageTimer

    with last_run_of_process():  # as the TotalSegmentator command makes the call
        from totalsegmentator.python_api import totalsegmentator

        imported = time.perf_counter()
        timer = StageTimer()
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        totalsegmentator(input_path, output_path, device=extra.pop("device", "cpu"), quiet=True, timer=timer,
                         **MODES[mode], **extra)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        import totalsegmentator
        from totalsegmentator.inference import predictor

    result = {"package": str(Path(totalsegmentator.__file__).parent), "stages": timer.as_dict(),
              "predictor": predictor.STAGE_TIMER.as_dict(), "call_wall_s": round(wall, 3),
              "call_cpu_s": round(cpu, 3), "import_s": round(imported - START, 3)}
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
