#!/usr/bin/env python
"""Speed and memory of HIP Hessians against autodiff and finite differences (paper Fig. 2 and 8).

For HIP-EquiformerV2 (paper size by default: Table 4, random weights, eval mode) this measures, per
molecule size N (single molecule) and per batch size B (HORM molecules), the time and peak memory of

* ``forward``: energy and forces only, ``model(batch, hessian=False)``;
* ``hip``: energy, forces and the predicted Hessian, ``model(batch)``;
* ``ad_loop`` / ``ad_vec``: the autodiff Hessian −∂F/∂x of the same model's forces, one backward
  pass per row / ``is_grads_batched`` chunks of ``--ad-chunk`` rows
  (:func:`hip.model.autodiff.autodiff_hessian`); "AD" in the ratios is the variant that
  ``autodiff_hessian`` picks by default on the device (:func:`hip.model.autodiff.prefers_vectorized`);
* ``fd``: central finite differences of the forces, two force evaluations per row
  (:func:`hip.model.autodiff.finite_difference_hessian`).

``forward`` and ``hip`` run on three code paths of the same weights (``--paths``): ``eager``,
fairchem's own forwards (the implementation before the fast paths), ``fast``, the default
(:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_fast_paths`), and ``compiled``, the fast path
through ``torch.compile`` (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_compiled`), timed
after its one-time compile. One compile per model serves every case; the compile (wall time of the
first compiled forward and HIP pass, into a new, empty Inductor cache unless ``--compile-cache``) and
the cached start (the same first calls in a fresh Python process reading that cache) are reported
apart. ``--readout-layers 1,3`` runs the models with 1 and 3 Hessian layers in one run. AD and FD
run on the fast path only, so every AD/HIP and FD/HIP ratio compares each method at its best. All
run under ``torch.inference_mode`` except AD. On a CPU the FLOPs of one HIP pass are counted
(``torch.utils.flop_counter``, matrix products) and divided by the median times, against one core's
float32 peak read from /proc/cpuinfo.

Molecules: single molecules of N = 8…21 atoms are HORM sample molecules (``--horm``, first entry of
that size); other N are built from ASE G2 molecules (H, C, N, O only) on a cubic grid, bounding
spheres 4 Å apart. Batches of B take the first B HORM sample molecules (cycled past 100).

Timing. One torch thread on a CPU (``--threads``). ``forward`` and ``hip`` of both paths are warmed
up once per case, then timed ``--repeats`` times, the four calls interleaved in alternating order so
that load from other jobs falls on all of them alike; the tables give medians
(``torch.utils.benchmark`` ``Measurement`` and ``Compare``). The clock (``--clock``) is the process
CPU time by default on a CPU, which other jobs on a shared machine inflate far less than wall time,
and wall time on CUDA (after ``torch.cuda.synchronize()``). The AD and FD Hessians cost one backward
pass (two forward passes for FD) per row, 3·max N_b rows of the same computation:
:mod:`hip.model.autodiff` is run with ``max_rows`` set to as many rows as fit in ``--row-budget``
seconds, its set-up (the forward pass) is timed on its own, and the time of the remaining rows is
extrapolated from the mean time per row (``rows timed/rows total``; ``--row-budget 0`` times all).

Peak memory. CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
the memory allocated before the call (model weights and inputs excluded). CPU: the peak of the live
bytes that torch's CPU allocator hands out during the call, from the allocation and free events of
``torch.profiler`` (``profile_memory=True``) summed in time order: the CPU counterpart of
``max_memory_allocated``. The CSV also holds the rise of the process's peak resident set size
(Linux VmHWM, reset through ``/proc/self/clear_refs`` after ``malloc_trim``). Memory is measured in a
separate, untimed run; AD and FD run only their first chunk/row there, since every further row
reuses the same working set.

Examples:
  python scripts/bench_hessian.py                       # the default run (N 8, 14, 30; B 1, 8; about 10 min
                                                        # on 2 CPU cores, 4-5 of them the cold compile)
  python scripts/bench_hessian.py --quick               # a short run (eager and fast only: 70 s)
  python scripts/bench_hessian.py --sizes 14 --batch-sizes 32 --readout-layers 1,3 --no-expensive  # issue 20
  python scripts/bench_hessian.py --sizes 14 --batch-sizes 32 --repeats 5 --no-expensive
  python scripts/bench_hessian.py --model-kwargs '{"num_layers_hessian": 1}'   # the end-to-end model
  python scripts/bench_hessian.py --device cuda --batch-sizes 1,2,4,8,16,32,64,128 --row-budget 0
  python scripts/bench_hessian.py --profile             # where the time goes, fast path
  python scripts/bench_hessian.py --profile --eager     # the same for fairchem's forwards

Outputs (``--output``, default ``logs/bench_hessian/``): ``bench_hessian.csv`` (one row per case,
method and path) and ``bench_hessian.png`` (a: time vs N, b: peak memory vs N, c: time vs batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hip.benchmarks.hessian_report import (
    flop_table,
    hip_flops,
    plot,
    print_table,
    print_tables,
    profile_hip,
    write_csv,
)
from hip.benchmarks.hessian_timing import (
    PATHS,
    Result,
    bench_case,
    make_clock,
    methods_for,
    peak_memory_mib,
    read_horm,
    single_molecule,
    use_path,
)
from hip.data.graphs import collate_molecules
from hip.model.compiled import CACHE_ENV
from hip.model.hip_equiformer import HIPEquiformerV2

__all__ = ["main", "peak_memory_mib"]

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _paths(text: str) -> list[str]:
    paths = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in paths if x not in PATHS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help="JSON overrides of the HIPEquiformerV2 arguments (default: paper size, 3 Hessian layers)")
    p.add_argument("--readout-layers", type=_ints, default=None,
                   help="one model per value of num_layers_hessian, in one run (default: that of --model-kwargs)")
    p.add_argument("--paths", type=_paths, default=None,
                   help="code paths of forward and HIP (default: eager,fast,compiled; with --quick eager,fast)")
    p.add_argument("--compile-cache", type=Path, default=None,
                   help="Inductor cache directory of the compiled path (default: a new, empty one, so that the "
                        "compile column is a cold compile; the cached-start column reuses it in a fresh process)")
    p.add_argument("--sizes", type=_ints, default=[8, 14, 30],
                   help="single-molecule atom counts (8..21: HORM sample; others: G2 composites)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 8],
                   help="batch sizes of HORM sample molecules ('' skips the batched experiment)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of forward and HIP per case and path")
    p.add_argument("--case-budget", type=float, default=30.0,
                   help="stop repeating forward/HIP of a case after this many seconds (≥ 1 repeat)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="process CPU time or wall time (default: cpu on a CPU, wall on CUDA)")
    p.add_argument("--row-budget", type=float, default=3.0,
                   help="seconds of AD/FD rows timed per case before extrapolating (0: time every row)")
    p.add_argument("--expensive-repeats", type=int, default=1, help="timed repeats of AD and FD per case")
    p.add_argument("--no-expensive", action="store_true", help="forward and HIP only (no AD, no FD)")
    p.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory runs")
    p.add_argument("--expensive-max-atoms", type=int, default=30, help="AD/FD only for single molecules ≤ this")
    p.add_argument("--expensive-max-batch", type=int, default=4, help="AD/FD only for batches ≤ this")
    p.add_argument("--ad-loop-max-atoms", type=int, default=30, help="AD loop variant only up to this N")
    p.add_argument("--ad-vec-max-atoms", type=int, default=14,
                   help="vectorised AD only for single molecules ≤ this N (its smallest timed unit, one chunk "
                        "of --ad-chunk rows, is slow and memory-hungry on CPU)")
    p.add_argument("--ad-vec-max-batch", type=int, default=1, help="vectorised AD only for batches ≤ this")
    p.add_argument("--ad-chunk", type=int, default=16, help="rows per vectorised AD chunk (library default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU; torch's default on CUDA)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--horm", type=Path, default=HORM_SAMPLE, help="HORM shard with the test molecules")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="instead of the benchmark: torch.profiler of forward vs HIP on a HORM molecule of "
                        "--profile-natoms atoms and on a batch of --profile-batch HORM molecules")
    p.add_argument("--eager", action="store_true", help="--profile the eager path instead of the fast one")
    p.add_argument("--profile-natoms", type=int, default=14)
    p.add_argument("--profile-batch", type=int, default=32)
    p.add_argument("--output", type=Path, default=Path("logs/bench_hessian"))
    p.add_argument("--quick", action="store_true",
                   help="short run: N 8, 14; B 4; 1 repeat; 1 s of rows; forward and HIP only past N 8")
    p.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)  # the cached-start subprocess
    args = p.parse_args(argv)
    if args.paths is None:
        args.paths = ["eager", "fast"] if args.quick else list(PATHS)
    if args.quick:
        args.sizes, args.batch_sizes, args.repeats, args.expensive_max_atoms = [8, 14], [4], 1, 8
        args.row_budget, args.case_budget, args.ad_vec_max_atoms, args.ad_vec_max_batch = 1.0, 5.0, 8, 0
        args.expensive_max_batch = 1  # single molecules count as batches of 1
    return args


def build_model(args, layers: int, device: torch.device) -> HIPEquiformerV2:
    torch.manual_seed(args.seed)
    return HIPEquiformerV2(**{**args.model_kwargs, "num_layers_hessian": layers}).to(device).eval()


def first_compiled_call(model: HIPEquiformerV2, batch) -> float:
    """Wall seconds of the first compiled forward and HIP pass (the compile, or the cache's load)."""
    start = time.perf_counter()
    use_path(model, "compiled")
    with torch.inference_mode():
        model(batch)
        model(batch, hessian=False)
    use_path(model, "fast")
    return time.perf_counter() - start


def startup_probe(args, device: torch.device) -> None:
    """In a fresh process: the model of ``args`` and the first compiled calls, read from the cache."""
    from torch._dynamo.utils import counters

    start = time.perf_counter()
    model = build_model(args, args.model_kwargs["num_layers_hessian"], device)
    mol, _ = single_molecule(args.sizes[0], read_horm(args.horm))
    seconds = first_compiled_call(model, collate_molecules([mol], model.graph_builder()).to(device))
    print(json.dumps({"first_call_s": seconds, "process_s": time.perf_counter() - start,
                      "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
                      "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"]}))


