#!/usr/bin/env python
"""Zero-point energies from HIP, autodiff and finite-difference Hessians against DFT (paper A.6.3, Table 2).

At each geometry the ZPE ½ Σ ħω (real modes of the mass-weighted, Eckart-projected Hessian,
:func:`hip.vibrations.zero_point_energy`) is computed from the model's HIP, autodiff and
finite-difference Hessians and from the DFT Hessian; per method the script prints the MAE and the
standard deviation of the signed error (model − DFT), in eV per molecule, as Table 2. For
reactant/product pairs (``--pairs``; by default the two molecules of every formula that occurs exactly
twice, i.e. isomerisations) ΔZPE = ZPE(first) − ZPE(second) is compared the same way.

Geometries. The paper relaxes T1x reactants and products with DFT to "Gaussian tight" (Table 13) and
takes reference Hessians there with a tight SCF and a fine grid. By default this script does the same on
the embedded reaction set (``data/reactions``, :mod:`hip.data.reactions`): reactants and products relaxed
with PySCF ωB97X/6-31G(d) to Gaussian tight (grid level 4, SCF 1e-10 Ha, forces with grid response),
with their analytic DFT Hessians; ZPE MAE is over the reactants (Table 2's "ZPE") and ΔZPE =
ZPE(reactant) − ZPE(product) over each reaction (``--pairs auto``). Other sources: HORM-format shards
(``data/embedded``: ASE's G2 geometries, not ωB97X minima, so a few of the softest modes can come out
imaginary; imaginary modes carry no ZPE and are counted in ``results.jsonl``), where ZPE MAE is over all
molecules and ``auto`` pairs the molecules whose formula occurs exactly twice. ``--relax-with dft`` first
relaxes every molecule with PySCF at HORM's level (RS-RFO with BFGS updates from the identity, "Gaussian
tight", as the paper) and computes its analytic Hessian there (slow on a CPU); each relaxed molecule is
stored in ``dft_relaxed/results.jsonl`` as it finishes and reused by later runs.

What still differs from the paper: 8 small reactions instead of 80 T1x validation reactants and products;
PySCF instead of the authors' DFT program.

Outputs in ``--output``: ``results.jsonl`` (per molecule and method, resumable), ``summary.csv``,
``table.txt`` and ``bench_zpe.png`` (model vs DFT ZPE per method).

Examples:
  python scripts/bench_zpe.py                                         # defaults
  python scripts/bench_zpe.py --data data/embedded/train.lmdb data/embedded/val.lmdb --stride 5
  python scripts/bench_zpe.py --data data/embedded/val.lmdb --stride 5 --relax-with dft   # slow
  python scripts/bench_zpe.py --data ../shared/horm/sample_100.lmdb --indices 43 63 --pairs none
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from hip.benchmarks import (
    HESSIAN_LABELS,
    RELAXATION_METHODS,
    Molecule,
    ResultsLog,
    add_common_arguments,
    add_dft_arguments,
    common_settings,
    figure,
    model_calculators,
    select_methods,
    select_molecules,
    write_report,
)
from hip.cli import user_errors
from hip.constants import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
from hip.data.reactions import REACTION_SET_DIR
from hip.dft import DFTCalculator
from hip.metrics import format_table
from hip.optimize import GAUSSIAN_CRITERIA, count_negative_modes, optimize
from hip.vibrations import zero_point_energy

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("ZPE MAE [eV]", "ZPE error std [eV]", "ΔZPE MAE [eV]", "ΔZPE error std [eV]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, data=[str(REACTION_SET_DIR)], output=str(ROOT / "logs" / "bench_zpe"),
                         max_molecules=None)
    parser.add_argument("--hessians", nargs="+", choices=list(HESSIAN_LABELS), default=list(HESSIAN_LABELS),
                        help="model Hessians to compare (default: all)")
    parser.add_argument("--relax-with", choices=("none", "dft"), default="none",
                        help="relax with DFT to Gaussian tight first (default: use the stored geometries)")
    parser.add_argument("--relax-steps", type=int, default=150, help="DFT relaxation budget (default: %(default)s)")
    parser.add_argument("--pairs", nargs="+", default=["auto"], metavar="NAME/NAME",
                        help="reactant/product pairs for ΔZPE, e.g. val.lmdb:10/train.lmdb:70; 'auto' (default): "
                             "each reaction's reactant and product (reaction set), else the molecules whose formula "
                             "occurs exactly twice; 'none'")
    add_dft_arguments(parser)
    return parser.parse_args(argv)


def dft_relaxed(molecules: list[Molecule], args) -> list[Molecule]:
    """The molecules relaxed with DFT to Gaussian tight, with DFT Hessians there (cached, resumable).

    A molecule whose DFT relaxation or Hessian fails (SCF not converged, odd electron count, ...) is
    stored with its ``relax_error``, reported, and left out of the returned list."""
    log = ResultsLog(Path(args.output) / "dft_relaxed", {"xc": args.dft_xc, "basis": args.dft_basis,
                                                        "relax_steps": args.relax_steps}, ("molecule",))
    spec = select_methods(RELAXATION_METHODS, ["rfo_bfgs_identity"])[0]
    with tqdm(molecules, desc="DFT relaxations", unit="molecule") as bar:
        for molecule in bar:
            if log.done(molecule=molecule.name):
                continue
            bar.set_postfix_str(molecule.name)
            atoms = molecule.atoms.copy()
            atoms.calc = DFTCalculator(xc=args.dft_xc, basis=args.dft_basis)
            result = optimize(atoms, spec, GAUSSIAN_CRITERIA["tight"], args.relax_steps)
            row = {"molecule": molecule.name, **result.as_row("relax_")}
            if not result.error:
                try:
                    start = time.perf_counter()
                    hessian = atoms.calc.get_hessian(atoms)
                    row.update(positions=atoms.positions.tolist(), hessian=hessian.tolist(),
                               forces=atoms.get_forces().tolist(), hessian_time=time.perf_counter() - start)
                except (ValueError, RuntimeError) as e:
                    row["relax_error"] = f"DFT Hessian: {type(e).__name__}: {e}"
            log.add(row)
            if not result.converged and not row["relax_error"]:
                tqdm.write(f"{molecule.name}: DFT relaxation did not reach Gaussian tight in {result.steps} steps")
    stored = {r["molecule"]: r for r in log.rows}
    for m in molecules:
        if stored[m.name]["relax_error"]:
            print(f"{m.name}: left out, its DFT relaxation failed: {stored[m.name]['relax_error']}")
    return [Molecule(m.name, Atoms(numbers=m.atoms.numbers, positions=stored[m.name]["positions"]),
                     np.asarray(stored[m.name]["hessian"]), np.asarray(stored[m.name]["forces"]), m.role)
            for m in molecules if not stored[m.name]["relax_error"]]


def zpe(hessian: np.ndarray, atoms: Atoms) -> tuple[float, int]:
    """(ZPE eV, number of imaginary modes left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # imaginary modes: counted and reported instead
        value = zero_point_energy(hessian, atoms.positions, atoms.numbers)
    return value, count_negative_modes(hessian, atoms)


def reaction_pairs(names_formulas: dict[str, str], requested: list[str]) -> list[tuple[str, str]]:
    """The reactant/product pairs for ΔZPE: ``requested`` as ``"NAME/NAME"`` strings, ``["none"]``, or
    ``["auto"]``: ``<reaction>:reactant``/``<reaction>:product`` of the reaction set, and among the other
    molecules those whose formula occurs exactly twice (isomerisations), in input order.

    Raises:
        ValueError: a pair that is not ``NAME/NAME`` of two selected molecules with the same atoms.
    """
    if requested == ["none"]:
        return []
    if requested == ["auto"]:
        groups: dict[str, list[str]] = {}
        reactions = [(n, n.removesuffix(":reactant") + ":product") for n in names_formulas if n.endswith(":reactant")]
        paired = {n for pair in reactions for n in pair}
        for name, formula in names_formulas.items():
            if name not in paired and not name.endswith(":ts"):
                groups.setdefault(formula, []).append(name)
        return [p for p in reactions if p[1] in names_formulas] + [(g[0], g[1]) for g in groups.values() if len(g) == 2]
    pairs = []
    for text in requested:
        parts = text.split("/")
        if len(parts) != 2 or any(p not in names_formulas for p in parts):
            raise ValueError(f"--pairs {text!r}: expected NAME/NAME of two selected molecules "
                             f"({', '.join(names_formulas)})")
        if names_formulas[parts[0]] != names_formulas[parts[1]]:
            raise ValueError(f"--pairs {text!r}: {names_formulas[parts[0]]} and {names_formulas[parts[1]]} "
                             "are not the same atoms")
        pairs.append((parts[0], parts[1]))
    return pairs


def summarize(rows: list[dict], pairs: list[tuple[str, str]], methods: list[str]) -> dict[str, dict[str, float]]:
    """Table 2: per method, MAE and std of the signed ZPE errors (eV) over the reactants (rows with role
    ``"reactant"``; all rows if none has one) and of the ΔZPE errors over ``pairs``."""
    table = {}
    reactants_only = any(r.get("role") == "reactant" for r in rows)
    for method in methods:
        mine = {r["molecule"]: r for r in rows if r["method"] == method}
        errors = np.array([r["zpe"] - r["zpe_dft"] for r in mine.values()
                           if not reactants_only or r.get("role") == "reactant"])
        delta = np.array([(mine[a]["zpe"] - mine[b]["zpe"]) - (mine[a]["zpe_dft"] - mine[b]["zpe_dft"])
                          for a, b in pairs if a in mine and b in mine])
        table[HESSIAN_LABELS[method]] = {
            "ZPE MAE [eV]": float(np.abs(errors).mean()), "ZPE error std [eV]": float(errors.std()),
            "ΔZPE MAE [eV]": float(np.abs(delta).mean()) if len(delta) else float("nan"),
            "ΔZPE error std [eV]": float(delta.std()) if len(delta) else float("nan"),
        }
    return table


def plot(path: Path, rows: list[dict], methods: list[str]) -> None:
    """|model − DFT| ZPE per molecule (log scale) against the DFT ZPE, one marker per method."""
    with figure(path) as (_, ax):
        for method in methods:
            mine = [r for r in rows if r["method"] == method]
            errors = [abs(r["zpe"] - r["zpe_dft"]) for r in mine]
            ax.scatter([r["zpe_dft"] for r in mine], np.maximum(errors, 1e-6), s=16,
                       label=f"{HESSIAN_LABELS[method]} (MAE {np.mean(errors):.3g} eV)")
        ax.set(xlabel="DFT ZPE [eV]", ylabel="|model − DFT| ZPE [eV]", yscale="log", title="Zero-point energy error")
        ax.legend()


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns the printed table (method label → column → value)."""
    args = parse_args(argv)
    with user_errors("bench_zpe.py"):
        molecules = select_molecules(args.data, args.indices, args.stride, args.max_molecules,
                                     smallest_first=args.smallest_first, roles=("reactant", "product"))
        unlabelled = [m.name for m in molecules if m.dft_hessian is None]
        if unlabelled and args.relax_with == "none":
            raise ValueError(f"{unlabelled[0]} has no DFT Hessian: give a labelled HORM-format shard or "
                             "--relax-with dft")
        names = {m.name: m.atoms.get_chemical_formula() for m in molecules}
        pairs = reaction_pairs(names, args.pairs)
        settings = {**common_settings(args), "relax_with": args.relax_with,
                    **({"dft": [args.dft_xc, args.dft_basis]} if args.relax_with == "dft" else {})}
        calculators = model_calculators(args.ckpt, args.device)
        log = ResultsLog(args.output, settings, ("molecule", "method"))
    if args.relax_with == "dft":
        molecules = dft_relaxed(molecules, args)
        names = {m.name: names[m.name] for m in molecules}
        pairs = [(a, b) for a, b in pairs if a in names and b in names]
    tasks = [(m, h) for m in molecules for h in args.hessians if not log.done(molecule=m.name, method=h)]
    with tqdm(tasks, desc="ZPE", unit="Hessian") as bar:
        for molecule, method in bar:
            bar.set_postfix_str(f"{molecule.name} {method}")
            atoms = molecule.atoms.copy()
            start = time.perf_counter()
            hessian = calculators[method].get_hessian(atoms)
            seconds = time.perf_counter() - start
            (zpe_model, imaginary), (zpe_dft, imaginary_dft) = zpe(hessian, atoms), zpe(molecule.dft_hessian, atoms)
            log.add({"molecule": molecule.name, "formula": atoms.get_chemical_formula(), "method": method,
                     "role": molecule.role, "zpe": zpe_model, "zpe_dft": zpe_dft, "imaginary_modes": imaginary,
                     "imaginary_modes_dft": imaginary_dft, "hessian_time": seconds,
                     "dft_force_rms_ha_per_bohr": float(np.sqrt((molecule.dft_forces**2).mean()))
                     / HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM})
    rows = [r for r in log.rows if r["molecule"] in names and r["method"] in args.hessians]
    table = summarize(rows, pairs, args.hessians)
    geometry = ("DFT-relaxed (Gaussian tight)" if args.relax_with == "dft"
                else "stored geometries (reaction set: DFT minima, Gaussian tight; data/embedded: G2, not ωB97X "
                     "minima)")
    over = "reactants" if any(m.role == "reactant" for m in molecules) else "all molecules"
    pair_names = ", ".join(f"{a}/{b} ({names[a]})" for a, b in pairs) or "none"
    text = (f"Zero-point energy (paper Table 2): {len(molecules)} molecules at {geometry}; ZPE MAE over {over}; "
            f"reactant/product pairs: {pair_names}; eV per molecule\n" + format_table(table, COLUMNS, digits=4))
    write_report(args.output, text, table, COLUMNS, lambda path: plot(path, rows, args.hessians), "bench_zpe")
    return table


if __name__ == "__main__":
    main()
