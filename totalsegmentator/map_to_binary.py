"""Official import path: ``class_map[task] -> {label id: class name}`` for every task."""
from __future__ import annotations

from .registry import extra_class_map, task_registry

class_map: dict[str, dict[int, str]] = {name: dict(t.class_map) for name, t in task_registry().items()}
class_map["total_v1"] = extra_class_map("total_v1")
