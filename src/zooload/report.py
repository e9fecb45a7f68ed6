"""Render a :class:`~zooload.loading.LoadReport` as a table for people.

Names that differ only by layer indices are collapsed (``layers.{0..11}.q``)
so that the report of a model with hundreds of tensors stays readable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from zooload.mapping import shared_prefixes

if TYPE_CHECKING:
    from zooload.loading import LoadReport

MAX_SUGGESTIONS = 5

_INDEX = re.compile(r"(?<=\.)\d+(?=\.)|^\d+(?=\.)")


def render_report(report: LoadReport) -> str:
    """Return the report as aligned text, one section per outcome.

    Examples
    --------
    >>> from zooload.loading import LoadReport
    >>> print(render_report(LoadReport(loaded=("a.0.w", "a.1.w"), missing=("b",))))
    loaded      2  a.{0..1}.w
    missing     1  b
    """
    rows = [
        ("loaded", collapse_names(report.loaded)),
        ("missing", collapse_names(report.missing)),
        ("unexpected", collapse_names(report.unexpected)),
        ("mismatched", _pairs(report.mismatched, "checkpoint", "model")),
        ("skipped", collapse_names(report.skipped)),
        ("renamed", collapse_renames(report.renamed)),
        ("cast", collapse_casts(report.cast)),
        ("prefix", [report.prefix] if report.prefix else []),
    ]
    counts = {
        "loaded": len(report.loaded),
        "missing": len(report.missing),
        "unexpected": len(report.unexpected),
        "mismatched": len(report.mismatched),
        "skipped": len(report.skipped),
        "renamed": len(report.renamed),
        "cast": len(report.cast),
        "prefix": 1,
    }
    lines = []
    for title, entries in rows:
        for position, entry in enumerate(entries):
            label = f"{title:<10} {counts[title]:>2}" if position == 0 else " " * 13
            lines.append(f"{label}  {entry}")
    return "\n".join(lines) if lines else "nothing to load"


def _pairs(
    mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]],
    left: str,
    right: str,
) -> list[str]:
    return [
        f"{name}: {left} {list(a)} vs {right} {list(b)}"
        for name, (a, b) in mismatched.items()
    ]


def collapse_names(names: Iterable[str]) -> list[str]:
    """Collapse names that differ only in one layer index into ranges.

    Examples
    --------
    >>> collapse_names(["h.0.w", "h.1.w", "h.2.w", "head.w"])
    ['h.{0..2}.w', 'head.w']
    >>> collapse_names(["h.0.w", "h.2.w"])
    ['h.{0,2}.w']
    """
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    for name in names:
        match = _INDEX.search(name)
        if match is None:
            key, index = name, -1
        else:
            key = name[: match.start()] + "{}" + name[match.end() :]
            index = int(match.group())
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(index)
    return [_render_group(key, groups[key]) for key in order]


def collapse_casts(cast: Mapping[str, tuple[str, str]]) -> list[str]:
    """Render ``name: old -> new`` lines, collapsing names cast alike by index.

    Examples
    --------
    >>> cast = {"h.0.w": ("float16", "float32"), "h.1.w": ("float16", "float32")}
    >>> collapse_casts(cast)
    ['h.{0..1}.w: float16 -> float32']
    """
    by_dtypes: dict[tuple[str, str], list[str]] = {}
    for name, dtypes in cast.items():
        by_dtypes.setdefault(dtypes, []).append(name)
    return [
        f"{name}: {old} -> {new}"
        for (old, new), names in by_dtypes.items()
        for name in collapse_names(names)
    ]


def collapse_renames(renamed: Mapping[str, str]) -> list[str]:
    """Render ``old -> new`` pairs, collapsing pairs that differ by one index.

    Examples
    --------
    >>> collapse_renames({"m.h.0.w": "h.0.w", "m.h.1.w": "h.1.w", "m.x": "x"})
    ['m.h.{0..1}.w -> h.{0..1}.w', 'm.x -> x']
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for old, new in renamed.items():
        old_match, new_match = _INDEX.search(old), _INDEX.search(new)
        same_index = (
            old_match is not None
            and new_match is not None
            and old_match.group() == new_match.group()
        )
        if old_match is None or new_match is None or not same_index:
            groups.setdefault((old, new), []).append(-1)
            continue
        key = (
            old[: old_match.start()] + "{}" + old[old_match.end() :],
            new[: new_match.start()] + "{}" + new[new_match.end() :],
        )
        groups.setdefault(key, []).append(int(new_match.group()))
    return [
        f"{_render_group(old, indices)} -> {_render_group(new, indices)}"
        for (old, new), indices in groups.items()
    ]


