"""Formatting for the command line: human sizes and counts, tables, JSON.

Tables go through rich when stdout is a terminal (they fit its width), and
are plain aligned text otherwise, so that pipes and files get stable output.
Nothing here reads or writes anything but stdout.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from zooload.errors import ConfigError

Row = Sequence[str]

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")
_COUNT_UNITS = ("", "K", "M", "B", "T")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_GAP = "  "


def human_size(size: int) -> str:
    """Render a byte count with decimal units: ``1.2 GB``.

    Examples
    --------
    >>> human_size(512), human_size(1_234_567), human_size(10**9)
    ('512 B', '1.2 MB', '1.0 GB')
    """
    value = float(size)
    for unit in _DECIMAL_UNITS[:-1]:
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_DECIMAL_UNITS[-1]}"


def human_count(count: int) -> str:
    """Render a parameter count: ``23.5 M``; counts under 1000 as they are.

    Examples
    --------
    >>> human_count(999), human_count(309_633), human_count(23_500_000)
    ('999', '309.6 K', '23.5 M')
    """
    if abs(count) < 1000:
        return str(count)
    value = float(count)
    unit = _COUNT_UNITS[0]
    for unit in _COUNT_UNITS[1:]:  # noqa: B007 - the unit reached is the answer
        value /= 1000
        if abs(value) < 1000:
            break
    return f"{value:.1f} {unit}"


def human_seconds(seconds: float) -> str:
    """Render a duration: milliseconds below a second, seconds above.

    Examples
    --------
    >>> human_seconds(0.0812), human_seconds(2.345)
    ('81 ms', '2.35 s')
    """
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def parse_size(text: str) -> int:
    """Read a size such as ``10GB``, ``500 MB``, ``1.5GiB`` or ``1024``.

    Decimal units (``kB``, ``MB``, ``GB``, ``TB``, or just ``K``, ``M``,
    ``G``, ``T``) are powers of 1000, binary ones (``KiB`` ... ``TiB``)
    powers of 1024; case does not matter.

    Raises
    ------
    ConfigError
        When the text is not a size.

    Examples
    --------
    >>> parse_size("10GB"), parse_size("1.5 KiB"), parse_size("300")
    (10000000000, 1536, 300)
    """
    match = _SIZE.match(text)
    factor = _SIZE_FACTORS.get(match.group(2).lower()) if match else None
    if match is None or factor is None:
        message = f"{text!r} is not a size; write it like 10GB, 500MB or 2GiB."
        raise ConfigError(message)
    return int(float(match.group(1)) * factor)


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal (tables are drawn with rich then)."""
    return sys.stdout.isatty()


def print_table(
    columns: Row, rows: Iterable[Row], *, right: Iterable[int] = ()
) -> None:
    """Print a table: rich on a terminal, plain aligned columns otherwise.

    ``right`` holds the indices of right-aligned (numeric) columns.
    """
    cells = [list(row) for row in rows]
    aligned_right = set(right)
    if stdout_is_terminal():
        _print_rich_table(columns, cells, aligned_right)
        return
    for line in plain_table(columns, cells, right=aligned_right):
        click.echo(line)


def plain_table(columns: Row, rows: Sequence[Row], *, right: set[int]) -> list[str]:
    """Aligned text lines of a table; the last column is not padded.

    Examples
    --------
    >>> for line in plain_table(["name", "bytes"], [["w", "12 B"]], right={1}):
    ...     print(line)
    name  bytes
    w      12 B
    """
    table = [columns, *rows]
    widths = [max(len(cell) for cell in column) for column in zip(*table, strict=True)]
    lines = []
    for row in table:
        cells = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(_GAP.join(cells).rstrip())
    return lines


def _print_rich_table(columns: Row, rows: list[list[str]], right: set[int]) -> None:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for index, column in enumerate(columns):
        table.add_column(column, justify="right" if index in right else "left")
    for row in rows:
        table.add_row(*row)
    Console(file=sys.stdout).print(table)


def print_fields(fields: Iterable[tuple[str, str]]) -> None:
    """Print ``label  value`` lines with aligned values; continuation lines
    of a multi-line value are indented under it."""
    for line in field_lines(list(fields)):
        click.echo(line)


def field_lines(fields: Sequence[tuple[str, str]]) -> list[str]:
    """Aligned ``label  value`` lines.

    Examples
    --------
    >>> for line in field_lines([("size", "1.2 GB"), ("urls", "a\\nb")]):
    ...     print(line)
    size  1.2 GB
    urls  a
          b
    """
    width = max((len(label) for label, _ in fields), default=0)
    lines = []
    for label, value in fields:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{label:<{width}}{_GAP}{first}".rstrip())
        lines.extend(" " * (width + len(_GAP)) + line for line in rest)
    return lines


def listing(title: str, entries: Sequence[str], *, count: int | None = None) -> str:
    """One section of a report: ``title  count  first`` and the rest below.

    Examples
    --------
    >>> print(listing("only in a", ["x.w", "y.w"]))
    only in a     2  x.w
                     y.w
    """
    number = len(entries) if count is None else count
    lines = []
    for position, entry in enumerate(entries):
        label = f"{title:<10} {number:>4}" if position == 0 else " " * 15
        lines.append(f"{label}  {entry}")
    return "\n".join(lines)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, default=str))
