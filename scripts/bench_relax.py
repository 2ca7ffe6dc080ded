#!/usr/bin/env python
"""Geometry relaxations with HIP, autodiff and finite-difference Hessians (paper §4, A.6.1, Fig. 3).

Every molecule is noised (Gaussian, per-atom RMS ``--noise`` Å, paper 0.5 Å; seeded per molecule
name, so a resumed or extended run draws the same start) and relaxed from that start by each method
of :data:`hip.benchmarks.RELAXATION_METHODS`:

* ``rfo_hip``, ``rfo_ad``, ``rfo_fd``: Sella's RS-RFO with a fresh HIP / autodiff / finite-difference
  Hessian before every step;
* ``rfo_bfgs_hip``, ``rfo_bfgs_ad``, ``rfo_bfgs_fd``, ``rfo_bfgs_identity``: RS-RFO with that Hessian
  (or 1 Hartree/Bohr² · I) at the start, then quasi-Newton updates;
* ``ase_bfgs``, ``ase_fire``: ASE's first-order BFGS and FIRE.

Converged means all four "Gaussian default" criteria of Table 13 (``--criteria``), within
``--max-steps`` (150) steps and ``--time-limit`` seconds per run (60 s by default: on a CPU a fresh
autodiff or finite-difference Hessian every step can take an hour for one molecule; ``0`` lifts the
limit, as for the paper's step-only budget). Per method the script prints the converged and timed-out
fractions and the quartiles of steps and wall time over all molecules (a run that did not converge
counts as the step budget, with the time it took), writes ``results.jsonl`` (one line per finished
run; rerunning the same command resumes), ``summary.csv``, ``table.txt`` and ``bench_relax.png``
(Fig. 3 style: steps and time per method, sorted by median) into ``--output``.

Default input: the equilibrium (G2) geometries of the first 2 validation molecules of
``data/embedded`` (NH3 and H2CCO, unseen in training; ``--max-molecules 4`` adds CH3CHO and CH3COOH).
Any HORM-format shard with ``--indices``, or any ASE-readable file, works the same.

Examples:
  python scripts/bench_relax.py                                   # defaults
  python scripts/bench_relax.py --data ../shared/horm/sample_100.lmdb --indices 43 63 73
  python scripts/bench_relax.py --methods rfo_hip rfo_bfgs_hip ase_fire --device cuda --ckpt <checkpoint>
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hip.benchmarks import (
    RELAXATION_METHODS,
    ResultsLog,
    add_common_arguments,
    attach,
    common_settings,
    figure,
    model_calculators,
    parse_benchmark_args,
    perturb,
    quartiles,
    select_methods,
    select_molecules,
    write_report,
)
from hip.cli import user_errors
from hip.data.labelling import displacement_rng
from hip.metrics import format_table
from hip.optimize import GAUSSIAN_CRITERIA, OptimizerSpec, calculator_hessian, optimize

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("Converged [%]", "Timed out [%]", "Steps Q1", "Steps median", "Steps Q3", "Time Q1 [s]", "Time median [s]",
           "Time Q3 [s]", "Hessian time median [s]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, data=[str(ROOT / "data" / "embedded" / "val.lmdb")], stride=5,
                         output=str(ROOT / "logs" / "bench_relax"), max_molecules=2, methods=RELAXATION_METHODS)
    parser.add_argument("--noise", type=float, default=0.5, help="per-atom RMS noise, Å (default: %(default)s)")
    parser.add_argument("--min-distance", type=float, default=0.7,
                        help="redraw noise that brings two atoms closer than this, Å (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=150, help="step budget (default: %(default)s)")
    parser.add_argument("--criteria", choices=list(GAUSSIAN_CRITERIA), default="default")
    parser.add_argument("--internal", action="store_true",
                        help="Sella in internal coordinates (not with the identity start: rfo_bfgs_identity is "
                             "then left out of the default methods)")
    return parse_benchmark_args(parser, argv)


def internal_coordinate_methods(methods: list[OptimizerSpec], default: bool) -> list[OptimizerSpec]:
    """``methods`` that can run in Sella's internal coordinates: the identity start cannot (it is a
    Cartesian matrix); it is left out of the default method list with a note, and an error if asked for.

    Raises:
        ValueError: ``rfo_bfgs_identity`` was asked for explicitly.
    """
    kept = [m for m in methods if m.hessian != "identity"]
    if len(kept) < len(methods):
        if not default:
            raise ValueError("--internal: rfo_bfgs_identity starts from a Cartesian identity Hessian; leave it "
                             "out of --methods")
        print("--internal: rfo_bfgs_identity (a Cartesian identity start) left out")
    return kept


def counted_steps(row: dict, max_steps: int) -> int:
    """Steps of a run for the statistics: the budget if it did not converge."""
    return row["steps"] if row["converged"] else max_steps


def summarize(rows: list[dict], labels: dict[str, str], max_steps: int) -> dict[str, dict[str, float]]:
    """Per method (in ``labels`` order): converged %, quartiles of steps and wall time, median Hessian time."""
    table = {}
    for key, label in labels.items():
        mine = [r for r in rows if r["method"] == key]
        if not mine:
            continue
        s1, s2, s3 = quartiles(counted_steps(r, max_steps) for r in mine)
        t1, t2, t3 = quartiles(r["wall_time"] for r in mine)
        shares = (100.0 * np.mean([r["converged"] for r in mine]), 100.0 * np.mean([r["timed_out"] for r in mine]))
        table[label] = dict(zip(COLUMNS, (*shares, s1, s2, s3, t1, t2, t3,
                                          quartiles(r["hessian_time"] for r in mine)[1]), strict=True))
    return table


def plot(path: Path, rows: list[dict], labels: dict[str, str], max_steps: int) -> None:
    """Fig. 3 style: (a) steps and (b) wall time per method, box plots sorted by median, runs as dots."""
    with figure(path, ncols=2, size=(12, 4.5)) as (_, axes):
        _plot_panels(axes, rows, labels, max_steps)


def _plot_panels(axes, rows: list[dict], labels: dict[str, str], max_steps: int) -> None:
    for ax, (field, name) in zip(axes, (("steps", "steps to convergence"), ("wall_time", "wall time [s]")),
                                 strict=True):
        runs = {k: [r for r in rows if r["method"] == k] for k in labels}
        values = {k: [counted_steps(r, max_steps) if field == "steps" else r[field] for r in v]
                  for k, v in runs.items() if v}
        order = sorted(values, key=lambda k: np.median(values[k]))
        ax.boxplot([values[k] for k in order], showfliers=False)
        for i, k in enumerate(order, 1):
            ax.scatter(i + np.linspace(-0.15, 0.15, len(values[k])), values[k], s=12, zorder=3,
                       c=["tab:orange" if r["converged"] else "tab:gray" for r in runs[k]])
        ax.set_xticks(range(1, len(order) + 1), [labels[k] for k in order], rotation=40, ha="right")
        ax.set_ylabel(name)
        if field == "wall_time":
            ax.set_yscale("log")
    axes[0].set_title(f"(a) steps (not converged: counted as {max_steps}, grey)")
    axes[1].set_title("(b) wall time")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns the printed table (method label → column → value)."""
    args = parse_args(argv)
    with user_errors("bench_relax.py"):
        methods = select_methods(RELAXATION_METHODS, args.methods)
        if args.internal:
            methods = internal_coordinate_methods(methods, args.methods == [m.key for m in RELAXATION_METHODS])
        molecules = select_molecules(args.data, args.indices, args.stride, args.max_molecules,
                                     smallest_first=args.smallest_first)
        criteria = GAUSSIAN_CRITERIA[args.criteria]
        settings = {**common_settings(args), "noise": args.noise, "min_distance": args.min_distance,
                    "seed": args.seed, "max_steps": args.max_steps, "criteria": args.criteria,
                    "internal": args.internal}
        calculators = model_calculators(args.ckpt, args.device)
        log = ResultsLog(args.output, settings, ("molecule", "method"))
    tasks = [(m, s) for m in molecules for s in methods if not log.done(molecule=m.name, method=s.key)]
    with tqdm(tasks, desc="relaxations", unit="run") as bar:
        for molecule, spec in bar:
            bar.set_postfix_str(f"{molecule.name} {spec.key}")
            rng = displacement_rng(args.seed, molecule.name, 0)
            start = perturb(molecule.atoms, args.noise, rng, args.min_distance)
            atoms = attach(start, calculators[spec.model_hessian or "hip"], args.energy)
            hessian = calculator_hessian if spec.model_hessian else None
            result = optimize(atoms, spec, criteria, args.max_steps, 0, hessian, args.internal, args.time_limit or None)
            if result.error:
                tqdm.write(f"{molecule.name} {spec.key}: stopped after {result.steps} steps: {result.error}")
            log.add({"molecule": molecule.name, "formula": start.get_chemical_formula(), "natoms": len(start),
                     "method": spec.key, **result.as_row()})
    labels = {s.key: s.label for s in methods}
    rows = [r for r in log.rows if r["method"] in labels and r["molecule"] in {m.name for m in molecules}]
    table = summarize(rows, labels, args.max_steps)
    text = (f"Relaxations (paper Fig. 3): {len(molecules)} molecules, noise {args.noise} Å RMS, Gaussian "
            f"{args.criteria} criteria, {args.max_steps}-step budget; steps of unconverged runs count as the "
            f"budget\n" + format_table(table, COLUMNS, digits=1))
    write_report(args.output, text, table, COLUMNS, lambda path: plot(path, rows, labels, args.max_steps),
                 "bench_relax")
    return table


if __name__ == "__main__":
    main()
