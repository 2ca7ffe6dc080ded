"""ASE calculator for HIP-EquiformerV2: energy, forces and the Hessian of a molecule (paper §3–4).

:class:`HIPCalculator` is the one door from a checkpoint to chemistry tools::

    from ase.build import molecule
    from hip.calculator import HIPCalculator

    atoms = molecule("CH3OH")
    atoms.calc = HIPCalculator("ckpt/hip_small.ckpt")
    energy = atoms.get_potential_energy()   # eV (DFT-like total energy, see ``energy``)
    hessian = atoms.calc.get_hessian()      # (3N, 3N) eV/Å²

The Hessian comes from HIP's readout (``hessian_method="hip"``, one forward pass for all three
properties) or, through the same interface, from the paper's baselines of the same model:
``"autodiff"`` (−∂F/∂x, :func:`hip.model.autodiff.autodiff_hessian`) and ``"finite_difference"``
(central differences of the forces, :func:`hip.model.autodiff.finite_difference_hessian`).

Forces come from a direct head (as in HORM's and the HIP authors' EquiformerV2), not from −∂E/∂x.
They are therefore not exactly the gradient of the energy: an optimiser's line search or an
energy-based convergence test can disagree with the forces by the model's (small) non-conservative
part, and MD with them does not conserve energy exactly. Force-based optimisers (FIRE, BFGS without
line search, Sella's RS-RFO) converge on the forces and are the natural choice.

The model draws a random roll for every edge frame in each forward pass (fairchem); the calculator
fixes that draw (``seed``) in every call, without touching the global RNG, so the same geometry gives
bit-identical results every time on a CPU.

Applicability domain. Every result carries ``results["warnings"]`` (and the atoms object
``atoms.info["hip_warnings"]``): a list of ``"code: message"`` strings, empty when nothing applies,
from :func:`hip.domain.domain_warnings` against the checkpoint's recorded training domain (elements,
atom-count range, fragments, forces too large for a stationary point, the Hessian's translational
sum rule). They are not repeated through Python's ``warnings`` module (an optimisation would print
them at every step). A checkpoint whose Hessian readout was never trained (a backbone) refuses
``hessian_method="hip"``.

Precision. ``dtype="float64"`` runs the whole model in double precision (positions are centred on
their mean first, in both precisions, so that float32 keeps the digits of a molecule far from the
origin); outputs are float64 either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from hip.constants import ATOM_REFERENCE_ENERGY_EV
from hip.device import resolve_device
from hip.domain import TrainingDomain, domain_warnings

#: The shipped checkpoint (``ckpt/README.md``): the default model of the calculator and ``predict.py``.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "ckpt" / "hip_small.ckpt"

#: Ways to compute the Hessian: HIP's readout, and the two baselines of the same model (Table 1, Fig. 2).
HESSIAN_METHODS = ("hip", "autodiff", "finite_difference")

#: ``"total"``: ``ae`` + Σ HORM reference energies (comparable across stoichiometries, like DFT totals);
#: ``"ae"``: the model's raw output, the energy relative to isolated atoms.
ENERGY_KINDS = ("total", "ae")

#: ``atoms.info`` keys read as the total charge, and as the spin multiplicity 2S + 1.
CHARGE_KEYS = ("charge", "total_charge")
MULTIPLICITY_KEYS = ("spin", "multiplicity", "spin_multiplicity")

#: Precisions the model can run in.
DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: ``atoms.info`` key of a frame's domain warnings (the same strings as ``results["warnings"]``).
WARNINGS_KEY = "hip_warnings"


def _missing_checkpoint_message(path: Path) -> str:
    if path == DEFAULT_CHECKPOINT:
        hint = ("the shipped checkpoint comes with the repository (see ckpt/README.md); or train a model with "
                "`make main` and pass its logs/embedded_demo/runs/<date>/checkpoints/last.ckpt")
    else:
        hint = "give the path of a checkpoint of ours, the HIP authors' or HORM's (see ckpt/README.md)"
    return f"checkpoint {path} does not exist: {hint}"


def check_closed_shell_molecule(atoms: Atoms, elements: Sequence[int], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the field if ``atoms`` is outside what HIP models.

    HORM (the training data) holds neutral, closed-shell, isolated molecules of H, C, N, O.
    Overlapping atoms and NaN positions are checked when the graph is built
    (:func:`hip.data.graphs.check_molecule`).

    Args:
        atoms: the molecule; positions Å.
        elements: atomic numbers the model was trained on.
        where: context for the message, e.g. ``"frame 3 of x.xyz (CH4)"``.

    Raises:
        ValueError: an element outside ``elements``; ``atoms.pbc`` true along any axis; a non-zero total
            charge (``atoms.info`` ``charge``/``total_charge`` or the initial charges); a spin
            multiplicity other than 1 (``atoms.info`` ``spin``/``multiplicity``/``spin_multiplicity``),
            non-zero initial magnetic moments, or an odd number of electrons.
    """
    unknown = sorted(set(atoms.numbers.tolist()) - set(elements))
    if unknown:
        from ase.data import chemical_symbols

        raise ValueError(f"{where}: field 'numbers' has elements {[chemical_symbols[z] for z in unknown]} the "
                         f"model was not trained on (it knows {[chemical_symbols[z] for z in elements]})")
    if atoms.pbc.any():
        raise ValueError(f"{where}: field 'pbc' is {atoms.pbc.tolist()}: HIP models isolated molecules; "
                         "set atoms.pbc = False (the cell is then ignored)")
    for key in CHARGE_KEYS:
        if key in atoms.info and float(atoms.info[key]) != 0:
            raise ValueError(f"{where}: atoms.info[{key!r}] = {atoms.info[key]}: HIP models neutral molecules only")
    if abs(atoms.get_initial_charges().sum()) > 1e-8:
        raise ValueError(f"{where}: field 'initial_charges' sums to {atoms.get_initial_charges().sum():g}: "
                         "HIP models neutral molecules only")
    for key in MULTIPLICITY_KEYS:
        if key in atoms.info and float(atoms.info[key]) != 1:
            raise ValueError(f"{where}: atoms.info[{key!r}] = {atoms.info[key]}: HIP models closed-shell "
                             "singlets only (spin multiplicity 1)")
    if np.abs(atoms.get_initial_magnetic_moments()).sum() > 1e-8:
        raise ValueError(f"{where}: field 'initial_magmoms' is non-zero: HIP models closed-shell singlets only")
    if int(atoms.numbers.sum()) % 2:
        raise ValueError(f"{where}: {int(atoms.numbers.sum())} electrons (odd) cannot form the neutral "
                         "closed-shell singlet that HIP models")


