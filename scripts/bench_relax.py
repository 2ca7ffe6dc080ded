#!/usr/bin/env python
"""Geometry relaxations with HIP, autodiff and finite-difference Hessians (paper §4, A.6.1, Fig. 3).

Defaults follow the HIP authors' relaxation runs (their gad-ff ``second_order_relaxation_pysiyphus.py``):
every molecule is noised with Gaussian noise rescaled so that the RMS of the atoms' displacements is
exactly ``--noise`` (0.05 Å; seeded per molecule name, so a resumed or extended run draws the same start)
and relaxed from that start by each method of :data:`hip.benchmarks.RELAXATION_METHODS`:

* ``rfo_hip``, ``rfo_ad``, ``rfo_fd``: Sella's RS-RFO with a fresh HIP / autodiff / finite-difference
  Hessian before every step;
* ``rfo_bfgs_hip``, ``rfo_bfgs_ad``, ``rfo_bfgs_fd``: RS-RFO with that Hessian at the start, then
  quasi-Newton updates (``rfo_bfgs_identity``, a Cartesian 1 Hartree/Bohr² · I start, with ``--coordinates
  cartesian`` only);
* ``ase_bfgs``, ``ase_fire``: ASE's first-order BFGS and FIRE (Cartesian).

Sella works in redundant internal coordinates with the authors' initial trust radius (0.3 Bohr =
0.159 Å, ``--trust-radius``), its trust-radius update sees the model's energy (``--energy model``), and
there is no time limit (``--time-limit 0``). Converged means all four "Gaussian default" criteria of
Table 13 (``--criteria``) within ``--max-steps`` (150). Per method the script prints the converged and
timed-out fractions and the quartiles of steps and wall time over all molecules (a run that did not
converge counts as the step budget, with the time it took), writes ``results.jsonl`` (one line per
finished run; rerunning the same command resumes), ``summary.csv``, ``table.txt`` and ``bench_relax.png``
(Fig. 3 style: steps and time per method, sorted by median) into ``--output``.

Default input: the DFT-relaxed reactants of the embedded reaction set (``data/reactions``,
:mod:`hip.data.reactions`; ``--roles reactant product`` adds the products). ``--data
../shared/horm/sample_100.lmdb --only-minima`` takes the HORM sample's DFT minima (no negative mode);
any HORM-format shard with ``--indices`` or any ASE-readable file works the same.

What still differs from the authors' runs: pysisyphus' RFOptimizer (line search, its trust-radius
update, its redundant internals) is replaced by Sella's RS-RFO in Sella's internal coordinates; their
starts are 100 T1x validation reactants (noise seeds differ); ``--noise-draw gaussian --noise 0.5
--coordinates cartesian --energy work --time-limit 60`` restores this script's earlier protocol.

Examples:
  python scripts/bench_relax.py                                   # defaults (about 15 minutes on 2 cores)
  python scripts/bench_relax.py --data ../shared/horm/sample_100.lmdb --only-minima --max-molecules 10
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
    perturb,
    quartiles,
    select_methods,
    select_molecules,
    write_report,
)
from hip.cli import user_errors
from hip.data.labelling import displacement_rng
from hip.data.reactions import REACTION_SET_DIR
from hip.metrics import format_table
from hip.optimize import AUTHORS_TRUST_RADIUS, GAUSSIAN_CRITERIA, OptimizerSpec, calculator_hessian, optimize

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("Converged [%]", "Timed out [%]", "Steps Q1", "Steps median", "Steps Q3", "Time Q1 [s]", "Time median [s]",
           "Time Q3 [s]", "Hessian time median [s]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, data=[str(REACTION_SET_DIR)], output=str(ROOT / "logs" / "bench_relax"),
                         max_molecules=None, methods=RELAXATION_METHODS)
    parser.add_argument("--noise", type=float, default=0.05, help="per-atom RMS noise, Å (default: %(default)s)")
    parser.add_argument("--noise-draw", choices=("rescaled", "gaussian"), default="rescaled",
                        help="rescaled: exactly --noise RMS (the authors'); gaussian: i.i.d. σ = noise/√3 per "
                             "coordinate, RMS only in expectation (default: %(default)s)")
    parser.add_argument("--min-distance", type=float, default=0.7,
                        help="redraw noise that brings two atoms closer than this, Å (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=150, help="step budget (default: %(default)s)")
    parser.add_argument("--criteria", choices=list(GAUSSIAN_CRITERIA), default="default")
    parser.add_argument("--coordinates", choices=("internal", "cartesian"), default="internal",
                        help="Sella's coordinates (internal: the identity start rfo_bfgs_identity, a Cartesian "
                             "matrix, is left out of the default methods) (default: %(default)s)")
    parser.add_argument("--trust-radius", type=float, default=AUTHORS_TRUST_RADIUS,
                        help="Sella's initial trust radius, Å (default: the authors' 0.3 Bohr = %(default).4f)")
    parser.add_argument("--roles", nargs="+", choices=("reactant", "product"), default=["reactant"],
                        help="reaction-set molecules to relax (default: the reactants, as the authors' T1x runs)")
    parser.add_argument("--only-minima", action="store_true",
                        help="keep only inputs whose DFT Hessian has no negative mode (HORM shards)")
    return parser.parse_args(argv)


def internal_coordinate_methods(methods: list[OptimizerSpec], default: bool) -> list[OptimizerSpec]:
    """``methods`` that can run in Sella's internal coordinates: the identity start cannot (it is a
    Cartesian matrix); it is left out of the default method list with a note, and an error if asked for.

    Raises:
        ValueError: ``rfo_bfgs_identity`` was asked for explicitly.
    """
    kept = [m for m in methods if m.hessian != "identity"]
    if len(kept) < len(methods):
        if not default:
            raise ValueError("--coordinates internal: rfo_bfgs_identity starts from a Cartesian identity Hessian; "
                             "leave it out of --methods or give --coordinates cartesian")
        print("--coordinates internal: rfo_bfgs_identity (a Cartesian identity start) left out")
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
        internal = args.coordinates == "internal"
        if internal:
            methods = internal_coordinate_methods(methods, args.methods == [m.key for m in RELAXATION_METHODS])
        molecules = select_molecules(args.data, args.indices, args.stride, args.max_molecules,
                                     0 if args.only_minima else None, args.smallest_first,
                                     roles=args.roles)
        criteria = GAUSSIAN_CRITERIA[args.criteria]
        settings = {**common_settings(args), "noise": args.noise, "noise_draw": args.noise_draw,
                    "min_distance": args.min_distance, "seed": args.seed, "max_steps": args.max_steps,
                    "criteria": args.criteria, "coordinates": args.coordinates, "trust_radius": args.trust_radius,
                    "only_minima": args.only_minima, "roles": args.roles}
        calculators = model_calculators(args.ckpt, args.device)
        log = ResultsLog(args.output, settings, ("molecule", "method"))
    tasks = [(m, s) for m in molecules for s in methods if not log.done(molecule=m.name, method=s.key)]
    with tqdm(tasks, desc="relaxations", unit="run") as bar:
        for molecule, spec in bar:
            bar.set_postfix_str(f"{molecule.name} {spec.key}")
            rng = displacement_rng(args.seed, molecule.name, 0)
            start = perturb(molecule.atoms, args.noise, rng, args.min_distance, args.noise_draw == "rescaled")
            atoms = attach(start, calculators[spec.model_hessian or "hip"], args.energy)
            hessian = calculator_hessian if spec.model_hessian else None
            result = optimize(atoms, spec, criteria, args.max_steps, 0, hessian, internal, args.time_limit or None,
                              args.trust_radius)  # ASE's BFGS and FIRE: Cartesian, their own step control
            if result.error:
                tqdm.write(f"{molecule.name} {spec.key}: stopped after {result.steps} steps: {result.error}")
            log.add({"molecule": molecule.name, "formula": start.get_chemical_formula(), "natoms": len(start),
                     "method": spec.key, **result.as_row()})
    labels = {s.key: s.label for s in methods}
    rows = [r for r in log.rows if r["method"] in labels and r["molecule"] in {m.name for m in molecules}]
    table = summarize(rows, labels, args.max_steps)
    text = (f"Relaxations (paper Fig. 3): {len(molecules)} molecules, noise {args.noise} Å RMS ({args.noise_draw}), "
            f"Sella in {args.coordinates} coordinates, trust radius {args.trust_radius:.3f} Å, Gaussian "
            f"{args.criteria} criteria, {args.max_steps}-step budget; steps of unconverged runs count as the "
            f"budget\n" + format_table(table, COLUMNS, digits=1))
    write_report(args.output, text, table, COLUMNS, lambda path: plot(path, rows, labels, args.max_steps),
                 "bench_relax")
    return table


if __name__ == "__main__":
    main()
