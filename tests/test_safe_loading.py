"""Opening a checkpoint or an LMDB shard never runs code from it (hip.safe_loading), while every
format hip reads still loads: real HORM entries, the embedded set, NumPy fields, checkpoints written
by train.py, the HIP authors' Lightning checkpoints with Hydra-config hyper-parameters.

Malicious files are made here: their unpickling would create a marker file. Each test first shows
that plain ``pickle.loads`` / ``torch.load(weights_only=False)`` does create it (the file is a real
attack), then that hip refuses the file with an error naming it and the global, and no marker exists.
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from helpers import HORM_SAMPLE, TINY_MODEL, authors_config, compose_train, our_checkpoint
from lightning.fabric.utilities.data import AttributeDict
from omegaconf import OmegaConf
from torch_geometric.data import Data

from hip import HIPEquiformerV2, load_checkpoint
from hip.data import HormDataError, HormDataset, store
from hip.data.store import close_shards, open_shard
from hip.model.checkpoints import CheckpointError, read_checkpoint
from hip.safe_loading import RefusedGlobalError, safe_loads
from hip.training import HIPModule

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "data" / "embedded"


class CreatesFile:
    """Unpickles to ``open(path, "w")``: the file appears if and only if the pickle ran code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class StorageStream:
    """Pickles as ``torch.storage._load_from_bytes(stream)``: the nested ``torch.save`` stream that
    every pickled tensor carries, here one holding ``payload``."""

    def __init__(self, payload):
        buffer = io.BytesIO()
        torch.save(payload, buffer, _use_new_zipfile_serialization=False)
        self.stream = buffer.getvalue()

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.stream,)


def assert_attack_is_real(raw: bytes, marker: Path) -> None:
    """Plain unpickling of ``raw`` creates ``marker`` (then removed): the file does run code."""
    assert not marker.exists()
    try:
        pickle.loads(raw)
    except Exception:  # the payload may fail after it ran: only the marker matters
        pass
    assert marker.exists()
    marker.unlink()


def write_lmdb(path: Path, values: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()
    return path


def raw_entries(path: Path) -> list[bytes]:
    """Every entry of a shard, as stored (the shard is closed again: lmdb opens a file once per process)."""
    with open_shard(path).begin() as txn:
        raws = [txn.get(str(i).encode()) for i in range(pickle.loads(txn.get(b"length")))]
    close_shards([path])
    return raws


def assert_same_data(got, expected) -> None:
    assert type(got) is type(expected) and sorted(got.keys()) == sorted(expected.keys())
    for key in expected.keys():
        assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key


# ------------------------------------------------------------------------------------ LMDB entries
@pytest.mark.parametrize("shard", [HORM_SAMPLE, EMBEDDED / "train.lmdb", EMBEDDED / "val.lmdb"],
                         ids=["horm_sample", "embedded_train", "embedded_val"])
def test_real_entries_read_as_pickle_reads_them(shard):
    if not shard.is_file():
        pytest.skip(f"{shard} not available")
    raws = raw_entries(shard)
    assert len(raws) >= 20
    for raw in raws:
        assert_same_data(safe_loads(raw), pickle.loads(raw))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_fields_read_as_pickle_reads_them(protocol):
    data = Data(pos=np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32), energy=np.float32(-7.5),
                natoms=np.int64(3), hessian=np.arange(81.0), rxn=torch.tensor(4))
    raw = pickle.dumps(data, protocol=protocol)
    got, expected = safe_loads(raw), pickle.loads(raw)
    for key in ("pos", "hessian"):
        np.testing.assert_array_equal(got[key], expected[key])
        assert got[key].dtype == expected[key].dtype
    assert got.energy == expected.energy and type(got.energy) is np.float32 and got.natoms == 3
    assert torch.equal(got.rxn, expected.rxn)


def test_malicious_entry_is_refused_by_the_dataset(tmp_path, caplog):
    marker = tmp_path / "ran"
    good = raw_entries(HORM_SAMPLE)[0] if HORM_SAMPLE.is_file() else pytest.skip("no HORM sample")
    evil = pickle.dumps(CreatesFile(marker))
    assert_attack_is_real(evil, marker)
    shard = write_lmdb(tmp_path / "evil.lmdb", {b"0": good, b"1": evil, b"length": pickle.dumps(2)})
    refused = r"evil\.lmdb key b'1': refused: .*'io\.open'"
    with pytest.raises(HormDataError, match=refused):
        HormDataset(shard)  # excluding F, it scans every entry at construction
    dataset = HormDataset(shard, exclude_elements=())  # reads on access
    assert dataset.read(0)["hessian"].numel() > 0
    with pytest.raises(HormDataError, match=refused):
        dataset[1]
    skipping = HormDataset(shard, skip_invalid=True)
    assert len(skipping) == 1 and "io.open" in skipping.skipped[0][-1]
    close_shards([shard])
    assert not marker.exists()


def test_malicious_tensor_storage_is_refused(tmp_path):
    """The nested stream of a pickled tensor, which torch itself unpickles with weights_only=False."""
    marker = tmp_path / "ran"
    evil = pickle.dumps(Data(pos=StorageStream(CreatesFile(marker))))
    assert_attack_is_real(evil, marker)
    with pytest.raises(RefusedGlobalError, match=r"'io\.open'.*tensor storage"):
        safe_loads(evil)
    zip_stream = StorageStream(torch.zeros(2))  # another format than tensor pickling writes
    buffer = io.BytesIO()
    torch.save(torch.zeros(2).untyped_storage(), buffer)
    zip_stream.stream = buffer.getvalue()
    with pytest.raises(pickle.UnpicklingError, match=r"not a legacy torch\.save stream"):
        safe_loads(pickle.dumps(zip_stream))
    assert not marker.exists()


