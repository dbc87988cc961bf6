"""The number grammar every setting and flag is read with: ASCII digits, finite, no surprises
from Python's int() and float() (which take `١٢`, `1_0`, `nan`, `infinity`)."""

from __future__ import annotations

import pytest

from proxy.core.numbers import decimal, integer


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("8080", 8080), ("-5", -5), ("+5", 5), ("-0", 0), ("007", 7)]
)
def test_integers_in_ascii_digits_are_read(text: str, value: int) -> None:
    assert integer(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\u0661\u0662",
        "\u06630",
        "\u00b2",
        "1_0",
        "0x10",
        "1.0",
        "1e3",
        "nan",
        "inf",
        "+",
        "--1",
        "9" * 31,
    ],
)
def test_anything_else_is_not_an_integer(text: str) -> None:
    with pytest.raises(ValueError):
        integer(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0.0), ("1.5", 1.5), (".5", 0.5), ("5.", 5.0), ("2e3", 2000.0), ("1E-2", 0.01)],
)
def test_decimals_in_ascii_digits_are_read(text: str, value: float) -> None:
    assert decimal(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "infinity",
        "1e400",
        "-1e400",
        "\u0661\u0662",
        "1_0.5",
        "0x1p3",
        "",
        ".",
    ],
)
def test_nan_infinities_and_foreign_digits_are_not_decimals(text: str) -> None:
    with pytest.raises(ValueError):
        decimal(text)


def test_minus_zero_is_zero() -> None:
    assert str(decimal("-0")) == "0.0"
