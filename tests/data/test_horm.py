"""HormDataset on the real sample shard and on small corrupt shards built from it."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import lmdb
import pytest
import torch
from helpers import HORM_SAMPLE
from torch.utils.data import DataLoader

from hip.data import GraphBuilder, HormDataError, HormDataset, collate, split_hessian
from hip.data import horm as horm_module
from hip.data.horm import close_shards, open_shard

SAMPLE = HORM_SAMPLE
pytestmark = pytest.mark.skipif(not SAMPLE.is_file(), reason=f"HORM sample shard {SAMPLE} not available")


def sample_entries(n: int, start: int = 0) -> list:
    """The first n pickled Data entries of the sample shard, unpickled."""
    with open_shard(SAMPLE).begin() as txn:  # the process's shared environment: lmdb opens a file once
        return [pickle.loads(txn.get(str(i).encode())) for i in range(start, start + n)]


def write_shard(path: Path, values: list, length: object | None = None, write_length: bool = True) -> Path:
    """A HORM-format shard: values[i] under key b"i" (Data objects are pickled, bytes written as is,
    None leaves the key out), plus b"length" (default len(values))."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for i, value in enumerate(values):
            if value is not None:
                txn.put(str(i).encode(), value if isinstance(value, bytes) else pickle.dumps(value))
        if write_length:
            txn.put(b"length", pickle.dumps(len(values) if length is None else length))
    env.close()
    return path


def with_fluorine(data):
    """Turn the first H of a sample entry into F (geometry left as is)."""
    data = data.clone()
    row = int((data.charges == 1).nonzero()[0, 0])
    data.one_hot[row] = torch.tensor([0.0, 0, 0, 0, 1])
    data.charges[row] = 9
    return data


# ------------------------------------------------------------------------------------ real shard
@pytest.fixture(scope="module")
def sample_dataset():
    return HormDataset(SAMPLE, GraphBuilder(cutoff=12.0, max_neighbors=20, cutoff_hessian=12.0))


def test_sample_shard_length_and_labels(sample_dataset):
    assert len(sample_dataset) == 100  # no F in the sample shard
    assert sample_dataset.num_excluded == 0 and sample_dataset.skipped == []
    raw = sample_entries(3)
    for i in range(3):
        g = sample_dataset[i]
        assert g.dataset_idx.item() == i
        assert torch.equal(g.z, raw[i].charges.long())
        assert torch.equal(g.pos, raw[i].pos.to(torch.get_default_dtype()))
        # labels keep HORM's units and values
        assert torch.equal(g.hessian, raw[i].hessian.reshape(-1).to(torch.get_default_dtype()))
        assert torch.equal(g.forces, raw[i].forces.to(torch.get_default_dtype()))
        assert g.energy.shape == () and g.energy.item() == pytest.approx(raw[i].energy.item())
        assert g.ae.item() == pytest.approx(raw[i].ae.item())
        assert -10000 < g.energy.item() < -1000  # eV
    assert sample_dataset.locate(5) == (SAMPLE, b"5", 5)


def test_sample_batch_of_8_shapes(sample_dataset):
    batch = next(iter(DataLoader(sample_dataset, batch_size=8, collate_fn=collate)))
    raw = sample_entries(8)
    n = torch.tensor([int(d.natoms) for d in raw])
    n_sum, n_hess = int(n.sum()), int((9 * n**2).sum())
    assert len(set(n.tolist())) > 1  # molecules of different sizes
    assert batch.num_graphs == 8
    assert batch.pos.shape == (n_sum, 3)
    assert batch.z.shape == (n_sum,) and batch.z.dtype == torch.long
    assert torch.equal(batch.z, torch.cat([d.charges.long() for d in raw]))
    assert torch.equal(batch.natoms, n)
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(8), n))
    assert batch.energy.shape == (8,) and batch.ae.shape == (8,)
    assert batch.forces.shape == (n_sum, 3)
    assert batch.hessian.shape == (n_hess,)
    assert torch.equal(batch.dataset_idx, torch.arange(8))
    for key in ("edge_index", "edge_index_hessian"):
        ei = getattr(batch, key)
        assert ei.shape[0] == 2 and ei.dtype == torch.long
        assert ei.min() >= 0 and ei.max() < n_sum
        assert torch.equal(batch.batch[ei[0]], batch.batch[ei[1]])  # no edge crosses molecules
    assert (torch.bincount(batch.edge_index[1], minlength=n_sum) <= 20).all()
    e_h = batch.edge_index_hessian.shape[1]
    assert e_h == int((n * (n - 1)).sum())  # these molecules fit in 12 Å: complete Hessian graphs
    assert batch.hessian_edge_scatter.shape == (2, 9 * e_h)
    assert batch.hessian_node_scatter.shape == (2, 9 * n_sum)
    # every flat Hessian position is covered exactly once by the direct halves of the indices
    direct = torch.cat([batch.hessian_edge_scatter[0], batch.hessian_node_scatter[0]])
    assert torch.equal(direct.sort().values, torch.arange(n_hess))
    for h, d in zip(split_hessian(batch.hessian, batch.natoms), raw, strict=True):
        assert torch.equal(h, d.hessian.view(h.shape).to(h.dtype))


