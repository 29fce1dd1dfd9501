"""The options of one segmentation run, shared by the command line and the Python API.

``Options`` has exactly the parameters (names and defaults) of the official ``totalsegmentator()`` function plus
our own additions. ``Options.validated()`` does every cross-option check in one place and raises one-line
``OptionError``s; the computed helpers (``selected_mode()``, ``output_types``, ``roi_subset_effective``,
``crop_plan()``, ...) answer the questions the pipeline asks about the options.

This module holds data and checks only: it must stay cheap to import (no torch, no nnU-Net, no nibabel).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputImageError, OptionError, OutputError
from .registry import CropRule, Mode, Task, get_task, raw_registry, task_registry

# Parameter names of the official totalsegmentator() function, in signature order.
OFFICIAL_API_PARAMS: tuple[str, ...] = (
    "input", "output", "ml", "nr_thr_resamp", "nr_thr_saving", "fast", "nora_tag", "preview", "task",
    "roi_subset", "statistics", "radiomics", "crop_path", "body_seg", "force_split", "output_type", "quiet",
    "verbose", "test", "skip_saving", "device", "license_number", "statistics_exclude_masks_at_border",
    "no_derived_masks", "v1_order", "fastest", "roi_subset_robust", "stats_aggregation", "remove_small_blobs",
    "statistics_normalized_intensities", "robust_crop", "higher_order_resampling_LEGACY",
    "higher_order_resampling", "save_probabilities", "debug", "report", "statistics_extra", "save_lowres",
    "resampling_order", "plans", "model_size",
)

OUTPUT_TYPES: tuple[str, ...] = ("nifti", "dicom_rtstruct", "dicom_seg")
OUTPUT_TYPE_ALIASES: dict[str, str] = {"dicom": "dicom_rtstruct"}
DICOM_OUTPUT_TYPES = frozenset({"dicom_rtstruct", "dicom_seg"})
MODEL_SIZES: tuple[str, ...] = ("big", "small")
STATS_AGGREGATIONS: tuple[str, ...] = ("mean", "median")
# network precision (our addition): auto = float32 on the CPU (our fused forward, inference/fused_unet.py), float16
# autocast on CUDA; exact = nnU-Net's own arithmetic, bit for bit (its modules; float16 autocast on CUDA)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "exact", "fp16", "bf16")
PRECISION_ENV = "TOTALSEG_PRECISION"
# torch.compile of the networks (our addition; inference/compile.py): auto = on the CPU for long predictions
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
COMPILE_ENV = "TOTALSEG_COMPILE"

TEST_VALUES: tuple[int, ...] = (0, 1, 3)
RESAMPLING_ORDERS = range(0, 6)
DEFAULT_SMALL_BLOBS_MM3 = 200.0
DEFAULT_PLANS = "nnUNetPlans"
# Margin around a crop mask found by a default rough model; the task's configured margin is ignored there.
ROUGH_CROP_MARGIN_MM: tuple[float, float, float] = (20.0, 20.0, 20.0)
# Margin around the body mask of --body_seg (the official default crop margin).
BODY_SEG_MARGIN_MM: tuple[float, float, float] = (3.0, 3.0, 3.0)
BODY_CROP_CLASSES = frozenset({"body_trunc", "body_extremities"})

_DEVICE_RE = re.compile(r"^(gpu|cpu|mps|gpu:\d+)$")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# what nibabel writes as one file for a --ml name (as the official tool's nib.save); no suffix: ".nii" is added
MULTILABEL_SUFFIXES = (*_NIFTI_SUFFIXES, ".mgz", ".mgh")


@dataclass(frozen=True)
class CropPlan:
    """Where the crop mask of a run comes from.

    ``kind``: ``"task"`` (the task's own crop rule), ``"roi_subset"`` or ``"body_seg"``.
    ``rough_model``: key of ``registry.rough_crop_model()`` (``ct_default``, ``ct_robust``, ``mr_always``,
    ``body``) or None when the mask comes from a full run of the task named in ``model`` (e.g. teeth).
    """

    kind: str
    classes: tuple[str, ...]
    model: str
    rough_model: str | None
    margin_mm: tuple[float, float, float]


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for names ending in ``.nii`` or ``.nii.gz`` (case-insensitive); anything else counts as DICOM."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def is_path_like(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def normalise_output_types(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"nifti"`` / ``["nifti", "dicom_seg"]`` / ``"nifti,dicom"`` -> canonical names, duplicates dropped."""
    if value is None:
        return ["nifti"]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise OptionError(f"output_type must be a string or a list of strings, not {type(value).__name__}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise OptionError(f"output_type values must be strings, not {type(item).__name__}")
        for piece in item.split(","):
            name = piece.strip().lower()
            if not name:
                continue
            name = OUTPUT_TYPE_ALIASES.get(name, name)
            if name not in OUTPUT_TYPES:
                raise OptionError(f"unknown output type '{piece.strip()}'; choose from "
                                  f"{', '.join(OUTPUT_TYPES)} (or 'dicom' for dicom_rtstruct)")
            if name not in out:
                out.append(name)
    if not out:
        raise OptionError(f"output_type is empty; choose from {', '.join(OUTPUT_TYPES)}")
    return out


def normalise_device(device: Any) -> str:
    """``gpu``, ``cpu``, ``mps`` or ``gpu:N``; ``cuda``/``cuda:N`` are accepted as spellings of ``gpu``."""
    if not isinstance(device, str):
        raise OptionError(f"device must be a string (gpu, cpu, mps or gpu:N), not {type(device).__name__}")
    name = device.strip().lower()
    if name == "cuda" or name.startswith("cuda:"):
        name = "gpu" + name[4:]
    if not _DEVICE_RE.match(name):
        raise OptionError(f"invalid device '{device}'; use gpu, cpu, mps or gpu:N (N = GPU number, e.g. gpu:1)")
    return name


def normalise_small_blobs(value: Any) -> float | bool:
    """False/None -> False (off); True -> 200.0 mm3; a number > 0 -> that many mm3."""
    if value is None or value is False:
        return False
    if value is True:
        return DEFAULT_SMALL_BLOBS_MM3
    try:
        mm3 = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"remove_small_blobs must be True/False or a volume in mm3, not {value!r}") from None
    if not mm3 > 0 or mm3 == float("inf"):
        raise OptionError(f"remove_small_blobs must be a volume in mm3 greater than 0, not {value!r}")
    return mm3


def suggest(name: str, candidates: list[str], n: int = 3) -> str:
    """`` (did you mean 'a', 'b'?)`` or an empty string."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + ", ".join(f"'{c}'" for c in close) + "?)"


def _rough_task_names() -> frozenset[str]:
    return frozenset(m["task"] for m in raw_registry()["rough_crop_models"].values())


@dataclass(frozen=True)
class Options:
    """All options of one run; field names and defaults are those of the official ``totalsegmentator()``."""

    input: Any  # str | Path | nibabel.Nifti1Image
    output: str | Path | None = None
    ml: bool = False
    nr_thr_resamp: int = 1
    nr_thr_saving: int = 6
    fast: bool = False
    nora_tag: str = "None"
    preview: bool = False
    task: str = "total"
    roi_subset: list[str] | None = None
    statistics: bool | str | Path = False
    radiomics: bool = False
    crop_path: str | Path | None = None
    body_seg: bool = False
    force_split: bool = False
    output_type: str | list[str] = "nifti"
    quiet: bool = False
    verbose: bool = False
    test: int = 0
    skip_saving: bool = False
    device: str = "gpu"
    license_number: str | None = None
    statistics_exclude_masks_at_border: bool = True
    no_derived_masks: bool = False
    v1_order: bool = False
    fastest: bool = False
    roi_subset_robust: list[str] | None = None
    stats_aggregation: str = "mean"
    remove_small_blobs: bool | float = False
    statistics_normalized_intensities: bool = False
    robust_crop: bool = False
    higher_order_resampling_LEGACY: bool = False
    higher_order_resampling: bool = False
    save_probabilities: str | Path | None = None
    debug: bool = False
    report: str | Path | None = None
    statistics_extra: bool = False
    save_lowres: bool = False
    resampling_order: int = 1
    plans: str = DEFAULT_PLANS
    model_size: str = "big"
    # --- our additions ---
    series_uid: str | None = None  # which series of a DICOM folder holding several
    precision: str | None = None  # PRECISIONS; None: $TOTALSEG_PRECISION, else auto
    compile: str | None = None  # COMPILE_MODES; None: $TOTALSEG_COMPILE, else auto

    # ------------------------------------------------------------------ validation
    def validated(self) -> Options:
        """Check every option and combination; return a copy with normalised values.

        Normalised: ``device`` (``cuda`` spelling -> ``gpu``), ``remove_small_blobs`` (False or mm3 float),
        ``task`` stripped. Raises OptionError/UnknownTaskError (exit code 2) with a one-line message,
        InputImageError when an input path does not exist, LicenseError for a malformed license number.
        """
        if not isinstance(self.task, str):
            raise OptionError(f"task must be a string, not {type(self.task).__name__}")
        task = get_task(self.task.strip())
        opts = dataclasses.replace(
            self, task=task.name, device=normalise_device(self.device),
            remove_small_blobs=normalise_small_blobs(self.remove_small_blobs))
        opts._check_input_output()
        opts._check_numbers()
        opts._check_model_choice(task)
        opts._check_roi_subset(task)
        opts._check_output_types()
        opts._check_save_lowres()
        opts._check_statistics()
        opts._check_output_location()  # after the checks of what is written, whose messages say more
        if opts.license_number is not None:
            from .config import check_license_format
            check_license_format(str(opts.license_number))
        return opts

    def _check_input_output(self) -> None:
        if self.input is None:
            raise OptionError("no input given; pass a NIfTI file, a DICOM folder or .zip, or a Nifti1Image")
        if is_path_like(self.input):
            if not str(self.input):
                raise OptionError("the input path is empty")
            if not Path(self.input).exists():
                raise InputImageError(f"input '{self.input}' does not exist")
        elif not hasattr(self.input, "get_fdata"):
            raise OptionError(f"input must be a path or a nibabel Nifti1Image, not {type(self.input).__name__}")
        for name in ("output", "crop_path", "save_probabilities", "report"):
            value = getattr(self, name)
            if value is not None and not is_path_like(value):
                raise OptionError(f"{name} must be a path, not {type(value).__name__}")
        if self.nora_tag is not None and not isinstance(self.nora_tag, str):
            raise OptionError(f"nora_tag must be a string, not {type(self.nora_tag).__name__}")

    def _check_numbers(self) -> None:
        for name in ("nr_thr_resamp", "nr_thr_saving"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError(f"{name} must be a whole number of at least 1, not {value!r}")
        if isinstance(self.resampling_order, bool) or self.resampling_order not in RESAMPLING_ORDERS:
            raise OptionError(f"resampling_order must be a spline order from 0 to 5, not {self.resampling_order!r}")
        if isinstance(self.test, bool) or self.test not in TEST_VALUES:
            raise OptionError(f"test must be 0, 1 or 3, not {self.test!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise OptionError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise OptionError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        if self.stats_aggregation not in STATS_AGGREGATIONS:
            raise OptionError(f"stats_aggregation must be 'mean' or 'median', not {self.stats_aggregation!r}")

    def _check_model_choice(self, task: Task) -> None:
        task.mode(self.fast, self.fastest)  # raises for --fast on a task that disallows it
        if self.model_size not in MODEL_SIZES:
            raise OptionError(f"model_size must be 'big' or 'small', not {self.model_size!r}")
        if self.model_size == "small" and not any(m.plans_small for m in task.modes.values()):
            small = [n for n, t in task_registry().items() if any(m.plans_small for m in t.modes.values())]
            raise OptionError(f"model_size 'small' only works with task {' or '.join(small)}, not '{task.name}'")
        if not isinstance(self.plans, str) or not self.plans:
            raise OptionError(f"plans must be a plans name such as '{DEFAULT_PLANS}', not {self.plans!r}")

    def _check_roi_subset(self, task: Task) -> None:
        for name in ("roi_subset", "roi_subset_robust"):
            value = getattr(self, name)
            if value is None:
                continue
            flag = "--" + name
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise OptionError(f"{name} must be a list of class names (e.g. ['liver', 'spleen']), "
                                  f"not {type(value).__name__}")
            if not value:
                continue
            if not task.roi_subset_supported:
                supported = [n for n, t in task_registry().items() if t.roi_subset_supported]
                raise OptionError(f"{flag} only works with the tasks {', '.join(supported)}, not '{task.name}'")
            classes = task.classes
            unknown = [c for c in value if not isinstance(c, str) or c not in task.class_ids]
            if unknown:
                parts = [f"'{c}'{suggest(str(c), classes)}" for c in unknown]
                raise OptionError(f"{flag}: unknown class name(s) for task '{task.name}': {', '.join(parts)}; "
                                  f"run 'TotalSegmentator --list-classes {task.name}' to see all names")

    def _check_output_types(self) -> None:
        types = self.output_types
        if DICOM_OUTPUT_TYPES.intersection(types):
            if not is_path_like(self.input):
                raise OptionError("DICOM output needs a DICOM input (a folder of slices), not a Nifti1Image")
            if is_nifti_path(self.input):
                raise OptionError("DICOM output (dicom_rtstruct, dicom_seg) needs a DICOM input; "
                                  f"'{self.input}' is a NIfTI file")

    def _check_output_location(self) -> None:
        """``output`` can be written: a folder for per-class files, a file for one multilabel or RT struct result,
        and no existing file where a folder has to be made (caught here, before any model runs)."""
        if self.output is None:
            return
        out = Path(self.output)
        types = self.output_types
        if not self.multilabel:
            if out.exists() and not out.is_dir():
                raise OptionError(f"output '{out}' is a file; per-class output needs a folder "
                                  "(or use --ml to write one multilabel file)")
            folder = out
        elif len(types) == 1 and types[0] != "dicom_seg":
            if out.is_dir():
                how, example = ("--ml", "segmentation.nii.gz") if types[0] == "nifti" else \
                    (f"--output_type {types[0]}", "segmentation.dcm")
                raise OptionError(f"output '{out}' is a folder; with {how} it is the file to write, "
                                  f"e.g. '{out / example}'")
            if types[0] == "nifti" and out.suffix and not out.name.lower().endswith(MULTILABEL_SUFFIXES):
                raise OptionError(f"with --ml the output is one image file: name it .nii.gz, .nii or .mgz, "
                                  f"not '{out.name}'")
            folder = out.parent
        else:  # dicom_seg or several types: into an existing folder, else beside the named file
            folder = out if out.is_dir() else out.parent
        existing = folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise OptionError(f"cannot make the output folder '{folder}': '{existing}' is a file")
        if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to the output folder '{existing}': permission denied")

    def _check_save_lowres(self) -> None:
        if not self.save_lowres:
            return
        if not (self.fast or self.fastest):
            raise OptionError("--save_lowres only works together with --fast or --fastest")
        if self.dicom_output:
            raise OptionError("--save_lowres does not work with DICOM output; use --output_type nifti")
        if self.higher_order_resampling:
            return  # -ho switches save_lowres off, so cropping is no conflict
        if self.selected_mode().crop is not None or self.roi_subset_effective or self.body_seg_effective:
            raise OptionError("--save_lowres does not work when the input is cropped "
                              "(tasks with a crop, --roi_subset, --body_seg)")

    def _check_statistics(self) -> None:
        if not isinstance(self.statistics, (bool, str, os.PathLike)) and self.statistics is not None:
            raise OptionError(f"statistics must be True/False or a file path, not {type(self.statistics).__name__}")
        if self.radiomics:
            if self.ml:
                raise OptionError("--radiomics does not work with --ml (it needs one file per class)")
            if self.output is None:
                raise OptionError("radiomics needs an output directory (output is None)")
            if self.dicom_output:
                raise OptionError("--radiomics does not work with DICOM output (it needs one NIfTI file per class)")
            if self.input_is_dicom:
                raise OptionError("--radiomics does not work with a DICOM input; convert it to NIfTI first")

    # ------------------------------------------------------------------ computed helpers
    @property
    def task_spec(self) -> Task:
        """The registry entry of ``task``."""
        return get_task(self.task)

    def selected_mode(self) -> Mode:
        """The mode ``fast``/``fastest`` select (with the official fallbacks) and the plans to use."""
        mode = self.task_spec.mode(self.fast, self.fastest)
        if self.model_size == "small" and mode.plans_small:
            return dataclasses.replace(mode, plans=mode.plans_small)
        if self.plans and self.plans != DEFAULT_PLANS and self.plans != mode.plans:
            return dataclasses.replace(mode, plans=self.plans)
        return mode

    @property
    def output_types(self) -> list[str]:
        """``output_type`` as a list of canonical names (alias ``dicom`` -> ``dicom_rtstruct``)."""
        return normalise_output_types(self.output_type)

    @property
    def dicom_output(self) -> bool:
        return bool(DICOM_OUTPUT_TYPES.intersection(self.output_types))

    @property
    def multilabel(self) -> bool:
        """One multilabel result instead of per-class files (``ml``; any DICOM output forces it)."""
        return bool(self.ml) or self.dicom_output

    @property
    def input_is_dicom(self) -> bool:
        """A path that does not end in ``.nii``/``.nii.gz`` (a DICOM folder or zip)."""
        return is_path_like(self.input) and not is_nifti_path(self.input)

    @property
    def roi_subset_effective(self) -> list[str] | None:
        """``roi_subset_robust`` replaces ``roi_subset``; an empty list means no subset."""
        subset = self.roi_subset_robust if self.roi_subset_robust else self.roi_subset
        return list(subset) if subset else None

    @property
    def roi_subset_is_robust(self) -> bool:
        """The subset crop uses the robust rough model: ``roi_subset_robust`` given, or an MR task."""
        if not self.roi_subset_effective:
            return False
        return bool(self.roi_subset_robust) or self.task_spec.modality == "MR"

    @property
    def robust_crop_effective(self) -> bool:
        """Crop with the 3 mm rough model: ``robust_crop``, a robust roi_subset, or a task that forces it."""
        crop = self.selected_mode().crop
        return bool(self.robust_crop) or self.roi_subset_is_robust or (crop is not None and crop.robust)

    @property
    def body_seg_effective(self) -> bool:
        """``body_seg``, unless the task ignores it or another crop (task crop, roi_subset) is active."""
        if not self.body_seg or self.task_spec.body_seg_ignored:
            return False
        return self.selected_mode().crop is None and not self.roi_subset_effective

    @property
    def save_lowres_effective(self) -> bool:
        return bool(self.save_lowres) and (self.fast or self.fastest) and not self.higher_order_resampling

    @property
    def fast_statistics(self) -> bool:
        """Statistics computed inside the prediction at model resolution (only ``fast``, not ``fastest``)."""
        return bool(self.statistics) and bool(self.fast)

    @property
    def remove_small_blobs_mm3(self) -> float | None:
        value = normalise_small_blobs(self.remove_small_blobs)
        return None if value is False else float(value)

    @property
    def v1_order_effective(self) -> bool:
        return bool(self.v1_order) and self.task_spec.v1_order is not None

    @property
    def nora_requested(self) -> bool:
        return self.nora_tag not in (None, "", "None")

    @property
    def statistics_file(self) -> Path | None:
        """Where statistics.json goes: the ``statistics`` path, next to/inside ``output``, or None."""
        if not self.statistics:
            return None
        if self.statistics is not True:
            return Path(self.statistics).absolute()
        if self.output is None:
            return None
        return self.output_dir / "statistics.json"

    @property
    def output_dir(self) -> Path | None:
        """Folder for extra files: ``output`` in per-class mode, its parent with ``ml`` or DICOM output."""
        if self.output is None:
            return None
        out = Path(self.output)
        return out.parent if self.multilabel else out

    def crop_plan(self) -> CropPlan | None:
        """Where the crop mask comes from (task crop rule > roi_subset > body_seg), or None for no crop."""
        task = self.task_spec
        rule: CropRule | None = self.selected_mode().crop
        if rule is not None:
            if rule.model not in _rough_task_names():
                return CropPlan("task", rule.classes, rule.model, None, tuple(float(m) for m in rule.margin_mm))
            return CropPlan("task", rule.classes, rule.model,
                            self._rough_model(rule.classes, rule.model, rule.robust), ROUGH_CROP_MARGIN_MM)
        subset = self.roi_subset_effective
        if subset:
            model = "total_mr" if task.modality == "MR" else "total"
            return CropPlan("roi_subset", tuple(subset), model,
                            self._rough_model(subset, model, self.roi_subset_is_robust), ROUGH_CROP_MARGIN_MM)
        if self.body_seg_effective:
            return CropPlan("body_seg", tuple(get_task("body").classes), "body", "body", BODY_SEG_MARGIN_MM)
        return None

    def _rough_model(self, classes: Any, model: str, forced_robust: bool) -> str:
        if BODY_CROP_CLASSES.intersection(classes) or model == "body":
            return "body"
        if model == "total_mr" or self.task_spec.modality == "MR":
            return "mr_always"
        return "ct_robust" if forced_robust or self.robust_crop_effective else "ct_default"

    def notices(self) -> list[str]:
        """One-liners about options that are ignored or adjusted, for the caller to print unless ``quiet``.

        The task's own ``info_message`` is not included (the caller prints it with the task).
        """
        task = self.task_spec
        out: list[str] = []
        if self.nora_requested:
            out.append(f"nora tagging is not supported by this implementation; nora_tag '{self.nora_tag}' is ignored")
        if self.body_seg and task.body_seg_ignored:
            out.append(f"body_seg is ignored for the MR task '{task.name}'")
        if self.v1_order and not self.v1_order_effective:
            out.append(f"v1_order only applies to task 'total'; ignored for task '{task.name}'")
        if (self.fast or self.fastest) and len(task.modes) == 1 and not (self.fast and task.fast_disallowed):
            out.append(f"task '{task.name}' has a single model configuration; --fast/--fastest are ignored")
        if self.save_lowres and self.higher_order_resampling and (self.fast or self.fastest):
            out.append("--higher_order_resampling switches --save_lowres off")
        if self.crop_path is not None:
            out.append("crop_path has no effect (kept for compatibility)")
        return out

    def api_kwargs(self) -> dict[str, Any]:
        """The official ``totalsegmentator()`` keyword arguments (our additions only when set)."""
        kwargs = {name: getattr(self, name) for name in OFFICIAL_API_PARAMS}
        for name in ("series_uid", "precision", "compile"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def precision_effective(self) -> str:
        """The network precision: the option, else ``$TOTALSEG_PRECISION``, else auto."""
        return _option_or_env(self.precision, PRECISION_ENV, PRECISIONS)

    def compile_effective(self) -> str:
        """Whether networks are compiled: the option, else ``$TOTALSEG_COMPILE``, else auto."""
        return _option_or_env(self.compile, COMPILE_ENV, COMPILE_MODES)


def _option_or_env(value: str | None, env: str, choices: tuple[str, ...]) -> str:
    if value is not None:
        return value
    value = os.environ.get(env, "").strip().lower() or "auto"
    if value not in choices:
        raise OptionError(f"{env} must be one of {', '.join(choices)}, not {value!r}")
    return value


def validate_options(**kwargs: Any) -> Options:
    """``Options(**kwargs).validated()``, with unknown keyword names reported as an OptionError."""
    names = {f.name for f in dataclasses.fields(Options)}
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        raise OptionError(f"unknown option(s): {', '.join(unknown)}{suggest(unknown[0], sorted(names))}")
    if "input" not in kwargs:
        raise OptionError("no input given")
    return Options(**kwargs).validated()
