"""Reading, unwrapping and mapping checkpoints from real PyTorch writers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy
import pytest
import torch
from safetensors.torch import save_file

import zooload
from support.builders import tensors_equal
from zooload.inspection import inspect


class Net(torch.nn.Module):
    """A small convolutional classifier: conv layers, then a linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.bn(self.conv2(torch.relu(self.conv1(images))))
        return self.fc(features.mean(dim=(2, 3)))


def _trained(seed: int = 0, classes: int = 10) -> Net:
    torch.manual_seed(seed)
    return Net(classes)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _saved(tmp_path: Path, content: object, name: str = "ckpt.pt") -> Path:
    path = tmp_path / name
    torch.save(content, path)
    return path


# -- wrappers' prefixes --------------------------------------------------------


def test_load_into_strips_dataparallel_prefix(tmp_path: Path) -> None:
    wrapped = torch.nn.DataParallel(_trained())
    weights = zooload.load_state_dict(_saved(tmp_path, wrapped.state_dict()))
    assert next(iter(weights)).startswith("module.")
    model = _trained(seed=1)

    report = zooload.load_into(model, weights)

    assert report.ok
    assert report.prefix == "stripped 'module.'"
    assert report.renamed["module.fc.weight"] == "fc.weight"
    assert tensors_equal(_snapshot(model), _snapshot(wrapped.module))


def test_load_into_adds_dataparallel_prefix_for_a_wrapped_model(tmp_path: Path) -> None:
    source = _trained()
    target = torch.nn.DataParallel(_trained(seed=1))
    report = zooload.load_into(target, dict(source.state_dict()))
    assert report.ok
    assert report.prefix == "added 'module.'"
    assert torch.equal(target.module.fc.weight, source.fc.weight)


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [
        (lambda m: torch.compile(m), "_orig_mod."),
        (lambda m: torch.nn.DataParallel(torch.compile(m)), "module._orig_mod."),
        (lambda m: torch.compile(torch.nn.DataParallel(m)), "_orig_mod.module."),
    ],
    ids=["compile", "dataparallel-of-compiled", "compiled-dataparallel"],
)
def test_load_into_strips_compile_prefixes_alone_and_stacked(
    wrap, prefix: str, tmp_path: Path
) -> None:
    source = _trained()
    weights = dict(wrap(source).state_dict())
    assert all(name.startswith(prefix) for name in weights)
    model = _trained(seed=1)

    report = zooload.load_into(model, weights)

    assert report.ok
    assert report.prefix == f"stripped {prefix!r}"
    assert tensors_equal(_snapshot(model), _snapshot(source))


def test_load_into_never_touches_a_prefix_in_the_middle() -> None:
    weights = {
        "encoder.module.weight": torch.ones(1, 2),
        "encoder.module.bias": torch.ones(1),
        "head.weight": torch.ones(1, 1),
        "head.bias": torch.ones(1),
    }
    model = torch.nn.Module()
    model.encoder = torch.nn.Linear(2, 1)
    model.head = torch.nn.Linear(1, 1)
    with pytest.raises(zooload.IncompatibleStateDictError) as caught:
        zooload.load_into(model, weights)
    report = caught.value.report
    assert set(report.unexpected) == {"encoder.module.weight", "encoder.module.bias"}
    assert set(report.loaded) == {"head.weight", "head.bias"}
    assert report.prefix == ""


def test_load_into_forced_and_disabled_prefix() -> None:
    weights = {"net.weight": torch.ones(1, 2), "net.bias": torch.ones(1)}
    assert zooload.load_into(torch.nn.Linear(2, 1), weights, strip_prefix="net.").ok
    with pytest.raises(zooload.IncompatibleStateDictError, match="unexpected"):
        zooload.load_into(torch.nn.Linear(2, 1), weights, strip_prefix=None)


# -- training checkpoints ------------------------------------------------------


