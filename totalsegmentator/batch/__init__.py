"""Many scans in one run: models loaded once, reading/writing overlapped, resumable, optionally on Dask.

Public API::

    from totalsegmentator.batch import totalsegmentator_batch, discover_cases
    summary = totalsegmentator_batch("scans/", "segs/", fast=True, device="gpu")         # local
    summary = totalsegmentator_batch("cases.csv", "segs/", workers=4)                     # local Dask cluster
    summary = totalsegmentator_batch("scans/*.nii.gz", "segs/", scheduler="tcp://h:8786")  # running cluster

The command line is ``totalseg_batch`` (``totalsegmentator.bin.totalseg_batch``). Dask is imported only for
``workers``/``scheduler``/``client`` runs.
"""
from __future__ import annotations

from .api import BatchInterrupted, totalsegmentator_batch, validate_batch_options
from .cases import Case, discover_cases
from .process import BatchSpec, CaseResult, process_case
from .state import STATE_DIR, BatchState
from .summary import SUMMARY_CSV, SUMMARY_JSON, BatchSummary

__all__ = ["BatchInterrupted", "BatchSpec", "BatchState", "BatchSummary", "Case", "CaseResult", "STATE_DIR",
           "SUMMARY_CSV", "SUMMARY_JSON", "discover_cases", "process_case", "totalsegmentator_batch",
           "validate_batch_options"]
