"""Tests of the benchmark harness's report writers (hip/benchmarks/report.py)."""

from __future__ import annotations

import csv

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt

from hip.benchmarks import figure, write_report


def test_figure_saves_a_png_and_leaves_matplotlib_global_state_alone(tmp_path):
    previous, open_figures = matplotlib.get_backend(), plt.get_fignums()
    matplotlib.use("svg")  # a user's backend, which the harness must not switch
    try:
        with figure(tmp_path / "f.png", ncols=2, size=(4, 2)) as (_, axes):
            axes[0].plot([0, 1], [1, 0])
            axes[1].bar([0, 1], [2, 3])
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_figures
    finally:
        matplotlib.use(previous)
    assert matplotlib.image.imread(tmp_path / "f.png").shape[:2] == (300, 600)  # 2 × 4 inches at 150 dpi


def test_write_report_writes_table_summary_and_figure(tmp_path, capsys):
    table = {"RFO (HIP)": {"a": 1.5, "b": 2.0}, "FIRE (ASE)": {"a": 0.5, "b": float("nan")}}

    def plot(path):
        with figure(path) as (_, ax):
            ax.plot([0, 1])

    write_report(tmp_path, "the table", table, ("a", "b"), plot, "bench_x")
    assert "the table" in capsys.readouterr().out
    assert (tmp_path / "table.txt").read_text() == "the table\n"
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["method", "a", "b"] and rows[1] == ["RFO (HIP)", "1.5", "2.0"] and rows[2][0] == "FIRE (ASE)"
    assert matplotlib.image.imread(tmp_path / "bench_x.png").ndim == 3


def test_rescaled_noise_has_exactly_the_requested_rms_and_is_seeded():
    import numpy as np
    import pytest
    from ase.build import molecule

    from hip.benchmarks import perturb

    atoms = molecule("CH3CHO")
    starts = [perturb(atoms, 0.05, np.random.default_rng(3), exact=True) for _ in range(2)]
    displacement = starts[0].positions - atoms.positions
    assert np.sqrt((displacement**2).sum(axis=1).mean()) == pytest.approx(0.05, rel=1e-12)
    np.testing.assert_array_equal(starts[0].positions, starts[1].positions)
    gaussian = perturb(atoms, 0.05, np.random.default_rng(3))  # RMS 0.05 Å only in expectation
    assert abs(np.sqrt(((gaussian.positions - atoms.positions) ** 2).sum(axis=1).mean()) - 0.05) > 1e-6
    with pytest.raises(ValueError, match=r"keeps the atoms 5\.0 Å apart"):
        perturb(atoms, 0.05, np.random.default_rng(0), min_distance=5.0, exact=True)
