#!/usr/bin/env python
"""Transition-state search with HIP, autodiff and finite-difference Hessians (paper §4, A.6.2, Fig. 4).

ReactBench's growing-string stage is out of scope: the search starts from TS guesses, by default the
geometries of the HORM sample shard whose DFT Hessian has exactly one negative eigenvalue after mass
weighting and Eckart projection (48 of its 100), optionally noised (``--noise``). Each guess is
refined by every method of :data:`hip.benchmarks.TS_SEARCH_METHODS`: Sella's RS-P-RFO (``order=1``) with
a fresh HIP / autodiff / finite-difference Hessian every step (``prfo_hip``, ``prfo_ad``,
``prfo_fd``) or with one at the start and TS-BFGS updates (``prfo_bfgs_*``), ``--max-steps`` (50)
steps and ``--time-limit`` seconds (60 s by default, so that per-step finite differences stay
affordable on a CPU; ``0`` lifts it), "Gaussian default" criteria. The paper's stages, per method:

1. converged: the criteria held within the budget;
2. TS success: the method's own Hessian at the end has exactly one negative mode (frequency
   analysis with ``eval.py``'s threshold); "converged & TS" is paper Table 8's "Both";
3. IRC verified: Sella's IRC both ways from a TS success (``--irc-steps``), each end then relaxed,
   reaches two distinct minima (:func:`hip.irc.irc_verify`, within ``--time-limit``; the
   reaction's own reactant and product are not known here);
4. with ``--dft-verify K``: K found TSs per method (IRC-verified ones first, then the other TS
   successes; with ``--dft-every-end`` then any other search end) recomputed with PySCF at HORM's
   level (ωB97X/6-31G(d), :mod:`hip.dft`):
   "DFT TS" = exactly one negative DFT mode, "DFT converged TS" = that and DFT force RMS below
   2e-3 Hartree/Bohr. Minutes per molecule on 2 CPU cores; each result is written as it finishes.

Also printed: how far each search moved from its guess (median aligned RMSD, Å) and how each method's
Hessian classifies the guesses themselves against their DFT Hessians (``eval.py``'s Table 3 columns,
:func:`hip.metrics.extremum_classification`). Results go to ``--output``: ``results.jsonl``
(searches, resumable), ``dft/results.jsonl`` (DFT checks, resumable), ``summary.csv``, ``table.txt``
and ``bench_ts_search.png`` (Fig. 4 style: share of guesses passing each stage per method).

Examples:
  python scripts/bench_ts_search.py                        # defaults
  OMP_NUM_THREADS=1 nohup python scripts/bench_ts_search.py --max-molecules 6 --smallest-first \\
      --methods prfo_hip prfo_ad prfo_fd --time-limit 0 --dft-verify 6 --dft-every-end \\
      --output logs/bench_ts_search_dft &                 # the README's DFT-verified run (hours)
  python scripts/bench_ts_search.py --data my_guesses.xyz --stride 1 --no-filter
"""

from __future__ import annotations

import argparse
import time
from itertools import zip_longest
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from hip.benchmarks import (
    TS_SEARCH_METHODS,
    ResultsLog,
    add_common_arguments,
    add_dft_arguments,
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
from hip.dft import dft_verify
from hip.irc import aligned_rmsd, irc_verify
from hip.metrics import EXTREMUM_TYPES, TYPE_CORRECT_COLUMNS, extremum_classification, format_table
from hip.optimize import GAUSSIAN_CRITERIA, calculator_hessian, count_negative_modes, optimize

ROOT = Path(__file__).resolve().parents[1]
HORM_SAMPLE = ROOT / ".." / "shared" / "horm" / "sample_100.lmdb"
STAGES = ("Converged [%]", "TS success [%]", "Converged & TS [%]", "IRC verified [%]")
DFT_COLUMNS = ("DFT checked", "DFT TS [%]", "DFT converged TS [%]")
GUESS_COLUMN = f"Guesses classified as {EXTREMUM_TYPES[1]} [%]"
COLUMNS = ("Guesses", *STAGES, "Timed out [%]", "Steps median", "Time median [s]", "Moved median [Å]", *DFT_COLUMNS,
           GUESS_COLUMN)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, data=[str(HORM_SAMPLE)], stride=1, output=str(ROOT / "logs" / "bench_ts_search"),
                         max_molecules=2, methods=TS_SEARCH_METHODS)
    parser.add_argument("--no-filter", action="store_true",
                        help="take every input geometry as a guess (default: only DFT first-order saddles)")
    parser.add_argument("--noise", type=float, default=0.0, help="per-atom RMS noise on the guesses, Å")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=50, help="step budget (default: %(default)s)")
    parser.add_argument("--criteria", choices=list(GAUSSIAN_CRITERIA), default="default")
    parser.add_argument("--irc-steps", type=int, default=15,
                        help="IRC steps per direction before the end points are relaxed; 0 skips the IRC "
                             "(default: %(default)s)")
    parser.add_argument("--dft-verify", type=int, default=0, metavar="K", help="DFT-check K found TSs per method")
    parser.add_argument("--dft-every-end", action="store_true",
                        help="with --dft-verify, also check search ends that are no TS success (after those that "
                             "are): what DFT says about a weak model's ends")
    add_dft_arguments(parser)
    return parse_benchmark_args(parser, argv)


