"""The compiled path: HIP-EquiformerV2's forward through ``torch.compile``, one compile for every size.

:meth:`hip.model.hip_equiformer.HIPEquiformerV2.set_compiled` switches it on. The forward is cut in
an eager prelude and two compiled, tensor-in tensor-out functions:

- the prelude (eager, O(E) work) draws the random edge frames (so a seed gives the eager path's frames
  and outputs, and the compiled graphs hold no random numbers), decides whether the Hessian graph is
  the backbone graph (``torch.equal``, a host sync), checks the atomic numbers against the embedding
  table and reads the Hessian's length Σ 9·N_b² (host reads): the data-dependent Python choices
  fairchem's and our eager forward make;
- :func:`backbone_and_heads`: Wigner matrices, embeddings, the backbone's blocks, the energy and
  force heads (our composition of fairchem's modules, without fairchem's ``atomic_numbers.max().item()``
  check, the graph-parallel branches and ``init_edge_rot_mat``'s data-dependent ``if``);
- :func:`hessian_readout`: Wigner matrices of the Hessian graph, its layers and the readout up to
  the 3×3 blocks.

Both graphs are traced once with symbolic atom and edge counts (``torch._dynamo.mark_dynamic`` on
those dimensions of the inputs, :func:`dynamic`; no duck sizing), so one compile serves every
molecule size and batch; counts 0 and 1 (a graph without edges, a one-atom batch) are specialised by
PyTorch and compile once more. The molecule count and the Hessian's length never enter a graph: the
per-molecule energy sums and the scatter into the flat Hessian run eagerly after the graphs (one
``index_add_`` each). ``fullgraph=True``: a graph break raises instead of running a slow path.
Compiled artefacts go to Inductor's on-disk caches (FX graph and AOT autograd) under
:func:`cache_dir`. A pass that differentiates with respect to positions (the autodiff Hessian
baseline) runs eagerly: AOT autograd has no double backward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding, SO3_Rotation

from hip.model.hessian_head import assemble_hessian, irreps_to_blocks, project_l2

#: Environment variable naming Inductor's cache directory (PyTorch's own name).
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
#: Where the compiled path keeps Inductor's caches unless ``TORCHINDUCTOR_CACHE_DIR`` is set.
DEFAULT_CACHE_DIR = Path("~/.cache/hip/inductor")


def cache_dir() -> Path:
    """Inductor's cache directory for the compiled path: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    :data:`DEFAULT_CACHE_DIR`, which is then written into the environment (read by Inductor, and
    inherited by worker processes). Holds the FX-graph cache (``fxgraph/``), the AOT autograd cache
    (``aotautograd/``) and the generated C++ kernels."""
    if not os.environ.get(CACHE_ENV):
        os.environ[CACHE_ENV] = str(DEFAULT_CACHE_DIR.expanduser())
    return Path(os.environ[CACHE_ENV])


def prepare_for_tracing(model) -> None:
    """Make the model's constants Python constants before tracing (eager, cheap after the first call).

    fairchem computes coefficient indices with ``masked_select`` (a data-dependent shape) and caches
    them on first use; this fills those caches eagerly, with the (lmax, mmax) pairs the fast paths ask
    for, so that traced code only reads them. The edge-degree embedding's coefficient count is a 0-d
    tensor in fairchem (``m_size[0]``), which a reshape would read back from the tensor: it becomes an int.
    """
    lmax, mmax = model.lmax_list[0], model.mmax_list[0]
    for module in model.modules():
        if isinstance(module, SO3_Rotation):
            module.mapping.coefficient_idx(lmax, mmax)
            module.mapping.get_rotate_inv_rescale(lmax, mmax)
    model.SO3_grid[lmax][lmax].mapping.coefficient_idx(lmax, lmax)
    degree = model.edge_degree_embedding
    degree.m_0_num_coefficients = int(degree.m_0_num_coefficients)


def dynamic(*inputs: tuple[torch.Tensor, int]) -> list[torch.Tensor]:
    """The tensors of ``(tensor, dim)`` pairs, with ``dim`` marked dynamic (an atom or edge count) so
    that the first compile already serves every size; counts below 2 stay specialised (PyTorch's 0/1
    rule), so a graph without edges or a one-atom batch compiles once more."""
    for tensor, dim in inputs:
        if tensor.shape[dim] >= 2:
            torch._dynamo.mark_dynamic(tensor, dim)
    return [tensor for tensor, _ in inputs]


def edge_vectors(pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """pos[source] − pos[target] [E, 3] (Å), without autograd: the edge frames' input."""
    with torch.no_grad():
        return pos[edge_index[0]] - pos[edge_index[1]]


