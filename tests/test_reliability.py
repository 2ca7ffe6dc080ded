"""Reliability end to end: resume after SIGKILL, atomic checkpoints, DDP parity, bad input.

Every run goes through ``train.train(cfg)`` with configs composed as in ``tests/test_training.py``
(tiny model, a few molecules of the HORM sample shard). This file doubles as the script that the
crash test runs in a subprocess (see ``__main__`` at the bottom).
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import HORM_SAMPLE, TINY_MODEL
from test_training import compose_train, save_tiny_backbone

from hip.data.horm import HormDataError, close_shards, open_shard
from hip.model.checkpoints import CheckpointError
from hip.training import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _close_shards_after_module():
    """py-lmdb opens a file once per process: leave no shard open for other test modules."""
    yield
    close_shards()


class LossRecorder(L.Callback):
    """Appends one JSON line per training step: global step, loss, learning rate, molecules."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        record = {"step": trainer.global_step, "loss": float(outputs["loss"]), "idx": batch.dataset_idx.tolist(),
                  "lr": trainer.optimizers[0].param_groups[0]["lr"], "epoch": trainer.current_epoch}
        with open(self.path, "a") as f:  # survives a SIGKILL of the process (the kernel has the bytes)
            f.write(json.dumps(record) + "\n")


class KillDuringSave(L.Callback):
    """SIGKILLs this process half-way through writing ``last.ckpt`` at global step ``step``.

    From then on, ``torch.save`` serialises the checkpoint, writes the first half of its bytes to
    its target (the file object or path it was given), flushes, and kills the process: what a
    crash in the middle of a checkpoint write leaves behind.
    """

    def __init__(self, step: int):
        self.step = step

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step != self.step:
            return
        real_save = torch.save

        def half_then_kill(obj, f, *args, **kwargs):
            if "epoch_" in str(getattr(f, "name", f)):  # a top-k checkpoint: only last.ckpt is of interest
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            if isinstance(f, str | os.PathLike):
                with open(f, "wb") as out:
                    out.write(data)
            else:
                f.write(data)
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = half_then_kill


# ------------------------------------------------------------------------------ crash and resume
N_STEPS, KILL_AT = 6, 5  # 2 epochs × 3 batches; killed while saving step 5, so last.ckpt is step 4 (mid-epoch 2)


def resume_overrides(out: Path) -> list[str]:
    """Deterministic e2e training: 2 epochs of 3 shuffled batches of 2, a checkpoint after every step,
    LR halved every epoch (so a lost schedule shows in the losses), a loss record per step."""
    return ["experiment=hip_e2e", "model=tiny", "data.train_indices=[0,1,2,3,4,5]", "data.val_indices=[80]",
            "data.batch_size=2", "trainer.max_epochs=2", "trainer.max_steps=-1", "trainer.deterministic=true",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            "model.scheduler.step_size=1", "model.scheduler.gamma=0.5",
            "callbacks.model_checkpoint.every_n_train_steps=1",
            "+callbacks.losses._target_=test_reliability.LossRecorder", f"+callbacks.losses.path={out / 'losses.jsonl'}"]


def read_losses(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def crash_run(out: Path) -> None:
    """The subprocess: the same training, SIGKILLed while writing the checkpoint of step KILL_AT."""
    from train import train

    train(compose_train(out, [*resume_overrides(out), "+callbacks.killer._target_=test_reliability.KillDuringSave",
                              f"+callbacks.killer.step={KILL_AT}"]))


def test_sigkill_mid_epoch_then_resume_repeats_the_uninterrupted_run(tmp_path):
    from train import train

    full, crashed = tmp_path / "full", tmp_path / "crashed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    process = subprocess.Popen([sys.executable, __file__, "crash", str(crashed)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # the uninterrupted run meanwhile, in this process
        train(compose_train(full, resume_overrides(full)))
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL, output
    expected = read_losses(full / "losses.jsonl")
    assert sorted(expected) == list(range(1, N_STEPS + 1))
    assert [expected[s]["epoch"] for s in expected] == [0, 0, 0, 1, 1, 1]

    before_kill = read_losses(crashed / "losses.jsonl")
    assert sorted(before_kill) == list(range(1, KILL_AT + 1))
    # the kill came half-way through a checkpoint write: last.ckpt is still the complete one of step 4
    last = crashed / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["global_step"] == KILL_AT - 1 and checkpoint["epoch"] == 1
    assert checkpoint["loops"]["fit_loop"]["combined_loader"], "the training loader's position was not saved"
    assert len(checkpoint["rng_states"]) == 1

    (crashed / "losses.jsonl").rename(crashed / "losses_before_kill.jsonl")
    cfg = compose_train(crashed, [*resume_overrides(crashed), "ckpt_path=last"])
    train(cfg)
    resumed = read_losses(crashed / "losses.jsonl")
    assert sorted(resumed) == list(range(KILL_AT, N_STEPS + 1))  # continues after step 4, mid-epoch
    for step in range(1, N_STEPS + 1):
        got = resumed.get(step) or before_kill[step]
        # same molecules (loader position, shuffle state), same LR (schedule), bit-identical loss
        # (weights, optimiser state, RNG of the random edge frames)
        assert got == expected[step], (step, got, expected[step])
    end_full = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    end_resumed = torch.load(last, weights_only=False)
    assert end_full["global_step"] == end_resumed["global_step"] == N_STEPS
    for key, value in end_full["state_dict"].items():
        assert torch.equal(value, end_resumed["state_dict"][key]), key
    torch.testing.assert_close(end_full["optimizer_states"], end_resumed["optimizer_states"], rtol=0, atol=0)
    assert end_full["lr_schedulers"] == end_resumed["lr_schedulers"]


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    old = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):  # half the bytes reach the file, then the write fails
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        f.write(buffer.getvalue()[:1000])
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("hip.training.torch.save", disk_full)
        with pytest.raises(OSError, match="No space left"):
            io_plugin.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == old and io_plugin.load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    io_plugin.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    assert io_plugin.load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_trainer_configs_write_checkpoints_atomically(tmp_path):
    import hydra

    for trainer in ("cpu", "ddp_cpu", "ddp"):
        cfg = compose_train(tmp_path, [f"trainer={trainer}"])
        plugins = [hydra.utils.instantiate(p) for p in cfg.trainer.plugins]
        assert any(isinstance(p, AtomicCheckpointIO) for p in plugins), trainer
    trainer = hydra.utils.instantiate(compose_train(tmp_path, []).trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


if __name__ == "__main__":
    if sys.argv[1] == "crash":
        crash_run(Path(sys.argv[2]))
