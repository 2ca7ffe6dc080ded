"""Per-molecule graphs and the flat-Hessian scatter indices (the data side of the HIP readout).

Every molecule becomes a :class:`MoleculeGraph` holding

* ``edge_index`` ``[2, E]``: the backbone's radius graph (``cutoff``, at most ``max_neighbors``
  sources per target, nearest kept),
* ``edge_index_hessian`` ``[2, E_h]``: the Hessian graph (``cutoff_hessian``, no neighbour cap),
* ``hessian_edge_scatter`` ``[2, 9·E_h]`` and ``hessian_node_scatter`` ``[2, 9·N]``: positions in
  the flat Hessian where the readout's 3×3 blocks (row 0) and their transposes (row 1) are added.

Edge convention (as in fairchem and the HIP reference): ``edge_index[0]`` is the source atom s,
``edge_index[1]`` the target t, and the edge vector is ``pos[s] − pos[t]``. Both directions of every
pair are present; there are no self-loops.

Flat layout (HORM's ``hessian`` field): molecule b contributes its row-major ``(3N_b, 3N_b)``
matrix with row/column index ``3·atom + xyz``; a batch concatenates the molecules in order. The
scatter indices of block element ``[a, b]`` of the block for atom pair (i, j) are

    direct     (3i + a)·3N + (3j + b)        transposed     (3j + b)·3N + (3i + a)

so ``H.index_add_(0, scatter.reshape(-1), torch.cat([M.reshape(-1)] * 2))`` adds M to (i, j) and
Mᵀ to (j, i). :meth:`MoleculeGraph.__inc__` shifts them by 9·N_b² per preceding molecule when PyG
collates a batch, so one ``index_add_`` serves a whole batch of molecules of different sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch_geometric.data import Batch, Data

from hip.constants import HORM_ELEMENTS, MIN_INTERATOMIC_DISTANCE

HESSIAN_SCATTER_KEYS = ("hessian_edge_scatter", "hessian_node_scatter")


class MoleculeGraph(Data):
    """A molecule with its two graphs and flat-Hessian scatter indices.

    Fields: ``z`` [N] int64 atomic numbers; ``pos`` [N, 3] Å; ``natoms`` [] int64; the graph fields
    of the module docstring; optional labels ``energy`` [] eV, ``ae`` [] eV, ``forces`` [N, 3] eV/Å,
    ``hessian`` [9N²] eV/Å²; ``dataset_idx`` [] int64 when the molecule came from a dataset.
    """

    @property
    def atomic_numbers(self) -> torch.Tensor:
        """Alias of ``z`` under fairchem's name: [N] int64."""
        return self.z

    def __inc__(self, key, value, *args, **kwargs):
        if key in HESSIAN_SCATTER_KEYS:
            return 9 * self.num_nodes**2
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key, value, *args, **kwargs):
        if key in HESSIAN_SCATTER_KEYS:
            return -1
        return super().__cat_dim__(key, value, *args, **kwargs)


def check_molecule(z: torch.Tensor, pos: torch.Tensor, where: str = "molecule") -> None:
    """Raise ``ValueError`` naming ``where`` and the field if a geometry is unusable.

    Args:
        z: [N] atomic numbers; each must be one of HORM's elements H, C, N, O, F.
        pos: [N, 3] positions, Å; finite, no two atoms closer than 0.1 Å.
        where: context for the message, e.g. ``"shard.lmdb key b'17'"``.
    """
    if pos.ndim != 2 or pos.shape[1] != 3 or z.shape != pos.shape[:1]:
        raise ValueError(f"{where}: field 'pos' has shape {tuple(pos.shape)} and 'z' {tuple(z.shape)};"
                         " expected [N, 3] and [N]")
    if pos.shape[0] == 0:
        raise ValueError(f"{where}: field 'pos' holds no atoms")
    unknown = sorted(set(z.tolist()) - set(HORM_ELEMENTS))
    if unknown:
        raise ValueError(f"{where}: field 'z' has atomic numbers {unknown} outside the supported "
                         f"elements {HORM_ELEMENTS} (H, C, N, O, F)")
    if not torch.isfinite(pos).all():
        raise ValueError(f"{where}: field 'pos' contains NaN or inf")
    if pos.shape[0] > 1:
        dist = torch.cdist(pos.double(), pos.double())
        dist.fill_diagonal_(math.inf)
        i, j = divmod(int(dist.argmin()), pos.shape[0])
        if dist[i, j] < MIN_INTERATOMIC_DISTANCE:
            raise ValueError(f"{where}: field 'pos' has atoms {i} and {j} only {float(dist[i, j]):.4f} Å "
                             f"apart (minimum {MIN_INTERATOMIC_DISTANCE} Å)")


