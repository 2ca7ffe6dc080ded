"""Smoke tests of the benchmark scripts on a tiny model: they run, and report what they claim to."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, load_script

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture
def restore_torch_settings():
    """The scripts pin torch to one thread and set the default dtype: undo it for later tests."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


def test_bench_hessian_profile(horm_sample_path, tmp_path, capsys, restore_torch_settings):
    """``--profile`` prints the stage and op tables of forward vs HIP for a molecule and a batch."""
    bench = load_script("bench_hessian")
    bench.main(["--profile", "--repeats", "1", "--profile-natoms", "8", "--profile-batch", "2",
                "--model-kwargs", json.dumps(TINY_MODEL), "--horm", str(horm_sample_path), "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "profile single N=8" in out and "profile batch B=2" in out
    assert "hessian_head" in out and "so2_convolution" in out  # the fast path's stages are labelled


@pytest.mark.slow
def test_bench_hessian_eager_and_fast(horm_sample_path, tmp_path, capsys, restore_torch_settings):
    """One run times forward and HIP on both paths, AD and FD on the fast path, and writes them all."""
    bench = load_script("bench_hessian")
    results = bench.main(["--sizes", "8", "--batch-sizes", "2", "--repeats", "2", "--row-budget", "0.2",
                          "--ad-vec-max-atoms", "8", "--no-memory", "--model-kwargs", json.dumps(TINY_MODEL),
                          "--paths", "eager,fast",
                          "--horm", str(horm_sample_path), "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert "HIP fast/eager" in out and "forward eager" in out and "hip fast" in out
    with open(tmp_path / "bench_hessian.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results)
    got = {(r["experiment"], r["method"], r["path"]) for r in rows}
    for experiment in ("single", "batch"):
        assert {(experiment, m, p) for m in ("forward", "hip") for p in ("eager", "fast")} <= got
        assert {(experiment, m, "fast") for m in ("ad_loop", "fd")} <= got
    assert ("single", "ad_vec", "fast") in got
    for r in rows:
        assert float(r["seconds"]) > 0
        if r["method"] in ("forward", "hip"):
            assert int(r["repeats"]) == 2
        else:
            assert 0 < int(r["rows_timed"]) <= int(r["rows_total"]) == 3 * int(r["natoms"])
    assert (tmp_path / "bench_hessian.png").stat().st_size > 0


def test_bench_hessian_peak_memory_counts_tensors(restore_torch_settings):
    """The CPU peak is that of the tensors alive at once: 4 MiB + 8 MiB, not 4 + 8 + 8."""
    bench = load_script("bench_hessian")

    def allocate():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**21)  # 8 MiB
        del b
        c = torch.ones(2**21)  # 8 MiB, after b was freed
        return a.sum() + c.sum()

    peak, _ = bench.peak_memory_mib(allocate, torch.device("cpu"))
    assert 12 <= peak < 12.5


@pytest.mark.slow
def test_bench_train_step(horm_sample_path, capsys, restore_torch_settings):
    """All five variants are timed and the printed ratios are those of their medians."""
    bench = load_script("bench_train_step")
    result = bench.main(["--batch-size", "2", "--repeats", "2", "--model-kwargs", json.dumps(TINY_MODEL),
                         "--horm", str(horm_sample_path)])
    out = capsys.readouterr().out
    for name in ("frozen eager", "frozen fast", "frozen fast+cache", "e2e eager", "e2e fast"):
        assert result[f"{name} s"] > 0 and name in out
    ratio = result["frozen eager s"] / result["frozen fast+cache s"]
    assert result["frozen eager / fast+cache"] == pytest.approx(ratio)
