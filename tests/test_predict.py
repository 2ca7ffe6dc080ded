"""Tests of predict.py: every frame of a molecule file → extxyz, Hessian chunks, summary and frequency tables,
written batch by batch, resumed after a kill, sharded over processes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from helpers import periodic_water
from hydra import compose, initialize_config_dir

from hip.calculator import HIPCalculator
from hip.extrema import PREDICT_THRESHOLD_CM1
from hip.prediction import iter_batches
from hip.prediction_store import FREQUENCY_COLUMNS, SUMMARY_COLUMNS, read_manifest, read_predictions
from hip.vibrations import vibrational_analysis

ROOT = Path(__file__).resolve().parents[1]


def three_frames():
    displaced = molecule("CH3OH")
    displaced.positions += np.random.default_rng(0).normal(scale=0.05, size=displaced.positions.shape)
    return [molecule("H2O"), displaced, molecule("HCN")]


def many_frames(n: int, seed: int = 0) -> list:
    """``n`` small molecules (3–6 atoms), each displaced a little, so that sizes and geometries vary."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = molecule(("H2O", "NH3", "CH4", "HCN", "CH3OH")[i % 5])
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def predict_config(tmp_path, input_path, checkpoint, *overrides, out="out"):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("predict", overrides=[f"input={input_path}", f"ckpt_path={checkpoint}",
                                             f"paths.root_dir={ROOT}", f"output_dir={tmp_path / out}", *overrides])


@pytest.mark.parametrize("method", ["hip", "autodiff"])
def test_predict_writes_frames_hessians_and_tables(tmp_path, tiny_checkpoint, method):
    from predict import run

    ase.io.write(tmp_path / "three.extxyz", three_frames())
    out = run(predict_config(tmp_path, tmp_path / "three.extxyz", tiny_checkpoint, f"hessian={method}",
                             "eval.batch_size=2"))
    frames = ase.io.read(tmp_path / "three.extxyz", index=":")  # positions as predict.py read them
    expected = HIPCalculator(tiny_checkpoint, hessian_method=method).predict(frames, batch_size=1)

    written = read_predictions(out)
    assert [a.info["frame"] for a in written.frames] == [0, 1, 2]
    for atoms, frame, result in zip(written.frames, frames, expected, strict=True):
        np.testing.assert_allclose(atoms.positions, frame.positions, atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(result["energy"], abs=1e-4)
        np.testing.assert_allclose(atoms.get_forces(), result["forces"], atol=1e-4)
    assert sorted(written.hessians) == [0, 1, 2]
    for i, result in enumerate(expected):
        np.testing.assert_allclose(written.hessians[i], result["hessian"], rtol=1e-4, atol=1e-4)

    with open(out / "frequencies.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FREQUENCY_COLUMNS
    assert tuple(written.summary[0]) == SUMMARY_COLUMNS
    for i, frame in enumerate(frames):
        mine = [r for r in rows if int(r["frame"]) == i]
        nu = vibrational_analysis(written.hessians[i], frame.positions, frame.numbers).frequencies.numpy()
        assert len(mine) == {0: 3, 1: 12, 2: 4}[i]  # 3N − 6, and 3N − 5 for linear HCN
        np.testing.assert_allclose([float(r["frequency_cm1"]) for r in mine], nu, atol=1e-3)
        n_imaginary = int((nu < -PREDICT_THRESHOLD_CM1).sum())  # predict.py's documented default, 10 cm⁻¹
        assert [r["imaginary"] == "True" for r in mine] == (nu < -PREDICT_THRESHOLD_CM1).tolist()
        assert {int(r["n_imaginary"]) for r in mine} == {n_imaginary}
        zpe = 0.5 * nu[nu > 0].sum() * 1.239841984e-4  # h·c in eV·cm
        assert float(mine[0]["zpe_eV"]) == pytest.approx(zpe, abs=2e-6)
        kind = {0: "minimum", 1: "transition state"}.get(n_imaginary, f"saddle point of order {n_imaginary}")
        summary = written.summary[i]
        assert {r["extremum"] for r in mine} == {kind} == {summary["extremum"]}
        # thermochemistry only where it means something: no imaginary mode
        assert (summary["gibbs_energy_eV"] != "") == (n_imaginary == 0)
        assert ("imaginary mode" in summary["notes"]) == (n_imaginary > 0)


def test_thermochemistry_columns_follow_temperature(tmp_path, tiny_checkpoint):
    from hip.vibrations import thermochemistry
    from predict import run

    atoms = molecule("H2O")
    ase.io.write(tmp_path / "water.xyz", atoms)
    out = run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, "temperature=500",
                             "pressure=2e5"))
    row = read_predictions(out).summary[0]
    result = HIPCalculator(tiny_checkpoint).predict([ase.io.read(tmp_path / "water.xyz")])[0]
    if row["gibbs_energy_eV"]:  # the random tiny model may give imaginary modes; then the test above covers it
        t = thermochemistry(result["hessian"], atoms, 500.0, 2e5, potential_energy=result["energy"])
        assert float(row["gibbs_energy_eV"]) == pytest.approx(t.gibbs_energy, abs=1e-4)
        assert float(row["entropy_eV_per_K"]) == pytest.approx(t.entropy, rel=1e-4)


