"""zooload against its anchors, side by side, in one run: ``make bench``.

Run from the repository root:

    PYTHONPATH=src:tests python benchmarks/bench.py [--size MIB] [--runs N]

Four cases, each a median of ``--runs`` runs (at least 5) with min and max:

1. cold fetch of a ``--size`` file with sha256 from a loopback HTTP server
   (the tests' server, with Range support, in a process of its own):
   zooload vs ``torch.hub.download_url_to_file(hash_prefix=...)`` vs curl;
2. warm load of a model of 4096 x 4096 fp32 layers adding up to ``--size``,
   each run in a fresh process, seconds and peak RSS above the process's
   baseline: zooload ``load_url`` vs the usual path (construct,
   ``torch.load``, ``load_state_dict``) vs ``torch.hub`` vs the raw
   primitives (meta construction, ``torch.load(mmap=True)``, ``assign=True``);
3. per-call overhead of ``load_url`` on a pinned, cached 1 MB model vs a bare
   ``safetensors.torch.load_file`` + ``load_state_dict``, in process;
4. archive to ready model, into a fresh cache: ``.tar.gz``, ``.tar.zst``,
   ``.tar`` and ``.zip`` written by ``zooload.pack``, vs the bare weights
   file and vs the decoders alone; from a local file (4a) and over
   loopback HTTP with a pin (4b) and without (4c), and over a link paced to
   250 MB/s (4d), where a compressed tar is decoded while it downloads.

Prints one table. Figures are wall-clock; nothing here is a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

LAYER = 4096
MIB = 1 << 20
SERVER = """
import os, sys, threading, time
from pathlib import Path
import support.httpserver as served
served.CHUNK_SIZE = 4 << 20
rate = float(os.environ.get("BENCH_RATE", "0"))
if rate:
    whole = served._Handler._write_chunks

    def paced(handler, data):
        started = time.perf_counter()
        for offset in range(0, len(data), served.CHUNK_SIZE):
            whole(handler, data[offset : offset + served.CHUNK_SIZE])
            time.sleep(max(0.0, offset / rate - (time.perf_counter() - started)))

    served._Handler._write_chunks = paced
with served.LoopbackServer() as server:
    for name in sys.argv[1:]:
        path = Path(name)
        print(server.add("/" + path.name, path.read_bytes()), flush=True)
    threading.Event().wait()
