"""The declarative task registry.

Every task of the official tool is one entry of ``resources/tasks.json``; this module turns the entries into
typed objects and answers the questions the rest of the package asks (which models to run, at which spacing,
with which crop, which classes come out). Code never branches on a task's name where a field can say it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from ..errors import OptionError, UnknownTaskError

ACADEMIC_LICENSE_URL = "https://backend.totalsegmentator.com/license-academic/"
MODE_NAMES = ("default", "fast", "fastest")


@dataclass(frozen=True)
class Part:
    """One model of a multi-model task and the classes it predicts (part label -> class name)."""

    dataset_id: int
    class_map: dict[int, str]


@dataclass(frozen=True)
class CropRule:
    """Crop the input to ``classes`` found by the rough model of ``model`` (a task name) before predicting."""

    classes: tuple[str, ...]
    model: str
    margin_mm: tuple[float, float, float]
    robust: bool


@dataclass(frozen=True)
class RemoveOutsideRule:
    classes: tuple[str, ...]
    dilation_mm: float


@dataclass(frozen=True)
class Mode:
    """One configuration (default / fast / fastest) of a task."""

    name: str
    dataset_ids: tuple[int, ...]
    trainer: str
    plans: str
    configuration: str
    folds: tuple[int, ...] | None
    spacing: tuple[float, float, float] | None  # x, y, z in mm after RAS reorientation; None: no resampling
    step_size: float
    crop: CropRule | None = None
    remove_outside: RemoveOutsideRule | None = None
    parts: tuple[Part, ...] = ()
    plans_small: str | None = None

    @property
    def multi_model(self) -> bool:
        return len(self.parts) > 1


@dataclass(frozen=True)
class Task:
    name: str
    modality: str  # "CT" or "MR"
    license_required: bool
    fast_disallowed: bool
    roi_subset_supported: bool
    body_seg_ignored: bool
    class_map: dict[int, str]
    modes: dict[str, Mode]
    auxiliary_labels: dict[int, str] = field(default_factory=dict)
    postprocessing: tuple[str, ...] = ()
    derived_masks: bool = False
    label_map_task: str | None = None
    refine: dict[str, Any] | None = None
    v1_order: str | None = None
    info_message: str | None = None
    download_ids: tuple[int | str, ...] = ()
    preview_roi_groups: tuple[tuple[str, ...], ...] = ()

    @property
    def classes(self) -> list[str]:
        return list(self.class_map.values())

    @property
    def class_ids(self) -> dict[str, int]:
        return {name: idx for idx, name in self.class_map.items()}

    def mode(self, fast: bool = False, fastest: bool = False) -> Mode:
        """The mode the flags select, with the official fallbacks (fastest -> fast; single-mode tasks ignore both)."""
        if fast and self.fast_disallowed:
            raise OptionError(f"task '{self.name}' does not work with option --fast")
        wanted = "fast" if fast else "fastest" if fastest else "default"
        if wanted == "fastest" and "fastest" not in self.modes:
            wanted = "fast"
        return self.modes.get(wanted, self.modes["default"])


def _int_keys(mapping: dict[str, str]) -> dict[int, str]:
    return {int(k): v for k, v in sorted(mapping.items(), key=lambda kv: int(kv[0]))}


def _mode(name: str, raw: dict) -> Mode:
    crop = raw.get("crop")
    remove = raw.get("remove_outside")
    return Mode(
        name=name,
        dataset_ids=tuple(raw["datasets"]),
        trainer=raw["trainer"],
        plans=raw["plans"],
        configuration=raw["configuration"],
        folds=tuple(raw["folds"]) if raw["folds"] is not None else None,
        spacing=tuple(raw["spacing"]) if raw["spacing"] is not None else None,
        step_size=raw["step_size"],
        crop=CropRule(tuple(crop["classes"]), crop["model"], tuple(crop["margin_mm"]), crop["robust"]) if crop else None,
        remove_outside=RemoveOutsideRule(tuple(remove["classes"]), remove["dilation_mm"]) if remove else None,
        parts=tuple(Part(p["dataset"], _int_keys(p["class_map"])) for p in raw.get("parts", ())),
        plans_small=raw.get("plans_small"),
    )


def _task(name: str, raw: dict) -> Task:
    modes: dict[str, Mode] = {}
    for mode_name, mode_raw in raw["modes"].items():
        if "same_as" not in mode_raw:
            modes[mode_name] = _mode(mode_name, mode_raw)
    return Task(
        name=name,
        modality=raw["modality"],
        license_required=raw["license_required"],
        fast_disallowed=raw["fast_disallowed"],
        roi_subset_supported=raw["roi_subset"],
        body_seg_ignored=raw["body_seg_ignored"],
        class_map=_int_keys(raw["class_map"]),
        modes=modes,
        auxiliary_labels=_int_keys(raw.get("auxiliary_labels", {})),
        postprocessing=tuple(raw.get("postprocessing", ())),
        derived_masks=raw.get("derived_masks", False),
        label_map_task=raw.get("label_map_task"),
        refine=raw.get("refine"),
        v1_order=raw.get("v1_order"),
        info_message=raw.get("info_message"),
        download_ids=tuple(raw.get("download_ids", ())),
        preview_roi_groups=tuple(tuple(g) for g in raw.get("preview_roi_groups", ())),
    )


@lru_cache(maxsize=1)
def raw_registry() -> dict:
    """The registry file as loaded from JSON (read once per process)."""
    text = resources.files("totalsegmentator").joinpath("resources/tasks.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def task_registry() -> dict[str, Task]:
    """All tasks by name, in the official order."""
    return {name: _task(name, raw) for name, raw in raw_registry()["tasks"].items()}


TASKS: list[str] = list(raw_registry()["tasks"])


def get_task(name: str) -> Task:
    try:
        return task_registry()[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task '{name}'; run 'totalseg_info --list-tasks' to see all tasks") from None


def list_tasks() -> list[str]:
    return list(TASKS)


def task_modality(task: str) -> str:
    return get_task(task).modality


def requires_license(task: str) -> bool:
    return get_task(task).license_required


def get_task_classes(task: str) -> dict[int, str]:
    return dict(get_task(task).class_map)


def extra_class_map(name: str) -> dict[int, str]:
    """Class maps that belong to no selectable task (e.g. ``total_v1`` for ``--v1_order``)."""
    return _int_keys(raw_registry()["extra_class_maps"][name])


@dataclass(frozen=True)
class Dataset:
    """Where the weights of one dataset id live and come from."""

    key: str  # the dataset id as text ("291", "body_stats_xgb")
    folder: str  # path relative to the weights dir
    url: str | None  # public zip URL (None: licensed or not downloadable)
    license_task: str | None  # task name sent to the license server

    @property
    def downloadable(self) -> bool:
        return self.url is not None or self.license_task is not None


def get_dataset(dataset_id: int | str) -> Dataset:
    raw = raw_registry()["datasets"].get(str(dataset_id))
    if raw is None:
        raise OptionError(f"unknown dataset id {dataset_id}")
    return Dataset(str(dataset_id), raw["folder"], raw.get("url"), raw.get("license_task"))


def all_dataset_ids() -> list[str]:
    return list(raw_registry()["datasets"])


def license_server_url() -> str:
    return raw_registry()["license_server"]


def download_task_to_ids() -> dict[str, list[int | str]]:
    return dict(raw_registry()["download_task_to_ids"])


# the rough crop models are modes of ordinary tasks
ROUGH_KIND_TO_MODE = {"ct_default": ("total", "fastest"), "ct_robust": ("total", "fast"),
                      "mr_always": ("total_mr", "fast"), "body": ("body", "fast")}


def model_parts(task: Task, mode: Mode, roi_subset: list[str] | None) -> list[Part]:
    """The models a mode runs, in order (with a roi_subset only those holding one of its classes)."""
    if mode.parts:
        parts = list(mode.parts)
        if roi_subset:
            wanted = set(roi_subset)
            parts = [p for p in parts if wanted & set(p.class_map.values())]
        return parts
    # single model: its labels are already the task's labels
    return [Part(mode.dataset_ids[0], dict(task.class_map))]


def rough_crop_model(kind: str) -> dict:
    """The rough models used for cropping: ``ct_default``, ``ct_robust``, ``mr_always``, ``body``."""
    return dict(raw_registry()["rough_crop_models"][kind])


def format_tasks_table() -> str:
    """The task table of ``--list-tasks`` / ``totalseg_info``."""
    rows = [(name, t.modality, "yes" if t.license_required else "no", str(len(t.class_map)))
            for name, t in task_registry().items()]
    header = ("TASK", "MODALITY", "LICENSE", "CLASSES")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    out.append("")
    out.append(f"{len(rows)} tasks. Tasks with LICENSE 'yes' need a license number: {ACADEMIC_LICENSE_URL}")
    return "\n".join(out)


def format_classes_table(task: str) -> str:
    t = get_task(task)
    lic = "license required" if t.license_required else "open license"
    out = [f"Task '{task}'  [{t.modality}, {lic}, {len(t.class_map)} classes]"]
    out += [f"{idx:>4}  {name}" for idx, name in t.class_map.items()]
    return "\n".join(out)
