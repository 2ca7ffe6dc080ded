"""predict.py's outputs on disk: written batch by batch, never left half-written, resumed after a kill.

A run directory holds one *part* per process (the directory itself for one process, ``rank_<r>/`` for
process ``r`` of several). A part holds:

* ``predictions.extxyz``: every frame with its energy (eV), forces (eV/Å) and, in ``info``, ``frame``
  (index in the input), ``n_imaginary``, ``extremum`` and ``hip_warnings``;
* ``summary.csv``: one row per frame (:data:`SUMMARY_COLUMNS`);
* ``frequencies.csv``: one row per vibrational mode (:data:`FREQUENCY_COLUMNS`);
* ``skipped.csv``: ``frame, reason`` of each frame refused with ``skip_invalid=true``;
* ``hessians/batch_<k>.npz``: the batch's ``frame`` [B], ``natoms`` [B], ``energy`` [B] eV and
  ``hessian_<frame>`` (3N, 3N) eV/Å²;
* per-frame files of the requested :data:`FORMATS` in ``formats/``, and with ``lmdb``, ``predictions.lmdb``:
  a HORM-format shard (:mod:`hip.data.store`; keys 0, 1, ... in the order written, the input frame index in
  ``rxn``) that ``train.py`` and ``eval.py`` read like HORM's own files;
* ``manifest.jsonl``: one line per finished batch, written last, with the sizes of the appended files.

A batch counts as written only once its manifest line is on disk. Opening a part truncates the appended
files to the sizes in its last complete manifest line and removes later Hessian chunks, so a batch cut
off by a kill is redone from scratch and nothing written before it is lost or duplicated.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hip.cli import atomic_write_text
from hip.formats import FORMATS as QC_FORMATS

#: Columns of ``summary.csv`` (units in the names; empty H/S/G where ``notes`` says why).
SUMMARY_COLUMNS = ("frame", "formula", "natoms", "energy_eV", "max_force_eV_per_A", "n_imaginary",
                   "lowest_frequency_cm1", "zpe_eV", "extremum", "enthalpy_eV", "entropy_eV_per_K",
                   "gibbs_energy_eV", "warnings", "notes")
#: Columns of ``frequencies.csv``.
FREQUENCY_COLUMNS = ("frame", "mode", "frequency_cm1", "imaginary", "zpe_eV", "n_imaginary", "extremum")
SKIPPED_COLUMNS = ("frame", "reason")
#: Between the warnings (and the notes) of one frame in ``summary.csv`` and ``atoms.info["hip_warnings"]``
#: (messages may hold semicolons).
SEPARATOR = " | "
#: Appended files of a part and their CSV header (None: not a CSV).
APPENDED = {"predictions.extxyz": None, "summary.csv": SUMMARY_COLUMNS, "frequencies.csv": FREQUENCY_COLUMNS,
            "skipped.csv": SKIPPED_COLUMNS}
#: Extra outputs predict.py writes on request (``formats=[...]``): per frame ORCA ``.hess``, Gaussian
#: ``.fchk``, Molden normal modes (:mod:`hip.formats`) and ``modes``, ASE-viewable modes
#: (:func:`hip.vibrations.write_normal_modes`); ``lmdb``: all frames in one HORM-format shard.
FORMATS = (*QC_FORMATS, "modes", "lmdb")
MANIFEST = "manifest.jsonl"


def part_directory(output_dir: str | Path, rank: int, world_size: int) -> Path:
    """Where process ``rank`` of ``world_size`` writes: ``output_dir`` itself, or ``output_dir/rank_<r>``."""
    return Path(output_dir) if world_size == 1 else Path(output_dir) / f"rank_{rank}"


def part_directories(output_dir: str | Path) -> list[Path]:
    """Every part of a run directory that has a manifest (the directory itself first, then ``rank_*``)."""
    output_dir = Path(output_dir)
    candidates = [output_dir, *sorted(output_dir.glob("rank_*"), key=lambda p: int(p.name.split("_")[1]))]
    return [p for p in candidates if (p / MANIFEST).is_file()]


def read_manifest(directory: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a part's manifest, oldest first; a line cut off by a kill ends the list."""
    path = Path(directory) / MANIFEST
    entries = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return entries


def done_batches(output_dir: str | Path) -> set[int]:
    """Batch numbers written by any part of ``output_dir`` (those a rerun skips)."""
    return {entry["batch"] for part in part_directories(output_dir) for entry in read_manifest(part)}