def test_predict_writes_viewable_modes(tmp_path, tiny_checkpoint):
    from predict import run

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    out = run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, "formats=[modes]"))
    names = sorted(p.name for p in (out / "modes" / "frame_0").iterdir())
    assert names == ["mode_000.traj", "mode_001.traj", "mode_002.traj", "modes.xyz"]
    assert len(ase.io.read(out / "modes" / "frame_0" / "mode_002.traj", index=":")) == 30


def test_batches_are_size_sorted_windows(tmp_path):
    frames = many_frames(23)
    ase.io.write(tmp_path / "many.xyz", frames)
    batches = list(iter_batches(tmp_path / "many.xyz", batch_size=4, window=10))
    assert [b.batch_id for b in batches] == list(range(len(batches)))
    assert sorted(i for b in batches for i in b.indices) == list(range(23))  # every frame once
    for b in batches:
        assert all(0 <= i // 10 == b.indices[0] // 10 for i in b.indices)  # a batch stays inside its window
        assert [len(a) for a in b.frames] == sorted(len(a) for a in b.frames)
        assert [len(a) for a in b.frames] == [len(frames[i]) for i in b.indices]


@pytest.mark.parametrize(("frames", "match"), [
    ([molecule("H2O"), molecule("CH3Cl")], r"frame 1 \(CH3Cl\): field 'numbers' has elements \['Cl'\]"),
    ([molecule("CH4"), molecule("NH3"), periodic_water(4.0)], r"frame 2 \(H2O\): field 'pbc'"),
])
def test_bad_frames_name_file_and_frame(tmp_path, tiny_checkpoint, frames, match):
    from predict import run

    path = tmp_path / "bad.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=f"input {path} {match}"):
        run(predict_config(tmp_path, path, tiny_checkpoint, "eval.batch_size=4"))
    assert read_manifest(tmp_path / "out") == []  # the batch holding the bad frame was not written


def test_skip_invalid_records_bad_frames_and_keeps_the_others(tmp_path, tiny_checkpoint):
    from predict import run

    frames = [molecule("H2O"), molecule("CH3Cl"), molecule("NH3"), periodic_water(4.0), molecule("CH4")]
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames)
    out = run(predict_config(tmp_path, path, tiny_checkpoint, "eval.batch_size=2", "skip_invalid=true"))
    written = read_predictions(out)
    assert [a.info["frame"] for a in written.frames] == [0, 2, 4]
    assert sorted(written.hessians) == [0, 2, 4]
    assert [int(r["frame"]) for r in written.skipped] == [1, 3]
    assert "field 'numbers' has elements ['Cl']" in written.skipped[0]["reason"]
    assert "field 'pbc'" in written.skipped[1]["reason"]


def test_unreadable_input_named(tmp_path):
    from hip.prediction import read_frames_lazily

    path = tmp_path / "corrupt.extxyz"
    ase.io.write(path, [molecule("H2O"), molecule("NH3")])
    with open(path, "a") as f:
        f.write("5\nProperties=species:S:1:pos:R:3\nC 0 0 0\n")  # frame 2 promises 5 atoms, holds 1
    with pytest.raises(ValueError, match=f"input {path} frame 2: ASE cannot read it"):
        list(read_frames_lazily(path))
    with pytest.raises(FileNotFoundError, match=f"input {tmp_path / 'absent.xyz'} does not exist"):
        list(read_frames_lazily(tmp_path / "absent.xyz"))
    with pytest.raises(IsADirectoryError, match=f"input {tmp_path} is a directory"):
        list(read_frames_lazily(tmp_path))


