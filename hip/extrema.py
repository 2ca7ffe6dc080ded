"""One definition of an imaginary mode and of a stationary point's type, with each protocol's threshold.

A vibrational mode is imaginary when its wavenumber (:func:`hip.vibrations.vibrational_analysis`: the
mass-weighted, Eckart-projected Hessian; negative for imaginary modes) lies below −threshold cm⁻¹.
Protocols differ only in the threshold, named here, so that the same Hessian is classified the same way
by every command at the same threshold:

* :data:`TABLE3_THRESHOLD_CM1`: eval.py's Tables 3 and 9, the HIP authors' ``analyze_frequencies``
  (eigenvalues of the projected mass-weighted Hessian below :data:`TABLE3_EIGENVALUE_THRESHOLD`
  = −1e-6 eV/(Å²·amu), i.e. wavenumbers below −0.52 cm⁻¹); also the downstream benchmarks'
  negative-mode counts (:func:`hip.optimize.count_negative_modes`);
* :data:`TS_THRESHOLD_CM1`: TS success in reaction and TS-search runs, ReactBench's rule (exactly one
  mode below −10 cm⁻¹: :func:`is_first_order_saddle`);
* :data:`PREDICT_THRESHOLD_CM1`: predict.py's default (``imaginary_threshold_cm1``), the same 10 cm⁻¹: a
  float32 model Hessian's near-zero modes (rigid-body leakage, ``eigh`` rounding) scatter by a few cm⁻¹
  around 0, and a mode above −10 cm⁻¹ changes no chemistry (a ZPE term of at most 0.6 meV).
"""

from __future__ import annotations

import math

import torch

from hip.constants import EV_PER_A2_AMU_TO_CM1

#: eval.py's negative-eigenvalue threshold (Tables 3, 9), eV/(Å²·amu): the HIP authors' value.
TABLE3_EIGENVALUE_THRESHOLD = -1e-6
#: TS success: exactly one mode below minus this, cm⁻¹ (ReactBench).
TS_THRESHOLD_CM1 = 10.0
#: predict.py's default tolerance, cm⁻¹ (see the module docstring).
PREDICT_THRESHOLD_CM1 = 10.0
#: What :func:`extremum_type` says for a molecule without vibrational modes (a single atom: 3N − 3 = 0).
NO_VIBRATIONAL_MODES = "no vibrational modes (a single atom)"


def frequency_threshold(eigenvalue_threshold: float) -> float:
    """The wavenumber tolerance (cm⁻¹, ≥ 0) equivalent to a negative-eigenvalue threshold (eV/(Å²·amu),
    ≤ 0): λ < t exactly when ν = −√|λ|·c < −√|t|·c, since ν is monotonic in λ.

    Raises:
        ValueError: ``eigenvalue_threshold`` > 0.
    """
    if eigenvalue_threshold > 0:
        raise ValueError(f"eigenvalue threshold must be ≤ 0, got {eigenvalue_threshold}")
    return math.sqrt(-eigenvalue_threshold) * EV_PER_A2_AMU_TO_CM1


#: :data:`TABLE3_EIGENVALUE_THRESHOLD` as a wavenumber tolerance (≈ 0.52 cm⁻¹).
TABLE3_THRESHOLD_CM1 = frequency_threshold(TABLE3_EIGENVALUE_THRESHOLD)


def count_imaginary(frequencies_cm1, threshold_cm1: float) -> int:
    """Number of imaginary modes: wavenumbers below ``−threshold_cm1`` (paper §2, extrema classification).

    Args:
        frequencies_cm1: [M] wavenumbers, cm⁻¹, negative for imaginary modes.
        threshold_cm1: the protocol's tolerance, cm⁻¹ (≥ 0): :data:`TABLE3_THRESHOLD_CM1`,
            :data:`TS_THRESHOLD_CM1` or :data:`PREDICT_THRESHOLD_CM1`; 0 counts every negative one.

    Raises:
        ValueError: a negative ``threshold_cm1``.
    """
    if threshold_cm1 < 0:
        raise ValueError(f"threshold_cm1 must be ≥ 0, got {threshold_cm1}")
    return int((torch.as_tensor(frequencies_cm1, dtype=torch.float64) < -threshold_cm1).sum())


def is_first_order_saddle(frequencies_cm1, threshold_cm1: float = TS_THRESHOLD_CM1) -> bool:
    """TS success (ReactBench): exactly one wavenumber below ``−threshold_cm1`` (default −10 cm⁻¹).

    Args:
        frequencies_cm1: [M] wavenumbers, cm⁻¹ (all modes, or at least the two lowest).
        threshold_cm1: cm⁻¹, ≥ 0.
    """
    return count_imaginary(frequencies_cm1, threshold_cm1) == 1


def extremum_type(n_imaginary: int, n_modes: int | None = None) -> str:
    """``"minimum"`` (no imaginary mode), ``"transition state"`` (one: a first-order saddle point) or
    ``"saddle point of order k"`` (k ≥ 2), paper §2 and Table 3; :data:`NO_VIBRATIONAL_MODES` when the
    number of vibrational modes ``n_modes`` is 0 (one atom).

    Raises:
        ValueError: ``n_imaginary`` < 0 or above ``n_modes``.
    """
    if n_modes == 0 and n_imaginary == 0:
        return NO_VIBRATIONAL_MODES
    if n_imaginary < 0:
        raise ValueError(f"n_imaginary must be ≥ 0, got {n_imaginary}")
    if n_modes is not None and n_imaginary > n_modes:
        raise ValueError(f"n_imaginary = {n_imaginary} exceeds the {n_modes} vibrational modes")
    return {0: "minimum", 1: "transition state"}.get(n_imaginary, f"saddle point of order {n_imaginary}")
