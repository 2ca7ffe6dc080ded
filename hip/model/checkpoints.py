"""Loading HIP-EquiformerV2 weights: ours, the HIP authors', HORM's, and plain state dicts.

Formats (all read by :func:`hip.safe_loading.safe_torch_load`, so opening one runs none of its code:
a file that names types outside the allow-list is refused with a :class:`CheckpointError`, unless
``trusted=True``):

a. our Lightning checkpoints: ``state_dict`` keys prefixed ``model.``, model kwargs in
   ``hyper_parameters["model"]``;
b. the HIP authors' Lightning checkpoints: keys prefixed ``potential.``, their model kwargs in
   ``hyper_parameters`` (the dict holding ``sphere_channels``);
c. HORM's EquiformerV2 ``eqv2.ckpt``: format (b) without Hessian modules; the Hessian readout is
   then freshly initialised, and a warning says so;
d. ``{"state_dict": <authors' names, no prefix>, "config": <authors' model kwargs>}``.

Module names are the authors' (``../shared/reference/*.txt``), so weights map one to one. Keys the
authors' model registers but never uses (``edge_degree_embedding_hessian.*``) are dropped by name;
every other missing, unexpected or mis-shaped key raises :class:`CheckpointError` listing them.

Graph settings. A loaded model always has its checkpoint's cutoffs and neighbour cap
(:data:`GRAPH_KEYS`), never hip's defaults: from the stored config; a cutoff the config omits from the
radial basis stored with the weights (600 Gaussians on [0, cutoff], :data:`RADIAL_BUFFERS`); in the
authors' formats (b–d) a key still missing takes their constructor's default
(:data:`AUTHORS_GRAPH_DEFAULTS`), as their model did; in ours it is an error, except the Hessian
cutoff of a checkpoint without a Hessian readout (an exported backbone), whose readout is fresh. A cutoff that disagrees
with the stored radial basis (a config, override or model that does not fit the weights) is an error.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hip.domain import TrainingDomain, checkpoint_domain
from hip.model.hip_equiformer import HESSIAN_MODULES, HIPEquiformerV2
from hip.safe_loading import RefusedGlobalError, safe_torch_load, to_plain

#: Model kwargs of the Hessian readout. A frozen-backbone run takes them from its own config and every
#: other kwarg (the backbone's architecture) from the backbone checkpoint (:func:`load_backbone`).
HESSIAN_CONFIG_KEYS = ("num_layers_hessian", "cutoff_hessian")

#: Graph settings (Å, count, Å) that every loaded model takes from its checkpoint.
GRAPH_KEYS = ("max_radius", "max_neighbors", "cutoff_hessian")

#: The HIP authors' constructor defaults (``nets/equiformer_v2/equiformer_v2_oc20.py`` of
#: BurgerAndreas/hip): what their model used for a graph setting its stored config omits.
AUTHORS_GRAPH_DEFAULTS = {"max_radius": 5.0, "max_neighbors": 500, "cutoff_hessian": 100.0}

#: The radial-basis buffer of each cutoff: Gaussian centres on [0, cutoff], the last one at the cutoff.
RADIAL_BUFFERS = {"max_radius": "distance_expansion.offset", "cutoff_hessian": "distance_expansion_hessian.offset"}

#: State-dict prefixes that the authors' model registers but never uses in ``forward``.
UNUSED_AUTHOR_PREFIXES = ("edge_degree_embedding_hessian.",)

#: Authors' kwargs with a direct counterpart in :class:`HIPEquiformerV2`.
_SAME_NAME = ("num_layers", "sphere_channels", "attn_hidden_channels", "num_heads", "attn_alpha_channels",
              "attn_value_channels", "ffn_hidden_channels", "grid_resolution", "num_sphere_samples",
              "edge_channels", "max_radius", "max_neighbors", "cutoff_hessian", "num_layers_hessian",
              "avg_degree", "max_num_elements", "weight_init")

#: Authors' kwargs whose value our architecture fixes: the value they must have.
_FIXED = {"use_pbc": False, "norm_type": "layer_norm_sh", "use_atom_edge_embedding": True,
          "share_atom_edge_embedding": False, "distance_function": "gaussian", "attn_activation": "silu",
          "ffn_activation": "silu", "use_s2_act_attn": False, "use_attn_renorm": True, "use_gate_act": False,
          "use_grid_mlp": True, "use_sep_s2_act": True, "hessian_no_attn_weights": True,
          "use_energy_lin_ref": False, "load_energy_lin_ref": False, "use_m_share_rad": False}

#: Authors' kwargs that do not change inference or the weights: accepted and ignored.
_IGNORED = ("name", "regress_forces", "otf_graph", "num_distance_basis", "avg_degree_hessian", "alpha_drop",
            "drop_path_rate", "proj_drop", "hessian_alpha_drop", "attn_wo_sigmoid",
            "enforce_max_neighbors_strictly")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into :class:`HIPEquiformerV2`; the message lists why."""


