"""Streaming, resumable predictions over a molecule file: predict.py's engine (paper §2, §4).

Frames are read lazily (``ase.io.iread``), in windows of ``window`` frames sorted by atom count and cut
into batches of ``batch_size`` molecules, so that one forward pass sees molecules of similar size and
peak memory does not grow with the number of frames. The batches run through Lightning's
``Trainer.predict``: on one CPU it is a plain loop; with ``trainer=ddp trainer.devices=4`` batch ``k``
goes to process ``k mod world_size``, and each process writes its own part of the outputs
(:mod:`hip.prediction_store`), read back as one by :func:`hip.prediction_store.read_predictions`.

Batch numbers depend only on the input file, ``batch_size`` and ``window``, so a rerun of the same
command knows which batches are already written (the parts' manifests) and skips them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from ase import Atoms
from torch.utils.data import DataLoader, IterableDataset

from hip.extrema import PREDICT_THRESHOLD_CM1
from hip.prediction_store import PredictionPart, done_batches, part_directory


def file_logger(name: str = "hip.prediction") -> logging.Logger:
    """A logger that writes only to the root logger's files (Hydra's ``predict.log``), not the console:
    per-frame warnings and the summary table belong in the log without flooding the terminal."""
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return logger


@dataclass
class FrameBatch:
    """One batch of frames: ``batch_id`` (global, deterministic), input ``indices`` and the ``frames``."""

    batch_id: int
    indices: list[int]
    frames: list[Atoms]


@dataclass
class FramePrediction:
    """What predict.py records of one frame.

    Attributes:
        index: the frame's position in the input file (0-based).
        atoms: the frame (positions Å).
        energy: eV (``energy="total"`` or ``"ae"``, see :class:`hip.calculator.HIPCalculator`).
        forces: (N, 3) eV/Å.
        hessian: (3N, 3N) eV/Å².
        frequencies: (3N − 6 or 3N − 5,) cm⁻¹, negative for imaginary modes (empty for one atom).
        n_imaginary: modes below ``−imaginary_threshold_cm1``.
        zpe: zero-point energy over the real modes, eV.
        extremum: ``minimum``, ``transition state``, ``saddle point of order k``
            (:func:`hip.extrema.extremum_type`; a single atom has no vibrational modes).
        thermo: ``enthalpy_eV``, ``entropy_eV_per_K``, ``gibbs_energy_eV`` at the run's temperature and
            pressure, empty where they are not meaningful (see ``notes``).
        warnings: the calculator's applicability warnings (``"code: message"``).
        notes: why a number was left out (imaginary modes, not a stationary point).
    """

    index: int
    atoms: Atoms
    energy: float
    forces: np.ndarray
    hessian: np.ndarray
    frequencies: np.ndarray
    n_imaginary: int
    zpe: float
    extremum: str
    thermo: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_frames_lazily(path: str | Path) -> Iterator[tuple[int, Atoms]]:
    """``(index, atoms)`` for every frame of ``path``, read one at a time by ASE.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
        ValueError: ASE cannot read a frame (the message names the file and the frame), or there is none.
    """
    import ase.io

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"input {path} is a directory; give a molecule file (xyz, extxyz, traj, sdf, ...)")
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    read = 0  # frames read so far: the next one is the one ASE fails on
    try:
        for atoms in ase.io.iread(path, index=":"):
            yield read, atoms
            read += 1
    except Exception as e:  # ASE raises many types (XYZError, KeyError, StopIteration, UnknownFileTypeError...)
        raise ValueError(f"input {path} frame {read}: ASE cannot read it ({type(e).__name__}: {e})") from e


def iter_batches(path: str | Path, batch_size: int, window: int) -> Iterator[FrameBatch]:
    """The batches of ``path``: each window of ``window`` consecutive frames sorted by atom count
    (stable), cut into batches of ``batch_size``; ``batch_id`` counts batches from 0 over the file.

    Raises:
        ValueError: ``batch_size`` or ``window`` below 1, an unreadable frame, or an empty file.
    """
    if batch_size < 1 or window < 1:
        raise ValueError(f"batch_size and window must be ≥ 1, got {batch_size} and {window}")
    batch_id, buffer, seen = 0, [], False
    for item in read_frames_lazily(path):
        seen = True
        buffer.append(item)
        if len(buffer) == window:
            for batch in _cut(buffer, batch_size, batch_id):
                batch_id += 1
                yield batch
            buffer = []
    if not seen:
        raise ValueError(f"input {path}: no frames")
    yield from _cut(buffer, batch_size, batch_id)


def _cut(items: list[tuple[int, Atoms]], batch_size: int, first_id: int) -> Iterator[FrameBatch]:
    items = sorted(items, key=lambda item: len(item[1]))
    for k, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start:start + batch_size]
        yield FrameBatch(first_id + k, [i for i, _ in chunk], [a for _, a in chunk])


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class FrameBatches(IterableDataset):
    """The batches of one input file that this process predicts: batch ``k`` belongs to rank
    ``k mod world_size``; batches already in ``output_dir``'s manifests are skipped (resume)."""

    def __init__(self, path: str | Path, batch_size: int, window: int, output_dir: str | Path):
        self.path, self.batch_size, self.window, self.output_dir = Path(path), batch_size, window, Path(output_dir)

    def __iter__(self) -> Iterator[FrameBatch]:
        rank, world_size = rank_and_world_size()
        done = done_batches(self.output_dir)
        for batch in iter_batches(self.path, self.batch_size, self.window):
            if batch.batch_id % world_size == rank and batch.batch_id not in done:
                yield batch


