"""The optimisers of the paper's comparisons (Fig. 3, Fig. 4) and the model calculators they use.

:data:`RELAXATION_METHODS` (paper A.6.1) and :data:`TS_SEARCH_METHODS` (A.6.2) are
:class:`hip.optimize.OptimizerSpec` tables; :func:`model_calculators` gives one
:class:`hip.calculator.HIPCalculator` per Hessian method over one loaded model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from ase import Atoms
from ase.calculators.calculator import Calculator

from hip.optimize import OptimizerSpec, WorkEnergy

#: Short labels of the model Hessian methods (``HIPCalculator.hessian_method``) in tables and figures.
HESSIAN_LABELS = {"hip": "HIP", "autodiff": "AD", "finite_difference": "FD"}
_KEY = {"hip": "hip", "autodiff": "ad", "finite_difference": "fd"}

#: Paper Fig. 3 / A.6.1: RS-RFO with a fresh Hessian every step, RS-RFO with updates from an initial
#: Hessian (HIP, AD, FD or identity), and ASE's first-order BFGS and FIRE.
RELAXATION_METHODS: tuple[OptimizerSpec, ...] = (
    *(OptimizerSpec(f"rfo_{_KEY[h]}", f"RFO ({HESSIAN_LABELS[h]})", "sella", h, True) for h in HESSIAN_LABELS),
    *(OptimizerSpec(f"rfo_bfgs_{_KEY[h]}", f"RFO-BFGS ({HESSIAN_LABELS[h]} init)", "sella", h) for h in HESSIAN_LABELS),
    OptimizerSpec("rfo_bfgs_identity", "RFO-BFGS (identity init)", "sella", "identity"),
    OptimizerSpec("ase_bfgs", "BFGS (ASE)", "bfgs"),
    OptimizerSpec("ase_fire", "FIRE (ASE)", "fire"),
)

#: Paper Fig. 4 / A.6.2: RS-P-RFO with a fresh Hessian every step, or an initial one and updates.
TS_SEARCH_METHODS: tuple[OptimizerSpec, ...] = (
    *(OptimizerSpec(f"prfo_{_KEY[h]}", f"P-RFO ({HESSIAN_LABELS[h]})", "sella", h, True) for h in HESSIAN_LABELS),
    *(OptimizerSpec(f"prfo_bfgs_{_KEY[h]}", f"P-RFO-BFGS ({HESSIAN_LABELS[h]} init)", "sella", h)
      for h in HESSIAN_LABELS),
)


def select_methods(available: Sequence[OptimizerSpec], keys: Iterable[str] | None) -> list[OptimizerSpec]:
    """The specs named by ``keys`` (all of ``available`` if None), in the order of ``keys``.

    Raises:
        ValueError: an unknown key (the message lists the known ones).
    """
    by_key = {spec.key: spec for spec in available}
    if keys is None:
        return list(available)
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {list(by_key)}")
    return [by_key[k] for k in keys]


def model_calculators(checkpoint: str | Path, device: str = "cpu") -> dict[str, Calculator]:
    """One :class:`hip.calculator.HIPCalculator` per Hessian method, sharing a single loaded model.

    Returns:
        ``{"hip": ..., "autodiff": ..., "finite_difference": ...}``.

    Raises:
        FileNotFoundError, CheckpointError: see :class:`~hip.calculator.HIPCalculator`.
    """
    from hip.calculator import HESSIAN_METHODS, HIPCalculator

    first = HIPCalculator(checkpoint, device=device)
    return {m: first if m == first.hessian_method else HIPCalculator(first.model, hessian_method=m)
            for m in HESSIAN_METHODS}


def attach(atoms: Atoms, calculator: Calculator, energy: str = "work") -> Atoms:
    """A copy of ``atoms`` carrying ``calculator``, wrapped in :class:`WorkEnergy` if ``energy == "work"``."""
    out = atoms.copy()
    out.calc = WorkEnergy(calculator) if energy == "work" else calculator
    return out