def test_malicious_length_and_labeller_reads_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(CreatesFile(marker))
    assert_attack_is_real(evil, marker)
    shard = write_lmdb(tmp_path / "length.lmdb", {b"length": evil})
    with pytest.raises(HormDataError, match=r"length\.lmdb key b'length': refused: .*'io\.open'"):
        HormDataset(shard)
    close_shards([shard])
    labelled = write_lmdb(tmp_path / "labelled.lmdb", {b"0": evil, b"length": pickle.dumps(1)})
    assert store.shard_length(labelled) == 1
    with pytest.raises(HormDataError, match=r"labelled\.lmdb key b'0': refused: .*'io\.open'"):
        store.read_entry(labelled, 0)
    with pytest.raises(HormDataError, match=r"length\.lmdb key b'length': refused"):
        store.shard_length(shard)
    close_shards([shard, labelled])
    assert not marker.exists()


# ------------------------------------------------------------------------------------- checkpoints
def tiny_model() -> HIPEquiformerV2:
    torch.manual_seed(0)
    return HIPEquiformerV2(**TINY_MODEL).eval()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy_format"])
def test_malicious_checkpoint_is_refused_unless_trusted(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    model = tiny_model()
    torch.save(our_checkpoint(model, note=CreatesFile(marker)), path, _use_new_zipfile_serialization=not legacy)
    torch.load(path, weights_only=False)  # the attack is real
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "io.open" in message and "trusted=True" in message
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"io\.open"):  # the training door: a frozen run's backbone
        HIPModule(model=TINY_MODEL, mode="frozen", backbone_ckpt=str(path))
    assert not marker.exists()
    with pytest.warns(UserWarning, match="trusted=True"):
        loaded = load_checkpoint(path, trusted=True)  # the documented, unsafe switch does what it says
    assert marker.exists()
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_authors_lightning_checkpoint_with_hydra_configs_loads(tmp_path):
    """Their hyper-parameters are Hydra configs: OmegaConf containers whose root carries a filled
    resolver cache (Hydra's ${now:...}), which torch's weights-only unpickler cannot rebuild."""
    OmegaConf.register_new_resolver("hip_test_stamp", lambda: "2025-01-01", use_cache=True, replace=True)
    model = tiny_model()
    cfg = OmegaConf.create({"model": authors_config(model), "run_dir": "runs/${hip_test_stamp:}",
                            "training": {"trn_path": ["a.lmdb", "b.lmdb"], "lr": "${optimizer.lr}"},
                            "optimizer": {"lr": 5e-4, "betas": [0.9, 0.999]}})
    assert cfg.run_dir == "runs/2025-01-01" and cfg._metadata.resolver_cache  # filled, as in a Hydra run
    path = tmp_path / "hip_authors.ckpt"
    torch.save({"state_dict": {f"potential.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_config": cfg.model, "optimizer_config": dict(cfg.optimizer),
                                     "training_config": AttributeDict(cfg.training)},
                "hparams_name": "kwargs"}, path)
    with pytest.raises(pickle.UnpicklingError):  # why hip reads such files with its own restricted unpickler
        with torch.serialization.safe_globals([type(cfg), type(cfg._metadata.resolver_cache)]):
            torch.load(path, weights_only=True)
    config, _ = read_checkpoint(path)
    assert config == model.config and type(config["max_radius"]) is float  # plain values, resolved
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


@dataclass
class RunSettings:
    lr: float = 5e-4


def test_checkpoint_naming_an_unlisted_config_class_is_refused(tmp_path):
    """OmegaConf containers are allowed, the class a structured config points to is not."""
    path = tmp_path / "structured.ckpt"
    torch.save({**our_checkpoint(tiny_model()), "extra": OmegaConf.structured(RunSettings)}, path)
    with pytest.raises(CheckpointError, match=r"refused: the file names .*test_safe_loading\.RunSettings"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, horm_sample_path):
    """A run directory written by train.py (HIPModule + Lightning + the project's callbacks)."""
    from train import train

    out = tmp_path_factory.mktemp("run")
    train(compose_train(out, ["experiment=hip_e2e", "model=tiny", "data.train_indices=[0,1]",
                              "data.val_indices=[80]", "trainer.max_epochs=1", "trainer.max_steps=-1",
                              "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]))
    return out / "checkpoints"


@pytest.mark.slow
def test_checkpoints_written_by_train_py_need_no_allowance(trained_run):
    files = sorted(trained_run.glob("*.ckpt"))
    assert {f.name for f in files} >= {"last.ckpt"} and len(files) == 2
    for path in files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        checkpoint = torch.load(path, weights_only=True)  # torch's own restriction, nothing added
        assert {"hyper_parameters", "datamodule_hyper_parameters", "callbacks", "loops", "rng_states",
                "optimizer_states"} <= set(checkpoint)
        model = load_checkpoint(path)
        assert model.config == checkpoint["hyper_parameters"]["model"]


@pytest.mark.parametrize("path", sorted((REPO / "ckpt").glob("*.ckpt")), ids=lambda p: p.name)
def test_shipped_checkpoints_need_no_allowance(path):
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    weights = torch.load(path, weights_only=True)["state_dict"]
    with warnings.catch_warnings():  # a backbone-only file warns that its Hessian head is untrained
        warnings.simplefilter("ignore", UserWarning)
        model = load_checkpoint(path)
    loaded = model.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(loaded[key.removeprefix("model.")], value)