def test_command_line_errors_are_one_line(tmp_path, tiny_checkpoint):
    """A user mistake ends the command with ``sys.exit(message)`` (status 1, the message on stderr), not a
    stack trace."""
    import predict

    path = tmp_path / "notes.xyz"
    path.write_text("these are not coordinates\n")
    water = tmp_path / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    cases = [
        ((path, tiny_checkpoint), f"predict.py: input {path} frame 0: ASE cannot read it"),
        ((water, tmp_path / "absent.ckpt"), f"predict.py: checkpoint {tmp_path / 'absent.ckpt'} does not exist"),
        ((water, tiny_checkpoint, "eval.batch_size=abc"), "predict.py: option eval.batch_size='abc': give a positive"),
        ((water, tiny_checkpoint, "eval.batch_size=0"), "predict.py: option eval.batch_size=0: give a positive"),
        ((water, tiny_checkpoint, "dtype=float16"), "predict.py: option dtype='float16': choose one of"),
        ((water, tiny_checkpoint, "formats=[pdf]"), "predict.py: option formats="),
        ((water, tiny_checkpoint, "eval.device=gpu"), "predict.py: eval.device='gpu' is not a device: use 'cpu'"),
        ((water, tiny_checkpoint, "imaginary_threshold_cm1=abc"), "predict.py: option imaginary_threshold_cm1='abc'"),
        ((water, tiny_checkpoint, "imaginary_threshold_cm1=-1"), "predict.py: option imaginary_threshold_cm1=-1"),
        ((water, tiny_checkpoint, "seed=x"), "predict.py: option seed='x': give an integer"),
        ((tmp_path, tiny_checkpoint), f"predict.py: input {tmp_path} is a directory"),
    ]
    for (input_path, checkpoint, *overrides), message in cases:
        with pytest.raises(SystemExit) as exit_info:
            predict.main.__wrapped__(predict_config(tmp_path, input_path, checkpoint, *overrides))
        assert str(exit_info.value.code).startswith(message), (overrides, exit_info.value.code)


def test_missing_input_says_how_to_give_one(tmp_path):
    from omegaconf import MISSING

    import predict

    cfg = predict_config(tmp_path, tmp_path / "water.xyz", tmp_path / "absent.ckpt")
    cfg.input = MISSING
    with pytest.raises(SystemExit, match=r"predict\.py: which molecules\? python predict\.py input=<file>"):
        predict.main.__wrapped__(cfg)


def test_resume_refuses_other_settings_and_an_edited_input(tmp_path, tiny_checkpoint):
    from predict import run

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint))
    with pytest.raises(ValueError, match=r"settings.json: this directory holds a run with other settings \(hessian"):
        run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, "hessian=autodiff"))
    ase.io.write(tmp_path / "water.xyz", [molecule("H2O"), molecule("NH3")])  # the user edits the file
    with pytest.raises(ValueError, match=r"other settings \(input_mtime_ns: .*input_size_bytes"):
        run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint))


def test_default_run_directory_is_the_same_for_the_same_command(tmp_path, tiny_checkpoint):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        a, b, c = (compose("predict", overrides=[f"input={tmp_path / 'x.xyz'}", f"paths.root_dir={ROOT}", *o])
                   for o in ([], [], ["hessian=autodiff"]))
    assert a.output_dir == b.output_dir != c.output_dir
    assert Path(a.output_dir).parent == ROOT / "logs" / "predict"
    assert Path(a.output_dir).name.startswith("x-")


def _command(input_path, checkpoint, out, *overrides):
    return [sys.executable, str(ROOT / "predict.py"), f"input={input_path}", f"ckpt_path={checkpoint}",
            f"output_dir={out}", "eval.batch_size=8", "window=64", "formats=[lmdb]", *overrides]


