"""Evaluate a checkpoint on a data split by the paper's protocol: Tables 1, 3, 6 and 9 for HIP and for
the autodiff Hessian of the same model.

:func:`evaluate_checkpoint` draws the molecules (all of the split, or a seeded random subset of
``max_molecules``, as the paper's 1000 T1x-validation molecules), then runs them **one molecule per
forward pass** (batch size 1, as the HIP authors' ``scripts/eval_horm.py``) and times

* **HIP**: one forward pass giving energy, forces and the Hessian (``model(batch)``, no autograd);
* **AD** (optional): the Hessian as −∂F/∂x of the same model's direct forces
  (:func:`hip.model.autodiff.autodiff_hessian`, its own forward pass plus 3N backward rows),

after ``warmup_molecules`` untimed passes of each method. Two times per molecule
(:func:`hip.device.timed`: synchronised CUDA events on a GPU, ``perf_counter`` on a CPU; scoring is
not timed): ``Time [ms]``, the model call on the prebuilt graphs already on the device, and
``Time incl. graphs [ms]``, that plus building both graphs from the positions (radius graph, Hessian
graph and scatter indices at the model's settings, on the CPU as hip's data pipeline does), collating
the batch and copying it to the device: the authors' timed forward, which builds its graphs inside.
Each prediction is compared with the DFT Hessian (:func:`hip.metrics.molecule_metrics`).

The settings' one home is ``configs/eval/default.yaml`` (the ``eval`` block of ``eval.py`` and of
``train.py``'s post-training evaluation), checked by :func:`eval_settings`; they have no defaults here.
The plots and their subsample of Hessian entries are :mod:`hip.plots`.

Energy and forces come from the one forward pass of the model and are scored in the HIP rows only
(the AD Hessian differentiates those same forces, so AD has no energy/force prediction of its own).

Files written to ``output_dir``:

* ``metrics.json``: ``{"methods": {"HIP": {column: value}, "AD": ...}, "metadata": {...}}``, columns as
  in :func:`hip.metrics.aggregate_metrics` (units in brackets: Table 1 and 6 means, Table 3 and 9
  rates in %) plus ``Time [ms]`` and ``Time incl. graphs [ms]``; NaN is written as null;
* ``per_molecule.csv``: one row per molecule and method: :data:`ID_COLUMNS` and
  every per-molecule metric of :func:`hip.metrics.molecule_metrics` (empty where a method has none);
* ``tables.txt``: the printed Tables 1, 3 and 9, and the Table 6 columns (raw vs Eckart-projected);
* ``hessian_parity.png`` (predicted vs DFT Hessian entries, at most ``max_parity_points`` of them,
  a uniform random subsample) and ``hessian_mae_vs_natoms.png`` when ``plots`` is true.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from hip.data.graphs import collate
from hip.device import resolve_device, timed
from hip.metrics import (
    DFT_TYPE_COLUMNS,
    EXTREMUM_TYPES,
    METRIC_COLUMNS,
    TABLE1_COLUMNS,
    TABLE3_COLUMNS,
    TABLE6_COLUMNS,
    TABLE9_COLUMNS,
    TIME_COLUMN,
    TIME_WITH_GRAPHS_COLUMN,
    aggregate_metrics,
    batch_metrics,
    format_table,
)
from hip.model.autodiff import autodiff_hessian
from hip.model.checkpoints import load_checkpoint
from hip.plots import ParitySampler, plot_mae_vs_natoms, plot_parity

#: Methods in table order: HIP's direct Hessian, and the autodiff Hessian of the same model.
METHODS = ("HIP", "AD")
#: Leading columns of ``per_molecule.csv``; the metric keys follow.
ID_COLUMNS = ("dataset_idx", "natoms", "method", "time_ms", "graph_ms", "time_incl_graphs_ms")
#: Per-molecule metric keys in CSV order (those of :data:`hip.metrics.METRIC_COLUMNS` first).
CSV_METRICS = (*METRIC_COLUMNS, "n_neg_pred", "n_neg_true", "same_extremum_type")
#: Stage passed to ``datamodule.setup`` for each split.
SPLIT_STAGES = {"train": "fit", "val": "validate", "test": "test"}
#: The keys of the ``eval`` block (``configs/eval/default.yaml``): :func:`evaluate_checkpoint`'s settings.
SETTINGS = ("split", "autodiff", "autodiff_chunk_size", "max_molecules", "plots", "device", "subset_seed",
            "negative_eigenvalue_threshold", "warmup_molecules")


def eval_settings(config: Mapping[str, Any], option: str = "eval") -> dict[str, Any]:
    """The ``eval`` config block (``configs/eval/default.yaml``) checked, as :func:`evaluate_checkpoint` kwargs.

    Args:
        config: a mapping with exactly the keys of :data:`SETTINGS`.
        option: the block's name in messages (``eval.device=...``).

    Returns:
        The settings, ``device`` resolved (:func:`hip.device.resolve_device`).

    Raises:
        ValueError: one line naming the option: a missing or unknown key, a value of the wrong type
            (``eval.max_molecules=abc``), an unknown split or device, CUDA where there is none.
    """
    config = dict(config)
    if sorted(config) != sorted(SETTINGS):
        raise ValueError(f"{option}: expected the keys {sorted(SETTINGS)}, got {sorted(config)}")
    kinds = {"autodiff": (bool, "true or false"), "plots": (bool, "true or false"),
             "subset_seed": (int, "an integer"), "warmup_molecules": (int, "an integer"),
             "autodiff_chunk_size": (int | None, "an integer or null"),
             "max_molecules": (int | None, "an integer or null"),
             "negative_eigenvalue_threshold": (float | int, "a number, eV/(Å²·amu)")}
    for key, (kind, what) in kinds.items():
        value = config[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{option}.{key}={value!r}: expected {what}")
    config["negative_eigenvalue_threshold"] = float(config["negative_eigenvalue_threshold"])
    for key in ("autodiff_chunk_size", "max_molecules"):
        if config[key] is not None and config[key] < 1:
            raise ValueError(f"{option}.{key}={config[key]} must be ≥ 1 or null")
    if config["warmup_molecules"] < 0:
        raise ValueError(f"{option}.warmup_molecules={config['warmup_molecules']} must be ≥ 0")
    if config["split"] not in SPLIT_STAGES:
        raise ValueError(f"{option}.split={config['split']!r}: use one of {sorted(SPLIT_STAGES)}")
    config["device"] = resolve_device(config["device"], option=f"{option}.device")
    return config


def evaluate_checkpoint(
    ckpt_path: str | Path | None,
    datamodule: Any,
    output_dir: str | Path,
    *,
    split: str,
    autodiff: bool,
    autodiff_chunk_size: int | None,
    max_molecules: int | None,
    plots: bool,
    device: str | torch.device,
    subset_seed: int,
    negative_eigenvalue_threshold: float,
    warmup_molecules: int,
    model: torch.nn.Module | None = None,
    max_parity_points: int = 200_000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Evaluate a checkpoint's Hessians (HIP and, optionally, AD) on one split; write and print results.

    The settings from ``split`` to ``warmup_molecules`` have no defaults here: their one home is
    ``configs/eval/default.yaml`` (pass ``**eval_settings(cfg.eval)``).

    Args:
        ckpt_path: checkpoint in any format of :mod:`hip.model.checkpoints`; loaded unless ``model``
            is given (then it is only recorded in the metadata and may be None).
        datamodule: object with ``setup(stage)`` and ``{split}_dataloader()`` returning a torch
            ``DataLoader`` over :class:`~hip.data.graphs.MoleculeGraph` with ``hessian`` [9N²] eV/Å², ``ae``
            [] eV and ``forces`` [N, 3] eV/Å labels (e.g. :class:`hip.data.HormDataModule`), built with
            the model's graph settings. Its dataset, collate function and workers are used; its batch
            size is not (one molecule per forward pass).
        output_dir: directory for the files of the module docstring (created if needed).
        split: ``"val"``, ``"test"`` or ``"train"``.
        autodiff: also evaluate the autodiff Hessian of the same model (the "AD" row).
        autodiff_chunk_size: Hessian rows per batched backward pass (memory bound); None: all at once.
        max_molecules: evaluate a random subset of this many molecules of the split, drawn with
            ``subset_seed`` (:func:`select_molecules`); None, or at least the split's size: all.
        plots: write the two PNG plots.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``... or ``"auto"`` (CUDA when available).
        model: an already loaded :class:`~hip.model.hip_equiformer.HIPEquiformerV2` to evaluate
            instead of loading ``ckpt_path`` (it is put in eval mode and moved to ``device``).
        max_parity_points: most Hessian entries drawn in the parity plot.
        seed: seed of the parity-plot subsample (the model's random edge-frame roll uses torch's global
            RNG; seed that for reproducible predictions).
        subset_seed: seed of the ``max_molecules`` subset.
        negative_eigenvalue_threshold: Eckart-projected eigenvalues below this are negative, eV/(Å²·amu)
            (Tables 3 and 9).
        warmup_molecules: run each method untimed on this many molecules before timing.

    Returns:
        Method ("HIP", "AD") → aggregated metrics: column name with unit → value
        (:func:`hip.metrics.aggregate_metrics`: Table 1/6 means, Table 3/9 rates in %), plus
        ``Time [ms]`` and ``Time incl. graphs [ms]`` (means per molecule at batch size 1).

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist (and no ``model`` was given).
        CheckpointError: the checkpoint cannot be loaded (see :mod:`hip.model.checkpoints`).
        ValueError: unknown ``split``, a split without data, ``max_molecules`` < 1 or
            ``warmup_molecules`` < 0.
    """
    if max_molecules is not None and max_molecules < 1:
        raise ValueError(f"max_molecules must be ≥ 1 or None, got {max_molecules}")
    if warmup_molecules < 0:
        raise ValueError(f"warmup_molecules must be ≥ 0, got {warmup_molecules}")
    device = resolve_device(device)
    if model is None:
        model = load_checkpoint(ckpt_path, map_location=device)
    model = model.to(device).eval()
    methods = METHODS if autodiff else METHODS[:1]
    loader = molecule_loader(split_dataloader(datamodule, split), max_molecules, subset_seed)
    if len(loader) == 0:
        raise ValueError(f"the {split} split of the datamodule holds no molecules")
    warm_up(model, itertools.islice(loader, warmup_molecules), device, autodiff, autodiff_chunk_size)
    parity = ParitySampler(max_parity_points, seed=seed)
    rows: list[dict[str, Any]] = []
    for molecule in tqdm(loader, desc=f"evaluating {split}", unit="molecule"):
        rows += evaluate_molecule(model, molecule, device, autodiff, autodiff_chunk_size, parity,
                                  negative_eigenvalue_threshold)
    results = {m: aggregate_method(rows, m) for m in methods}
    metadata = run_metadata(ckpt_path, datamodule, split, rows, device, model, autodiff_chunk_size) | {
        "max_molecules": max_molecules, "subset_seed": subset_seed,
        "negative_eigenvalue_threshold [eV/Å²/amu]": negative_eigenvalue_threshold,
        "warmup_molecules": warmup_molecules}
    write_outputs(Path(output_dir), results, rows, metadata, parity if plots else None)
    return results