def config_from_authors(config: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Translate the HIP/HORM authors' model kwargs to :class:`HIPEquiformerV2` kwargs.

    Raises:
        CheckpointError: for a kwarg we do not know, or an architecture variant we do not build.
    """
    unknown = sorted(set(config) - {*_SAME_NAME, *_FIXED, *_IGNORED, "lmax_list", "mmax_list", "avg_num_nodes"})
    if unknown:
        raise CheckpointError(f"{where}: unknown model config keys {unknown}")
    variants = {k: config[k] for k, v in _FIXED.items() if k in config and config[k] != v}
    if variants:
        raise CheckpointError(f"{where}: unsupported architecture settings {variants}; expected {_FIXED}")
    ours = {k: config[k] for k in _SAME_NAME if k in config}
    for key in ("lmax_list", "mmax_list"):
        if key in config:
            if len(config[key]) != 1:
                raise CheckpointError(f"{where}: {key}={config[key]}: only one resolution is supported")
            ours[key.removesuffix("_list")] = config[key][0]
    if "avg_num_nodes" in config:
        ours["energy_normalizer"] = config["avg_num_nodes"] or "batch_mean"
    return ours


def _find_authors_config(hyper_parameters: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if "sphere_channels" in hyper_parameters:
        return hyper_parameters
    for value in hyper_parameters.values():
        if isinstance(value, Mapping) and "sphere_channels" in value:
            return value
    return None


def _strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}


def load_state_dict_checked(model: HIPEquiformerV2, state_dict: Mapping[str, torch.Tensor], where: str,
                            allow_missing_hessian: bool = False) -> None:
    """Load weights by name; raise :class:`CheckpointError` listing every mismatch.

    Args:
        model: the model to fill.
        state_dict: weights with the authors' (= our) names.
        where: the checkpoint path, for messages.
        allow_missing_hessian: accept a checkpoint without the Hessian readout (HORM's).

    Returns:
        None; ``model`` holds the weights.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped keys (listed), or a radial basis in
            ``state_dict`` whose cutoff is not the model's (:data:`RADIAL_BUFFERS`).
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(UNUSED_AUTHOR_PREFIXES)}
    for key, buffer in RADIAL_BUFFERS.items():
        if buffer in state_dict and not math.isclose(float(state_dict[buffer][-1]), getattr(model, key), rel_tol=1e-5):
            raise CheckpointError(f"{where}: its radial basis {buffer} spans [0, {float(state_dict[buffer][-1]):g}] Å "
                                  f"but the model has {key}={getattr(model, key)} Å: build it with the checkpoint's "
                                  "graph settings (do not override them)")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if allow_missing_hessian:
        missing = [k for k in missing if not is_hessian_key(k)]
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                    for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape)
    if missing or unexpected or shapes:
        def listing(title, keys):
            return f"\n  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else "")
        raise CheckpointError(f"{where} does not match HIPEquiformerV2({model.config})"
                              + (listing("missing", missing) if missing else "")
                              + (listing("unexpected", unexpected) if unexpected else "")
                              + (listing("mis-shaped", shapes) if shapes else ""))
    model.load_state_dict(state_dict, strict=False)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    trusted: bool = False) -> tuple[dict, dict]:
    """Model kwargs and state dict of a checkpoint: :func:`read_checkpoint_and_domain` without the domain."""
    config, state_dict, _ = read_checkpoint_and_domain(path, map_location, trusted)
    return config, state_dict


