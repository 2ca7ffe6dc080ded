#!/usr/bin/env python
"""Transition-state search with HIP, autodiff and finite-difference Hessians (paper §4, A.6.2, Fig. 4).

Default (``--start reactions``), the authors' task: every reaction of the embedded DFT reaction set
(``data/reactions``, :mod:`hip.data.reactions`) goes from its DFT reactant and product through
:func:`hip.reaction.find_reaction` with the model (from the DFT ends as ReactBench starts, or relaxed
with the model first with ``--relax-endpoints``; geodesic path,
RS-P-RFO from its highest image in internal coordinates, IRC 125 × 0.1 Å·√amu both ways, intended
check) once per method of :data:`hip.benchmarks.TS_SEARCH_METHODS`: a fresh HIP / autodiff /
finite-difference Hessian every step (``prfo_hip``, ``prfo_ad``, ``prfo_fd``) or one at the start and
TS-BFGS updates (``prfo_bfgs_*``); ``--max-steps`` (50) TS-search steps, "Gaussian default" criteria, the
model's energy for the trust radius, no time limit. Counted over all reactions: path, converged, TS
success (exactly one imaginary mode below −10 cm⁻¹, ReactBench's rule), IRC, intended, and every TS
success recomputed with DFT (PySCF ωB97X/6-31G(d), grid level 4 by default: one imaginary DFT mode and a
DFT force RMS below 2e-3 Hartree/Bohr, the paper, or 3e-3, ReactBench's code; ``--dft-verify 0`` skips
it). Also: the found TS's aligned RMSD to the DFT TS and the model's forward-barrier error
(:mod:`hip.benchmarks.ts_reactions`).

``--start guesses``, the earlier mode: the search starts from TS guesses, by default the geometries of
the HORM sample shard whose DFT Hessian has exactly one negative mode (mass-weighted, Eckart-projected,
Table 3's threshold), optionally noised (``--noise``); stages converged, TS success, "converged & TS" (paper
Table 8's "Both"), IRC verified (two distinct minima; the reaction's own ends are not known there) and,
with ``--dft-verify K``, K found TSs per method checked with DFT (IRC-verified ones first, then the other
TS successes; with ``--dft-every-end`` any other search end). Also printed there: how far each search
moved from its guess and how each method's Hessian classifies the guesses against their DFT Hessians
(``eval.py``'s Table 3 columns).

What still differs from the authors' protocol (ReactBench driving pysisyphus): the path is a geodesic
interpolation instead of the growing string (no maintained PyPI release); Sella's RS-P-RFO and IRC
instead of pysisyphus' (a Sella run that stalls or fails in internal coordinates goes on in Cartesians with a
fresh budget); 8 small reactions (the labelled ones) instead of the T1x validation reactions.

Results go to ``--output``: ``results.jsonl`` (runs, resumable), ``dft/results.jsonl`` (DFT checks,
resumable), ``summary.csv``, ``table.txt`` and ``bench_ts_search.png`` (Fig. 4 style: share passing each
stage per method). Minutes per reaction and method on 2 CPU cores.

Examples:
  python scripts/bench_ts_search.py                        # the reaction set, HIP/AD/FD every step, DFT checks
  python scripts/bench_ts_search.py --methods prfo_hip prfo_bfgs_hip --only hcn_hnc ch3nc_ch3cn --dft-verify 0
  python scripts/bench_ts_search.py --start guesses --max-molecules 6 --smallest-first --dft-verify 6 \\
      --output logs/bench_ts_search_guesses
  python scripts/bench_ts_search.py --start guesses --data my_guesses.xyz --stride 1 --no-filter
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
    perturb,
    quartiles,
    select_methods,
    select_molecules,
    write_report,
)
from hip.cli import user_errors
from hip.data.labelling import displacement_rng
from hip.data.reactions import REACTION_SET_DIR, REACTIONS, load_reaction_set, missing_reactions
from hip.dft import dft_verify
from hip.extrema import TS_THRESHOLD_CM1
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
    add_common_arguments(parser, data=[str(HORM_SAMPLE)], output=str(ROOT / "logs" / "bench_ts_search"),
                         max_molecules=2, methods=TS_SEARCH_METHODS)
    parser.set_defaults(methods=None)
    parser.add_argument("--start", choices=("reactions", "guesses"), default="reactions",
                        help="reactions: reactant + product of the reaction set through hip.reaction (default); "
                             "guesses: RS-P-RFO from TS guesses (--data)")
    parser.add_argument("--reactions", default=str(REACTION_SET_DIR), help="reaction set (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(REACTIONS), help="these reactions only")
    parser.add_argument("--relax-endpoints", action="store_true",
                        help="reactions: relax the DFT reactant and product with the model before the path "
                             "(default: start from them, as ReactBench does)")
    parser.add_argument("--no-filter", action="store_true",
                        help="guesses: take every input geometry (default: only DFT first-order saddles)")
    parser.add_argument("--noise", type=float, default=0.0, help="guesses: per-atom RMS noise, Å")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=50, help="TS-search step budget (default: %(default)s)")
    parser.add_argument("--criteria", choices=list(GAUSSIAN_CRITERIA), default="default")
    parser.add_argument("--irc-steps", type=int, default=125,
                        help="IRC steps of 0.1 Å·√amu per direction before the end points are relaxed (the "
                             "authors' 125); guesses: 0 skips the IRC (default: %(default)s)")
    parser.add_argument("--dft-verify", type=int, default=None, metavar="K",
                        help="DFT-check K found TSs per method (default: every TS success with --start reactions, "
                             "none with --start guesses)")
    parser.add_argument("--dft-every-end", action="store_true",
                        help="guesses, with --dft-verify: also check search ends that are no TS success")
    parser.add_argument("--dft-grid-level", type=int, default=4,
                        help="PySCF grid level of the DFT checks (default: %(default)s, finer than PySCF's 3)")
    add_dft_arguments(parser)
    args = parser.parse_args(argv)
    if args.methods is None:  # reactions: the per-step Hessians (paper Fig. 4's rows); guesses: all
        args.methods = ([m.key for m in TS_SEARCH_METHODS if m.every_step] if args.start == "reactions"
                        else [m.key for m in TS_SEARCH_METHODS])
    if args.dft_verify is None:
        args.dft_verify = 1 << 30 if args.start == "reactions" else 0
    return args


def search(atoms: Atoms, spec, calculator, args) -> dict:
    """One RS-P-RFO run from ``atoms`` and the stages after it; a flat row for the results log."""
    work = attach(atoms, calculator, args.energy)
    start = time.perf_counter()
    guess_modes = count_negative_modes(calculator_hessian(work), work)  # Table 3's rule, as eval.py classifies
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
    row["negative_modes"] = count_negative_modes(calculator_hessian(work), work, TS_THRESHOLD_CM1)
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
    return (from_reactions if args.start == "reactions" else from_guesses)(args)


def from_reactions(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The default mode (module docstring): the reaction set through :func:`hip.reaction.find_reaction`."""
    from hip.benchmarks import ts_reactions

    with user_errors("bench_ts_search.py"):
        methods = select_methods(TS_SEARCH_METHODS, args.methods)
        reactions = [r for r in load_reaction_set(args.reactions) if args.only is None or r.name in args.only]
        if not reactions:
            raise ValueError(f"{args.reactions}: no labelled reactions selected (scripts/label_reactions.py)")
        print(f"{len(reactions)} reactions: {', '.join(r.name for r in reactions)}; not labelled: "
              f"{', '.join(missing_reactions(args.reactions)) or 'none'}")
        options = {"criteria": GAUSSIAN_CRITERIA[args.criteria], "ts_steps": args.max_steps,
                   "irc_steps": args.irc_steps, "energy": args.energy, "relax_endpoints": args.relax_endpoints}
        settings = {**common_settings(args), "start": "reactions", "reactions": str(Path(args.reactions).resolve()),
                    "max_steps": args.max_steps, "criteria": args.criteria, "irc_steps": args.irc_steps,
                    "relax_endpoints": args.relax_endpoints}
        calculators = model_calculators(args.ckpt, args.device)
        log = ResultsLog(args.output, settings, ("reaction", "method"))
        level = {"xc": args.dft_xc, "basis": args.dft_basis, "grid_level": args.dft_grid_level}
        dft_log = ResultsLog(Path(args.output) / "dft", level, ("reaction", "method")) if args.dft_verify else None
    tasks = [(r, s) for r in reactions for s in methods if not log.done(reaction=r.name, method=s.key)]
    with tqdm(tasks, desc="reactions", unit="run") as bar:
        for reaction, spec in bar:
            bar.set_postfix_str(f"{reaction.name} {spec.key}")
            row = ts_reactions.run_reaction(reaction, spec, calculators[spec.hessian],
                                            ts_reactions.reaction_settings(spec, **options))
            if row["error"]:
                tqdm.write(f"{reaction.name} {spec.key}: stopped at {row['failed_stage']}: {row['error']}")
            log.add(row)
    labels = {s.key: s.label for s in methods}
    names = {r.name for r in reactions}
    rows = [r for r in log.rows if r["method"] in labels and r["reaction"] in names]
    dft_rows: list[dict] = []
    if dft_log is not None:
        found = [[r for r in rows if r["method"] == key and r["passed"].get("ts_success")][:args.dft_verify]
                 for key in labels]
        todo = [r for rank in zip_longest(*found) for r in rank if r is not None]  # methods interleaved
        for row in tqdm(todo, desc="DFT verification", unit="TS"):
            if not dft_log.done(reaction=row["reaction"], method=row["method"]):
                dft_log.add(ts_reactions.dft_check(row, **level))
        chosen = {(r["reaction"], r["method"]) for r in todo}
        dft_rows = [d for d in dft_log.rows if (d["reaction"], d["method"]) in chosen]
    table = ts_reactions.summarize(rows, dft_rows, labels)
    text = (f"TS search from reactant + product (paper Fig. 4): {len(reactions)} reactions of {args.reactions}, "
            f"geodesic path, RS-P-RFO ({args.max_steps} steps, Gaussian {args.criteria}), IRC {args.irc_steps} steps; "
            f"% of all reactions; DFT checks {args.dft_xc}/{args.dft_basis}, grid {args.dft_grid_level}\n"
            + format_table(table, ts_reactions.COLUMNS, digits=2))
    write_report(args.output, text, table, ts_reactions.COLUMNS, lambda path: ts_reactions.plot(path, table),
                 "bench_ts_search")
    return table


def from_guesses(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """``--start guesses`` (module docstring): RS-P-RFO from TS guesses."""
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
