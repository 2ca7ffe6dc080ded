"""Tests of react.py: input checks (one line naming the file), a tiny model's run, HCN ⇌ HNC with DFT."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import pytest
from ase import Atoms
from ase.build import molecule
from helpers import hcn_and_hnc, write_tiny_checkpoint
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
#: The keys result.json promises (README, react.py docstring).
RESULT_KEYS = ("imaginary_frequency_cm1", "barrier_forward_eV", "barrier_reverse_eV", "gibbs_barrier_forward_eV",
               "gibbs_barrier_reverse_eV", "rate_constant_forward_s-1", "rate_constant_reverse_s-1")
STAGE_KEYS = ("path", "ts_search", "ts_success", "irc", "intended")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture
def hcn_files(tmp_path):
    hcn, hnc = hcn_and_hnc()
    ase.io.write(tmp_path / "hcn.xyz", hcn)
    ase.io.write(tmp_path / "hnc.xyz", hnc)
    return tmp_path / "hcn.xyz", tmp_path / "hnc.xyz"


def react_config(tmp_path, reactant, product, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        return compose("react", overrides=[f"reactant={reactant}", f"product={product}", f"paths.root_dir={ROOT}",
                                           f"paths.output_dir={tmp_path / 'out'}", *overrides])


def run_fails(cfg) -> str:
    """The one-line message react.py exits with."""
    from react import run

    with pytest.raises(SystemExit) as info:
        run(cfg)
    message = str(info.value.code)
    assert message.startswith("react.py: ") and "\n" not in message
    return message


def test_bad_inputs_end_in_one_line_naming_the_file(tmp_path, tiny_checkpoint, hcn_files):
    hcn, hnc = hcn_files
    ckpt = f"ckpt_path={tiny_checkpoint}"
    missing = tmp_path / "nothere.xyz"
    assert f"product {missing} does not exist" in run_fails(react_config(tmp_path, hcn, missing, ckpt))

    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("three\nnot a comment line\nX 0 0\n")
    assert f"reactant {garbage}: ASE cannot read it" in run_fails(react_config(tmp_path, garbage, hnc, ckpt))

    reordered = tmp_path / "nch.xyz"
    ase.io.write(reordered, Atoms("NCH", positions=ase.io.read(hnc).positions))
    message = run_fails(react_config(tmp_path, hcn, reordered, ckpt))
    assert f"product {reordered}: atom 0 is N but reactant {hcn} has H there (field 'numbers')" in message

    moved = tmp_path / "hcn_moved.xyz"
    shifted = ase.io.read(hcn)
    shifted.translate([0.5, 0.0, 0.0])
    ase.io.write(moved, shifted)
    assert f"reactant {hcn} and product {moved} are the same structure" in run_fails(
        react_config(tmp_path, hcn, moved, ckpt))

    charged = tmp_path / "charged.extxyz"
    ion = ase.io.read(hnc)
    ion.info["charge"] = 1
    ase.io.write(charged, ion)
    assert f"product {charged}: atoms.info['charge'] = 1" in run_fails(react_config(tmp_path, hcn, charged, ckpt))

    ase.io.write(tmp_path / "ch.xyz", Atoms("HC", positions=[[0, 0, 0], [0, 0, 1.1]]))
    ase.io.write(tmp_path / "hc_far.xyz", Atoms("HC", positions=[[0, 0, 0], [0, 0, 2.5]]))
    message = run_fails(react_config(tmp_path, tmp_path / "ch.xyz", tmp_path / "hc_far.xyz", ckpt))
    assert f"reactant {tmp_path / 'ch.xyz'}: 7 electrons (odd)" in message

    fluoride = tmp_path / "hcf.xyz"
    ase.io.write(fluoride, Atoms("HCF", positions=ase.io.read(hcn).positions))
    message = run_fails(react_config(tmp_path, fluoride, fluoride, ckpt))
    assert f"reactant {fluoride}: field 'numbers' has elements ['F'] the model was not trained on" in message

    message = run_fails(react_config(tmp_path, hcn, hnc, ckpt, f"ts_guess={reordered}"))
    assert f"TS guess {reordered}: atom 0 is N but reactant {hcn} has H there (field 'numbers')" in message
    message = run_fails(react_config(tmp_path, hcn, hnc, ckpt, f"ts_guess={missing}"))
    assert f"TS guess {missing} does not exist" in message

    for option, value in (("temperature", "-5"), ("pressure", "abc")):
        message = run_fails(react_config(tmp_path, hcn, hnc, ckpt, f"{option}={value}"))
        assert f"option {option}=" in message and "give a positive number" in message


def test_different_atom_counts_name_both_files(tmp_path, tiny_checkpoint):
    water = tmp_path / "water.xyz"
    ase.io.write(water, molecule("H2O"))
    ase.io.write(tmp_path / "methanol.xyz", molecule("CH3OH"))
    message = run_fails(react_config(tmp_path, water, tmp_path / "methanol.xyz", f"ckpt_path={tiny_checkpoint}"))
    assert f"product {tmp_path / 'methanol.xyz'} has 6 atoms and reactant {water} 3" in message


def test_a_tiny_model_runs_to_the_end_and_writes_result_json(tmp_path, tiny_checkpoint, hcn_files, capsys):
    from react import run

    hcn, hnc = hcn_files
    out = run(react_config(tmp_path, hcn, hnc, f"ckpt_path={tiny_checkpoint}", "reaction.relax_steps=10",
                           "reaction.ts_steps=10", "reaction.irc_steps=10", "reaction.images=5"))
    printed = capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert set(RESULT_KEYS) <= set(result)
    stages = result["stages"]
    assert stages and all(isinstance(record["success"], bool) for record in stages.values())
    assert list(stages) == [s for s in ("relax_reactant", "relax_product", *STAGE_KEYS, "thermochemistry")
                            if s in stages]
    failed = result["failed_stage"]
    if failed is not None:  # a random model may stop anywhere; the reason is recorded and printed
        assert stages[failed]["error"] and f"stopped at stage {failed}" in printed
        assert list(stages)[-1] == failed
    for name in stages:
        assert name in printed
    assert result["settings"]["ckpt_path"] == str(tiny_checkpoint)
    # the model's applicability warnings at the relaxed reactant (a test checkpoint records no domain)
    warnings = stages["relax_reactant"]["details"]["warnings"]
    assert any(w.startswith("domain_unknown:") for w in warnings)
    assert f"warning: {warnings[0]}" in printed
    assert (out / "profile.png").exists() == bool(result["stages"].get("path", {}).get("success"))


def test_a_ts_guess_starts_the_search_there(tmp_path, tiny_checkpoint, hcn_files):
    from react import run

    hcn, hnc = hcn_files
    ts_guess = ase.io.read(hcn)
    ts_guess.positions[0] = [1.1, 0.0, 0.5]  # H halfway round
    ase.io.write(tmp_path / "ts_guess.xyz", ts_guess)
    out = run(react_config(tmp_path, hcn, hnc, f"ckpt_path={tiny_checkpoint}", "reaction.relax_endpoints=false",
                           "reaction.images=3", "reaction.ts_steps=2", f"ts_guess={tmp_path / 'ts_guess.xyz'}"))
    result = json.loads((out / "result.json").read_text())
    assert result["stages"]["path"]["success"] and "ts_search" in result["stages"]
    assert result["stages"]["ts_search"]["details"]["start_image"] is None
    assert result["settings"]["ts_guess"] == str(tmp_path / "ts_guess.xyz")


@pytest.mark.slow
def test_hcn_to_hnc_with_dft_has_one_imaginary_mode_and_is_intended(tmp_path, hcn_files, capsys):
    pytest.importorskip("pyscf")
    from react import run

    hcn, hnc = hcn_files
    out = run(react_config(tmp_path, hcn, hnc, "calculator=dft", "dft.basis=sto-3g", "dft_verify=true",
                           "reaction.hessian_every_step=false", "reaction.irc_steps=30"))
    result = json.loads((out / "result.json").read_text())
    stages = result["stages"]
    assert result["failed_stage"] is None, stages
    assert all(stages[name]["success"] for name in STAGE_KEYS)
    assert stages["ts_success"]["details"]["n_imaginary"] == 1
    assert stages["intended"]["details"]["matches"] == ["product", "reactant"] or \
        stages["intended"]["details"]["matches"] == ["reactant", "product"]
    assert stages["dft_verify"]["details"]["one_imaginary_mode"]
    assert result["imaginary_frequency_cm1"] < -10
    assert 0 < result["barrier_reverse_eV"] < result["barrier_forward_eV"]  # HNC lies above HCN
    irc = ase.io.read(out / "irc.extxyz", index=":")
    assert irc[0].get_distance(0, 1) < 1.3 and irc[-1].get_distance(0, 2) < 1.2  # H–C first, H–N last
    assert len(ase.io.read(out / "ts_modes" / "mode_000.traj", index=":")) > 1
    assert (out / "profile.png").stat().st_size > 0 and "forward" in capsys.readouterr().out
