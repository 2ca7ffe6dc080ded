"""The embedded DFT reaction set (data/reactions, hip.data.reactions): its file format and its chemistry."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from helpers import hcn_and_hnc, load_script

from hip.convergence import GAUSSIAN_CRITERIA
from hip.data.reactions import (
    REACTION_SET_DIR,
    REACTIONS,
    ROLES,
    guess_pair,
    load_reaction,
    load_reaction_set,
    missing_reactions,
    stationary_frame,
    ts_guess,
)
from hip.extrema import TS_THRESHOLD_CM1, count_imaginary
from hip.irc import bonds
from hip.reaction import ReactionResult, StageRecord, check_reaction_pair
from hip.reaction_state import to_state
from hip.vibrations import vibrational_analysis

LABELLED = load_reaction_set()
#: Ha/Bohr, how much a force component of a grid-level-4 DFT calculation moves when the molecule is turned
GRID_ROTATION_NOISE = 1e-5


def write_reaction(directory, name="hcn_hnc", roles=ROLES, seed=0):
    rng = np.random.default_rng(seed)
    reactant, product = hcn_and_hnc()
    ts = reactant.copy()
    ts.positions[0] = [1.1, 0.0, 0.5]
    frames, hessians = [], {}
    for role, atoms in zip(roles, (reactant, ts, product), strict=True):
        a = rng.normal(size=(9, 9)) * 10
        hessians[role] = a + a.T
        frames.append(stationary_frame(atoms, role, name, -2500.0 - rng.random(), rng.normal(size=(3, 3)),
                                       hessians[role]))
    ase.io.write(directory / f"{name}.extxyz", frames, format="extxyz")
    (directory / f"{name}.json").write_text(json.dumps({"failed_stage": None}))
    return frames, hessians


def test_a_written_reaction_reads_back_with_its_energies_forces_and_hessians(tmp_path):
    frames, hessians = write_reaction(tmp_path)
    reaction = load_reaction("hcn_hnc", tmp_path)
    for role, frame in zip(ROLES, frames, strict=True):
        got = getattr(reaction, role)
        np.testing.assert_allclose(got.positions, frame.positions, atol=1e-8)
        assert got.get_potential_energy() == pytest.approx(frame.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(got.get_forces(), frame.get_forces(), atol=1e-8)
        np.testing.assert_allclose(reaction.hessians[role], hessians[role], atol=1e-6)
    assert reaction.description == REACTIONS["hcn_hnc"][0]


def test_missing_or_malformed_reactions_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"hcn_hnc\.json.*not labelled"):
        load_reaction("hcn_hnc", tmp_path)
    (tmp_path / "hcn_hnc.json").write_text(json.dumps({"failed_stage": "ts_success"}))
    with pytest.raises(FileNotFoundError, match=r"hcn_hnc\.extxyz.*stopped at stage 'ts_success'"):
        load_reaction("hcn_hnc", tmp_path)
    write_reaction(tmp_path, roles=("reactant", "product", "ts"))
    with pytest.raises(ValueError, match=r"hcn_hnc\.extxyz: frames have roles \['reactant', 'product', 'ts'\]"):
        load_reaction("hcn_hnc", tmp_path)
    with pytest.raises(ValueError, match=r"Hessian has shape \(3, 3\)"):
        stationary_frame(hcn_and_hnc()[0], "ts", "x", 0.0, np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(FileNotFoundError, match="no guesses for reaction 'nope'"):
        guess_pair("nope", tmp_path)
    assert missing_reactions(tmp_path) == [name for name in REACTIONS if name != "hcn_hnc"]


def test_every_guess_pair_is_the_same_atoms_with_different_bonds_or_geometry():
    for name in REACTIONS:
        reactant, product = guess_pair(name)
        assert (reactant.numbers == product.numbers).all() and len(reactant) <= 7
        assert set(reactant.get_chemical_symbols()) <= {"H", "C", "N", "O"} and sum(reactant.numbers) % 2 == 0
        check_reaction_pair(reactant, product)
        if (ts := ts_guess(name)) is not None:  # an optional third frame: the same atoms, not a minimum
            assert (ts.numbers == reactant.numbers).all()
            assert bonds(ts) not in (bonds(reactant), bonds(product)), name
    assert ts_guess("h2co_h2_co") is not None and ts_guess("hcn_hnc") is None


def test_a_guess_file_has_two_or_three_frames(tmp_path):
    (tmp_path / "guesses").mkdir()
    ase.io.write(tmp_path / "guesses" / "hcn_hnc.xyz", [hcn_and_hnc()[0]] * 4)
    with pytest.raises(ValueError, match=r"hcn_hnc\.xyz: 4 frames; expected the reactant, the product and"):
        ts_guess("hcn_hnc", tmp_path)


@pytest.mark.skipif(not LABELLED, reason="no labelled reactions (scripts/label_reactions.py)")
@pytest.mark.parametrize("reaction", LABELLED, ids=lambda r: r.name)
def test_labelled_reactions_are_dft_stationary_points_of_the_right_kind(reaction):
    """Minima without an imaginary mode, a TS with exactly one, all at Gaussian tight forces (as labelled),
    the barriers in the record equal the stored energies, and the TS's IRC ends are the two minima."""
    tight = GAUSSIAN_CRITERIA["tight"]
    for role in ROLES:
        atoms = getattr(reaction, role)
        nu = vibrational_analysis(reaction.hessians[role], atoms.positions, atoms.numbers).frequencies
        assert count_imaginary(nu, TS_THRESHOLD_CM1) == (role == "ts"), (role, nu[:3])
        check = tight.measure(atoms.get_forces(), np.zeros_like(atoms.positions), atoms.positions)
        # tight where optimised; the product is then turned onto the reactant, and PySCF's grid is not
        # rotation-invariant: acetaldehyde's max force is 0.7–1.6e-5 Ha/Bohr in three orientations
        assert check.max_force < tight.max_force + GRID_ROTATION_NOISE and check.rms_force < tight.rms_force, role
    energy = {role: getattr(reaction, role).get_potential_energy() for role in ROLES}
    # the stored energies are a second SCF at the same geometry (another starting density): ~1e-5 eV apart
    assert reaction.summary["barrier_forward_eV"] == pytest.approx(energy["ts"] - energy["reactant"], abs=1e-4)
    assert reaction.summary["barrier_reverse_eV"] == pytest.approx(energy["ts"] - energy["product"], abs=1e-4)
    assert reaction.summary["stages"]["intended"]["success"]
    guess_r, guess_p = guess_pair(reaction.name)
    assert bonds(reaction.reactant) == bonds(guess_r) and bonds(reaction.product) == bonds(guess_p)


