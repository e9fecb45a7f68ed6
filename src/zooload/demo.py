"""The quickstart demo: pack real weights, serve them on loopback, load them.

``python -m zooload.demo`` (or ``make demo``) takes the weights of the Silero
VAD TorchScript model that the ``silero-vad`` package ships, packs them with
:func:`zooload.pack` into a ``.tar.gz`` (with the rename rules from the
publisher's names to :class:`~zooload.zoo.silero_vad.SileroVad16k` and example
inputs), serves the archive from an HTTP server on 127.0.0.1, loads it with
:func:`zooload.load_url` (pinned by sha256), and prints what was loaded, the
example check, and speech probabilities on a short synthetic signal next to
those of the publisher's TorchScript model.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.resources
import logging
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

import zooload
from zooload.formats.torchscript import load_program
from zooload.hashing import file_digest
from zooload.zoo.silero_vad import (
    CHUNK_SAMPLES,
    SAMPLE_RATE,
    TORCHSCRIPT_RENAMES,
    WINDOW_SAMPLES,
    initial_state,
    speech_probabilities,
)

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo and print its report on stdout; return the exit status.

    Examples
    --------
    >>> main  # doctest: +ELLIPSIS
    <function main at ...>
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="cache root (default: temp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    data = _silero_data()
    with tempfile.TemporaryDirectory(prefix="zooload-demo-") as scratch:
        folder = Path(scratch)
        archive = _pack_demo(data / "silero_vad.jit", folder / "vad-16k.tar.gz")
        cache_dir = args.cache_dir or folder / "cache"
        with _serve(folder) as base_url:
            url = f"{base_url}/{archive.name}#sha256={file_digest(archive)}"
            _report(url, cache_dir, data / "silero_vad.jit")
    return 0


def _silero_data() -> Path:
    try:
        root = importlib.resources.files("silero_vad") / "data"
    except ModuleNotFoundError as err:
        message = "the demo needs the silero-vad package: pip install 'zooload[demo]'"
        raise SystemExit(message) from err
    return Path(str(root))


def _pack_demo(torchscript: Path, dest: Path) -> Path:
    program = load_program(torchscript, map_location="cpu")
    weights = {
        name: tensor
        for name, tensor in program.state_dict().items()
        if name.startswith("_model.")
    }
    generator = torch.Generator().manual_seed(0)
    window = torch.randn(1, WINDOW_SAMPLES, generator=generator) * 0.1
    return zooload.pack(
        weights,
        dest,
        arch="silero-vad-16k",
        example_inputs=(window, initial_state()),
        rename=TORCHSCRIPT_RENAMES,
        metadata={
            "license": "MIT",
            "source": "silero-vad package, silero_vad/data/silero_vad.jit",
            "description": "Silero voice activity detector, 16 kHz",
        },
        name="silero-vad-16k",
    )


@contextmanager
def _serve(folder: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Keep the demo's output to the report."""


def _report(url: str, cache_dir: Path, torchscript: Path) -> None:
    started = time.perf_counter()
    result = zooload.load(url, cache_dir=cache_dir, progress=False)
    model = result.model
    first = time.perf_counter() - started
    started = time.perf_counter()
    zooload.load_url(url, cache_dir=cache_dir, progress=False)
    again = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    audio = _demo_signal()
    ours = speech_probabilities(model, audio)
    reference = _torchscript_probabilities(torchscript, audio)
    identical = bool(torch.equal(ours, reference))
    print(f"url            {url.split('#')[0]}")
    print(f"architecture   silero-vad-16k -> {type(model).__name__}")
    print(f"parameters     {parameters:,} ({next(model.parameters()).dtype})")
    if result.report is not None:
        print(
            f"tensors        {len(result.report.loaded)} loaded, "
            f"{len(result.report.renamed)} renamed, all matched: {result.report.ok}"
        )
    if result.example is not None:
        largest = result.example.largest_difference
        print(f"example check  passed, largest difference {largest:.3g}")
    timings = f"{first * 1000:.0f} ms (download), {again * 1000:.0f} ms (cached)"
    print(f"load time      {timings}")
    print(f"cached at      {result.path}")
    print(f"matches the publisher's TorchScript model bit for bit: {identical}")
    print("speech probability per 32 ms chunk (zooload model / TorchScript):")
    for index in range(0, len(ours), max(1, len(ours) // 8)):
        seconds = index * CHUNK_SAMPLES / SAMPLE_RATE
        print(f"  t={seconds:5.2f} s  {ours[index]:.4f}  /  {reference[index]:.4f}")


def _demo_signal() -> torch.Tensor:
    """About a second of quiet noise, then a second of a voiced, vowel-like buzz."""
    generator = torch.Generator().manual_seed(1)
    time_axis = torch.arange(62 * CHUNK_SAMPLES) / SAMPLE_RATE
    pitch = 140 * (1 + 0.05 * torch.sin(2 * torch.pi * 3 * time_axis))
    phase = 2 * torch.pi * torch.cumsum(pitch / SAMPLE_RATE, 0)
    harmonics = torch.stack([torch.sin(k * phase) / k for k in range(1, 12)]).sum(0)
    voiced = 0.3 * harmonics * (time_axis >= 1.0)
    noise = 0.003 * torch.randn(time_axis.shape, generator=generator)
    return (voiced + noise).float()


def _torchscript_probabilities(path: Path, audio: torch.Tensor) -> torch.Tensor:
    program = load_program(path, map_location="cpu")
    with torch.no_grad():
        chunks = torch.split(audio, CHUNK_SAMPLES)
        return torch.stack(
            [program(c.unsqueeze(0), SAMPLE_RATE).reshape(()) for c in chunks]
        )


if __name__ == "__main__":
    raise SystemExit(main())
