"""HIP-EquiformerV2: fairchem's EquiformerV2 backbone, energy and direct-force heads, HIP readout.

Module names equal those of the HIP authors' ``EquiformerV2_OC20`` (``../shared/reference``), so
their checkpoints and HORM's load by name. Defaults are the paper's Table 4 (with the authors'
``attn_value_channels = 16``), except the energy normaliser, which is a fixed number (HORM's
77.81317) so that batch composition never changes a molecule's energy.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Literal

import torch
from fairchem.core.models.base import GraphData
from fairchem.core.models.equiformer_v2.edge_rot_mat import init_edge_rot_mat
from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding, SO3_LinearV2, SO3_Rotation
from fairchem.core.models.equiformer_v2.transformer_block import (
    FeedForwardNetwork,
    SO2EquivariantGraphAttention,
    TransBlockV2,
)
from fairchem.core.models.equiformer_v2.weight_initialization import eqv2_init_weights
from fairchem.core.models.scn.smearing import GaussianSmearing
from torch import nn

from hip.data.graphs import GraphBuilder
from hip.model.fast_layers import set_fast_layers, use_fast_layers
from hip.model.hessian_head import (
    SO2EdgeMessages,
    assemble_hessian,
    irreps_to_blocks,
    irreps_to_cartesian_basis,
    project_l2,
)

#: Top-level modules that make up the Hessian readout (trainable in frozen mode).
HESSIAN_MODULES = ("hessian_layers", "hessian_head", "hessian_edge_message_proj", "hessian_node_proj")

#: HORM's energy normaliser: predicted ``ae`` = Σ node energies / 77.81317.
HORM_ENERGY_NORMALIZER = 77.81317


def edge_geometry(pos: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge vectors pos[source] − pos[target] [E, 3] (Å) and their lengths [E] (Å)."""
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    return vec, vec.norm(dim=-1)


def edge_rot_mat(edge_vec: torch.Tensor) -> torch.Tensor:
    """fairchem's edge frames [E, 3, 3] (rows: roll axis z, edge direction x, −x×z), detached.

    In float64 the random roll is drawn exactly as in float32 (fairchem's ``init_edge_rot_mat`` on the
    float32 vectors consumes the same random numbers) and the frame is then rebuilt in float64 around
    the exact edge direction, so float32 and float64 runs with one seed differ by rounding only.
    """
    if edge_vec.dtype != torch.float64:
        return init_edge_rot_mat(edge_vec)
    roll = init_edge_rot_mat(edge_vec.float())[:, 0].double()
    x = edge_vec / edge_vec.norm(dim=1, keepdim=True)
    z = roll - (roll * x).sum(dim=1, keepdim=True) * x
    z = z / z.norm(dim=1, keepdim=True)
    return torch.stack((z, x, -torch.linalg.cross(x, z, dim=1)), dim=1).detach()