def test_load_state_dict_unwraps_lightning_checkpoint(tmp_path: Path, caplog) -> None:
    source = _trained()
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.ones(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 4,
        "global_step": 1200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.1, "classes": 10},
    }
    path = _saved(tmp_path, checkpoint)

    with caplog.at_level("INFO", logger="zooload"):
        weights = zooload.load_state_dict(path)
    model = _trained(seed=1)
    report = zooload.load_into(model, weights)

    assert set(weights) == set(checkpoint["state_dict"])
    assert "weights found under key 'state_dict'" in caplog.text
    assert report.ok
    assert report.prefix == "stripped 'model.'"
    assert tensors_equal(_snapshot(model), _snapshot(source))
    info = inspect(path)
    assert info.files[0].weights_key == "state_dict"
    assert "epoch: int" in info.files[0].structure
    assert any(
        line.startswith("optimizer_states: list") for line in info.files[0].structure
    )


def test_load_state_dict_ignores_optimizer_state_beside_the_weights(
    tmp_path: Path,
) -> None:
    source = _trained()
    optimizer = torch.optim.Adam(source.parameters())
    source(torch.ones(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    path = _saved(
        tmp_path,
        {"epoch": 3, "model": source.state_dict(), "optimizer": optimizer.state_dict()},
    )
    weights = zooload.load_state_dict(path)
    assert tensors_equal(weights, _snapshot(source))


def test_load_state_dict_lists_competing_weights_and_key_picks_one(
    tmp_path: Path,
) -> None:
    source, ema = _trained(0), _trained(1)
    path = _saved(
        tmp_path,
        {
            "state_dict": source.state_dict(),
            "ema": {"module": ema.state_dict()},
            "epoch": 1,
        },
    )
    with pytest.raises(
        zooload.CheckpointError,
        match=r"'state_dict' \(11 tensors\), 'ema\.module'.*key=",
    ):
        zooload.load_state_dict(path)
    picked = zooload.load_state_dict(path, key="ema.module")
    assert tensors_equal(picked, _snapshot(ema))
    with pytest.raises(zooload.CheckpointError, match=r"no entry 'ema\.model'.*module"):
        zooload.load_state_dict(path, key="ema.model")


def test_load_state_dict_allows_numpy_scalars_in_weights_only_mode(
    tmp_path: Path,
) -> None:
    source = _trained()
    path = _saved(
        tmp_path,
        {
            "model": source.state_dict(),
            "best_accuracy": numpy.float64(0.91),
            "seen": numpy.arange(3),
        },
    )
    path_legacy = tmp_path / "legacy.pt"
    torch.save(
        {"model": source.state_dict(), "best_accuracy": numpy.float32(0.5)},
        path_legacy,
        _use_new_zipfile_serialization=False,
    )
    assert tensors_equal(zooload.load_state_dict(path), _snapshot(source))
    assert tensors_equal(zooload.load_state_dict(path_legacy), _snapshot(source))


class TrainingConfig:
    """A custom class pickled into a checkpoint, as training scripts do."""

    def __init__(self) -> None:
        self.learning_rate = 0.1


def test_load_state_dict_refuses_custom_classes_naming_them(tmp_path: Path) -> None:
    path = _saved(
        tmp_path, {"model": _trained().state_dict(), "config": TrainingConfig()}
    )
    expected = f"{__name__}.TrainingConfig"
    with pytest.raises(
        zooload.UnsafeCheckpointError, match=re.escape(expected)
    ) as caught:
        zooload.load_state_dict(path)
    assert caught.value.globals == (expected,)
    assert "trust_pickle=True" in str(caught.value)
    trusted = zooload.load_state_dict(path, trust_pickle=True)
    assert len(trusted) == 11


def test_load_state_dict_reads_npz_arrays(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    numpy.savez(
        path, **{"fc.weight": numpy.ones((2, 3), "float32"), "fc.bias": numpy.zeros(2)}
    )
    weights = zooload.load_state_dict(path)
    assert weights["fc.weight"].dtype == torch.float32
    assert weights["fc.bias"].dtype == torch.float64
    assert weights["fc.weight"].sum().item() == 6.0


# -- sharded checkpoints -------------------------------------------------------


def _sharded(tmp_path: Path, source: Net) -> Path:
    weights = _snapshot(source)
    names = sorted(weights)
    first, second = names[:6], names[6:]
    save_file(
        {n: weights[n] for n in first}, tmp_path / "model-00001-of-00002.safetensors"
    )
    save_file(
        {n: weights[n] for n in second}, tmp_path / "model-00002-of-00002.safetensors"
    )
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {
            **{n: "model-00001-of-00002.safetensors" for n in first},
            **{n: "model-00002-of-00002.safetensors" for n in second},
        },
    }
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    return path


def test_load_state_dict_reads_sharded_safetensors_and_bin(tmp_path: Path) -> None:
    source = _trained()
    index = _sharded(tmp_path, source)
    assert tensors_equal(zooload.load_state_dict(index), _snapshot(source))
    assert tensors_equal(zooload.load_state_dict(tmp_path), _snapshot(source))
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    weights = _snapshot(source)
    torch.save({n: weights[n] for n in sorted(weights)[:6]}, bin_folder / "a.bin")
    torch.save({n: weights[n] for n in sorted(weights)[6:]}, bin_folder / "b.bin")
    weight_map = {
        n: ("a.bin" if i < 6 else "b.bin") for i, n in enumerate(sorted(weights))
    }
    (bin_folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    assert tensors_equal(zooload.load_state_dict(bin_folder), weights)


def test_load_state_dict_names_a_missing_shard_before_reading(tmp_path: Path) -> None:
    index = _sharded(tmp_path, _trained())
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        zooload.FormatError, match=r"missing: model-00002-of-00002\.safetensors"
    ):
        zooload.load_state_dict(index)


def test_load_state_dict_names_a_stale_shard(tmp_path: Path) -> None:
    index = _sharded(tmp_path, _trained())
    save_file(
        {"other.weight": torch.ones(1)}, tmp_path / "model-00002-of-00002.safetensors"
    )
    with pytest.raises(zooload.FormatError, match=r"stale shard model-00002-of-00002"):
        zooload.load_state_dict(index)


def test_load_state_dict_refuses_shards_outside_the_folder(tmp_path: Path) -> None:
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(zooload.FormatError, match="outside its folder"):
        zooload.load_state_dict(index)


# -- files that are no checkpoint ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "seen", "hint"),
    [
        (
            b"<!DOCTYPE html>\n<html><body>Sign in</body></html>",
            "an HTML page",
            "web page",
        ),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12345\n",
            "a Git LFS pointer",
            "git lfs pull",
        ),
        (b"", "an empty file", "download it again"),
    ],
    ids=["html", "git-lfs", "empty"],
)
def test_load_state_dict_says_what_a_non_checkpoint_looks_like(
    tmp_path: Path, content: bytes, seen: str, hint: str
) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(zooload.FormatError, match=re.escape(seen)) as caught:
        zooload.load_state_dict(path)
    assert hint in str(caught.value)
    assert "trust_pickle" not in str(caught.value)