def _as_is(batch: FrameBatch) -> FrameBatch:
    return batch


def frame_loader(dataset: FrameBatches) -> DataLoader:
    """A loader yielding the dataset's :class:`FrameBatch` objects unchanged (batching is the dataset's)."""
    return DataLoader(dataset, batch_size=None, collate_fn=_as_is)


@dataclass(frozen=True)
class AnalysisSettings:
    """How each frame is analysed: imaginary-mode tolerance (cm⁻¹, :mod:`hip.extrema`), temperature (K),
    pressure (Pa)."""

    imaginary_threshold_cm1: float = PREDICT_THRESHOLD_CM1
    temperature: float = 298.15
    pressure: float = 101325.0


#: Warning codes of :mod:`hip.domain` that withhold thermochemistry, and why: its numbers would look
#: valid and are not (``domain_unknown`` alone does not: it says nothing about the molecule).
WITHHELD_BECAUSE = {"forces": "not a stationary point", "fragments": "several molecules",
                    "elements": "outside the training domain", "natoms": "outside the training domain",
                    "formula": "outside the training domain", "sum_rule": "Hessian not translation-invariant"}


def analyse_frame(index: int, atoms: Atoms, result: Mapping[str, Any], settings: AnalysisSettings) -> FramePrediction:
    """Frequencies, extremum type, ZPE and ideal-gas thermochemistry of one predicted frame.

    Args:
        index: the frame's index in the input file.
        atoms: the frame; positions Å, masses amu.
        result: one item of :meth:`hip.calculator.HIPCalculator.predict` (``energy`` eV, ``forces``
            (N, 3) eV/Å, ``hessian`` (3N, 3N) eV/Å², optional ``warnings``).
        settings: see :class:`AnalysisSettings`.

    Thermochemistry (H, S, G; :func:`hip.vibrations.thermochemistry`) is left empty, with a note saying
    why, for a frame with imaginary modes or one of the calculator's warnings in :data:`WITHHELD_BECAUSE`
    (not a stationary point, outside the training domain, ...): its numbers would look valid and are not.
    """
    from hip.extrema import count_imaginary, extremum_type
    from hip.vibrations import thermochemistry

    hessian = np.asarray(result["hessian"])
    warnings_ = list(result.get("warnings", ()))
    with warnings.catch_warnings():  # imaginary modes are reported in n_imaginary and the notes
        warnings.simplefilter("ignore", UserWarning)
        t = thermochemistry(hessian, atoms, settings.temperature, settings.pressure,
                            potential_energy=float(result["energy"]))
    frequencies = t.frequencies  # thermochemistry's vibrational analysis (atoms' masses): done once
    n_imaginary = count_imaginary(frequencies, settings.imaginary_threshold_cm1)
    extremum = extremum_type(n_imaginary, len(frequencies))
    notes = []
    if n_imaginary:
        notes.append(f"H, S, G not given: {n_imaginary} imaginary mode(s)")
    codes = [w.split(":", 1)[0] for w in warnings_]
    for reason in dict.fromkeys(WITHHELD_BECAUSE[c] for c in codes if c in WITHHELD_BECAUSE):
        which = ", ".join(c for c in codes if WITHHELD_BECAUSE.get(c) == reason)
        notes.append(f"H, S, G not given: {reason} ({which})")
    thermo: dict[str, float] = {}
    if not notes:
        thermo = {"enthalpy_eV": t.enthalpy, "entropy_eV_per_K": t.entropy, "gibbs_energy_eV": t.gibbs_energy}
    return FramePrediction(index, atoms, float(result["energy"]), np.asarray(result["forces"]), hessian, frequencies,
                           n_imaginary, float(t.zero_point_energy), extremum, thermo, warnings_, notes)