def cached_start(args, layers: int) -> dict:
    """Run :func:`startup_probe` in a fresh Python process on the same Inductor cache; its JSON line."""
    command = [sys.executable, str(Path(__file__).resolve()), "--startup-probe", "--device", args.device,
               "--model-kwargs", json.dumps({**args.model_kwargs, "num_layers_hessian": layers}),
               "--sizes", str(args.sizes[0] if args.sizes else 14), "--horm", str(args.horm),
               "--seed", str(args.seed), "--dtype", args.dtype, "--threads", str(torch.get_num_threads())]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"cached-start probe failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "spawn_s": time.perf_counter() - start}


def cases_of(args, horm, builder, device) -> list[tuple[dict, object]]:
    """(info, batch) of every single-molecule and batch case."""
    cases = []
    for n in args.sizes:
        mol, source = single_molecule(n, horm)
        info = dict(experiment="single", natoms=n, batch_size=1, total_atoms=n, source=source)
        cases.append((info, collate_molecules([mol], builder).to(device)))
    for b in args.batch_sizes:
        batch = collate_molecules([horm[i % len(horm)] for i in range(b)], builder).to(device)
        info = dict(experiment="batch", natoms=int(batch.natoms.max()), batch_size=b,
                    total_atoms=int(batch.natoms.sum()), source=f"HORM #0..{b - 1}")
        cases.append((info, batch))
    return cases


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    device = torch.device(args.device)
    clock_kind = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = make_clock(clock_kind, device)
    torch.set_default_dtype(getattr(torch, args.dtype))
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.startup_probe:
        return startup_probe(args, device)
    if "compiled" in args.paths and not args.profile:
        os.environ[CACHE_ENV] = str(args.compile_cache or tempfile.mkdtemp(prefix="hip_bench_inductor_"))
    default_layers = args.model_kwargs.get("num_layers_hessian", 3)
    layer_counts = args.readout_layers or [default_layers]
    model = build_model(args, layer_counts[0], device)
    horm = read_horm(args.horm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (f"HIP-EquiformerV2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters with "
              f"{layer_counts[0]} Hessian layer(s), random weights), {args.dtype}, device {device} ({name}), "
              f"{torch.get_num_threads()} intra-op thread(s), torch {torch.__version__}, clock: {clock_kind}")
    print(header, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)

    if args.profile:
        model.set_fast_paths(not args.eager)
        print(f"path: {'eager' if args.eager else 'fast'}")
        batches = {f"single N={args.profile_natoms}": [single_molecule(args.profile_natoms, horm)[0]],
                   f"batch B={args.profile_batch}": [horm[i % len(horm)] for i in range(args.profile_batch)]}
        profile_hip(model, {k: collate_molecules(v, model.graph_builder()).to(device) for k, v in batches.items()},
                    repeats=args.repeats)
        return []

    results: list[Result] = []
    compile_rows, flops = [], {}
    t_start = time.perf_counter()
    for layers in layer_counts:
        model = model if model.config["num_layers_hessian"] == layers else build_model(args, layers, device)
        cases = cases_of(args, horm, model.graph_builder(), device)
        if "compiled" in args.paths and cases:
            print(f"[{time.perf_counter() - t_start:6.0f} s] L={layers}: compiling", flush=True)
            seconds = first_compiled_call(model, cases[0][1])
            probe = cached_start(args, layers)
            hits = f"{probe['fxgraph_cache_hit']}/{probe['fxgraph_cache_miss']}"
            compile_rows.append([f"L={layers}", f"{seconds:.1f}", f"{probe['first_call_s']:.1f}",
                                 f"{probe['spawn_s']:.1f}", hits])
        for info, batch in cases:
            methods = methods_for(info["experiment"], info["natoms"], info["batch_size"], args)
            case = Result(method="", path="", readout_layers=layers, edges=0, hessian_edges=0, **info).case
            print(f"[{time.perf_counter() - t_start:6.0f} s] {case} ({info['source']}): {', '.join(methods)}",
                  flush=True)
            results += bench_case(model, batch, methods, args, clock, device, readout_layers=layers, **info)
            if device.type == "cpu":
                flops[case] = hip_flops(model, batch)
    print(f"benchmark time {time.perf_counter() - t_start:.0f} s; command: {' '.join(sys.argv)}\n")
    print_tables(results, header, clock_kind, device)
    if compile_rows:
        print_table(f"Compiled path: one compile per model serves every case (wall s; cache {os.environ[CACHE_ENV]})",
                    ["model", "compile s", "cached start: first call s", "cached start: process s",
                     "FX graphs hit/miss"], compile_rows)
    if flops:
        flop_table(results, flops)
    meta = {"device": str(device), "device_name": name, "threads": torch.get_num_threads(), "dtype": args.dtype,
            "torch": torch.__version__, "clock": clock_kind}
    write_csv(results, args.output / "bench_hessian.csv", meta)
    plot([r for r in results if r.readout_layers == layer_counts[0]], args.output / "bench_hessian.png", header)
    print(f"\nwrote {args.output / 'bench_hessian.csv'} and {args.output / 'bench_hessian.png'}")
    return results


if __name__ == "__main__":
    main()
