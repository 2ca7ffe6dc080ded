"""Evaluate a checkpoint on a data split: paper Table 1 for HIP and the autodiff Hessian of the same model.

:func:`evaluate_checkpoint` runs the model over a datamodule's split. Per batch it times

* **HIP**: one forward pass giving energy, forces and the Hessian (``model(batch)``, no autograd);
* **AD** (optional): the Hessian as −∂F/∂x of the same model's direct forces
  (:func:`hip.model.autodiff.autodiff_hessian`, its own forward pass plus 3·max(N_b) backward rows),

and compares both with the DFT Hessians molecule by molecule (:func:`hip.metrics.batch_metrics`).
Times are wall-clock milliseconds per molecule: the batch's time divided by its number of molecules
(with ``batch_size=1`` this is the paper's time per forward pass). On CUDA the device is synchronised
before each clock read, and one untimed warm-up pass of each method runs on the first batch.

Energy and forces come from the one forward pass of the model and are scored in the HIP rows only
(the AD Hessian differentiates those same forces, so AD has no energy/force prediction of its own).

Files written to ``output_dir``:

* ``metrics.json``: ``{"methods": {"HIP": {column: mean}, "AD": ...}, "metadata": {...}}``, columns as
  in :func:`hip.metrics.aggregate_metrics` (units in brackets) plus ``Time [ms]``; NaN is written as null;
* ``per_molecule.csv``: one row per molecule and method: ``dataset_idx, natoms, method, time_ms`` and
  every per-molecule metric of :func:`hip.metrics.molecule_metrics` (empty where a method has none);
* ``tables.txt``: the printed Table 1 block and the Table 6 columns (raw vs Eckart-projected);
* ``hessian_parity.png`` (predicted vs DFT Hessian entries, at most ``max_parity_points`` of them,
  a uniform random subsample) and ``hessian_mae_vs_natoms.png`` when ``plots`` is true.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hip.data.graphs import collate
from hip.metrics import (
    METRIC_COLUMNS,
    TABLE1_COLUMNS,
    TABLE6_COLUMNS,
    TIME_COLUMN,
    aggregate_metrics,
    batch_metrics,
    format_table,
)
from hip.model.autodiff import autodiff_hessian
from hip.model.checkpoints import load_checkpoint

#: Methods in table order: HIP's direct Hessian, and the autodiff Hessian of the same model.
METHODS = ("HIP", "AD")
#: Leading columns of ``per_molecule.csv``; the metric keys follow.
ID_COLUMNS = ("dataset_idx", "natoms", "method", "time_ms")
#: Per-molecule metric keys in CSV order (those of :data:`hip.metrics.METRIC_COLUMNS` first).
CSV_METRICS = (*METRIC_COLUMNS, "n_neg_pred", "n_neg_true")
#: Stage passed to ``datamodule.setup`` for each split.
SPLIT_STAGES = {"train": "fit", "val": "validate", "test": "test"}


def evaluate_checkpoint(
    ckpt_path: str | Path | None,
    datamodule: Any,
    output_dir: str | Path,
    split: str = "val",
    autodiff: bool = True,
    autodiff_chunk_size: int | None = 16,
    max_molecules: int | None = None,
    plots: bool = True,
    device: str | torch.device = "cpu",
    *,
    model: torch.nn.Module | None = None,
    max_parity_points: int = 200_000,
    seed: int = 0,
    warmup: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint's Hessians (HIP and, optionally, AD) on one split; write and print results.

    Args:
        ckpt_path: checkpoint in any format of :mod:`hip.model.checkpoints`; loaded unless ``model``
            is given (then it is only recorded in the metadata and may be None).
        datamodule: object with ``setup(stage)`` and ``{split}_dataloader()`` yielding collated
            batches of :class:`~hip.data.graphs.MoleculeGraph` with ``hessian`` [Σ 9N_b²] eV/Å², ``ae``
            [B] eV and ``forces`` [N, 3] eV/Å labels (e.g. :class:`hip.data.HormDataModule`), built
            with the model's graph settings.
        output_dir: directory for the files of the module docstring (created if needed).
        split: ``"val"``, ``"test"`` or ``"train"``.
        autodiff: also evaluate the autodiff Hessian of the same model (the "AD" row).
        autodiff_chunk_size: Hessian rows per batched backward pass (memory bound); None: all at once.
        max_molecules: evaluate only the first K molecules of the split (None: all).
        plots: write the two PNG plots.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (CUDA when available).
        model: an already loaded :class:`~hip.model.hip_equiformer.HIPEquiformerV2` to evaluate
            instead of loading ``ckpt_path`` (it is put in eval mode and moved to ``device``).
        max_parity_points: most Hessian entries drawn in the parity plot.
        seed: seed of the parity-plot subsample (the model's random edge-frame roll uses torch's global
            RNG; seed that for reproducible predictions).
        warmup: run each method once, untimed, on the first batch before timing.

    Returns:
        Method ("HIP", "AD") → aggregated metrics: column name with unit → mean over molecules
        (:func:`hip.metrics.aggregate_metrics`), plus ``Time [ms]`` per molecule.

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist (and no ``model`` was given).
        CheckpointError: the checkpoint cannot be loaded (see :mod:`hip.model.checkpoints`).
        ValueError: unknown ``split``, a split without data, or ``max_molecules`` < 1.
    """
    if max_molecules is not None and max_molecules < 1:
        raise ValueError(f"max_molecules must be ≥ 1 or None, got {max_molecules}")
    device = resolve_device(device)
    if model is None:
        model = load_checkpoint(ckpt_path, map_location=device)
    model = model.to(device).eval()
    methods = METHODS if autodiff else METHODS[:1]
    loader = split_dataloader(datamodule, split)
    parity = ParitySampler(max_parity_points, seed=seed)
    rows: list[dict[str, Any]] = []
    with progress_bar(loader, split, max_molecules) as bar:
        for batch in limit_molecules(loader, max_molecules):
            if warmup and not rows:
                warm_up(model, to_device(batch, device), autodiff, autodiff_chunk_size)
            rows += evaluate_batch(model, batch, device, autodiff, autodiff_chunk_size, parity)
            bar.update(batch.num_graphs)
    if not rows:
        raise ValueError(f"the {split} split of the datamodule holds no molecules")
    results = {m: aggregate_method(rows, m) for m in methods}
    metadata = run_metadata(ckpt_path, datamodule, split, rows, device, model, autodiff_chunk_size)
    write_outputs(Path(output_dir), results, rows, metadata, parity if plots else None)
    return results


