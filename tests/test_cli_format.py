"""The command line's human sizes, counts and durations, and its tables."""

from __future__ import annotations

import pytest

from zooload.cli_format import (
    field_lines,
    human_count,
    human_seconds,
    human_size,
    parse_size,
    plain_table,
)
from zooload.errors import ConfigError


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (1_234_567, "1.2 MB"),
        (1_200_000_000, "1.2 GB"),
        (3 * 10**12, "3.0 TB"),
        (5 * 10**15, "5.0 PB"),
        (7 * 10**18, "7000.0 PB"),
    ],
)
def test_human_size_uses_decimal_units(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1_152, "1.2 K"),
        (23_500_000, "23.5 M"),
        (7_000_000_000, "7.0 B"),
        (2 * 10**15, "2000.0 T"),
    ],
)
def test_human_count_uses_thousands(count: int, text: str) -> None:
    assert human_count(count) == text


def test_human_seconds_switches_to_seconds_at_one() -> None:
    assert (human_seconds(0.0004), human_seconds(0.999), human_seconds(12)) == (
        "0 ms",
        "999 ms",
        "12.00 s",
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10GB", 10 * 10**9),
        ("10 gb", 10 * 10**9),
        ("500M", 500 * 10**6),
        ("1.5GiB", int(1.5 * 2**30)),
        ("2 KiB", 2048),
        (".5kB", 500),
        ("7", 7),
        ("7B", 7),
        ("1TiB", 2**40),
    ],
)
def test_parse_size_reads_decimal_and_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "ten GB", "10 XB", "-1GB", "1e3"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ConfigError, match="is not a size; write it like 10GB"):
        parse_size(text)


def test_plain_table_aligns_columns_and_pads_no_last_text_column() -> None:
    lines = plain_table(
        ["name", "size", "urls"],
        [["a", "1 B", "http://x"], ["bbbb", "10.0 kB", ""]],
        right={1},
    )
    assert lines == [
        "name     size  urls",
        "a         1 B  http://x",
        "bbbb  10.0 kB",
    ]


def test_field_lines_align_values_and_indent_continuations() -> None:
    assert field_lines([("a", "1"), ("long", "x\ny"), ("empty", "")]) == [
        "a      1",
        "long   x",
        "       y",
        "empty",
    ]
