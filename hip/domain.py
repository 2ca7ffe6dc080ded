"""Applicability domain: what a checkpoint was trained on, and the warnings that apply to one frame.

A model is only as good as its training data covers the input. Every checkpoint this project writes
records a :class:`TrainingDomain` (``checkpoint["training_domain"]``, written by
:class:`hip.training.HIPModule` and kept by ``scripts/export_checkpoint.py``): the elements and
atom-count range of the training split, its shards and entries, the number of geometries and of
distinct stoichiometries, and whether the Hessian readout was trained. :func:`hip.load_checkpoint`
puts it on the model as ``model.training_domain``; checkpoints without a record (the HIP authors',
HORM's, plain state dicts, ours written before the record existed) give an *unknown* domain.

:func:`domain_warnings` lists, for one frame (atomic numbers, positions, and the predicted forces
and Hessian), each reason not to trust the prediction: elements or size outside the recorded domain,
a stoichiometry the training set does not hold, several covalently disconnected fragments, forces
too large for a stationary point, and a Hessian far from translation-invariant (the sum rule Σ_j
H_ij = 0 that every exact Hessian obeys, since a rigid translation changes no energy).
:class:`hip.calculator.HIPCalculator` attaches them to every result. The thresholds below are module
constants; their values were measured on the project's data (see each constant; ``ckpt/README.md``, "Training
domain").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hip.constants import formula

#: Largest atomic force |F_i| (eV/Å) at which a geometry still counts as a stationary point. Above it,
#: frequencies, ZPE and the extremum type (which assume ∇E = 0) are not meaningful. 0.3 eV/Å is six
#: times the usual optimiser convergence (ASE's and Sella's ``fmax`` = 0.05 eV/Å) and above the
#: shipped model's forces at equilibrium alkanes and benzene (0.02–0.16 eV/Å, its noise at a real
#: minimum), while the σ = 0.05 Å displaced training geometries (median 5.6 eV/Å) and unrelaxed inputs
#: exceed it. ASE's G2 geometries are not ωB97X/6-31G(d) minima (DFT max |F| 0.09–5.2 eV/Å, median
#: 0.77), so most of them are flagged too, rightly: relax them first (``hip.optimize``).
FORCE_THRESHOLD = 0.3

#: Largest translational sum-rule residual max_{i,a,b} |Σ_j H_{ia,jb}| (eV/Å²) of an acceptable Hessian.
#: DFT Hessians obey the rule up to integration-grid noise: HORM's sample (ωB97X/6-31G(d), 100
#: molecules) median 0.08, max 0.45 eV/Å²; the embedded set (PySCF, default grid, displaced
#: geometries) median 0.26, max 3.3 eV/Å². HIP's readout does not impose the rule: the shipped
#: ``hip_small`` gives median 1.8 (embedded) and 3.2 (HORM) eV/Å² on its own training molecules,
#: against force constants of 30–50 eV/Å². 5 eV/Å² lets 90 % of them pass (95 % of the embedded ones)
#: and flags Hessians far outside what it produced in training (H₂: 35, C₂₀H₄₂: 450 eV/Å²).
SUM_RULE_THRESHOLD = 5.0

#: Two atoms are bonded when closer than this multiple of the sum of their covalent radii (ASE's
#: ``natural_cutoffs``, Cordero et al. 2008), ASE's default in ``ase.build.connected``. 1.5 keeps the
#: stretched bonds of reaction paths (transition states) in one molecule, while fragments at van der
#: Waals or hydrogen-bond contact stay apart (O···H 1.8–2.0 Å > 1.46 Å). At 1.0 nearly every molecule
#: splits (C–H 1.09 Å > 1.07 Å); at 1.5, 9 of HORM's first 80 sample geometries (dissociating along
#: their reaction paths) and none of the embedded set have several fragments.
FRAGMENT_BOND_SCALE = 1.5


@dataclass(frozen=True)
class TrainingDomain:
    """What a checkpoint was trained on (all fields ``None`` when unknown).

    Attributes:
        elements: atomic numbers present in the training split, ascending.
        natoms: (smallest, largest) number of atoms of a training molecule.
        datasets: the training shards with the entries used, e.g. ``"data/embedded/train.lmdb [0-89]"``
            (paths relative to the repository when inside it or its parent folder).
        num_geometries: training geometries (entries).
        num_formulas: distinct stoichiometries among them (a proxy for the number of molecules).
        formulas: those stoichiometries as Hill formulas, sorted (None in records made before them).
        hessian_readout_trained: whether any Hessian loss trained the readout (False: a backbone,
            whose readout is random; None: unknown, assumed trained when the weights are there).
        source: where this record comes from: ``"recorded"``, or why it is unknown.
    """

    elements: tuple[int, ...] | None = None
    natoms: tuple[int, int] | None = None
    datasets: tuple[str, ...] | None = None
    num_geometries: int | None = None
    num_formulas: int | None = None
    formulas: tuple[str, ...] | None = None
    hessian_readout_trained: bool | None = None
    source: str = "unknown"

    @property
    def known(self) -> bool:
        """Whether elements and atom-count range were recorded."""
        return self.elements is not None and self.natoms is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ints and strings (what :func:`hip.safe_loading.safe_torch_load` reads back)."""
        record = asdict(self)
        for key in ("elements", "natoms", "datasets", "formulas"):
            if record[key] is not None:
                record[key] = list(record[key])
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any], where: str) -> TrainingDomain:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``record`` is not a mapping, has unknown keys or a field of the wrong type;
                the message names ``where`` and the field.
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}: 'training_domain' is a {type(record).__name__}, expected a dict")
        unknown = sorted(set(record) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: 'training_domain' has unknown fields {unknown}")
        try:
            fields = dict(record)
            for key in ("elements", "natoms"):
                if fields.get(key) is not None:
                    fields[key] = tuple(int(v) for v in fields[key])
            if fields.get("natoms") is not None and len(fields["natoms"]) != 2:
                raise ValueError("natoms must be (min, max)")
            for key in ("datasets", "formulas"):
                if fields.get(key) is not None:
                    fields[key] = tuple(str(v) for v in fields[key])
            for key in ("num_geometries", "num_formulas"):
                if fields.get(key) is not None:
                    fields[key] = int(fields[key])
            if fields.get("hessian_readout_trained") is not None:
                fields["hessian_readout_trained"] = bool(fields["hessian_readout_trained"])
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: 'training_domain' is malformed ({e})") from None

    def describe(self) -> str:
        """One line for logs and reports."""
        if not self.known:
            return f"training domain unknown ({self.source})"
        from ase.data import chemical_symbols

        return (f"trained on {self.num_geometries} geometries ({self.num_formulas} stoichiometries) of "
                f"{', '.join(chemical_symbols[z] for z in self.elements)}, {self.natoms[0]}-{self.natoms[1]} "
                f"atoms, from {', '.join(self.datasets or ())}; Hessian readout "
                f"{'trained' if self.hessian_readout_trained else 'untrained'}")


def _shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository when it lies in the repository's parent folder, else absolute."""
    root = Path(os.path.abspath(os.environ.get("PROJECT_ROOT", Path(__file__).resolve().parents[1])))
    path = Path(os.path.abspath(path))  # lexical, like the configs' ``${paths.root_dir}/../shared``
    return os.path.relpath(path, root) if path.is_relative_to(root.parent) else str(path)


def _ranges(keys: Iterable[int]) -> str:
    """Sorted unique integers as ``"0-79,85,90-99"``."""
    values = sorted(set(keys))
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ",".join(parts)


def domain_of_dataset(dataset, hessian_readout_trained: bool) -> TrainingDomain:
    """The :class:`TrainingDomain` of a :class:`~hip.data.horm.HormDataset` (its selected entries).

    Reads every selected entry once (one LMDB transaction per shard; no graphs are built): about
    20 µs per small molecule, so a HORM training split of 1.7 M entries takes a few minutes.

    Args:
        dataset: the training split (``HormDataModule.dataset("train")``).
        hessian_readout_trained: whether the run trains the readout (a Hessian loss term).

    Raises:
        HormDataError: an entry that cannot be read (message names shard, key and field).
    """
    from hip.data.horm import decode_entry, open_shard

    by_shard: dict[Path, list[int]] = {}
    for i in range(len(dataset)):
        shard, key, _ = dataset.locate(i)
        by_shard.setdefault(shard, []).append(int(key))
    elements: set[int] = set()
    sizes, formulas, datasets = [], set(), []  # formulas: element counts, as bytes
    for shard, keys in by_shard.items():
        with open_shard(shard).begin() as txn:
            for key in keys:
                raw_key = str(key).encode()
                z = decode_entry(txn.get(raw_key), f"HORM shard {shard} key {raw_key!r}", check_geometry=False)["z"]
                counts = np.bincount(z.numpy(), minlength=10)
                elements.update(np.flatnonzero(counts).tolist())
                sizes.append(len(z))
                formulas.add(counts.tobytes())
        datasets.append(f"{_shown_path(shard)} [{_ranges(keys)}]")
    if not sizes:
        return TrainingDomain(hessian_readout_trained=hessian_readout_trained, source="empty training split")
    hill = tuple(sorted(formula(np.repeat(np.arange(10), np.frombuffer(c, dtype=np.int64))) for c in formulas))
    return TrainingDomain(tuple(sorted(elements)), (min(sizes), max(sizes)), tuple(datasets), len(sizes),
                          len(formulas), hill, bool(hessian_readout_trained), "recorded")


def checkpoint_domain(checkpoint: Mapping[str, Any], has_readout: bool, kind: str, where: str) -> TrainingDomain:
    """The :class:`TrainingDomain` stored in a loaded checkpoint dict, or an unknown one.

    Args:
        checkpoint: the unpickled checkpoint file.
        has_readout: whether its state dict holds Hessian-readout weights.
        kind: the format's name, for the unknown domain's ``source``.
        where: the file, for messages.

    Raises:
        ValueError: a malformed record (see :meth:`TrainingDomain.from_dict`).
    """
    record = checkpoint.get("training_domain")
    if record is None:
        return TrainingDomain(hessian_readout_trained=None if has_readout else False,
                              source=f"{kind} without a training-domain record")
    domain = TrainingDomain.from_dict(record, where)
    if not has_readout and domain.hessian_readout_trained:
        domain = TrainingDomain(**{**asdict(domain), "hessian_readout_trained": False})
    return domain


# ---- per-frame warnings ----------------------------------------------------------------------

@dataclass(frozen=True)
class DomainWarning:
    """One reason not to trust a prediction: a short ``code`` and a sentence for humans."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def covalent_bonds(numbers: Sequence[int], positions: np.ndarray, scale: float) -> np.ndarray:
    """Which atom pairs are bonded: closer than ``scale`` × (r_cov,i + r_cov,j), ASE's covalent radii
    (``natural_cutoffs``, Cordero et al. 2008). The one connectivity rule of the project: fragments
    here (:data:`FRAGMENT_BOND_SCALE`), reactant/product bonds in :mod:`hip.irc` (the reaction's intended check).

    Args:
        numbers: [N] atomic numbers.
        positions: [N, 3] Å.
        scale: multiple of the covalent-radius sum.

    Returns:
        [N, N] bool, symmetric, False on the diagonal.
    """
    from ase import Atoms
    from ase.neighborlist import natural_cutoffs

    positions = np.asarray(positions, dtype=np.float64)
    radii = np.asarray(natural_cutoffs(Atoms(numbers=np.asarray(numbers)), mult=scale))
    distances = np.linalg.norm(positions[:, None] - positions[None, :], axis=-1)
    bonded = distances < radii[:, None] + radii[None, :]
    np.fill_diagonal(bonded, False)
    return bonded


def fragments(numbers: Sequence[int], positions: np.ndarray, scale: float = FRAGMENT_BOND_SCALE) -> list[np.ndarray]:
    """Covalently connected fragments (:func:`covalent_bonds`): atom indices of each, largest first.

    Args:
        numbers: [N] atomic numbers.
        positions: [N, 3] Å.
        scale: bond when closer than ``scale`` × (r_cov,i + r_cov,j) (:data:`FRAGMENT_BOND_SCALE`).
    """
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(covalent_bonds(numbers, positions, scale), directed=False)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def sum_rule_residual(hessian: np.ndarray) -> float:
    """Translational sum-rule residual max_{i,a,b} |Σ_j H_{ia,jb}| of a Cartesian Hessian, eV/Å².

    A rigid translation changes no energy, so each row of 3×3 blocks of an exact Hessian sums to 0.

    Args:
        hessian: (3N, 3N) eV/Å², rows and columns ordered 3·atom + xyz.

    Raises:
        ValueError: not a square matrix of side 3N.
    """
    h = np.asarray(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or h.shape[0] % 3:
        raise ValueError(f"hessian has shape {h.shape}, expected (3N, 3N)")
    n = h.shape[0] // 3
    return float(np.abs(h.reshape(n, 3, n, 3).sum(axis=2)).max()) if n else 0.0


def domain_warnings(numbers: Sequence[int], positions: np.ndarray, forces: np.ndarray | None,
                    hessian: np.ndarray | None, domain: TrainingDomain) -> list[DomainWarning]:
    """The warnings that apply to one predicted frame, in a fixed order (empty: none applies).

    Codes: ``domain_unknown`` (no record: element and size checks skipped), ``elements`` (outside
    the training elements), ``natoms`` (outside the training atom-count range), ``formula`` (a
    stoichiometry absent from the training set, when the record lists them), ``fragments`` (more
    than one covalently connected fragment, :func:`fragments`), ``forces`` (max |F_i| above
    :data:`FORCE_THRESHOLD`), ``sum_rule`` (:func:`sum_rule_residual` above :data:`SUM_RULE_THRESHOLD`).

    Args:
        numbers: [N] atomic numbers.
        positions: [N, 3] Å.
        forces: [N, 3] predicted forces, eV/Å, or None (not checked).
        hessian: (3N, 3N) predicted Hessian, eV/Å², or None (not checked).
        domain: the checkpoint's :class:`TrainingDomain` (``model.training_domain``).

    Messages are ASCII (``eV/A``, ``eV/A^2``), so that they survive CSV, logs and extended XYZ
    (ASE's extxyz reader garbles escaped non-ASCII characters in ``atoms.info``).
    """
    from ase.data import chemical_symbols

    numbers = np.asarray(numbers, dtype=np.int64)
    found = []
    if not domain.known:
        found.append(DomainWarning("domain_unknown", f"training domain unknown ({domain.source}): elements and "
                                   "molecule size are not checked against the training data"))
    else:
        outside = sorted(set(numbers.tolist()) - set(domain.elements))
        if outside:
            found.append(DomainWarning("elements", f"element(s) {', '.join(chemical_symbols[z] for z in outside)} "
                                       "outside the training set ("
                                       f"{', '.join(chemical_symbols[z] for z in domain.elements)})"))
        low, high = domain.natoms
        if not low <= len(numbers) <= high:
            found.append(DomainWarning("natoms", f"{len(numbers)} atoms, outside the training range {low}-{high}"))
        if domain.formulas is not None and (hill := formula(numbers)) not in domain.formulas:
            found.append(DomainWarning("formula", f"{hill} is not among the {len(domain.formulas)} "
                                       "stoichiometries of the training set: the model extrapolates to a "
                                       "molecule it has not seen"))
    parts = fragments(numbers, positions)
    if len(parts) > 1:
        names = ", ".join(formula(numbers[p]) for p in parts)
        found.append(DomainWarning("fragments", f"{len(parts)} covalently disconnected fragments ({names}): "
                                   "predicted as one molecule; their relative motions count as vibrations"))
    if forces is not None and len(numbers):
        fmax = float(np.linalg.norm(np.asarray(forces, dtype=np.float64), axis=1).max())
        if fmax > FORCE_THRESHOLD:
            found.append(DomainWarning("forces", f"max |F| = {fmax:.3g} eV/A > {FORCE_THRESHOLD} eV/A: not a "
                                       "stationary point: frequencies, ZPE and extremum type are not meaningful"))
    if hessian is not None:
        residual = sum_rule_residual(hessian)
        if residual > SUM_RULE_THRESHOLD:
            found.append(DomainWarning("sum_rule", f"translational sum rule violated: max_i |sum_j H_ij| = "
                                       f"{residual:.3g} eV/A^2 > {SUM_RULE_THRESHOLD} eV/A^2 (DFT: ~0.1); the "
                                       "Hessian is not translation-invariant"))
    return found
