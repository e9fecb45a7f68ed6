"""The public surface is exactly what ``__all__`` names."""

from __future__ import annotations

import inspect

import zooload
import zooload.errors


def test_public_api_all_lists_every_public_name() -> None:
    public = {
        name
        for name, value in vars(zooload).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(zooload.__all__) - {"__version__", "zoo"} == public


def test_public_api_every_function_has_a_docstring_with_an_example() -> None:
    for name in zooload.__all__:
        value = getattr(zooload, name)
        if inspect.isfunction(value):
            assert value.__doc__, name
            assert "Examples" in value.__doc__, name


def test_public_api_every_error_descends_from_the_root() -> None:
    for name in zooload.errors.__all__:
        error = getattr(zooload.errors, name)
        assert issubclass(error, zooload.ZooloadError), name
        assert getattr(zooload, name) is error
