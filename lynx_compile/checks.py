"""Checks of user-given settings, with errors that name the setting: options at torch.compile time (`LynxConfig`,
`Method`) and the public functions' arguments (`calibrate`, `fit_lora`, `compile_repeated_blocks`, ...), made before
any model call or compile work.

Python's bool is an int and NaN compares False with everything, so plain `isinstance`/`<` checks let `n=True` and
`min_speedup=nan` through (the latter would make every speed comparison pass); these helpers refuse both.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch


class OptionError(ValueError):
    """A lynx option or argument with a wrong type or value; the message names it."""


def _fail(name: str, expected: str, value: Any) -> OptionError:
    return OptionError(f"lynx option {name!r} must be {expected}, got {value!r} ({type(value).__name__})")


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    expected = "an int" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise _fail(name, expected, value)
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value)
    return value


def is_finite_number(value: Any) -> bool:
    """A finite real, bools excepted; an int only as far as a float holds it (lynx computes with it as a float)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= sys.float_info.max
    return isinstance(value, float) and math.isfinite(value)


def check_module(caller: str, model: Any) -> None:
    """`model` an nn.Module, or what torch.compile returned for one."""
    if not isinstance(getattr(model, "_orig_mod", model), torch.nn.Module):
        raise TypeError(f"{caller} takes the model as an nn.Module (or what torch.compile returned for it), got "
                        f"{type(model).__name__}")  # fmt: skip


def check_progress(progress: Any, progress_bar: Any) -> None:
    if progress is not None and not callable(progress):
        raise _fail("progress", "a callable taking a line of text (e.g. print), or None", progress)
    check_bool("progress_bar", progress_bar)


def names_of(value: Any) -> tuple:
    """Names given as a list, tuple or other iterable, or as one string (one name, not its letters)."""
    return (value,) if isinstance(value, str) else tuple(value)


def check_names(name: str, value: Any, expected: str) -> tuple[str, ...]:
    """An option of one name or a list or tuple of them (`names_of`), each a str."""
    if not isinstance(value, (str, list, tuple)) or not all(isinstance(item, str) for item in names_of(value)):
        raise OptionError(f"lynx option {name!r} must be {expected}, got {value!r}")
    return names_of(value)


def check_number(name: str, value: Any, *, minimum: float = -math.inf, above: bool = False) -> float:
    """A finite real number ≥ `minimum` (> it with `above`)."""
    expected = f"a finite number {'>' if above else '>='} {minimum}"
    if not is_finite_number(value):
        raise _fail(name, expected, value)
    if value < minimum or (above and value == minimum):
        raise _fail(name, expected, value)
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(name, f"one of {choices}", value)
    return value
