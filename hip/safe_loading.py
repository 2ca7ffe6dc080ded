"""Reading pickled files without running their code: HORM LMDB entries and checkpoints.

Unpickling calls whatever importable function the file names (``os.system`` included), before any
check can look at the result. Checkpoints and LMDB shards come from other people (Hugging Face,
Kaggle, colleagues), so every pickled byte hip reads goes through this module. A file may name
only the globals listed below, each with the reason it is needed; any other is refused before it
is imported or called, with :class:`RefusedGlobalError` naming it (callers add file and key:
:class:`hip.data.horm.HormDataError`, :class:`hip.model.checkpoints.CheckpointError`).

- **LMDB entries** (:func:`safe_loads`): a :class:`pickle.Unpickler` whose ``find_class`` returns
  only :data:`ENTRY_GLOBALS`: what HORM's shards and our labeller write (a torch_geometric
  ``Data`` of tensors), and NumPy arrays. The tensor storages inside such a pickle are small
  ``torch.save`` streams that torch itself would read with ``weights_only=False``; here torch's
  parser reads them through an unpickler that allows no global at all (:func:`_load_storage`).
  ``scripts/bench_entry_loading.py`` times it against ``pickle.loads`` (README "Performance").
  With ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` set, torch refuses this route and entries cannot be read.
- **Checkpoints** (:func:`safe_torch_load`): a file that names only globals torch's weights-only
  unpickler accepts by default (tensors, dicts, lists, OrderedDict, numbers, strings), such as
  every checkpoint ``train.py`` writes, HORM's ``eqv2.ckpt`` and plain state dicts, is read with
  ``torch.load(..., weights_only=True)`` and no allowance. A file that also names
  :data:`CHECKPOINT_GLOBALS` (the HIP authors' Lightning checkpoints, whose hyper-parameters are
  Hydra configs) is read by torch's parser through the restricted unpickler with
  :data:`TENSOR_GLOBALS` and :data:`CHECKPOINT_GLOBALS`: torch's weights-only unpickler refuses
  to fill any dict subclass, whatever ``torch.serialization.safe_globals`` allows, and the config
  of a Hydra run holds a filled one (OmegaConf's resolver cache, a ``defaultdict`` holding the
  ``${now:...}`` of the run directory). A file naming anything else is refused.

A trusted checkpoint that needs more is loaded with ``trusted=True`` in
:mod:`hip.model.checkpoints`: plain ``torch.load(weights_only=False)``, which runs any code the
file holds.
"""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
import io
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

#: Globals of a pickled tensor, with the reason for each (torch's storage type names, such as
#: ``torch.FloatStorage``, are resolved by torch's own reader before ``find_class`` is asked).
TENSOR_GLOBALS: dict[str, str] = {
    "torch._utils._rebuild_tensor_v2": "rebuilds a tensor from its storage, offset, shape and stride",
    "collections.OrderedDict": "the (empty) backward-hook dict passed to _rebuild_tensor_v2; state dicts",
}

#: Globals an LMDB entry may name, with the reason for each. Plain containers (dict, list, tuple),
#: numbers, strings and bytes need no global.
ENTRY_GLOBALS: dict[str, str] = {
    **TENSOR_GLOBALS,
    "torch_geometric.data.data.Data": "the HORM entry itself",
    "torch_geometric.data.data.DataEdgeAttr": "a class reference in every Data's state (its edge-attribute type)",
    "torch_geometric.data.data.DataTensorAttr": "a class reference in every Data's state (its tensor-attribute type)",
    "torch_geometric.data.storage.GlobalStorage": "the store that holds a Data's fields",
    "torch.storage._load_from_bytes": "a tensor's storage; mapped to _load_storage, which reads it with no "
                                      "global allowed (torch's own function unpickles it unrestricted)",
    "numpy.ndarray": "NumPy array fields: the array type",
    "numpy.dtype": "NumPy array fields and scalars: their element type",
    "numpy._core.multiarray._reconstruct": "NumPy array fields, protocols 2-4 (numpy.core.* in NumPy 1)",
    "numpy._core.multiarray.scalar": "NumPy scalar fields such as np.float32 energies",
    "numpy._core.numeric._frombuffer": "NumPy array fields, protocol 5",
    "_codecs.encode": "raw bytes of NumPy arrays in protocol-2 pickles, stored as latin-1 text",
}

