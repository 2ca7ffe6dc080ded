"""Energies, forces, Hessians, frequencies and thermochemistry of every frame of a molecule file (paper §2, §4).

    python predict.py input=molecules.xyz
    python predict.py input=path.extxyz hessian=autodiff eval.device=cuda eval.batch_size=64
    python predict.py input=ts.xyz ckpt_path=<checkpoint> formats=[hess,fchk,molden] dtype=float64
    python predict.py input=library.xyz trainer=ddp trainer.devices=4 eval.device=cuda

``input`` is any file ``ase.io.read`` understands (xyz, extxyz, traj, sdf, ...). Frames are read lazily
and predicted in size-sorted batches; each batch is written as it finishes (:mod:`hip.prediction_store`
lists the files), so the same command after a kill continues where it stopped. The run directory
(``output_dir``, by default ``logs/predict/<input>-<hash of the settings>``) is printed first and last and
holds ``predict.log`` with the warnings and the summary. Frequencies are from the mass-weighted,
Eckart-projected Hessian (:mod:`hip.vibrations`); each frame carries the calculator's applicability
warnings (:class:`hip.calculator.HIPCalculator`).
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from hip.training import register_resolvers

register_resolvers()


def run_name(input_path: str, *settings: str) -> str:
    """``<input stem>-<8 hex digits>``: the default run directory's name, the same for the same input file
    (absolute path) and model settings, so that rerunning a command resumes it."""
    key = "\0".join([str(Path(input_path).resolve()), *map(str, settings)])
    return f"{Path(input_path).stem}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


if not OmegaConf.has_resolver("predict_run_name"):
    OmegaConf.register_new_resolver("predict_run_name", run_name)


def check_options(cfg: DictConfig) -> None:
    """One-line errors for options of the wrong kind, naming the option and what it accepts.

    Raises:
        ValueError: ``eval.device`` unknown or absent (:func:`hip.device.resolve_device`);
            ``eval.batch_size`` or ``window`` not a positive integer; ``dtype`` not in
            :data:`hip.calculator.DTYPES`;
            ``formats`` not a list of known names; temperature or pressure not positive;
            ``imaginary_threshold_cm1`` negative or not a number; ``seed`` not an integer.
    """
    from hip.calculator import DTYPES
    from hip.device import resolve_device
    from hip.prediction_store import FORMATS

    resolve_device(cfg.eval.device, "eval.device")
    for key in ("eval.batch_size", "window"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option {key}={value!r}: give a positive integer")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"option dtype={cfg.dtype!r}: choose one of {list(DTYPES)}")
    formats = cfg.formats
    if not OmegaConf.is_list(formats) or any(f not in FORMATS for f in formats):
        raise ValueError(f"option formats={formats!r}: give a list of {list(FORMATS)}, e.g. formats=[hess,molden]")
    for key in ("temperature", "pressure"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"option {key}={value!r}: give a positive number")
    value = cfg.imaginary_threshold_cm1
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"option imaginary_threshold_cm1={value!r}: give a number ≥ 0 (cm⁻¹)")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"option seed={cfg.seed!r}: give an integer")


def settings(cfg: DictConfig) -> dict:
    """What decides the outputs of a run directory (checked when a run resumes)."""
    keys = ("input", "ckpt_path", "hessian", "energy", "dtype", "seed", "window", "skip_invalid", "formats",
            "temperature", "pressure", "imaginary_threshold_cm1")
    chosen = {k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_list(cfg[k]) else cfg[k] for k in keys}
    path = Path(cfg.input).resolve()
    chosen["input"] = str(path)
    stat = path.stat()  # an edited input is another run (its batches would no longer match the written ones)
    chosen["input_size_bytes"], chosen["input_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    chosen["batch_size"] = cfg.eval.batch_size  # batch numbers depend on it
    return chosen


def run(cfg: DictConfig) -> Path:
    """Predict every frame of ``cfg.input`` into ``cfg.output_dir`` (resuming what is there).

    Returns:
        The output directory.

    Raises:
        FileNotFoundError: input or checkpoint missing (named).
        IsADirectoryError: the input is a directory.
        ValueError: a bad option, an unreadable input, a refused frame (periodic, charged, open-shell,
            unknown element, overlapping atoms; unless ``skip_invalid``), or an output directory holding a
            run with other settings; each names the file, frame or option.
    """
    from hip.calculator import HIPCalculator
    from hip.cli import check_run_settings
    from hip.device import resolve_device
    from hip.prediction import (
        AnalysisSettings,
        FrameBatches,
        PredictionModule,
        PredictionWriter,
        frame_loader,
        iter_batches,
    )
    from hip.prediction_store import done_batches

    check_options(cfg)
    out_dir = Path(cfg.output_dir)
    print(f"predict.py: run directory {out_dir}")
    calculator_kwargs = {"hessian_method": cfg.hessian, "energy": cfg.energy, "seed": cfg.seed, "dtype": cfg.dtype,
                         "compile": bool(cfg.get("compile", False))}
    calc = HIPCalculator(cfg.ckpt_path, device="cpu", **calculator_kwargs)  # checks the checkpoint and options
    dataset = FrameBatches(cfg.input, cfg.eval.batch_size, cfg.window, out_dir)
    next(iter_batches(cfg.input, 1, 1))  # a missing, empty or unreadable input fails here, before any work
    check_run_settings(out_dir, settings(cfg), "give another output_dir= or delete it to start again")
    if done := done_batches(out_dir):
        print(f"predict.py: resuming; {len(done)} batch(es) of up to {cfg.eval.batch_size} frames already written")
    module = PredictionModule(calc.model, str(cfg.input), calculator_kwargs,
                              AnalysisSettings(cfg.imaginary_threshold_cm1, cfg.temperature, cfg.pressure),
                              skip_invalid=cfg.skip_invalid)
    writer = PredictionWriter(out_dir, list(cfg.formats), cfg.energy)
    accelerator = resolve_device(cfg.eval.device, "eval.device").type  # Lightning's name: cpu or cuda
    trainer = hydra.utils.instantiate(cfg.trainer, accelerator=accelerator, callbacks=[writer], _convert_="all")
    trainer.predict(module, dataloaders=frame_loader(dataset), return_predictions=False)
    trainer.strategy.barrier()  # every process has written its last batch before rank 0 reports
    if trainer.global_rank == 0:
        report(out_dir, cfg)
    return out_dir


def report(out_dir: Path, cfg: DictConfig, max_rows: int = 20) -> None:
    """Print (and log to ``predict.log``) one line per frame for the first ``max_rows`` frames, the warning
    counts and where the outputs are."""
    from hip.prediction import file_logger
    from hip.prediction_store import SEPARATOR, first_rows, iter_rows

    rows, n_frames, n_skipped = first_rows(out_dir, max_rows)
    tally = Counter(w.split(":", 1)[0] for row in iter_rows(out_dir, "summary.csv")
                    for w in row["warnings"].split(SEPARATOR) if w)
    skipped = f" ({n_skipped} skipped: skipped.csv)" if n_skipped else ""
    lines = [f"{n_frames} frames of {cfg.input} predicted{skipped}, Hessian: {cfg.hessian}, checkpoint {cfg.ckpt_path}",
             f"{'frame':>5}  {'formula':<12} {'N':>3}  {'energy [eV]':>14}  {'max|F| [eV/Å]':>13}  {'n_imag':>6}"
             f"  {'lowest [cm⁻¹]':>13}  {'ZPE [eV]':>8}  {'G [eV]':>14}  {'extremum':<24} warnings"]
    for r in rows:
        codes = ",".join(w.split(":", 1)[0] for w in r["warnings"].split(SEPARATOR) if w) or "-"
        gibbs = f"{float(r['gibbs_energy_eV']):.4f}" if r["gibbs_energy_eV"] else "-"
        lines.append(f"{r['frame']:>5}  {r['formula']:<12} {r['natoms']:>3}  {float(r['energy_eV']):>14.4f}  "
                     f"{float(r['max_force_eV_per_A']):>13.4f}  {r['n_imaginary']:>6}  {r['lowest_frequency_cm1']:>13}"
                     f"  {float(r['zpe_eV']):>8.4f}  {gibbs:>14}  {r['extremum']:<24} {codes}")
    if n_frames > max_rows:
        lines.append(f"... {n_frames - max_rows} more frames in summary.csv")
    if tally:
        lines.append("warnings (frames): " + ", ".join(f"{code} {n}" for code, n in tally.most_common())
                     + "; the messages are in summary.csv and predict.log")
    lines.append(f"wrote predictions.extxyz, summary.csv, frequencies.csv, hessians/ to {out_dir}")
    log = file_logger()
    for line in lines:
        print(line)
        log.info(line)


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python predict.py input=<file> [ckpt_path=...] [hessian=...] [eval.device=...]``.

    A user mistake (missing or unreadable file or checkpoint, a bad frame or option) exits with status 1
    and its one-line message instead of a stack trace.
    """
    from hip.cli import user_errors

    if OmegaConf.is_missing(cfg, "input"):
        sys.exit("predict.py: which molecules? python predict.py input=<file> (xyz, extxyz, traj, sdf, ...: "
                 "any file ase.io.read reads; every frame is predicted)")
    with user_errors("predict.py"):
        run(cfg)


if __name__ == "__main__":
    main()