def test_load_state_dict_reports_truncated_files(tmp_path: Path) -> None:
    path = _saved(tmp_path, _trained().state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(zooload.FormatError, match="download it again"):
        zooload.load_state_dict(path)
    safetensors_path = tmp_path / "w.safetensors"
    save_file(_snapshot(_trained()), safetensors_path)
    data = safetensors_path.read_bytes()
    safetensors_path.write_bytes(data[: len(data) - 100])
    with pytest.raises(zooload.FormatError, match="download it again"):
        zooload.load_state_dict(safetensors_path)


# -- partial loads -------------------------------------------------------------


def test_load_into_conv_layers_only_for_transfer_learning() -> None:
    source = _trained(0)
    model = _trained(1)
    head_before = model.fc.weight.detach().clone()

    report = zooload.load_into(
        model, dict(source.state_dict()), include="conv*", strict=False
    )

    assert set(report.loaded) == {
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
    }
    assert "fc.weight" in report.skipped
    assert "bn.running_mean" in report.skipped
    assert report.missing == ()
    assert torch.equal(model.conv2.weight, source.conv2.weight)
    assert torch.equal(model.fc.weight, head_before)


def test_load_into_skips_a_resized_head_and_reports_both_shapes() -> None:
    source = torch.nn.Sequential()
    source.add_module("body", torch.nn.Linear(4, 512))
    source.add_module("fc", torch.nn.Linear(512, 1000))
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Linear(4, 512))
    model.add_module("fc", torch.nn.Linear(512, 10))
    head_before = model.fc.weight.detach().clone()

    report = zooload.load_into(
        model, dict(source.state_dict()), on_shape_mismatch="skip", strict=False
    )

    assert report.mismatched == {
        "fc.weight": ((1000, 512), (10, 512)),
        "fc.bias": ((1000,), (10,)),
    }
    assert torch.equal(model.fc.weight, head_before)
    assert torch.equal(model.body.weight, source.body.weight)
    assert "fc.weight: checkpoint [1000, 512] vs model [10, 512]" in str(report)