#: Globals a checkpoint may name beyond torch's weights-only defaults, with the reason for each.
#: Only the HIP authors' Lightning checkpoints need them: their hyper-parameters are Hydra configs.
CHECKPOINT_GLOBALS: dict[str, str] = {
    "omegaconf.dictconfig.DictConfig": "the HIP authors' hyper-parameters are Hydra configs (OmegaConf)",
    "omegaconf.listconfig.ListConfig": "lists inside those configs (lmax_list, data paths, betas)",
    "omegaconf.nodes.AnyNode": "every value of a config composed from YAML",
    "omegaconf.base.ContainerMetadata": "metadata every OmegaConf container pickles",
    "omegaconf.base.Metadata": "metadata every OmegaConf value node pickles",
    "typing.Any": "the key/element type OmegaConf metadata stores for untyped configs",
    "builtins.int": "a type OmegaConf metadata stores (key types)",
    "builtins.dict": "a type OmegaConf metadata stores (container reference types)",
    "builtins.list": "a type OmegaConf metadata stores (container reference types)",
    "collections.defaultdict": "OmegaConf's resolver cache (it holds the ${now:...} values of a Hydra run)",
    "lightning.fabric.utilities.data.AttributeDict": "Lightning's hyper-parameter dict",
    "lightning.pytorch.utilities.parsing.AttributeDict": "Lightning's hyper-parameter dict (pytorch namespace)",
    "lightning_fabric.utilities.data.AttributeDict": "the same class saved by the standalone lightning_fabric",
    "pytorch_lightning.utilities.parsing.AttributeDict": "the same class saved by the standalone pytorch_lightning",
}

