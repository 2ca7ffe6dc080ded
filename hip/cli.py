"""Command-line error reporting shared by ``train.py``, ``eval.py``, ``predict.py`` and ``scripts/bench_*.py``.

A user's mistake (a missing file, an unreadable or refused checkpoint, an invalid option or data entry)
ends a command with one line naming the command and the problem, and exit status 1, not a traceback.
Resumable commands (predict.py, the downstream benchmarks) also share the settings check of their run
directory and the atomic text write their outputs use.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@contextmanager
def user_errors(command: str, errors: tuple[type[Exception], ...] | None = None) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``SystemExit("<command>: <message>")`` (exit status 1).

    Args:
        command: the name shown first, e.g. ``"eval.py"``.
        errors: the exception types that are the user's mistake; default: a missing file
            (``FileNotFoundError``), a directory where a file belongs (``IsADirectoryError``), an
            unreadable or refused checkpoint (:class:`hip.model.checkpoints.CheckpointError`) and an
            invalid option or data entry
            (``ValueError``, which includes :class:`hip.data.horm.HormDataError`). Wrap only the code
            where they are (set-up, input reading), so that a bug elsewhere keeps its traceback.
    """
    if errors is None:
        from hip.model.checkpoints import CheckpointError  # imported here: it loads the model code

        errors = (FileNotFoundError, IsADirectoryError, CheckpointError, ValueError)
    try:
        yield
    except errors as e:
        raise SystemExit(f"{command}: {e}") from None


def check_run_settings(directory: str | Path, settings: Mapping[str, Any], fix: str) -> None:
    """Record ``settings`` in ``directory/settings.json``, or check them against the recorded ones, so that
    a resumable command (predict.py, the downstream benchmarks) never mixes two runs in one directory.

    Args:
        directory: the run directory (created).
        settings: what decides the run's outputs (JSON-serialisable; tuples compare as lists).
        fix: what the user can do instead, for the message (e.g. ``"give another output_dir="``).

    Raises:
        ValueError: the directory holds a run with other settings; the message names the file, each
            differing key with both values, and ``fix``.
    """
    path = Path(directory) / "settings.json"
    settings = json.loads(json.dumps(dict(settings)))
    if path.is_file():
        recorded = json.loads(path.read_text())
        differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
        if differ:
            changes = ", ".join(f"{k}: stored {recorded.get(k)!r}, now {settings.get(k)!r}" for k in differ)
            raise ValueError(f"{path}: this directory holds a run with other settings ({changes}); {fix}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a fsynced temporary file in the same folder renamed over it
    (``os.replace``): a kill or a full disk leaves the old file or the new one, never half of either.

    Returns:
        ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def jsonable(value):
    """``value`` with NaN/inf as null and NumPy scalars as Python numbers (strict JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
