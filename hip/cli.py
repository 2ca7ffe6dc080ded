"""Command-line error reporting shared by ``train.py``, ``eval.py``, ``predict.py`` and ``scripts/bench_*.py``.

A user's mistake (a missing file, an unreadable or refused checkpoint, an invalid option or data entry)
ends a command with one line naming the command and the problem, and exit status 1, not a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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