class HIPCalculator(Calculator):
    """ASE calculator: energy (eV), forces (eV/Å) and Hessian (eV/Å²) of one neutral closed-shell molecule.

    Args:
        model: a checkpoint path (any format :func:`hip.load_checkpoint` reads; default the shipped
            ``ckpt/hip_small.ckpt``) or a loaded :class:`~hip.model.hip_equiformer.HIPEquiformerV2`
            (used as is, not copied: constructing a calculator around a loaded model is free).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA if available); default: the loaded model's
            device, or CPU for a path.
        hessian_method: ``"hip"`` (default), ``"autodiff"`` or ``"finite_difference"``; switch later
            with ``calc.hessian_method = ...`` (cached results are dropped).
        energy: ``"total"`` (default: ``ae`` + HORM's isolated-atom reference energies, ωB97X/6-31G(d)
            totals) or ``"ae"`` (the model output, relative to the isolated atoms).
        hessian_kwargs: extra arguments of the baseline function, e.g. ``{"chunk_size": 8}`` for
            autodiff or ``{"delta": 5e-4, "fixed_frames": True}`` for finite differences.
        elements: atomic numbers accepted (default: H, C, N, O, those of HIP's training data, which
            leaves out F as the paper does).
        seed: the edge-frame roll drawn in every forward pass.
        dtype: ``"float32"`` (default) or ``"float64"``: the precision the model runs in (a loaded
            model passed as ``model`` is converted in place). float64 took 1.3× the time of float32 for
            CH3OH and 1.8× for a 20-atom molecule (shipped checkpoint, one CPU thread).
        compile: run the model through ``torch.compile``
            (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_compiled`): the first prediction
            compiles (minutes on a CPU for the paper-size model, seconds from the on-disk cache in
            later processes), then every molecule size is served by that one compile.
        **kwargs: ASE ``Calculator`` arguments (``label``, ``directory``, ...).

    Results are cached as in every ASE calculator: one forward pass computes energy, forces and (for
    ``"hip"``) the Hessian; the autodiff and finite-difference Hessians are computed only when asked.

    Raises:
        FileNotFoundError: the checkpoint path does not exist (the message names it).
        CheckpointError: the checkpoint cannot be read (see :mod:`hip.model.checkpoints`).
        ValueError: an unknown ``hessian_method``, ``energy``, ``dtype`` or ``device`` (or CUDA asked for
            where there is none, :func:`hip.device.resolve_device`); an element without a reference
            energy with ``energy="total"``; ``hessian_method="hip"`` with a checkpoint whose Hessian
            readout was never trained.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "forces", "hessian"]
    default_parameters: ClassVar[dict[str, Any]] = {"hessian_method": "hip", "energy": "total", "seed": 0}

    def __init__(
        self,
        model: str | Path | torch.nn.Module = DEFAULT_CHECKPOINT,
        device: str | torch.device | None = None,
        hessian_method: str = "hip",
        energy: str = "total",
        hessian_kwargs: Mapping[str, Any] | None = None,
        elements: Sequence[int] | None = None,
        seed: int = 0,
        dtype: str = "float32",
        compile: bool = False,
        **kwargs,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        self.dtype = DTYPES[dtype]
        self.source = str(model) if isinstance(model, str | Path) else "the given model"

        if isinstance(model, str | Path):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(_missing_checkpoint_message(path))
            from hip.model.checkpoints import load_checkpoint

            device = resolve_device(device or "cpu")
            model = load_checkpoint(path, map_location=device)
        else:
            model = getattr(model, "model", model)  # a HIPModule (LightningModule) holds it as .model
            if device is not None:
                model = model.to(resolve_device(device))
        self.model = model.to(self.dtype).eval()
        if compile and not self.model.compiled:
            self.model.set_compiled(True)
        self.device = next(model.parameters()).device
        #: What the checkpoint was trained on (:func:`hip.load_checkpoint`); unknown for other models.
        self.training_domain = getattr(model, "training_domain", None) or TrainingDomain(
            source="a model not loaded by hip.load_checkpoint")
        self.hessian_kwargs = dict(hessian_kwargs or {})
        self.elements = tuple(sorted(ATOM_REFERENCE_ENERGY_EV) if elements is None else sorted(elements))
        super().__init__(**kwargs)
        self.set(hessian_method=hessian_method, energy=energy, seed=seed)

    # ---- parameters --------------------------------------------------------------------------
    def set(self, **kwargs) -> dict:
        """Change parameters (``hessian_method``, ``energy``, ``seed``); cached results are dropped.

        Raises:
            ValueError: an unknown ``hessian_method`` or ``energy``; ``energy="total"`` with an element
                that has no reference energy.
        """
        if kwargs.get("hessian_method", "hip") not in HESSIAN_METHODS:
            raise ValueError(f"hessian_method must be one of {HESSIAN_METHODS}, got {kwargs['hessian_method']!r}")
        if kwargs.get("hessian_method") == "hip" and getattr(self.model, "hessian_readout_trained", True) is False:
            raise ValueError(f"{self.source} has an untrained Hessian readout (a backbone trained on energies and "
                             "forces only): hessian_method='hip' would return meaningless Hessians; use "
                             "hessian_method='autodiff' (predict.py: hessian=autodiff) or a HIP checkpoint "
                             "such as ckpt/hip_small.ckpt")
        if kwargs.get("energy", "total") not in ENERGY_KINDS:
            raise ValueError(f"energy must be one of {ENERGY_KINDS}, got {kwargs['energy']!r}")
        if kwargs.get("energy") == "total" and (missing := sorted(set(self.elements) - set(ATOM_REFERENCE_ENERGY_EV))):
            raise ValueError(f"energy='total' needs reference energies, and elements {missing} have none "
                             f"(hip.constants.ATOM_REFERENCE_ENERGY_EV); use energy='ae'")
        changed = super().set(**kwargs)
        if changed:
            self.results = {}  # unlike reset(), keeps self.atoms: get_hessian() then recomputes the last atoms
        return changed

    @property
    def hessian_method(self) -> str:
        """``"hip"``, ``"autodiff"`` or ``"finite_difference"``; assigning it drops cached results."""
        return self.parameters["hessian_method"]

    @hessian_method.setter
    def hessian_method(self, value: str) -> None:
        self.set(hessian_method=value)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes since the last calculation, plus ``"info"`` when its charge or spin keys changed."""
        changes = super().check_state(atoms, tol)
        keys = (*CHARGE_KEYS, *MULTIPLICITY_KEYS)
        if self.atoms is not None and any(self.atoms.info.get(k) != atoms.info.get(k) for k in keys):
            changes = [*changes, "info"]
        return changes

    # ---- calculation -------------------------------------------------------------------------
    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """The Hessian d²E/dx² of ``atoms`` (default: the last ones calculated), (3N, 3N) float64, eV/Å².

        Rows and columns are ordered ``3·atom + xyz``. The ``"hip"`` Hessian is exactly symmetric; the
        autodiff and finite-difference ones are not (direct forces are not exactly conservative).

        Raises:
            ValueError: no ``atoms`` and nothing calculated yet; see :func:`check_closed_shell_molecule`,
                and atoms closer than 0.1 Å.
        """
        if atoms is None and self.atoms is None:
            raise ValueError("get_hessian(): no atoms given and none calculated yet; call calc.get_hessian(atoms)")
        return self.get_property("hessian", atoms)

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Fill ``self.results`` (ASE's calculator protocol): ``energy`` float eV, ``forces`` (N, 3) eV/Å,
        for ``hessian_method="hip"`` or when asked ``hessian`` (3N, 3N) eV/Å², and ``warnings`` (list of
        ``"code: message"`` strings, :func:`hip.domain.domain_warnings`), also put in the given atoms'
        ``info["hip_warnings"]``.

        Raises:
            ValueError: see :func:`check_closed_shell_molecule`, and atoms closer than 0.1 Å.
        """
        super().calculate(atoms, properties, system_changes)
        want_hessian = self.hessian_method == "hip" or "hessian" in properties
        graph = self.graph(self.atoms, f"atoms {self.atoms.get_chemical_formula()}")
        self.results = self._run([graph], want_hessian)[0]
        self._add_warnings(self.results, self.atoms, atoms)

    def predict(self, molecules: Sequence[Atoms], batch_size: int = 16, hessian: bool = True,
                progress: bool = False, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Energy, forces and Hessians of many molecules, ``batch_size`` per forward pass.

        Every molecule is checked before any is computed. Results equal one-molecule calls up to float
        rounding (batched sums differ in the last bits; the edge-frame rolls are drawn per batch).
        The calculator's cache is left as it was.

        Args:
            molecules: ``ase.Atoms`` objects (positions Å).
            batch_size: molecules per forward pass.
            hessian: also compute Hessians (with ``hessian_method``).
            progress: show a tqdm progress bar over molecules.
            names: how error messages name each molecule (default ``"molecule i (formula)"``).

        Returns:
            One dict per molecule: ``energy`` float eV, ``forces`` (N, 3) float64 eV/Å, if
            ``hessian`` ``hessian`` (3N, 3N) float64 eV/Å², and ``warnings``, the molecule's domain
            warnings as ``"code: message"`` strings (:func:`hip.domain.domain_warnings`; empty when
            none applies), which are also put in each molecule's ``info["hip_warnings"]``.

        Raises:
            ValueError: naming the molecule's index and formula, see :func:`check_closed_shell_molecule`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if names is None:
            names = [f"molecule {i} ({atoms.get_chemical_formula()})" for i, atoms in enumerate(molecules)]
        graphs = [self.graph(atoms, name) for atoms, name in zip(molecules, names, strict=True)]
        from tqdm.auto import tqdm

        results = []
        with tqdm(total=len(graphs), disable=not progress, unit="molecule") as bar:
            for start in range(0, len(graphs), batch_size):
                results += self._run(graphs[start:start + batch_size], hessian)
                bar.update(len(graphs[start:start + batch_size]))
        for result, atoms in zip(results, molecules, strict=True):
            self._add_warnings(result, atoms, atoms)
        return results

    def _add_warnings(self, result: dict[str, Any], atoms: Atoms, target: Atoms | None) -> None:
        """Put the domain warnings of ``atoms`` in ``result["warnings"]`` and ``target.info``."""
        found = [str(w) for w in domain_warnings(atoms.numbers, atoms.positions, result.get("forces"),
                                                 result.get("hessian"), self.training_domain)]
        result["warnings"] = found
        if target is not None:
            target.info[WARNINGS_KEY] = list(found)

    def graph(self, atoms: Atoms, where: str):
        """The model's input graph of ``atoms`` after the checks of :func:`check_closed_shell_molecule`.

        Raises:
            ValueError: naming ``where`` and the field: see :func:`check_closed_shell_molecule`, NaN
                positions and atoms closer than 0.1 Å (:func:`hip.data.graphs.check_molecule`).
        """
        check_closed_shell_molecule(atoms, self.elements, where)
        centred = torch.as_tensor(atoms.positions - atoms.positions.mean(axis=0) if len(atoms) else atoms.positions)
        graph = self.model.graph_builder()(torch.as_tensor(atoms.numbers), centred, where=where)
        graph.pos = centred.to(self.dtype)  # the builder casts to the default dtype
        return graph

    @contextmanager
    def _fixed_roll(self) -> Iterator[None]:
        """Seed the model's random edge-frame rolls, restoring the global RNG state afterwards."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.parameters["seed"])
            yield

    @contextmanager
    def _model_dtype(self) -> Iterator[None]:
        """Make the model's dtype the default while it runs: fairchem creates some tensors (edge-frame
        Wigner helpers, padding) in the default dtype, which must match the float64 weights."""
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)

    def _run(self, graphs: Sequence, hessian: bool) -> list[dict[str, Any]]:
        from hip.data.graphs import collate, split_hessian
        from hip.model.autodiff import autodiff_hessian, finite_difference_hessian

        batch = collate(graphs).to(self.device)
        method = self.hessian_method
        with self._model_dtype():
            with self._fixed_roll(), torch.no_grad():
                out = self.model(batch, hessian=hessian and method == "hip")
            if hessian and method == "autodiff":
                with self._fixed_roll():
                    out["hessian"] = autodiff_hessian(self.model, batch, **self.hessian_kwargs)
            elif hessian and method == "finite_difference":
                out["hessian"] = finite_difference_hessian(self.model, batch, seed=self.parameters["seed"],
                                                           **self.hessian_kwargs)
        energies = out["energy"].detach().double().cpu().numpy()
        if self.parameters["energy"] == "total":
            reference = torch.tensor([ATOM_REFERENCE_ENERGY_EV[z] for z in batch.z.tolist()], dtype=torch.float64)
            energies = energies + reference.new_zeros(len(graphs)).index_add_(0, batch.batch.cpu(), reference).numpy()
        forces = out["forces"].detach().double().cpu().split(batch.natoms.tolist())
        hessians = split_hessian(out["hessian"].detach().double().cpu(), batch.natoms) if "hessian" in out else None
        return [{"energy": float(energies[b]), "forces": forces[b].numpy(),
                 **({"hessian": hessians[b].numpy()} if hessians is not None else {})} for b in range(len(graphs))]