def _fsync_append(path: Path, write) -> None:
    with open(path, "a", newline="") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class PredictionPart:
    """One process's outputs (see the module docstring), restored to its last complete batch on opening.

    Args:
        directory: the part's directory (created).
        formats: extra outputs besides the standard files, from :data:`FORMATS`.
        energy: what the predictions' energies are, ``"total"`` or ``"ae"``
            (:class:`hip.calculator.HIPCalculator`); the LMDB entries get both.

    Raises:
        ValueError: an unknown format name.
    """

    def __init__(self, directory: str | Path, formats: Sequence[str] = (), energy: str = "total"):
        unknown = sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"formats: {unknown} unknown; choose from {list(FORMATS)}")
        self.directory, self.formats, self.energy = Path(directory), tuple(formats), energy
        (self.directory / "hessians").mkdir(parents=True, exist_ok=True)
        self._restore()

    def _restore(self) -> None:
        entries = read_manifest(self.directory)
        sizes = entries[-1]["sizes"] if entries else {}
        for name in APPENDED:
            path = self.directory / name
            if path.exists() and path.stat().st_size > sizes.get(name, 0):
                os.truncate(path, sizes.get(name, 0))
        kept = {f"batch_{e['batch']:07d}.npz" for e in entries}
        for chunk in (self.directory / "hessians").glob("*.npz"):
            if chunk.name not in kept:
                chunk.unlink()
        atomic_write_text(self.directory / MANIFEST, "".join(json.dumps(e) + "\n" for e in entries))
        self.frames_written = sum(len(e["frames"]) for e in entries)  # the next LMDB key

    def commit(self, batch_id: int, predictions: Sequence, skipped: Sequence[tuple[int, str]] = ()) -> None:
        """Write one batch: Hessian chunk and per-frame formats first, then the appended files, then its
        manifest line (each fsynced), so that a kill at any point leaves the batch absent or complete.

        Args:
            batch_id: the batch's number (:class:`hip.prediction.FrameBatch`).
            predictions: :class:`hip.prediction.FramePrediction` of the batch's valid frames.
            skipped: ``(frame, reason)`` of the refused frames.
        """
        import ase.io
        from ase.calculators.singlepoint import SinglePointCalculator

        chunk = self.directory / "hessians" / f"batch_{batch_id:07d}.npz"
        tmp = chunk.with_name(f".{chunk.stem}.tmp.npz")
        np.savez(tmp, frame=np.array([p.index for p in predictions], dtype=np.int64),
                 natoms=np.array([len(p.atoms) for p in predictions], dtype=np.int64),
                 energy=np.array([p.energy for p in predictions]),
                 **{f"hessian_{p.index}": p.hessian for p in predictions})
        os.replace(tmp, chunk)
        if "lmdb" in self.formats:
            self._write_lmdb(predictions)
        files = [f for f in self.formats if f not in ("modes", "lmdb")]
        for p in predictions:
            if files:
                from hip.formats import write_formats

                write_formats(self.directory / "formats", f"frame_{p.index}", files, p.atoms.numbers,
                              p.atoms.positions, p.hessian, energy=p.energy, forces=p.forces,
                              masses=p.atoms.get_masses())
            if "modes" in self.formats and len(p.atoms) > 1:
                from hip.vibrations import write_normal_modes

                write_normal_modes(p.hessian, p.atoms, self.directory / "modes" / f"frame_{p.index}")

        def extxyz(f):
            for p in predictions:
                atoms = p.atoms.copy()
                atoms.info.update(frame=p.index, n_imaginary=p.n_imaginary, extremum=p.extremum)
                atoms.info.pop("hip_warnings", None)  # the calculator's list; written as one string, if any
                if p.warnings:
                    atoms.info["hip_warnings"] = SEPARATOR.join(p.warnings)
                atoms.calc = SinglePointCalculator(atoms, energy=p.energy, forces=p.forces)
                ase.io.write(f, atoms, format="extxyz")

        rows = {"summary.csv": [summary_row(p) for p in predictions],
                "frequencies.csv": [(p.index, k, f"{nu:.4f}", k < p.n_imaginary,
                                     f"{p.zpe:.6f}", p.n_imaginary, p.extremum)
                                    for p in predictions for k, nu in enumerate(p.frequencies)],
                "skipped.csv": list(skipped)}
        _fsync_append(self.directory / "predictions.extxyz", extxyz)
        for name, batch_rows in rows.items():
            header = APPENDED[name]
            path = self.directory / name
            new = not path.exists() or path.stat().st_size == 0

            def write(f, batch_rows=batch_rows, header=header, new=new):
                writer = csv.writer(f)
                if new:
                    writer.writerow(header)
                writer.writerows(batch_rows)

            _fsync_append(path, write)
        sizes = {name: (self.directory / name).stat().st_size for name in APPENDED}
        entry = {"batch": batch_id, "frames": [p.index for p in predictions], "skipped": [i for i, _ in skipped],
                 "sizes": sizes}
        _fsync_append(self.directory / MANIFEST, lambda f: f.write(json.dumps(entry) + "\n"))
        self.frames_written += len(predictions)


    def _write_lmdb(self, predictions: Sequence) -> None:
        """Append the batch to ``predictions.lmdb`` (one transaction), keys continuing after the frames of
        the batches in the manifest: a batch redone after a kill gets the same keys and, if its transaction
        had been committed before the kill, finds them present and leaves them (never duplicated)."""
        from hip.data.store import make_entry, write_entries
        from hip.dft import reference_energy

        entries = []
        for key, p in enumerate(predictions, start=self.frames_written):
            reference = reference_energy(p.atoms.numbers)
            total, ae = (p.energy, p.energy - reference) if self.energy == "total" else (p.energy + reference, p.energy)
            entries.append((key, make_entry(p.atoms.numbers, p.atoms.positions, total, ae, p.forces, p.hessian,
                                            rxn=p.index)))
        write_entries(self.directory / "predictions.lmdb", entries)