def test_every_record_is_a_labelled_reaction_or_names_the_stage_that_failed():
    for record in sorted(REACTION_SET_DIR.glob("[!.]*.json")):  # not .<name>.partial.json
        summary = json.loads(record.read_text())
        assert record.stem in REACTIONS, record
        labelled = record.with_suffix(".extxyz").is_file()
        assert labelled == (summary["failed_stage"] is None), (record, summary["failed_stage"])
        if not labelled:
            assert summary["stages"][summary["failed_stage"]]["error"], record


@pytest.mark.parametrize("text", ["{not json", '{"level": 1}', "[]", '{"guesses": 1, "result": {"stages": 5}}'])
def test_label_reactions_names_an_unreadable_partial_file_and_starts_afresh(tmp_path, capsys, text):
    label_reactions = load_script("label_reactions")
    how = {"guesses": 1}
    partial = tmp_path / ".hcn_hnc.partial.json"
    partial.write_text(text)
    assert label_reactions.resume(partial, how) is None
    said = capsys.readouterr().out
    assert str(partial) in said and "started afresh" in said


def test_label_reactions_resumes_a_partial_file_with_the_same_settings(tmp_path, capsys):
    label_reactions = load_script("label_reactions")
    reactant, product = hcn_and_hnc()
    result = ReactionResult(stages={"relax_reactant": StageRecord(success=True, steps=3, seconds=1.0)},
                            reactant=reactant, product=product)
    how = {"guesses": reactant.positions.tolist(), "irc_dx": 0.2}
    partial = tmp_path / ".hcn_hnc.partial.json"
    partial.write_text(json.dumps({**how, "result": to_state(result), "seconds": 12.5}))
    resumed, seconds = label_reactions.resume(partial, how)
    assert seconds == 12.5 and list(resumed.stages) == ["relax_reactant"]
    np.testing.assert_array_equal(resumed.product.positions, product.positions)
    assert label_reactions.resume(partial, {**how, "irc_dx": 0.1}) is None
    assert "other guesses or settings" in capsys.readouterr().out