def read_checkpoint_and_domain(path: str | Path, map_location: str | torch.device = "cpu",
                               trusted: bool = False) -> tuple[dict, dict, TrainingDomain]:
    """Model kwargs, state dict (authors' = our names, no prefix) and training domain of a checkpoint.

    Args:
        path: checkpoint file.
        map_location: device for the weights.
        trusted: read the file with plain ``torch.load(weights_only=False)``. UNSAFE: that runs any
            code the file holds; only for a file you trust that names types outside
            :mod:`hip.safe_loading`'s allow-lists. Off by default.

    Returns:
        (model kwargs as plain dicts and lists, with the checkpoint's :data:`GRAPH_KEYS`; state dict
        of tensors; the :class:`~hip.domain.TrainingDomain` recorded in our checkpoints, unknown for
        other formats).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: ``path`` is a directory; not a readable torch file (text, random bytes,
            truncated); a file naming types outside the allow-lists (refused before any of it
            runs; the message names them); no ``state_dict`` of tensors; unrecognised format or
            unknown config; our format without a graph setting that its weights do not imply; a
            malformed ``training_domain`` record.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; expected a checkpoint file (a .ckpt or .pt written by "
                              "torch.save or Lightning, e.g. <run dir>/checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = _load_file(path, map_location, trusted)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a checkpoint (expected a dict with 'state_dict', got a "
                              f"{type(checkpoint).__name__})")
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, Mapping) or not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: holds no weights ('state_dict' is a {type(state_dict).__name__} without "
                              "tensors); expected the model's weights under 'state_dict'")
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        raise CheckpointError(f"{path}: 'hyper_parameters' is a {type(hparams).__name__}, expected a dict")
    if isinstance(hparams.get("model"), Mapping) and any(k.startswith("model.") for k in state_dict):
        where = f"{path} ['hyper_parameters']['model']"  # (a) ours
        weights = _strip_prefix(state_dict, "model.")
        return _with_domain(checkpoint, path, "our checkpoint",
                            graph_settings(_plain_config(hparams["model"], where), weights, where), weights)
    if "config" in checkpoint:  # (d) plain dict with the authors' names
        kind, where, config = "a plain state dict", f"{path} ['config']", checkpoint["config"]
        weights = dict(state_dict)
    elif (authors := _find_authors_config(hparams)) is not None:  # (b), (c)
        kind, where, config = "a HIP authors' or HORM checkpoint", f"{path} ['hyper_parameters']", authors
        weights = _strip_prefix(state_dict, "potential.")
    else:
        raise CheckpointError(f"{path}: no model config found (looked for hyper_parameters['model'], "
                              "'config', and a hyper_parameters dict with 'sphere_channels')")
    config = config_from_authors(_plain_config(config, where), where)
    return _with_domain(checkpoint, path, kind, graph_settings(config, weights, where, AUTHORS_GRAPH_DEFAULTS),
                        weights)


def graph_settings(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], where: str,
                   defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config`` with every :data:`GRAPH_KEYS` entry the checkpoint's own (see the module docstring).

    Args:
        config: stored model kwargs (ours).
        state_dict: the weights (no prefix); a cutoff missing from ``config`` is the last centre of
            its radial basis buffer (:data:`RADIAL_BUFFERS`), Å.
        where: the checkpoint and field, for messages.
        defaults: values for keys still missing (the authors' constructor's); None: none.

    Returns:
        The config; ``cutoff_hessian`` may stay missing when ``state_dict`` holds no Hessian readout.

    Raises:
        CheckpointError: a graph setting neither stored, implied by the weights nor defaulted.
    """
    config = dict(config)
    for key, buffer in RADIAL_BUFFERS.items():
        if key not in config and buffer in state_dict:
            config[key] = round(float(state_dict[buffer][-1]), 4)
    for key, value in (defaults or {}).items():
        config.setdefault(key, value)
    # without a Hessian readout (HORM's eqv2.ckpt, an exported backbone) the readout is fresh: its cutoff
    # is the caller's (load_backbone's readout), not the checkpoint's
    has_readout = any(is_hessian_key(k) for k in state_dict)
    missing = [key for key in GRAPH_KEYS if key not in config and (has_readout or key != "cutoff_hessian")]
    if missing:
        raise CheckpointError(f"{where}: the model config does not give {', '.join(missing)}; a checkpoint must bring "
                              f"its own graph settings ({', '.join(GRAPH_KEYS)}), which its model was trained with")
    return config


