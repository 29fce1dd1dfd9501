"""The end of a batch: ``batch_summary.json`` and ``batch_summary.csv`` in the output folder, and a count line."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_files import write_text_atomic
from .process import CaseResult

SUMMARY_JSON = "batch_summary.json"
SUMMARY_CSV = "batch_summary.csv"
CSV_COLUMNS = ("case_id", "input", "status", "seconds", "error")
STATUSES = ("done", "skipped", "failed", "not_run")


@dataclass
class BatchSummary:
    """All cases of one batch run, in input order; ``exit_code`` is 0 only when no case failed or was left."""

    output: Path
    results: list[CaseResult]
    wall_seconds: float
    started_at: str
    mode: str  # "local", "local-cluster" or the scheduler address
    interrupted: bool = False
    aborted: str | None = None  # error that stopped the batch (missing weights, license)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counts = {status: 0 for status in STATUSES}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        counts = self.counts
        return counts["failed"] == 0 and counts["not_run"] == 0 and not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1

    @property
    def json_path(self) -> Path:
        return self.output / SUMMARY_JSON

    @property
    def csv_path(self) -> Path:
        return self.output / SUMMARY_CSV

    def count_line(self) -> str:
        """E.g. ``10 cases: 7 done, 2 skipped (already done), 1 failed``."""
        c = self.counts
        parts = [f"{c['done']} done"]
        if c["skipped"]:
            parts.append(f"{c['skipped']} skipped (already done)")
        parts.append(f"{c['failed']} failed")
        if c["not_run"]:
            parts.append(f"{c['not_run']} not run")
        total = len(self.results)
        return f"{total} case{'s' if total != 1 else ''}: " + ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "started_at": self.started_at,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(self.wall_seconds, 3),
                "mode": self.mode, "interrupted": self.interrupted, "aborted": self.aborted,
                "counts": self.counts, "options": self.options, "cases": [r.as_dict() for r in self.results]}

    def write(self) -> None:
        """Write the JSON and CSV summaries atomically."""
        import json

        write_text_atomic(json.dumps(self.as_dict(), indent=2, default=str), self.json_path)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.results:
            writer.writerow([r.case_id, r.input, r.status, f"{r.seconds:.3f}", r.error or ""])
        write_text_atomic(buffer.getvalue(), self.csv_path)
