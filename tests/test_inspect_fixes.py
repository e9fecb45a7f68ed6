"""Tests of inspect on checkpoints with several weight sets, and cast rows."""

from __future__ import annotations

from zooload.loading import LoadReport
from zooload.report import render_report


def test_render_report_collapses_cast_layer_indices() -> None:
    cast = {f"layers.{i}.weight": ("float16", "float32") for i in range(12)}
    cast["head.bias"] = ("float64", "float32")
    report = LoadReport(loaded=tuple(cast), cast=cast)

    lines = render_report(report).splitlines()

    assert lines[-2:] == [
        "cast       13  layers.{0..11}.weight: float16 -> float32",
        "               head.bias: float64 -> float32",
    ]
