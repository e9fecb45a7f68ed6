"""The quickstart demo runs end to end and prints what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from zooload import demo


def test_demo_main_loads_silero_and_matches_the_publisher(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(["--cache-dir", str(tmp_path / "cache")]) == 0
    lines = capsys.readouterr().out.splitlines()
    fields = {line[:15].strip(): line[15:] for line in lines if len(line) > 15}
    assert fields["architecture"] == "silero-vad-16k -> SileroVad16k"
    assert fields["parameters"] == "309,633 (torch.float32)"
    assert fields["tensors"] == "15 loaded, 15 renamed, all matched: True"
    assert fields["example check"] == "passed, largest difference 0"
    assert "matches the publisher's TorchScript model bit for bit: True" in lines
    rows = [line.split() for line in lines if line.startswith("  t=")]
    assert len(rows) == 9
    assert all(row[3] == row[5] for row in rows)
    onset = next(row for row in rows if row[1] == "1.12")
    assert float(onset[3]) > 0.5
    assert max(float(row[3]) for row in rows if float(row[1]) < 1.0) < 0.2
    assert (tmp_path / "cache" / "trees").is_dir()
