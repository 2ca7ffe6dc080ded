"""Devices and timing shared by the chemistry door (:mod:`hip.calculator`) and the evaluation harness
(:mod:`hip.evaluation`): which device a user's option names, moving a batch there, and timing a call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import torch

#: What a device option accepts (``cuda:<index>`` too), in messages.
DEVICE_CHOICES = "'cpu', 'cuda', 'cuda:<index>' or 'auto' (CUDA when available)"
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(device: str | torch.device, option: str = "device") -> torch.device:
    """The ``torch.device`` a user's option names, checked to exist on this machine.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"auto"`` (CUDA if available, else CPU)
            or a ``torch.device``.
        option: the option's name for messages, e.g. ``"eval.device"``.

    Returns:
        The device (``"cuda"`` without an index stays as it is: the current CUDA device).

    Raises:
        ValueError: one line naming ``option``: an unknown device name (with the allowed values), CUDA
            asked for on a machine without it, or a CUDA index this machine does not have.
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, torch.device):
        name = str(device).strip().lower()
        if not _DEVICE_PATTERN.fullmatch(name):
            raise ValueError(f"{option}={device!r} is not a device: use {DEVICE_CHOICES}")
        device = torch.device(name)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{option}={device}: only {DEVICE_CHOICES} are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option}={device}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, CUDA build {torch.version.cuda}); use {option}=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option}={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"indices 0 to {torch.cuda.device_count() - 1}")
    return device


def to_device(batch, device: torch.device):
    """The batch on ``device``: itself on the CPU, else a copy (PyG's ``to`` moves in place)."""
    return batch if device.type == "cpu" else batch.clone().to(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall time in ms.

    On a GPU the device is synchronised before the call and CUDA events are recorded around it (as
    the HIP authors' evaluation), waiting for the end event, so the time covers the host work inside
    ``fn`` (graph construction, copies) and every kernel it launched; on a CPU ``time.perf_counter``.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end)
    start_s = time.perf_counter()
    out = fn()
    return out, 1000 * (time.perf_counter() - start_s)