# ---------------------------------------------------------------------------------------- data


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; anything else → ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def split_dataloader(datamodule: Any, split: str) -> Iterable:
    """``datamodule.setup(stage)`` then its ``{split}_dataloader()``.

    Raises:
        ValueError: unknown split, or the datamodule has no data for it (an empty loader list).
    """
    if split not in SPLIT_STAGES:
        raise ValueError(f"split must be one of {sorted(SPLIT_STAGES)}, got {split!r}")
    datamodule.setup(SPLIT_STAGES[split])
    loader = getattr(datamodule, f"{split}_dataloader")()
    if loader is None or (isinstance(loader, Sequence) and len(loader) == 0):
        raise ValueError(f"the datamodule has no {split} data: set data.{split}=<shard> in the config")
    return loader


def to_device(batch, device: torch.device):
    """The batch on ``device``: itself on CPU, else a copy (PyG's ``to`` moves in place)."""
    return batch if device.type == "cpu" else batch.clone().to(device)


def progress_bar(loader: Iterable, split: str, max_molecules: int | None) -> tqdm:
    """A tqdm bar counting molecules (total: the split's size, capped at ``max_molecules``)."""
    dataset = getattr(loader, "dataset", None)
    sizes = [n for n in (len(dataset) if dataset is not None else None, max_molecules) if n is not None]
    return tqdm(total=min(sizes) if sizes else None, desc=f"evaluating {split}", unit="molecule")


def limit_molecules(batches: Iterable, max_molecules: int | None) -> Iterator:
    """Yield batches until ``max_molecules`` molecules were given; the last batch is cut to fit."""
    seen = 0
    for batch in batches:
        if max_molecules is not None and seen + batch.num_graphs > max_molecules:
            batch = collate(batch.to_data_list()[: max_molecules - seen])
        seen += batch.num_graphs
        yield batch
        if max_molecules is not None and seen >= max_molecules:
            return


# ---------------------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that the clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall-clock time in ms (CUDA synchronised before both clock reads)."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, 1000 * (time.perf_counter() - start)


@contextmanager
def backbone_autograd(model: torch.nn.Module) -> Iterator[None]:
    """Let a frozen-backbone model build the autograd graph its AD Hessian needs (flag restored after)."""
    frozen = getattr(model, "backbone_frozen", False)
    model.backbone_frozen = False
    try:
        yield
    finally:
        model.backbone_frozen = frozen


def hip_pass(model: torch.nn.Module, batch) -> dict[str, torch.Tensor]:
    """Energy [B] eV, forces [N, 3] eV/Å and flat Hessian [Σ 9N_b²] eV/Å² in one forward, no autograd."""
    with torch.no_grad():
        return model(batch)


def ad_pass(model: torch.nn.Module, batch, chunk_size: int | None) -> torch.Tensor:
    """Flat autodiff Hessian [Σ 9N_b²] eV/Å² of the same model (:func:`autodiff_hessian`)."""
    with backbone_autograd(model):
        return autodiff_hessian(model, batch, chunk_size=chunk_size)


def warm_up(model: torch.nn.Module, batch, autodiff: bool, chunk_size: int | None) -> None:
    """One untimed pass of each method (lazy initialisation, CUDA kernel selection)."""
    hip_pass(model, batch)
    if autodiff:
        ad_pass(model, batch, chunk_size)