# ---------------------------------------------------------------------------------------- data


def split_dataloader(datamodule: Any, split: str) -> DataLoader:
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


def select_molecules(num_molecules: int, max_molecules: int | None, seed: int) -> list[int]:
    """Positions of the molecules to evaluate: a uniform random subset without repetition, in order.

    Args:
        num_molecules: size of the split.
        max_molecules: subset size K (None, or K ≥ ``num_molecules``: every molecule).
        seed: seed of the draw (its own ``torch.Generator``: the global RNG is left alone); the same
            (``num_molecules``, K, seed) always gives the same subset.

    Returns:
        min(K, ``num_molecules``) ascending positions in [0, ``num_molecules``).

    Raises:
        ValueError: ``max_molecules`` < 1.
    """
    if max_molecules is not None and max_molecules < 1:
        raise ValueError(f"max_molecules must be ≥ 1 or None, got {max_molecules}")
    if max_molecules is None or max_molecules >= num_molecules:
        return list(range(num_molecules))
    draw = torch.randperm(num_molecules, generator=torch.Generator().manual_seed(seed))[:max_molecules]
    return sorted(draw.tolist())


def molecule_loader(loader: DataLoader, max_molecules: int | None, seed: int) -> DataLoader:
    """One molecule per batch, in dataset order, over :func:`select_molecules` of ``loader``'s dataset
    (the paper's timing is per forward pass at batch size 1); collate function and workers as ``loader``."""
    dataset = loader.dataset
    positions = select_molecules(len(dataset), max_molecules, seed)
    if len(positions) < len(dataset):
        dataset = Subset(dataset, positions)
    return DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers)