def _render_group(key: str, indices: list[int]) -> str:
    if indices == [-1]:
        return key
    if len(indices) == 1:
        return key.replace("{}", str(indices[0]), 1)
    ordered = sorted(indices)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        span = f"{ordered[0]}..{ordered[-1]}"
    else:
        span = ",".join(str(i) for i in ordered)
    return key.replace("{}", "{" + span + "}", 1)


def suggest_fixes(
    report: LoadReport,
    checkpoint: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
) -> str:
    """Say what would make a refused load fit, from the report's facts.

    For a missing name, the closest unexpected name of the same shape; the
    prefix all unexpected names share; the option for differing shapes.

    Examples
    --------
    >>> from zooload.loading import LoadReport
    >>> report = LoadReport(missing=("head.weight",), unexpected=("fc.weight",))
    >>> weights = {"fc.weight": torch.ones(2)}
    >>> print(suggest_fixes(report, weights, {"head.weight": torch.ones(2)}))
    ... # doctest: +NORMALIZE_WHITESPACE
    'head.weight' is missing and 'fc.weight' has its shape [2]:
    add the rename rule (r'^fc\\.weight$', 'head.weight').
    Map the names with rename rules, or load what fits with strict=False.
    """
    hints = [
        *_closest_names(report, checkpoint, model),
        *_shared_prefix_hint(report.unexpected, model),
    ]
    if report.mismatched:
        hints.append(
            "To keep the model's own tensors where shapes differ (a new "
            "classifier head), pass on_shape_mismatch='skip'."
        )
    if report.missing or report.unexpected:
        hints.append(
            "Map the names with rename rules, or load what fits with strict=False."
        )
    return "\n".join(hints)


def _closest_names(
    report: LoadReport,
    checkpoint: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
) -> list[str]:
    hints = []
    for name in report.missing[:MAX_SUGGESTIONS]:
        shape = model[name].shape
        same_shape = [u for u in report.unexpected if checkpoint[u].shape == shape]
        closest = difflib.get_close_matches(name, same_shape, n=1, cutoff=0.3)
        if closest:
            pattern = f"^{re.escape(closest[0])}$"
            hints.append(
                f"{name!r} is missing and {closest[0]!r} has its shape "
                f"{list(shape)}:\nadd the rename rule (r'{pattern}', {name!r})."
            )
    return hints


def _shared_prefix_hint(
    unexpected: Iterable[str], model: Mapping[str, torch.Tensor]
) -> list[str]:
    names = list(unexpected)
    prefixes = shared_prefixes(names) if len(names) > 1 else []
    if not prefixes:
        return []
    model_prefixes = shared_prefixes(list(model))
    theirs = (
        f", and every model name starts with {model_prefixes[-1]!r}"
        if model_prefixes
        else ""
    )
    pattern = "^" + re.escape(prefixes[-1])
    return [
        f"All {len(names)} unexpected names start with {prefixes[-1]!r}{theirs}: "
        f"rename them with a rule such as (r'{pattern}', ''), or pass "
        f"strip_prefix={prefixes[-1]!r} to load_into."
    ]
