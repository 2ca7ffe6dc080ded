"""Smoke tests of the downstream benchmark scripts (paper Fig. 3, Fig. 4, Table 2) with a tiny random model.

Each runs end to end on 1–2 molecules with tiny budgets: options parse, results are written and resumed,
the table and figure appear. What the numbers mean is tested in tests/test_optimize.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from helpers import load_script, write_tiny_checkpoint

from hip.constants import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
from hip.optimize import GAUSSIAN_CRITERIA

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
VAL = ROOT / "data" / "embedded" / "val.lmdb"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"))


def rows(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_bench_relax_runs_and_resumes(tiny, tmp_path, capsys):
    script = load_script("bench_relax")
    args = ["--ckpt", tiny, "--data", str(VAL), "--stride", "5", "--max-molecules", "2", "--max-steps", "3",
            "--methods", "rfo_hip", "rfo_bfgs_fd", "ase_fire", "--output", str(tmp_path)]
    table = script.main(args)
    assert list(table) == ["RFO (HIP)", "RFO-BFGS (FD init)", "FIRE (ASE)"]
    first = rows(tmp_path)
    assert len(first) == 6 and {r["molecule"] for r in first} == {"val.lmdb:0", "val.lmdb:5"}
    assert all(r["steps"] <= 3 for r in first)
    assert (tmp_path / "bench_relax.png").stat().st_size > 0 and "Converged [%]" in capsys.readouterr().out
    script.main(args)  # resumes: nothing recomputed
    assert rows(tmp_path) == first
    with pytest.raises(SystemExit, match=r"bench_relax\.py: .*settings\.json.*noise"):
        script.main([*args, "--noise", "0.3"])


@pytest.mark.parametrize("name", ["bench_relax", "bench_ts_search", "bench_zpe"])
def test_user_mistakes_end_in_one_line_and_leave_no_settings_behind(name, tiny, tmp_path):
    script = load_script(name)
    out = tmp_path / "out"
    every_guess = ["--start", "guesses", "--no-filter"] if name == "bench_ts_search" else []  # no saddles there
    with pytest.raises(SystemExit, match=f"{name}.py: .*missing.ckpt"):
        script.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--data", str(VAL), "--output", str(out), *every_guess])
    assert not (out / "settings.json").exists()  # the right checkpoint can then use the same directory
    with pytest.raises(SystemExit, match=f"{name}.py: .*nowhere.xyz does not exist"):
        script.main(["--ckpt", tiny, "--data", str(tmp_path / "nowhere.xyz"), "--output", str(out), *every_guess])
    with pytest.raises(SystemExit, match=f"{name}.py: indices \\[1000\\] out of range"):
        script.main(["--ckpt", tiny, "--data", str(VAL), "--indices", "1000", "--output", str(out), *every_guess])


def test_defaults_are_the_authors_protocol():
    relax, ts, zpe = (load_script(name).parse_args([]) for name in ("bench_relax", "bench_ts_search", "bench_zpe"))
    assert relax.noise == 0.05 and relax.noise_draw == "rescaled" and relax.coordinates == "internal"
    assert relax.trust_radius == pytest.approx(0.3 * 0.529177210903) and relax.energy == "model"
    assert relax.time_limit == 0 and ts.time_limit == 0 and ts.energy == "model" and ts.irc_steps == 125
    assert relax.data == zpe.data == [str(ROOT / "data" / "reactions")] and ts.start == "reactions"
    assert ts.methods == ["prfo_hip", "prfo_ad", "prfo_fd"] and ts.dft_verify > 0 and ts.dft_grid_level == 4
    assert load_script("bench_ts_search").parse_args(["--start", "guesses"]).dft_verify == 0


def test_internal_coordinates_leave_out_the_cartesian_identity_start(tiny, tmp_path, capsys):
    script = load_script("bench_relax")
    args = ["--ckpt", tiny, "--max-molecules", "1", "--max-steps", "1", "--output"]
    with pytest.raises(SystemExit, match="rfo_bfgs_identity"):
        script.main([*args, str(tmp_path / "a"), "--methods", "rfo_bfgs_identity"])
    methods = [m.key for m in script.internal_coordinate_methods(list(script.RELAXATION_METHODS), default=True)]
    assert "rfo_bfgs_identity" not in methods and len(methods) == len(script.RELAXATION_METHODS) - 1
    assert "left out" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_ts_search_runs_through_irc_and_dft(tiny, tmp_path, monkeypatch, horm_sample_path):
    script = load_script("bench_ts_search")
    args = ["--ckpt", tiny, "--start", "guesses", "--data", str(horm_sample_path), "--max-molecules", "2",
            "--smallest-first",
            "--max-steps", "2", "--irc-steps", "2", "--methods", "prfo_hip", "prfo_bfgs_ad",
            "--output", str(tmp_path / "horm")]
    table = script.main(args)
    assert set(table) == {"P-RFO (HIP)", "P-RFO-BFGS (AD init)"} and all(v["Guesses"] == 2 for v in table.values())
    first = rows(tmp_path / "horm")
    assert {r["molecule"] for r in first} == {"sample_100.lmdb:83", "sample_100.lmdb:82"}
    script.main(args)
    assert rows(tmp_path / "horm") == first  # resumed: nothing recomputed

    # the DFT stage on one 3-atom "TS" at a cheap basis: no search step, every geometry declared a TS success
    water = tmp_path / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    monkeypatch.setattr(script, "count_negative_modes", lambda hessian, atoms, threshold_cm1=None: 1)
    table = script.main(["--ckpt", tiny, "--start", "guesses", "--data", str(water), "--no-filter", "--max-steps", "0",
                         "--irc-steps", "0",
                         "--methods", "prfo_hip", "--dft-verify", "1", "--dft-basis", "sto-3g",
                         "--output", str(tmp_path / "water")])
    (check,) = rows(tmp_path / "water" / "dft")
    assert check["molecule"] == "water.xyz:0" and check["method"] == "prfo_hip"
    assert check["negative_modes"] == 0 and not check["ts"]  # water is no transition state
    assert table["P-RFO (HIP)"]["DFT checked"] == 1 and table["P-RFO (HIP)"]["DFT TS [%]"] == 0


@pytest.mark.slow
def test_bench_zpe_on_stored_and_dft_relaxed_geometries(tiny, tmp_path):
    script = load_script("bench_zpe")
    table = script.main(["--ckpt", tiny, "--data", str(VAL), "--stride", "5", "--max-molecules", "2",
                         "--output", str(tmp_path / "stored")])
    assert list(table) == ["HIP", "AD", "FD"]
    results = rows(tmp_path / "stored")
    assert len(results) == 6 and all(r["zpe_dft"] > 0.5 for r in results)  # NH3 0.9 eV, H2CCO 0.8 eV
    hip = {r["molecule"]: r for r in results if r["method"] == "hip"}
    mae = np.mean([abs(r["zpe"] - r["zpe_dft"]) for r in hip.values()])
    assert table["HIP"]["ZPE MAE [eV]"] == pytest.approx(mae)

    water = tmp_path / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    script.main(["--ckpt", tiny, "--data", str(water), "--relax-with", "dft", "--dft-basis", "sto-3g",
                 "--hessians", "hip", "--output", str(tmp_path / "relaxed")])
    (relaxed,) = rows(tmp_path / "relaxed" / "dft_relaxed")
    assert relaxed["relax_converged"]
    forces = np.asarray(relaxed["forces"]) / HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM
    internal = forces - forces.mean(0)  # the DFT grid leaves a net force of ~2e-5 Hartree/Bohr
    assert np.abs(internal).max() < GAUSSIAN_CRITERIA["tight"].max_force
    (row,) = rows(tmp_path / "relaxed")
    assert row["imaginary_modes_dft"] == 0


def test_reaction_pairs():
    pairs = load_script("bench_zpe").reaction_pairs
    formulas = {"a": "C2H4O", "b": "C2H4O", "c": "CH4", "d": "C2H6O", "e": "C2H6O", "f": "C2H6O"}
    assert pairs(formulas, ["auto"]) == [("a", "b")]  # a formula seen 3 times is no single reaction
    reaction_set = {"x:reactant": "CHN", "x:ts": "CHN", "x:product": "CHN", "y:reactant": "CH2O"}
    assert pairs(reaction_set, ["auto"]) == [("x:reactant", "x:product")]  # by reaction, never with the TS
    assert pairs(formulas, ["none"]) == []
    assert pairs(formulas, ["f/d", "b/a"]) == [("f", "d"), ("b", "a")]
    with pytest.raises(ValueError, match="not the same atoms"):
        pairs(formulas, ["a/c"])
    with pytest.raises(ValueError, match="NAME/NAME"):
        pairs(formulas, ["a/x"])


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "data" / "reactions" / "hcn_hnc.extxyz").is_file(), reason="HCN ⇌ HNC not labelled")
def test_bench_ts_search_from_reactant_and_product_counts_nested_stages_and_resumes(tiny, tmp_path):
    script = load_script("bench_ts_search")
    args = ["--ckpt", tiny, "--only", "hcn_hnc", "--methods", "prfo_hip", "prfo_bfgs_ad", "--max-steps", "3",
            "--irc-steps", "3", "--dft-verify", "0", "--output", str(tmp_path)]
    table = script.main(args)
    assert set(table) == {"P-RFO (HIP)", "P-RFO-BFGS (AD init)"}
    first = rows(tmp_path)
    assert {(r["reaction"], r["method"]) for r in first} == {("hcn_hnc", "prfo_hip"), ("hcn_hnc", "prfo_bfgs_ad")}
    for values in table.values():  # a stage counts only after every earlier one: the shares never grow
        shares = [values[c] for c in ("Path [%]", "Converged [%]", "TS success [%]", "IRC [%]", "Intended [%]")]
        assert all(a >= b for a, b in itertools.pairwise(shares)) and values["DFT checked"] == 0
    for row in first:
        assert row["failed_stage"] is None or row["passed"][row["failed_stage"]] is False
    script.main(args)
    assert rows(tmp_path) == first  # resumed: nothing recomputed
