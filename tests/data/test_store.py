"""Tests of hip/data/store.py, the one reader and writer of HORM-format LMDB shards.

Round trips against the bytes LMDB holds (read with plain ``lmdb`` and ``pickle``), one shared
environment per file however many users a process has, atomic writes (also when the writer is killed),
and errors that name the shard, the key and the field.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from helpers import HORM_SAMPLE

from hip.data import HormDataError, HormDataset, store
from hip.data import labelling as lab
from hip.dft import Labels

REPO = Path(__file__).resolve().parents[2]
needs_sample = pytest.mark.skipif(not HORM_SAMPLE.is_file(), reason=f"HORM sample shard {HORM_SAMPLE} not available")


def fake_entry(n: int = 4, seed: int = 0, rxn: int = 0):
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 6, 7, 8], size=n)
    return lab.make_horm_data(Labels(numbers=numbers, positions=rng.normal(size=(n, 3)) * 2.0, energy=-1000.0 * n,
                                     ae=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                                     hessian=rng.normal(size=(3 * n, 3 * n))), rxn)


def plain_read(path: Path) -> dict[bytes, object]:
    """Every key and value of an LMDB file, read with plain lmdb and pickle (independent of the store);
    the store's environments are closed first (py-lmdb opens a file once per process)."""
    store.close_shards([path])
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {k: pickle.loads(v) for k, v in txn.cursor()}
    finally:
        env.close()


def assert_same_entry(got, expected) -> None:
    assert sorted(got.keys()) == sorted(expected.keys())
    for name in expected.keys():
        assert got[name].dtype == expected[name].dtype and torch.equal(got[name], expected[name]), name


def test_lmdb_round_trip_and_resume(tmp_path):
    path = tmp_path / "out.lmdb"
    entries = [fake_entry(3 + i, seed=i, rxn=i) for i in range(3)]
    assert store.write_entry(path, 0, entries[0])
    assert store.write_entry(path, 1, entries[1])
    assert not store.write_entry(path, 1, entries[2])  # present: skipped, not overwritten
    with pytest.raises(ValueError, match="gap"):
        store.write_entry(path, 5, entries[2])
    assert store.write_entry(path, 2, entries[2])

    size = store.compact(path)
    assert size == path.stat().st_size < 1 << 20
    stored = plain_read(path)
    assert sorted(stored) == [b"0", b"1", b"2", b"length"] and stored[b"length"] == 3
    for i, expected in enumerate(entries):
        assert_same_entry(stored[str(i).encode()], expected)
        assert_same_entry(store.read_entry(path, i), expected)
    assert store.shard_length(path) == 3 and store.has_entry(path, 2) and not store.has_entry(path, 3)
    assert [int(e.rxn) for e in store.iter_entries(path)] == [0, 1, 2]
    with pytest.raises(KeyError, match="key 9"):
        store.read_entry(path, 9)


def test_written_entries_are_read_by_the_dataset_as_written(tmp_path):
    path = tmp_path / "written.lmdb"
    entries = [fake_entry(5, seed=s, rxn=s) for s in range(2)]
    assert store.write_entries(path, enumerate(entries)) == 2
    dataset = HormDataset(path, exclude_elements=())
    for i, expected in enumerate(entries):
        got = dataset.read(i)
        torch.testing.assert_close(got["pos"], expected.pos.to(got["pos"].dtype), rtol=0, atol=0)
        torch.testing.assert_close(got["hessian"], expected.hessian.to(got["hessian"].dtype), rtol=0, atol=0)
        assert got["z"].tolist() == expected.charges.tolist()


@needs_sample
def test_dataset_labeller_and_writer_share_a_shard_in_one_process(tmp_path):
    """The reads hip's modules make of one shard (dataset, labeller, scripts) and then a write to it all
    work in one process: py-lmdb refuses a second environment on a file, the store keeps one."""
    dataset = HormDataset(HORM_SAMPLE)
    assert lab_entry_matches(HORM_SAMPLE, dataset, 83)
    assert store.shard_length(HORM_SAMPLE) == len(dataset) == 100

    copy = tmp_path / "copy.lmdb"
    shutil.copyfile(HORM_SAMPLE, copy)
    readers = HormDataset(copy, exclude_elements=())
    before = readers.read(7)
    new = fake_entry(6, seed=3, rxn=1234)
    assert store.write_entry(copy, 100, new)  # the labeller appends while the dataset has the file open
    torch.testing.assert_close(readers.read(7)["hessian"], before["hessian"], rtol=0, atol=0)
    grown = HormDataset(copy, exclude_elements=())
    assert len(grown) == 101
    assert grown.read(100)["z"].tolist() == new.charges.tolist()
    assert_same_entry(store.read_entry(copy, 100), new)
    assert store.read_entry(copy, 7).charges.tolist() == before["z"].tolist()


def lab_entry_matches(path: Path, dataset: HormDataset, index: int) -> bool:
    """What the labeller's reader (store.read_entry) and the dataset give for one entry agree."""
    raw = store.read_entry(path, index)
    item = dataset.read(index)
    return (raw.charges.tolist() == item["z"].tolist()
            and torch.equal(raw.hessian.to(item["hessian"].dtype), item["hessian"]))


