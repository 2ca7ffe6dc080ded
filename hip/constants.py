"""Units and element tables: the one home for these facts.

Units used everywhere in hip: positions in Å, energies in eV, forces in eV/Å, Hessians in eV/Å².
Sources: CODATA 2018 conversion factors; HORM element order and reference energies from
``../shared/horm/README.md``.
"""

from __future__ import annotations

#: 1 Hartree in eV (CODATA 2018).
HARTREE_TO_EV = 27.211386245988
#: 1 Bohr in Å (CODATA 2018).
BOHR_TO_ANGSTROM = 0.529177210903

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

#: eV/Å² → Hartree/Bohr² (force constants for ORCA and Gaussian files), from the two factors above.
EV_PER_A2_TO_HARTREE_PER_BOHR2 = BOHR_TO_ANGSTROM**2 / HARTREE_TO_EV
#: eV/Å → Hartree/Bohr (gradients and forces), from the two factors above.
EV_PER_A_TO_HARTREE_PER_BOHR = BOHR_TO_ANGSTROM / HARTREE_TO_EV