def summary_row(p) -> tuple:
    """The ``summary.csv`` row of a :class:`hip.prediction.FramePrediction`."""
    fmax = float(np.linalg.norm(p.forces, axis=1).max()) if len(p.forces) else 0.0
    lowest = f"{p.frequencies[0]:.2f}" if len(p.frequencies) else ""
    thermo = [f"{p.thermo[k]:.6f}" if k in p.thermo else "" for k in ("enthalpy_eV", "gibbs_energy_eV")]
    entropy = f"{p.thermo['entropy_eV_per_K']:.6e}" if "entropy_eV_per_K" in p.thermo else ""
    return (p.index, p.atoms.get_chemical_formula(), len(p.atoms), f"{p.energy:.6f}", f"{fmax:.6f}", p.n_imaginary,
            lowest, f"{p.zpe:.6f}", p.extremum, thermo[0], entropy, thermo[1], SEPARATOR.join(p.warnings),
            SEPARATOR.join(p.notes))


# ---- reading a run back as one -----------------------------------------------------------------------
def written_text(part: Path, name: str) -> str:
    """The part's appended file ``name`` up to the size its last manifest line records: what a reader may
    trust (a batch cut off by a kill, or still being written by another process, is not there)."""
    entries = read_manifest(part)
    size = entries[-1]["sizes"].get(name, 0) if entries else 0
    if not size:
        return ""
    with open(part / name, "rb") as f:
        return f.read(size).decode()


def iter_rows(output_dir: str | Path, name: str) -> Iterator[dict[str, str]]:
    """The rows of CSV ``name`` (``summary.csv``, ``frequencies.csv``, ``skipped.csv``) of every part's
    written batches, part by part (within a part in the order written: size-sorted batches)."""
    for part in part_directories(output_dir):
        yield from csv.DictReader(io.StringIO(written_text(part, name), newline=""))


def iter_hessians(output_dir: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame, hessian (3N, 3N) eV/Å²)`` for every written frame, one chunk in memory at a time."""
    for part in part_directories(output_dir):
        for entry in read_manifest(part):
            with np.load(part / "hessians" / f"batch_{entry['batch']:07d}.npz") as chunk:
                for frame in chunk["frame"].tolist():
                    yield frame, chunk[f"hessian_{frame}"]


@dataclass
class Predictions:
    """A whole run read into memory (for moderate sizes; stream with :func:`iter_hessians`/:func:`iter_rows`).

    Attributes:
        frames: ``ase.Atoms`` with energy (eV) and forces (eV/Å), sorted by input frame index.
        hessians: frame index → (3N, 3N) eV/Å².
        summary: ``summary.csv`` rows sorted by frame.
        skipped: ``skipped.csv`` rows sorted by frame.
    """

    frames: list
    hessians: dict[int, np.ndarray]
    summary: list[dict[str, str]]
    skipped: list[dict[str, str]]


def read_predictions(output_dir: str | Path) -> Predictions:
    """Every part of a run directory read as one run (any number of processes wrote it).

    Raises:
        FileNotFoundError: ``output_dir`` holds no written batch.
    """
    import ase.io

    parts = part_directories(output_dir)
    if not parts:
        raise FileNotFoundError(f"{output_dir}: no predictions written here (no {MANIFEST})")
    texts = [written_text(part, "predictions.extxyz") for part in parts]
    frames = [a for text in texts if text for a in ase.io.read(io.StringIO(text), index=":", format="extxyz")]
    by_frame = sorted(frames, key=lambda a: a.info["frame"])
    rows = sorted(iter_rows(output_dir, "summary.csv"), key=lambda r: int(r["frame"]))
    skipped = sorted(iter_rows(output_dir, "skipped.csv"), key=lambda r: int(r["frame"]))
    return Predictions(by_frame, dict(iter_hessians(output_dir)), rows, skipped)


def first_rows(output_dir: str | Path, n: int) -> tuple[list[dict[str, str]], int, int]:
    """The ``n`` summary rows of lowest frame index, the number of frames and of skipped frames, read in
    one pass without holding the run in memory."""
    count = 0

    def counted(rows):
        nonlocal count
        for row in rows:
            count += 1
            yield row

    first = heapq.nsmallest(n, counted(iter_rows(output_dir, "summary.csv")), key=lambda r: int(r["frame"]))
    return first, count, sum(1 for _ in iter_rows(output_dir, "skipped.csv"))
