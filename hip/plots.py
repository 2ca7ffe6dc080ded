"""Hessian parity and size plots of an evaluation (:mod:`hip.evaluation`) and the uniform subsample of
Hessian entries they draw from. Figures are drawn on matplotlib's Agg canvas (no pyplot state).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hip.metrics import METRIC_COLUMNS


class ParitySampler:
    """Uniform random subsample of Hessian entries, at most ``max_points``, collected batch by batch.

    Every entry is kept with the same probability p (the same entries for every method); whenever more
    than ``max_points`` are held, half are dropped at random and p is halved.
    """

    def __init__(self, max_points: int = 200_000, seed: int = 0):
        self.max_points = max_points
        self.keep = 1.0
        self.generator = torch.Generator().manual_seed(seed)
        self.columns: dict[str, list[torch.Tensor]] = {}

    def _thin(self, columns: Mapping[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
        n = next(iter(columns.values())).numel()
        mask = torch.rand(n, generator=self.generator) < p
        return {k: v.reshape(-1)[mask] for k, v in columns.items()}

    def add(self, true: torch.Tensor, preds: Mapping[str, torch.Tensor]) -> None:
        """Add one batch: ``true`` and each prediction are flat Hessians of the same layout, eV/Å²."""
        columns = {"DFT": true, **preds}
        batch = self._thin({k: v.detach().double() for k, v in columns.items()}, self.keep)
        for key, values in batch.items():
            self.columns.setdefault(key, []).append(values)
        while self.max_points and len(self) > self.max_points:
            self.columns = {k: [v] for k, v in self._thin(self.points(), 0.5).items()}
            self.keep /= 2

    def __len__(self) -> int:
        return sum(v.numel() for v in self.columns.get("DFT", []))

    def points(self) -> dict[str, torch.Tensor]:
        """Column ("DFT", "HIP", "AD") → [P] float64 sampled entries, eV/Å²."""
        return {k: torch.cat(v) for k, v in self.columns.items()}


def plot_parity(path: Path, points: Mapping[str, torch.Tensor],
                results: Mapping[str, Mapping[str, float]]) -> None:
    """Predicted vs DFT Hessian entries, one panel per method, eV/Å² (Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    methods = [m for m in points if m != "DFT"]
    true = points["DFT"].numpy()
    fig = Figure(figsize=(4.5 * len(methods), 4.5), layout="constrained")
    for ax, method in zip(fig.subplots(1, len(methods), squeeze=False)[0], methods, strict=True):
        pred = points[method].numpy()
        both = np.concatenate([true, pred]) if true.size else np.zeros(2)
        low, high = float(both.min()), float(both.max())
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        ax.scatter(true, pred, s=1, alpha=0.3, linewidths=0, rasterized=True)
        ax.set(xlabel="DFT Hessian entry [eV/Å²]", ylabel=f"{method} Hessian entry [eV/Å²]", aspect="equal",
               title=f"{method}: MAE {results[method][METRIC_COLUMNS['hessian_mae']]:.3f} eV/Å² "
                     f"({true.size} entries)")
    fig.savefig(path, dpi=150)


def plot_mae_vs_natoms(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Per-molecule Hessian MAE (eV/Å²) against the number of atoms, with the mean per size, per method."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for method in dict.fromkeys(r["method"] for r in rows):
        natoms = np.array([r["natoms"] for r in rows if r["method"] == method])
        mae = np.array([r["hessian_mae"] for r in rows if r["method"] == method])
        sizes = np.unique(natoms)
        dots = ax.scatter(natoms, mae, s=8, alpha=0.4, label=f"{method} (molecules)")
        ax.plot(sizes, [mae[natoms == n].mean() for n in sizes], color=dots.get_facecolor()[0][:3],
                marker="o", label=f"{method} (mean per size)")
    ax.set(xlabel="number of atoms", ylabel="Hessian MAE [eV/Å²]", yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.savefig(path, dpi=150)
