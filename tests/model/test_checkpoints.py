"""Checkpoint formats: ours (round trip), the HIP authors' names, HORM's backbone-only, and errors."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, our_checkpoint

from hip import HIPEquiformerV2, collate_molecules, load_checkpoint
from hip.model.checkpoints import (
    AUTHORS_GRAPH_DEFAULTS,
    GRAPH_KEYS,
    RADIAL_BUFFERS,
    CheckpointError,
    is_hessian_key,
    load_backbone,
    load_backbone_weights,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / ".." / "shared" / "reference"


def authors_checkpoint(num_layers_hessian: int) -> tuple[dict, dict, set]:
    """A state dict with the names, shapes and dtypes of the authors' paper-size model, its config,
    and the names that are parameters (not buffers)."""
    path = REFERENCE / f"hip_eqv2_state_dict_layers_hessian_{num_layers_hessian}.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    lines = path.read_text().splitlines()
    config = ast.literal_eval(next(line for line in lines if line.startswith("# config:")).split(":", 1)[1])
    generator = torch.Generator().manual_seed(0)
    state, parameters = {}, set()
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        name, shape, dtype, _, kind = line.split("\t")
        if kind == "param":
            parameters.add(name)
        shape, dtype = ast.literal_eval(shape), getattr(torch, dtype)
        state[name] = (torch.randn(shape, generator=generator).to(dtype) if dtype.is_floating_point
                       else torch.zeros(shape, dtype=dtype))
    # the radial bases are fixed by the cutoffs: 600 Gaussian centres on [0, cutoff] (fairchem's smearing)
    for key, buffer in RADIAL_BUFFERS.items():
        state[buffer] = torch.linspace(0.0, config[key], state[buffer].numel())
    return state, config, parameters


def test_our_checkpoint_round_trip(tmp_path, horm_molecules):
    torch.manual_seed(0)
    model = HIPEquiformerV2(**TINY_MODEL).eval()
    path = tmp_path / "ours.ckpt"
    torch.save(our_checkpoint(model), path)
    loaded = load_checkpoint(path)
    assert not loaded.training
    batch = collate_molecules(horm_molecules, model.graph_builder())
    torch.manual_seed(1)
    expected = model(batch)
    torch.manual_seed(1)
    got = loaded(batch)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


@pytest.mark.parametrize("fmt", ["lightning", "plain"])
@pytest.mark.slow
def test_authors_checkpoint_loads_by_name(tmp_path, fmt):
    state, config, parameters = authors_checkpoint(1)
    path = tmp_path / "hip_authors.ckpt"
    if fmt == "lightning":
        torch.save({"state_dict": {f"potential.{k}": v for k, v in state.items()},
                    "hyper_parameters": {"model_config": config}}, path)
    else:
        torch.save({"state_dict": state, "config": config}, path)
    model = load_checkpoint(path)
    assert model.config["num_layers_hessian"] == 1 and model.config["energy_normalizer"] == "batch_mean"
    assert sum(state[k].numel() for k in parameters) == 19_439_365  # the reference's count
    assert sum(p.numel() for p in model.parameters()) == sum(
        state[k].numel() for k in parameters if not k.startswith("edge_degree_embedding_hessian."))
    for name in ("hessian_node_proj.weight", "blocks.3.ffn.so3_linear_2.weight", "force_block.alpha_dot"):
        torch.testing.assert_close(model.state_dict()[name], state[name])


@pytest.mark.slow
def test_horm_backbone_checkpoint_warns_hessian_untrained(tmp_path):
    state, config, _ = authors_checkpoint(1)
    hessian_prefixes = ("hessian", "edge_degree_embedding_hessian", "SO3_rotation_hessian",
                        "distance_expansion_hessian")
    state = {k: v for k, v in state.items() if not k.startswith(hessian_prefixes)}
    config = {k: v for k, v in config.items() if "hessian" not in k} | {"avg_num_nodes": 77.81317}
    path = tmp_path / "eqv2.ckpt"
    torch.save({"state_dict": {f"potential.{k}": v for k, v in state.items()},
                "hyper_parameters": {"model_config": config}}, path)
    with pytest.warns(UserWarning, match="untrained"):
        model = load_checkpoint(path)
    assert model.config["energy_normalizer"] == 77.81317


def test_mismatched_checkpoint_lists_keys(tmp_path):
    state, config, _ = authors_checkpoint(1)
    state.pop("blocks.0.ga.alpha_dot")
    state["blocks.9.extra.weight"] = torch.zeros(2)
    state["norm.norm_l0.weight"] = torch.zeros(7)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state, "config": config}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message
    for expected in ("missing (1): blocks.0.ga.alpha_dot", "unexpected (1): blocks.9.extra.weight",
                     "norm.norm_l0.weight: checkpoint (7,) vs model (128,)"):
        assert expected in message


def test_missing_file_and_unknown_config(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")
    state, config, _ = authors_checkpoint(1)
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": state, "config": config | {"sphere_chanels": 3}}, path)
    with pytest.raises(CheckpointError, match="sphere_chanels"):
        load_checkpoint(path)
    torch.save({"weights": state}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(path)


def unreadable(kind: str, tmp_path: Path) -> Path:
    """A file (or folder) that is not a loadable checkpoint, of the kind a user might pass by mistake."""
    path = tmp_path / f"{kind}.ckpt"
    model = HIPEquiformerV2(**TINY_MODEL)
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    if kind == "text":
        path.write_text((REPO / "README.md").read_text())
    elif kind in ("truncated", "truncated_legacy"):
        torch.save({"state_dict": weights, "hyper_parameters": {"model": model.config}}, path,
                   _use_new_zipfile_serialization=kind == "truncated")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "empty":
        path.touch()
    elif kind == "directory":
        path.mkdir()
    elif kind == "no_weights":
        torch.save({"state_dict": {}, "hyper_parameters": {"model": model.config}}, path)
    elif kind == "weights_not_tensors":
        torch.save({"state_dict": {k: v.tolist() for k, v in weights.items()}, "hyper_parameters": {}}, path)
    elif kind == "bare_tensor":
        torch.save(torch.zeros(3), path)
    return path


UNREADABLE = {"text": "not a readable PyTorch checkpoint", "truncated": "not a readable PyTorch checkpoint",
              "truncated_legacy": "not a readable PyTorch checkpoint",
              "random_bytes": "not a readable PyTorch checkpoint", "empty": "not a readable PyTorch checkpoint",
              "directory": "is a directory; expected a checkpoint file", "no_weights": "holds no weights",
              "weights_not_tensors": "holds no weights", "bare_tensor": "not a checkpoint"}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_unreadable_checkpoint_names_file_and_what_was_expected(tmp_path, kind):
    path = unreadable(kind, tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(str(path)) and UNREADABLE[kind] in message and "expected" in message


@pytest.mark.slow
def test_eval_py_reports_an_unreadable_checkpoint_without_traceback(tmp_path):
    """The command of issue 11, as a user runs it (a subprocess: Hydra finds its configs from the script)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(REPO / "eval.py"), "ckpt_path=README.md",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "README.md: not a readable PyTorch checkpoint" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout


