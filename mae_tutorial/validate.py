"""Checks of the values users pass in: one rule and one message for every settings object.

`MAEConfig`, `TrainSettings` and the evaluation functions take numbers, flags and names from
users, and check each here before anything is allocated. A number must be a real number (not a
bool, although `True` is an int in Python) and finite (NaN compares false with everything, so a
bare `value < low` would let it through). Errors name the field, the value with its type, and
what was expected, for example `epochs must be an integer >= 1, got 0.5 (float)`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Collection
from typing import Any, NoReturn


def _bounds(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """The allowed range in words: ">= 1", "> 0", or an interval such as "(0, 1]"."""
    if math.isinf(high):
        return f"{'>' if low_open else '>='} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise `ValueError` unless `value` is a finite number (an int if `integer`) within bounds.

    Args:
        name: the field or argument, as the user wrote it.
        value: what the user gave.
        low, high: the bounds, included unless `low_open` / `high_open`.
        integer: accept ints only (not bools, not floats such as 2.0).
    """
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    what = "an integer" if integer else "a finite number"
    typed = not isinstance(value, bool) and isinstance(value, kinds)
    inside = typed and math.isfinite(value)
    inside = inside and (value > low if low_open else value >= low)
    inside = inside and (value < high if high_open else value <= high)
    if not inside:
        raise ValueError(
            f"{name} must be {what} {_bounds(low, high, low_open, high_open)}, "
            f"got {value!r} ({type(value).__name__})"
        )


def check_flag(name: str, value: Any) -> None:
    """Raise `ValueError` unless `value` is a real bool (the string 'no' would count as True)."""
    if not isinstance(value, bool):
        raise ValueError(
            f"{name} must be True or False (a bool), got {value!r} ({type(value).__name__})"
        )


def check_choice(name: str, value: Any, allowed: Collection[Any]) -> None:
    """Raise `ValueError` unless `value` is one of `allowed`."""
    if not any(value == choice and type(value) is type(choice) for choice in allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and do not exit the process:
    a `ValueError` that the command lines (`python -m mae_tutorial`, `...pretrained`) report."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(f"{message} (see {self.prog} --help)")


def report_error(prog: str, err: BaseException, code: int) -> int:
    """Report `err` on one line of stderr (no traceback, no chained causes); return `code`."""
    print(f"{prog}: error: {' '.join(str(err).split()) or type(err).__name__}", file=sys.stderr)
    return code
