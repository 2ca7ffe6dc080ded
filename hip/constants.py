"""Units and element tables: the one home for these facts.

Units used everywhere in hip: positions in Å, energies in eV, forces in eV/Å, Hessians in eV/Å².
Sources: CODATA 2018 conversion factors; HORM element order and reference energies from
``../shared/horm/README.md``.
"""

from __future__ import annotations

import math

import ase.units

#: 1 Hartree in eV (CODATA 2018).
HARTREE_TO_EV = 27.211386245988
#: 1 Bohr in Å (CODATA 2018).
BOHR_TO_ANGSTROM = 0.529177210903
#: 1 Hartree/Bohr (a force, PySCF's and Gaussian's unit) in eV/Å.
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM
#: 1 Hartree/Bohr² (a Hessian entry) in eV/Å².
HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2 = HARTREE_TO_EV / BOHR_TO_ANGSTROM**2

#: Column order of HORM's ``one_hot`` field: H, C, N, O, F.
HORM_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)

#: Isolated-atom reference energies (eV) behind HORM's ``ae = energy − Σ ref[Z]`` (ωB97X/6-31G(d)),
#: fitted exactly on the HORM sample shard. F is absent from that shard, so it has no reference.
ATOM_REFERENCE_ENERGY_EV: dict[int, float] = {
    1: -16.71317,
    6: -1035.52100,
    7: -1489.14061,
    8: -2046.24251,
}

#: Two atoms closer than this (Å) make a geometry invalid.
MIN_INTERATOMIC_DISTANCE = 0.1

# Wavenumber of a mass-weighted eigenvalue. In ase.units, length is Å, energy eV and mass amu
# (ase.units.kg = 1/_amu), so the time unit is Å·sqrt(amu/eV), and ase.units.s = 1e10·sqrt(_e/_amu) is
# the number of those time units in one second. An eigenvalue λ of the mass-weighted Hessian, in
# eV/(Å²·amu), is ω² in (time unit)⁻²; hence ω [rad/s] = sqrt(λ)·ase.units.s, and the wavenumber is
# ν̃ = ω / (2π·c) with c = 100·_c in cm/s. Numerically ≈ 521.47 cm⁻¹ per sqrt(eV/(Å²·amu)).
#: cm⁻¹ per sqrt(eV/(Å²·amu)): ν̃ = sign(λ)·sqrt(|λ|)·this.
EV_PER_A2_AMU_TO_CM1 = ase.units.s / (2.0 * math.pi * 100.0 * ase.units._c)


def formula(numbers) -> str:
    """Hill-order chemical formula of atomic numbers [N], e.g. ``[8, 1, 1]`` → ``"H2O"``."""
    from ase.data import chemical_symbols
    from ase.formula import Formula

    return Formula("".join(chemical_symbols[int(z)] for z in numbers)).format("hill")
