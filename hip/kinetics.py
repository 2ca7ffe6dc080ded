"""Barriers and rate constants of one elementary step from its three stationary points (transition-state theory).

The thermochemistry of each stationary point (reactant, transition state, product) is ASE's ideal-gas,
rigid-rotor, harmonic-oscillator model (:func:`hip.vibrations.thermochemistry`, ``IdealGasThermo``); at
the transition state the imaginary mode is left out of every term (it is the reaction coordinate).
From those:

* ΔE‡ = E_TS − E_R (electronic), ΔH‡ = H_TS − H_R (ZPE and thermal enthalpy included), ΔG‡ = G_TS − G_R,
  forward (from the reactant) and reverse (from the product); ΔE, ΔH, ΔG of reaction = X_P − X_R;
* the Eyring rate constant with Wigner's tunnelling correction (Wigner 1932, the leading ħ² term),

      k(T) = κ · (k_B·T / h) · exp(−ΔG‡ / k_B·T),     κ = 1 + (h·ν‡ / k_B·T)² / 24,

  with ν‡ the magnitude of the imaginary frequency (h·ν‡ = h·c·|ν̃‡|).

This is the rate of a **unimolecular** step (an isomerisation or a decomposition A → TS‡), in s⁻¹, for
which the translational partition functions of reactant and TS cancel and no standard state enters.
A bimolecular step A + B → TS‡ would need the partition functions of both reactants
(G_A + G_B instead of G_R) and the standard-state concentration: k = κ·(k_B·T/h)·(c°)⁻¹·exp(−ΔG‡°/k_B·T),
in M⁻¹ s⁻¹ with c° = 1 mol/L (ASE's thermochemistry is at a standard *pressure*, so ΔG‡ would also have
to be converted from 1 atm to 1 M: ΔG‡(1 M) = ΔG‡(1 atm) − k_B·T·ln(c°·R·T/p°)). That is not done here.

The TS success rule that licenses the formula (:func:`hip.extrema.is_first_order_saddle`: exactly one
imaginary mode, below −10 cm⁻¹, ReactBench's) is defined in :mod:`hip.extrema`; :mod:`hip.reaction`
applies it.

Units: energies eV, temperature K, frequencies cm⁻¹ (negative for an imaginary mode), rates s⁻¹.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import ase.units
import numpy as np
from ase import Atoms

from hip.vibrations import Thermochemistry

#: Planck's constant, eV·s.
PLANCK_EV_S = ase.units._hplanck / ase.units._e
#: 1 eV in kJ/mol.
EV_TO_KJ_PER_MOL = ase.units._e * ase.units._Nav / 1000.0
#: Atoms within this distance (Å) of one line make a linear molecule in :func:`stationary_point`.
LINEAR_TOLERANCE = 0.01


def wigner_kappa(imaginary_frequency_cm1: float, temperature: float) -> float:
    """Wigner's tunnelling factor κ = 1 + (h·ν‡ / k_B·T)² / 24 (dimensionless, ≥ 1).

    Args:
        imaginary_frequency_cm1: the transition state's imaginary wavenumber, cm⁻¹ (its sign is ignored).
        temperature: K (> 0).

    Raises:
        ValueError: ``temperature`` ≤ 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    x = abs(imaginary_frequency_cm1) * ase.units.invcm / (ase.units.kB * temperature)
    return 1.0 + x * x / 24.0


