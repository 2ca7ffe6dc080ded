"""From a reactant and a product to a transition state, its barriers and its rate constant (paper §4, Fig. 4).

    python react.py reactant=hcn.xyz product=hnc.xyz
    python react.py reactant=r.xyz product=p.xyz hessian=autodiff temperature=350 dft_verify=true
    python react.py reactant=r.xyz product=p.xyz calculator=dft          # PySCF ωB97X/6-31G(d), the reference
    python react.py reactant=r.xyz product=p.xyz ts_guess=ts.xyz         # search from a TS guess, not the path

The pipeline is :func:`hip.reaction.find_reaction` (relax both ends, geodesic path, RS-P-RFO from the
highest image or ``ts_guess``, TS rule, IRC both ways, intended check, thermochemistry, Wigner-corrected Eyring rate
of the unimolecular step). Printed: one line per stage, the barriers forward and reverse in eV and
kJ/mol, the imaginary frequency and k(T). Written to the run directory (``paths.output_dir``):

* ``result.json``: every stage (``success``, ``steps``, ``seconds``, ``error``, ``details``), the
  energetics (``barrier_forward_eV``, ``gibbs_barrier_forward_eV``, ``rate_constant_forward_s-1``, the
  same for reverse, ``imaginary_frequency_cm1``, ...; null where the run did not get that far) and the settings;
* ``ts.xyz``, ``path.extxyz`` (the path images with energies), ``irc.extxyz`` (reactant → TS → product);
  ``ase gui`` shows them;
* ``ts_modes/`` (``mode_000.traj`` is the imaginary mode, :func:`hip.vibrations.write_normal_modes`);
* ``profile.png``: the energy along the IRC (or the path, if no IRC was reached) with the barriers.

A stage that fails ends the run; its reason is printed and recorded. Bad input (a missing or unreadable
file, different atoms, identical structures, a charged or open-shell molecule, an element the model was
not trained on) ends it before any calculation with one line naming the file.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hip.training import register_resolvers

register_resolvers()


def read_molecule(path: str | Path, role: str):
    """The single geometry in ``path`` (``role``, e.g. ``"reactant"``, names it in messages).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ASE cannot read it, or it holds no or several frames.
    """
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} {path} does not exist")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as e:  # ASE raises many types for unreadable files
        raise ValueError(f"{role} {path}: ASE cannot read it ({type(e).__name__}: {e})") from e
    if len(frames) != 1:
        raise ValueError(f"{role} {path}: {len(frames)} frames; give one geometry")
    return frames[0]


def build_calculator(cfg: DictConfig):
    """(ASE calculator with ``get_hessian``, atomic numbers it accepts) for ``cfg.calculator``.

    Raises:
        ValueError: an unknown ``calculator``; FileNotFoundError, CheckpointError: see HIPCalculator.
    """
    if cfg.calculator == "model":
        from hip.calculator import HIPCalculator

        calc = HIPCalculator(cfg.ckpt_path, device=cfg.device, hessian_method=cfg.hessian, seed=cfg.seed)
        return calc, calc.elements
    if cfg.calculator == "dft":
        from hip.constants import ATOM_REFERENCE_ENERGY_EV
        from hip.reaction import dft_calculator

        return dft_calculator(**OmegaConf.to_container(cfg.dft)), tuple(ATOM_REFERENCE_ENERGY_EV)
    raise ValueError(f"calculator must be 'model' or 'dft', got {cfg.calculator!r}")


def settings_from(cfg: DictConfig):
    """:class:`hip.reaction.ReactionSettings` of ``cfg.reaction``, ``temperature``, ``pressure``, ``dft_verify``.

    Raises:
        ValueError: ``temperature`` or ``pressure`` not a positive number; an unknown ``reaction.criteria``.
    """
    from hip.convergence import GAUSSIAN_CRITERIA
    from hip.reaction import ReactionSettings

    for key in ("temperature", "pressure"):  # checked before hours of optimisation, not at the last stage
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"option {key}={value!r}: give a positive number (K, Pa)")
    options = OmegaConf.to_container(cfg.reaction)
    if options["criteria"] not in GAUSSIAN_CRITERIA:
        raise ValueError(f"reaction.criteria must be one of {list(GAUSSIAN_CRITERIA)}, got {options['criteria']!r}")
    options["criteria"] = GAUSSIAN_CRITERIA[options["criteria"]]
    verify = OmegaConf.to_container(cfg.dft) if cfg.dft_verify else None
    return ReactionSettings(**options, temperature=cfg.temperature, pressure=cfg.pressure, dft_verify=verify)


def run(cfg: DictConfig) -> Path:
    """Check the inputs, run the pipeline, print the table and write the outputs (module docstring).

    Returns:
        The output directory.

    Raises:
        FileNotFoundError, ValueError, CheckpointError: bad input, naming the file (before any calculation).
    """
    from hip.calculator import check_closed_shell_molecule
    from hip.cli import jsonable, user_errors
    from hip.reaction import check_reaction_pair, check_same_atoms, find_reaction

    with user_errors("react.py"):
        labels = {"reactant": "reactant", "product": "product", **({"ts_guess": "TS guess"} if cfg.ts_guess else {})}
        names = {key: f"{label} {cfg[key]}" for key, label in labels.items()}
        molecules = {key: read_molecule(cfg[key], label) for key, label in labels.items()}
        settings = settings_from(cfg)
        calc, elements = build_calculator(cfg)
        for role, atoms in molecules.items():
            check_closed_shell_molecule(atoms, elements, names[role])
        check_reaction_pair(molecules["reactant"], molecules["product"], names["reactant"], names["product"])
        if "ts_guess" in molecules:
            check_same_atoms(molecules["reactant"], molecules["ts_guess"], names["reactant"], names["ts_guess"])
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    level = f"{cfg.dft.xc}/{cfg.dft.basis}" if cfg.calculator == "dft" else f"{cfg.ckpt_path}, Hessian {cfg.hessian}"
    print(f"{molecules['reactant'].get_chemical_formula()}: {cfg.reactant} → {cfg.product} with {cfg.calculator} "
          f"({level})")
    print(f"{'stage':<16} {'ok':<4} {'steps':>5} {'time [s]':>9}  note")
    result = find_reaction(molecules["reactant"], molecules["product"], calc, settings, progress=print_stage,
                           ts_guess=molecules.get("ts_guess"))
    summary = result.as_dict()
    keys = ("reactant", "product", "ts_guess", "calculator", "ckpt_path", "hessian", "temperature", "pressure", "dft",
            "dft_verify", "reaction")
    summary["settings"] = {k: OmegaConf.to_container(cfg[k]) if isinstance(cfg[k], DictConfig) else cfg[k]
                           for k in keys}
    (out_dir / "result.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    written = ["result.json", *write_structures(result, out_dir, cfg.write_modes)]
    if plot_profile(result, out_dir / "profile.png"):
        written.append("profile.png")
    print_energetics(summary, result.failed_stage)
    print(f"wrote {', '.join(written)} to {out_dir}")
    return out_dir


def write_structures(result, out_dir: Path, write_modes: bool) -> list[str]:
    """``ts.xyz``, ``path.extxyz``, ``irc.extxyz`` and ``ts_modes/`` of what ``result`` holds; returns the names."""
    import ase.io

    from hip.vibrations import write_normal_modes

    written = []
    for name, frames in (("ts.xyz", [result.ts] if result.ts is not None else []), ("path.extxyz", result.path),
                         ("irc.extxyz", result.irc)):
        if frames:
            ase.io.write(out_dir / name, frames, format="extxyz")
            written.append(name)
    if write_modes and result.ts_hessian is not None:
        write_normal_modes(result.ts_hessian, result.ts, out_dir / "ts_modes")
        imaginary = result.ts_frequencies[0] < 0
        written.append("ts_modes/" + (" (mode_000.traj: the imaginary mode)" if imaginary else ""))
    return written


def print_stage(name: str, record) -> None:
    """One line of the stage table, and the model's applicability warnings at the stage's geometry."""
    print(f"{name:<16} {'yes' if record.success else 'NO':<4} {record.steps:>5} {record.seconds:>9.1f}  {record.error}",
          flush=True)
    for warning in record.details.get("warnings", ()):
        print(f"{'':<16} warning: {warning}", flush=True)


def print_energetics(summary: dict, failed_stage: str | None) -> None:
    """The barriers (eV and kJ/mol), the imaginary frequency and k(T) of ``result.as_dict()``."""
    from hip.kinetics import EV_TO_KJ_PER_MOL

    if failed_stage is not None:
        print(f"stopped at stage {failed_stage}: {summary['stages'][failed_stage]['error']}")
    if summary["imaginary_frequency_cm1"] is not None:
        print(f"imaginary frequency {summary['imaginary_frequency_cm1']:.1f} cm⁻¹")
    if summary["barrier_forward_eV"] is None:
        return
    temperature = summary["temperature_K"]
    print(f"{'':<9} {'ΔE‡ [eV]':>9} {'[kJ/mol]':>9} {'ΔH‡ [eV]':>9} {'ΔG‡ [eV]':>9} {'[kJ/mol]':>9}  "
          f"k({temperature:g} K) [s⁻¹]")
    for way in ("forward", "reverse"):
        e, g = summary[f"barrier_{way}_eV"], summary[f"gibbs_barrier_{way}_eV"]
        print(f"{way:<9} {e:>9.3f} {e * EV_TO_KJ_PER_MOL:>9.1f} {summary[f'enthalpy_barrier_{way}_eV']:>9.3f} "
              f"{g:>9.3f} {g * EV_TO_KJ_PER_MOL:>9.1f}  {summary[f'rate_constant_{way}_s-1']:.3e}")
    print(f"ΔG of reaction {summary['reaction_gibbs_energy_eV']:.3f} eV; Wigner κ = {summary['wigner_kappa']:.3f} "
          "(unimolecular k = κ·k_B·T/h·exp(−ΔG‡/k_B·T))")


def plot_profile(result, path: Path) -> bool:
    """Energy along the IRC (else along the path) relative to its first frame, the reactant, TS and product
    marked and the barriers written on it; saved to ``path``. Returns False when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hip.kinetics import EV_TO_KJ_PER_MOL
    from hip.reaction import StageRecord

    along_irc = bool(result.irc)
    frames = result.irc if along_irc else result.path
    if not frames:
        return False
    sqrt_m = np.sqrt(frames[0].get_masses())[:, None]
    steps = [np.linalg.norm(sqrt_m * (b.positions - a.positions)) for a, b in itertools.pairwise(frames)]
    x = np.concatenate([[0.0], np.cumsum(steps)])
    energy = np.array([a.get_potential_energy() for a in frames]) - frames[0].get_potential_energy()
    top = result.irc_ts_index if along_irc else int(np.argmax(energy))
    known = not along_irc or result.stages.get("intended", StageRecord()).success  # which end is which
    ends = ("reactant", "product") if known else ("reverse end", "forward end")
    fig = Figure(figsize=(6.5, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(x, energy, "o-", ms=3, color="C0")
    for i, label in ((0, ends[0]), (top, "TS" if along_irc else "highest image"), (len(x) - 1, ends[1])):
        ax.plot(x[i], energy[i], "o", ms=8, color="C3")
        ax.annotate(label, (x[i], energy[i]), textcoords="offset points", xytext=(0, 8), ha="center")
    labels = ("ΔE‡ forward", "ΔE‡ reverse") if along_irc else ("highest image − reactant", "highest image − product")
    lines = [f"{label} {barrier:.3f} eV ({barrier * EV_TO_KJ_PER_MOL:.1f} kJ/mol)"
             for label, barrier in zip(labels, (energy[top], energy[top] - energy[-1]), strict=True)]
    if result.energetics is not None:
        e = result.energetics
        lines.append(f"ΔG‡({e.temperature:g} K) forward {e.gibbs_barrier_forward:.3f} eV, reverse "
                     f"{e.gibbs_barrier_reverse:.3f} eV; ν‡ = {e.imaginary_frequency_cm1:.0f} cm⁻¹")
    fig.text(0.02, 0.02, "\n".join(lines), va="bottom", fontsize=8)
    ax.margins(y=0.15)
    ax.set_xlabel("distance along the " + ("IRC" if along_irc else "path") + " [Å·√amu]")
    ax.set_ylabel(f"E − E({ends[0]}) [eV]")
    title = result.reactant.get_chemical_formula() + ("" if along_irc else f" (no IRC: {result.failed_stage} failed)")
    ax.set_title(title)
    fig.tight_layout(rect=(0, 0.03 * (len(lines) + 1), 1, 1))
    fig.savefig(path, dpi=150)
    return True


@hydra.main(version_base="1.3", config_path="configs", config_name="react")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python react.py reactant=<file> product=<file> [...]`` (configs/react.yaml)."""
    for role in ("reactant", "product"):
        if OmegaConf.is_missing(cfg, role):
            sys.exit(f"react.py: which {role}? python react.py reactant=<file> product=<file> (one geometry each, "
                     "the same atoms in the same order; any file ase.io.read reads)")
    run(cfg)


if __name__ == "__main__":
    main()
