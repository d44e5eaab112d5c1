"""Wording shared by lynx's warnings and errors."""

from __future__ import annotations

from typing import Sequence


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names, comma-separated, and " ..." where there are more: a long list must not flood a log."""
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")