def eyring_rate(gibbs_barrier: float, temperature: float, kappa: float = 1.0) -> float:
    """The Eyring rate constant k = κ · (k_B·T/h) · exp(−ΔG‡/k_B·T) of a unimolecular step, s⁻¹.

    Args:
        gibbs_barrier: ΔG‡, eV.
        temperature: K (> 0).
        kappa: transmission (tunnelling) factor, e.g. :func:`wigner_kappa`.

    Raises:
        ValueError: ``temperature`` ≤ 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    kt = ase.units.kB * temperature
    return kappa * kt / PLANCK_EV_S * math.exp(-gibbs_barrier / kt)


@dataclass
class StationaryPoint:
    """Electronic energy and thermochemistry of one stationary point.

    Attributes:
        energy: electronic (potential) energy, eV.
        thermo: :class:`hip.vibrations.Thermochemistry` computed with ``potential_energy=energy``, so its
            ``enthalpy`` and ``gibbs_energy`` are absolute (eV).
    """

    energy: float
    thermo: Thermochemistry

    def summary(self) -> dict[str, float]:
        """``energy_eV``, ``zero_point_energy_eV``, ``enthalpy_eV``, ``gibbs_energy_eV``, ``entropy_eV_per_K``,
        ``imaginary_modes_left_out``, ``geometry`` and ``symmetry_number``."""
        t = self.thermo
        return {"energy_eV": self.energy, "zero_point_energy_eV": t.zero_point_energy, "enthalpy_eV": t.enthalpy,
                "gibbs_energy_eV": t.gibbs_energy, "entropy_eV_per_K": t.entropy,
                "imaginary_modes_left_out": t.n_imaginary, "geometry": t.geometry, "symmetry_number": t.symmetry_number}


def straightened(atoms: Atoms, tolerance: float = LINEAR_TOLERANCE) -> Atoms | None:
    """A copy of ``atoms`` with the positions projected onto their principal axis of least inertia if every
    atom lies within ``tolerance`` Å of that line (a linear molecule as an optimiser leaves it), else None."""
    if len(atoms) < 2:
        return None
    moments, axes = atoms.get_moments_of_inertia(vectors=True)
    axis = axes[int(np.argmin(moments))]
    centre = atoms.get_center_of_mass()
    along = (atoms.positions - centre) @ axis
    line = centre + along[:, None] * axis
    if np.linalg.norm(atoms.positions - line, axis=1).max() >= tolerance:
        return None
    out = atoms.copy()
    out.positions = line
    return out


def stationary_point(atoms: Atoms, hessian: np.ndarray, energy: float, temperature: float,
                     pressure: float = 101325.0) -> StationaryPoint:
    """:class:`StationaryPoint` of ``atoms`` from its (3N, 3N) Hessian (eV/Å²) and electronic ``energy`` (eV)
    at ``temperature`` K and ``pressure`` Pa (:func:`hip.vibrations.thermochemistry`; imaginary modes, the
    reaction mode at a TS, are left out without ASE's warning).

    A molecule within :data:`LINEAR_TOLERANCE` of a line is analysed on that line (:func:`straightened`):
    the rigid-body analysis keeps a third rotation for any residual bend, which would turn a bending
    mode into a rotation about the axis and take ~R·ln of the rotational partition function off S.

    Raises:
        ValueError: the Hessian's shape does not fit the atoms; ImportError: PySCF (symmetry number) missing.
    """
    from hip.vibrations import thermochemistry

    atoms = straightened(atoms) or atoms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ASE: "1 imag modes removed"
        thermo = thermochemistry(hessian, atoms, temperature, pressure, potential_energy=float(energy))
    return StationaryPoint(float(energy), thermo)


@dataclass
class Energetics:
    """Barriers, reaction energies and rate constants of one unimolecular step (see the module docstring).

    All energies eV; ``temperature`` K; ``imaginary_frequency_cm1`` negative; rates s⁻¹.
    """

    temperature: float
    imaginary_frequency_cm1: float
    barrier_forward: float
    barrier_reverse: float
    enthalpy_barrier_forward: float
    enthalpy_barrier_reverse: float
    gibbs_barrier_forward: float
    gibbs_barrier_reverse: float
    reaction_energy: float
    reaction_enthalpy: float
    reaction_gibbs_energy: float
    wigner_kappa: float
    rate_constant_forward: float
    rate_constant_reverse: float

    @classmethod
    def empty_dict(cls) -> dict[str, None]:
        """The keys of :meth:`as_dict`, every value None (a run that stopped before the thermochemistry)."""
        return dict.fromkeys(cls(**dict.fromkeys(cls.__dataclass_fields__, 0.0)).as_dict())

    def as_dict(self) -> dict[str, float]:
        """Flat dict with units in the keys: ``barrier_forward_eV``, ``rate_constant_forward_s-1``,
        ``imaginary_frequency_cm1``, ``temperature_K``, ``wigner_kappa``, ..."""
        out = {}
        for key, value in asdict(self).items():
            if key.startswith("rate_constant"):
                key = f"{key}_s-1"
            elif key == "temperature":
                key = "temperature_K"
            elif key not in ("imaginary_frequency_cm1", "wigner_kappa"):
                key = f"{key}_eV"
            out[key] = value
        return out


def reaction_energetics(reactant: StationaryPoint, ts: StationaryPoint, product: StationaryPoint,
                        imaginary_frequency_cm1: float, temperature: float) -> Energetics:
    """ΔE‡, ΔH‡, ΔG‡ forward and reverse, reaction ΔE, ΔH, ΔG and the Wigner-corrected Eyring rates.

    Args:
        reactant, ts, product: the stationary points; their ``thermo`` must be at ``temperature``.
        imaginary_frequency_cm1: the transition state's imaginary wavenumber, cm⁻¹.
        temperature: K.

    Returns:
        :class:`Energetics`.

    Raises:
        ValueError: ``temperature`` ≤ 0.
    """
    kappa = wigner_kappa(imaginary_frequency_cm1, temperature)
    g_forward = ts.thermo.gibbs_energy - reactant.thermo.gibbs_energy
    g_reverse = ts.thermo.gibbs_energy - product.thermo.gibbs_energy
    return Energetics(
        temperature=temperature,
        imaginary_frequency_cm1=-abs(imaginary_frequency_cm1),
        barrier_forward=ts.energy - reactant.energy,
        barrier_reverse=ts.energy - product.energy,
        enthalpy_barrier_forward=ts.thermo.enthalpy - reactant.thermo.enthalpy,
        enthalpy_barrier_reverse=ts.thermo.enthalpy - product.thermo.enthalpy,
        gibbs_barrier_forward=g_forward,
        gibbs_barrier_reverse=g_reverse,
        reaction_energy=product.energy - reactant.energy,
        reaction_enthalpy=product.thermo.enthalpy - reactant.thermo.enthalpy,
        reaction_gibbs_energy=product.thermo.gibbs_energy - reactant.thermo.gibbs_energy,
        wigner_kappa=kappa,
        rate_constant_forward=eyring_rate(g_forward, temperature, kappa),
        rate_constant_reverse=eyring_rate(g_reverse, temperature, kappa),
    )