"""


def stack(layers: int = 16) -> nn.Module:
    """``layers`` Linear(4096, 4096): 64 MiB of fp32 weights each."""
    return nn.Sequential(*(nn.Linear(LAYER, LAYER) for _ in range(layers)))


def tiny() -> nn.Module:
    """About 1 MB of weights."""
    return nn.Linear(512, 512)


Row = tuple[str, list[float], str]


def summary(name: str, runs: list[float], extra: str = "") -> Row:
    return (name, runs, extra)


def print_table(title: str, rows: list[Row], unit: str, anchor: str | None) -> None:
    base = next((statistics.median(r) for n, r, _ in rows if n == anchor), None)
    print(f"\n{title}")
    print(f"| case | median {unit} | min | max | ratio to {anchor} | notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, runs, extra in rows:
        median = statistics.median(runs)
        ratio = f"{base / median:.2f}x" if base and median else "-"
        print(
            f"| {name} | {median:.4g} | {min(runs):.4g} | {max(runs):.4g} "
            f"| {ratio} | {extra} |"
        )


def timed(action: Callable[[], object], runs: int) -> list[float]:
    results = []
    for _ in range(runs):
        # Dirty pages left by the run before (torch.hub and curl do not flush
        # their files) would otherwise slow down whichever case runs next.
        os.sync()
        started = time.perf_counter()
        action()
        results.append(time.perf_counter() - started)
    return results


def serve(
    paths: list[Path], rate: float | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """Serve ``paths`` from a loopback server in a process of its own.

    ``rate`` paces each response to that many bytes per second, as a network
    link slower than loopback would.
    """
    env = {**os.environ, "BENCH_RATE": str(rate or 0)}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, *map(str, paths)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    return server, [server.stdout.readline().strip() for _ in paths]


def cold_fetch(folder: Path, size: int, runs: int) -> None:
    import torch.hub

    import zooload

    data_path = folder / "model.bin"
    with data_path.open("wb") as stream:
        for _ in range(size // MIB):
            stream.write(torch.randint(0, 256, (MIB,), dtype=torch.uint8).numpy())
    digest = hashlib.sha256(data_path.read_bytes()).hexdigest()
    server, (url,) = serve([data_path])
    try:

        def with_zooload() -> None:
            with tempfile.TemporaryDirectory(dir=folder) as cache:
                zooload.fetch(f"{url}#sha256={digest}", cache_dir=cache, progress=False)

        def with_hub() -> None:
            with tempfile.TemporaryDirectory(dir=folder) as target:
                torch.hub.download_url_to_file(
                    url, f"{target}/m", hash_prefix=digest[:16], progress=False
                )

        def with_curl() -> None:
            with tempfile.TemporaryDirectory(dir=folder) as target:
                subprocess.run(["curl", "-s", "-o", f"{target}/m", url], check=True)

        cases = {"zooload fetch": with_zooload, "torch.hub download": with_hub}
        if shutil.which("curl"):
            cases["curl -o (no hash)"] = with_curl
        rows = []
        for name, action in cases.items():
            runs_s = timed(action, runs)
            rate = size / statistics.median(runs_s) / 1e9
            rows.append(summary(name, runs_s, f"{rate:.2f} GB/s"))
    finally:
        server.kill()
    print_table(
        f"1. cold fetch of {size // MIB} MiB with sha256",
        rows,
        "s",
        "torch.hub download",
    )


def child(case: str, folder: Path, layers: int) -> None:
    """One warm load in this fresh process; prints seconds and peak RSS."""
    import torch.hub  # noqa: F401 (imports are not part of any load)

    import zooload  # noqa: F401

    baseline = _status("VmRSS")
    started = time.perf_counter()
    model = WARM_CASES[case](folder, layers)
    with torch.no_grad():
        total = sum(float(p.sum()) for p in model.parameters())
    seconds = time.perf_counter() - started
    print(json.dumps({"s": seconds, "rss": _status("VmHWM") - baseline, "t": total}))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _warm_zooload(folder: Path, layers: int) -> nn.Module:
    import zooload

    return zooload.load_url(
        folder / "model.safetensors",
        arch=stack,
        layers=layers,
        cache_dir=folder / "cache",
    )


def _warm_usual(folder: Path, layers: int) -> nn.Module:
    model = stack(layers)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model


def _warm_hub(folder: Path, layers: int) -> nn.Module:
    import torch.hub

    url = (folder / "url").read_text()
    state = torch.hub.load_state_dict_from_url(
        url, model_dir=str(folder / "hub"), progress=False, file_name="model.pt"
    )
    model = stack(layers)
    model.load_state_dict(state)
    return model


def _warm_raw(folder: Path, layers: int) -> nn.Module:
    with torch.device("meta"):
        model = stack(layers)
    state = torch.load(folder / "model.pt", mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True)
    return model


WARM_CASES: dict[str, Callable[[Path, int], nn.Module]] = {
    "zooload load_url": _warm_zooload,
    "usual path": _warm_usual,
    "torch.hub + construct": _warm_hub,
    "raw primitives": _warm_raw,
}


def warm_load(folder: Path, size: int, runs: int) -> None:
    from zooload.formats.safetensors_file import write_aligned

    layers = max(1, round(size / (LAYER * LAYER * 4)))
    state = stack(layers).state_dict()
    write_aligned(state, folder / "model.safetensors")
    torch.save(state, folder / "model.pt")
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    del state
    (folder / "hub").mkdir()
    shutil.copy(folder / "model.pt", folder / "hub" / "model.pt")
    (folder / "url").write_text("http://127.0.0.1:9/model.pt")
    rows = []
    for case in WARM_CASES:
        results = [_run_child(case, folder, layers) for _ in range(runs + 1)][1:]
        peaks = [r["rss"] / weight_bytes for r in results]
        note = f"peak RSS {statistics.median(peaks):.2f}x the weights"
        rows.append(summary(case, [r["s"] for r in results], note))
    print_table(
        f"2. warm load of {weight_bytes / 2**30:.2f} GiB ({layers} x Linear(4096, "
        "4096)), fresh process each",
        rows,
        "s",
        "usual path",
    )


def _run_child(case: str, folder: Path, layers: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", case, str(folder), str(layers)]
    output = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def cache_hit(folder: Path, runs: int) -> None:
    from safetensors.torch import load_file

    import zooload

    weights = folder / "tiny.safetensors"
    from zooload.formats.safetensors_file import write_aligned

    write_aligned(tiny().state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    url = f"file://{weights}#sha256={digest}"
    cache = folder / "tiny-cache"
    zooload.load_url(url, arch=tiny, cache_dir=cache)
    repeat = 50

    def ours() -> None:
        for _ in range(repeat):
            zooload.load_url(url, arch=tiny, cache_dir=cache)

    def bare() -> None:
        for _ in range(repeat):
            tiny().load_state_dict(load_file(weights))

    mine = [s / repeat * 1000 for s in timed(ours, runs)]
    theirs = [s / repeat * 1000 for s in timed(bare, runs)]
    overhead = statistics.median(mine) - statistics.median(theirs)
    rows = [
        summary(
            "zooload load_url (pinned, cached)", mine, f"overhead {overhead:.2f} ms"
        ),
        summary("load_file + load_state_dict", theirs),
    ]
    print_table(
        "3. cache-hit call of a 1 MB model, ms per call",
        rows,
        "ms",
        "load_file + load_state_dict",
    )


ARCHIVES = ("model.tar.gz", "model.tar.zst", "model.tar", "model.zip")


def archives(folder: Path, size: int, runs: int) -> None:
    import zooload
    from zooload.formats.safetensors_file import write_aligned

    layers = max(1, round(size / (LAYER * LAYER * 4)))
    zooload.register("bench-stack")(stack)
    state = stack(layers).state_dict()
    bare = folder / "model.safetensors"
    if not bare.exists():
        write_aligned(state, bare)
    for name in ARCHIVES:
        zooload.pack(
            state, folder / name, arch="bench-stack", arch_kwargs={"layers": layers}
        )
    del state
    sources = [folder / name for name in (*ARCHIVES, bare.name)]
    rows = [
        _archive_row(source.name, source, folder, layers, size, runs)
        for source in sources
    ]
    rows += _decoder_rows(folder, size, runs)
    print_table(
        f"4a. local archive to ready model ({size // MIB} MiB), fresh cache each run",
        rows,
        "s",
        bare.name,
    )
    server, urls = serve(sources)
    digests = [hashlib.sha256(source.read_bytes()).hexdigest() for source in sources]
    try:
        for pinned in (True, False):
            rows = [
                _archive_row(
                    source.name,
                    f"{url}#sha256={digest}" if pinned else url,
                    folder,
                    layers,
                    size,
                    runs,
                )
                for source, url, digest in zip(sources, urls, digests, strict=True)
            ]
            print_table(
                f"4{'b' if pinned else 'c'}. archive over loopback HTTP "
                f"{'with' if pinned else 'without'} a pin to ready model "
                f"({size // MIB} MiB), fresh cache each run",
                rows,
                "s",
                bare.name,
            )
    finally:
        server.kill()
    paced(folder, sources, layers, size, runs)


LINK_BYTES_PER_S = 250e6


def paced(folder: Path, sources: list[Path], layers: int, size: int, runs: int) -> None:
    """Compressed tars over a 250 MB/s link: is decoding hidden by the transfer?"""
    chosen = [s for s in sources if s.name.endswith((".gz", ".zst", ".safetensors"))]
    server, urls = serve(chosen, rate=LINK_BYTES_PER_S)
    try:
        rows = [
            _archive_row(
                source.name,
                f"{url}#sha256={hashlib.sha256(source.read_bytes()).hexdigest()}",
                folder,
                layers,
                size,
                runs,
            )
            for source, url in zip(chosen, urls, strict=True)
        ]
    finally:
        server.kill()
    print_table(
        f"4d. archive over a {LINK_BYTES_PER_S / 1e6:.0f} MB/s link with a pin to "
        f"ready model ({size // MIB} MiB), fresh cache each run",
        rows,
        "s",
        chosen[-1].name,
    )


def _archive_row(
    name: str, source: Path | str, folder: Path, layers: int, size: int, runs: int
) -> Row:
    import zooload

    def load() -> None:
        with tempfile.TemporaryDirectory(dir=folder) as cache:
            bare = name.endswith(".safetensors")
            kwargs = {"arch": stack, "layers": layers} if bare else {}
            model = zooload.load_url(source, cache_dir=cache, progress=False, **kwargs)
            with torch.no_grad():
                sum(float(p.sum()) for p in model.parameters())

    runs_s = timed(load, runs)
    rate = size / statistics.median(runs_s) / 1e9
    return summary(name, runs_s, f"{rate:.2f} GB/s")


def _decoder_rows(folder: Path, size: int, runs: int) -> list[Row]:
    """The decoders alone, reading each compressed archive to its end."""
    from zooload.archive import decoded

    rows = []
    for name, compression in (("model.tar.gz", "gz"), ("model.tar.zst", "zst")):
        path = folder / name

        def decode(path: Path = path, compression: str = compression) -> None:
            with (
                path.open("rb") as raw,
                decoded(raw, compression, name=path.name) as data,
            ):
                while data.read(MIB):
                    pass

        runs_s = timed(decode, runs)
        rate = size / statistics.median(runs_s) / 1e9
        rows.append(summary(f"decode {name} only", runs_s, f"{rate:.2f} GB/s"))
    return rows


def main() -> None:
    # Unpinned downloads on purpose (4c) would otherwise warn on every run.
    logging.getLogger("zooload").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", default="1234")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    size, runs = args.size * MIB, max(args.runs, 5)
    with tempfile.TemporaryDirectory(prefix="zooload-bench-") as root:
        folder = Path(root)
        cases = {
            "1": lambda: cold_fetch(folder, size, runs),
            "2": lambda: warm_load(folder, size, runs),
            "3": lambda: cache_hit(folder, runs),
            "4": lambda: archives(folder, size, runs),
        }
        for key in args.cases:
            cases[key]()


if __name__ == "__main__":
    main()
