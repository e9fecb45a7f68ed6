"""The command line, run in process through ``main(argv)`` on real files.

Checkpoints are the published weights the suite already reads (silero-vad's
safetensors and TorchScript files, lpips' legacy ``.pth``) and small ones
written here; remote sources come from the loopback server.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import zooload
from support.builders import tensors_equal
from zooload import cli_format
from zooload.cli import main
from zooload.zoo.silero_vad import HIDDEN_SIZE

COMMANDS = ["load", "fetch", "inspect", "diff", "convert", "pack", "cache"]
CACHE_COMMANDS = ["ls", "size", "rm", "prune", "verify", "dir"]


class Run:
    """Runs ``main`` and keeps the exit code, stdout and stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str], cache_dir: Path) -> None:
        self.capsys = capsys
        self.cache_dir = cache_dir

    def __call__(self, *argv: str | Path) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--cache-dir", str(self.cache_dir), *map(str, argv)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str | Path) -> object:
        code, out, err = self(*argv, "--json")
        assert code in (0, 1), err
        return json.loads(out)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], cache_dir: Path) -> Run:
    """``main`` with a private cache, capturing its output."""
    return Run(capsys, cache_dir)


@pytest.fixture(scope="session")
def lpips_alex() -> Path:
    """lpips' legacy-format (pre-1.6) weights of its AlexNet heads."""
    spec = importlib.util.find_spec("lpips")
    assert spec is not None
    assert spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "weights" / "v0.1" / "alex.pth"


@pytest.fixture
def vad_archive(silero_data: Path, tmp_path: Path) -> bytes:
    """A packed silero-vad-16k archive with example inputs, as bytes."""
    torch.manual_seed(0)
    inputs = (torch.randn(1, 576), torch.zeros(2, 1, HIDDEN_SIZE))
    weights = zooload.load_state_dict(silero_data / "silero_vad_16k.safetensors")
    dest = tmp_path / "vad.tar.gz"
    zooload.pack(
        weights,
        dest,
        arch="silero-vad-16k",
        example_inputs=inputs,
        metadata={"license": "MIT"},
    )
    return dest.read_bytes()


class TiedNet(torch.nn.Module):
    """An embedding tied to the output projection, and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor(7))


@zooload.register("cli-test-mlp")
class Mlp(torch.nn.Module):
    """A small registered architecture with a width."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, width)


def test_cli_version_and_help_exit_zero(run: Run) -> None:
    code, out, _ = run("--version")
    assert (code, out) == (0, f"zooload, version {zooload.__version__}\n")
    code, out, _ = run("--help")
    assert code == 0
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize(
    "command", [[c] for c in COMMANDS] + [["cache", c] for c in CACHE_COMMANDS]
)
def test_cli_help_of_every_command_has_an_example(run: Run, command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert "Example" in out
    assert "zooload" in out or "cd " in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no-such-command"], "No such command"),
        (["diff", "only-one-side"], "give two sides"),
        (["load", "x.pt", "--arch-kwargs", "{nope"], "is not JSON"),
        (["load", "x.pt", "--arch-kwargs", "[1]"], "not a JSON object"),
        (["cache", "prune", "--max-size", "lots"], "is not a size"),
        (["pack", "w.pt", "--arch", "a", "-o", "o", "--meta", "x"], "KEY=VALUE"),
        (["convert", "a.pt", "b.safetensors", "--dtype", "fp8"], "fp8"),
        (["--import", "no_such_module_here", "cache", "dir"], "cannot import"),
    ],
)
def test_cli_usage_errors_exit_two(run: Run, argv: list[str], message: str) -> None:
    code, out, err = run(*argv)
    assert code == 2
    assert message in err
    assert out == ""


def test_cli_inspect_legacy_checkpoint(run: Run, lpips_alex: Path) -> None:
    code, out, _ = run("inspect", lpips_alex)
    assert code == 0
    assert "alex.pth (torch-legacy)" in out
    assert "parameters  1.2 K (1,152)" in out
    assert "float32 4.6 kB" in out

    code, out, _ = run("inspect", lpips_alex, "--tensors")
    rows = [line.split() for line in out.splitlines() if line.startswith("lin")]
    assert rows[0] == ["lin0.model.1.weight", "[1,", "64,", "1,", "1]", "float32"] + [
        "256",
        "B",
    ]
    assert len(rows) == 5