class PredictionModule(L.LightningModule):
    """Lightning wrapper of :class:`hip.calculator.HIPCalculator` for ``Trainer.predict``.

    ``predict_step`` takes a :class:`FrameBatch` and returns ``(predictions, skipped)``: one
    :class:`FramePrediction` per valid frame, and ``(index, reason)`` for each frame the calculator
    refuses when ``skip_invalid`` (otherwise the refusal is raised, naming the file and frame).
    """

    def __init__(self, model: torch.nn.Module, input_name: str, calculator_kwargs: Mapping[str, Any],
                 analysis: AnalysisSettings, skip_invalid: bool = False):
        super().__init__()
        self.model = model
        self.input_name = input_name
        self.calculator_kwargs = dict(calculator_kwargs)
        self.analysis = analysis
        self.skip_invalid = skip_invalid
        self.calc = None

    def on_predict_start(self) -> None:
        from hip.calculator import HIPCalculator

        self.calc = HIPCalculator(self.model, **self.calculator_kwargs)

    def transfer_batch_to_device(self, batch: FrameBatch, device: torch.device, dataloader_idx: int) -> FrameBatch:
        return batch  # ASE frames; the calculator builds graphs and moves them

    def predict_step(self, batch: FrameBatch, batch_idx: int = 0):
        names = [f"input {self.input_name} frame {i} ({a.get_chemical_formula()})"
                 for i, a in zip(batch.indices, batch.frames, strict=True)]
        keep, skipped = list(range(len(batch.frames))), []
        try:
            results = self.calc.predict(batch.frames, batch_size=len(batch.frames), names=names)
        except ValueError:
            if not self.skip_invalid:
                raise
            keep = []
            for k, (atoms, name) in enumerate(zip(batch.frames, names, strict=True)):
                try:
                    self.calc.graph(atoms, name)
                    keep.append(k)
                except ValueError as e:
                    skipped.append((batch.indices[k], str(e)))
            frames = [batch.frames[k] for k in keep]
            results = self.calc.predict(frames, batch_size=max(len(frames), 1), names=[names[k] for k in keep])
        predictions = [analyse_frame(batch.indices[k], batch.frames[k], result, self.analysis)
                       for k, result in zip(keep, results, strict=True)]
        return predictions, skipped


class PredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """Writes each batch as it finishes into this process's :class:`hip.prediction_store.PredictionPart`
    (after restoring it to its last complete batch), logs each frame's warnings and each skipped frame
    (``predict.log``), and shows a progress bar of molecules/s on rank 0.

    Args:
        output_dir: the run directory.
        formats: extra outputs (:data:`hip.prediction_store.FORMATS`).
        energy: the calculator's ``energy`` setting (``"total"`` or ``"ae"``).
    """

    def __init__(self, output_dir: str | Path, formats: Sequence[str] = (), energy: str = "total"):
        super().__init__(write_interval="batch")
        # the batches come from FrameBatches, not a sampler: Lightning's batch indices are not needed
        warnings.filterwarnings("ignore", "Couldn't infer the batch indices", module="lightning")
        self.output_dir, self.formats, self.energy = Path(output_dir), tuple(formats), energy
        self.part: PredictionPart | None = None
        self.bar = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm

        directory = part_directory(self.output_dir, trainer.global_rank, trainer.world_size)
        self.part = PredictionPart(directory, self.formats, self.energy)
        self.bar = tqdm(unit="molecule", disable=trainer.global_rank != 0, desc="predict", smoothing=0.1)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch: FrameBatch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        predictions, skipped = prediction
        self.part.commit(batch.batch_id, predictions, skipped)
        log = file_logger()
        for p in predictions:
            for message in p.warnings:
                log.warning("frame %d (%s): %s", p.index, p.atoms.get_chemical_formula(), message)
        for index, reason in skipped:
            log.warning("frame %d skipped: %s", index, reason)
        self.bar.update(len(batch.frames) * trainer.world_size)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bar.close()

