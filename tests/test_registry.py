"""Invariants of the declarative task registry, and a comparison of it with the fact sheet."""
from __future__ import annotations

import json

import pytest

from totalsegmentator.errors import OptionError, UnknownTaskError
from totalsegmentator.map_to_binary import class_map
from totalsegmentator.registry import (TASKS, all_dataset_ids, download_task_to_ids, extra_class_map, get_dataset,
                                       get_task, rough_crop_model, task_registry)

ROUGH_TASKS = {"total", "total_mr", "body"}
NOT_DOWNLOADABLE = {"955", "956", "957", "200", "201"}  # official placeholders ("TODO" release)


def test_53_tasks_in_the_official_order():
    assert len(TASKS) == 53
    assert TASKS[:3] == ["total", "total_v3", "body"]
    assert set(class_map) == set(TASKS) | {"total_v1"}


@pytest.mark.parametrize("name", TASKS)
def test_task_invariants(name):
    task = get_task(name)
    names = list(task.class_map.values())
    assert len(names) == len(set(names)), "class names must be unique"
    assert list(task.class_map) == sorted(task.class_map)
    assert task.modality in {"CT", "MR"}
    assert "default" in task.modes
    for mode in task.modes.values():
        assert mode.dataset_ids
        if mode.parts:
            part_names = [n for part in mode.parts for n in part.class_map.values()]
            assert sorted(part_names) == sorted(names), "parts must cover the classes exactly once"
            assert [p.dataset_id for p in mode.parts] == list(mode.dataset_ids)
        if mode.crop is not None:
            crop_task = get_task(mode.crop.model)
            missing = set(mode.crop.classes) - set(crop_task.class_map.values())
            if name != "test":  # the official unit-test hook asks for 'body' from the total model
                assert not missing, f"crop classes {missing} not in task {crop_task.name}"
        if mode.remove_outside is not None:
            assert set(mode.remove_outside.classes) <= set(get_task("total").class_map.values())
        assert mode.step_size == (0.8 if name in {"total", "total_v3", "total_mr"} else 0.5)
    for group in task.preview_roi_groups if name != "test" else ():
        assert set(group) <= set(names) | set(task.auxiliary_labels.values())


def test_every_dataset_has_a_folder_and_a_download_route():
    used = {str(ds) for t in task_registry().values() for m in t.modes.values() for ds in m.dataset_ids}
    used |= {str(rough_crop_model(k)["dataset_id"]) for k in ("ct_default", "ct_robust", "mr_always", "body")}
    known = set(all_dataset_ids())
    assert used - known == {"517"}  # the official 'test' task has no weights
    unreachable = set()
    for key in known:
        dataset = get_dataset(key)
        assert dataset.folder
        if not dataset.downloadable:
            unreachable.add(key)
        if dataset.url:
            assert dataset.url.startswith("https://github.com/wasserth/TotalSegmentator/releases/download/")
            assert dataset.url.endswith(f"/{dataset.folder}.zip")
    assert unreachable == NOT_DOWNLOADABLE


def test_licensed_tasks_use_the_license_server():
    for task in task_registry().values():
        if task.name == "test":
            continue
        routes = {get_dataset(ds).license_task is not None for m in task.modes.values() for ds in m.dataset_ids}
        assert routes == {task.license_required}, task.name


def test_download_ids_are_known():
    known = set(all_dataset_ids())
    for name, ids in download_task_to_ids().items():
        assert {str(i) for i in ids} <= known, name
    assert download_task_to_ids()["total"] == [291, 292, 293, 294, 295, 298]


def test_mode_selection_and_fallbacks():
    total = get_task("total")
    assert total.mode().dataset_ids == (291, 292, 293, 294, 295)
    assert total.mode(fast=True).dataset_ids == (297,)
    assert total.mode(fastest=True).dataset_ids == (298,)
    assert total.mode(fast=True, fastest=True).dataset_ids == (297,)  # fast wins
    assert get_task("body").mode(fastest=True).dataset_ids == (300,)  # no fastest: falls back to fast
    assert get_task("vertebrae_mr").mode(fast=True).name == "default"  # silently ignored
    with pytest.raises(OptionError, match="--fast"):
        get_task("teeth").mode(fast=True)
    assert get_task("teeth").mode(fastest=True).name == "default"
    with pytest.raises(UnknownTaskError, match="totalseg_info"):
        get_task("no_such_task")


def test_v1_map():
    v1 = extra_class_map("total_v1")
    assert len(v1) == 104 and v1[7] == "aorta" and v1[104] == "urinary_bladder"


@pytest.fixture(scope="module")
def spec(shared_data):
    path = shared_data.parent / "spec" / "tasks.json"
    if not path.exists():
        pytest.skip("../shared/spec/tasks.json is not available")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", ["total", "total_mr", "body", "teeth", "headneck_muscles", "ventricle_parts",
                                  "appendicular_bones", "liver_segments_mr"])
def test_class_maps_match_the_fact_sheet(spec, name):
    raw = spec["tasks"][name]
    assert {int(k): v for k, v in raw["class_map"].items()} == get_task(name).class_map
    for mode_name, mode in raw["modes"].items():
        ours = get_task(name).mode(fast=mode_name == "fast", fastest=mode_name == "fastest")
        assert list(ours.dataset_ids) == mode["dataset_ids"]
        assert ours.trainer == mode["trainer"] and ours.configuration == mode["configuration"]
        assert (list(ours.spacing) if ours.spacing else None) == mode["target_spacing_xyz_mm"]
        for part, raw_part in zip(ours.parts, mode.get("parts", [])):
            assert part.class_map == {int(k): v for k, v in raw_part["class_map"].items()}


def test_every_weights_entry_matches_the_fact_sheet(spec):
    for key, raw in spec["weights"]["by_dataset_id"].items():
        ours = get_dataset(key)
        assert ours.folder == raw["local_path"]
        assert ours.url == (raw["url"] if raw["source"] == "github_release" else None)
