"""Statistics of a HORM dataset and its graphs.

Prints the number of molecules, atoms per molecule, the average degree (edges per node) of the
backbone radius graph and of the Hessian graph (EquiformerV2 normalises messages by this average
degree), element counts and the mean |H| entry (eV/Å², the MAE of predicting zeros).

    python scripts/dataset_stats.py ../shared/horm/sample_100.lmdb --cutoff 12 --max-neighbors 20
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from tqdm import tqdm

from hip.constants import HORM_ELEMENTS
from hip.data import GraphBuilder, HormDataset


def _neighbors(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a .lmdb shard or a directory of shards")
    parser.add_argument("--cutoff", type=float, default=12.0, help="backbone cutoff, Å")
    parser.add_argument("--max-neighbors", type=_neighbors, default=20, help="backbone cap ('none': no cap)")
    parser.add_argument("--cutoff-hessian", type=float, default=12.0, help="Hessian-graph cutoff, Å")
    parser.add_argument("--limit", type=int, default=None, help="use only the first LIMIT entries")
    parser.add_argument("--exclude-elements", type=int, nargs="*", default=[9],
                        help="atomic numbers whose molecules are dropped (default: 9, F)")
    args = parser.parse_args(argv)

    dataset = HormDataset(args.path, GraphBuilder(args.cutoff, args.max_neighbors, args.cutoff_hessian),
                          indices=None if args.limit is None else range(args.limit),
                          exclude_elements=args.exclude_elements)
    natoms, edges, hessian_edges, abs_h, h_entries = [], 0, 0, 0.0, 0
    elements: Counter[int] = Counter()
    for graph in tqdm(dataset, desc="molecules"):
        natoms.append(int(graph.natoms))
        edges += graph.edge_index.shape[1]
        hessian_edges += graph.edge_index_hessian.shape[1]
        abs_h += float(graph.hessian.abs().double().sum())
        h_entries += graph.hessian.numel()
        elements.update(graph.z.tolist())
    if not natoms:
        raise SystemExit(f"{dataset}: no molecules")
    n = torch.tensor(natoms, dtype=torch.float64)
    stats = {
        "molecules": len(dataset),
        "avg_atoms": float(n.mean()),
        "avg_degree": edges / n.sum().item(),
        "avg_degree_hessian": hessian_edges / n.sum().item(),
        "mean_abs_hessian": abs_h / h_entries,
    }
    print(dataset)
    print(f"molecules            {stats['molecules']} ({dataset.num_excluded} excluded by element)")
    print(f"atoms per molecule   mean {stats['avg_atoms']:.2f}, min {int(n.min())}, "
          f"median {int(n.median())}, max {int(n.max())}")
    print(f"backbone graph       avg degree {stats['avg_degree']:.3f} (cutoff {args.cutoff} Å, "
          f"max_neighbors {args.max_neighbors})")
    print(f"Hessian graph        avg degree {stats['avg_degree_hessian']:.3f} "
          f"(cutoff {args.cutoff_hessian} Å, no cap)")
    symbols = dict(zip(HORM_ELEMENTS, "HCNOF", strict=True))
    print("elements             " + ", ".join(f"{symbols[z]} {c}" for z, c in sorted(elements.items())))
    print(f"mean |H|             {stats['mean_abs_hessian']:.4f} eV/Å²")
    return stats


if __name__ == "__main__":
    main()
