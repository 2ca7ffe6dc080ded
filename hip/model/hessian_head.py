"""The HIP Hessian readout (paper §3.2, Fig. 1): messages → l ≤ 2 irreps → 3×3 blocks → flat Hessian.

Given node features after the Hessian layers, the readout

1. runs an SO(2) graph-attention layer on the Hessian graph and keeps its per-edge messages
   *before* attention weighting and aggregation (paper eq. 6: messages as atom-pair features);
2. keeps their l ≤ 2 coefficients (``1x0e + 1x1e + 1x2e``: 9 numbers) and projects all channels to
   one (``hessian_edge_message_proj``); the node features go through ``hessian_node_proj`` alike;
3. turns each set of 9 coefficients into a 3×3 block with the real Wigner-3j symbols (paper eq. 7)
   ``M[a, b] = Σ_{L, m} C^{(1,1,L)}[a, b, m] f_{L, m}``: l=0 → isotropic, l=1 → antisymmetric,
   l=2 → symmetric traceless part;
4. adds every edge block M_(s→t) to H[s, t] and its transpose to H[t, s], every node block N_i and
   its transpose to H[i, i] with one ``index_add_`` per block kind, giving H = H' + H'ᵀ.

In this fairchem stack the l=1 coefficients are Cartesian (x, y, z) (their Wigner-D of degree 1 is
the rotation matrix itself), which matches the basis of e3nn's ``wigner_3j``; the rotation
equivariance test in ``tests/model`` checks this rather than assuming it.
"""

from __future__ import annotations

import torch
from e3nn import o3
from einops import einsum
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding, SO3_LinearV2

from hip.model.fast_layers import FastSO2Attention

#: Number of spherical-harmonic coefficients with l ≤ 2.
NUM_L2_COEFFICIENTS = 9


def irreps_to_cartesian_basis(dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stacked real Wigner-3j symbols C^(1,1,L), L = 0, 1, 2, in e3nn's basis.

    Returns:
        [9, 3, 3]: entry ``[L² + m, a, b]`` maps coefficient (L, m) to Cartesian block entry (a, b).
    """
    return torch.cat([o3.wigner_3j(1, 1, L, dtype=dtype).permute(2, 0, 1) for L in range(3)])


def irreps_to_blocks(coefficients: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """3×3 Cartesian blocks from l ≤ 2 coefficients (paper eq. 7).

    Args:
        coefficients: [K, 9] features ordered (l=0; l=1 m=−1..1; l=2 m=−2..2).
        basis: [9, 3, 3] from :func:`irreps_to_cartesian_basis`.

    Returns:
        [K, 3, 3] blocks, in the coefficients' unit.
    """
    return einsum(coefficients, basis, "k c, c a b -> k a b")


class SO2EdgeMessages(FastSO2Attention):
    """fairchem's SO(2) graph attention, returning per-edge messages instead of aggregating them.

    The parameters (and so the state-dict names) are fairchem's. The reference path (``fast =
    False``) runs the same steps as the parent's ``forward`` up to the second SO(2) convolution and
    then rotates the messages back to the global frame; it stops before the attention softmax, the
    sum over incoming edges and ``proj``, which the Hessian readout does not use (reference README
    §1, §3: the authors' ``hessian_no_attn_weights=True``). The parent cannot return messages, hence
    this subclass. The fast path (default) computes only what the readout reads: no attention-logit
    channels, and only the l ≤ 2 coefficients of the second convolution and of the rotation back
    (the Wigner matrices are block-diagonal in l, so these do not depend on l > 2).
    """

    def forward(self, x: SO3_Embedding, atomic_numbers: torch.Tensor, edge_distance: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        """Per-edge messages.

        Args:
            x: node features, embedding [N, (lmax+1)², C].
            atomic_numbers: [N] int64.
            edge_distance: [E, D] radial basis of the edge lengths.
            edge_index: [2, E] (source, target) of the graph whose Wigner matrices are set in
                ``self.SO3_rotation``.

        Returns:
            [E, K, num_heads · attn_value_channels] messages in the global frame; the first 9
            coefficients (l ≤ 2) are those of the reference path. K = 9 on the fast path,
            (lmax+1)² on the reference path.
        """
        if self._fast_supported():
            messages, _ = self.m_primary_messages(x, atomic_numbers, edge_distance, edge_index, out_lmax=2,
                                                  attention=False)
            return self.rotate_back(messages, out_lmax=2)
        source, target = edge_index
        x_edge = torch.cat((edge_distance, self.source_embedding(atomic_numbers[source]),
                            self.target_embedding(atomic_numbers[target])), dim=1)
        message = SO3_Embedding(0, self.lmax_list.copy(), 2 * x.num_channels, x.device, x.dtype)
        message.set_embedding(torch.cat((x.embedding[source], x.embedding[target]), dim=2))
        message.set_lmax_mmax(self.lmax_list.copy(), self.mmax_list.copy())
        message._rotate(self.SO3_rotation, self.lmax_list, self.mmax_list)
        message, extra = self.so2_conv_1(message, x_edge)
        gating = extra.narrow(1, self.num_heads * self.attn_alpha_channels,
                              extra.shape[1] - self.num_heads * self.attn_alpha_channels)
        message.embedding = self.s2_act(gating, message.embedding, self.SO3_grid)
        message = self.so2_conv_2(message, x_edge)
        message._rotate_inv(self.SO3_rotation, self.mappingReduced)
        return message.embedding


def project_l2(projection: SO3_LinearV2, features: torch.Tensor) -> torch.Tensor:
    """Apply an ``SO3_LinearV2`` with lmax 2 to the l ≤ 2 part of features.

    Args:
        projection: ``SO3_LinearV2(C, 1, lmax=2)``.
        features: [K, (lmax+1)², C].

    Returns:
        [K, 9]: one channel of (l=0, l=1, l=2) coefficients.
    """
    embedding = SO3_Embedding(0, [2], features.shape[-1], features.device, features.dtype)
    embedding.set_embedding(features[:, :NUM_L2_COEFFICIENTS])
    return projection(embedding).embedding[..., 0]


def assemble_hessian(edge_blocks: torch.Tensor, node_blocks: torch.Tensor, edge_scatter: torch.Tensor,
                     node_scatter: torch.Tensor, size: int) -> torch.Tensor:
    """Scatter 3×3 blocks and their transposes into a batch's flat, symmetric Hessian.

    Args:
        edge_blocks: [E_h, 3, 3] block M_e of each Hessian-graph edge (s → t), eV/Å².
        node_blocks: [N, 3, 3] block N_i of each atom, eV/Å².
        edge_scatter: [2, 9·E_h] flat positions of M_e at (s, t) and of M_eᵀ at (t, s)
            (``hip.data.graphs.block_scatter_index``, shifted per molecule by collation).
        node_scatter: [2, 9·N] flat positions of N_i and N_iᵀ at (i, i).
        size: Σ_b 9·N_b², the length of the flat Hessian.

    Returns:
        [size] flat Hessian H = H' + H'ᵀ in HORM's layout, eV/Å²; exactly symmetric.
    """
    hessian = edge_blocks.new_zeros(size)
    hessian.index_add_(0, edge_scatter.reshape(-1), edge_blocks.reshape(-1).repeat(2))
    hessian.index_add_(0, node_scatter.reshape(-1), node_blocks.reshape(-1).repeat(2))
    return hessian