def backbone_and_heads(model, z: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                       frames: torch.Tensor, batch_index: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fairchem's EquiformerV2 backbone forward, single resolution and no graph parallelism, then the heads.

    Args:
        model: a :class:`~hip.model.hip_equiformer.HIPEquiformerV2`.
        z: [N] atomic numbers (int64); pos: [N, 3] Å; edge_index: [2, E] backbone graph.
        frames: [E, 3, 3] edge frames (``model._edge_frames``); batch_index: [N] molecule of each atom.

    Returns:
        node features [N, (lmax+1)², C], node energies [N] (before summing and the normaliser, eV),
        forces [N, 3] eV/Å.
    """
    from hip.model.hip_equiformer import edge_geometry

    _, dist = edge_geometry(pos, edge_index)
    model.SO3_rotation[0].set_wigner(frames)
    x = SO3_Embedding(len(z), model.lmax_list, model.sphere_channels, pos.device, pos.dtype)
    x.embedding[:, 0, :] = model.sphere_embedding(z)
    radial = model.distance_expansion(dist)
    degree = model.edge_degree_embedding(z, radial, edge_index, len(z), 0)
    x.embedding = x.embedding + degree.embedding
    for block in model.blocks:
        x = block(x, z, radial, edge_index, batch=batch_index, node_offset=0)
    x.embedding = model.norm(x.embedding)
    node_energy, forces = model._node_energy_forces(x, z, radial, edge_index)
    return x.embedding, node_energy, forces


def hessian_readout(model, embedding: torch.Tensor, z: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                    frames: torch.Tensor, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian layers and readout on the Hessian graph up to the 3×3 blocks (paper §3.2, eq. 6-7).

    Args:
        embedding: [N, (lmax+1)², C] backbone node features; z, pos, batch_index as in
        :func:`backbone_and_heads`; edge_index: [2, E_h] Hessian graph; frames: [E_h, 3, 3] its edge frames.

    Returns:
        edge blocks [E_h, 3, 3] and node blocks [N, 3, 3], eV/Å² (:func:`hip.model.hessian_head.assemble_hessian`).
    """
    from hip.model.hip_equiformer import edge_geometry

    _, dist = edge_geometry(pos, edge_index)
    model.SO3_rotation_hessian[0].set_wigner(frames)
    radial = model.distance_expansion_hessian(dist)
    x = SO3_Embedding(0, model.lmax_list.copy(), model.sphere_channels, pos.device, embedding.dtype)
    x.set_embedding(embedding)
    for layer in model.hessian_layers:
        x = layer(x, z, radial, edge_index, batch=batch_index)
    messages = model.hessian_head(x, z, radial, edge_index)
    basis = model.irreps_basis.to(x.embedding.dtype)
    edge_blocks = irreps_to_blocks(project_l2(model.hessian_edge_message_proj, messages), basis)
    node_blocks = irreps_to_blocks(project_l2(model.hessian_node_proj, x.embedding), basis)
    return edge_blocks, node_blocks


class CompiledForward:
    """The two compiled functions of one model and the eager prelude that feeds them.

    Args:
        mode: ``torch.compile`` mode (``None``: default; ``"reduce-overhead"``: CUDA graphs on a GPU;
            ``"max-autotune"``).
        backend: ``torch.compile`` backend: ``"inductor"`` (default, generated kernels) or, to check
            tracing without code generation, ``"aot_eager"``.

    Traced with ``fullgraph=True``: a graph break is an error, not a silent slow path. On a CPU with
    the default mode, Inductor's C++ wrapper (``cpp_wrapper``) runs the kernels: one C++ file per graph
    instead of a Python wrapper, which compiled 1.4× faster for the tiny model and calls the kernels
    without Python overhead. The functions are built on the first call, for its device. The model is
    passed per call, not held (no reference cycle); pickling keeps only the settings.
    """

    def __init__(self, mode: str | None = None, backend: str = "inductor"):
        cache_dir()
        # No duck sizing: two dimensions that happen to be equal (atoms and edges of a small molecule)
        # would otherwise share a symbol and recompile when they differ.
        torch.fx.experimental._config.use_duck_shape = False
        self.mode, self.backend = mode, backend
        self.backbone = self.readout = self.frames = None

    def _build(self, device: torch.device) -> None:
        options = dict(backend=self.backend, fullgraph=True)
        if self.mode is not None:
            options["mode"] = self.mode
        elif device.type == "cpu" and self.backend == "inductor":
            options["options"] = {"cpp_wrapper": True}
        self.backbone = torch.compile(backbone_and_heads, **options)
        self.readout = torch.compile(hessian_readout, **options)

    def __getstate__(self) -> dict:
        return {"mode": self.mode, "backend": self.backend}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def backbone_pass(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(node features [N, (lmax+1)², C], Σ node energies per molecule [B] eV, forces [N, 3] eV/Å)."""
        prepare_for_tracing(model)
        if self.backbone is None:
            self._build(batch.pos.device)
        z = batch.atomic_numbers.long()
        if len(z) and int(z.max()) >= model.max_num_elements:
            raise ValueError(f"atomic number {int(z.max())} exceeds the model's max_num_elements "
                             f"{model.max_num_elements}")
        self.frames = model._edge_frames("backbone", edge_vectors(batch.pos, batch.edge_index))
        inputs = dynamic((z, 0), (batch.pos, 0), (batch.edge_index, 1), (self.frames, 0), (batch.batch, 0))
        embedding, node_energy, forces = self.backbone(model, *inputs)
        if self.mode == "reduce-overhead":  # CUDA graphs reuse their output buffers at the next replay
            embedding, forces = embedding.clone(), forces.clone()
        energy_sum = node_energy.new_zeros(batch.num_graphs).index_add_(0, batch.batch, node_energy)
        return embedding, energy_sum, forces

    def hessian_pass(self, model, embedding: torch.Tensor, batch, shared: bool) -> torch.Tensor:
        """Flat Hessian [Σ 9·N_b²] eV/Å²; ``shared``: the Hessian graph is this pass's backbone graph,
        whose frames are reused (as the eager fast path reuses its Wigner matrices)."""
        prepare_for_tracing(model)
        if self.readout is None:
            self._build(batch.pos.device)
        edge_index = batch.edge_index_hessian
        frames = self.frames if shared else model._edge_frames("hessian", edge_vectors(batch.pos, edge_index))
        inputs = dynamic((embedding, 0), (batch.atomic_numbers.long(), 0), (batch.pos, 0), (edge_index, 1),
                         (frames, 0), (batch.batch, 0))
        edge_blocks, node_blocks = self.readout(model, *inputs)
        size = int((9 * batch.natoms**2).sum())
        return assemble_hessian(edge_blocks, node_blocks, batch.hessian_edge_scatter, batch.hessian_node_scatter, size)