def test_load_into_strict_failure_leaves_every_tensor_as_it_was() -> None:
    model = _trained(1)
    before = _snapshot(model)
    weights = dict(_trained(0, classes=5).state_dict())
    weights["extra.weight"] = torch.ones(1)
    del weights["conv1.bias"]

    with pytest.raises(zooload.IncompatibleStateDictError) as caught:
        zooload.load_into(model, weights)

    assert tensors_equal(_snapshot(model), before)
    report = caught.value.report
    assert report.missing == ("conv1.bias",)
    assert report.unexpected == ("extra.weight",)
    assert report.mismatched["fc.weight"] == ((5, 8), (10, 8))
    assert "on_shape_mismatch='skip'" in str(caught.value)


def test_load_into_shape_error_refuses_even_when_not_strict() -> None:
    model = _trained(1)
    before = _snapshot(model)
    with pytest.raises(
        zooload.IncompatibleStateDictError, match=r"fc\.weight: checkpoint \[5, 8\]"
    ):
        zooload.load_into(
            model, dict(_trained(0, classes=5).state_dict()), strict=False
        )
    assert tensors_equal(_snapshot(model), before)


def test_load_into_non_strict_matching_nothing_names_the_prefixes() -> None:
    weights = {f"encoder.{k}": v for k, v in _trained().state_dict().items()}
    weights = {k.replace("conv", "stage"): v for k, v in weights.items()}
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(3, 3)
    model.head = torch.nn.Linear(3, 1)
    with pytest.raises(
        zooload.StateDictError, match=r"start with 'encoder\.'"
    ) as caught:
        zooload.load_into(model, weights, strict=False)
    assert "none of the 11 checkpoint tensors" in str(caught.value)


def test_load_into_suggests_the_closest_same_shaped_name() -> None:
    source = _trained()
    weights = dict(source.state_dict())
    weights["classifier.weight"] = weights.pop("fc.weight")
    weights["classifier.bias"] = weights.pop("fc.bias")
    with pytest.raises(zooload.IncompatibleStateDictError) as caught:
        zooload.load_into(_trained(1), weights)
    message = str(caught.value)
    assert (
        "'fc.weight' is missing and 'classifier.weight' has its shape [10, 8]"
        in message
    )
    assert r"(r'^classifier\.weight$', 'fc.weight')" in message


def test_load_into_records_every_cast() -> None:
    half = {
        k: v.half() if v.is_floating_point() else v
        for k, v in _trained().state_dict().items()
    }
    report = zooload.load_into(_trained(1), half)
    assert report.cast["fc.weight"] == ("float16", "float32")
    assert "bn.num_batches_tracked" not in report.cast
    narrow = _trained(1).half()
    report = zooload.load_into(narrow, dict(_trained().state_dict()))
    assert report.cast["conv1.weight"] == ("float32", "float16")
    assert "conv1.weight: float32 -> float16" in str(report)


def test_load_report_collapses_layer_indices() -> None:
    layers = torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(12)))
    report = zooload.load_into(layers, dict(layers.state_dict()))
    text = str(report)
    assert "{0..11}.weight" in text
    assert "{0..11}.bias" in text
    assert len(text.splitlines()) == 2


def test_load_into_rejects_an_unknown_shape_policy() -> None:
    with pytest.raises(zooload.ConfigError, match="'error', 'skip'"):
        zooload.load_into(
            _trained(), dict(_trained().state_dict()), on_shape_mismatch="ignore"
        )
