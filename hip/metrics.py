"""Evaluation metrics: paper Tables 1, 6 (Hessian accuracy), 3 (extremum types) and 9 (TS classification).

Per molecule, :func:`molecule_metrics` compares a predicted with a true Hessian, in float64:

* raw Cartesian (eV/Å², no mass weighting, no projection): the element-wise Hessian MAE, the MAE over
  all 3N eigenvalues (paper Table 1 and 10 "Eigenvalues", as in HORM's and the HIP authors'
  evaluation) and the ``*_raw`` quantities of Table 6 (λ1, λ2, v1, v2). The eigendecomposition is
  the authors': ``eigh`` of the matrix as given, which reads its lower triangle, so an asymmetric
  (autodiff) Hessian is decomposed exactly as in their ``scripts/eval_horm.py``;
* after mass weighting and Eckart projection (eV/(Å²·amu), the rigid-body modes removed, see
  :func:`hip.vibrations.vibrational_analysis`; superscript E in Table 6): the MAE over the 3N − 6
  vibrational eigenvalues, λ1, λ2, v1, v2 (Table 1's CosSim v1 and λ1 columns), and the number of
  negative eigenvalues, which classifies the stationary point (Tables 3 and 9).

Eigenvalues are compared in ascending order, index by index; eigenvector similarity is |cos|, so it
does not depend on the arbitrary sign of an eigenvector. :func:`aggregate_metrics` averages molecules
into named columns whose names carry units, adds the Table 3 and Table 9 rates, and
:func:`format_table` renders methods as rows.

The paper labels its Eckart-projected columns eV/Å², although they are computed from mass-weighted
Hessians; here their unit says eV/Å²/amu (masses in amu).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hip.data.graphs import split_hessian
from hip.extrema import TABLE3_EIGENVALUE_THRESHOLD, count_imaginary, frequency_threshold
from hip.vibrations import atomic_masses, vibrational_analysis

#: Per-molecule metric key → column name (units in brackets) used by :func:`aggregate_metrics`.
METRIC_COLUMNS: dict[str, str] = {
    "hessian_mae": "Hessian MAE [eV/Å²]",
    "eigenvalue_mae_raw": "raw eigenvalue MAE [eV/Å²]",
    "eigenvalue_mae": "Eckart eigenvalue MAE [eV/Å²/amu]",
    "v1_cos": "Eckart CosSim v1 [unitless]",
    "lambda1_mae": "Eckart λ1 MAE [eV/Å²/amu]",
    "lambda2_mae": "Eckart λ2 MAE [eV/Å²/amu]",
    "v2_cos": "Eckart CosSim v2 [unitless]",
    "lambda1_mae_raw": "raw λ1 MAE [eV/Å²]",
    "lambda2_mae_raw": "raw λ2 MAE [eV/Å²]",
    "v1_cos_raw": "raw CosSim v1 [unitless]",
    "v2_cos_raw": "raw CosSim v2 [unitless]",
    "energy_ae": "Energy MAE [eV]",
    "forces_mae": "Force MAE [eV/Å]",
}

#: Mean time of one forward pass at batch size 1, after warm-up: the model call on prebuilt graphs
#: already on the device (:mod:`hip.evaluation` fills it).
TIME_COLUMN = "Time [ms]"
#: The same plus building both graphs from the positions, collation and the copy to the device: the
#: HIP authors' timed forward, which builds its graphs inside (:mod:`hip.evaluation` fills it).
TIME_WITH_GRAPHS_COLUMN = "Time incl. graphs [ms]"
#: Paper Table 1 columns in the paper's order and units (Eigenvalues: raw, all 3N; CosSim v1 and λ1:
#: after Eckart projection), then the Eckart-projected eigenvalue MAE as an extra column.
TABLE1_COLUMNS: tuple[str, ...] = (
    METRIC_COLUMNS["hessian_mae"],
    METRIC_COLUMNS["eigenvalue_mae_raw"],
    METRIC_COLUMNS["v1_cos"],
    METRIC_COLUMNS["lambda1_mae"],
    TIME_COLUMN,
    TIME_WITH_GRAPHS_COLUMN,
    METRIC_COLUMNS["eigenvalue_mae"],
)

#: Paper Table 6 columns: raw Cartesian eigen-quantities next to the Eckart-projected ones.
TABLE6_COLUMNS: tuple[str, ...] = tuple(
    METRIC_COLUMNS[key]
    for key in ("hessian_mae", "eigenvalue_mae_raw", "v1_cos_raw", "lambda1_mae_raw", "lambda2_mae_raw",
                "lambda1_mae", "lambda2_mae", "v1_cos", "v2_cos")
)

#: Stationary-point types by number of negative Eckart-projected eigenvalues (0, 1, ≥ 2).
EXTREMUM_TYPES = ("minima", "first-order saddles", "higher-order saddles")
#: Fraction of molecules whose predicted Hessian has exactly the DFT number of negative eigenvalues:
#: the paper's Table 3 accuracy and Table 9's "Accuracy All".
EXTREMUM_ACCURACY = "Extremum accuracy [%]"
#: Share of each type among the DFT Hessians (shown in Table 3's title).
DFT_TYPE_COLUMNS: tuple[str, ...] = tuple(f"DFT {kind} [%]" for kind in EXTREMUM_TYPES)
#: Per DFT type, the share of its molecules whose predicted Hessian has the same type.
TYPE_CORRECT_COLUMNS: tuple[str, ...] = tuple(f"{kind.capitalize()} correct [%]" for kind in EXTREMUM_TYPES)
#: Paper Table 3: the per-type shares, then the overall accuracy.
TABLE3_COLUMNS: tuple[str, ...] = (*TYPE_CORRECT_COLUMNS, EXTREMUM_ACCURACY)
#: Rates of "is a first-order saddle (transition state)" as a binary classification.
TS_RATE_COLUMNS: tuple[str, ...] = ("TS TPR [%]", "TS FPR [%]", "TS FNR [%]", "TS TNR [%]", "TS precision [%]",
                                    "TS accuracy [%]")
#: Paper Table 9: the TS rates, then "Accuracy All" (any extremum type).
TABLE9_COLUMNS: tuple[str, ...] = (*TS_RATE_COLUMNS, EXTREMUM_ACCURACY)


def abs_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """|cos| between two vectors (eigenvector similarity, invariant to either vector's sign).

    Args:
        a: [D] vector.
        b: [D] vector.

    Returns:
        |a·b| / (|a||b|) in [0, 1].
    """
    a, b = a.double(), b.double()
    return float((a @ b).abs() / (a.norm() * b.norm()))


def _square(h: torch.Tensor | Sequence, n: int) -> torch.Tensor:
    h = torch.as_tensor(h, dtype=torch.float64)
    if h.numel() != 9 * n * n:
        raise ValueError(f"hessian has shape {tuple(h.shape)}; {n} atoms need ({3 * n}, {3 * n})")
    return h.reshape(3 * n, 3 * n)


def _nan_if_missing(values: torch.Tensor, index: int) -> float:
    return float(values[index]) if values.numel() > index else math.nan


def molecule_metrics(
    pred_hessian: torch.Tensor,
    true_hessian: torch.Tensor,
    pos: torch.Tensor,
    z: torch.Tensor,
    *,
    masses: torch.Tensor | None = None,
    pred_energy: torch.Tensor | float | None = None,
    true_energy: torch.Tensor | float | None = None,
    pred_forces: torch.Tensor | None = None,
    true_forces: torch.Tensor | None = None,
    negative_eigenvalue_threshold: float = TABLE3_EIGENVALUE_THRESHOLD,
) -> dict[str, float]:
    """Hessian metrics of one molecule (paper Tables 1, 3, 6, 9). Computed in float64.

    Keys (see :data:`METRIC_COLUMNS`):

    * ``hessian_mae``: mean |H_pred − H_true| over the 9N² Cartesian entries, eV/Å² (Table 1 "Hessian").
    * ``eigenvalue_mae_raw``: mean |λ_pred − λ_true| over all 3N eigenvalues of the raw Cartesian
      Hessians, eV/Å² (Table 1 "Eigenvalues"); ``eigh`` reads the lower triangle, as the authors' code.
    * ``lambda1_mae_raw``, ``lambda2_mae_raw``, ``v1_cos_raw``, ``v2_cos_raw``: lowest and second-lowest
      of those eigenvalues (abs. error, eV/Å²) and |cos| of their eigenvectors (Table 6).
    * ``eigenvalue_mae``: mean |λ_pred − λ_true| over the 3N − 6 (5 linear) vibrational eigenvalues of
      the mass-weighted, Eckart-projected Hessians, eV/(Å²·amu).
    * ``lambda1_mae``, ``lambda2_mae``, ``v1_cos``, ``v2_cos``: the same for the lowest two of those
      (Table 1 "λ1", "CosSim v1"; Table 6 superscript E); NaN when the molecule has fewer modes.
    * ``n_neg_pred``, ``n_neg_true``: number of Eckart-projected eigenvalues below
      ``negative_eigenvalue_threshold`` (Tables 3, 9); ``same_extremum_type``: 1.0 if they are equal.
    * ``energy_ae`` (eV) and ``forces_mae`` (eV/Å) when both predicted and true values are given.

    Args:
        pred_hessian: (3N, 3N) or [9N²] predicted Cartesian Hessian, eV/Å² (may be asymmetric).
        true_hessian: same shape, reference Hessian, eV/Å².
        pos: [N, 3] positions, Å.
        z: [N] atomic numbers.
        masses: [N] masses, amu (default ``atomic_masses(z)``).
        pred_energy: predicted energy, eV.
        true_energy: reference energy, eV.
        pred_forces: [N, 3] predicted forces, eV/Å.
        true_forces: [N, 3] reference forces, eV/Å.
        negative_eigenvalue_threshold: Eckart-projected eigenvalues strictly below this count as
            negative, eV/(Å²·amu) (default −1e-6, the authors').

    Returns:
        Metric name → float.

    Raises:
        ValueError: if the Hessian shapes do not match N = len(pos).
    """
    pos = torch.as_tensor(pos, dtype=torch.float64).cpu()
    n = pos.shape[0]
    hp = _square(torch.as_tensor(pred_hessian).detach().cpu(), n)
    ht = _square(torch.as_tensor(true_hessian).detach().cpu(), n)
    m = atomic_masses(torch.as_tensor(z).cpu()) if masses is None else torch.as_tensor(masses).double().cpu()

    out: dict[str, float] = {"hessian_mae": float((hp - ht).abs().mean())}

    raw_p, vec_p = torch.linalg.eigh(hp)  # lower triangle, as torch.linalg.eigh in the authors' evaluation
    raw_t, vec_t = torch.linalg.eigh(ht)
    out["eigenvalue_mae_raw"] = float((raw_p - raw_t).abs().mean())
    out["lambda1_mae_raw"] = float((raw_p[0] - raw_t[0]).abs())
    out["lambda2_mae_raw"] = float((raw_p[1] - raw_t[1]).abs())
    out["v1_cos_raw"] = abs_cosine(vec_p[:, 0], vec_t[:, 0])
    out["v2_cos_raw"] = abs_cosine(vec_p[:, 1], vec_t[:, 1])

    vib_p = vibrational_analysis(hp, pos, z, masses=m)
    vib_t = vibrational_analysis(ht, pos, z, masses=m)
    err = (vib_p.eigenvalues - vib_t.eigenvalues).abs()
    out["eigenvalue_mae"] = float(err.mean()) if err.numel() else math.nan
    out["lambda1_mae"] = _nan_if_missing(err, 0)
    out["lambda2_mae"] = _nan_if_missing(err, 1)
    modes = err.numel()
    out["v1_cos"] = abs_cosine(vib_p.eigenvectors[:, 0], vib_t.eigenvectors[:, 0]) if modes > 0 else math.nan
    out["v2_cos"] = abs_cosine(vib_p.eigenvectors[:, 1], vib_t.eigenvectors[:, 1]) if modes > 1 else math.nan
    threshold_cm1 = frequency_threshold(negative_eigenvalue_threshold)  # one rule: hip.extrema
    n_neg_pred = count_imaginary(vib_p.frequencies, threshold_cm1)
    n_neg_true = count_imaginary(vib_t.frequencies, threshold_cm1)
    out["n_neg_pred"] = float(n_neg_pred)
    out["n_neg_true"] = float(n_neg_true)
    out["same_extremum_type"] = float(n_neg_pred == n_neg_true)

    if pred_energy is not None and true_energy is not None:
        out["energy_ae"] = abs(float(pred_energy) - float(true_energy))
    if pred_forces is not None and true_forces is not None:
        out["forces_mae"] = float((torch.as_tensor(pred_forces).double().cpu()
                                   - torch.as_tensor(true_forces).double().cpu()).abs().mean())
    return out


def batch_metrics(pred: Mapping[str, torch.Tensor], batch: Any, **kwargs: Any) -> list[dict[str, float]]:
    """:func:`molecule_metrics` for every molecule of a batch.

    Args:
        pred: ``"hessian"`` [Σ 9N_b²] eV/Å²; optional ``"energy"`` [B] eV and ``"forces"`` [N, 3] eV/Å.
        batch: PyG batch (or mapping) with ``hessian``, ``natoms`` [B], ``pos`` [N, 3] Å, ``z`` [N], and
            ``ae`` [B] eV / ``forces`` [N, 3] eV/Å when the matching predictions are given.
        **kwargs: passed on to :func:`molecule_metrics` (``negative_eigenvalue_threshold``).

    Returns:
        One metrics dict per molecule, in batch order.
    """
    natoms = [int(n) for n in batch["natoms"]]
    preds = split_hessian(pred["hessian"].detach(), natoms)
    trues = split_hessian(batch["hessian"], natoms)
    positions = batch["pos"].split(natoms)
    numbers = batch["z"].split(natoms)
    forces_p = pred["forces"].detach().split(natoms) if "forces" in pred else None
    forces_t = batch["forces"].split(natoms) if forces_p is not None else None
    rows = []
    for b in range(len(natoms)):
        rows.append(molecule_metrics(
            preds[b], trues[b], positions[b], numbers[b],
            pred_energy=pred["energy"][b].detach() if "energy" in pred else None,
            true_energy=batch["ae"][b] if "energy" in pred else None,
            pred_forces=forces_p[b] if forces_p is not None else None,
            true_forces=forces_t[b] if forces_t is not None else None,
            **kwargs,
        ))
    return rows


def _percent(numerator: int, denominator: int) -> float:
    return 100.0 * numerator / denominator if denominator else math.nan


def _extremum_accuracy(rows: Sequence[Mapping[str, float]]) -> float:
    return _percent(sum(row["n_neg_pred"] == row["n_neg_true"] for row in rows), len(rows))


def extremum_type(n_negative: float) -> int:
    """Index into :data:`EXTREMUM_TYPES` of a stationary point with ``n_negative`` negative eigenvalues:
    0 minimum, 1 first-order saddle (transition state), 2 higher-order saddle."""
    return min(int(n_negative), 2)


def extremum_classification(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Paper Table 3 (and Table 9's last column) from per-molecule negative-eigenvalue counts.

    Args:
        rows: outputs of :func:`molecule_metrics` (``n_neg_pred``, ``n_neg_true``).

    Returns:
        :data:`DFT_TYPE_COLUMNS`: share of each type among the DFT Hessians, %;
        :data:`TABLE3_COLUMNS`: per DFT type (0, 1, ≥ 2 negative eigenvalues), the share of those
        molecules whose prediction has the same type, % (NaN when the type does not occur), and
        :data:`EXTREMUM_ACCURACY`: the share with exactly the DFT number of negative eigenvalues, %.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("extremum_classification needs at least one molecule")
    true = [extremum_type(row["n_neg_true"]) for row in rows]
    pred = [extremum_type(row["n_neg_pred"]) for row in rows]
    out: dict[str, float] = {}
    for kind, (dft_column, correct_column) in enumerate(zip(DFT_TYPE_COLUMNS, TYPE_CORRECT_COLUMNS, strict=True)):
        of_kind = [p for t, p in zip(true, pred, strict=True) if t == kind]
        out[dft_column] = _percent(len(of_kind), len(rows))
        out[correct_column] = _percent(sum(p == kind for p in of_kind), len(of_kind))
    out[EXTREMUM_ACCURACY] = _extremum_accuracy(rows)
    return out


def ts_classification(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Paper Table 9: transition-state identification by frequency analysis, in %.

    Positive: exactly one negative Eckart-projected eigenvalue (a first-order saddle); the DFT Hessian
    gives the label, the predicted one the decision. TPR = TP/(TP+FN), FPR = FP/(FP+TN),
    FNR = FN/(TP+FN), TNR = TN/(FP+TN), precision = TP/(TP+FP), TS accuracy = (TP+TN)/all; a rate
    whose denominator is 0 is NaN. :data:`EXTREMUM_ACCURACY` ("Accuracy All") is added.

    Args:
        rows: outputs of :func:`molecule_metrics` (``n_neg_pred``, ``n_neg_true``).

    Returns:
        :data:`TABLE9_COLUMNS` → %, plus ``"TS TP [count]"``, ``"TS FP [count]"``, ``"TS FN [count]"``,
        ``"TS TN [count]"``.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("ts_classification needs at least one molecule")
    pairs = [(row["n_neg_true"] == 1, row["n_neg_pred"] == 1) for row in rows]
    tp = sum(t and p for t, p in pairs)
    fp = sum(p and not t for t, p in pairs)
    fn = sum(t and not p for t, p in pairs)
    tn = len(pairs) - tp - fp - fn
    rates = (_percent(tp, tp + fn), _percent(fp, fp + tn), _percent(fn, tp + fn), _percent(tn, fp + tn),
             _percent(tp, tp + fp), _percent(tp + tn, len(pairs)))
    counts = {"TS TP [count]": float(tp), "TS FP [count]": float(fp), "TS FN [count]": float(fn),
              "TS TN [count]": float(tn)}
    return dict(zip(TS_RATE_COLUMNS, rates, strict=True)) | {EXTREMUM_ACCURACY: _extremum_accuracy(rows)} | counts


def aggregate_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-molecule metrics into named columns (:data:`METRIC_COLUMNS`), with Tables 3 and 9.

    Each column is the mean over the molecules that have a finite value (so a diatomic's missing λ2
    does not poison the mean); keys absent from all rows are left out. When the rows carry
    negative-eigenvalue counts, the rates of :func:`extremum_classification` (Table 3) and
    :func:`ts_classification` (Table 9) are added.

    Args:
        rows: outputs of :func:`molecule_metrics`.

    Returns:
        Column name (with unit) → value, plus ``"Molecules [count]"``.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError("aggregate_metrics needs at least one molecule")
    out: dict[str, float] = {}
    for key, column in METRIC_COLUMNS.items():
        values = torch.tensor([row[key] for row in rows if key in row], dtype=torch.float64)
        if values.numel():
            out[column] = float(values.nanmean())
    if all("n_neg_pred" in row and "n_neg_true" in row for row in rows):
        out |= extremum_classification(rows) | ts_classification(rows)
    out["Molecules [count]"] = float(len(rows))
    return out


def format_table(
    results: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] = TABLE1_COLUMNS,
    digits: int = 3,
) -> str:
    """Render aggregated results as a plain-text table, one row per method (e.g. "HIP", "AD").

    Args:
        results: method name → :func:`aggregate_metrics` output (optionally with ``TIME_COLUMN``).
        columns: column names to show (default: paper Table 1); a column no method has is dropped, a
            value a method lacks or that is NaN is shown as "–".
        digits: decimals.

    Returns:
        The table as lines joined by newlines: a header with units, a rule, then one row per method.
    """
    columns = [c for c in columns if any(c in r for r in results.values())]
    header = ["Method", *columns]
    body = [[method, *(f"{r[c]:.{digits}f}" if math.isfinite(r.get(c, math.nan)) else "–" for c in columns)]
            for method, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])
