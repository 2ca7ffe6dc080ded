"""Evaluation metrics: Table 1 (Hessian accuracy), Table 3 (extrema classification), Table 6 (raw vs Eckart).

Per molecule, :func:`molecule_metrics` compares a predicted with a true Hessian:

* raw Cartesian (eV/Å², no mass weighting, no projection): the element-wise Hessian MAE, and the
  ``*_raw`` eigen-quantities of Table 6 (λ1, λ2 and eigenvectors v1, v2 of the symmetrised Hessian);
* after mass weighting and Eckart projection (eV/(Å²·amu), the rigid-body modes removed, see
  :func:`hip.vibrations.vibrational_analysis`; superscript E in Table 6): the MAE over all
  vibrational eigenvalues, λ1, λ2, v1, v2, and the number of negative eigenvalues (extremum type).

Eigenvalues are compared in ascending order, index by index; eigenvector similarity is |cos|, so it
does not depend on the arbitrary sign of an eigenvector. :func:`aggregate_metrics` averages molecules
into named columns whose names carry units, and :func:`format_table` renders methods as rows.

The paper labels its eigenvalue columns eV/Å², although they are computed from mass-weighted
Hessians; here the unit says eV/Å²/amu (masses in amu).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hip.data.graphs import split_hessian
from hip.vibrations import atomic_masses, vibrational_analysis

#: Per-molecule metric key → column name (units in brackets) used by :func:`aggregate_metrics`.
METRIC_COLUMNS: dict[str, str] = {
    "hessian_mae": "Hessian MAE [eV/Å²]",
    "eigenvalue_mae": "Eigenvalue MAE [eV/Å²/amu]",
    "v1_cos": "CosSim v1 [unitless]",
    "lambda1_mae": "λ1 MAE [eV/Å²/amu]",
    "lambda2_mae": "λ2 MAE [eV/Å²/amu]",
    "v2_cos": "CosSim v2 [unitless]",
    "lambda1_mae_raw": "raw λ1 MAE [eV/Å²]",
    "lambda2_mae_raw": "raw λ2 MAE [eV/Å²]",
    "v1_cos_raw": "raw CosSim v1 [unitless]",
    "v2_cos_raw": "raw CosSim v2 [unitless]",
    "same_extremum_type": "Extremum type correct [fraction]",
    "energy_ae": "Energy MAE [eV]",
    "forces_mae": "Force MAE [eV/Å]",
}

#: Paper Table 1 columns (eigen-quantities after mass weighting and Eckart projection), plus a
#: timing column that :func:`format_table` fills when a method's results carry it.
TIME_COLUMN = "Time [ms]"
TABLE1_COLUMNS: tuple[str, ...] = (
    METRIC_COLUMNS["hessian_mae"],
    METRIC_COLUMNS["eigenvalue_mae"],
    METRIC_COLUMNS["v1_cos"],
    METRIC_COLUMNS["lambda1_mae"],
    TIME_COLUMN,
)

#: Paper Table 6 columns: raw Cartesian eigen-quantities next to the Eckart-projected ones.
TABLE6_COLUMNS: tuple[str, ...] = tuple(
    METRIC_COLUMNS[key]
    for key in ("hessian_mae", "eigenvalue_mae", "v1_cos_raw", "lambda1_mae_raw", "lambda2_mae_raw",
                "lambda1_mae", "lambda2_mae", "v1_cos", "v2_cos")
)


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
    neg_threshold: float = 0.0,
) -> dict[str, float]:
    """Hessian metrics of one molecule (paper Table 1, 3 and 6). Computed in float64.

    Keys (see :data:`METRIC_COLUMNS`):

    * ``hessian_mae``: mean |H_pred − H_true| over the 9N² Cartesian entries, eV/Å².
    * ``eigenvalue_mae``: mean |λ_pred − λ_true| over the 3N − 6 (5 linear) vibrational eigenvalues of
      the mass-weighted, Eckart-projected Hessians, eV/(Å²·amu).
    * ``lambda1_mae``, ``lambda2_mae``, ``v1_cos``, ``v2_cos``: lowest and second-lowest of those
      eigenvalues (abs. error, eV/(Å²·amu)) and |cos| of their mass-weighted eigenvectors (NaN when the
      molecule has fewer vibrational modes).
    * ``lambda1_mae_raw``, ``lambda2_mae_raw``, ``v1_cos_raw``, ``v2_cos_raw``: the same from the raw
      symmetrised Cartesian Hessians (no mass weighting, no projection; eV/Å²), Table 6.
    * ``n_neg_pred``, ``n_neg_true``: number of projected eigenvalues below ``-neg_threshold``;
      ``same_extremum_type``: 1.0 if they are equal (Table 3), else 0.0.
    * ``energy_ae`` (eV) and ``forces_mae`` (eV/Å) when both predicted and true values are given.

    Args:
        pred_hessian: (3N, 3N) or [9N²] predicted Cartesian Hessian, eV/Å².
        true_hessian: same shape, reference Hessian, eV/Å².
        pos: [N, 3] positions, Å.
        z: [N] atomic numbers.
        masses: [N] masses, amu (default ``atomic_masses(z)``).
        pred_energy: predicted energy, eV.
        true_energy: reference energy, eV.
        pred_forces: [N, 3] predicted forces, eV/Å.
        true_forces: [N, 3] reference forces, eV/Å.
        neg_threshold: eigenvalues below −this count as negative, eV/(Å²·amu).

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

    raw_p, vec_p = torch.linalg.eigh(0.5 * (hp + hp.T))
    raw_t, vec_t = torch.linalg.eigh(0.5 * (ht + ht.T))
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
    n_neg_pred = int((vib_p.eigenvalues < -neg_threshold).sum())
    n_neg_true = int((vib_t.eigenvalues < -neg_threshold).sum())
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
        **kwargs: passed on to :func:`molecule_metrics` (``neg_threshold``).

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


def aggregate_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-molecule metrics into named columns (:data:`METRIC_COLUMNS`).

    Each column is the mean over the molecules that have a finite value (so a diatomic's missing λ2
    does not poison the mean); ``same_extremum_type`` becomes the fraction of molecules whose predicted
    Hessian has the same number of negative eigenvalues as the true one (Table 3). Keys absent from all
    rows are left out.

    Args:
        rows: outputs of :func:`molecule_metrics`.

    Returns:
        Column name (with unit) → mean, plus ``"Molecules [count]"``.

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
            value a method lacks is shown as "–".
        digits: decimals.

    Returns:
        The table as lines joined by newlines: a header with units, a rule, then one row per method.
    """
    columns = [c for c in columns if any(c in r for r in results.values())]
    header = ["Method", *columns]
    body = [[method, *(f"{r[c]:.{digits}f}" if c in r else "–" for c in columns)]
            for method, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)])