def radius_graph(pos: torch.Tensor, cutoff: float, max_neighbors: int | None = None) -> torch.Tensor:
    """Radius graph of one molecule in plain torch.

    Args:
        pos: [N, 3] positions, Å.
        cutoff: pairs with distance < ``cutoff`` (Å) are connected.
        max_neighbors: keep at most this many nearest sources per target (``None``: no cap).

    Returns:
        edge_index [2, E] int64, row 0 source, row 1 target, sorted by target then distance.
    """
    n = pos.shape[0]
    dist = torch.cdist(pos, pos)
    dist = dist.masked_fill(~(dist < cutoff) | torch.eye(n, dtype=torch.bool, device=pos.device), math.inf)
    dist, source = dist.sort(dim=1, stable=True)
    if max_neighbors is not None:
        dist, source = dist[:, :max_neighbors], source[:, :max_neighbors]
    target, slot = torch.nonzero(torch.isfinite(dist), as_tuple=True)
    return torch.stack([source[target, slot], target])


def block_scatter_index(rows: torch.Tensor, cols: torch.Tensor, natoms: int) -> torch.Tensor:
    """Flat positions of 3×3 blocks (i, j) and of their transposes in a (3N)² row-major Hessian.

    Args:
        rows: [K] atom index i of each block.
        cols: [K] atom index j of each block.
        natoms: N of the molecule.

    Returns:
        [2, 9K] int64; element ``9k + 3a + b`` of row 0 is where block k's ``[a, b]`` goes at (i, j),
        of row 1 where it goes transposed, at (j, i).
    """
    xyz = torch.arange(3, device=rows.device)
    r = (3 * rows[:, None, None] + xyz[None, :, None]).expand(-1, 3, 3)
    c = (3 * cols[:, None, None] + xyz[None, None, :]).expand(-1, 3, 3)
    return torch.stack([(r * 3 * natoms + c).reshape(-1), (c * 3 * natoms + r).reshape(-1)])


def build_molecule_graph(
    z: torch.Tensor,
    pos: torch.Tensor,
    *,
    cutoff: float,
    max_neighbors: int | None,
    cutoff_hessian: float,
    where: str = "molecule",
    **fields: torch.Tensor,
) -> MoleculeGraph:
    """Validate a molecule and build both graphs and the Hessian scatter indices.

    Args:
        z: [N] atomic numbers (H, C, N, O, F).
        pos: [N, 3] positions, Å.
        cutoff, max_neighbors: backbone radius graph (Å, count).
        cutoff_hessian: Hessian-graph cutoff, Å (paper Table 4: 12 Å); no neighbour cap.
        where: context for error messages.
        **fields: labels and metadata copied onto the graph (``energy``, ``ae``, ``forces``,
            ``hessian``, ``dataset_idx``...).

    Raises:
        ValueError: from :func:`check_molecule`, or if ``hessian`` does not hold (3N)² entries.
    """
    z = torch.as_tensor(z, dtype=torch.long)
    pos = torch.as_tensor(pos, dtype=torch.get_default_dtype())
    check_molecule(z, pos, where)
    n = pos.shape[0]
    hessian = fields.get("hessian")
    if hessian is not None and hessian.numel() != 9 * n * n:
        raise ValueError(f"{where}: field 'hessian' has {hessian.numel()} entries, expected (3N)² = "
                         f"{9 * n * n} for N = {n}")
    edge_index_hessian = radius_graph(pos, cutoff_hessian)
    nodes = torch.arange(n)
    return MoleculeGraph(
        z=z,
        pos=pos,
        natoms=torch.tensor(n),
        edge_index=radius_graph(pos, cutoff, max_neighbors),
        edge_index_hessian=edge_index_hessian,
        hessian_edge_scatter=block_scatter_index(edge_index_hessian[0], edge_index_hessian[1], n),
        hessian_node_scatter=block_scatter_index(nodes, nodes, n),
        **fields,
    )


