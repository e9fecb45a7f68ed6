"""Unit tests for zooload.architectures: building modules without parameters."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from zooload.architectures import (
    build_without_parameters,
    load_code_architecture,
    resolve_architecture,
)
from zooload.errors import ConfigError


def test_build_without_parameters_keeps_parameters_already_on_meta() -> None:
    made: list[nn.Parameter] = []

    def factory() -> nn.Module:
        module = nn.Module()
        module.gain = nn.Parameter(torch.empty(3, device="meta"))
        made.append(module.gain)
        return module

    module = build_without_parameters(factory, {})

    # The very parameter the factory made, not a meta copy of it.
    assert module.gain is made[0]
    assert module.gain.is_meta
    assert module.gain.shape == (3,)


def test_build_without_parameters_leaves_other_threads_alone() -> None:
    other: dict[str, torch.Tensor] = {}

    def build_elsewhere() -> None:
        other["weight"] = nn.Linear(2, 1).weight

    def factory() -> nn.Module:
        # Another thread builds a module while this build's hook is in place.
        thread = threading.Thread(target=build_elsewhere)
        thread.start()
        thread.join()
        return nn.Linear(2, 1)

    module = build_without_parameters(factory, {})

    assert module.weight.is_meta
    assert other["weight"].device.type == "cpu"
    assert other["weight"].shape == (1, 2)
    # Once the build is over, this thread builds real parameters again.
    assert not nn.Linear(2, 1).weight.is_meta


# -- architectures shipped as code ---------------------------------------------------


def test_load_code_architecture_registers_the_factory_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model.py"
    path.write_text(
        "import torch\n"
        "class Net(torch.nn.Linear):\n"
        "    def __init__(self):\n"
        "        super().__init__(2, 1)\n"
    )
    caplog.set_level(logging.WARNING, logger="zooload")

    factory = load_code_architecture(path, "Net")

    assert factory.__name__ == "Net"
    assert build_without_parameters(factory, {}).weight.shape == (1, 2)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"imported architecture Net from {path} (trust_code=True)")
    ]
    registered = f"{factory.__module__}.Net"
    assert factory.__module__.startswith("zooload_code_")
    assert resolve_architecture(registered) is factory


@pytest.mark.parametrize(
    "source", ["import torch\n", "Net = 3\n"], ids=["absent", "not-callable"]
)
def test_load_code_architecture_without_the_named_factory_raises(
    tmp_path: Path, source: str
) -> None:
    path = tmp_path / "model.py"
    path.write_text(source)

    with pytest.raises(
        ConfigError,
        match=re.escape(
            "model.py defines no class or function 'Net'; fix architecture.name in "
            "the manifest."
        ),
    ):
        load_code_architecture(path, "Net")


def test_load_code_architecture_refuses_a_file_that_is_not_python(
    tmp_path: Path,
) -> None:
    path = tmp_path / "model.txt"
    path.write_text("Net = None\n")

    with pytest.raises(
        ConfigError,
        match=re.escape(f"cannot import {path}; ship the architecture as a .py file."),
    ):
        load_code_architecture(path, "Net")
