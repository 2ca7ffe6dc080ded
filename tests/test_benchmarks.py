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
