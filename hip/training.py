"""The LightningModule: HIP training with a frozen backbone (``hip_frozen``) or end to end (``hip_e2e``).

Losses are paper §3.3 (eq. 8, 9) with weights from config; the optimiser and schedule (paper Table 4:
AdamW, StepLR) are Hydra specs instantiated from ``configs/model`` (``_partial_: true``): their values,
and every other default of :class:`HIPModule`, live only in ``configs/`` (:func:`module_defaults`).
Gradient clipping is the trainer's job (``configs/trainer``).

Resuming. A checkpoint holds what Lightning saves (weights, optimiser, LR schedule, loop
counters, callback states, the training loader's position: see :mod:`hip.data.datamodule`) plus
every rank's RNG states (torch, CUDA, numpy, Python), which :class:`HIPModule` adds and restores:
the model draws random edge-frame rolls from the global torch RNG in every forward, so without them
a resumed run would not repeat the uninterrupted one. :class:`AtomicCheckpointIO` writes checkpoints
so that a crash during a save never leaves a truncated file.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import hydra
import lightning as L
import numpy as np
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from hip.losses import HESSIAN_TERMS, hessian_mae, hip_loss
from hip.model.checkpoints import HESSIAN_CONFIG_KEYS, load_backbone, load_backbone_weights
from hip.model.hip_equiformer import HIPEquiformerV2

logger = logging.getLogger(__name__)

#: The configuration directory of the repository: the one home of the training defaults.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Where :class:`HIPModule`'s defaults come from: (file under ``configs/``, key), ``None``: the whole file.
DEFAULT_SOURCES = {"optimizer": ("model/hip_equiformer_v2.yaml", "optimizer"),
                   "scheduler": ("model/hip_equiformer_v2.yaml", "scheduler"),
                   "eigen_k": ("model/hip_equiformer_v2.yaml", "eigen_k"),
                   "hessian_memory_budget_gb": ("model/hip_equiformer_v2.yaml", "hessian_memory_budget_gb"),
                   "loss_weights": ("loss/mae_eigen8.yaml", None)}


def module_defaults(config_dir: str | os.PathLike = CONFIG_DIR) -> dict[str, Any]:
    """:class:`HIPModule`'s defaults, read from the configs (:data:`DEFAULT_SOURCES`): the paper's
    optimiser and schedule (Table 4), eigen-subspace k, memory budget and loss weights (eq. 9).

    Raises:
        FileNotFoundError: a config file is missing (hip installed without its ``configs/``: pass the
            settings to :class:`HIPModule` explicitly).
    """
    defaults = {}
    for name, (file, key) in DEFAULT_SOURCES.items():
        path = Path(config_dir) / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} (the default of HIPModule's {name}) does not exist: pass {name}=...")
        node = OmegaConf.load(path)
        node = node if key is None else node[key]
        defaults[name] = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return defaults


def _spec(given: Mapping[str, Any] | None, default: Mapping[str, Any]) -> dict[str, Any]:
    """A Hydra spec: ``given`` as is when it names its ``_target_``, else its keys over ``default``'s."""
    given = dict(given or {})
    return given if "_target_" in given else {**default, **given}


