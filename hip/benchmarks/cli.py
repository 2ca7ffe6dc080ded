"""Command-line options shared by scripts/bench_relax.py, bench_ts_search.py and bench_zpe.py."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hip.optimize import OptimizerSpec


def add_common_arguments(parser, data: Sequence[str], output: str, max_molecules: int | None,
                         methods: Sequence[OptimizerSpec] = (), energy: str = "model", time_limit: float = 0.0) -> None:
    """Add the options every downstream benchmark script shares to an ``argparse`` parser.

    ``--ckpt --device --data --indices --stride --max-molecules --smallest-first --output``, and, when
    ``methods`` are given, ``--methods`` (their keys), ``--energy`` and ``--time-limit`` (defaults ``energy``
    and ``time_limit``: the authors' protocol is the model's energy and no time limit). ``--stride 5``
    picks the equilibrium geometries (variant 0) of ``data/embedded``'s shards.
    """
    from hip.calculator import DEFAULT_CHECKPOINT

    parser.add_argument("--ckpt", default=str(DEFAULT_CHECKPOINT), help="model checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--data", nargs="+", default=list(data),
                        help="HORM-format .lmdb shards or ASE-readable files (default: %(default)s)")
    parser.add_argument("--indices", type=int, nargs="+", help="raw indices / frames taken from each source")
    parser.add_argument("--stride", type=int, default=1,
                        help="keep every k-th of the selected molecules (5: variant 0 of each data/embedded molecule)")
    parser.add_argument("--max-molecules", type=int, default=max_molecules, help="default: %(default)s")
    parser.add_argument("--smallest-first", action="store_true", help="sort by atom count before trimming")
    parser.add_argument("--output", default=output, help="results directory, resumable (default: %(default)s)")
    if methods:
        parser.add_argument("--methods", nargs="+", choices=[m.key for m in methods],
                            default=[m.key for m in methods], help="default: all")
        parser.add_argument("--energy", choices=("work", "model"), default=energy,
                            help="energy the trust-radius update sees: the model's energy head (the authors') or "
                                 "the force work along the path (hip.optimize.WorkEnergy) (default: %(default)s)")
        parser.add_argument("--time-limit", type=float, default=time_limit,
                            help="stop a run after this many seconds, counted as not converged; 0: no limit, the "
                                 "authors' protocol (default: %(default)s)")


def add_dft_arguments(parser) -> None:
    """Add ``--dft-basis`` and ``--dft-xc`` (HORM's ωB97X/6-31G(d) by default) to an ``argparse`` parser."""
    from hip.dft import HORM_BASIS, HORM_XC

    parser.add_argument("--dft-basis", default=HORM_BASIS, help="DFT basis (default HORM's: %(default)s)")
    parser.add_argument("--dft-xc", default=HORM_XC, help="DFT functional (default HORM's: %(default)s)")


def common_settings(args) -> dict[str, Any]:
    """The settings of :func:`add_common_arguments` that change results, for
    :class:`hip.benchmarks.results.ResultsLog`."""
    ckpt = Path(args.ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest() if ckpt.is_file() else None
    return {"ckpt": str(ckpt.resolve()), "ckpt_sha256": digest,
            "data": [str(Path(p).resolve()) for p in args.data], "indices": args.indices, "stride": args.stride,
            "max_molecules": args.max_molecules, "smallest_first": args.smallest_first,
            "energy": getattr(args, "energy", None), "time_limit": getattr(args, "time_limit", None)}
