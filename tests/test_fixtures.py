"""The shared test fixtures describe what the repository's files say (no copies that could drift)."""

from __future__ import annotations

import inspect

from helpers import CONFIGS
from omegaconf import OmegaConf

from hip import HIPEquiformerV2


def read_model_yaml(name: str) -> dict:
    """``model`` node of configs/model/<name>.yaml read with OmegaConf.load, the files of its defaults list
    merged in order by hand (``_self_`` last unless placed), independent of Hydra."""
    own = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    entries = list(own.get("defaults", []))
    merged = {}
    for entry in entries if "_self_" in entries else [*entries, "_self_"]:
        part = OmegaConf.to_container(own.model, resolve=True) if entry == "_self_" else read_model_yaml(entry)
        merged = {**merged, **part}
    return merged


def test_tiny_model_fixture_is_configs_model_tiny_yaml(tiny_model_config):
    expected = read_model_yaml("tiny")
    assert tiny_model_config == expected
    assert expected["num_layers"] == 1 and expected["sphere_channels"] == 8  # the tiny file, not the base
    parameters = set(inspect.signature(HIPEquiformerV2.__init__).parameters) - {"self"}
    assert set(expected) == parameters  # the file sets every argument: no constructor default decides
    assert HIPEquiformerV2(**tiny_model_config).config == expected
