"""Wording shared by lynx's warnings and errors."""

from __future__ import annotations

import threading
from typing import Hashable, Sequence


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names, comma-separated, and " ..." where there are more: a long list must not flood a log."""
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


class Once:
    """The keys a warning was given for, so that it is given once a process per key (a model, a glob, a device),
    not once per graph compiled. Compiles may run in several threads at once: a key is claimed under a lock."""

    def __init__(self) -> None:
        self._given: set[Hashable] = set()
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._given

    def first(self, key: Hashable) -> bool:
        """Whether the warning for `key` is still to be given; it counts as given from now on."""
        with self._lock:
            if key in self._given:
                return False
            self._given.add(key)
            return True
