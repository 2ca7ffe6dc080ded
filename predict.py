"""Energies, forces, Hessians and harmonic frequencies of every frame of a molecule file (paper §2, §4).

    python predict.py input=molecules.xyz
    python predict.py input=path.extxyz hessian=autodiff eval.device=cuda eval.batch_size=64
    python predict.py input=ts.xyz ckpt_path=<checkpoint> write_modes=true

``input`` is any file ``ase.io.read`` understands (xyz, extxyz, traj, sdf, ...), all frames. Written to
the run directory (``paths.output_dir``, printed at the end):

* ``predictions.extxyz``: every frame with its energy (eV) and forces (eV/Å);
* ``hessians.npz``: ``hessian_<frame>`` (3N, 3N) eV/Å² per frame, ``energy`` [F] eV, ``natoms`` [F];
* ``frequencies.csv``: one row per vibrational mode: ``frame, mode, frequency_cm1`` (negative for
  imaginary modes), ``imaginary`` (below −``imaginary_threshold_cm1``), and the frame's ``zpe_eV``,
  ``n_imaginary`` and ``extremum`` (minimum, transition state, saddle point of order k);
* with ``write_modes=true``, ``modes/frame_<frame>/`` (``modes.xyz`` and ``mode_KKK.traj``, ASE viewable).

Frequencies are from the mass-weighted, Eckart-projected Hessian (:mod:`hip.vibrations`); energies
and forces are documented in :class:`hip.calculator.HIPCalculator`.
"""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hip.training import register_resolvers

register_resolvers()

#: Columns of ``frequencies.csv``.
FREQUENCY_COLUMNS = ("frame", "mode", "frequency_cm1", "imaginary", "zpe_eV", "n_imaginary", "extremum")


def read_frames(path: str | Path) -> list:
    """All frames of a molecule file, read by ASE one at a time.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ASE cannot read a frame (the message names the file and the frame), or there is none.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    frames = []
    try:
        for atoms in ase.io.iread(path, index=":"):
            frames.append(atoms)
    except Exception as e:  # ASE raises many types (XYZError, KeyError, StopIteration, UnknownFileTypeError...)
        raise ValueError(f"input {path} frame {len(frames)}: ASE cannot read it ({type(e).__name__}: {e})") from e
    if not frames:
        raise ValueError(f"input {path}: no frames")
    return frames


def run(cfg: DictConfig) -> Path:
    """Predict every frame of ``cfg.input`` and write the three outputs (see the module docstring).

    Returns:
        The output directory.

    Raises:
        FileNotFoundError: input or checkpoint missing (named).
        ValueError: an unreadable input or a bad frame (periodic, charged, open-shell, unknown element,
            overlapping atoms), naming the file and frame.
    """
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from hip.calculator import HIPCalculator
    from hip.vibrations import (
        count_imaginary,
        extremum_type,
        vibrational_analysis,
        write_normal_modes,
        zero_point_energy,
    )

    frames = read_frames(cfg.input)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calc = HIPCalculator(cfg.ckpt_path, device=cfg.eval.device, hessian_method=cfg.hessian, energy=cfg.energy,
                         seed=cfg.seed)
    names = [f"input {cfg.input} frame {i} ({atoms.get_chemical_formula()})" for i, atoms in enumerate(frames)]
    results = calc.predict(frames, batch_size=cfg.eval.batch_size, progress=True, names=names)

    rows, summary = [], []
    for i, (atoms, result) in enumerate(zip(frames, results, strict=True)):
        masses = atoms.get_masses()
        frequencies = vibrational_analysis(result["hessian"], atoms.positions, atoms.numbers, masses).frequencies
        frequencies = frequencies.numpy()
        n_imaginary = count_imaginary(frequencies, cfg.imaginary_threshold_cm1)
        with warnings.catch_warnings():  # imaginary modes are flagged in the table
            warnings.simplefilter("ignore", UserWarning)
            zpe = zero_point_energy(result["hessian"], atoms.positions, atoms.numbers, masses)
        kind = extremum_type(n_imaginary)
        rows += [(i, k, f"{nu:.4f}", bool(nu < -cfg.imaginary_threshold_cm1), f"{zpe:.6f}", n_imaginary, kind)
                 for k, nu in enumerate(frequencies)]
        summary.append((i, atoms.get_chemical_formula(), len(atoms), result["energy"],
                        float(np.linalg.norm(result["forces"], axis=1).max()), n_imaginary,
                        float(frequencies[0]) if len(frequencies) else float("nan"), zpe, kind))
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, energy=result["energy"], forces=result["forces"])
        ase.io.write(out_dir / "predictions.extxyz", atoms, format="extxyz", append=i > 0)
        if cfg.write_modes:
            write_normal_modes(result["hessian"], atoms, out_dir / "modes" / f"frame_{i}")

    np.savez(out_dir / "hessians.npz", energy=np.array([r["energy"] for r in results]),
             natoms=np.array([len(a) for a in frames]), **{f"hessian_{i}": r["hessian"] for i, r in enumerate(results)})
    with open(out_dir / "frequencies.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FREQUENCY_COLUMNS)
        writer.writerows(rows)
    print_summary(summary, cfg)
    print(f"wrote predictions.extxyz, hessians.npz, frequencies.csv to {out_dir}")
    return out_dir


def print_summary(summary: list[tuple], cfg: DictConfig, max_rows: int = 20) -> None:
    """Print one line per frame (the first ``max_rows``): formula, N, energy eV, max |F| eV/Å, imaginary
    modes, lowest frequency cm⁻¹, ZPE eV, extremum type."""
    header = (f"{'frame':>5}  {'formula':<12} {'N':>3}  {'energy [eV]':>14}  {'max|F| [eV/Å]':>13}  {'n_imag':>6}"
              f"  {'lowest [cm⁻¹]':>13}  {'ZPE [eV]':>8}  extremum")
    print(f"{len(summary)} frames of {cfg.input}, Hessian: {cfg.hessian}, checkpoint {cfg.ckpt_path}")
    print(header)
    for frame, formula, n, energy, fmax, n_imag, lowest, zpe, kind in summary[:max_rows]:
        print(f"{frame:>5}  {formula:<12} {n:>3}  {energy:>14.4f}  {fmax:>13.4f}  {n_imag:>6}  {lowest:>13.1f}"
              f"  {zpe:>8.4f}  {kind}")
    if len(summary) > max_rows:
        print(f"... {len(summary) - max_rows} more frames in frequencies.csv")


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python predict.py input=<file> [ckpt_path=...] [hessian=...] [eval.device=...]``.

    A user mistake (missing or unreadable file or checkpoint, a bad frame) exits with status 1 and its
    one-line message instead of a stack trace.
    """
    from hip.cli import user_errors

    if OmegaConf.is_missing(cfg, "input"):
        sys.exit("predict.py: which molecules? python predict.py input=<file> (xyz, extxyz, traj, sdf, ...: "
                 "any file ase.io.read reads; every frame is predicted)")
    with user_errors("predict.py"):
        run(cfg)


if __name__ == "__main__":
    main()