# ---------------------------------------------------------------------------------------- metrics


def evaluate_batch(model: torch.nn.Module, batch, device: torch.device, autodiff: bool,
                   chunk_size: int | None, parity: ParitySampler) -> list[dict[str, Any]]:
    """Time both methods on one batch and score every molecule.

    Returns:
        One row per molecule and method: ``dataset_idx``, ``natoms``, ``method``, ``time_ms`` (the
        batch's time / its molecules) and the metrics of :func:`hip.metrics.molecule_metrics`.
    """
    on_device = to_device(batch, device)
    size = batch.num_graphs
    out, ms = timed(lambda: hip_pass(model, on_device), device)
    preds = {"HIP": ({k: v.detach().cpu() for k, v in out.items()}, ms / size)}
    if autodiff:
        hessian, ms = timed(lambda: ad_pass(model, on_device, chunk_size), device)
        preds["AD"] = ({"hessian": hessian.cpu()}, ms / size)
    parity.add(batch.hessian, {m: pred["hessian"] for m, (pred, _) in preds.items()})
    idx = batch.dataset_idx.tolist() if "dataset_idx" in batch else [-1] * size
    natoms = batch.natoms.tolist()
    rows = []
    for method, (pred, ms) in preds.items():
        for b, metrics in enumerate(batch_metrics(pred, batch)):
            row = {"dataset_idx": idx[b], "natoms": natoms[b], "method": method, "time_ms": ms}
            rows.append(row | metrics)
    return rows


def aggregate_method(rows: Sequence[Mapping[str, Any]], method: str) -> dict[str, float]:
    """:func:`hip.metrics.aggregate_metrics` of one method's rows plus the mean ``Time [ms]`` per molecule."""
    mine = [row for row in rows if row["method"] == method]
    return aggregate_metrics(mine) | {TIME_COLUMN: float(np.mean([row["time_ms"] for row in mine]))}


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


# ---------------------------------------------------------------------------------------- output


def run_metadata(ckpt_path, datamodule: Any, split: str, rows: Sequence[Mapping[str, Any]],
                 device: torch.device, model: torch.nn.Module, chunk_size: int | None) -> dict[str, Any]:
    """What was evaluated, where and how: written to ``metrics.json``."""
    sources = getattr(datamodule, "sources", {}).get(split)
    if sources is not None:
        sources = [str(s) for s in sources] if isinstance(sources, list | tuple) else str(sources)
    hparams = getattr(datamodule, "hparams", {})
    return {
        "checkpoint": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
        "split": split,
        "dataset": sources,
        "batch_size": hparams.get("batch_size"),
        "num_molecules": sum(row["method"] == "HIP" for row in rows),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "autodiff_chunk_size": chunk_size,
        "model": dict(getattr(model, "config", {})),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def tables_text(results: Mapping[str, Mapping[str, float]], metadata: Mapping[str, Any]) -> str:
    """The Table 1 block (printed) and the Table 6 columns, with a line saying what was evaluated."""
    title = (f"Table 1: Hessian errors on the {metadata['split']} split ({metadata['num_molecules']} "
             f"molecules, {metadata['device_name']}; eigen-quantities after mass weighting and Eckart "
             "projection; time per molecule)")
    table6 = "Table 6 columns: raw Cartesian vs Eckart-projected eigen-quantities"
    return "\n".join([title, format_table(results, TABLE1_COLUMNS), "",
                      table6, format_table(results, TABLE6_COLUMNS)])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``per_molecule.csv``: :data:`ID_COLUMNS` then :data:`CSV_METRICS`; missing values left empty."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*ID_COLUMNS, *CSV_METRICS], restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_outputs(output_dir: Path, results: Mapping[str, Mapping[str, float]],
                  rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any],
                  parity: ParitySampler | None) -> None:
    """Write metrics.json, per_molecule.csv, tables.txt and (if ``parity``) the plots; print Table 1."""
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {"methods": results, "metadata": metadata}
    text = json.dumps(_json_safe(document), indent=2, ensure_ascii=False)
    (output_dir / "metrics.json").write_text(text + "\n")
    write_csv(output_dir / "per_molecule.csv", rows)
    text = tables_text(results, metadata)
    (output_dir / "tables.txt").write_text(text + "\n")
    print("\n" + text.split("\n\n")[0] + "\n")
    if parity is not None:
        plot_parity(output_dir / "hessian_parity.png", parity.points(), results)
        plot_mae_vs_natoms(output_dir / "hessian_mae_vs_natoms.png", rows)


# ---------------------------------------------------------------------------------------- plots


def plot_parity(path: Path, points: Mapping[str, torch.Tensor],
                results: Mapping[str, Mapping[str, float]]) -> None:
    """Predicted vs DFT Hessian entries, one panel per method, eV/Å² (Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    methods = [m for m in METHODS if m in points]
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
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
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
