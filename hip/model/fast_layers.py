"""Faster forwards for fairchem's EquiformerV2 modules: the same products in a better memory layout.

On a CPU, much of a HIP-EquiformerV2 forward in fairchem's code moves data between layouts rather
than computing (``scripts/bench_hessian.py --profile`` shows how much; README "Performance"):

1. S2 activations (edge messages) and grid feed-forward networks (nodes) project features to a
   spherical grid with ``einsum("bai, zic -> zbac")``. The GEMM's [grid point, item·channel] result
   is handed on as a permuted view; the SiLU and linear layers then run on that strided view and
   the projection back needs a contiguous copy of the whole grid. :func:`grid_map` keeps the grid in
   the GEMM's layout and, on a CPU, works through it a cache-sized chunk of items at a time.
2. The SO(2) graph attention rotates each edge's features into the edge frame, reorders them from
   l-primary to m-primary with a GEMM by a permutation matrix, cuts them into one block per order m with
   strided copies, and reorders back after each SO(2) convolution. :class:`FastSO2Attention` folds
   the permutation into the Wigner matrices once per graph and keeps the features m-primary until
   they are rotated back; :func:`so2_convolution` can also skip outputs nobody reads (used by the
   Hessian readout, ``hip.model.hessian_head``).

Every product is the same dot product as fairchem's, so outputs agree to float32 rounding
(``tests/model/test_hip_equiformer.py``: ≤ 3.4e-7 relative). The subclasses hold no parameters of
their own: :func:`use_fast_layers` swaps the class of fairchem's instances in place, so state-dict
names and weights are untouched. ``fast = False`` on an instance runs fairchem's forward, the
reference path that tests and ``scripts/bench_hessian.py`` compare against
(:meth:`hip.model.hip_equiformer.HIPEquiformerV2.set_fast_paths`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_geometric
from fairchem.core.common import gp_utils
from fairchem.core.models.equiformer_v2.so2_ops import SO2_Convolution
from fairchem.core.models.equiformer_v2.so3 import CoefficientMappingModule, SO3_Embedding, SO3_Rotation
from fairchem.core.models.equiformer_v2.transformer_block import FeedForwardNetwork, SO2EquivariantGraphAttention
from torch import nn

#: Grid values computed at a time on a CPU (bytes): the grid of a chunk of items stays in the
#: core's cache between the projection, the pointwise function and the projection back, with bitwise
#: equal results (timings: README "Performance").
CPU_GRID_CHUNK_BYTES = 1 << 20


def grid_map(features: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor, function,
             start: int = 0) -> torch.Tensor:
    """Coefficients → spherical grid → ``function`` at every grid point → coefficients.

    The same GEMMs as fairchem's ``einsum("bai, zic -> zbac")`` and ``einsum("bai, zbac -> zic")``,
    but the grid stays in the GEMM's layout [grid point, item, channel] (contiguous) and, on a CPU,
    is processed a chunk of items at a time (:data:`CPU_GRID_CHUNK_BYTES`).

    Args:
        features: [K, M, C] coefficients of K items (edges or atoms); M coefficients kept.
        to_grid: [B, A, M] fairchem's ``SO3_Grid.to_grid_mat`` (latitude, longitude, coefficient).
        from_grid: [B, A, M] fairchem's ``SO3_Grid.from_grid_mat``.
        function: maps grid values [B·A, k, C] to [B·A, k, C'] (acts on the channel axis only).
        start: first coefficient returned (1 skips l = 0 where the caller overwrites it).

    Returns:
        [K, M − start, C'] coefficients (a transposed view).
    """
    k_items, m, c = features.shape
    to_grid = to_grid.reshape(-1, m)
    from_grid = from_grid.reshape(to_grid.shape[0], m)[:, start:].T
    coefficient_major = features.transpose(0, 1).contiguous()  # [M, K, C]

    def project(part: torch.Tensor) -> tuple[torch.Tensor, int]:
        values = function((to_grid @ part.flatten(1)).view(to_grid.shape[0], part.shape[1], c))
        return from_grid @ values.flatten(1), values.shape[2]

    if features.device.type != "cpu" or torch.compiler.is_compiling():
        # one piece: a GPU has no core cache to fit, and Inductor fuses the steps itself (a chunk loop
        # would also fix the item count of a compiled graph)
        out, c_out = project(coefficient_major)
    else:
        step = max(1, CPU_GRID_CHUNK_BYTES // (to_grid.shape[0] * c * features.element_size()))
        chunks = [project(coefficient_major[:, first:first + step])  # one (empty) chunk for K = 0: no edges
                  for first in range(0, max(k_items, 1), step)]
        out, c_out = torch.cat([chunk for chunk, _ in chunks], dim=1), chunks[0][1]
    return out.view(from_grid.shape[0], k_items, c_out).transpose(0, 1)


class FastLayer:
    """Marks a module whose forward has a fast path; ``fast = False`` runs fairchem's forward."""

    fast: bool = True


class GridMajorFeedForwardNetwork(FeedForwardNetwork, FastLayer):
    """fairchem's feed-forward network; the fast path covers the grid-MLP, separable-S2 variant
    (EquiformerV2's ``use_grid_mlp=True, use_sep_s2_act=True``), others run fairchem's forward."""

    def forward(self, input_embedding: SO3_Embedding) -> SO3_Embedding:
        """Node features [N, (lmax+1)², C_in] → [N, (lmax+1)², C_out]."""
        if not (self.fast and self.use_grid_mlp and self.use_sep_s2_act):
            return super().forward(input_embedding)
        gating = self.scalar_mlp(input_embedding.embedding.narrow(1, 0, 1))
        hidden = self.so3_linear_1(input_embedding)
        grid = self.SO3_grid[self.max_lmax][self.max_lmax]
        index = grid.mapping.coefficient_idx(self.max_lmax, self.max_lmax)
        tensors = grid_map(hidden.embedding, grid.to_grid_mat[:, :, index], grid.from_grid_mat[:, :, index],
                           self.grid_mlp, start=1)
        hidden.embedding = torch.cat((gating, tensors), dim=1)
        return self.so3_linear_2(hidden)


# ---- SO(2) graph attention in m-primary order ----------------------------------------------------

def m_block_sizes(lmax: int, mmax: int) -> list[int]:
    """Coefficients per order m in m-primary order: lmax + 1 for m = 0, 2·(lmax − m + 1) for m > 0."""
    return [lmax + 1] + [2 * (lmax - m + 1) for m in range(1, mmax + 1)]


def m_primary_degrees(lmax: int, mmax: int) -> list[int]:
    """Degree l of each m-primary coefficient (m = 0: l = 0..lmax; each m > 0: +m then −m, l = m..lmax)."""
    nonzero_m = [degree for m in range(1, mmax + 1) for _ in (m, -m) for degree in range(m, lmax + 1)]
    return list(range(lmax + 1)) + nonzero_m


def m_primary_order(mapping: CoefficientMappingModule) -> torch.Tensor:
    """[K] for each m-primary position, the index of that coefficient in fairchem's reduced l-primary order."""
    return mapping.to_m.argmax(dim=1)


def m_primary_wigner(rotation: SO3_Rotation, mapping: CoefficientMappingModule, lmax: int,
                     mmax: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The edge-frame rotation into m-primary blocks and the rotation back, for the graph set last.

    Computed once per :meth:`SO3_Rotation.set_wigner` (cached on ``rotation``; under ``torch.compile``
    recomputed per call, and the repeats merged by the compiler's common-subexpression elimination).

    Returns:
        blocks: per order m, [E, rows_m, (lmax+1)²] rows of the Wigner matrices (m = 0: l = 0..lmax;
            m > 0: +m then −m for l = m..lmax);
        inverse: [E, (lmax+1)², K] rotation back from the K m-primary coefficients, with fairchem's
            rescaling of the l > mmax coefficients.
    """
    compiling = torch.compiler.is_compiling()
    cached = None if compiling else getattr(rotation, "_hip_m_primary", None)
    if cached is not None and cached[0] is rotation.wigner:
        return cached[1], cached[2]
    mask = rotation.mapping.coefficient_idx(lmax, mmax)
    rescale = rotation.mapping.get_rotate_inv_rescale(lmax, mmax)
    order = m_primary_order(mapping)
    forward = rotation.wigner[:, mask[order]]
    blocks = [block.contiguous() for block in forward.split(m_block_sizes(lmax, mmax), dim=1)]
    inverse = (rotation.wigner_inv[:, :, mask] * rescale)[:, :, order].contiguous()
    if not compiling:
        rotation._hip_m_primary = (rotation.wigner, blocks, inverse)
    return blocks, inverse


def so2_convolution(conv: SO2_Convolution, blocks: list[torch.Tensor], x_edge: torch.Tensor,
                    out_lmax: int | None = None, extra_from: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fairchem's ``SO2_Convolution`` on m-primary blocks, optionally computing fewer outputs.

    Args:
        conv: the convolution (its parameters are used as they are).
        blocks: per order m, the inputs in the edge frame: [E, L_0·C] for m = 0 (l-primary, then
            channel), [E, 2, L_m·C] for m > 0 (+m, −m).
        x_edge: [E, D] invariant edge features (radial basis and atom embeddings).
        out_lmax: compute output coefficients with l ≤ ``out_lmax`` only (default: all).
        extra_from: first extra m = 0 output channel computed (channels before it are skipped).

    Returns:
        [E, K', C_out] outputs in m-primary order (K' = coefficients with l ≤ ``out_lmax``), and the
        extra m = 0 channels [E, extra − extra_from] (``None`` if the convolution has none).
    """
    lmax = conv.lmax_list[0]
    out_lmax = lmax if out_lmax is None else out_lmax
    c_out = conv.m_output_channels
    if conv.rad_func is not None:
        x_edge = conv.rad_func(x_edge)
    n_extra = conv.extra_m0_output_channels or 0
    keep = out_lmax + 1
    fc = conv.fc_m0
    x_0 = blocks[0]
    if conv.rad_func is not None:
        x_0 = x_0 * x_edge.narrow(1, 0, fc.in_features)
    x_0 = F.linear(x_0, fc.weight[extra_from:n_extra + keep * c_out], fc.bias[extra_from:n_extra + keep * c_out])
    extra = x_0.narrow(1, 0, n_extra - extra_from) if n_extra else None
    outputs = [x_0.narrow(1, n_extra - extra_from, keep * c_out).view(len(x_0), keep, c_out)]
    offset = fc.in_features
    for m, x_m in enumerate(blocks[1:], start=1):
        fc = conv.so2_m_conv[m - 1].fc
        if conv.rad_func is not None:
            x_m = x_m * x_edge.narrow(1, offset, fc.in_features).unsqueeze(1)
        offset += fc.in_features
        half = fc.out_features // 2
        keep = max(out_lmax - m + 1, 0)
        if keep == 0:
            continue
        if keep * c_out == half:
            x_r, x_i = F.linear(x_m, fc.weight).split(half, dim=2)
        else:
            x_r = F.linear(x_m, fc.weight[:keep * c_out])
            x_i = F.linear(x_m, fc.weight[half:half + keep * c_out])
        real = x_r.narrow(1, 0, 1) - x_i.narrow(1, 1, 1)
        imaginary = x_r.narrow(1, 1, 1) + x_i.narrow(1, 0, 1)
        outputs.append(torch.cat((real, imaginary), dim=1).view(len(x_m), 2 * keep, c_out))
    return torch.cat(outputs, dim=1), extra


def m_blocks(features: torch.Tensor, lmax: int, mmax: int) -> list[torch.Tensor]:
    """Split m-primary features [E, K, C] into the blocks :func:`so2_convolution` reads."""
    parts = features.split(m_block_sizes(lmax, mmax), dim=1)
    return [parts[0].flatten(1)] + [p.unflatten(1, (2, -1)).flatten(2) for p in parts[1:]]


class FastSO2Attention(SO2EquivariantGraphAttention, FastLayer):
    """fairchem's SO(2) graph attention computed in m-primary order (module docstring, item 2).

    The fast path covers EquiformerV2's configuration (separable S2 activation, attention before the
    activation, atom-type edge embeddings, no shared radial weights, one resolution, no graph
    parallelism); other settings run fairchem's forward.
    """

    def _fast_supported(self) -> bool:
        return (self.fast and self.use_sep_s2_act and not self.use_gate_act and not self.use_s2_act_attn
                and self.use_atom_edge_embedding and not self.use_m_share_rad and self.num_resolutions == 1
                and not gp_utils.initialized())

    def m_primary_messages(self, x: SO3_Embedding, atomic_numbers: torch.Tensor, edge_distance: torch.Tensor,
                           edge_index: torch.Tensor, out_lmax: int | None = None,
                           attention: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-edge messages in the edge frame, m-primary, before attention weighting.

        Args:
            x: node features, embedding [N, (lmax+1)², C].
            atomic_numbers: [N] int64.
            edge_distance: [E, D] radial basis of the edge lengths.
            edge_index: [2, E] (source, target) of the graph whose Wigner matrices are set.
            out_lmax: compute the messages' coefficients with l ≤ ``out_lmax`` only.
            attention: also return the attention-logit features (else they are not computed).

        Returns:
            messages [E, K', H·V] (m-primary, l ≤ ``out_lmax``) and attention features [E, H·A] or ``None``.
        """
        source, target = edge_index
        x_edge = torch.cat((edge_distance, self.source_embedding(atomic_numbers[source]),
                            self.target_embedding(atomic_numbers[target])), dim=1)
        lmax, mmax = self.lmax_list[0], self.mmax_list[0]
        rotation, _ = m_primary_wigner(self.SO3_rotation[0], self.mappingReduced, lmax, mmax)
        pairs = torch.cat((x.embedding[source], x.embedding[target]), dim=2)
        blocks = [torch.bmm(w, pairs) for w in rotation]
        blocks = [blocks[0].flatten(1)] + [b.unflatten(1, (2, -1)).flatten(2) for b in blocks[1:]]
        n_alpha = self.num_heads * self.attn_alpha_channels
        hidden, extra = so2_convolution(self.so2_conv_1, blocks, x_edge, extra_from=0 if attention else n_alpha)
        gating = extra.narrow(1, n_alpha, extra.shape[1] - n_alpha) if attention else extra
        grid = self.SO3_grid[lmax][mmax]
        order = m_primary_order(self.mappingReduced)
        tensors = grid_map(hidden, grid.to_grid_mat[:, :, order], grid.from_grid_mat[:, :, order],
                           self.s2_act.s2_act.act, start=1)
        hidden = torch.cat((self.s2_act.scalar_act(gating).unsqueeze(1), tensors), dim=1)
        messages, _ = so2_convolution(self.so2_conv_2, m_blocks(hidden, lmax, mmax), x_edge, out_lmax)
        return messages, extra.narrow(1, 0, n_alpha) if attention else None

    def rotate_back(self, messages: torch.Tensor, out_lmax: int | None = None) -> torch.Tensor:
        """m-primary edge-frame messages [E, K', C] (l ≤ ``out_lmax``) → global frame [E, (out_lmax+1)², C]."""
        lmax, mmax = self.lmax_list[0], self.mmax_list[0]
        _, inverse = m_primary_wigner(self.SO3_rotation[0], self.mappingReduced, lmax, mmax)
        if out_lmax is not None and out_lmax < lmax:
            keep = [i for i, degree in enumerate(m_primary_degrees(lmax, mmax)) if degree <= out_lmax]
            inverse = inverse[:, :(out_lmax + 1) ** 2, keep]
        return torch.bmm(inverse, messages)

    def forward(self, x: SO3_Embedding, atomic_numbers: torch.Tensor, edge_distance: torch.Tensor,
                edge_index: torch.Tensor, node_offset: int = 0) -> SO3_Embedding:
        """Node features [N, (lmax+1)², C] → attention output [N, (lmax+1)², output_channels]."""
        if not self._fast_supported():
            return super().forward(x, atomic_numbers, edge_distance, edge_index, node_offset)
        messages, alpha = self.m_primary_messages(x, atomic_numbers, edge_distance, edge_index)
        alpha = self.alpha_act(self.alpha_norm(alpha.reshape(-1, self.num_heads, self.attn_alpha_channels)))
        alpha = torch.einsum("bik, ik -> bi", alpha, self.alpha_dot)
        # num_nodes given: torch_geometric would otherwise read max(index) back from the device
        alpha = torch_geometric.utils.softmax(alpha, edge_index[1], num_nodes=len(x.embedding))
        alpha = alpha.reshape(len(alpha), 1, self.num_heads, 1)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        shape = messages.shape
        messages = (messages.view(*shape[:2], self.num_heads, self.attn_value_channels) * alpha).view(shape)
        messages = self.rotate_back(messages)
        out = SO3_Embedding(0, self.lmax_list.copy(), shape[2], x.device, x.dtype)
        out.set_embedding(messages)
        out._reduce_edge(edge_index[1] - node_offset, len(x.embedding))
        return self.proj(out)


#: fairchem class → its fast subclass.
FAST_CLASSES = {FeedForwardNetwork: GridMajorFeedForwardNetwork, SO2EquivariantGraphAttention: FastSO2Attention}


def use_fast_layers(model: nn.Module) -> None:
    """Give every fairchem module of ``model`` that has a fast subclass that class (in place).

    fairchem's backbone builds its blocks itself, so the subclasses cannot be passed in; swapping
    the class keeps each instance's parameters, buffers and state-dict names.
    """
    for module in model.modules():
        fast = FAST_CLASSES.get(type(module))
        if fast is not None:
            module.__class__ = fast


def set_fast_layers(model: nn.Module, enabled: bool) -> None:
    """Run the fast paths (``True``) or fairchem's own forwards (``False``) in every fast module."""
    for module in model.modules():
        if isinstance(module, FastLayer):
            module.fast = enabled
