"""The shared TensorRT stand-in (``tests/fake_tensorrt.py``) offers only TensorRT's real API."""

from __future__ import annotations

import types

import pytest

from fake_tensorrt import FakeTensorRT
from trt_stubs import stub_api


@pytest.mark.parametrize("version", ["8.6.1", "10.8.0.43", "10.13.0.35", "11.4.0.106"])
def test_the_fake_offers_only_the_real_api(version: str) -> None:
    """Each class, method, property, class attribute and enum member of the stand-in exists under the
    same name in tensorrt-stubs (10.13, the builder's API); a misspelt or invented one fails here."""
    try:
        api = stub_api()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    module = FakeTensorRT(version).module
    invented = []
    for name, value in vars(module).items():
        if name.startswith("__"):
            continue
        if name not in api[""]:
            invented.append(name)
        elif isinstance(value, type):
            invented += [f"{name}.{attr}" for attr in vars(value)
                         if not attr.startswith("_") and attr not in api[name]]
        elif isinstance(value, types.SimpleNamespace):
            invented += [f"{name}.{member}" for member in vars(value) if member not in api[name]]
    assert not invented, f"not in tensorrt-stubs: {invented}"
    assert {"Builder", "OnnxParser", "Runtime", "ICudaEngine", "IExecutionContext"} <= set(vars(module))


def test_the_check_would_catch_an_invented_name() -> None:
    try:
        api = stub_api()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert "build_serialized_network" in api["Builder"] and "build_engine" not in api["Builder"]
    assert "WARNING" in api["Logger"] and "STRONGLY_TYPED" in api["NetworkDefinitionCreationFlag"]