def _assert_same_predictions(a, b):
    a, b = read_predictions(a), read_predictions(b)
    assert [x.info["frame"] for x in a.frames] == [x.info["frame"] for x in b.frames]
    for x, y in zip(a.frames, b.frames, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.get_potential_energy() == y.get_potential_energy()
        np.testing.assert_array_equal(x.get_forces(), y.get_forces())
    assert sorted(a.hessians) == sorted(b.hessians)
    for frame, hessian in a.hessians.items():
        np.testing.assert_array_equal(hessian, b.hessians[frame])
    assert a.summary == b.summary


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_checkpoint):
    """``kill -9`` mid-run, then the same command: the outputs equal an uninterrupted run frame by frame,
    nothing duplicated or missing."""
    n = 300
    ase.io.write(tmp_path / "many.xyz", many_frames(n))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(tmp_path / "many.xyz", tiny_checkpoint, killed), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(read_manifest(killed)) < 5 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = len(read_manifest(killed))
    assert 5 <= written < 38, "the run must be killed mid-way (38 batches in all)"
    subprocess.run(_command(tmp_path / "many.xyz", tiny_checkpoint, killed), env=env, check=True,
                   capture_output=True)
    subprocess.run(_command(tmp_path / "many.xyz", tiny_checkpoint, tmp_path / "whole"), env=env, check=True,
                   capture_output=True)
    batches = [e["batch"] for e in read_manifest(killed)]
    assert sorted(batches) == list(range(38)) and len(set(batches)) == len(batches)
    _assert_same_predictions(killed, tmp_path / "whole")
    assert len(read_predictions(killed).frames) == n
    from hip.data.store import iter_entries

    lmdb_frames = [int(entry.rxn) for entry in iter_entries(killed / "predictions.lmdb")]
    assert sorted(lmdb_frames) == list(range(n))  # the HORM shard too: every frame once


@pytest.mark.slow
def test_two_ddp_processes_write_the_frames_one_process_writes(tmp_path, tiny_checkpoint):
    ase.io.write(tmp_path / "many.xyz", many_frames(40))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(tmp_path / "many.xyz", tiny_checkpoint, tmp_path / "one"), env=env, check=True,
                   capture_output=True)
    two = subprocess.run(_command(tmp_path / "many.xyz", tiny_checkpoint, tmp_path / "two", "trainer=ddp_cpu",
                                  "trainer.devices=2"), env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert {p.name for p in (tmp_path / "two").glob("rank_*")} == {"rank_0", "rank_1"}
    assert all(read_manifest(tmp_path / "two" / f"rank_{r}") for r in (0, 1))  # both processes wrote batches
    _assert_same_predictions(tmp_path / "one", tmp_path / "two")


def test_predict_writes_quantum_chemistry_formats(tmp_path, tiny_checkpoint):
    from predict import run

    ase.io.write(tmp_path / "two.xyz", [molecule("H2O"), molecule("NH3")])
    out = run(predict_config(tmp_path, tmp_path / "two.xyz", tiny_checkpoint, "formats=[hess,fchk,molden]"))
    written = read_predictions(out)
    for frame in (0, 1):
        names = sorted(p.name for p in (out / "formats").glob(f"frame_{frame}.*"))
        assert names == [f"frame_{frame}.fchk", f"frame_{frame}.hess", f"frame_{frame}.molden"]
        lines = (out / "formats" / f"frame_{frame}.hess").read_text().splitlines()
        start = lines.index("$hessian")
        n = int(lines[start + 1])
        first = [float(x) for x in lines[start + 3].split()[1:]]  # row 0, columns 0..4
        expected = written.hessians[frame][0, :5] * 0.529177210903**2 / 27.211386245988  # CODATA 2018 au
        assert n == 3 * len(written.frames[frame])
        np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-9)


def test_predict_writes_a_horm_shard_that_the_dataset_reads(tmp_path, tiny_checkpoint):
    from hip.constants import ATOM_REFERENCE_ENERGY_EV
    from hip.data.horm import HormDataset
    from hip.data.store import iter_entries
    from predict import run

    frames = three_frames()
    ase.io.write(tmp_path / "three.extxyz", frames)
    out = run(predict_config(tmp_path, tmp_path / "three.extxyz", tiny_checkpoint, "formats=[lmdb]",
                             "eval.batch_size=2"))
    written = read_predictions(out)
    dataset = HormDataset(out / "predictions.lmdb", cache_dir=None)  # validates every entry as training data
    raw = list(iter_entries(out / "predictions.lmdb"))  # keeps HORM's rxn field: here the input frame
    assert len(dataset) == len(raw) == 3
    seen = []
    for k, entry in enumerate(raw):
        frame = int(entry.rxn)
        seen.append(frame)
        atoms = written.frames[frame]
        np.testing.assert_array_equal(dataset[k].z.numpy(), atoms.numbers)
        np.testing.assert_allclose(dataset[k].pos.numpy(), atoms.positions, atol=1e-6)
        np.testing.assert_allclose(entry.forces.numpy(), atoms.get_forces(), atol=1e-5)
        np.testing.assert_allclose(entry.hessian.numpy(), written.hessians[frame].reshape(-1), rtol=1e-5, atol=1e-5)
        reference = sum(ATOM_REFERENCE_ENERGY_EV[int(z)] for z in atoms.numbers)
        assert float(entry.energy) == pytest.approx(atoms.get_potential_energy(), abs=1e-2)  # float32 at ~2000 eV
        assert float(entry.ae) == pytest.approx(atoms.get_potential_energy() - reference, abs=1e-3)
    assert sorted(seen) == [0, 1, 2]