class HIPEquiformerV2(EquiformerV2Backbone):
    """Energy, forces and Hessian of molecules in one forward pass (paper §3, Fig. 1).

    Args:
        num_layers, sphere_channels, attn_hidden_channels, num_heads, attn_alpha_channels,
        attn_value_channels, ffn_hidden_channels, lmax, mmax, grid_resolution, num_sphere_samples,
        edge_channels: backbone sizes (paper Table 4).
        max_radius: backbone graph cutoff, Å; must equal the data pipeline's ``cutoff``.
        max_neighbors: backbone neighbour cap (the data pipeline applies it).
        cutoff_hessian: Hessian-graph cutoff, Å (Table 4: 12 Å).
        num_layers_hessian: extra ``TransBlockV2`` layers on the Hessian graph (3 frozen, 1 e2e).
        avg_degree: the backbone's edge-degree-embedding rescale (mean edges per node).
        energy_normalizer: divisor of the summed node energies; a number, or ``"batch_mean"`` for
            the HIP authors' behaviour (mean atom count of the batch; compatibility only).
        max_num_elements, weight_init: as in fairchem.

    ``forward(batch)`` takes a collated batch of :class:`hip.data.graphs.MoleculeGraph` and returns
    ``{"energy": [B] eV (the ``ae`` target), "forces": [N, 3] eV/Å, "hessian": [Σ 9N_b²] eV/Å²}``.

    Speed: the fast paths (:meth:`set_fast_paths`, on by default) give fairchem's numbers to float32
    rounding in less time; :meth:`cache_backbone` (opt-in) skips the frozen backbone for molecules
    it has seen.
    """

    def __init__(
        self,
        num_layers: int = 4,
        sphere_channels: int = 128,
        attn_hidden_channels: int = 64,
        num_heads: int = 4,
        attn_alpha_channels: int = 64,
        attn_value_channels: int = 16,
        ffn_hidden_channels: int = 128,
        lmax: int = 4,
        mmax: int = 2,
        grid_resolution: int = 18,
        num_sphere_samples: int = 128,
        edge_channels: int = 128,
        max_radius: float = 12.0,
        max_neighbors: int = 32,
        cutoff_hessian: float = 12.0,
        num_layers_hessian: int = 3,
        avg_degree: float = 23.395238876342773,
        energy_normalizer: float | Literal["batch_mean"] = HORM_ENERGY_NORMALIZER,
        max_num_elements: int = 90,
        weight_init: str = "uniform",
    ):
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__(
            use_pbc=False, regress_forces=True, otf_graph=False, max_neighbors=max_neighbors,
            max_radius=max_radius, max_num_elements=max_num_elements, num_layers=num_layers,
            sphere_channels=sphere_channels, attn_hidden_channels=attn_hidden_channels,
            num_heads=num_heads, attn_alpha_channels=attn_alpha_channels,
            attn_value_channels=attn_value_channels, ffn_hidden_channels=ffn_hidden_channels,
            norm_type="layer_norm_sh", lmax_list=[lmax], mmax_list=[mmax],
            grid_resolution=grid_resolution, num_sphere_samples=num_sphere_samples,
            edge_channels=edge_channels, use_atom_edge_embedding=True, share_atom_edge_embedding=False,
            distance_function="gaussian", attn_activation="silu", use_s2_act_attn=False,
            use_attn_renorm=True, ffn_activation="silu", use_gate_act=False, use_grid_mlp=True,
            use_sep_s2_act=True, alpha_drop=0.0, drop_path_rate=0.0, proj_drop=0.0,
            weight_init=weight_init, avg_degree=avg_degree,
        )
        if not (energy_normalizer == "batch_mean" or float(energy_normalizer) > 0):
            raise ValueError(f"energy_normalizer must be a positive number or 'batch_mean', got {energy_normalizer!r}")
        if lmax < 2 or mmax < 2:
            raise ValueError(f"the Hessian readout needs lmax, mmax ≥ 2 (l=2 irreps), got {lmax}, {mmax}")
        # Forces come from a head, not from −dE/dx: stops fairchem's conditional_grad from forcing
        # autograd on in every forward.
        self.direct_forces = True
        #: The constructor kwargs: what checkpoints store to rebuild the model.
        self.config = config
        self.energy_normalizer = energy_normalizer
        self.cutoff_hessian = cutoff_hessian
        self.backbone_frozen = False

        self.energy_block = FeedForwardNetwork(
            sphere_channels, ffn_hidden_channels, 1, self.lmax_list, self.mmax_list, self.SO3_grid,
            activation="silu", use_grid_mlp=True,
        )
        self.force_block = SO2EquivariantGraphAttention(
            output_channels=1, **self._attention_kwargs(self.SO3_rotation), activation="silu")

        # Hessian readout: its own graph, Wigner matrices and radial basis (reference README §1-2).
        self.SO3_rotation_hessian = nn.ModuleList([SO3_Rotation(lmax)])
        self.distance_expansion_hessian = GaussianSmearing(0.0, cutoff_hessian, 600, 2.0)
        self.hessian_layers = nn.ModuleList(
            self._transformer_block(self.SO3_rotation_hessian) for _ in range(num_layers_hessian))
        self.hessian_head = SO2EdgeMessages(
            output_channels=1, **self._attention_kwargs(self.SO3_rotation_hessian), activation="silu")
        self.hessian_edge_message_proj = SO3_LinearV2(num_heads * attn_value_channels, 1, lmax=2)
        self.hessian_node_proj = SO3_LinearV2(sphere_channels, 1, lmax=2)
        self.register_buffer("irreps_basis", irreps_to_cartesian_basis(), persistent=False)
        init = partial(eqv2_init_weights, weight_init=weight_init)
        for name in ("energy_block", "force_block", *HESSIAN_MODULES):
            getattr(self, name).apply(init)
        use_fast_layers(self)
        self.set_fast_paths(True)
        self.cache_backbone(None)
        self._compiled, self._compiled_enabled = None, False

    def set_fast_paths(self, enabled: bool = True) -> None:
        """Use the fast paths (default) or the reference path, which runs fairchem's own forwards.

        The fast paths (:mod:`hip.model.fast_layers`; the readout's l ≤ 2-only messages; reuse of
        the backbone's Wigner matrices and radial basis when the Hessian graph is the backbone graph)
        compute the same numbers as the reference path up to float rounding (measured ≤ 1e-6
        relative in float32, ``tests/model/test_hip_equiformer.py``); they change no parameter.
        """
        set_fast_layers(self, enabled)
        self.fast_paths = enabled

    def _attention_kwargs(self, so3_rotation: nn.ModuleList) -> dict:
        """Arguments shared by fairchem's graph-attention modules, on the graph of ``so3_rotation``."""
        return dict(
            sphere_channels=self.sphere_channels, hidden_channels=self.attn_hidden_channels,
            num_heads=self.num_heads, attn_alpha_channels=self.attn_alpha_channels,
            attn_value_channels=self.attn_value_channels, lmax_list=self.lmax_list, mmax_list=self.mmax_list,
            SO3_rotation=so3_rotation, mappingReduced=self.mappingReduced, SO3_grid=self.SO3_grid,
            max_num_elements=self.max_num_elements, edge_channels_list=self.edge_channels_list,
        )

    def _transformer_block(self, so3_rotation: nn.ModuleList) -> TransBlockV2:
        """A backbone-like ``TransBlockV2`` (no dropout, no drop path) on the graph of ``so3_rotation``."""
        kwargs = self._attention_kwargs(so3_rotation)
        kwargs["attn_hidden_channels"] = kwargs.pop("hidden_channels")
        return TransBlockV2(**kwargs, ffn_hidden_channels=self.ffn_hidden_channels,
                            output_channels=self.sphere_channels, use_grid_mlp=True, norm_type="layer_norm_sh")

    @contextmanager
    def fixed_edge_frames(self):
        """Within this context, every forward pass reuses the edge frames of the first one.

        fairchem detaches the edge frames (Wigner matrices) from the graph, so autograd sees them
        as constants; finite differences with fixed frames are the exact counterpart of that
        derivative (:func:`hip.model.autodiff.finite_difference_hessian`).
        """
        self._frames = {}
        try:
            yield
        finally:
            self._frames = None

    def _edge_frames(self, key: str, edge_vec: torch.Tensor) -> torch.Tensor:
        """Per-edge rotation matrices [E, 3, 3] (fairchem's, with a random roll about the edge).

        A graph without edges (a single atom, atoms beyond every cutoff) has none: fairchem's
        ``init_edge_rot_mat`` would fail on its ``torch.min`` over the empty edge set.
        """
        if edge_vec.shape[0] == 0:
            return edge_vec.new_zeros((0, 3, 3))
        frames = getattr(self, "_frames", None)
        if frames is None:
            return edge_rot_mat(edge_vec)
        if key not in frames:
            frames[key] = edge_rot_mat(edge_vec)
        return frames[key]

    def _init_edge_rot_mat(self, data, edge_index, edge_distance_vec):
        return self._edge_frames("backbone", edge_distance_vec)

    # fairchem's backbone reads ``data.atomic_numbers`` and asks ``generate_graph`` for the graph;
    # ours is precomputed per molecule by the data pipeline.
    def generate_graph(self, data, **_) -> GraphData:
        vec, dist = edge_geometry(data.pos, data.edge_index)
        return GraphData(edge_index=data.edge_index, edge_distance=dist, edge_distance_vec=vec,
                         cell_offsets=None, offset_distances=None, neighbors=None, batch_full=data.batch,
                         atomic_numbers_full=data.atomic_numbers.long(), node_offset=0)

    def set_compiled(self, enabled: bool = True, mode: str | None = None, backend: str = "inductor") -> None:
        """Run the forward through ``torch.compile`` (:mod:`hip.model.compiled`) or eagerly (default).

        The compiled path runs the fast paths' modules; it compiles on the first pass (a minute or
        more for the paper-size model on a CPU, seconds from the on-disk cache in a later process,
        :func:`hip.model.compiled.cache_dir`) and serves every molecule size and batch from that one
        compile. Outputs equal the eager fast path's to float32 rounding for the same seed (the edge
        frames are drawn eagerly, ``tests/model/test_compile.py``). Passes that differentiate with
        respect to positions (the autodiff baseline) run eagerly.

        Args:
            enabled: compile (``True``) or go back to the eager forward.
            mode: ``torch.compile`` mode, e.g. ``"reduce-overhead"`` (CUDA graphs) on a GPU.
            backend: ``torch.compile`` backend (``"aot_eager"`` traces without generating code).

        Raises:
            ValueError: ``enabled`` with the fast paths off (the reference path stays eager).
        """
        if enabled and not self.fast_paths:
            raise ValueError("set_compiled: the compiled path runs the fast paths; call set_fast_paths(True) first")
        from hip.model.compiled import CompiledForward

        current = self._compiled
        if enabled and (current is None or (current.mode, current.backend) != (mode, backend)):
            self._compiled = CompiledForward(mode, backend)  # switching back and forth keeps the compiled graphs
        self._compiled_enabled = enabled

    @property
    def compiled(self) -> bool:
        """Whether :meth:`set_compiled` switched the compiled path on."""
        return getattr(self, "_compiled_enabled", False)

    def forward(self, batch, hessian: bool = True) -> dict[str, torch.Tensor]:
        """Energy ``[B]`` eV, forces ``[N, 3]`` eV/Å and (if ``hessian``) the flat Hessian, eV/Å².

        With :meth:`freeze_backbone`, the backbone and energy/force heads run without autograd.
        """
        keys = self._cache_keys(batch)
        cached = self._from_cache(keys) if keys is not None else None
        compiled = self._compiled if self.compiled and self.fast_paths and not batch.pos.requires_grad else None
        graph = None
        if cached is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
                if compiled is None:
                    embedding = super().forward(batch)
                    x, graph = embedding["node_embedding"], embedding["graph"]
                    node_energy, forces = self._node_energy_forces(
                        x, graph.atomic_numbers_full, graph.edge_distance, graph.edge_index)
                    energy_sum = node_energy.new_zeros(batch.num_graphs).index_add_(0, batch.batch, node_energy)
                else:
                    embedding, energy_sum, forces = compiled.backbone_pass(self, batch)
                    x = self._embedding(embedding)
            if keys is not None:
                self._store(keys, batch.natoms, x.embedding, energy_sum, forces)
        else:
            embedding, energy_sum, forces = cached
            x = self._embedding(embedding)
        normalizer = batch.natoms.float().mean() if self.energy_normalizer == "batch_mean" else self.energy_normalizer
        out = {"energy": energy_sum / normalizer, "forces": forces}
        if hessian:
            if compiled is None:
                out["hessian"] = self._hessian(x, batch, graph)
            else:
                shared = cached is None and self._shares_backbone_graph(batch)
                out["hessian"] = compiled.hessian_pass(self, x.embedding, batch, shared)
        return out

    def _embedding(self, embedding: torch.Tensor) -> SO3_Embedding:
        """fairchem's node-feature container around a tensor [N, (lmax+1)², C]."""
        x = SO3_Embedding(0, self.lmax_list.copy(), self.sphere_channels, embedding.device, embedding.dtype)
        x.set_embedding(embedding)
        return x

    def _node_energy_forces(self, x: SO3_Embedding, z: torch.Tensor, radial: torch.Tensor,
                            edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Node energies [N] (eV, before the normaliser) and forces [N, 3] eV/Å from node features.

        Args:
            x: node features; z: [N] int64; radial: [E, D] backbone radial basis; edge_index: [2, E].
        """
        node_energy = self.energy_block(x).embedding[:, 0, 0]
        forces = self.force_block(x, z, radial, edge_index)
        return node_energy, forces.embedding[:, 1:4, 0]

    # ---- frozen-backbone cache (opt-in) ------------------------------------------------------
    def cache_backbone(self, max_gb: float | None) -> None:
        """Keep the frozen backbone's outputs for every molecule seen, up to ``max_gb`` GiB.

        With a frozen backbone (:meth:`freeze_backbone`) a molecule's node features, energy and
        forces never change, so training can compute them once per molecule instead of once per
        epoch; only the Hessian readout then runs. Molecules are recognised by their atomic numbers
        and positions, bit for bit, so any batch composition is served and training and validation
        molecules never mix. Entries live on the model's device: (lmax+1)²·sphere_channels numbers
        per atom (12.5 KiB for the paper-size model in float32, 175 KiB for a 14-atom molecule).
        Molecules beyond the budget are recomputed at every pass. A cached molecule keeps the edge
        frames' random roll of its first pass (outputs change by ~1e-7 relative). Passes that
        differentiate with respect to positions (the AD baseline) bypass the cache. Load new weights
        only with the cache off (``None``), which also empties it.

        Args:
            max_gb: budget in GiB; ``None`` switches the cache off.

        Raises:
            ValueError: the backbone is not frozen, or ``max_gb`` is not positive.
        """
        if max_gb is not None and not self.backbone_frozen:
            raise ValueError("cache_backbone needs a frozen backbone (call freeze_backbone() first)")
        if max_gb is not None and not max_gb > 0:
            raise ValueError(f"cache_backbone: max_gb must be positive, got {max_gb!r}")
        self._backbone_cache = None if max_gb is None else {}
        self._backbone_cache_budget = 0 if max_gb is None else int(max_gb * 2**30)
        self._backbone_cache_bytes = 0

    def _cache_keys(self, batch) -> list[bytes] | None:
        """One key per molecule (its atomic numbers and positions as bytes); None when not caching."""
        if getattr(self, "_backbone_cache", None) is None or not self.backbone_frozen or batch.pos.requires_grad:
            return None
        sizes = batch.natoms.tolist()
        z = batch.atomic_numbers.detach().cpu().split(sizes)
        pos = batch.pos.detach().cpu().split(sizes)
        return [zb.numpy().tobytes() + pb.numpy().tobytes() for zb, pb in zip(z, pos, strict=True)]

    def _from_cache(self, keys: list[bytes]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(node features [N, (lmax+1)², C], Σ node energies [B], forces [N, 3]) if every molecule is cached."""
        entries = [self._backbone_cache.get(key) for key in keys]
        if any(entry is None for entry in entries):
            return None
        embedding, energy_sum, forces = zip(*entries, strict=True)
        return torch.cat(embedding), torch.stack(energy_sum), torch.cat(forces)

    def _store(self, keys: list[bytes], natoms: torch.Tensor, embedding: torch.Tensor, energy_sum: torch.Tensor,
               forces: torch.Tensor) -> None:
        sizes = natoms.tolist()
        for key, x, energy, f in zip(keys, embedding.detach().split(sizes), energy_sum.detach(),
                                     forces.detach().split(sizes), strict=True):
            size = (x.numel() + f.numel() + 1) * x.element_size()
            if key in self._backbone_cache or self._backbone_cache_bytes + size > self._backbone_cache_budget:
                continue
            self._backbone_cache[key] = (x.clone(), energy.clone(), f.clone())
            self._backbone_cache_bytes += size

    def _shares_backbone_graph(self, batch) -> bool:
        """True when the Hessian graph has the backbone graph's edges (in order) and radial basis."""
        edges, hessian_edges = batch.edge_index, batch.edge_index_hessian
        basis, hessian_basis = self.distance_expansion, self.distance_expansion_hessian
        return (edges.shape == hessian_edges.shape and basis.coeff == hessian_basis.coeff
                and torch.equal(edges, hessian_edges) and torch.equal(basis.offset, hessian_basis.offset))

    def _hessian(self, x: SO3_Embedding, batch, graph: GraphData | None) -> torch.Tensor:
        """Flat Hessian from node features; ``graph``: the backbone's graph of this pass (None if cached)."""
        edge_index = batch.edge_index_hessian
        rotation = self.SO3_rotation_hessian[0]
        if self.fast_paths and graph is not None and self._shares_backbone_graph(batch):
            # HORM-sized molecules: both graphs hold every pair within 12 Å. Take the backbone's
            # edge frames, Wigner matrices (with their m-primary cache) and radial basis.
            backbone = self.SO3_rotation[0]
            for name in ("device", "dtype", "wigner", "wigner_inv", "_hip_m_primary"):
                if hasattr(backbone, name):
                    setattr(rotation, name, getattr(backbone, name))
            radial = graph.edge_distance
        else:
            vec, dist = edge_geometry(batch.pos, edge_index)
            rotation.set_wigner(self._edge_frames("hessian", vec))
            radial = self.distance_expansion_hessian(dist)
        z = batch.atomic_numbers.long()
        for layer in self.hessian_layers:
            x = layer(x, z, radial, edge_index, batch=batch.batch)
        messages = self.hessian_head(x, z, radial, edge_index)
        basis = self.irreps_basis.to(x.embedding.dtype)
        edge_blocks = irreps_to_blocks(project_l2(self.hessian_edge_message_proj, messages), basis)
        node_blocks = irreps_to_blocks(project_l2(self.hessian_node_proj, x.embedding), basis)
        size = int((9 * batch.natoms**2).sum())
        return assemble_hessian(edge_blocks, node_blocks, batch.hessian_edge_scatter,
                                batch.hessian_node_scatter, size)

    def graph_builder(self) -> GraphBuilder:
        """The data transform that builds graphs with this model's cutoffs and neighbour cap."""
        return GraphBuilder(self.max_radius, self.max_neighbors, self.cutoff_hessian)

    # ---- parameter groups -------------------------------------------------------------------
    def hessian_parameters(self) -> list[nn.Parameter]:
        """Parameters of the Hessian readout (:data:`HESSIAN_MODULES`)."""
        return [p for name in HESSIAN_MODULES for p in getattr(self, name).parameters()]

    def freeze_backbone(self) -> None:
        """Freeze backbone and energy/force heads: only the Hessian readout stays trainable.

        The frozen part is kept in eval mode and runs under ``torch.no_grad`` (paper §4: HIP on a
        fixed HORM backbone).
        """
        self.backbone_frozen = True
        hessian = {id(p) for p in self.hessian_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in hessian)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            for name, module in self.named_children():
                if name not in HESSIAN_MODULES:
                    module.eval()
        return self
