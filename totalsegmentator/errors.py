"""Errors a user can fix. The command line prints their one-line message and exits non-zero."""
from __future__ import annotations


class TotalSegmentatorError(Exception):
    """Base class: a problem with the user's input, options, weights or environment."""

    exit_code = 1


class OptionError(TotalSegmentatorError, ValueError):
    """An invalid option or combination of options."""

    exit_code = 2


class UnknownTaskError(OptionError):
    """A task name that the registry does not know."""


class InputImageError(TotalSegmentatorError):
    """The input image is missing, unreadable or not a usable 3D volume."""


class DicomError(InputImageError):
    """A DICOM input that cannot be converted, or a DICOM output that cannot be written."""


class ConfigError(TotalSegmentatorError):
    """The home folder (``TOTALSEG_HOME_DIR``) or its config.json cannot be used."""


class OutputError(TotalSegmentatorError):
    """An output cannot be written: no permission, a full disk, a file where a folder belongs."""


class WeightsError(TotalSegmentatorError):
    """Model weights are missing and cannot be downloaded, or a weights archive is unusable."""


class LicenseError(TotalSegmentatorError):
    """A licensed task without a valid license number."""


class OptionalDependencyError(TotalSegmentatorError):
    """A feature needs a package that is not installed."""
