"""Training losses: element-wise Hessian MAE/MSE, the eigen-subspace loss, energy and force terms.

Paper §3.3 (eq. 8 and 9) and appendix A.5.1 (Table 6). All terms act on raw Cartesian quantities in
eV, eV/Å and eV/Å²: there is no mass weighting and no Eckart projection during training (those belong
to the evaluation, :mod:`hip.vibrations` and :mod:`hip.metrics`).

Flat-Hessian layout: a batch's Hessians are one 1-D tensor concatenating each molecule's row-major
``(3N_b, 3N_b)`` matrix (index ``3·atom + xyz``); ``natoms`` [B] gives the sizes N_b.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

#: Weight keys understood by :func:`hip_loss`, in the order the terms are computed.
LOSS_TERMS: tuple[str, ...] = ("energy", "forces", "hessian_mae", "hessian_mse", "eigen_subspace")
#: The terms that need a predicted Hessian.
HESSIAN_TERMS: tuple[str, ...] = ("hessian_mae", "hessian_mse", "eigen_subspace")


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction has shape {tuple(pred.shape)}, target {tuple(target.shape)}")


def hessian_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise Hessian MAE, paper eq. 8 with |·|.

    A mean over all Σ_b 9·N_b² entries of the batch, so larger molecules weigh more (as in the authors'
    ``torch.nn.L1Loss`` over the concatenated Hessians).

    Args:
        pred: [Σ 9N_b²] flat predicted Hessians, eV/Å².
        target: same shape, DFT Hessians, eV/Å².

    Returns:
        Scalar, eV/Å².

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred, target, "hessian_mae")
    return F.l1_loss(pred, target)


def hessian_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise Hessian MSE, paper eq. 8 with (·)²: mean over all Σ_b 9·N_b² entries.

    Args:
        pred: [Σ 9N_b²] flat predicted Hessians, eV/Å².
        target: same shape, DFT Hessians, eV/Å².

    Returns:
        Scalar, (eV/Å²)².

    Raises:
        ValueError: if the shapes differ.
    """
    _check_same_shape(pred, target, "hessian_mse")
    return F.mse_loss(pred, target)