def search(atoms: Atoms, spec, calculator, args) -> dict:
    """One RS-P-RFO run from ``atoms`` and the stages after it; a flat row for the results log."""
    work = attach(atoms, calculator, args.energy)
    start = time.perf_counter()
    guess_modes = count_negative_modes(calculator_hessian(work), work)
    guess_time = time.perf_counter() - start  # the search's first Hessian: Sella gets it from the cache
    result = optimize(work, spec, GAUSSIAN_CRITERIA[args.criteria], args.max_steps, 1, calculator_hessian,
                      time_limit=args.time_limit or None)
    result.wall_time += guess_time
    result.hessian_time += guess_time
    row = {"guess_negative_modes": guess_modes, **result.as_row(), "negative_modes": None, "ts_success": False,
           "irc_verified": None, "irc_rmsd": None, "irc_endpoint_negative_modes": None, "irc_time": None,
           "irc_timed_out": None, "irc_error": "", "positions": work.positions.tolist()}
    if result.error:
        return row
    row["negative_modes"] = count_negative_modes(calculator_hessian(work), work)
    row["ts_success"] = row["negative_modes"] == 1
    if row["ts_success"] and args.irc_steps > 0:
        irc = irc_verify(work, lambda: attach(work, calculator, args.energy).calc, calculator_hessian,
                         GAUSSIAN_CRITERIA[args.criteria], args.irc_steps, time_limit=args.time_limit or None)
        row.update(irc_verified=irc.verified, irc_rmsd=irc.rmsd, irc_time=irc.wall_time, irc_error=irc.error,
                   irc_endpoint_negative_modes=irc.endpoint_negative_modes, irc_timed_out=irc.timed_out)
    return row


def dft_candidates(rows: list[dict], k: int, every_end: bool = False) -> list[dict]:
    """Up to ``k`` search end points of one method to check with DFT, in input order within each group:
    IRC-verified ones first, then the other TS successes, then (``every_end``) the remaining ends."""
    ranked = sorted(rows, key=lambda r: (not r["irc_verified"], not r["ts_success"]))
    return [r for r in ranked if r["ts_success"] or every_end][:k]


def summarize(rows: list[dict], dft_rows: list[dict], labels: dict[str, str], starts: dict[str, Atoms],
              guess_dft_modes: dict[str, int | None]) -> dict[str, dict[str, float]]:
    """The table: per method, the stage shares of all guesses (%), medians (steps, time, and how far the
    search moved from its start: aligned RMSD, Å), DFT checks, and how its Hessian classifies the guesses
    against their DFT Hessians (``guess_dft_modes``: molecule → negative DFT modes, None without a DFT
    Hessian; those guesses are left out of that column)."""
    table = {}
    for key, label in labels.items():
        mine = [r for r in rows if r["method"] == key]
        if not mine:
            continue
        checks = [d for d in dft_rows if d["method"] == key]
        stages = (np.mean([r["converged"] for r in mine]), np.mean([r["ts_success"] for r in mine]),
                  np.mean([r["converged"] and r["ts_success"] for r in mine]),
                  np.mean([bool(r["irc_verified"]) for r in mine]))
        classified = [{"n_neg_pred": r["guess_negative_modes"], "n_neg_true": guess_dft_modes[r["molecule"]]}
                      for r in mine if guess_dft_modes[r["molecule"]] is not None]
        guess_correct = (extremum_classification(classified)[TYPE_CORRECT_COLUMNS[1]] if classified
                         else float("nan"))
        table[label] = {
            "Guesses": float(len(mine)),
            **{c: 100.0 * v for c, v in zip(STAGES, stages, strict=True)},
            "Timed out [%]": 100.0 * np.mean([r["timed_out"] for r in mine]),
            "Steps median": quartiles(r["steps"] for r in mine)[1],
            "Time median [s]": quartiles(r["wall_time"] for r in mine)[1],
            "Moved median [Å]": quartiles(aligned_rmsd(starts[r["molecule"]], Atoms(r["numbers"], r["positions"]))
                                          for r in mine)[1],
            "DFT checked": float(len(checks)),
            "DFT TS [%]": 100.0 * np.mean([d["ts"] for d in checks]) if checks else float("nan"),
            "DFT converged TS [%]": 100.0 * np.mean([d["converged_ts"] for d in checks]) if checks else float("nan"),
            GUESS_COLUMN: guess_correct,
        }
    return table


