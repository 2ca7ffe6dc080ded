"""Helpers shared by the test modules (plain functions; the fixtures are in conftest.py).

The tiny test model is composed from ``configs/model/tiny.yaml`` exactly as ``train.py model=tiny``
composes it, so the tests run the model that the config file describes.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from pathlib import Path

import lmdb
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from hip import HIPEquiformerV2

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCRIPTS = ROOT / "scripts"

#: The real 100-molecule HORM shard, read in place (``../shared/horm`` next to the repository).
HORM_SAMPLE = Path(os.environ.get("HIP_HORM_SAMPLE", ROOT.parent / "shared" / "horm" / "sample_100.lmdb"))


def compose_model(name: str) -> dict:
    """The ``HIPEquiformerV2`` keyword arguments of ``configs/model/<name>.yaml`` (its ``model`` node after
    the file's defaults list, resolved), composed by Hydra as ``train.py model=<name>`` does."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(overrides=[f"+model={name}"])
    return OmegaConf.to_container(cfg.model.model, resolve=True)


#: A tiny HIP-EquiformerV2 for tests (configs/model/tiny.yaml).
TINY_MODEL = compose_model("tiny")


def read_horm_entries(indices) -> list:
    """Raw pickled HORM entries of the sample shard (independent of hip's dataset code)."""
    env = lmdb.open(str(HORM_SAMPLE), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        entries = [pickle.loads(txn.get(str(i).encode())) for i in indices]
    env.close()
    return entries


def our_checkpoint(model, **hyper_parameters) -> dict:
    """``model`` in our Lightning format: ``model.``-prefixed weights, its kwargs in
    ``hyper_parameters["model"]`` (plus any ``hyper_parameters`` given)."""
    return {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model": model.config, **hyper_parameters}}


def write_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Save a tiny model initialised from ``seed`` in our format at ``path`` (what train.py's ModelCheckpoint
    writes, and a frozen run's backbone); returns ``path``."""
    torch.manual_seed(seed)
    torch.save(our_checkpoint(HIPEquiformerV2(**TINY_MODEL)), path)
    return path


def compose_train(tmp_path: Path, overrides: list[str]):
    """train.py's config for a 4 + 2 molecule run of the tiny model on the HORM sample, writing into
    ``tmp_path`` (Hydra's runtime config set as ``@hydra.main`` would), with ``overrides`` last."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=tiny", "data=horm_sample", "data.train_indices=[0,1,2,3]", "data.val_indices=[80,81]",
            "data.batch_size=2", "logger=none", "evaluate=false", f"paths.log_dir={tmp_path}", *overrides,
        ], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
    return cfg


def load_script(name: str, folder: Path = SCRIPTS):
    """Import ``<folder>/<name>.py`` (default: scripts/) as module ``name``, with the folder on ``sys.path``
    as when run as ``python scripts/<name>.py``, and registered in ``sys.modules`` (dataclasses look their
    module up there)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def periodic_water(vacuum: float):
    """ASE water in a cubic cell with ``vacuum`` Å around it, periodic in x, y and z."""
    atoms = molecule("H2O", vacuum=vacuum)
    atoms.pbc = True
    return atoms


def authors_config(model: HIPEquiformerV2) -> dict:
    """``model.config`` in the HIP authors' names (lmax_list, mmax_list, avg_num_nodes)."""
    config = dict(model.config)
    config["lmax_list"], config["mmax_list"] = [config.pop("lmax")], [config.pop("mmax")]
    config["avg_num_nodes"] = config.pop("energy_normalizer")
    return {"name": "EquiformerV2", **config}


def hcn_and_hnc() -> tuple[Atoms, Atoms]:
    """HCN and HNC, linear, atoms in the order H, C, N."""
    return (Atoms("HCN", positions=[[0, 0, -1.07], [0, 0, 0], [0, 0, 1.16]]),
            Atoms("HCN", positions=[[0, 0, 2.17], [0, 0, 0], [0, 0, 1.17]]))


def double_well_energy(x: torch.Tensor, k: float, r0: float, h: float, c: float, w: float) -> torch.Tensor:
    """Energy (eV) of three atoms at flat positions ``x`` [9] Å: harmonic bonds 1–2 and 2–3 (``k`` eV/Å²,
    length ``r0`` Å) and a double well ``h·((r13 − c)²/w² − 1)²`` in the 1–3 distance: minima at c ± w,
    a first-order saddle at r13 = c, ``h`` eV above them."""
    p = x.reshape(3, 3)
    r12, r23, r13 = (p[0] - p[1]).norm(), (p[1] - p[2]).norm(), (p[0] - p[2]).norm()
    return 0.5 * k * ((r12 - r0) ** 2 + (r23 - r0) ** 2) + h * ((r13 - c) ** 2 / w**2 - 1) ** 2


class DoubleWell(Calculator):
    """:func:`double_well_energy` as an ASE calculator with an exact ``get_hessian`` (torch autograd,
    float64): a two-minimum surface whose saddle, IRC and frequencies are known."""

    implemented_properties = ["energy", "forces", "hessian"]  # noqa: RUF012

    def __init__(self, k: float, r0: float, h: float, c: float, w: float, **kwargs):
        super().__init__(**kwargs)
        self.surface = (k, r0, h, c, w)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return double_well_energy(x, *self.surface)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = torch.tensor(self.atoms.positions.reshape(-1), dtype=torch.float64, requires_grad=True)
        energy = self.energy(x)
        (grad,) = torch.autograd.grad(energy, x)
        self.results = {"energy": float(energy.detach()), "forces": -grad.numpy().reshape(3, 3),
                        "hessian": torch.autograd.functional.hessian(self.energy, x.detach()).numpy()}

    def get_hessian(self, atoms=None):
        return self.get_property("hessian", atoms)
