"""The benchmarks' results: an append-only, resumable log of finished runs, and quartiles."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hip.cli import check_run_settings


class ResultsLog:
    """Finished runs of a benchmark as JSON lines, written one at a time so that a rerun resumes.

    ``<directory>/settings.json`` holds the settings that change results (checkpoint, noise, budget,
    ...); reopening the directory with different settings is an error rather than a silent mix.
    ``<directory>/results.jsonl`` holds one JSON object per finished run; a run is identified by the
    values of ``key_fields``.

    Args:
        directory: created if missing.
        settings: JSON-serialisable settings of this run.
        key_fields: the fields that identify a run, e.g. ``("molecule", "method")``.

    Raises:
        ValueError: ``settings`` differ from the stored ones (the message names the file and the fields),
            or a line of ``results.jsonl`` other than the last is not valid JSON (naming file and line).
    """

    def __init__(self, directory: str | Path, settings: Mapping[str, Any], key_fields: Sequence[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key_fields = tuple(key_fields)
        self.path = self.directory / "results.jsonl"
        check_run_settings(self.directory, settings, "use another output directory or delete it")
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            lines = self.path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    if number < len(lines):
                        raise ValueError(f"{self.path} line {number}: not valid JSON ({e})") from e
                    warnings.warn(f"{self.path} line {number}: incomplete last line (interrupted write) "
                                  "dropped; that run is redone", stacklevel=2)
            if len(self.rows) < len(lines):
                self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self._done = {self._key(row) for row in self.rows}

    def _key(self, row: Mapping[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def done(self, **key: Any) -> bool:
        """Whether the run with these ``key_fields`` values is already recorded."""
        return tuple(key[k] for k in self.key_fields) in self._done

    def add(self, row: Mapping[str, Any]) -> None:
        """Record a finished run (flushed and fsynced before returning)."""
        row = json.loads(json.dumps(dict(row), default=float))
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self._done.add(self._key(row))


def quartiles(values: Iterable[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values`` (NumPy's linear interpolation); NaNs if empty."""
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan, math.nan)
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)