#: Graph settings no default has (Å, count, Å), to see that a loaded model takes the checkpoint's.
ODD_GRAPHS = {"max_radius": 4.5, "max_neighbors": 7, "cutoff_hessian": 33.0}


def authors_config(config: dict) -> dict:
    """Our model kwargs under the HIP authors' names (``lmax_list``, ``avg_num_nodes`` ...)."""
    renamed = {"lmax": "lmax_list", "mmax": "mmax_list", "energy_normalizer": "avg_num_nodes"}
    out = {renamed.get(k, k): ([v] if k in ("lmax", "mmax") else v) for k, v in config.items()}
    return out | {"name": "EquiformerV2", "use_pbc": False, "otf_graph": True, "hessian_no_attn_weights": True}


def save_in_format(path: Path, fmt: str, drop: tuple[str, ...] = ()) -> dict:
    """A tiny model with :data:`ODD_GRAPHS` saved in format ``fmt`` of hip.model.checkpoints, its stored
    config without the keys ``drop``; returns the model's config."""
    torch.manual_seed(0)
    model = HIPEquiformerV2(**TINY_MODEL | ODD_GRAPHS)
    state = model.state_dict()
    if fmt == "ours":
        config = {k: v for k, v in model.config.items() if k not in drop}
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "hyper_parameters": {"model": config}},
                   path)
        return model.config
    config = {k: v for k, v in authors_config(model.config).items() if k not in drop}
    if fmt == "horm":  # HORM's eqv2.ckpt: no Hessian readout, no Hessian settings
        state = {k: v for k, v in state.items() if not is_hessian_key(k)}
        config = {k: v for k, v in config.items() if "hessian" not in k}
    if fmt == "plain":
        torch.save({"state_dict": state, "config": config}, path)
    else:
        torch.save({"state_dict": {f"potential.{k}": v for k, v in state.items()},
                    "hyper_parameters": {"model_config": config, "lr": 1e-3}}, path)
    return model.config


