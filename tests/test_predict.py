"""Tests of predict.py: every frame of a molecule file → extxyz, Hessians (.npz), frequency table (.csv)."""

from __future__ import annotations

import csv
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from helpers import periodic_water
from hydra import compose, initialize_config_dir

from hip.calculator import HIPCalculator
from hip.vibrations import vibrational_analysis

ROOT = Path(__file__).resolve().parents[1]


def three_frames():
    displaced = molecule("CH3OH")
    displaced.positions += np.random.default_rng(0).normal(scale=0.05, size=displaced.positions.shape)
    return [molecule("H2O"), displaced, molecule("HCN")]


def predict_config(tmp_path, input_path, checkpoint, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("predict", overrides=[f"input={input_path}", f"ckpt_path={checkpoint}",
                                             f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path / 'out'}",
                                             *overrides])


@pytest.mark.parametrize("method", ["hip", "autodiff"])
def test_predict_writes_extxyz_hessians_and_frequency_table(tmp_path, tiny_checkpoint, method):
    from predict import FREQUENCY_COLUMNS, run

    frames = three_frames()
    ase.io.write(tmp_path / "three.extxyz", frames)
    out = run(predict_config(tmp_path, tmp_path / "three.extxyz", tiny_checkpoint, f"hessian={method}",
                             "eval.batch_size=2"))
    frames = ase.io.read(tmp_path / "three.extxyz", index=":")  # positions as predict.py read them
    expected = HIPCalculator(tiny_checkpoint, hessian_method=method).predict(frames, batch_size=2)

    written = ase.io.read(out / "predictions.extxyz", index=":")
    assert len(written) == 3
    for atoms, frame, result in zip(written, frames, expected, strict=True):
        np.testing.assert_allclose(atoms.positions, frame.positions, atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(result["energy"], abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), result["forces"], atol=1e-6)

    npz = np.load(out / "hessians.npz")
    np.testing.assert_array_equal(npz["natoms"], [3, 6, 3])
    np.testing.assert_allclose(npz["energy"], [r["energy"] for r in expected], rtol=0, atol=1e-9)
    for i, result in enumerate(expected):
        np.testing.assert_array_equal(npz[f"hessian_{i}"], result["hessian"])

    with open(out / "frequencies.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FREQUENCY_COLUMNS
    for i, (frame, result) in enumerate(zip(frames, expected, strict=True)):
        mine = [r for r in rows if int(r["frame"]) == i]
        nu = vibrational_analysis(result["hessian"], frame.positions, frame.numbers).frequencies.numpy()
        assert len(mine) == {0: 3, 1: 12, 2: 4}[i]  # 3N − 6, and 3N − 5 for linear HCN
        np.testing.assert_allclose([float(r["frequency_cm1"]) for r in mine], nu, atol=1e-4)
        n_imaginary = int((nu < 0).sum())
        assert [r["imaginary"] == "True" for r in mine] == (nu < 0).tolist()
        assert {int(r["n_imaginary"]) for r in mine} == {n_imaginary}
        zpe = 0.5 * nu[nu > 0].sum() * 1.239841984e-4  # h·c in eV·cm
        assert float(mine[0]["zpe_eV"]) == pytest.approx(zpe, abs=2e-6)
        kind = {0: "minimum", 1: "transition state"}.get(n_imaginary, f"saddle point of order {n_imaginary}")
        assert {r["extremum"] for r in mine} == {kind}


def test_predict_writes_viewable_modes(tmp_path, tiny_checkpoint):
    from predict import run

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    out = run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, "write_modes=true"))
    names = sorted(p.name for p in (out / "modes" / "frame_0").iterdir())
    assert names == ["mode_000.traj", "mode_001.traj", "mode_002.traj", "modes.xyz"]
    assert len(ase.io.read(out / "modes" / "frame_0" / "mode_002.traj", index=":")) == 30


@pytest.mark.parametrize(("frames", "match"), [
    ([molecule("H2O"), molecule("CH3Cl")], r"frame 1 \(CH3Cl\): field 'numbers' has elements \['Cl'\]"),
    ([molecule("CH4"), molecule("NH3"), periodic_water(4.0)], r"frame 2 \(H2O\): field 'pbc'"),
])
def test_bad_frames_name_file_and_frame(tmp_path, tiny_checkpoint, frames, match):
    from predict import run

    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=f"input {path} {match}"):
        run(predict_config(tmp_path, path, tiny_checkpoint))
    assert not (tmp_path / "out" / "hessians.npz").exists()


def test_unreadable_frame_named(tmp_path):
    from predict import read_frames

    path = tmp_path / "corrupt.extxyz"
    ase.io.write(path, [molecule("H2O"), molecule("NH3")])
    with open(path, "a") as f:
        f.write("5\nProperties=species:S:1:pos:R:3\nC 0 0 0\n")  # frame 2 promises 5 atoms, holds 1
    with pytest.raises(ValueError, match=f"input {path} frame 2: ASE cannot read it"):
        read_frames(path)
    with pytest.raises(FileNotFoundError, match=f"input {tmp_path / 'absent.xyz'} does not exist"):
        read_frames(tmp_path / "absent.xyz")


def test_command_line_error_is_one_line(tmp_path):
    """A user mistake ends the command with ``sys.exit(message)`` (status 1, the message on stderr), not a
    stack trace."""
    import predict

    path = tmp_path / "notes.xyz"
    path.write_text("these are not coordinates\n")
    with pytest.raises(SystemExit) as exit_info:
        predict.main.__wrapped__(predict_config(tmp_path, path, tmp_path / "absent.ckpt"))  # main without Hydra
    assert str(exit_info.value.code).startswith(f"predict.py: input {path} frame 0: ASE cannot read it")
    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    with pytest.raises(SystemExit, match=f"predict.py: checkpoint {tmp_path / 'absent.ckpt'} does not exist"):
        predict.main.__wrapped__(predict_config(tmp_path, tmp_path / "water.xyz", tmp_path / "absent.ckpt"))


def test_missing_input_says_how_to_give_one(tmp_path):
    from omegaconf import MISSING

    import predict

    cfg = predict_config(tmp_path, tmp_path / "water.xyz", tmp_path / "absent.ckpt")
    cfg.input = MISSING
    with pytest.raises(SystemExit, match=r"predict\.py: which molecules\? python predict\.py input=<file>"):
        predict.main.__wrapped__(cfg)