def _with_domain(checkpoint: Mapping[str, Any], path: Path, kind: str, config: dict, state_dict: dict
                 ) -> tuple[dict, dict, TrainingDomain]:
    """(config, state dict, the checkpoint's training domain); a malformed record is a CheckpointError."""
    try:
        domain = checkpoint_domain(checkpoint, any(k.startswith("hessian_layers.") for k in state_dict), kind,
                                   str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return config, state_dict, domain


def _plain_config(config: Any, where: str) -> dict[str, Any]:
    """A stored model config as a plain dict (:func:`~hip.safe_loading.to_plain`: the HIP authors' are
    OmegaConf configs), so that models, and the checkpoints written from them, hold plain containers.

    Raises:
        CheckpointError: not a mapping, or an interpolation that cannot be resolved.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: the model config is a {type(config).__name__}, expected a dict")
    try:
        return dict(to_plain(config))
    except Exception as e:
        raise CheckpointError(f"{where}: the model config cannot be resolved ({type(e).__name__}: {e})") from e


def _load_file(path: Path, map_location: str | torch.device, trusted: bool) -> Any:
    """The unpickled file: :func:`~hip.safe_loading.safe_torch_load`, or unrestricted when ``trusted``.

    Raises:
        CheckpointError: refused types (naming them and the ``trusted`` switch), or not a torch file.
    """
    try:
        if trusted:
            warnings.warn(f"loading {path} with trusted=True: unpickling runs any code the file holds",
                          stacklevel=3)
            return torch.load(path, map_location=map_location, weights_only=False)
        return safe_torch_load(path, map_location)
    except RefusedGlobalError as e:
        raise CheckpointError(
            f"{path}: refused: the file names {e.global_name}, which is not on hip's allow-list of what "
            "checkpoints hold (tensors, plain containers, the configs in hip.safe_loading.CHECKPOINT_GLOBALS); "
            "unpickling it would import and possibly call it, i.e. run code from the file. Nothing was run. "
            "If you trust the file, load it with trusted=True (load_checkpoint(path, trusted=True); eval.py "
            "trusted_checkpoint=true), which is unsafe: it runs whatever code the file holds") from None
    except Exception as e:  # anything torch.load raises for bytes that are not a torch file
        reason = e.__context__ if isinstance(e, pickle.UnpicklingError) and e.__context__ else e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(reason).__name__}: "
                              f"{str(reason).strip()}); expected a file written by torch.save or Lightning "
                              "(.ckpt, .pt); is it truncated (an interrupted download or copy) or another "
                              "kind of file?") from None


def is_hessian_key(key: str) -> bool:
    """Whether a state-dict key (no prefix) belongs to the Hessian readout or its graph helpers."""
    return key.startswith((*HESSIAN_MODULES, *UNUSED_AUTHOR_PREFIXES, "SO3_rotation_hessian",
                           "distance_expansion_hessian"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", trusted: bool = False,
                    **overrides) -> HIPEquiformerV2:
    """Load a ready HIP-EquiformerV2 in eval mode from any of the formats of this module.

    Args:
        path: checkpoint file.
        map_location: device for the weights.
        trusted: UNSAFE unrestricted unpickling, see :func:`read_checkpoint`. Off by default.
        **overrides: model kwargs replacing the checkpoint's (e.g. ``num_layers_hessian`` for a
            HORM backbone).

    Returns:
        The model, with ``model.training_domain`` (:class:`~hip.domain.TrainingDomain`: what it was
        trained on; unknown for checkpoints without a record) and ``model.hessian_readout_trained``
        (False for a backbone-only file, HORM's ``eqv2.ckpt`` and readouts recorded as untrained).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: unreadable or refused file, unrecognised format, unknown config, or
            mismatched weights (listed); see :func:`read_checkpoint`.
    """
    config, state_dict, domain = read_checkpoint_and_domain(path, map_location, trusted)
    model = HIPEquiformerV2(**(config | overrides)).to(map_location)
    has_hessian = any(k.startswith("hessian_layers.") for k in state_dict)
    load_state_dict_checked(model, state_dict, str(path), allow_missing_hessian=not has_hessian)
    if not has_hessian:
        warnings.warn(f"{path} has no Hessian readout (a HORM energy/force checkpoint): the Hessian "
                      "head is untrained until you train it (python train.py experiment=hip_frozen)",
                      stacklevel=2)
    model.training_domain = domain
    model.hessian_readout_trained = domain.hessian_readout_trained is not False
    return model.eval()


def load_backbone_weights(model: HIPEquiformerV2, path: str | Path, trusted: bool = False) -> None:
    """Copy backbone and energy/force-head weights of a checkpoint (any format) into ``model``.

    The checkpoint's Hessian readout, if any, is ignored; ``model``'s stays as it is. ``trusted``:
    UNSAFE unrestricted unpickling, see :func:`read_checkpoint`.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`read_checkpoint`; mismatched backbone keys.
    """
    _, state_dict = read_checkpoint(path, next(model.parameters()).device, trusted)
    _copy_backbone(model, state_dict, str(path))


def _copy_backbone(model: HIPEquiformerV2, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load the non-readout weights of ``state_dict`` into ``model`` (checked by name and shape)."""
    backbone = {k: v for k, v in state_dict.items() if not is_hessian_key(k)}
    load_state_dict_checked(model, backbone, where, allow_missing_hessian=True)


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu", trusted: bool = False,
                  **readout) -> HIPEquiformerV2:
    """A model with the backbone architecture and weights of a checkpoint and a fresh Hessian readout.

    The backbone sizes, cutoff and energy/force heads come from the checkpoint (any format of this
    module: HORM's ``eqv2.ckpt``, the project's shipped backbone, a HIP checkpoint whose readout is
    dropped); the readout is built from ``readout`` (paper §4: HIP trained on a frozen backbone).

    Args:
        path: checkpoint file.
        map_location: device for the weights.
        trusted: UNSAFE unrestricted unpickling, see :func:`read_checkpoint`. Off by default.
        **readout: kwargs from :data:`HESSIAN_CONFIG_KEYS` (e.g. ``num_layers_hessian=3``); others are
            the checkpoint's.

    Raises:
        ValueError: a kwarg that is not a readout setting.
        FileNotFoundError, CheckpointError: as :func:`read_checkpoint`.
    """
    unknown = sorted(set(readout) - set(HESSIAN_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{unknown} are backbone settings, read from {path}; only {HESSIAN_CONFIG_KEYS} can be set")
    config, state_dict = read_checkpoint(path, map_location, trusted)
    model = HIPEquiformerV2(**(config | readout)).to(map_location)
    _copy_backbone(model, state_dict, str(path))
    return model