def plot(path: Path, table: dict[str, dict[str, float]]) -> None:
    """Fig. 4 style: per method, bars for each stage (% of guesses; DFT stages: % of the checked TSs)."""
    stages = [*STAGES, "DFT TS [%]", "DFT converged TS [%]"]
    with figure(path, size=(12, 4.5)) as (_, ax):
        width = 0.8 / len(table)
        for i, (label, values) in enumerate(table.items()):
            heights = [values[s] if np.isfinite(values[s]) else 0.0 for s in stages]
            ax.bar(np.arange(len(stages)) + i * width, heights, width, label=label)
        ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, [s.replace(" [%]", "") for s in stages])
        ax.set_ylabel("success [%]")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title("TS search stages (DFT columns: share of the DFT-checked TSs)")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns the printed table (method label → column → value)."""
    args = parse_args(argv)
    with user_errors("bench_ts_search.py"):
        methods = select_methods(TS_SEARCH_METHODS, args.methods)
        guesses = select_molecules(args.data, args.indices, args.stride, args.max_molecules,
                                   None if args.no_filter else 1, args.smallest_first)
        settings = {**common_settings(args), "no_filter": args.no_filter, "noise": args.noise, "seed": args.seed,
                    "max_steps": args.max_steps, "criteria": args.criteria, "irc_steps": args.irc_steps}
        calculators = model_calculators(args.ckpt, args.device)
        log = ResultsLog(args.output, settings, ("molecule", "method"))
        dft_log = (ResultsLog(Path(args.output) / "dft", {"xc": args.dft_xc, "basis": args.dft_basis},
                              ("molecule", "method")) if args.dft_verify > 0 else None)
    starts = {g.name: perturb(g.atoms, args.noise, displacement_rng(args.seed, g.name, 0), 0.7) if args.noise > 0
              else g.atoms for g in guesses}
    tasks = [(g, s) for g in guesses for s in methods if not log.done(molecule=g.name, method=s.key)]
    with tqdm(tasks, desc="TS searches", unit="run") as bar:
        for guess, spec in bar:
            bar.set_postfix_str(f"{guess.name} {spec.key}")
            row = search(starts[guess.name], spec, calculators[spec.hessian], args)
            for error in (row["error"], row["irc_error"]):
                if error:
                    tqdm.write(f"{guess.name} {spec.key}: {error}")
            log.add({"molecule": guess.name, "formula": guess.atoms.get_chemical_formula(),
                     "numbers": guess.atoms.numbers.tolist(), "method": spec.key, **row})
    labels = {s.key: s.label for s in methods}
    names = {g.name for g in guesses}
    rows = [r for r in log.rows if r["method"] in labels and r["molecule"] in names]
    dft_rows: list[dict] = []
    if dft_log is not None:
        per_method = [dft_candidates([r for r in rows if r["method"] == key], args.dft_verify, args.dft_every_end)
                      for key in labels]
        todo = [r for rank in zip_longest(*per_method) for r in rank if r is not None]  # methods interleaved
        with tqdm(todo, desc="DFT verification", unit="TS") as bar:
            for row in bar:
                if dft_log.done(molecule=row["molecule"], method=row["method"]):
                    continue
                bar.set_postfix_str(f"{row['molecule']} {row['method']}")
                check = dft_verify(Atoms(numbers=row["numbers"], positions=row["positions"]),
                                   xc=args.dft_xc, basis=args.dft_basis)
                if check.error:
                    tqdm.write(f"{row['molecule']} {row['method']}: DFT failed, counted as not verified: "
                               f"{check.error}")
                dft_log.add({"molecule": row["molecule"], "method": row["method"], **vars(check),
                             **{f"search_{k}": row[k] for k in ("converged", "ts_success", "irc_verified")}})
        chosen = {(r["molecule"], r["method"]) for r in todo}
        dft_rows = [d for d in dft_log.rows if (d["molecule"], d["method"]) in chosen]
    guess_dft_modes = {g.name: None if g.dft_hessian is None else count_negative_modes(g.dft_hessian, g.atoms)
                       for g in guesses}
    table = summarize(rows, dft_rows, labels, starts, guess_dft_modes)
    text = (f"TS search (paper Fig. 4, Table 8): {len(guesses)} guesses, RS-P-RFO, Gaussian {args.criteria} criteria, "
            f"{args.max_steps}-step budget; stage columns: % of guesses; DFT columns ({args.dft_xc}/{args.dft_basis}): "
            f"% of the checked TSs\n" + format_table(table, COLUMNS, digits=1))
    write_report(args.output, text, table, COLUMNS, lambda path: plot(path, table), "bench_ts_search")
    return table


if __name__ == "__main__":
    main()
