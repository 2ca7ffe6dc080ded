"""The benchmarks' reports: printed table, ``table.txt``, ``summary.csv`` and a figure.

Figures are drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas: Matplotlib's global
backend and pyplot's figure list are left alone, so the benchmarks can run inside a user's session or
notebook.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def write_report(directory: str | Path, text: str, table: Mapping[str, Mapping[str, float]],
                 columns: Sequence[str], plot: Callable[[Path], None], name: str) -> None:
    """Print a benchmark's table ``text`` and save it as ``table.txt``; ``table`` (row label → column →
    value) as ``summary.csv`` with the given ``columns``; ``plot(path)`` draws ``<name>.png``; all in
    ``directory``, listed in a closing line."""
    print(text)
    directory = Path(directory)
    (directory / "table.txt").write_text(text + "\n")
    with (directory / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", *columns])
        writer.writerows([label, *(values[c] for c in columns)] for label, values in table.items())
    plot(directory / f"{name}.png")
    print(f"wrote {directory / 'results.jsonl'}, summary.csv, table.txt, {name}.png")


@contextmanager
def figure(path: str | Path, ncols: int = 1, size: tuple[float, float] = (6.5, 4.2)) -> Iterator:
    """A Matplotlib figure with ``ncols`` axes, saved to ``path`` (PNG, 150 dpi) on exit.

    The figure has its own Agg canvas (``FigureCanvasAgg``), is not registered with pyplot and does not
    change the global backend; nothing is saved if the body raises.

    Yields:
        ``(fig, axes)``; ``axes`` is one Axes for ``ncols == 1``, else an array of them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=150)