def test_warnings_reach_the_summary_and_the_frames(tmp_path, tiny_checkpoint):
    from ase import Atoms

    from predict import run

    two_fragments = molecule("H2O") + Atoms("O", positions=[[30.0, 0.0, 0.0]])
    ase.io.write(tmp_path / "apart.xyz", [molecule("NH3"), two_fragments])
    out = run(predict_config(tmp_path, tmp_path / "apart.xyz", tiny_checkpoint))
    written = read_predictions(out)
    warnings = written.summary[1]["warnings"].split(" | ")
    fragments = [w for w in warnings if w.startswith("fragments:")]
    assert all(w.split(":", 1)[0] in {"domain_unknown", "fragments", "forces", "sum_rule"} for w in warnings)
    assert len(fragments) == 1 and "(H2O, O)" in fragments[0]
    assert "fragments:" in written.frames[1].info["hip_warnings"]
    assert "fragments:" not in written.summary[0]["warnings"]


def test_thermochemistry_is_withheld_away_from_stationary_points():
    """A frame the calculator flags as not stationary gets no H, S, G, and says why (forces warning)."""
    from hip.prediction import AnalysisSettings, analyse_frame

    atoms = molecule("H2O")
    rng = np.random.default_rng(0)
    a = rng.normal(size=(9, 9))
    result = {"energy": -2000.0, "forces": np.zeros((3, 3)), "hessian": a @ a.T + 50 * np.eye(9)}
    clean = analyse_frame(0, atoms, result, AnalysisSettings())
    assert clean.n_imaginary == 0 and set(clean.thermo) == {"enthalpy_eV", "entropy_eV_per_K", "gibbs_energy_eV"}
    flagged = analyse_frame(0, atoms, result | {"warnings": ["forces: max |F| = 2 eV/A"]}, AnalysisSettings())
    assert flagged.thermo == {} and flagged.notes == ["H, S, G not given: not a stationary point (forces)"]
    unknown = analyse_frame(0, atoms, result | {"warnings": ["domain_unknown: no record"]}, AnalysisSettings())
    assert unknown.thermo == clean.thermo and unknown.notes == []
    outside = analyse_frame(0, atoms, result | {"warnings": ["natoms: x", "formula: y"]}, AnalysisSettings())
    assert outside.thermo == {}
    assert outside.notes == ["H, S, G not given: outside the training domain (natoms, formula)"]
    assert flagged.zpe == clean.zpe and flagged.warnings == ["forces: max |F| = 2 eV/A"]


def test_float64_predictions_agree_with_float32(tmp_path, tiny_checkpoint):
    from predict import run

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    single = read_predictions(run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, out="f32")))
    double = read_predictions(run(predict_config(tmp_path, tmp_path / "water.xyz", tiny_checkpoint, "dtype=float64",
                                                 out="f64")))
    assert double.hessians[0].dtype == np.float64
    scale = np.abs(single.hessians[0]).max()
    np.testing.assert_allclose(double.hessians[0], single.hessians[0], atol=1e-5 * scale)
    np.testing.assert_allclose(double.frames[0].get_forces(), single.frames[0].get_forces(), atol=1e-5)


def test_readers_see_only_batches_the_manifest_records(tmp_path, tiny_checkpoint):
    """A batch cut off by a kill (or still being written by another process) after its files were appended
    but before its manifest line is invisible to readers, before any rerun restores the part."""
    from predict import run

    ase.io.write(tmp_path / "two.xyz", [molecule("H2O"), molecule("NH3")])
    out = run(predict_config(tmp_path, tmp_path / "two.xyz", tiny_checkpoint))
    before = read_predictions(out)
    with open(out / "predictions.extxyz", "a") as f:
        f.write("3\nProperties=species:S:1:pos:R:3 frame=7\nO 0 0 0\nH 0 0 1\n")  # half a frame
    with open(out / "summary.csv", "a") as f:
        f.write("7,H2O,3,-2000.0,")  # half a row
    after = read_predictions(out)
    assert [a.info["frame"] for a in after.frames] == [a.info["frame"] for a in before.frames] == [0, 1]
    assert after.summary == before.summary and sorted(after.hessians) == [0, 1]