class HIPModule(L.LightningModule):
    """Trains :class:`HIPEquiformerV2`.

    Args:
        model: :class:`HIPEquiformerV2` kwargs (Table 4 defaults in ``configs/model``).
        mode: ``"frozen"`` trains only the Hessian readout on a fixed backbone, which runs in
            eval mode without autograd; ``"e2e"`` trains everything.
        loss_weights: weights of ``hessian_mae``, ``hessian_mse``, ``eigen_subspace``, ``energy``
            and ``forces`` (see :func:`hip.losses.hip_loss`); energy and forces must be 0 in frozen
            mode, where they cannot train.
        eigen_k: k of the eigen-subspace loss.
        optimizer: Hydra spec of the optimiser (``_target_``, ``_partial_: true``, its kwargs; the
            parameters are passed when it is built); without ``_target_``, kwargs replacing those of
            ``configs/model/hip_equiformer_v2.yaml`` (e.g. ``{"lr": 1e-3}``).
        scheduler: the same for the LR scheduler, plus ``interval``: "step" or "epoch", what its
            ``step_size`` counts (Lightning's scheduler interval).
        backbone_ckpt: checkpoint whose backbone and energy/force heads initialise the model (any
            format of :mod:`hip.model.checkpoints`), or a list of candidates of which the first
            existing file is used; required in frozen mode, where the backbone's architecture (sizes,
            cutoff, neighbour cap) is read from it and ``model`` only sets the Hessian readout
            (:data:`~hip.model.checkpoints.HESSIAN_CONFIG_KEYS`).
        backbone_trusted: UNSAFE: read ``backbone_ckpt`` with unrestricted unpickling, which runs any
            code it holds; only for a trusted file that the safe loader refuses (README "Guarantees").
        backbone_cache_gb: frozen mode only: keep the backbone's outputs of every molecule seen, up to
            this many GiB, so that later epochs run only the readout
            (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.cache_backbone`); None: off.
        hessian_memory_budget_gb: refuse batches whose Hessian tensors (prediction, label,
            gradient, eigen-loss padding) would exceed this many GiB.
        compile: run the model's forward (and so its backward) through ``torch.compile``
            (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_compiled`): one compile per process,
            served from the on-disk cache in later runs; ``model.compile=true`` on the command line.
        compile_mode: ``torch.compile`` mode (``null``: default; ``reduce-overhead``: CUDA graphs).

    Every setting left None (``loss_weights``, ``eigen_k``, ``optimizer``, ``scheduler``,
    ``hessian_memory_budget_gb``) takes its value from ``configs/`` (:func:`module_defaults`), the one
    home of the defaults; the checkpoint's hyper-parameters record the values used.

    Without a Hessian loss term (energy and forces only: the paper's "EquiformerV2 (E-F)" backbone)
    the Hessian readout is not run, in training or validation.

    Raises:
        ValueError: bad mode or loss weights.
        FileNotFoundError: frozen mode without a backbone checkpoint file.
        CheckpointError: a backbone checkpoint that is unreadable, refused by the safe loader, or does
            not fit (:mod:`hip.model.checkpoints`).
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        mode: Literal["frozen", "e2e"] = "frozen",
        loss_weights: Mapping[str, float] | None = None,
        eigen_k: int | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        backbone_ckpt: str | Sequence[str] | None = None,
        backbone_trusted: bool = False,
        backbone_cache_gb: float | None = None,
        hessian_memory_budget_gb: float | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if mode not in ("frozen", "e2e"):
            raise ValueError(f"mode must be 'frozen' or 'e2e', got {mode!r}")
        defaults = module_defaults() if None in (loss_weights, eigen_k, optimizer, scheduler,
                                                 hessian_memory_budget_gb) else {}
        for name, value in (("eigen_k", eigen_k), ("hessian_memory_budget_gb", hessian_memory_budget_gb)):
            self.hparams[name] = defaults[name] if value is None else value
        self.hparams["optimizer"] = _spec(optimizer, defaults.get("optimizer", {}))
        self.hparams["scheduler"] = _spec(scheduler, defaults.get("scheduler", {}))
        self.hparams["loss_weights"] = dict(defaults["loss_weights"] if loss_weights is None else loss_weights)
        self.loss_weights = dict(self.hparams["loss_weights"])
        if mode == "frozen" and any(self.loss_weights.get(k, 0) for k in ("energy", "forces")):
            raise ValueError("frozen mode cannot train energy or forces: set their loss weights to 0")
        self.predicts_hessian = any(self.loss_weights.get(k, 0) for k in HESSIAN_TERMS)
        backbone_ckpt = _first_existing(backbone_ckpt)
        if mode == "frozen":
            if backbone_ckpt is None:
                raise FileNotFoundError("frozen mode needs model.backbone_ckpt=<checkpoint>, e.g. the shipped "
                                        "ckpt/backbone_ef_small.ckpt or HORM's eqv2.ckpt (ckpt/README.md)")
            readout = {k: model[k] for k in HESSIAN_CONFIG_KEYS if k in model}
            self.model = load_backbone(backbone_ckpt, trusted=backbone_trusted, **readout)
            self.model.freeze_backbone()
            self.model.cache_backbone(backbone_cache_gb)
            logger.info("frozen backbone %s: %s", backbone_ckpt, self.model.config)
        else:
            if backbone_cache_gb is not None:
                raise ValueError("model.backbone_cache_gb needs a frozen backbone (model.mode=frozen): end to end, "
                                 "the backbone's outputs change at every step")
            self.model = HIPEquiformerV2(**model)
            if backbone_ckpt:
                load_backbone_weights(self.model, backbone_ckpt, trusted=backbone_trusted)
                logger.info("backbone initialised from %s", backbone_ckpt)
        if compile:
            self.model.set_compiled(True, compile_mode)
        self.hparams["model"] = self.model.config  # what our checkpoints rebuild
        self.hparams["backbone_ckpt"] = backbone_ckpt and str(backbone_ckpt)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def _on_any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is True on any DDP process (``flag`` itself without DDP): a process that
        raised alone would leave the others waiting in their next collective operation."""
        if self._trainer is None or self._trainer.world_size == 1:
            return flag
        return self._trainer.strategy.reduce_boolean_decision(flag, all=False)

    def _check_memory(self, batch) -> None:
        natoms = batch.natoms
        entries = int((9 * natoms**2).sum()) * 3 + len(natoms) * 9 * int(natoms.max()) ** 2
        needed = entries * batch.pos.element_size() / 2**30
        over = needed > self.hparams.hessian_memory_budget_gb
        if not self._on_any_process(over):
            return
        if over:
            raise MemoryError(f"a batch of {len(natoms)} molecules (up to {int(natoms.max())} atoms) needs about "
                              f"{needed:.1f} GiB of Hessian tensors, over the budget of "
                              f"{self.hparams.hessian_memory_budget_gb} GiB: use a smaller data.batch_size "
                              "or raise model.hessian_memory_budget_gb")
        raise MemoryError("another DDP process's batch is over model.hessian_memory_budget_gb (see its error): "
                          "use a smaller data.batch_size or raise the budget")

    def _step(self, batch, stage: str) -> torch.Tensor:
        self._check_memory(batch)
        pred = self.model(batch, hessian=self.predicts_hessian)
        terms = hip_loss(pred, batch, self.loss_weights, eigen_k=self.hparams.eigen_k)
        # the model-selection metric, whatever the loss
        if stage != "train" and self.predicts_hessian and "hessian_mae" not in terms:
            terms["hessian_mae"] = hessian_mae(pred["hessian"], batch.hessian)
        finite = bool(torch.isfinite(terms["loss"]))
        if self._on_any_process(not finite):
            if finite:
                raise FloatingPointError(f"{stage} loss is not finite on another DDP process at step "
                                         f"{self.global_step} (see its error for the molecules)")
            molecules = batch.dataset_idx.tolist() if "dataset_idx" in batch else "unknown"
            raise FloatingPointError(f"{stage} loss is {terms['loss'].item()} at step {self.global_step}; "
                                     f"the batch holds dataset indices {molecules}; terms: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=batch.num_graphs,
                      prog_bar=stage == "train", sync_dist=True, on_epoch=True,
                      on_step=stage == "train")
        return terms["loss"]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_fit_start(self) -> None:
        """Record the training split's :class:`~hip.domain.TrainingDomain` (once; a resumed run keeps
        the record of its checkpoint), which every checkpoint then holds (``checkpoint["training_domain"]``)."""
        if getattr(self, "training_domain", None) is not None:
            return
        from hip.domain import TrainingDomain, domain_of_dataset

        datamodule = self.trainer.datamodule
        dataset = datamodule.dataset("train") if hasattr(datamodule, "dataset") else None
        if dataset is None:
            self.training_domain = TrainingDomain(hessian_readout_trained=self.predicts_hessian,
                                                  source="trained without a HormDataModule")
        else:
            self.training_domain = domain_of_dataset(dataset, hessian_readout_trained=self.predicts_hessian)
        logger.info("training domain: %s", self.training_domain.describe())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "training_domain", None) is not None:
            checkpoint["training_domain"] = self.training_domain.to_dict()
        # called on every rank (Lightning's dump_checkpoint), so the gather below is collective
        states = [rng_states()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_states())
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get("training_domain") is not None:
            from hip.domain import TrainingDomain

            self.training_domain = TrainingDomain.from_dict(checkpoint["training_domain"], "the checkpoint")
        if self._trainer is None:  # load_from_checkpoint: not a resume, leave the RNGs alone
            return
        states = checkpoint.get("rng_states")
        if not states:
            logger.warning("the checkpoint holds no RNG states: the resumed run will not repeat the interrupted one")
            return
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(states) != world:
            logger.warning("the checkpoint holds RNG states of %d processes, this run has %d: data order and "
                           "random draws will differ from an uninterrupted run", len(states), world)
        set_rng_states(states[rank % len(states)])

    def on_train_epoch_start(self) -> None:
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_epoch=True, on_step=False, sync_dist=True)

    def configure_optimizers(self):
        """The optimiser and LR scheduler of ``model.optimizer`` / ``model.scheduler`` (Hydra specs;
        paper Table 4's AdamW and StepLR in ``configs/model/hip_equiformer_v2.yaml``).

        For StepLR, after k scheduler steps the learning rate is lr · γ^⌊k / step_size⌋;
        ``scheduler.interval`` says what k counts: ``"step"``, optimiser steps (the paper config:
        HORM's and the HIP authors' "10 epochs" of 1600 batches each), or ``"epoch"``, full passes
        over the training set (the embedded demo).

        Raises:
            ValueError: a spec without ``_target_``, or ``scheduler.interval`` neither "step" nor "epoch".
        """
        schedule = dict(self.hparams.scheduler)
        interval = schedule.pop("interval", None)
        if interval not in ("step", "epoch"):
            raise ValueError(f"model.scheduler.interval must be 'step' (optimiser steps) or 'epoch', got {interval!r}")
        for name, spec in (("optimizer", self.hparams.optimizer), ("scheduler", schedule)):
            if "_target_" not in spec:
                raise ValueError(f"model.{name} needs a _target_ (a Hydra spec, as in configs/model/"
                                 f"hip_equiformer_v2.yaml), got {dict(spec)}")
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = hydra.utils.instantiate(self.hparams.optimizer, _partial_=True, _convert_="all")(parameters)
        scheduler = hydra.utils.instantiate(schedule, _partial_=True, _convert_="all")(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


def _first_existing(candidates: str | Sequence[str] | None) -> Path | None:
    """The first existing file of ``candidates`` (one path or a list); None for None.

    Raises:
        FileNotFoundError: none of them exists, listing them and where to get a backbone.
    """
    if not candidates:
        return None
    paths = [Path(candidates)] if isinstance(candidates, str | os.PathLike) else [Path(c) for c in candidates]
    for i, path in enumerate(paths):
        if path.is_file():
            if i:
                logger.warning("%s not found; using %s", ", ".join(map(str, paths[:i])), path)
            return path
    raise FileNotFoundError(
        f"backbone checkpoint {' or '.join(map(str, paths))} does not exist: set model.backbone_ckpt=<checkpoint>, "
        "e.g. HORM's eqv2.ckpt (see ckpt/README.md for the download), the shipped ckpt/backbone_ef_small.ckpt, "
        "or a run of ours, logs/<task>/runs/<date>/checkpoints/last.ckpt")


def rng_states() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as types ``torch.load`` accepts with
    ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (what seed_everything seeds)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "python": random.getstate()}


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with crash-safe writes to local paths.

    The checkpoint is written to a hidden temporary file in the target's directory, flushed and
    fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX within one file
    system), and the directory is fsynced. A crash or kill at any moment leaves either the old
    complete file or the new complete file, never a truncated one; a failed write removes its
    temporary file and leaves the old checkpoint as it was. (Lightning's own writer stages in the
    system temp dir and moves the file, which degrades to a non-atomic copy when that is another
    file system, as on most clusters, and does not fsync.) Remote paths (``s3://`` …) fall back to
    Lightning's writer. Enabled in ``configs/trainer/default.yaml`` (``trainer.plugins``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def register_resolvers() -> None:
    """Set up what the configs use: ``PROJECT_ROOT`` (the repository, unless set), and the resolvers
    ``${wandb_offline:}`` (true without an API key) and ``${range:a,b}`` (indices a … b−1; more pairs
    ``${range:a,b,c,d}`` concatenate a … b−1 and c … d−1)."""
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", lambda: not os.environ.get("WANDB_API_KEY"))
    if not OmegaConf.has_resolver("range"):
        OmegaConf.register_new_resolver("range", _ranges)


def _ranges(*bounds: int) -> list[int]:
    if not bounds or len(bounds) % 2:
        raise ValueError(f"${{range:...}} takes pairs start,stop; got {bounds}")
    return [i for start, stop in zip(bounds[::2], bounds[1::2], strict=True) for i in range(int(start), int(stop))]


def instantiate_list(configs: DictConfig | None) -> list:
    """Instantiate every entry of a Hydra group like ``callbacks`` or ``logger`` (may be empty)."""
    return [hydra.utils.instantiate(c) for c in (configs or {}).values() if c and "_target_" in c]


@contextmanager
def unwrapped(what: str) -> Iterator[None]:
    """Re-raise what a constructor called by Hydra raised (a CheckpointError listing keys, a ValueError
    naming an option …) instead of Hydra's InstantiationException, which shows it as a one-line repr;
    a note says what was being instantiated."""
    try:
        yield
    except InstantiationException as e:
        if e.__cause__ is None:
            raise
        e.__cause__.add_note(f"(raised while instantiating {what} with Hydra)")
        raise e.__cause__ from None


def instantiate_datamodule(config: DictConfig, model: HIPEquiformerV2):
    """The datamodule of ``config`` with graphs built at ``model``'s cutoffs and neighbour cap.

    The graph settings come from the model object, not from the model config: a frozen backbone, or a
    checkpoint that ``eval.py`` loads, brings its own (:mod:`hip.model.checkpoints`), so they are the
    data module's required arguments, never set in ``configs/data``.

    Raises:
        ValueError: a bad ``data.*`` option (from :class:`~hip.data.HormDataModule`), or graph settings
            given in the data config.
    """
    given = sorted({"cutoff", "max_neighbors", "cutoff_hessian"} & set(config))
    if given:
        raise ValueError(f"data.{given[0]} is set in the data config: the graph settings are the model's "
                         f"(max_radius {model.max_radius} Å, max_neighbors {model.max_neighbors}, cutoff_hessian "
                         f"{model.cutoff_hessian} Å) and are passed from it; remove data.{', data.'.join(given)}")
    with unwrapped("the data module (config group data)"):
        return hydra.utils.instantiate(config, cutoff=model.max_radius, max_neighbors=model.max_neighbors,
                                       cutoff_hessian=model.cutoff_hessian, _convert_="all")
