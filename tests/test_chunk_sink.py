"""The pipelined sink: order, digest, failures and flushing on the way out."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from zooload.partials import MAX_PENDING_BYTES, ChunkSink


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