class GraphBuilder:
    """Dataset transform: a labelled molecule (``z``, ``pos``, labels) → :class:`MoleculeGraph`.

    Holds the graph settings so that DataLoader workers build graphs and indices in parallel.
    """

    def __init__(self, cutoff: float = 12.0, max_neighbors: int | None = 32, cutoff_hessian: float = 12.0):
        self.cutoff = cutoff
        self.max_neighbors = max_neighbors
        self.cutoff_hessian = cutoff_hessian

    def __call__(self, z: torch.Tensor, pos: torch.Tensor, where: str = "molecule",
                 **fields: torch.Tensor) -> MoleculeGraph:
        return build_molecule_graph(z, pos, cutoff=self.cutoff, max_neighbors=self.max_neighbors,
                                    cutoff_hessian=self.cutoff_hessian, where=where, **fields)

    def __repr__(self) -> str:
        return (f"GraphBuilder(cutoff={self.cutoff}, max_neighbors={self.max_neighbors}, "
                f"cutoff_hessian={self.cutoff_hessian})")


def collate(graphs: Sequence[MoleculeGraph]) -> Batch:
    """PyG collation of :class:`MoleculeGraph` objects; indices are shifted per molecule."""
    return Batch.from_data_list(list(graphs))


def collate_molecules(molecules: Sequence, graph_builder: GraphBuilder | None = None) -> Batch:
    """Batch molecules for inference, without a dataset.

    Args:
        molecules: ``ase.Atoms`` objects or ``(atomic_numbers [N], positions [N, 3] Å)`` pairs.
        graph_builder: graph settings; use ``model.graph_builder()`` so they match the model
            (default: HORM's 12 Å cutoff, 32 neighbours, 12 Å Hessian cutoff).

    Returns:
        A collated batch that ``model(batch)`` accepts.

    Raises:
        ValueError: naming the molecule's position in ``molecules`` and the bad field.
    """
    graph_builder = graph_builder or GraphBuilder()
    graphs = []
    for i, molecule in enumerate(molecules):
        if hasattr(molecule, "get_atomic_numbers"):
            z, pos = molecule.get_atomic_numbers(), molecule.get_positions()
        else:
            z, pos = molecule
        graphs.append(graph_builder(torch.as_tensor(z), torch.as_tensor(pos), where=f"molecule {i}"))
    return collate(graphs)


def split_hessian(hessian: torch.Tensor, natoms: torch.Tensor | Sequence[int]) -> list[torch.Tensor]:
    """Split a batch's flat Hessian into per-molecule matrices.

    Args:
        hessian: [Σ_b 9·N_b²] flat Hessians in HORM's layout, eV/Å².
        natoms: [B] atom counts N_b.

    Returns:
        B tensors of shape (3N_b, 3N_b), views of ``hessian``.

    Raises:
        ValueError: if the length does not match Σ 9·N_b².
    """
    sizes = [3 * int(n) for n in natoms]
    if hessian.numel() != sum(s * s for s in sizes):
        raise ValueError(f"flat hessian has {hessian.numel()} entries, natoms {list(map(int, natoms))} "
                         f"need {sum(s * s for s in sizes)}")
    return [block.view(s, s) for block, s in zip(hessian.split([s * s for s in sizes]), sizes, strict=True)]
