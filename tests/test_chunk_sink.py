"""The pipelined sink: order, digest, failures and flushing on the way out."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from zooload import partials
from zooload.fanout import MAX_PENDING_BYTES
from zooload.partials import ChunkSink


def test_chunk_sink_writes_and_hashes_blocks_in_order(tmp_path: Path) -> None:
    chunks = [bytes([i]) * (MAX_PENDING_BYTES // 3 + i) for i in range(8)]
    path = tmp_path / "partial"
    sink = ChunkSink(path.open("wb"), hashlib.sha256(), 0)

    with sink:
        for chunk in chunks:
            sink.write(chunk)
        digest = sink.finish()

    expected = b"".join(chunks)
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert sink.size == len(expected)


def _interrupted_after(path: Path, chunks: list[bytes]) -> None:
    with ChunkSink(path.open("wb"), hashlib.sha256(), 0) as sink:
        for chunk in chunks:
            sink.write(chunk)
        raise KeyboardInterrupt


def test_chunk_sink_leaving_early_keeps_every_received_byte(tmp_path: Path) -> None:
    path = tmp_path / "partial"

    with pytest.raises(KeyboardInterrupt):
        _interrupted_after(path, [b"abc", b"def"])

    assert path.read_bytes() == b"abcdef"


class _FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(28, "No space left on device")


def _write_all(sink: ChunkSink, chunks: list[bytes]) -> str:
    with sink:
        for chunk in chunks:
            sink.write(chunk)
        return sink.finish()


def test_chunk_sink_raises_the_writer_failure() -> None:
    sink = ChunkSink(_FullDisk(), hashlib.sha256(), 0)

    with pytest.raises(OSError, match="No space"):
        _write_all(sink, [b"x" * 1024] * 3)


def test_chunk_sink_flushes_to_disk_as_the_bytes_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed: list[int] = []
    path = tmp_path / "partial"

    def record(descriptor: int) -> None:
        # The file's size on disk when the writer asks for a flush.
        flushed.append(os.fstat(descriptor).st_size)

    monkeypatch.setattr(partials, "SYNC_EVERY_BYTES", 1000)
    monkeypatch.setattr(partials, "_flush_data", record)
    with ChunkSink(path.open("wb"), hashlib.sha256(), 0) as sink:
        for _ in range(5):
            sink.write(b"z" * 600)
        sink.finish()

    assert flushed == [1200, 2400]
    assert path.read_bytes() == b"z" * 3000


def test_chunk_sink_reports_a_failed_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(partials, "SYNC_EVERY_BYTES", 10)
    monkeypatch.setattr(partials, "_flush_data", fail)
    sink = ChunkSink((tmp_path / "partial").open("wb"), hashlib.sha256(), 0)

    with pytest.raises(OSError, match="Input/output error"):
        _write_all(sink, [b"x" * 20] * 3)
