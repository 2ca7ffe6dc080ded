"""Speed of reading HORM entries: hip's restricted unpickler against plain ``pickle.loads``.

    python scripts/bench_entry_loading.py                       # the HORM sample shard
    python scripts/bench_entry_loading.py data/embedded/train.lmdb --repeats 30

Reads every value of the shard into memory once, then times, in alternating rounds so that load
from other jobs hits both alike, (a) ``pickle.loads`` (what hip did before issue 14; it runs any code
an entry names) and (b) :func:`hip.safe_loading.safe_loads`, and prints the fastest and the median
round of each, per entry, and the ratio b/a as the median over rounds of the ratio of a round of b to
the round of a just before it (paired rounds see about the same load from other jobs). Issue 14 asks
for at most 1.10. Also checks that both readers give the same tensors.

The baseline (a) is the unrestricted unpickling this project no longer does anywhere else: run the
benchmark on shards you trust only (the default, the HORM sample, is the HIP authors' public file).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from pathlib import Path

import torch

from hip.data import store
from hip.safe_loading import safe_loads

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"


def read_values(path: Path) -> list[bytes]:
    """Every entry ``0 … length−1`` of a HORM-format shard, as stored (:mod:`hip.data.store`)."""
    return [store.read_raw(path, i) for i in range(store.shard_length(path))]


def time_per_entry(load, values: list[bytes]) -> float:
    """CPU seconds of this process per entry, for one pass of ``load`` over ``values`` (CPU time, not
    wall time: the time the process waits while other jobs hold the cores does not count)."""
    start = time.process_time()
    for raw in values:
        load(raw)
    return (time.process_time() - start) / len(values)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard", type=Path, nargs="?", default=HORM_SAMPLE, help="a HORM-format .lmdb file")
    parser.add_argument("--repeats", type=int, default=40, help="rounds of each reader (default 40)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    values = read_values(args.shard)
    for raw in values:
        expected, got = pickle.loads(raw), safe_loads(raw)
        assert all(torch.equal(got[k], expected[k]) for k in expected.keys()), "readers disagree"
    times = {"pickle.loads": [], "safe_loads": []}
    for _ in range(args.repeats):
        times["pickle.loads"].append(time_per_entry(pickle.loads, values))
        times["safe_loads"].append(time_per_entry(safe_loads, values))
    print(f"{args.shard}: {len(values)} entries, {args.repeats} rounds; per entry: fastest, median round")
    for name, t in times.items():
        print(f"  {name:13s} {1e3 * min(t):.3f} ms  {1e3 * statistics.median(t):.3f} ms")
    ratios = [b / a for a, b in zip(times["pickle.loads"], times["safe_loads"], strict=True)]
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"ratio safe_loads / pickle.loads = {ratio:.3f} (median of paired rounds; quartiles "
          f"{quartiles[0]:.3f}, {quartiles[2]:.3f})")
    return ratio


if __name__ == "__main__":
    main()