def test_a_failed_batch_leaves_nothing_behind(tmp_path):
    path = tmp_path / "atomic.lmdb"
    first = fake_entry(3, seed=0)
    assert store.write_entry(path, 0, first)
    # key 1 is put in the transaction, then key 5 is refused: key 1 must not remain
    with pytest.raises(ValueError, match=r"atomic\.lmdb: writing key 5 would leave a gap"):
        store.write_entries(path, [(1, fake_entry(3, seed=1)), (5, fake_entry(3, seed=2))])
    # a value the safe loader could not read back is refused before anything is stored
    import datetime

    bad = fake_entry(3, seed=3)
    bad.when = datetime.date(2020, 1, 1)
    with pytest.raises(HormDataError, match=r"atomic\.lmdb key b'2' \(being written\): refused: .*datetime\.date"):
        store.write_entries(path, [(1, fake_entry(3, seed=4)), (2, bad)])
    stored = plain_read(path)
    assert sorted(stored) == [b"0", b"length"] and stored[b"length"] == 1
    assert_same_entry(stored[b"0"], first)


@pytest.mark.slow
def test_a_killed_writer_leaves_only_complete_counted_entries(tmp_path):
    """A writer killed (SIGKILL) in the middle of a run of writes: every key below ``length`` holds a
    complete entry, no key at or above it exists."""
    path = tmp_path / "killed.lmdb"
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}, {str(REPO / "tests" / "data")!r}]
        from test_store import fake_entry
        from hip.data import store
        for i in range(10_000):
            store.write_entry({str(path)!r}, i, fake_entry(12, seed=i, rxn=i))
            print(i, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for _ in range(20):  # let it commit a few entries, then kill it between or inside writes
            line = child.stdout.readline()
            assert line, "the writer died before writing 20 entries"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    stored = plain_read(path)
    length = stored.pop(b"length")
    assert length >= 20 and sorted(stored) == sorted(str(i).encode() for i in range(length))
    for i in range(length):
        assert_same_entry(stored[str(i).encode()], fake_entry(12, seed=i, rxn=i))
    assert store.shard_length(path) == length  # and the store reads the file as it is


def test_corrupt_entries_name_shard_key_and_field(tmp_path):
    path = tmp_path / "bad.lmdb"
    broken = fake_entry(4, seed=0)
    broken.forces = torch.zeros(2, 3)  # the store moves bytes; the dataset validates fields
    store.write_entries(path, [(0, fake_entry(4, seed=1)), (1, broken)])
    with pytest.raises(HormDataError, match=r"bad\.lmdb key b'1': field 'forces' has shape \(2, 3\)"):
        HormDataset(path)  # excluding F, it reads every entry at construction
    with store.open_shard(path, write=True).begin(write=True) as txn:
        txn.put(b"1", b"not a pickle")
    with pytest.raises(HormDataError, match=r"bad\.lmdb key b'1': entry cannot be unpickled"):
        store.read_entry(path, 1)
    with store.open_shard(path, write=True).begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(-1))
    with pytest.raises(HormDataError, match=r"bad\.lmdb key b'length': holds -1"):
        store.shard_length(path)


def test_new_shards_are_valid_and_grow_past_their_map_size(tmp_path):
    path = tmp_path / "sub" / "new.lmdb"
    store.open_shard(path, write=True, map_size=1 << 16)
    assert store.shard_length(path) == 0 and len(HormDataset(path)) == 0
    entries = [(i, fake_entry(10, seed=i)) for i in range(20)]  # ≈ 20 × 4 KiB of Hessians: over 64 KiB
    assert store.write_entries(path, entries) == 20
    assert store.shard_length(path) == 20
    assert_same_entry(store.read_entry(path, 19), entries[19][1])


def test_a_replaced_file_is_reopened_not_refused(tmp_path):
    path, other = tmp_path / "a.lmdb", tmp_path / "b.lmdb"
    store.write_entry(path, 0, fake_entry(3, seed=0, rxn=1))
    store.write_entries(other, [(0, fake_entry(3, seed=1, rxn=2)), (1, fake_entry(3, seed=2, rxn=3))])
    assert store.shard_length(path) == 1
    store.close_shards([other])
    os.replace(other, path)  # e.g. a shard rewritten by another program
    assert store.shard_length(path) == 2 and int(store.read_entry(path, 1).rxn) == 3


def test_make_entry_checks_shapes_and_elements():
    with pytest.raises(ValueError, match=r"field 'hessian' has shape \(36,\), expected \(81,\) for 3 atoms"):
        store.make_entry([1, 1, 8], np.zeros((3, 3)), -1.0, -0.1, np.zeros((3, 3)), np.zeros((6, 6)), 0)
    with pytest.raises(ValueError, match=r"Z=\[17\]"):
        store.make_entry([17], np.zeros((1, 3)), -1.0, -0.1, np.zeros((1, 3)), np.zeros((3, 3)), 0)