# ---------------------------------------------------------------------------------------- timing


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


def warm_up(model: torch.nn.Module, molecules: Iterable, device: torch.device, autodiff: bool,
            chunk_size: int | None) -> None:
    """Untimed passes of each method over ``molecules`` (lazy initialisation, CUDA kernel selection)."""
    for molecule in molecules:
        on_device = graphs_on_device(model, molecule, device)
        hip_pass(model, on_device)
        if autodiff:
            ad_pass(model, on_device, chunk_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- metrics


def graphs_on_device(model: torch.nn.Module, molecule, device: torch.device):
    """A batch of one built afresh from ``molecule``'s ``z`` [N] and ``pos`` [N, 3] Å at the model's graph
    settings (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.graph_builder`: radius graph, Hessian
    graph, scatter indices), collated and copied to ``device``: what the "incl. graphs" time adds."""
    return collate([model.graph_builder()(molecule.z, molecule.pos)]).to(device)


def evaluate_molecule(model: torch.nn.Module, molecule, device: torch.device, autodiff: bool,
                      chunk_size: int | None, parity: ParitySampler,
                      negative_eigenvalue_threshold: float) -> list[dict[str, Any]]:
    """Time both methods on one molecule (a collated batch of one) and score it.

    The graphs are built afresh at the model's settings (:func:`graphs_on_device`, timed as
    ``graph_ms``), then each method's model call is timed on them (``time_ms``).

    Returns:
        One row per method: :data:`ID_COLUMNS` (times in ms; ``time_incl_graphs_ms`` = ``graph_ms`` +
        ``time_ms``, the two timed back to back) and the metrics of :func:`hip.metrics.molecule_metrics`.

    Raises:
        ValueError: the batch holds more than one molecule.
    """
    if molecule.num_graphs != 1:
        raise ValueError(f"evaluate_molecule takes a batch of one molecule, got {molecule.num_graphs}")
    on_device, graph_ms = timed(lambda: graphs_on_device(model, molecule, device), device)
    out, ms = timed(lambda: hip_pass(model, on_device), device)
    preds = {"HIP": ({k: v.detach().cpu() for k, v in out.items()}, ms)}
    if autodiff:
        hessian, ms = timed(lambda: ad_pass(model, on_device, chunk_size), device)
        preds["AD"] = ({"hessian": hessian.detach().cpu()}, ms)
    parity.add(molecule.hessian, {m: pred["hessian"] for m, (pred, _) in preds.items()})
    ids = {"dataset_idx": int(molecule.dataset_idx) if "dataset_idx" in molecule else -1,
           "natoms": int(molecule.natoms)}
    return [ids | {"method": method, "time_ms": ms, "graph_ms": graph_ms, "time_incl_graphs_ms": graph_ms + ms}
            | batch_metrics(pred, molecule, negative_eigenvalue_threshold=negative_eigenvalue_threshold)[0]
            for method, (pred, ms) in preds.items()]


def aggregate_method(rows: Sequence[Mapping[str, Any]], method: str) -> dict[str, float]:
    """:func:`hip.metrics.aggregate_metrics` of one method's rows plus the mean times per molecule, ms."""
    mine = [row for row in rows if row["method"] == method]
    return aggregate_metrics(mine) | {column: float(np.mean([row[key] for row in mine])) for column, key in
                                      ((TIME_COLUMN, "time_ms"), (TIME_WITH_GRAPHS_COLUMN, "time_incl_graphs_ms"))}


# ---------------------------------------------------------------------------------------- output


def run_metadata(ckpt_path, datamodule: Any, split: str, rows: Sequence[Mapping[str, Any]],
                 device: torch.device, model: torch.nn.Module, chunk_size: int | None) -> dict[str, Any]:
    """What was evaluated, where and how: written to ``metrics.json``."""
    sources = getattr(datamodule, "sources", {}).get(split)
    if sources is not None:
        sources = [str(s) for s in sources] if isinstance(sources, list | tuple) else str(sources)
    return {
        "checkpoint": None if ckpt_path is None else str(Path(ckpt_path).resolve()),
        "split": split,
        "dataset": sources,
        "num_molecules": sum(row["method"] == "HIP" for row in rows),
        "batch_size": 1,
        "timing": ("one forward pass per molecule after warm-up, " + ("synchronised CUDA events" if device.type
                   == "cuda" else "time.perf_counter") + "; Time: the model call on prebuilt graphs on the device; "
                   "Time incl. graphs: that plus building both graphs on the CPU, collation and the copy"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "autodiff_chunk_size": chunk_size,
        "model": dict(getattr(model, "config", {})),
        "torch": torch.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def table_blocks(results: Mapping[str, Mapping[str, float]], metadata: Mapping[str, Any]) -> list[str]:
    """Tables 1, 3, 9 and the Table 6 columns as text blocks, each with a title saying what it holds."""
    n, where = metadata["num_molecules"], metadata["device_name"]
    threshold = metadata["negative_eigenvalue_threshold [eV/Å²/amu]"]
    table1 = (f"Table 1: Hessian errors on the {metadata['split']} split ({n} molecules). Hessian MAE and "
              "raw eigenvalue MAE (all 3N eigenvalues) on the Cartesian Hessians; CosSim v1 and λ1 after mass "
              "weighting and Eckart projection; time per forward pass at batch size 1 after warm-up "
              f"({where}): the model call, and incl. building both graphs (the authors' timing); last "
              "column: MAE of the 3N−6 Eckart-projected eigenvalues (extra).")
    blocks = [table1 + "\n" + format_table(results, TABLE1_COLUMNS)]
    first = next(iter(results.values()))
    if all(column in first for column in DFT_TYPE_COLUMNS):
        shares = ", ".join(f"{first[c]:.1f}% {kind}" for kind, c in zip(EXTREMUM_TYPES, DFT_TYPE_COLUMNS, strict=True))
        negative = f"negative: Eckart-projected eigenvalue < {threshold:g} eV/Å²/amu"
        blocks.append(f"Table 3: extremum type from the number of negative eigenvalues ({negative}); {n} molecules, "
                      f"DFT: {shares}.\n" + format_table(results, TABLE3_COLUMNS, digits=1))
        blocks.append("Table 9: identifying transition states (exactly one negative eigenvalue) by frequency "
                      "analysis, DFT as the label; last column: any extremum type.\n"
                      + format_table(results, TABLE9_COLUMNS, digits=1))
    blocks.append("Table 6 columns: raw Cartesian vs Eckart-projected eigen-quantities\n"
                  + format_table(results, TABLE6_COLUMNS))
    return blocks


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
    """Write metrics.json, per_molecule.csv, tables.txt and (if ``parity``) the plots; print Tables 1, 3, 9."""
    output_dir.mkdir(parents=True, exist_ok=True)
    document = {"methods": results, "metadata": metadata}
    text = json.dumps(_json_safe(document), indent=2, ensure_ascii=False)
    (output_dir / "metrics.json").write_text(text + "\n")
    write_csv(output_dir / "per_molecule.csv", rows)
    blocks = table_blocks(results, metadata)
    (output_dir / "tables.txt").write_text("\n\n".join(blocks) + "\n")
    print("\n" + "\n\n".join(blocks[:-1]) + "\n")
    if parity is not None:
        plot_parity(output_dir / "hessian_parity.png", parity.points(), results)
        plot_mae_vs_natoms(output_dir / "hessian_mae_vs_natoms.png", rows)