def test_cli_inspect_json_structure(run: Run, lpips_alex: Path) -> None:
    data = run.json("inspect", lpips_alex)
    assert isinstance(data, dict)
    assert data["parameters"] == 1152
    assert data["manifest"] is None
    (file,) = data["files"]
    assert file["format"] == "torch-legacy"
    assert file["tensors"][0] == {
        "name": "lin0.model.1.weight",
        "shape": [1, 64, 1, 1],
        "dtype": "float32",
        "nbytes": 256,
    }


def test_cli_inspect_training_checkpoint_names_the_weights_key(
    run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "last.ckpt"
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save(
        {"epoch": 4, "model": model.state_dict(), "optimizer": optimizer.state_dict()},
        path,
    )
    code, out, _ = run("inspect", path)
    assert code == 0
    assert "under key 'model' of:" in out
    assert "epoch" in out
    assert "optimizer" in out


def test_cli_inspect_archive_shows_manifest_and_metadata(
    run: Run, served: Any, vad_archive: bytes
) -> None:
    url = served.add("vad.tar.gz", vad_archive)
    code, out, _ = run("inspect", url)
    assert code == 0
    assert "manifest      silero-vad-16k" in out
    assert "examples      examples.safetensors" in out
    assert "  license     MIT" in out
    data = run.json("inspect", url)
    assert isinstance(data, dict)
    assert data["manifest"]["architecture"]["name"] == "silero-vad-16k"
    assert data["manifest"]["metadata"]["license"] == "MIT"


def test_cli_inspect_tensors_drawn_by_rich_on_a_terminal(
    run: Run, silero_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_format, "stdout_is_terminal", lambda: True)
    code, out, _ = run(
        "inspect", silero_data / "silero_vad_16k.safetensors", "--tensors"
    )
    assert code == 0
    assert "lstm_cell.weight_hh" in out
    assert "262.1 kB" in out
    assert "─" in out  # rich's header rule


def test_cli_load_served_archive(run: Run, served: Any, vad_archive: bytes) -> None:
    url = served.add("vad.tar.gz", vad_archive)
    code, out, _ = run("load", url)
    assert code == 0
    fields = dict(line.split(maxsplit=1) for line in out.splitlines()[:2])
    assert fields == {"source": url, "architecture": "silero-vad-16k -> SileroVad16k"}
    assert "parameters     309.6 K (309,633)" in out
    assert "dtype          float32" in out
    assert "device         cpu" in out
    assert "example check  passed, 2 outputs, largest difference 0" in out
    assert f"cached at      {run.cache_dir.resolve()}" in out
    assert "load report    loaded     15  stft_conv.weight" in out
    assert all(stage in out for stage in ("fetch", "build", "load", "check"))


def test_cli_load_json_structure(run: Run, served: Any, vad_archive: bytes) -> None:
    url = served.add("vad.tar.gz", vad_archive)
    data = run.json("load", url, "--no-check")
    assert isinstance(data, dict)
    assert data["architecture"] == "silero-vad-16k"
    assert data["class"] == "SileroVad16k"
    assert data["parameters"] == 309_633
    assert data["dtypes"] == ["float32"]
    assert data["example"] is None
    assert data["report"]["ok"] is True
    assert len(data["report"]["loaded"]) == 15
    assert set(data["seconds"]) == {"fetch", "build", "load", "check"}


def test_cli_load_bare_checkpoint_with_arch_and_kwargs(
    run: Run, tmp_path: Path
) -> None:
    path = tmp_path / "mlp.pt"
    torch.save(Mlp(width=6).state_dict(), path)
    code, out, _ = run(
        "load", path, "--arch", "cli-test-mlp", "--arch-kwargs", '{"width": 6}'
    )
    assert code == 0
    assert "cli-test-mlp -> Mlp" in out
    assert "example check  not run" in out


def test_cli_load_torchscript_program(run: Run, silero_data: Path) -> None:
    data = run.json("load", silero_data / "silero_vad.jit")
    assert isinstance(data, dict)
    assert data["architecture"] == "TorchScript"
    assert data["report"] is None


def test_cli_fetch_prints_only_the_path(
    run: Run, served: Any, vad_archive: bytes
) -> None:
    url = served.add("vad.tar.gz", vad_archive)
    code, out, _ = run("fetch", url)
    folder = Path(out.strip())
    assert code == 0
    assert out.count("\n") == 1
    assert (folder / "zooload.json").is_file()

    code, out, _ = run("fetch", url, "--no-extract")
    assert Path(out.strip()).read_bytes() == vad_archive
    data = run.json("fetch", url)
    assert data == {"path": str(folder)}


def test_cli_diff_compatible_pair(run: Run, silero_data: Path) -> None:
    code, out, _ = run(
        "diff", silero_data / "silero_vad_16k.safetensors", "--arch", "silero-vad-16k"
    )
    assert code == 0
    assert "matched      15" in out
    assert out.endswith("compatible\n")


def test_cli_diff_prefix_only_difference(
    run: Run, silero_data: Path, tmp_path: Path
) -> None:
    original = silero_data / "silero_vad_16k.safetensors"
    weights = zooload.load_state_dict(original)
    wrapped = tmp_path / "ddp.pt"
    torch.save({f"module.{name}": t for name, t in weights.items()}, wrapped)
    code, out, _ = run("diff", wrapped, original)
    assert code == 0
    assert "prefix        1  stripped 'module.'" in out
    data = run.json("diff", wrapped, original)
    assert isinstance(data, dict)
    assert data["compatible"] is True
    assert data["only_in_a"] == data["only_in_b"] == []


def test_cli_diff_real_mismatch_suggests_renames(run: Run, silero_data: Path) -> None:
    code, out, _ = run(
        "diff", silero_data / "silero_vad.jit", "--arch", "silero-vad-16k"
    )
    assert code == 1
    assert "only in a    30" in out
    assert "only in b    15" in out
    assert "_model.encoder.0.reparam_conv.bias -> conv1.bias" in out
    assert out.endswith("not compatible\n")
    data = run.json("diff", silero_data / "silero_vad.jit", "--arch", "silero-vad-16k")
    assert isinstance(data, dict)
    assert data["compatible"] is False
    assert data["renames"]["_model.decoder.rnn.weight_ih"] == "lstm_cell.weight_ih"


def test_cli_diff_two_architectures_with_kwargs(run: Run) -> None:
    data = run.json(
        "diff",
        "--arch",
        "cli-test-mlp",
        "--arch",
        "cli-test-mlp",
        "--arch-kwargs",
        '{"width": 4}',
        "--arch-kwargs",
        '{"width": 8}',
    )
    assert isinstance(data, dict)
    assert data["compatible"] is False
    assert data["shapes"] == {"fc.weight": [[4, 2], [8, 2]], "fc.bias": [[4], [8]]}


def test_cli_convert_round_trip_bit_for_bit_with_tied_weights(
    run: Run, tmp_path: Path
) -> None:
    source = tmp_path / "tied.pt"
    torch.save(TiedNet().state_dict(), source)
    dest = tmp_path / "tied.safetensors"
    code, out, _ = run("convert", source, dest)
    assert (code, out) == (0, f"{dest}\n")

    original = torch.load(source, weights_only=True)
    converted = zooload.load_state_dict(dest)
    assert tensors_equal(dict(original), converted)
    assert converted["head.weight"] is converted["embed.weight"]
    loaded = zooload.load_into(TiedNet(), converted)
    assert loaded.ok


def test_cli_convert_legacy_checkpoint_to_half(
    run: Run, lpips_alex: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "alex.safetensors"
    code, _, _ = run("convert", lpips_alex, dest, "--dtype", "fp16")
    assert code == 0
    reference = torch.load(lpips_alex, map_location="cpu", weights_only=True)
    converted = zooload.load_state_dict(dest)
    assert all(t.dtype == torch.float16 for t in converted.values())
    assert tensors_equal({k: v.half() for k, v in reference.items()}, converted)


def test_cli_convert_refuses_to_overwrite_without_force(
    run: Run, lpips_alex: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "alex.safetensors"
    dest.write_text("keep me")
    code, out, err = run("convert", lpips_alex, dest)
    assert code == 1
    assert err.startswith("error: ")
    assert "exists already" in err
    assert dest.read_text() == "keep me"
    code, _, _ = run("convert", lpips_alex, dest, "--force")
    assert code == 0
    assert len(zooload.load_state_dict(dest)) == 5


def test_cli_pack_with_renames_examples_and_metadata(
    run: Run, silero_data: Path, tmp_path: Path
) -> None:
    weights = zooload.load_state_dict(silero_data / "silero_vad_16k.safetensors")
    source = tmp_path / "net.pt"
    torch.save({f"net.{name}": t for name, t in weights.items()}, source)
    examples = tmp_path / "inputs.safetensors"
    save_file({"a": torch.randn(1, 576), "b": torch.zeros(2, 1, HIDDEN_SIZE)}, examples)
    dest = tmp_path / "vad.zip"
    code, out, _ = run(
        "pack",
        source,
        "--arch",
        "silero-vad-16k",
        "--rename",
        r"^net\.",
        "",
        "--example",
        examples,
        "--meta",
        "license=MIT",
        "-o",
        dest,
    )
    assert (code, out) == (0, f"{dest}\n")
    result = zooload.load(dest, cache_dir=tmp_path / "cache")
    assert result.example is not None
    assert result.example.outputs == 2
    assert result.manifest is not None
    assert result.manifest.metadata.license == "MIT"


def _fill_cache(run: Run, served: Any, sizes: dict[str, int]) -> dict[str, str]:
    urls = {}
    for name, size in sizes.items():
        urls[name] = served.add(name, name.encode() * size)
        code, _, err = run("fetch", urls[name])
        assert code == 0, err
    return urls


def test_cli_cache_ls_size_dir(run: Run, served: Any) -> None:
    urls = _fill_cache(run, served, {"a.bin": 1000, "b.bin": 2000})
    code, out, _ = run("cache", "ls")
    assert code == 0
    assert out.splitlines()[0].split() == ["sha256", "size", "last", "used", "urls"]
    assert urls["a.bin"] in out
    assert urls["b.bin"] in out
    entries = run.json("cache", "ls")
    assert isinstance(entries, list)
    assert sorted(e["size"] for e in entries) == [5000, 10000]
    assert set(entries[0]) == {"sha256", "urls", "size", "last_used", "path"}

    size = zooload.cache_size(cache_dir=run.cache_dir)
    assert 15_000 < size < 20_000  # the blobs and the URL records
    assert run("cache", "size")[1] == f"{size / 1000:.1f} kB\n"
    assert run.json("cache", "size") == {"bytes": size}
    assert run("cache", "dir")[1] == f"{run.cache_dir.resolve()}\n"


def test_cli_cache_rm_by_url_and_hash(run: Run, served: Any) -> None:
    urls = _fill_cache(run, served, {"a.bin": 10, "b.bin": 10})
    code, out, _ = run("cache", "rm", urls["a.bin"])
    assert code == 0
    assert out.startswith("removed ")
    digest = zooload.cache_entries(cache_dir=run.cache_dir)[0].sha256
    removed = run.json("cache", "rm", f"sha256:{digest}")
    assert isinstance(removed, list)
    assert [entry["sha256"] for entry in removed] == [digest]
    assert (
        run("cache", "rm", urls["a.bin"])[1] == f"nothing cached for {urls['a.bin']}\n"
    )
    assert zooload.cache_entries(cache_dir=run.cache_dir) == ()


def test_cli_cache_prune_to_a_budget(run: Run, served: Any) -> None:
    _fill_cache(run, served, {"old.bin": 1000, "new.bin": 1000})
    newest = zooload.cache_entries(cache_dir=run.cache_dir)[0]
    budget = zooload.cache_size(cache_dir=run.cache_dir) - 1
    code, out, _ = run("cache", "prune", "--max-size", str(budget))
    assert code == 0
    assert out.count("removed ") == 1
    assert "freed" in out
    (kept,) = zooload.cache_entries(cache_dir=run.cache_dir)
    assert kept.sha256 == newest.sha256
    data = run.json("cache", "prune", "--max-size", "0B")
    assert isinstance(data, dict)
    assert [e["sha256"] for e in data["removed"]] == [newest.sha256]
    assert data["size"] <= 0 + zooload.cache_size(cache_dir=run.cache_dir)


def test_cli_cache_verify_finds_and_removes_corrupt_blobs(
    run: Run, served: Any
) -> None:
    _fill_cache(run, served, {"a.bin": 100})
    assert run("cache", "verify") == (0, "every blob is intact\n", "")
    (entry,) = zooload.cache_entries(cache_dir=run.cache_dir)
    entry.path.chmod(0o644)
    entry.path.write_bytes(b"rotten")
    code, out, _ = run("cache", "verify")
    assert code == 1
    assert out.startswith(f"corrupt {entry.sha256}")
    assert "(kept)" in out
    code, out, _ = run("cache", "verify", "--remove", "--json")
    assert code == 1
    assert json.loads(out)[0]["removed"] is True
    assert zooload.cache_entries(cache_dir=run.cache_dir) == ()


def test_cli_cache_verify_says_why_a_local_archives_tree_is_corrupt(
    run: Run, tmp_path: Path
) -> None:
    zooload.register("cli-verify-linear")(_wide_linear)
    archive = zooload.pack(_wide_linear(), tmp_path / "m.tar", arch="cli-verify-linear")
    zooload.load_url(archive, cache_dir=run.cache_dir)
    archive.unlink()

    code, out, _ = run("cache", "verify")
    data = run.json("cache", "verify")

    assert code == 1
    assert "its tree: its weights stay in the local archive" in out
    assert "(kept)" in out
    assert isinstance(data, list)
    assert "stay in the local archive" in data[0]["tree_problem"]


def _wide_linear() -> torch.nn.Module:
    """A 1 MiB weight: large enough to be read in place from a tar."""
    torch.manual_seed(0)
    return torch.nn.Linear(512, 512)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fetch", "{served}/missing.bin"], "404"),
        (["load", "{file}", "--arch", "no-such-net"], "no architecture is registered"),
        (["inspect", "{text}"], "is not a checkpoint"),
        (["load", "{file}"], "does not say which architecture"),
    ],
)
def test_cli_errors_print_one_line_and_exit_one(
    run: Run,
    served: Any,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n" * 10)
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, weights)
    places = {"served": served.server.url("/" + served.prefix), "file": weights}
    args = [a.format(**places, text=text) for a in argv]
    code, out, err = run(*args)
    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_debug_shows_the_traceback(run: Run, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, weights)
    code, _, err = run("--debug", "load", weights, "--arch", "no-such-net")
    assert code == 1
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("error: no architecture")


def test_cli_interrupt_exits_130(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object, **__: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr("zooload.cli.fetch", interrupted)
    code, _, err = run("fetch", "https://example.org/w.bin")
    assert code == 130
    assert "interrupted" in err


def test_cli_verbose_logs_to_stderr_and_leaves_logging_as_it_was(
    run: Run, served: Any
) -> None:
    package = logging.getLogger("zooload")
    handlers, level = list(package.handlers), package.level
    url = served.add("w.bin", b"weights")
    code, out, err = run("-vv", "fetch", url)
    assert code == 0
    assert "DEBUG zooload." in err
    assert "INFO zooload." in err
    assert "DEBUG" not in out
    assert (package.handlers, package.level) == (handlers, level)
    code, _, err = run("-q", "fetch", url)
    assert err == ""


def test_cli_import_registers_architectures(run: Run, tmp_path: Path) -> None:
    code, out, _ = run("--import", "zooload.zoo.silero_vad", "cache", "dir")
    assert code == 0
    assert out.strip() == str(run.cache_dir.resolve())


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "zooload", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0
    assert completed.stdout == f"zooload, version {zooload.__version__}\n"


def test_cli_pack_then_inspect_shows_kwargs_and_rename_rules(
    run: Run, tmp_path: Path
) -> None:
    source = tmp_path / "mlp.pt"
    torch.save({f"net.{k}": v for k, v in Mlp(width=6).state_dict().items()}, source)
    dest = tmp_path / "mlp.tar.gz"
    code, _, err = run(
        "pack",
        source,
        "--arch",
        "cli-test-mlp",
        "--arch-kwargs",
        '{"width": 6}',
        "--rename",
        r"^net\.",
        "",
        "--name",
        "tiny",
        "-o",
        dest,
    )
    assert code == 0, err
    code, out, _ = run("inspect", dest)
    assert "manifest      tiny" in out
    assert 'architecture  cli-test-mlp {"width": 6}' in out
    assert "rename        '^net\\\\.' -> ''" in out
    assert run("load", dest)[0] == 0


def test_cli_cache_prune_names_entries_in_use(
    run: Run, served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill_cache(run, served, {"busy.bin": 10})
    (entry,) = zooload.cache_entries(cache_dir=run.cache_dir)
    held = zooload.PruneResult(removed=(), skipped=(entry,), freed=0, size=entry.size)
    monkeypatch.setattr("zooload.cli_cache.prune_cache", lambda *_, **__: held)
    code, out, _ = run("cache", "prune", "--max-size", "0")
    assert code == 0
    assert out.startswith(f"in use, kept {entry.sha256}")
