"""Baseline Hessians of the same model: autodiff (−∂F/∂x of the direct forces) and finite differences.

These are the paper's "AD EquiformerV2" row (Table 1) and the finite-difference reference of
Fig. 2. Both return the flat layout of ``hip.data.graphs`` (HORM's ``hessian`` field), eV/Å².

Batched molecules are handled together: "row r" of every molecule (its coordinate r = 3·atom + xyz)
is seeded at once, so a batch costs 3·max(N_b) backward passes (autodiff) or 6·max(N_b) force
evaluations (finite differences) rather than Σ_b 3N_b or 6N_b. Forces of molecule b depend only on
its own positions, so the seeds do not mix molecules.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def _row_seeds(batch, rows: torch.Tensor, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeds selecting coordinate ``r`` of every molecule, and the flat targets of the rows.

    Returns:
        seeds [R, N, 3] (1 where atom ``r // 3``, component ``r % 3`` of a molecule exists);
        flat [R, N, 3] int64 position of entry (r, c) with c = 3·local_atom + xyz (of (c, r) if
        ``transpose``) in the batch's flat layout, −1 where r does not exist for that molecule.
    """
    natoms, node_batch = batch.natoms, batch.batch
    first_atom = torch.cumsum(natoms, 0) - natoms
    offset = torch.cumsum(9 * natoms**2, 0) - 9 * natoms**2
    local = torch.arange(node_batch.numel(), device=natoms.device) - first_atom[node_batch]  # [N]
    n3 = 3 * natoms[node_batch]  # [N]
    xyz = torch.arange(3, device=natoms.device)
    r = rows[:, None, None]
    valid = (r < n3[None, :, None]).expand(-1, -1, 3)
    seeds = ((local[None, :, None] == r // 3) & (xyz == r % 3)).to(batch.pos.dtype)
    c = 3 * local[None, :, None] + xyz
    flat = offset[node_batch][None, :, None] + (c * n3[None, :, None] + r if transpose else r * n3[None, :, None] + c)
    return seeds, torch.where(valid, flat, -1)


def _scatter_rows(hessian: torch.Tensor, flat: torch.Tensor, values: torch.Tensor) -> None:
    keep = flat >= 0
    hessian[flat[keep]] = values[keep]


def _row_count(batch, max_rows: int | None) -> int:
    n_rows = 3 * int(batch.natoms.max())
    return n_rows if max_rows is None else min(max_rows, n_rows)


def prefers_vectorized(device: torch.device) -> bool:
    """Whether batched-gradient AD beats the row loop on ``device`` (the default of :func:`autodiff_hessian`).

    On a CPU the loop wins in time and memory over ``is_grads_batched`` chunks of 16 rows
    (``scripts/bench_hessian.py`` measures both; README "Performance"). On a
    GPU one batched backward pass per chunk replaces 16 launch-bound ones; this choice is not
    measured yet (no GPU was available to this project): ``scripts/bench_hessian.py --device cuda``
    prints both.

    Args:
        device: where the model runs.
    """
    return torch.device(device).type != "cpu"


def autodiff_hessian(model: torch.nn.Module, batch, chunk_size: int | None = 16,
                     vectorized: bool | None = None, max_rows: int | None = None) -> torch.Tensor:
    """Hessian as −∂F/∂x of the model's direct forces (paper Table 1, "AD").

    Args:
        model: a :class:`~hip.model.hip_equiformer.HIPEquiformerV2` (anything whose
            ``model(batch, hessian=False)["forces"]`` is [N, 3] eV/Å).
        batch: collated molecules.
        chunk_size: rows per batched backward pass (bounds memory); ``None``: all at once.
        vectorized: batched gradients (``is_grads_batched``), ``False`` loops over rows; ``None``
            (default) takes the faster one for the batch's device (:func:`prefers_vectorized`).
        max_rows: compute only rows r < ``max_rows`` of every molecule, leaving the others zero
            (benchmarks extrapolate the cost of the rest from them).

    Returns:
        [Σ_b 9N_b²] flat Hessian, eV/Å². Not symmetrised: direct forces are not exactly
        conservative, and that asymmetry is part of what the baseline shows. As in HORM's and
        the HIP authors' code, fairchem's edge frames are constants for autograd (it detaches
        them), so this is the derivative at fixed frames (see :func:`finite_difference_hessian`).
    """
    if vectorized is None:
        vectorized = prefers_vectorized(batch.pos.device)
    batch = batch.clone()
    batch.pos = batch.pos.detach().requires_grad_(True)
    with torch.enable_grad():
        forces = model(batch, hessian=False)["forces"]
        n_rows = _row_count(batch, max_rows)
        hessian = forces.new_zeros(int((9 * batch.natoms**2).sum()))
        step = max(n_rows, 1) if (chunk_size is None or not vectorized) else chunk_size
        for start in range(0, n_rows, step):
            rows = torch.arange(start, min(start + step, n_rows), device=forces.device)
            seeds, flat = _row_seeds(batch, rows)
            if vectorized:
                (grad,) = torch.autograd.grad(forces, batch.pos, seeds, retain_graph=True, is_grads_batched=True)
            else:
                grad = torch.stack([torch.autograd.grad(forces, batch.pos, seed, retain_graph=True)[0]
                                    for seed in seeds])
            _scatter_rows(hessian, flat, -grad.detach())
    return hessian


def finite_difference_hessian(model: torch.nn.Module, batch, delta: float = 1e-3, seed: int = 0,
                              fixed_frames: bool = False, max_rows: int | None = None) -> torch.Tensor:
    """Central finite differences of the forces: H[i, r] = −(F_i(x + δ e_r) − F_i(x − δ e_r)) / 2δ.

    Costs 6·max(N_b) force evaluations. The graphs are kept fixed (displacements of ``delta`` Å
    are assumed not to cross a cutoff), and every evaluation uses the same random edge-frame roll
    (``seed``) so that the forces are a smooth function of the positions.

    Args:
        model: as for :func:`autodiff_hessian`.
        batch: collated molecules.
        delta: displacement, Å.
        seed: RNG seed fixed for every force evaluation.
        fixed_frames: keep the edge frames of the undisplaced geometry. fairchem detaches the
            frames from autograd, so this is the finite-difference counterpart of
            :func:`autodiff_hessian`; ``False`` (default) lets the frames follow the atoms, the
            plain derivative of the forces.
        max_rows: displace only coordinates r < ``max_rows`` of every molecule (as in
            :func:`autodiff_hessian`).

    Returns:
        [Σ_b 9N_b²] flat Hessian, eV/Å²: entry (i, r) is −∂F_i/∂x_r, as in :func:`autodiff_hessian`.
    """
    batch = batch.clone()
    pos = batch.pos.detach()
    n_rows = _row_count(batch, max_rows)
    hessian = pos.new_zeros(int((9 * batch.natoms**2).sum()))

    def forces_at(displaced: torch.Tensor) -> torch.Tensor:
        batch.pos = displaced
        with torch.random.fork_rng(devices=[pos.device] if pos.is_cuda else []), torch.no_grad():
            torch.manual_seed(seed)
            return model(batch, hessian=False)["forces"]

    with model.fixed_edge_frames() if fixed_frames else nullcontext():
        forces_at(pos)  # records the frames of the undisplaced geometry when they are fixed
        for r in range(n_rows):
            seeds, flat = _row_seeds(batch, torch.tensor([r], device=pos.device), transpose=True)
            column = -(forces_at(pos + delta * seeds[0]) - forces_at(pos - delta * seeds[0])) / (2 * delta)
            _scatter_rows(hessian, flat, column[None])
    return hessian