def graphs_of(model) -> tuple:
    builder = model.graph_builder()
    assert (builder.cutoff, builder.max_neighbors, builder.cutoff_hessian) == (
        model.max_radius, model.max_neighbors, model.cutoff_hessian)
    return model.max_radius, model.max_neighbors, model.cutoff_hessian


@pytest.mark.parametrize("fmt", ["ours", "authors", "plain", "horm"])
def test_each_format_brings_its_own_cutoffs_and_cap(tmp_path, fmt):
    """Loading gives the stored cutoffs and neighbour cap, never hip's defaults (12 Å, 32, 12 Å), in the
    model and the graphs it builds; so does a frozen backbone (its readout cutoff the run's)."""
    path = tmp_path / f"{fmt}.ckpt"
    save_in_format(path, fmt)
    expected = tuple(ODD_GRAPHS.values())
    if fmt == "horm":
        # no Hessian readout stored: its cutoff is the authors' constructor default
        expected = (*expected[:2], AUTHORS_GRAPH_DEFAULTS["cutoff_hessian"])
        with pytest.warns(UserWarning, match="untrained"):
            model = load_checkpoint(path)
    else:
        model = load_checkpoint(path)
    assert graphs_of(model) == expected
    backbone = load_backbone(path, cutoff_hessian=21.0, num_layers_hessian=1)
    assert graphs_of(backbone) == (*expected[:2], 21.0)


@pytest.mark.parametrize("fmt", ["authors", "plain"])
def test_authors_config_without_graph_settings(tmp_path, fmt):
    """The authors' config without the cutoffs: read from the stored radial bases; without the cap: their
    constructor's default, as their model had."""
    save_in_format(tmp_path / "a.ckpt", fmt, drop=GRAPH_KEYS)
    model = load_checkpoint(tmp_path / "a.ckpt")
    assert graphs_of(model) == (4.5, AUTHORS_GRAPH_DEFAULTS["max_neighbors"], 33.0)


def test_our_checkpoint_must_state_its_neighbour_cap(tmp_path):
    save_in_format(tmp_path / "ours.ckpt", "ours", drop=("max_neighbors", "cutoff_hessian"))
    with pytest.raises(CheckpointError, match=r"ours\.ckpt.*does not give max_neighbors; a checkpoint must bring"):
        load_checkpoint(tmp_path / "ours.ckpt")
    save_in_format(tmp_path / "ours.ckpt", "ours", drop=("max_radius", "cutoff_hessian"))
    assert graphs_of(load_checkpoint(tmp_path / "ours.ckpt")) == (4.5, 7, 33.0)  # cutoffs from the radial bases


def test_cutoff_that_contradicts_the_stored_radial_basis_is_refused(tmp_path):
    """A config or override whose cutoff is not the one the weights' radial basis was built with."""
    config = save_in_format(tmp_path / "ours.ckpt", "ours")
    checkpoint = torch.load(tmp_path / "ours.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["model"] = config | {"cutoff_hessian": 12.0}
    torch.save(checkpoint, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match=r"distance_expansion_hessian\.offset spans \[0, 33\] Å but the model "
                                              r"has cutoff_hessian=12\.0"):
        load_checkpoint(tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match=r"distance_expansion\.offset spans \[0, 4\.5\] Å"):
        load_checkpoint(tmp_path / "ours.ckpt", max_radius=12.0)
    # an end-to-end model initialised from a backbone must use the backbone's cutoff
    with pytest.raises(CheckpointError, match=r"max_radius=12\.0 Å"):
        load_backbone_weights(HIPEquiformerV2(**TINY_MODEL | ODD_GRAPHS | {"max_radius": 12.0}), tmp_path / "ours.ckpt")
