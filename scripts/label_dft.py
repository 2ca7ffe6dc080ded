#!/usr/bin/env python
"""Label molecules with DFT (HORM's ωB97X/6-31G*, analytic Hessian) into HORM-format LMDB files.

Geometries come from ASE's G2 collection (``--molecules``) and/or an ASE-readable file
(``--geometries``, every frame is one molecule). Each molecule contributes its input geometry (unless
``--no-equilibrium``) and ``--displacements`` copies with seeded Gaussian noise of ``--sigma`` Å per
coordinate. Every labelled geometry is committed at once; re-running the same command skips what is
already stored (and refuses if the stored geometry differs from the planned one).

Outputs, one of:
  --output PATH.lmdb      everything in one file;
  --output-dir DIR        DIR/train.lmdb and DIR/val.lmdb, split by molecule: round(val_fraction · M)
                          molecules (at least one) drawn with numpy.random.default_rng(--seed) go to val,
                          with all their geometries.

Examples:
  python scripts/label_dft.py --molecules H2O NH3 CH4 --displacements 3 --sigma 0.05 --seed 0 \\
      --output-dir data/embedded --val-fraction 0.2
  python scripts/label_dft.py --check-horm ../shared/horm/sample_100.lmdb --index 83
  python scripts/label_dft.py --stats data/embedded/train.lmdb data/embedded/val.lmdb

The logic lives in :mod:`hip.data.labelling` (the plan), :mod:`hip.dft` (PySCF) and :mod:`hip.data.store`
(the LMDB files); this file only parses arguments and prints progress.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hip import dft
from hip.data import labelling as lab
from hip.data import store


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    src = p.add_argument_group("geometries")
    src.add_argument("--molecules", nargs="+", default=[], metavar="NAME",
                     help="G2 names (ase.collections.g2)")
    src.add_argument("--geometries", type=Path, metavar="FILE", help="ASE-readable file; all frames are used")
    src.add_argument("--displacements", type=int, default=0, metavar="K",
                     help="displaced copies per molecule (0)")
    src.add_argument("--no-equilibrium", action="store_true", help="skip the input geometry itself")
    src.add_argument("--sigma", type=float, default=0.05, help="displacement std per coordinate, Å (0.05)")
    src.add_argument("--seed", type=int, default=0, help="seed for displacements and the split (0)")
    out = p.add_argument_group("output")
    out.add_argument("--output", type=Path, metavar="PATH.lmdb", help="write everything to one LMDB file")
    out.add_argument("--output-dir", type=Path, metavar="DIR", help="write DIR/train.lmdb and DIR/val.lmdb")
    out.add_argument("--val-fraction", type=float, default=0.2, help="fraction of molecules in val (0.2)")
    out.add_argument("--no-compact", action="store_true", help="do not compact the LMDB files at the end")
    level = p.add_argument_group("level of theory (defaults: HORM's)")
    level.add_argument("--xc", default=dft.HORM_XC)
    level.add_argument("--basis", default=dft.HORM_BASIS)
    level.add_argument("--max-memory", type=int, default=None, help="PySCF memory budget, MB")
    modes = p.add_argument_group("other modes")
    modes.add_argument("--check-horm", type=Path, metavar="LMDB", help="recompute one HORM entry and compare")
    modes.add_argument("--index", type=int, default=83, help="entry for --check-horm (83)")
    modes.add_argument("--stats", type=Path, nargs="+", metavar="LMDB",
                       help="print dataset statistics as JSON")
    args = p.parse_args(argv)
    if not (args.check_horm or args.stats):
        if not args.molecules and args.geometries is None:
            p.error("give --molecules and/or --geometries (or --check-horm / --stats)")
        if (args.output is None) == (args.output_dir is None):
            p.error("give exactly one of --output and --output-dir")
    return args


def check_horm(args: argparse.Namespace) -> None:
    print(f"recomputing {args.check_horm} entry {args.index}, xc={args.xc} basis={args.basis}", flush=True)
    r = dft.compare_with_horm(args.check_horm, args.index, xc=args.xc, basis=args.basis,
                              max_memory_mb=args.max_memory)
    print(f"natoms            {int(r['natoms'])}")
    print(f"ΔE (ours−HORM)    {r['delta_energy_mev']:+.2f} meV   (Δae {r['delta_ae_mev']:+.2f} meV)")
    print(f"force MAE         {r['force_mae']:.4f} eV/Å   (label mean |F| {r['label_mean_abs_force']:.3f})")
    mean_h = r['label_mean_abs_hessian']
    print(f"Hessian MAE       {r['hessian_mae']:.4f} eV/Å²  (label mean |H| {mean_h:.2f})")
    times = [f"{k.removeprefix('time_')} {v:.1f} s" for k, v in r.items() if k.startswith("time_")]
    print("time              " + ", ".join(times))


def label(args: argparse.Namespace) -> None:
    molecules = [lab.g2_geometry(name) for name in args.molecules]
    if args.geometries is not None:
        molecules += lab.read_geometries(args.geometries)
    if args.output is not None:
        splits, paths = None, {"all": args.output}
    else:
        splits = lab.split_molecules(len(molecules), args.val_fraction, args.seed)
        paths = {"train": args.output_dir / "train.lmdb", "val": args.output_dir / "val.lmdb"}
    plan = lab.plan_labelling(molecules, args.displacements, args.sigma, args.seed,
                              include_equilibrium=not args.no_equilibrium, splits=splits)
    for i, mol in enumerate(molecules):
        dest = splits[i] if splits else "all"
        print(f"molecule {i:3d} {mol.name:12s} {len(mol.numbers):2d} atoms -> {dest}")
    used = [s for s in paths if s in {g.split for g in plan}]
    for s in used:  # created now (empty shards), so that an unwritable output fails before any DFT
        store.open_shard(paths[s], write=True)
    print(f"{len(plan)} geometries; outputs: " + ", ".join(f"{s}={paths[s]}" for s in used), flush=True)

    t_run = time.perf_counter()
    per_molecule: dict[str, float] = {}
    done = skipped = 0
    for n, g in enumerate(plan, 1):
        path = paths[g.split]
        head = (f"[{n}/{len(plan)}] {g.geometry.name} (id {g.molecule_id}, variant {g.variant}, "
                f"{len(g.geometry.numbers)} atoms) -> {g.split}[{g.key}]")
        if store.has_entry(path, g.key):
            lab.check_planned_entry(path, g)
            skipped += 1
            print(f"{head}: already stored, skipped", flush=True)
            continue
        labels = dft.label_molecule(g.geometry.numbers, g.geometry.positions, xc=args.xc,
                                    basis=args.basis, max_memory_mb=args.max_memory)
        store.write_entry(path, g.key, lab.make_horm_data(labels, rxn=g.molecule_id))
        done += 1
        t = labels.timings
        per_molecule[g.geometry.name] = per_molecule.get(g.geometry.name, 0.0) + t["total"]
        print(f"{head}: scf {t['scf']:.1f} s, grad {t['gradient']:.1f} s, hessian {t['hessian']:.1f} s, "
              f"total {t['total']:.1f} s; E {labels.energy:.4f} eV, ae {labels.ae:.4f} eV, "
              f"max|F| {np.abs(labels.forces).max():.3f} eV/Å", flush=True)
    print(f"labelled {done}, skipped {skipped}, wall {time.perf_counter() - t_run:.1f} s")
    for name, secs in per_molecule.items():
        print(f"  time {name:12s} {secs:7.1f} s")
    if not args.no_compact:
        for s in used:
            size = store.compact(paths[s])
            print(f"compacted {paths[s]}: {size / 1024:.0f} KiB")
    print("done", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_horm:
        check_horm(args)
    elif args.stats:
        print(json.dumps(lab.dataset_statistics(args.stats), indent=2))
    else:
        label(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
