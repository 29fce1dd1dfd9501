"""A process-wide interpreter setting that runs change while they need it, shared by overlapping runs."""
from __future__ import annotations

import threading
from typing import Any, Callable


class SharedSetting:
    """Changed by the first user (``change()`` returns what ``restore`` needs), restored by the last one to leave.

    Users may enter on one thread and leave on another (a background thread ending what its starter began)."""

    def __init__(self, change: Callable[[], Any], restore: Callable[[Any], None]) -> None:
        self._change, self._restore = change, restore
        self._lock = threading.Lock()
        self._users = 0
        self.saved: Any = None  # what the first user's change returned

    def enter(self) -> None:
        with self._lock:
            if self._users == 0:
                self.saved = self._change()
            self._users += 1

    def leave(self) -> int:
        """End one use; returns how many users remain."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._restore(self.saved)
            return self._users