def test_dataloader_with_two_workers(sample_dataset):
    sample_dataset[0]  # this process opens its environment first; workers must open their own
    loader = DataLoader(sample_dataset, batch_size=8, num_workers=2, collate_fn=collate)
    seen = torch.cat([b.dataset_idx for b in loader])
    assert torch.equal(seen, torch.arange(100))
    clone = pickle.loads(pickle.dumps(sample_dataset))  # environments are not pickled
    assert torch.equal(clone[3].hessian, sample_dataset[3].hessian)


# ------------------------------------------------------------------------------- shard handling
def test_directory_of_shards_and_indices(tmp_path):
    entries = sample_entries(6)
    write_shard(tmp_path / "b.lmdb", entries[3:])
    write_shard(tmp_path / "a.lmdb", entries[:3])
    ds = HormDataset(tmp_path, exclude_elements=())
    assert ds.shards == [tmp_path / "a.lmdb", tmp_path / "b.lmdb"] and len(ds) == 6
    assert ds.locate(4) == (tmp_path / "b.lmdb", b"1", 4)
    assert torch.equal(ds[4].hessian, entries[4].hessian)
    subset = HormDataset(tmp_path, indices=[4, 1, 4])
    assert [int(subset[i].dataset_idx) for i in range(3)] == [4, 1, 4]
    with pytest.raises(HormDataError, match="out of range"):
        HormDataset(tmp_path, indices=[6])


def test_element_filter(tmp_path):
    entries = sample_entries(4)
    entries[2] = with_fluorine(entries[2])
    shard = write_shard(tmp_path / "f.lmdb", entries)
    ds = HormDataset(shard)
    assert len(ds) == 3 and ds.num_excluded == 1
    assert [int(ds[i].dataset_idx) for i in range(3)] == [0, 1, 3]
    kept = HormDataset(shard, exclude_elements=())
    assert len(kept) == 4 and 9 in kept[2].z.tolist()


def test_scan_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(horm_module, "CACHE_MIN_ENTRIES", 0)
    entries = sample_entries(5)
    entries[1] = with_fluorine(entries[1])
    entries[3] = b"garbage"
    shard = write_shard(tmp_path / "s.lmdb", entries)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="hip.data.horm"):
        first = HormDataset(shard, skip_invalid=True, cache_dir=cache)
        assert len(list(cache.glob("s-*.npz"))) == 1
        caplog.clear()
        second = HormDataset(shard, skip_invalid=True, cache_dir=cache)
    assert "read from cache" in caplog.text
    assert "b'3'" in caplog.text  # skips are logged again when read from the cache
    assert first.index.tolist() == second.index.tolist() == [0, 2, 4]
    assert second.skipped == first.skipped and second.num_excluded == 1
    # without skip_invalid the cached invalid entry raises, if it is selected
    with pytest.raises(HormDataError, match=r"s\.lmdb key b'3': entry cannot be unpickled"):
        HormDataset(shard, cache_dir=cache)
    assert len(HormDataset(shard, indices=[0, 1, 2], cache_dir=cache)) == 2
    # another setting or a changed shard gets its own scan
    assert len(HormDataset(shard, exclude_elements=(), skip_invalid=True, cache_dir=cache)) == 4
    close_shards([shard])  # before rewriting a shard this process has open
    write_shard(shard, [*entries[:4], sample_entries(1)[0], sample_entries(1)[0]])
    assert len(HormDataset(shard, skip_invalid=True, cache_dir=cache)) == 4
    assert len(list(cache.glob("s-*.npz"))) == 3