#: Package layouts that hold the same code under another name: NumPy 1 ``numpy.core`` is NumPy 2
#: ``numpy._core``; the standalone Lightning packages are namespaces of the ``lightning`` package.
_RENAMED = {"numpy.core.": "numpy._core.", "pytorch_lightning.": "lightning.pytorch.",
            "lightning_fabric.": "lightning.fabric."}


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing of the file was imported or called.

    Attributes:
        global_name: ``"module.qualname"`` as written in the file (e.g. ``"posix.system"``), or
            several, comma-separated.
    """

    def __init__(self, global_name: str, allowed: str):
        self.global_name = global_name
        super().__init__(f"refused global '{global_name}': not in {allowed} (loading it could run code)")


def _import(name: str) -> Any:
    """The object ``name`` ("module.attr") denotes, trying its current spelling (:data:`_RENAMED`) first."""
    spellings = [new + name.removeprefix(old) for old, new in _RENAMED.items() if name.startswith(old)] + [name]
    for spelling in spellings:
        module, _, attr = spelling.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"cannot import the allow-listed global {name}")


@functools.cache
def _allowed(kind: str) -> dict[tuple[str, str], Any]:
    """(module, name) → object for the allow-list ``kind`` ("entry", "checkpoint" or "storage");
    NumPy globals under both their NumPy 1 and NumPy 2 module names."""
    names = {"entry": ENTRY_GLOBALS, "checkpoint": TENSOR_GLOBALS | CHECKPOINT_GLOBALS, "storage": {}}[kind]
    objects = {}
    for name in names:
        module, _, attr = name.rpartition(".")
        value = _load_storage if name == "torch.storage._load_from_bytes" else _import(name)
        objects[module, attr] = value
        if module.startswith("numpy._core."):
            objects["numpy.core." + module.removeprefix("numpy._core."), attr] = value
    return objects


class _RestrictedUnpickler(pickle.Unpickler):
    """:class:`pickle.Unpickler` (the C one: only ``find_class`` runs in Python) that returns the
    globals of one allow-list and refuses every other, before importing it."""

    __slots__ = ()  # no per-instance dict: torch makes four of these per tensor (see _load_storage)
    kind = "storage"  # a storage stream names no global: torch resolves its storage type names itself
    allow_list = "a tensor storage stream (which names no global)"

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names, which protocol 2 (torch.save's) writes for builtins: mapped as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _allowed(self.kind)[module, name]
        except KeyError:
            raise RefusedGlobalError(f"{module}.{name}", self.allow_list) from None


class _EntryUnpickler(_RestrictedUnpickler):
    __slots__ = ()
    kind, allow_list = "entry", "hip.safe_loading.ENTRY_GLOBALS"


class _CheckpointUnpickler(_RestrictedUnpickler):
    __slots__ = ()
    kind, allow_list = "checkpoint", "hip.safe_loading.TENSOR_GLOBALS + CHECKPOINT_GLOBALS"


def _as_pickle_module(unpickler: type[pickle.Unpickler]) -> types.ModuleType:
    """A module with ``Unpickler`` and ``load``, as ``torch.load(pickle_module=...)`` uses one (torch
    passes ``encoding`` only)."""
    module = types.ModuleType(f"hip_safe_loading_{unpickler.__name__}")
    module.Unpickler = unpickler

    def load(file, encoding: str = "ASCII"):
        return unpickler(file, encoding=encoding).load()

    module.load = load
    return module


_STORAGE_PICKLE = _as_pickle_module(_RestrictedUnpickler)
_CHECKPOINT_PICKLE = _as_pickle_module(_CheckpointUnpickler)

#: How every storage stream written by ``torch.Tensor.__reduce__`` starts: torch's magic number,
#: pickled with protocol 2 (the legacy, non-zip ``torch.save`` format).
_STORAGE_STREAM_START = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)


def _load_storage(stream: bytes) -> torch.storage.TypedStorage:
    """Stand-in for ``torch.storage._load_from_bytes``: a pickled tensor's storage, onto the CPU.

    ``stream`` is a legacy-format ``torch.save`` of one storage. torch's own function loads it with
    ``weights_only=False``; here torch's parser reads it through a pickle module that refuses every
    global (torch does not combine ``weights_only=True`` with a ``pickle_module``, and its
    weights-only unpickler, written in Python, doubles the time per entry). Other formats (zip,
    TorchScript) are refused: torch would hand a TorchScript archive to ``torch.jit.load``.

    Raises:
        pickle.UnpicklingError: ``stream`` is not a legacy storage stream.
        RefusedGlobalError: the stream names a global.
    """
    if not isinstance(stream, bytes) or not stream.startswith(_STORAGE_STREAM_START):
        raise pickle.UnpicklingError("a tensor storage that is not a legacy torch.save stream, as tensor "
                                     "pickling writes (refused: other formats can carry TorchScript)")
    return torch.load(io.BytesIO(stream), map_location="cpu", pickle_module=_STORAGE_PICKLE)


def safe_loads(raw: bytes) -> Any:
    """Unpickle an LMDB value (a HORM entry, a ``length``) allowing only :data:`ENTRY_GLOBALS`.

    Args:
        raw: the pickled bytes.

    Returns:
        The object, e.g. a ``torch_geometric.data.Data`` of CPU tensors (units as stored: Å, eV,
        eV/Å, eV/Å²), or an int.

    Raises:
        RefusedGlobalError: the pickle names a global outside :data:`ENTRY_GLOBALS` (nothing of it ran).
        pickle.UnpicklingError, EOFError, ValueError, TypeError, ...: corrupt bytes (callers catch
            ``Exception`` and name the shard and key).
    """
    return _EntryUnpickler(io.BytesIO(raw)).load()


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a ``torch.save`` / Lightning file allowing torch's weights-only defaults and
    :data:`CHECKPOINT_GLOBALS` only (see the module docstring for the two ways it is read).

    Args:
        path: the file.
        map_location: device for the tensors.

    Returns:
        The loaded object: for a checkpoint, a dict of tensors and containers (OmegaConf and
        AttributeDict ones only from files that name them; :func:`to_plain` converts them).

    Raises:
        RefusedGlobalError: the file names globals outside torch's defaults and
            :data:`CHECKPOINT_GLOBALS`; ``global_name`` lists them.
        Exception: whatever ``torch.load`` raises for a file that is not a torch file
            (``UnpicklingError``, ``EOFError``, ``OSError``, ``RuntimeError`` ...).
    """
    needed = _globals_beyond_torch_defaults(path)
    if not needed:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            needed = _global_in_torch_reason(error)
            if not needed:
                raise
    refused = sorted(set(needed) - set(CHECKPOINT_GLOBALS))
    if refused:
        raise RefusedGlobalError(", ".join(refused), "torch's weights-only defaults + "
                                 "hip.safe_loading.CHECKPOINT_GLOBALS") from None
    return torch.load(path, map_location=map_location, pickle_module=_CHECKPOINT_PICKLE)


def _globals_beyond_torch_defaults(path: str | Path) -> list[str]:
    """The globals of a zip checkpoint (every ``torch.save`` since torch 1.6) that torch's weights-only
    unpickler does not accept by default (torch's ``get_unsafe_globals_in_checkpoint``, which reads
    the pickle's opcodes without running them); [] for another kind of file."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy format, TorchScript, not a torch file)
        return []


def _global_in_torch_reason(error: pickle.UnpicklingError) -> list[str]:
    """The global torch's weights-only unpickler stopped at in a legacy-format file, from its reason
    (kept as the context of the error ``torch.load`` raises: "... GLOBAL posix.system ..."); [] if none."""
    words = str(error.__context__ or error).split()
    return [words[words.index("GLOBAL") + 1]] if "GLOBAL" in words[:-1] else []


def to_plain(value: Any) -> Any:
    """``value`` with OmegaConf containers and dict subclasses (Lightning's AttributeDict) turned into
    plain dicts and lists, interpolations resolved; tensors and scalars are returned as they are.

    Raises:
        omegaconf.errors.OmegaConfBaseException: an interpolation that cannot be resolved.
    """
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    return value
