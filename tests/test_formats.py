"""hip/formats.py: ORCA .hess, Gaussian fchk and Molden files against independent expectations.

The molecule is a water-shaped triangle of springs (central forces at their rest lengths): its Hessian is
exactly translation- and rotation-invariant, so NumPy's ``eigh`` of the mass-weighted matrix gives the
three vibrations directly, with no projection. Frequencies, modes and unit factors below are computed
from NumPy and SciPy's CODATA constants, never from hip; the expected files are written by hand from
the formats' documentation (ORCA manual, The Molden Format, Gaussian's formchk layout).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.constants as sc

from hip.formats import FORMATS, write_formats

BOHR_A = sc.physical_constants["Bohr radius"][0] * 1e10  # Å
HARTREE_EV = sc.physical_constants["Hartree energy in eV"][0]
EV_A2_TO_AU = BOHR_A**2 / HARTREE_EV  # eV/Å² → Hartree/Bohr²
# ν̃ [cm⁻¹] = sqrt(λ [eV/(Å²·amu)] in s⁻²) / (2π c [cm/s])
CM1_PER_SQRT_EV_A2_AMU = math.sqrt(sc.e / (1e-20 * sc.atomic_mass)) / (2 * math.pi * 100 * sc.c)

Z = [8, 1, 1]
SYMBOLS = ["O", "H", "H"]
MASSES = np.array([15.999, 1.008, 1.008])  # IUPAC standard atomic weights (abridged), amu
POS = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])  # Å
SPRINGS = {(0, 1): 50.0, (0, 2): 50.0, (1, 2): 6.0}  # eV/Å²
ENERGY = -2080.0  # eV

RTOL, ATOL = 1e-7, 1e-9  # printed digits, and SciPy's CODATA (2018 or 2022) against hip's (2018)


def spring_hessian(pos: np.ndarray, springs: dict) -> np.ndarray:
    """Σ_bonds k û ûᵀ ⊗ [[1, −1], [−1, 1]]: the Hessian of harmonic springs at their rest lengths, eV/Å²."""
    h = np.zeros((3 * len(pos), 3 * len(pos)))
    for (a, b), k in springs.items():
        u = (pos[b] - pos[a]) / np.linalg.norm(pos[b] - pos[a])
        block = k * np.outer(u, u)
        for i, j, sign in ((a, a, 1), (b, b, 1), (a, b, -1), (b, a, -1)):
            h[3 * i:3 * i + 3, 3 * j:3 * j + 3] += sign * block
    return h


def expected_vibrations(h: np.ndarray, masses: np.ndarray, n_vib: int) -> tuple[np.ndarray, np.ndarray]:
    """The n_vib non-zero modes: wavenumbers (cm⁻¹) and Cartesian displacements M^{-1/2}L normalised to 1,
    each signed so that its largest component (the first of equal ones) is positive."""
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(masses, 3))
    lam, vec = np.linalg.eigh(h * inv_sqrt_m[:, None] * inv_sqrt_m[None, :])
    keep = np.sort(np.argsort(np.abs(lam))[-n_vib:])  # the rigid-body eigenvalues are the zeros
    lam, cart = lam[keep], vec[:, keep] * inv_sqrt_m[:, None]
    cart /= np.linalg.norm(cart, axis=0)
    for k in range(n_vib):
        cart[:, k] *= np.sign(cart[np.argmax(np.round(np.abs(cart[:, k]), 10)), k])
    return np.sign(lam) * np.sqrt(np.abs(lam)) * CM1_PER_SQRT_EV_A2_AMU, cart


def _compare(written: str, expected: list[str]) -> None:
    """Line by line, token by token: integers and words exactly, reals to RTOL/ATOL (blank and ``#`` lines
    are comments in both formats)."""
    lines = [ln.split() for ln in written.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    expected_lines = [ln.split() for ln in expected]
    assert len(lines) == len(expected_lines), (len(lines), len(expected_lines))
    for k, (got, want) in enumerate(zip(lines, expected_lines, strict=True)):
        assert len(got) == len(want), (k, got, want)
        for g, w in zip(got, want, strict=True):
            try:
                wf = float(w)
            except ValueError:
                assert g == w, (k, got, want)
                continue
            if w.lstrip("-").isdigit():
                assert g == w, (k, got, want)
            else:
                assert math.isclose(float(g), wf, rel_tol=RTOL, abs_tol=ATOL), (k, got, want)


def _orca_block_lines(matrix: np.ndarray, column_groups: list[list[int]]) -> list[str]:
    out = []
    for cols in column_groups:
        out.append(" ".join(str(c) for c in cols))
        out += [" ".join([str(i), *(repr(float(matrix[i, c])) for c in cols)]) for i in range(matrix.shape[0])]
    return out


@pytest.fixture
def water(tmp_path):
    h = spring_hessian(POS, SPRINGS)
    paths = write_formats(tmp_path, "water", ["hess", "molden"], Z, POS, h, energy=ENERGY, masses=MASSES)
    frequencies, modes = expected_vibrations(h, MASSES, 3)
    return h, frequencies, modes, {p.suffix: p.read_text() for p in paths}


def test_orca_hess_matches_hand_written_file(water):
    h, frequencies, modes, files = water
    all_freq = np.concatenate([np.zeros(6), frequencies])
    all_modes = np.concatenate([np.zeros((9, 6)), modes], axis=1)
    groups = [[0, 1, 2, 3, 4], [5, 6, 7, 8]]  # ORCA: 5 columns per block
    bohr = POS / BOHR_A
    expected = [
        "$orca_hessian_file",
        "$act_atom", "2",
        "$act_coord", "2",
        "$act_energy", repr(ENERGY / HARTREE_EV),
        "$hessian", "9", *_orca_block_lines(h * EV_A2_TO_AU, groups),
        "$vibrational_frequencies", "9", *(f"{k} {f!r}" for k, f in enumerate(all_freq.tolist())),
        "$normal_modes", "9 9", *_orca_block_lines(all_modes, groups),
        "$atoms", "3",
        *(f"{s} {m!r} {x!r} {y!r} {z!r}"
          for s, m, (x, y, z) in zip(SYMBOLS, MASSES.tolist(), bohr.tolist(), strict=True)),
        "$end",
    ]
    _compare(files[".hess"], expected)


def test_molden_matches_hand_written_file(water):
    _, frequencies, modes, files = water
    bohr = POS / BOHR_A
    expected = ["[Molden Format]", "[Atoms] AU"]
    expected += [f"{s} {i} {z} {x!r} {y!r} {w!r}"
                 for i, (s, z, (x, y, w)) in enumerate(zip(SYMBOLS, Z, bohr.tolist(), strict=True), start=1)]
    expected += ["[FREQ]", *(repr(f) for f in frequencies.tolist())]
    expected += ["[FR-COORD]", *(f"{s} {x!r} {y!r} {w!r}" for s, (x, y, w) in zip(SYMBOLS, bohr.tolist(), strict=True))]
    expected.append("[FR-NORM-COORD]")
    for k in range(3):
        expected.append(f"vibration {k + 1}")
        expected += [" ".join(repr(v) for v in atom) for atom in modes[:, k].reshape(3, 3).tolist()]
    _compare(files[".molden"], expected)


def test_spring_model_is_what_the_test_claims():
    """The expectations rest on this: six exact zero eigenvalues and positive, distinct vibrations."""
    h = spring_hessian(POS, SPRINGS)
    inv_sqrt_m = 1.0 / np.sqrt(np.repeat(MASSES, 3))
    lam = np.linalg.eigvalsh(h * inv_sqrt_m[:, None] * inv_sqrt_m[None, :])
    assert np.abs(lam[:6]).max() < 1e-10 * lam.max()
    assert (np.diff(lam[6:]) > 1.0).all() and lam[6] > 1.0


def parse_orca_block(text: str, name: str) -> np.ndarray:
    """Read an ORCA column-blocked matrix (``$hessian`` or ``$normal_modes``) as the manual's files lay it
    out: dimension line, then blocks of at most 5 columns, each headed by its column indices."""
    lines = text.splitlines()
    i = lines.index(name) + 1
    dims = [int(d) for d in lines[i].split()]
    n_rows, n_cols = dims[0], dims[-1]
    out = np.full((n_rows, n_cols), np.nan)
    i += 1
    done = 0
    while done < n_cols:
        cols = [int(c) for c in lines[i].split()]
        assert cols == list(range(done, done + len(cols))) and 1 <= len(cols) <= 5
        for r in range(n_rows):
            words = lines[i + 1 + r].split()
            assert int(words[0]) == r and len(words) == len(cols) + 1
            out[r, cols] = [float(w) for w in words[1:]]
        i += n_rows + 1
        done += len(cols)
    return out


def _random_molecule(seed: int = 0):
    rng = np.random.default_rng(seed)
    z = [6, 1, 8, 7]
    pos = rng.normal(scale=1.0, size=(4, 3))
    a = rng.normal(size=(12, 12)) * 10.0 ** rng.uniform(-3, 2, size=(12, 12))  # entries over five decades
    return z, pos, a + a.T


def test_hess_hessian_block_round_trips(tmp_path):
    z, pos, h = _random_molecule()
    (path,) = write_formats(tmp_path, "m", ["hess"], z, pos, h)
    text = path.read_text()
    from hip.constants import HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2

    hessian = parse_orca_block(text, "$hessian") * HARTREE_PER_BOHR2_TO_EV_PER_ANGSTROM2
    np.testing.assert_allclose(hessian, h, rtol=1e-10)
    modes = parse_orca_block(text, "$normal_modes")
    assert modes.shape == (12, 12) and not modes[:, :6].any()
    np.testing.assert_allclose(np.linalg.norm(modes[:, 6:], axis=0), 1.0, rtol=1e-9)
    # mass-weighted, the Cartesian displacements are orthogonal ("normalized but *not* orthogonal" as given)
    from hip.vibrations import atomic_masses

    mw = modes[:, 6:] * np.sqrt(np.repeat(atomic_masses(z).numpy(), 3))[:, None]
    gram = mw.T @ mw
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-9)
    assert "$act_energy" not in text  # no energy given: the block is left out, not written as 0


def test_fchk_read_back_by_qc_iodata(tmp_path):
    # iodata.load_one insists on an orbital basis set ("Shell types"), which a model's Hessian does not
    # have; its field reader, the first step of load_one, reads every field of the file.
    from iodata.formats.fchk import _load_fchk_low
    from iodata.utils import LineIterator

    z, pos, h = _random_molecule(1)
    forces = np.random.default_rng(2).normal(size=(4, 3))
    (path,) = write_formats(tmp_path, "m", "fchk", z, pos, h, energy=ENERGY, forces=forces)
    with LineIterator(str(path)) as lines:
        fields = _load_fchk_low(lines)
    triangle = fields["Cartesian Force Constants"]
    assert triangle.shape == (12 * 13 // 2,)
    dense = np.zeros((12, 12))
    k = 0
    for i in range(12):  # Gaussian's order: H11, H21, H22, H31, H32, H33, ...
        for j in range(i + 1):
            dense[i, j] = dense[j, i] = triangle[k]
            k += 1
    np.testing.assert_allclose(dense, h * EV_A2_TO_AU, rtol=1e-8)
    np.testing.assert_array_equal(fields["Atomic numbers"], z)
    np.testing.assert_allclose(fields["Current cartesian coordinates"].reshape(4, 3), pos / BOHR_A, rtol=1e-8)
    np.testing.assert_allclose(fields["Cartesian Gradient"].reshape(4, 3), -forces * BOHR_A / HARTREE_EV, rtol=1e-8)
    assert fields["Total Energy"] == pytest.approx(ENERGY / HARTREE_EV, rel=1e-8)
    np.testing.assert_allclose(fields["Real atomic weights"], [12.011, 1.008, 15.999, 14.007])
    assert fields["Number of electrons"] == sum(z) and fields["Charge"] == 0


def test_single_atom_has_only_rigid_entries(tmp_path):
    paths = write_formats(tmp_path, "o", ["hess", "molden"], [8], [[0.0, 0.0, 0.0]], np.zeros((3, 3)))
    hess, molden = (p.read_text().splitlines() for p in paths)
    i = hess.index("$vibrational_frequencies")
    assert hess[i + 1].strip() == "3" and [float(ln.split()[1]) for ln in hess[i + 2:i + 5]] == [0.0, 0.0, 0.0]
    freq = molden.index("[FREQ]")
    assert molden[freq + 1] == "[FR-COORD]" and molden[-1] == "[FR-NORM-COORD]"


def test_flat_hessian_gives_the_same_files(tmp_path):
    h = spring_hessian(POS, SPRINGS)
    square = write_formats(tmp_path / "a", "w", list(FORMATS), Z, POS, h)
    flat = write_formats(tmp_path / "b", "w", list(FORMATS), Z, POS, h.reshape(-1).tolist())
    assert [p.read_text() for p in square] == [p.read_text() for p in flat]


def test_unknown_format_names_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'xyz'.*allowed: hess, fchk, molden"):
        write_formats(tmp_path / "out", "w", ["hess", "xyz"], Z, POS, spring_hessian(POS, SPRINGS))
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize(("field", "value", "message"), [
    ("hessian", np.zeros((8, 8)), r"hessian has shape \(8, 8\); 3 atoms need \(9, 9\) or \[81\]"),
    ("positions", np.zeros((2, 3)), r"positions have shape \(2, 3\); 3 atoms need \(3, 3\)"),
    ("forces", np.zeros((3,)), r"forces have shape \(3,\); 3 atoms need \(3, 3\)"),
    ("numbers", [8, 1, 1.5], r"atomic numbers must be .* integers"),
    ("numbers", [8, 1, 200], r"atomic numbers \[200\] have no mass"),
    ("energy", [1.0, 2.0], r"energy must be one number \(eV\), got shape \(2,\)"),
    ("energy", float("nan"), r"^energy has 1 non-finite entries \(NaN or inf\)$"),
])
def test_bad_input_is_named(tmp_path, field, value, message):
    kwargs = {"numbers": Z, "positions": POS, "hessian": spring_hessian(POS, SPRINGS), field: value}
    with pytest.raises(ValueError, match=message):
        write_formats(tmp_path / "out", "w", ["hess"], **kwargs)
    assert not (tmp_path / "out").exists()


def test_nan_hessian_names_the_first_bad_entry(tmp_path):
    h = spring_hessian(POS, SPRINGS)
    h[0, 4] = np.nan
    with pytest.raises(ValueError, match=r"hessian has 1 non-finite entries .* index \[0, 4\]"):
        write_formats(tmp_path, "w", ["fchk"], Z, POS, h)
    assert not list(tmp_path.iterdir())


def test_tensors_are_accepted_like_arrays(tmp_path):
    import torch

    h = spring_hessian(POS, SPRINGS)
    arrays = write_formats(tmp_path / "a", "w", list(FORMATS), Z, POS, h, energy=ENERGY, forces=-POS)
    tensors = write_formats(tmp_path / "b", "w", list(FORMATS), torch.tensor(Z), torch.tensor(POS), torch.tensor(h),
                            energy=torch.tensor(ENERGY), forces=torch.tensor(-POS))
    assert [p.read_text() for p in arrays] == [p.read_text() for p in tensors]