# ---------------------------------------------------------------------------------- bad input
def corrupt(kind: str):
    """(entries of a 3-entry shard with entry 1 broken, field named in the message)."""
    entries = sample_entries(3)
    data = entries[1]
    field = None
    if kind == "undecodable":
        entries[1] = b"\x80\x04 this is not a pickle"
    elif kind == "missing key":
        entries[1] = None
    elif kind == "missing field":
        del data.hessian
        field = "hessian"
    elif kind == "element outside HCNOF":
        data.one_hot[0] = 0.0
        data.charges[0] = 17
        field = "one_hot"
    elif kind == "two ones in one_hot":
        data.one_hot[0] = torch.tensor([1.0, 1, 0, 0, 0])
        field = "one_hot"
    elif kind == "charges disagree":
        data.charges[0] = 8 if data.charges[0] != 8 else 6
        field = "charges"
    elif kind == "nan position":
        data.pos[2, 1] = float("nan")
        field = "pos"
    elif kind == "inf position":
        data.pos[0, 0] = float("inf")
        field = "pos"
    elif kind == "atoms too close":
        data.pos[3] = data.pos[0] + torch.tensor([0.05, 0.0, 0.0])
        field = "pos"
    elif kind == "hessian length":
        data.hessian = data.hessian[:-3]
        field = "hessian"
    elif kind == "forces shape":
        data.forces = data.forces[:-1]
        field = "forces"
    elif kind == "nan hessian":
        data.hessian[7] = float("nan")
        field = "hessian"
    elif kind == "not a Data":
        entries[1] = [1, 2, 3]
    else:
        raise AssertionError(kind)
    return entries, field


KINDS = ["undecodable", "missing key", "missing field", "element outside HCNOF", "two ones in one_hot",
         "charges disagree", "nan position", "inf position", "atoms too close", "hessian length",
         "forces shape", "nan hessian", "not a Data"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_entry_raises_naming_shard_key_field(tmp_path, kind):
    entries, field = corrupt(kind)
    shard = write_shard(tmp_path / "bad.lmdb", entries)

    def check(err):
        msg = str(err.value)
        assert str(shard) in msg and "key b'1'" in msg
        if field is not None:
            assert f"'{field}'" in msg

    # default settings scan the shard for F at construction: the error comes there
    with pytest.raises(HormDataError) as err:
        HormDataset(shard)
    check(err)
    # without a scan it comes when the entry is loaded; the good ones still load
    ds = HormDataset(shard, exclude_elements=())
    assert ds[0].natoms > 0 and ds[2].natoms > 0
    with pytest.raises(HormDataError) as err:
        ds[1]
    check(err)
    assert isinstance(err.value, ValueError)


def test_skip_invalid_logs_each_skip_and_counts(tmp_path, caplog):
    entries = sample_entries(6)
    broken = {1: corrupt("hessian length")[0][1], 3: b"garbage", 4: corrupt("nan position")[0][1]}
    for key, value in broken.items():
        entries[key] = value
    shard = write_shard(tmp_path / "skip.lmdb", entries)
    with caplog.at_level(logging.WARNING, logger="hip.data.horm"):
        ds = HormDataset(shard, skip_invalid=True, exclude_elements=())
    assert len(ds) == 3
    assert [int(ds[i].dataset_idx) for i in range(3)] == [0, 2, 5]
    assert [key for _, key, _ in ds.skipped] == [b"1", b"3", b"4"]
    skips = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skips) == 3 and all(r.levelno == logging.WARNING for r in skips)
    for r, key, field in zip(skips, ("1", "3", "4"), ("'hessian'", "unpickled", "'pos'"), strict=True):
        assert str(shard) in r.getMessage() and f"key b'{key}'" in r.getMessage() and field in r.getMessage()
    assert "skipped 3 invalid entries" in caplog.text


def test_shard_level_errors(tmp_path):
    missing = tmp_path / "nope.lmdb"
    with pytest.raises(FileNotFoundError, match=r"nope\.lmdb"):
        HormDataset(missing)
    with pytest.raises(FileNotFoundError, match=r"no \*\.lmdb shards"):
        HormDataset(tmp_path)
    entries = sample_entries(2)
    no_length = write_shard(tmp_path / "nolength.lmdb", entries, write_length=False)
    with pytest.raises(HormDataError, match=r"nolength.lmdb: key b'length' missing"):
        HormDataset(no_length)
    env = lmdb.open(str(tmp_path / "badlength.lmdb"), subdir=False, map_size=1 << 20, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"length", b"not a pickle")
    env.close()
    with pytest.raises(HormDataError, match=r"badlength.lmdb key b'length'"):
        HormDataset(tmp_path / "badlength.lmdb")
    write_shard(tmp_path / "strlength.lmdb", entries, length="2")
    with pytest.raises(HormDataError, match=r"strlength.lmdb key b'length'.*non-negative int"):
        HormDataset(tmp_path / "strlength.lmdb")
    (tmp_path / "text.lmdb").write_text("not an lmdb file, just text " * 200)
    with pytest.raises(HormDataError, match=r"text\.lmdb"):
        HormDataset(tmp_path / "text.lmdb")
