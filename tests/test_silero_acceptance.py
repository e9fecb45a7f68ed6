"""The acceptance cases on real published weights (the silero-vad package)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zooload
from support.builders import sha256_of
from zooload.zoo.silero_vad import (
    CHUNK_SAMPLES,
    TORCHSCRIPT_RENAMES,
    WINDOW_SAMPLES,
    SileroVad16k,
    initial_state,
    speech_probabilities,
)


def _audio() -> torch.Tensor:
    """Half a second of low noise, then a voiced buzz: both classes occur."""
    generator = torch.Generator().manual_seed(7)
    time_axis = torch.arange(40 * CHUNK_SAMPLES) / 16_000
    phase = 2 * torch.pi * 150 * time_axis
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 10)) * (time_axis > 0.6)
    noise = 0.005 * torch.randn(time_axis.shape, generator=generator)
    return (0.3 * voiced + noise).float()


def _torchscript_probabilities(
    program: torch.nn.Module, audio: torch.Tensor
) -> torch.Tensor:
    program.reset_states()
    with torch.no_grad():
        return torch.stack(
            [
                program(chunk.unsqueeze(0), 16_000).reshape(())
                for chunk in audio.split(512)
            ]
        )


def _example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(1, WINDOW_SAMPLES, generator=generator) * 0.1, initial_state()


def test_torchscript_archive_loads_as_callable_program(
    silero_data: Path, tmp_path: Path, served, cache_dir: Path
) -> None:
    """(a) an archive holding only the TorchScript file gives a working model."""
    archive = tmp_path / "silero.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(silero_data / "silero_vad.jit", arcname="silero_vad.jit")
    data = archive.read_bytes()
    url = served.add("silero.tar.gz", data) + f"#sha256={sha256_of(data)}"

    model = zooload.load_url(url, cache_dir=cache_dir)

    assert isinstance(model, torch.jit.ScriptModule)
    assert not model.training
    reference = torch.jit.load(str(silero_data / "silero_vad.jit")).eval()
    audio = _audio()
    assert torch.equal(
        _torchscript_probabilities(model, audio),
        _torchscript_probabilities(reference, audio),
    )


def test_torchscript_weights_with_renames_reproduce_the_program_bit_for_bit(
    silero_data: Path, tmp_path: Path, served, cache_dir: Path
) -> None:
    """(b) the program's own weights, renamed onto our module, give its outputs."""
    program = torch.jit.load(str(silero_data / "silero_vad.jit")).eval()
    weights = {k: v for k, v in program.state_dict().items() if k.startswith("_model.")}
    archive = zooload.pack(
        weights,
        tmp_path / "vad-16k.tar.gz",
        arch="silero-vad-16k",
        rename=TORCHSCRIPT_RENAMES,
        example_inputs=_example_inputs(),
        metadata={"license": "MIT"},
    )
    data = archive.read_bytes()
    url = served.add("vad-16k.tar.gz", data) + f"#sha256={sha256_of(data)}"

    result = zooload.load(url, cache_dir=cache_dir)

    assert isinstance(result.model, SileroVad16k)
    assert result.report is not None
    assert result.report.ok
    assert len(result.report.loaded) == 15
    assert (
        result.report.renamed["_model.encoder.0.reparam_conv.weight"] == "conv1.weight"
    )
    assert (
        result.report.renamed["_model.stft.forward_basis_buffer"] == "stft_conv.weight"
    )
    assert result.example is not None
    assert result.example.largest_difference == 0.0
    audio = _audio()
    ours = speech_probabilities(result.model, audio)
    theirs = _torchscript_probabilities(program, audio)
    assert ours.shape == (40,)
    assert torch.equal(ours, theirs)
    assert ours[:15].max() < 0.2 < ours[25:].max()


def test_safetensors_file_packs_and_loads_with_every_key_matched(
    silero_data: Path, tmp_path: Path, served, cache_dir: Path
) -> None:
    """(c) the publisher's safetensors state dict packs, loads and checks."""
    weights = load_file(silero_data / "silero_vad_16k.safetensors")
    archive = zooload.pack(
        weights,
        tmp_path / "vad.zip",
        arch="silero-vad-16k",
        example_inputs=_example_inputs(),
    )
    url = served.add("vad.zip", archive.read_bytes())

    result = zooload.load(url, cache_dir=cache_dir)

    assert result.report is not None
    assert result.report.ok
    assert sorted(result.report.loaded) == sorted(weights)
    assert result.report.renamed == {}
    assert result.example is not None
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_safetensors_weights_load_as_bare_file_with_arch(
    silero_data: Path, cache_dir: Path
) -> None:
    model = zooload.load_url(
        silero_data / "silero_vad_16k.safetensors",
        arch="silero-vad-16k",
        cache_dir=cache_dir,
    )
    with torch.no_grad():
        probability, state = model(*_example_inputs())
    assert probability.shape == (1, 1)
    assert 0.0 < float(probability) < 1.0
    assert state.shape == (2, 1, 128)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip", ""])
def test_pack_writes_each_layout_that_loads(
    suffix: str, silero_data: Path, tmp_path: Path, cache_dir: Path
) -> None:
    weights = load_file(silero_data / "silero_vad_16k.safetensors")
    dest = zooload.pack(weights, tmp_path / f"vad{suffix}", arch="silero-vad-16k")
    model = zooload.load_url(dest, cache_dir=cache_dir)
    assert torch.equal(model.conv1.weight, weights["conv1.weight"])
