#!/usr/bin/env python
"""Label the embedded reaction set (``data/reactions/``) with DFT: reactant, TS and product of every reaction.

For each reaction of :data:`hip.data.reactions.REACTIONS` (smallest first) the guesses in
``guesses/<name>.xyz`` go through :func:`hip.reaction.find_reaction` with PySCF at ωB97X/6-31G(d)
(:class:`hip.dft.DFTCalculator`): both ends relaxed (Gaussian ``--criteria``, tight by default), geodesic
path, RS-P-RFO from its highest image or from the guess file's optional third frame, a TS guess (one DFT
Hessian at the start of each Sella run, then Sella's TS-BFGS updates), the TS rule (exactly one imaginary
mode below −10 cm⁻¹), IRC both ways (steps of ``--irc-dx`` 0.2 Å·√amu: the ends are relaxed to the
criteria anyway), intended, and RRHO thermochemistry at 298.15 K from the analytic DFT Hessians. The grid
and SCF are finer than HORM's default (``--grid-level 4``, ``--conv-tol 1e-10``) and the forces include
the grid response (exact derivatives of the energy, without which tight optimisations stall at ~1e-5
Ha/Bohr): reference values.

Each reaction is written when it finishes (``<name>.json`` always, ``<name>.extxyz`` when every stage
succeeded; atomic writes); a rerun skips reactions that have a ``<name>.json`` (``--redo`` to recompute).
Within a reaction, the state after each finished stage is written to ``.<name>.partial.json`` (kept until
every stage succeeded): a killed run, or a failed one rerun with ``--redo``, goes on from its last
successful stage if the guesses and settings are the same (``--fresh``: start from the guesses anyway);
an unreadable one is named and the reaction starts from its guesses.
A reaction being labelled holds ``.<name>.lock`` (its process id), so several processes can share the
list (e.g. one per core, ``--only`` in different orders); a lock whose process is gone is taken over.

    python scripts/label_reactions.py                   # all, resumes; hours on one core
    python scripts/label_reactions.py --only hcn_hnc --threads 2
    python scripts/label_reactions.py --report --temperatures 298.15 500   # the data card's table
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import ase.io

from hip.cli import atomic_write_text, jsonable
from hip.convergence import GAUSSIAN_CRITERIA
from hip.data.reactions import REACTION_SET_DIR, REACTIONS, guess_pair, stationary_frame, ts_guess
from hip.dft import HORM_BASIS, HORM_XC, DFTCalculator
from hip.reaction import ReactionResult, ReactionSettings, find_reaction
from hip.reaction_state import from_state, to_state


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--directory", type=Path, default=REACTION_SET_DIR, help="reaction set (guesses/ inside)")
    p.add_argument("--only", nargs="+", choices=list(REACTIONS), help="these reactions only")
    p.add_argument("--redo", action="store_true", help="recompute reactions that already have a record")
    p.add_argument("--fresh", action="store_true", help="ignore a partly run reaction's saved stages")
    p.add_argument("--xc", default=HORM_XC)
    p.add_argument("--basis", default=HORM_BASIS)
    p.add_argument("--grid-level", type=int, default=4, help="PySCF grid level (HORM: 3)")
    p.add_argument("--conv-tol", type=float, default=1e-10, help="SCF energy threshold, Hartree (HORM: 1e-9)")
    p.add_argument("--criteria", choices=list(GAUSSIAN_CRITERIA), default="tight",
                   help="Gaussian convergence criteria for every optimisation (paper Table 13)")
    p.add_argument("--irc-dx", type=float, default=0.2,
                   help="IRC step, Å·√amu (default: %(default)s; the authors' benchmark: 0.1, twice the gradients)")
    p.add_argument("--threads", type=int, default=None, help="PySCF threads (default: OMP_NUM_THREADS)")
    p.add_argument("--report", action="store_true", help="print the labelled reactions' table and exit")
    p.add_argument("--temperatures", type=float, nargs="+", default=[298.15], help="K, for --report's rates")
    return p.parse_args(argv)


def report(args: argparse.Namespace) -> None:
    """A markdown table of the labelled reactions: barriers, ν‡, wall time, k(T) at ``--temperatures``."""
    from hip.data.reactions import energetics, load_reaction_set, missing_reactions
    from hip.kinetics import EV_TO_KJ_PER_MOL

    columns = ["reaction", "atoms", "ν‡ [cm⁻¹]", "ΔE‡ fwd/rev [kJ/mol]", "ΔG‡(298 K) fwd/rev [kJ/mol]",
               *(f"k({t:g} K) [s⁻¹]" for t in args.temperatures), "labelling [min]"]
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for reaction in load_reaction_set(args.directory):
        e298 = energetics(reaction)
        rates = [f"{energetics(reaction, t).rate_constant_forward:.2e}" for t in args.temperatures]
        kj = EV_TO_KJ_PER_MOL
        cells = [reaction.description, str(len(reaction.ts)), f"{e298.imaginary_frequency_cm1:.0f}",
                 f"{e298.barrier_forward * kj:.1f} / {e298.barrier_reverse * kj:.1f}",
                 f"{e298.gibbs_barrier_forward * kj:.1f} / {e298.gibbs_barrier_reverse * kj:.1f}", *rates,
                 f"{reaction.summary['seconds'] / 60:.0f}"]
        print("| " + " | ".join(cells) + " |")
    if missing := missing_reactions(args.directory):
        print(f"\nnot labelled (or failed; see the json): {', '.join(missing)}")


def label(name: str, args: argparse.Namespace) -> dict:
    """Run the pipeline on reaction ``name`` and write its files; returns its record."""
    level = {"xc": args.xc, "basis": args.basis, "grid_level": args.grid_level, "conv_tol": args.conv_tol,
             "grid_response": True}  # forces exact derivatives of the energy: tight convergence needs it
    calc = DFTCalculator(**level)
    settings = ReactionSettings(criteria=GAUSSIAN_CRITERIA[args.criteria], hessian_every_step=False,
                                irc_dx=args.irc_dx)
    reactant, product = guess_pair(name, args.directory)
    start_ts = ts_guess(name, args.directory)
    partial = args.directory / f".{name}.partial.json"
    how = {"level": level, "criteria": args.criteria, "irc_dx": args.irc_dx,
           "guesses": [a.positions.tolist() for a in (reactant, product, start_ts) if a is not None]}
    result, seconds = ReactionResult(reactant=reactant.copy(), product=product.copy()), 0.0
    if partial.is_file() and not args.fresh:
        result, seconds = resume(partial, how) or (result, seconds)
    start = time.perf_counter() - seconds

    def progress(stage, record):
        print(f"  {stage:<16} {'ok' if record.success else 'FAILED':<6} {record.steps:>4} steps "
              f"{record.seconds:>7.0f} s  {record.error}", flush=True)
        state = {**how, "result": to_state(result), "seconds": time.perf_counter() - start}
        atomic_write_text(partial, json.dumps(jsonable(state)) + "\n")

    result = find_reaction(reactant, product, calc, settings, progress=progress, result=result, ts_guess=start_ts)
    record = {"name": name, "reaction": REACTIONS[name][0], "source": REACTIONS[name][1],
              **{k: v for k, v in how.items() if k != "guesses"}, "seconds": time.perf_counter() - start,
              **result.as_dict()}
    if result.failed_stage is None:
        frames = []
        for role in ("reactant", "ts", "product"):
            atoms = getattr(result, role).copy()
            atoms.calc = calc
            frames.append(stationary_frame(atoms, role, name, atoms.get_potential_energy(), atoms.get_forces(),
                                           result.ts_hessian if role == "ts" else calc.get_hessian(atoms)))
        text = io.StringIO()
        ase.io.write(text, frames, format="extxyz")
        atomic_write_text(args.directory / f"{name}.extxyz", text.getvalue())
    else:  # an earlier run's stationary points are not this record's
        (args.directory / f"{name}.extxyz").unlink(missing_ok=True)
    atomic_write_text(args.directory / f"{name}.json", json.dumps(jsonable(record), indent=2) + "\n")
    if result.failed_stage is None:
        partial.unlink(missing_ok=True)
    return record


def resume(partial: Path, how: dict) -> tuple[ReactionResult, float] | None:
    """The stages and seconds saved in ``partial`` if it was written with the same guesses and settings
    ``how``; None (and says why, naming the file) if they differ or the file cannot be read back."""
    try:
        saved = json.loads(partial.read_text())
        if {k: saved.get(k) for k in how} != jsonable(how):
            print(f"  {partial}: other guesses or settings, started afresh", flush=True)
            return None
        result, seconds = from_state(saved["result"]), float(saved["seconds"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
        print(f"  {partial}: unreadable ({type(error).__name__}: {error}), started afresh", flush=True)
        return None
    done = [stage for stage, record in result.stages.items() if record.success]
    print(f"  resumed after {', '.join(done)} ({partial})", flush=True)
    return result, seconds


def claim(path: Path) -> bool:
    """Create the lock file ``path`` holding this process id; False if a live process holds it."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):  # its process is gone: take it over
            path.unlink(missing_ok=True)
            return claim(path)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        report(args)
        return 0
    if args.threads:
        from pyscf import lib

        lib.num_threads(args.threads)
    for name in args.only or REACTIONS:
        if (args.directory / f"{name}.json").is_file() and not args.redo:
            print(f"{name}: labelled already ({args.directory / f'{name}.json'}), skipped", flush=True)
            continue
        lock = args.directory / f".{name}.lock"
        if not claim(lock):
            print(f"{name}: being labelled by process {lock.read_text()}, skipped", flush=True)
            continue
        print(f"{name}: {REACTIONS[name][0]}", flush=True)
        try:
            record = label(name, args)
        finally:
            lock.unlink(missing_ok=True)
        status = "done" if record["failed_stage"] is None else f"stopped at {record['failed_stage']}"
        print(f"{name}: {status} in {record['seconds'] / 60:.1f} min; ΔE‡ {record['barrier_forward_eV']} eV, "
              f"ΔG‡ {record['gibbs_barrier_forward_eV']} eV, ν‡ {record['imaginary_frequency_cm1']} cm⁻¹", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
