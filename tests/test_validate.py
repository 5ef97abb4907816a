"""Tests for mae_tutorial.validate: every settings object checks numbers, flags and names alike."""

from __future__ import annotations

import math

import pytest

from mae_tutorial.validate import check_choice, check_flag, check_number


@pytest.mark.parametrize("value", [1, 2.5, 10])
def test_numbers_inside_pass(value: float) -> None:
    check_number("x", value, 1, 10)


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (math.nan, {}, r"x must be a finite number >= 0, got nan \(float\)"),  # NaN < 0 is False
        (math.inf, {}, r"x must be a finite number >= 0, got inf"),
        (True, {}, r"got True \(bool\)"),  # a bool is an int in Python
        ("3", {}, r"got '3' \(str\)"),
        (2.0, {"integer": True}, r"x must be an integer >= 0, got 2.0 \(float\)"),
        (0, {"low_open": True}, r"x must be a finite number > 0, got 0"),
        (1, {"high": 1, "high_open": True}, r"x must be a finite number in \[0, 1\), got 1"),
        (-1, {}, r"x must be a finite number >= 0, got -1"),
    ],
)
def test_bad_numbers_name_the_value_and_the_range(
    value: object, kwargs: dict, expected: str
) -> None:
    with pytest.raises(ValueError, match=expected):
        check_number("x", value, 0, **kwargs)


def test_flags_must_be_real_bools() -> None:
    check_flag("f", False)
    with pytest.raises(ValueError, match=r"f must be True or False \(a bool\), got 'no' \(str\)"):
        check_flag("f", "no")


def test_choices_compare_type_and_value() -> None:
    check_choice("c", "mean", ("mean", "cls"))
    with pytest.raises(ValueError, match=r"c must be one of \('mean', 'cls'\), got None"):
        check_choice("c", None, ("mean", "cls"))
    with pytest.raises(ValueError, match="got 1"):
        check_choice("c", 1, (True, False))  # 1 == True, but 1 is not a flag
