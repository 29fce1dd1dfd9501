"""Regenerate ``totalsegmentator/resources/tasks.json`` from the fact sheet in ``../shared/spec``.

The fact sheet describes the official tool's behaviour in a verbose, observation-oriented form. Our
registry keeps only what the code reads, in a compact declarative shape: one entry per task, one
entry per dataset id. Run ``python tools/build_registry.py [SPEC_JSON]`` after the fact sheet changes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT.parent / "shared" / "spec" / "tasks.json"
OUT = ROOT / "totalsegmentator" / "resources" / "tasks.json"

# Rules the fact sheet gives in prose (formats.md section 8), written here as registry fields.
TASK_EXTRAS = {
    "body": {"postprocessing": ["body"], "derived_masks": True},
    "vertebrae_pp": {"postprocessing": ["vertebrae_pp"]},
    "vertebrae_pp_refined": {"postprocessing": ["vertebrae_pp"],
                             "label_map_task": "vertebrae_pp",
                             "refine": {"task": "vertebrae_body", "keep_label": 1, "dilation_mm": 2.0}},
    "total": {"v1_order": "total_v1"},
}


def convert_crop(crop: dict | None) -> dict | None:
    if not crop:
        return None
    classes = crop["crop_to_classes"]
    if isinstance(classes, str):  # the official "test" task stores a bare string
        classes = [classes]
    out = {
        "classes": classes,
        "model": crop["crop_model_task"],
        "margin_mm": crop["configured_crop_addon"],
        "robust": bool(crop.get("robust_crop_forced_by_task")),
    }
    return out


def convert_mode(mode: dict, part_maps: dict | None) -> dict:
    out = {
        "datasets": mode["dataset_ids"],
        "trainer": mode["trainer"],
        "plans": mode["plans"],
        "configuration": mode["configuration"],
        "folds": mode["folds"],
        "spacing": mode["target_spacing_xyz_mm"],
        "step_size": mode["tile_step_size"],
    }
    if mode.get("plans_when_model_size_small"):
        out["plans_small"] = mode["plans_when_model_size_small"]
    crop = convert_crop(mode.get("crop"))
    if crop:
        out["crop"] = crop
    if mode.get("remove_outside"):
        out["remove_outside"] = {"classes": mode["remove_outside"],
                                 "dilation_mm": mode["remove_outside_dilation_mm"]}
    if mode.get("parts"):
        out["parts"] = [{"dataset": p["dataset_id"], "class_map": p["class_map"]} for p in mode["parts"]]
    return out


def convert_task(name: str, task: dict) -> dict:
    modes = task["modes"]
    out: dict = {
        "modality": task["modality"],
        "license_required": task["license_required"],
        "fast_disallowed": task["fast_disallowed"],
        "roi_subset": task["roi_subset_supported"],
        "body_seg_ignored": task["body_seg_option_ignored"],
        "class_map": task["class_map"],
    }
    if task.get("auxiliary_labels_removed_after_prediction"):
        out["auxiliary_labels"] = task["auxiliary_labels_removed_after_prediction"]
    if task.get("info_message_printed"):
        out["info_message"] = ("This model is only suitable for time-of-flight MR angiography images "
                               "(TOF-MRA); results on other images are meaningless.")
    out.update(TASK_EXTRAS.get(name, {}))
    if task.get("download_weights_ids") is not None:
        out["download_ids"] = task["download_weights_ids"]
    out["preview_roi_groups"] = task.get("preview_roi_groups") or []
    out["modes"] = {}
    for mode_name, mode in modes.items():
        if mode.get("defined_in_config") is False:
            out["modes"][mode_name] = {"same_as": mode["falls_back_to"]}
            continue
        out["modes"][mode_name] = convert_mode(mode, None)
    return out


def main(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    datasets = {}
    for key, w in spec["weights"]["by_dataset_id"].items():
        entry = {"folder": w["local_path"]}
        if w["source"] == "github_release":
            entry["url"] = w["url"]
        elif w["source"] == "license_server":
            entry["license_task"] = w["license_server_task_name"]
        else:
            entry["url"] = None
        datasets[key] = entry
    registry = {
        "_about": "Task registry of TotalSegmentator-compatible tasks. Facts from the official 2.18.0 "
                  "release; one entry per task. Spacing is x,y,z in mm after RAS reorientation; crop "
                  "margins in mm.",
        "github_release_url_pattern": spec["weights"]["github_release_url_pattern"],
        "license_server": spec["weights"]["license_server_endpoint"],
        "datasets": datasets,
        "rough_crop_models": {k: v for k, v in spec["rough_crop_models"].items() if isinstance(v, dict)},
        "extra_class_maps": {k: v["class_map"] for k, v in spec["extra_class_maps"].items()
                             if isinstance(v, dict) and "class_map" in v},
        "download_task_to_ids": spec["download_weights_task_to_ids"],
        "tasks": {name: convert_task(name, t) for name, t in spec["tasks"].items()},
    }
    for v in registry["rough_crop_models"].values():
        v.pop("used_when", None)
    OUT.write_text(json.dumps(registry, indent=1) + "\n")
    print(f"wrote {OUT} ({len(registry['tasks'])} tasks, {len(datasets)} datasets)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SPEC)