def pad_hessians(
    flat: torch.Tensor, natoms: torch.Tensor | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter a batch's flat Hessians into a zero-padded ``[B, D, D]`` tensor, D = 3·max N_b.

    No Python loop: the entries of molecule b fill the top-left ``3N_b × 3N_b`` block, and since the
    flat layout is row-major per molecule, a ``masked_scatter`` in (b, row, col) order places them.
    Differentiable with respect to ``flat``.

    Args:
        flat: [Σ 9N_b²] flat Hessians (any unit).
        natoms: [B] atom counts N_b.

    Returns:
        ``(padded [B, D, D], valid [B, D] bool)``, ``valid[b, i]`` true for i < 3N_b.

    Raises:
        ValueError: if ``flat`` does not hold Σ 9N_b² entries.
    """
    sizes = 3 * torch.as_tensor(natoms, device=flat.device).long()
    if flat.ndim != 1 or flat.numel() != int((sizes * sizes).sum()):
        raise ValueError(f"flat hessian has shape {tuple(flat.shape)}; natoms {(sizes // 3).tolist()} "
                         f"need [{int((sizes * sizes).sum())}]")
    dim = int(sizes.max())
    valid = torch.arange(dim, device=flat.device)[None, :] < sizes[:, None]
    mask = valid[:, :, None] & valid[:, None, :]
    padded = flat.new_zeros(len(sizes), dim, dim).masked_scatter(mask, flat)
    return padded, valid


def eigen_subspace_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    natoms: torch.Tensor | Sequence[int],
    k: int | None = 8,
) -> torch.Tensor:
    """Eigen-subspace loss, paper eq. 9: mean over molecules of mean|V_kᵀ H_pred V_k − diag(λ_k)|.

    Per molecule, ``(λ, V)`` is the ascending eigendecomposition of the *true* Hessian (symmetrised,
    since DFT labels are symmetric only to ~0.08 eV/Å²), ``V_k`` its k lowest eigenvectors; the term is
    the mean over the ``k × k`` entries, so off-diagonal leakage counts too, and the molecule terms are
    averaged (reference README §6). A molecule with 3N_b < k uses all its 3N_b eigenvectors and a mean
    over 3N_b × 3N_b entries. Raw Cartesian Hessians: no mass weighting or Eckart projection; with k = 8
    the subspace holds the ~6 rigid-body modes and the two lowest vibrations.

    The batch is handled at once: all molecules are padded to the largest 3N with a diagonal value
    above every spectrum (a Gershgorin bound), so the padding never enters the k lowest eigenpairs; one
    batched ``eigh`` of the labels runs under ``torch.no_grad()``; the prediction enters only through
    batched matmuls. Gradients flow to ``pred`` only; nothing backpropagates through an eigensolver.

    Args:
        pred: [Σ 9N_b²] flat predicted Hessians, eV/Å².
        target: same shape, DFT Hessians, eV/Å².
        natoms: [B] atom counts N_b.
        k: subspace size; ``None`` takes every eigenvector of each molecule.

    Returns:
        Scalar, eV/Å².

    Raises:
        ValueError: if the shapes differ, disagree with ``natoms``, or k < 1.
    """
    _check_same_shape(pred, target, "eigen_subspace_loss")
    if k is not None and k < 1:
        raise ValueError(f"eigen_subspace_loss: k must be >= 1 or None, got {k}")
    natoms = torch.as_tensor(natoms, device=pred.device).long()
    with torch.no_grad():
        true, valid = pad_hessians(target.detach(), natoms)
        true = 0.5 * (true + true.mT)
        above_spectrum = true.abs().sum(-1).amax() + 1.0  # Gershgorin: every |λ| ≤ max row sum
        true = true + torch.diag_embed((~valid).to(true.dtype) * above_spectrum)
        evals, evecs = torch.linalg.eigh(true)
        dim = true.shape[-1]
        kk = dim if k is None else min(k, dim)
        lam = evals[:, :kk]
        vk = evecs[:, :, :kk] * valid[:, :, None]  # exact zeros on the padding rows
        k_b = (3 * natoms).clamp(max=kk)
        used = torch.arange(kk, device=pred.device)[None, :] < k_b[:, None]
        entries = used[:, :, None] & used[:, None, :]  # [B, kk, kk]
    hp, _ = pad_hessians(pred, natoms)
    vk = vk.to(hp.dtype)
    residual = vk.mT @ hp @ vk - torch.diag_embed(lam.to(hp.dtype))
    per_molecule = (residual.abs() * entries).sum((1, 2)) / (k_b * k_b).to(hp.dtype)
    return per_molecule.mean()


def hip_loss(
    pred: Mapping[str, torch.Tensor],
    batch: Any,
    weights: Mapping[str, float],
    eigen_k: int | None = 8,
) -> dict[str, torch.Tensor]:
    """The training objective: a weighted sum of energy, force and Hessian terms.

    Terms (each unweighted in the output; a term whose weight is 0 or absent is not computed):

    * ``"energy"``: MAE of ``pred["energy"]`` against ``batch["ae"]``, eV.
    * ``"forces"``: MAE over all force components, eV/Å.
    * ``"hessian_mae"`` / ``"hessian_mse"``: :func:`hessian_mae` / :func:`hessian_mse`.
    * ``"eigen_subspace"``: :func:`eigen_subspace_loss` with ``k = eigen_k``.

    The authors' defaults are energy 1, forces 25, hessian_mae 10, and eigen_subspace 1 with k = 8 in
    the ``eigen8`` preset (reference README §5–6).

    Args:
        pred: ``"energy"`` [B] eV, ``"forces"`` [N, 3] eV/Å, ``"hessian"`` [Σ 9N_b²] eV/Å² (only the
            keys needed by the non-zero terms).
        batch: a PyG batch (or mapping) with ``ae`` [B] eV, ``forces`` [N, 3] eV/Å, ``hessian``
            [Σ 9N_b²] eV/Å², ``natoms`` [B].
        weights: term name → weight (≥ 0), keys from :data:`LOSS_TERMS`.
        eigen_k: subspace size of the eigen term (``None``: full spectrum).

    Returns:
        Each computed term under its name, and ``"loss"`` = Σ weight · term (scalar tensors).

    Raises:
        ValueError: on an unknown weight key, a negative weight, all weights zero, or shape mismatches.
    """
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown loss weight(s) {unknown}; valid keys are {list(LOSS_TERMS)}")
    negative = {key: w for key, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"loss weights must be >= 0, got {negative}")
    active = [term for term in LOSS_TERMS if weights.get(term, 0.0) != 0.0]
    if not active:
        raise ValueError(f"all loss weights are zero: {dict(weights)}")

    out: dict[str, torch.Tensor] = {}
    for term in active:
        if term == "energy":
            _check_same_shape(pred["energy"], batch["ae"], "energy")
            out[term] = F.l1_loss(pred["energy"], batch["ae"])
        elif term == "forces":
            _check_same_shape(pred["forces"], batch["forces"], "forces")
            out[term] = F.l1_loss(pred["forces"], batch["forces"])
        elif term == "hessian_mae":
            out[term] = hessian_mae(pred["hessian"], batch["hessian"])
        elif term == "hessian_mse":
            out[term] = hessian_mse(pred["hessian"], batch["hessian"])
        else:
            out[term] = eigen_subspace_loss(pred["hessian"], batch["hessian"], batch["natoms"], k=eigen_k)
    out["loss"] = sum(weights[term] * out[term] for term in active)
    return out
