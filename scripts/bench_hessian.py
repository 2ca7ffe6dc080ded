#!/usr/bin/env python
"""Speed and memory of HIP Hessians against autodiff and finite differences (paper Fig. 2 and 8).

For the paper-size HIP-EquiformerV2 (Table 4 defaults, random weights, eval mode) this measures, per
molecule size N (single molecule) and per batch size B (HORM-sized molecules), the wall time and peak
memory of

* ``forward``: energy and forces only, ``model(batch, hessian=False)``;
* ``hip``: energy, forces and the predicted Hessian, ``model(batch)``;
* ``ad_vec`` / ``ad_loop``: the autodiff Hessian −∂F/∂x of the same model's forces, rows seeded in
  chunks of ``--ad-chunk`` with ``is_grads_batched`` / one backward pass per row
  (:func:`hip.model.autodiff.autodiff_hessian`, ``vectorized=True/False``);
* ``fd``: central finite differences of the forces, two force evaluations per row
  (:func:`hip.model.autodiff.finite_difference_hessian`).

``forward``, ``hip`` and ``fd`` run under ``torch.inference_mode``.

Molecules: single molecules of N = 8…21 atoms are HORM sample molecules (``--horm``, first entry of
that size); other N are built from ASE G2 molecules (H, C, N, O only) on a cubic grid, bounding
spheres 4 Å apart. Batches of B take the first B HORM sample molecules (cycled past 100).

Timing. Wall clock (``time.perf_counter``; on CUDA after ``torch.cuda.synchronize()``) and process
CPU time (``time.process_time``). ``forward`` and ``hip`` are warmed up once per case and then timed
``--repeats`` times, interleaved and in alternating order; the tables give medians. On a shared CPU
the process CPU time with one intra-op thread is far less sensitive to other jobs than wall time, so
both are reported. The AD and FD Hessians cost one backward pass (two forward passes for FD) per row
of the Hessian, 3·max N_b rows, each the same computation: :mod:`hip.model.autodiff` is run with
``max_rows`` set to as many rows as fit in ``--row-budget`` seconds, its set-up (the forward pass) is
timed on its own, and the time of the remaining rows is extrapolated from the mean time per row
(``rows timed/rows total`` in the tables, ``estimated`` in the CSV; ``--row-budget 0`` times every row).

Peak memory. CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
the memory allocated before the call (model weights and inputs excluded). CPU: the peak of the live
bytes that torch's CPU allocator hands out during the call, from the allocation and free events of
``torch.profiler`` (``profile_memory=True``) summed in time order: the CPU counterpart of
``max_memory_allocated``. As a cross-check the CSV also holds the rise of the process's peak resident
set size (Linux VmHWM, reset through ``/proc/self/clear_refs`` after ``malloc_trim``), which counts
pages rather than tensors. Memory is measured in a separate, untimed run; AD and FD run only their
first chunk/row there, since every further row reuses the same working set.

Examples:
  python scripts/bench_hessian.py                       # about 10 min on 2 CPU cores
  python scripts/bench_hessian.py --quick               # smoke run, about 1 min
  python scripts/bench_hessian.py --device cuda --batch-sizes 1,2,4,8,16,32,64,128 --row-budget 0
  python scripts/bench_hessian.py --sizes 14 --batch-sizes 32 --repeats 5 --row-budget 60

Outputs (``--output``, default ``logs/bench_hessian/``): ``bench_hessian.csv`` (one row per case and
method) and ``bench_hessian.png`` (a: time vs N, b: peak memory vs N, c: time vs batch size).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import itertools
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hip.data import HormDataset
from hip.data.graphs import collate_molecules
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian
from hip.model.hip_equiformer import HIPEquiformerV2

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"
METHODS = ("forward", "hip", "ad_vec", "ad_loop", "fd")
LABELS = {"forward": "Forward (E, F)", "hip": "HIP (E, F, H)", "ad_vec": "AD (vectorised)",
          "ad_loop": "AD (loop)", "fd": "Finite differences"}
#: G2 molecules (H, C, N, O) the large test molecules are built from, biggest first, and fillers of
#: 3..14 atoms that make the atom count exact.
G2_BUILDING_BLOCKS = ("isobutane", "C6H6", "C5H5N", "CH3CONH2", "CH3CH2OH", "CH3COOH")
G2_FILLERS = {3: "H2O", 4: "NH3", 5: "CH4", 6: "CH3OH", 7: "CH3CHO", 8: "CH3COOH", 9: "CH3CH2OH",
              10: "CH3CH2NH2", 11: "C3H8", 12: "C6H6", 13: "C3H9N", 14: "isobutane"}
GAP = 4.0  # Å between the bounding spheres of neighbouring G2 molecules


# ---- molecules ------------------------------------------------------------------------------------

def read_horm(path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(atomic numbers [N], positions [N, 3] Å) of every molecule of a HORM shard, in key order."""
    dataset = HormDataset(path, exclude_elements=())
    entries = [dataset.read(i) for i in range(len(dataset))]
    dataset.close()
    return [(e["z"], e["pos"]) for e in entries]


def g2_composite(natoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A test molecule of exactly ``natoms`` atoms: G2 molecules side by side on a cubic grid."""
    from ase.build import molecule

    if natoms < 3:
        raise ValueError(f"composites need at least 3 atoms, got {natoms}")
    names, left = [], natoms
    for name in itertools.cycle(G2_BUILDING_BLOCKS):
        if left in G2_FILLERS:
            names.append(G2_FILLERS[left])
            break
        size = len(molecule(name))
        if left - size >= 3:
            names.append(name)
            left -= size
    parts = [molecule(name) for name in names]
    for part in parts:
        part.translate(-part.get_positions().mean(0))
    spacing = max(np.linalg.norm(p.get_positions(), axis=1).max() for p in parts) * 2 + GAP
    side = math.ceil(len(parts) ** (1 / 3))
    z, pos = [], []
    for part, (i, j, k) in zip(parts, itertools.product(range(side), repeat=3), strict=False):
        z.append(part.get_atomic_numbers())
        pos.append(part.get_positions() + spacing * np.array([i, j, k]))
    return torch.as_tensor(np.concatenate(z)).long(), torch.as_tensor(np.concatenate(pos)).float()


def single_molecule(natoms: int, horm: list) -> tuple[tuple[torch.Tensor, torch.Tensor], str]:
    """The first HORM molecule with ``natoms`` atoms, else a G2 composite; and where it came from."""
    for i, (z, pos) in enumerate(horm):
        if len(z) == natoms:
            return (z, pos), f"HORM #{i}"
    return g2_composite(natoms), "G2 composite"


# ---- clocks and memory ----------------------------------------------------------------------------

class Clock:
    """Wall and process CPU time; synchronises CUDA before every reading."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


LIBC = _libc()


def _status_kib(key: str) -> float:
    """A field of /proc/self/status in KiB; NaN where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return math.nan


@contextlib.contextmanager
def rss_peak(result: dict):
    """Rise of the peak resident set size (MiB) over the block; NaN where Linux's VmHWM is missing."""
    gc.collect()
    try:
        if LIBC is not None:
            LIBC.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kib("VmRSS")
    except OSError:
        before = math.nan
    yield
    result["rss_peak_mib"] = (_status_kib("VmHWM") - before) / 1024 if before == before else math.nan


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(peak allocated tensor memory during ``fn()`` above what was allocated before, peak RSS rise), MiB."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, math.nan
    from torch.profiler import ProfilerActivity, profile

    rss: dict = {}
    with rss_peak(rss), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cpu = torch.autograd.DeviceType.CPU
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == cpu)
    live = itertools.accumulate(nbytes for _, nbytes in events)
    return max(itertools.chain([0], live)) / 2**20, rss["rss_peak_mib"]


# ---- the methods ----------------------------------------------------------------------------------

@dataclass
class RowTiming:
    """Time of a row-by-row Hessian: setup (the forward pass), rows done, and the extrapolation."""

    wall: float
    cpu: float
    rows_timed: int
    rows_total: int


def row_timing(clock: Clock, compute: Callable[[int], object], n_rows: int, step: int,
               budget: float | None) -> RowTiming:
    """Time a row-by-row Hessian of the library, extrapolating the rows that do not fit in ``budget`` s.

    ``compute(k)`` runs :func:`autodiff_hessian` or :func:`finite_difference_hessian` with
    ``max_rows=k``. The set-up (``k = 0``: the forward pass) is timed on its own; the cost per row
    comes from the first ``step`` rows, then from as many rows as fit in the budget.
    """
    def timed(k: int) -> tuple[float, float]:
        w0, c0 = clock.now()
        compute(k)
        w1, c1 = clock.now()
        return w1 - w0, c1 - c0

    if budget is None:
        wall, cpu = timed(n_rows)
        return RowTiming(wall, cpu, n_rows, n_rows)
    setup = timed(0)
    done = min(step, n_rows)
    run = timed(done)
    per_row = max(run[0] - setup[0], 1e-9) / done
    fit = min(n_rows, max(done, int(budget / per_row) // step * step))
    if fit > done:
        done, run = fit, timed(fit)
    scale = n_rows / done
    return RowTiming(setup[0] + (run[0] - setup[0]) * scale, setup[1] + (run[1] - setup[1]) * scale, done, n_rows)


# ---- benchmark ------------------------------------------------------------------------------------

@dataclass
class Result:
    experiment: str  # "single" or "batch"
    natoms: int  # atoms of the molecule (single) or of the largest molecule (batch)
    batch_size: int
    total_atoms: int
    edges: int
    hessian_edges: int
    method: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rows_timed: int = 0
    rows_total: int = 0
    peak_mib: float = math.nan
    rss_peak_mib: float = math.nan
    source: str = ""

    @property
    def wall_s(self) -> float:
        return statistics.median(self.wall) if self.wall else math.nan

    @property
    def cpu_s(self) -> float:
        return statistics.median(self.cpu) if self.cpu else math.nan

    @property
    def estimated(self) -> bool:
        return self.rows_timed < self.rows_total


def bench_case(model, batch, methods: list[str], args, clock: Clock, device, **info) -> list[Result]:
    """Time and measure the memory of ``methods`` on one batch."""
    results = {m: Result(method=m, edges=batch.edge_index.shape[1],
                         hessian_edges=batch.edge_index_hessian.shape[1], **info) for m in methods}
    cheap = [m for m in methods if m in ("forward", "hip")]
    calls = {"forward": lambda: model(batch, hessian=False), "hip": lambda: model(batch)}
    with torch.inference_mode():
        model(batch)  # warm-up (runs the forward too)
        for m in cheap:  # untimed memory runs
            results[m].peak_mib, results[m].rss_peak_mib = peak_memory_mib(calls[m], device)
        start = time.perf_counter()
        for rep in range(args.repeats):
            for m in cheap if rep % 2 == 0 else cheap[::-1]:
                w0, c0 = clock.now()
                calls[m]()
                w1, c1 = clock.now()
                results[m].wall.append(w1 - w0)
                results[m].cpu.append(c1 - c0)
            if time.perf_counter() - start > args.case_budget:
                break
    n_rows = 3 * int(batch.natoms.max())

    def compute(method: str) -> Callable[[int], object]:
        if method == "fd":
            return lambda k: finite_difference_hessian(model, batch, max_rows=k)
        return lambda k: autodiff_hessian(model, batch, args.ad_chunk, vectorized=method == "ad_vec", max_rows=k)

    def steps(method: str) -> int:
        return args.ad_chunk if method == "ad_vec" else 1

    def expensive(method: str, budget: float | None) -> RowTiming:
        return row_timing(clock, compute(method), n_rows, steps(method), budget)

    for m in methods:
        if m in cheap:
            continue
        for _ in range(args.expensive_repeats):
            timing = expensive(m, args.row_budget or None)
            results[m].wall.append(timing.wall)
            results[m].cpu.append(timing.cpu)
            results[m].rows_timed, results[m].rows_total = timing.rows_timed, timing.rows_total
        # memory: the first chunk/row only; later ones reuse the same working set
        results[m].peak_mib, results[m].rss_peak_mib = peak_memory_mib(
            lambda m=m: compute(m)(steps(m)), device)
    return list(results.values())


def methods_for(experiment: str, natoms: int, batch_size: int, args) -> list[str]:
    """The methods run on a case: forward and HIP always, AD and FD within the caps of ``args``."""
    methods = ["forward", "hip"]
    if natoms > args.expensive_max_atoms or batch_size > args.expensive_max_batch:
        return methods
    if natoms <= args.ad_vec_max_atoms if experiment == "single" else batch_size <= args.ad_vec_max_batch:
        methods.append("ad_vec")
    if natoms <= args.ad_loop_max_atoms:
        methods.append("ad_loop")
    return [*methods, "fd"]


def labelled_stages(model: HIPEquiformerV2):
    """Within the block, profiler ranges name the model's stages (top-level modules, each layer, and
    the readout's own functions), so that ``key_averages()`` gives each stage's inclusive time."""
    import fairchem.core.models.equiformer_v2.so3 as so3
    from torch.profiler import record_function

    import hip.model.hip_equiformer as hip_module

    modules = {f"blocks.{i}": m for i, m in enumerate(model.blocks)}
    modules |= {f"hessian_layers.{i}": m for i, m in enumerate(model.hessian_layers)}
    modules |= {name: m for name, m in model.named_children()
                if name not in ("blocks", "hessian_layers") and not isinstance(m, torch.nn.ModuleList)}
    open_ranges: dict[str, list] = {}
    handles = []
    for name, module in modules.items():
        def pre(_module, _inputs, name=name):
            open_ranges.setdefault(name, []).append(record_function(f"stage:{name}").__enter__())

        def post(_module, _inputs, _output, name=name):
            open_ranges[name].pop().__exit__(None, None, None)
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def labelled(fn, name):
        def wrapper(*a, **k):
            with record_function(f"stage:{name}"):
                return fn(*a, **k)
        return wrapper

    patched = [(hip_module, f, getattr(hip_module, f)) for f in
               ("edge_geometry", "init_edge_rot_mat", "project_l2", "irreps_to_blocks", "assemble_hessian")]
    patched.append((so3.SO3_Rotation, "set_wigner", so3.SO3_Rotation.set_wigner))
    for owner, attr, fn in patched:
        setattr(owner, attr, labelled(fn, attr))
    try:
        yield
    finally:
        for owner, attr, fn in patched:
            setattr(owner, attr, fn)
        for handle in handles:
            handle.remove()


def profile_hip(model: HIPEquiformerV2, batches: dict[str, object], repeats: int = 3, top: int = 12) -> None:
    """torch.profiler of forward vs HIP: per-stage (CPU, inclusive) and per-op (self) time, item() calls.

    On CUDA the op table holds self device (kernel) time; the stage table stays host-side time.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = next(model.parameters()).is_cuda
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    self_time, unit = ("self_device_time_total", "CUDA") if cuda else ("self_cpu_time_total", "CPU")
    for label, batch in batches.items():
        totals: dict[bool, list[dict]] = {False: [], True: []}
        with torch.inference_mode(), labelled_stages(model):
            model(batch)  # warm-up
            for _ in range(repeats):
                for hessian in (False, True):
                    with profile(activities=activities) as prof:
                        model(batch, hessian=hessian)
                    totals[hessian].append({e.key: (e.cpu_time_total, getattr(e, self_time), e.count)
                                            for e in prof.key_averages()})

        def med(hessian, key, i, totals=totals):
            """Median over the profiled calls of field i (0: inclusive µs, 1: self µs, 2: calls)."""
            return statistics.median(t.get(key, (0, 0, 0))[i] for t in totals[hessian]) / (1 if i == 2 else 1e3)

        keys = set().union(*totals[True], *totals[False])
        stages = sorted((k for k in keys if k.startswith("stage:")), key=lambda k: -med(True, k, 0))
        ops = sorted((k for k in keys if not k.startswith("stage:")), key=lambda k: -med(True, k, 1))
        total = {h: statistics.median(sum(v[1] for v in t.values()) for t in totals[h]) / 1e3 for h in totals}
        syncs = {h: med(h, "aten::_local_scalar_dense", 2) for h in totals}
        print(f"\nprofile {label}: self {unit} total forward {total[False]:.0f} ms, HIP {total[True]:.0f} ms "
              f"(HIP/forward {total[True] / total[False]:.2f}); item() calls (aten::_local_scalar_dense, "
              f"device-host syncs on GPU) forward {syncs[False]:.0f}, HIP {syncs[True]:.0f}; "
              f"medians of {repeats} profiled calls")
        print(f"  {'stage (inclusive CPU ms)':34s} {'forward':>9s} {'HIP':>9s} {'HIP-fwd':>9s}")
        for k in stages:
            f, h = med(False, k, 0), med(True, k, 0)
            print(f"  {k[6:]:34s} {f:9.1f} {h:9.1f} {h - f:9.1f}")
        print(f"  {f'op (self {unit} ms)':34s} {'forward':>9s} {'HIP':>9s} {'HIP-fwd':>9s} {'calls f/H':>11s}")
        for k in ops[:top]:
            f, h = med(False, k, 1), med(True, k, 1)
            calls = f"{med(False, k, 2):.0f}/{med(True, k, 2):.0f}"
            print(f"  {k:34s} {f:9.1f} {h:9.1f} {h - f:9.1f} {calls:>11s}")


# ---- output ---------------------------------------------------------------------------------------

def _fmt_time(seconds: float) -> str:
    if seconds != seconds:
        return "–"
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _ratio(a: Result | None, b: Result | None, attr: str = "wall_s") -> str:
    if a is None or b is None:
        return "–"
    value = getattr(a, attr) / getattr(b, attr)
    return ("~" if a.estimated or b.estimated else "") + (f"{value:.2f}" if value < 10 else f"{value:.0f}")


def print_tables(results: list[Result], header: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        Console = Table = None

    def emit(title, columns, rows):
        if Table is not None:
            table = Table(title=title)
            for c in columns:
                table.add_column(c, justify="right")
            for row in rows:
                table.add_row(*row)
            Console(width=200).print(table)
        else:
            widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
            print(f"\n{title}")
            for row in [columns, *rows]:
                print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))

    print(header)
    columns = ["exp", "N", "B", "atoms", "edges", "H-edges", "method", "wall", "wall/mol", "cpu", "repeats",
               "rows timed", "peak MiB", "RSS MiB"]
    rows = []
    for r in results:
        rows.append([r.experiment, str(r.natoms), str(r.batch_size), str(r.total_atoms), str(r.edges),
                     str(r.hessian_edges), r.method, _fmt_time(r.wall_s), _fmt_time(r.wall_s / r.batch_size),
                     _fmt_time(r.cpu_s), str(len(r.wall)), f"{r.rows_timed}/{r.rows_total}" if r.rows_total else "–",
                     f"{r.peak_mib:.0f}", f"{r.rss_peak_mib:.0f}"])
    emit("Time (median) and peak memory; '~': AD/FD rows extrapolated", columns, rows)

    columns = ["exp", "N", "B", "HIP/fwd", "HIP/fwd cpu", "ADvec/HIP", "ADloop/HIP", "FD/HIP",
               "ADvec/HIP cpu", "ADloop/HIP cpu", "FD/HIP cpu", "mem HIP/fwd", "mem ADvec/HIP", "mem FD/HIP"]
    rows = []
    cases = {}
    for r in results:
        cases.setdefault((r.experiment, r.natoms, r.batch_size), {})[r.method] = r
    for (exp, n, b), by in cases.items():
        hip = by.get("hip")

        def mem(a, b):
            return "–" if a is None or b is None else f"{a.peak_mib / b.peak_mib:.2f}"
        rows.append([exp, str(n), str(b), _ratio(hip, by.get("forward")), _ratio(hip, by.get("forward"), "cpu_s"),
                     _ratio(by.get("ad_vec"), hip), _ratio(by.get("ad_loop"), hip), _ratio(by.get("fd"), hip),
                     _ratio(by.get("ad_vec"), hip, "cpu_s"), _ratio(by.get("ad_loop"), hip, "cpu_s"),
                     _ratio(by.get("fd"), hip, "cpu_s"), mem(hip, by.get("forward")), mem(by.get("ad_vec"), hip),
                     mem(by.get("fd"), hip)])
    emit("Ratios of median times (wall unless 'cpu') and peak memory; '~': involves extrapolated rows",
         columns, rows)
    print("Notes: wall = median wall time of the repeats, cpu = median process CPU time; AD/FD times with "
          "rows timed < rows total are setup + measured time per row × all rows. Peak MiB: CUDA "
          "max_memory_allocated / CPU allocator peak from torch.profiler memory events, above what was "
          "allocated before the call; RSS MiB: rise of the peak resident set size (Linux VmHWM). "
          "'–': method not run for this case (caps: --expensive-max-*, --ad-*-max-*).")


def write_csv(results: list[Result], path: Path, meta: dict) -> None:
    fields = ["experiment", "natoms", "batch_size", "total_atoms", "edges", "hessian_edges", "method",
              "wall_s", "wall_s_per_molecule", "cpu_s", "wall_s_all", "cpu_s_all", "repeats", "rows_timed",
              "rows_total", "estimated", "peak_mib", "rss_peak_mib", "source", *meta]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({
                "experiment": r.experiment, "natoms": r.natoms, "batch_size": r.batch_size,
                "total_atoms": r.total_atoms, "edges": r.edges, "hessian_edges": r.hessian_edges,
                "method": r.method, "wall_s": f"{r.wall_s:.6g}",
                "wall_s_per_molecule": f"{r.wall_s / r.batch_size:.6g}",
                "cpu_s": f"{r.cpu_s:.6g}", "wall_s_all": ";".join(f"{x:.6g}" for x in r.wall),
                "cpu_s_all": ";".join(f"{x:.6g}" for x in r.cpu), "repeats": len(r.wall),
                "rows_timed": r.rows_timed, "rows_total": r.rows_total, "estimated": int(r.estimated),
                "peak_mib": f"{r.peak_mib:.4g}", "rss_peak_mib": f"{r.rss_peak_mib:.4g}", "source": r.source,
                **meta})


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"forward": ("tab:gray", "--", "s"), "hip": ("tab:orange", "-", "o"), "ad_vec": ("tab:blue", "-", "^"),
             "ad_loop": ("tab:cyan", "-", "v"), "fd": ("tab:green", ":", "D")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = [(axes[0], "single", "natoms", lambda r: r.wall_s * 1e3, "a  Time (single molecule)",
               "atoms N", "time (ms)"),
              (axes[1], "single", "natoms", lambda r: r.peak_mib, "b  Peak memory (single molecule)",
               "atoms N", "peak memory (MiB)"),
              (axes[2], "batch", "batch_size", lambda r: r.wall_s * 1e3, "c  Time (batch of HORM molecules)",
               "batch size", "time per batch (ms)")]
    for ax, exp, xkey, y, panel_title, xlabel, ylabel in panels:
        for m in METHODS:
            pts = sorted((getattr(r, xkey), y(r), r.estimated) for r in results
                         if r.experiment == exp and r.method == m and y(r) == y(r))
            if not pts:
                continue
            color, line, marker = style[m]
            xs, ys, _ = zip(*pts, strict=True)
            ax.plot(xs, ys, line, color=color, label=LABELS[m])
            for x_, y_, e in pts:
                ax.plot(x_, y_, marker, color=color, mfc="white" if e else color)
        ax.set_yscale("log")
        if exp == "batch":
            ax.set_xscale("log", base=2)
            ticks = sorted({r.batch_size for r in results if r.experiment == "batch"})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_title(panel_title, loc="left")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title + "   (hollow: AD/FD rows partly extrapolated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---- main -----------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--sizes", type=_ints, default=[8, 14, 21, 30, 45, 60],
                   help="single-molecule atom counts (8..21: HORM sample; others: G2 composites)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32],
                   help="batch sizes of HORM sample molecules ('' skips the batched experiment)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of forward and HIP per case")
    p.add_argument("--case-budget", type=float, default=20.0,
                   help="stop repeating forward/HIP of a case after this many seconds (≥ 1 repeat)")
    p.add_argument("--row-budget", type=float, default=5.0,
                   help="seconds of AD/FD rows timed per case before extrapolating (0: time every row)")
    p.add_argument("--expensive-repeats", type=int, default=1, help="timed repeats of AD and FD per case")
    p.add_argument("--expensive-max-atoms", type=int, default=60, help="AD/FD only for single molecules ≤ this")
    p.add_argument("--expensive-max-batch", type=int, default=8, help="AD/FD only for batches ≤ this")
    p.add_argument("--ad-loop-max-atoms", type=int, default=60, help="AD loop variant only up to this N")
    p.add_argument("--ad-vec-max-atoms", type=int, default=14,
                   help="vectorised AD only for single molecules ≤ this N (its smallest timed unit, one chunk "
                        "of --ad-chunk rows, is slow and memory-hungry on CPU)")
    p.add_argument("--ad-vec-max-batch", type=int, default=1, help="vectorised AD only for batches ≤ this")
    p.add_argument("--ad-chunk", type=int, default=16, help="rows per vectorised AD chunk (library default)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, see the notes printed; torch's on CUDA)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--horm", type=Path, default=HORM_SAMPLE, help="HORM shard with the test molecules")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true",
                   help="instead of the benchmark: torch.profiler of forward vs HIP on a HORM molecule of "
                        "--profile-natoms atoms and on a batch of --profile-batch HORM molecules")
    p.add_argument("--profile-natoms", type=int, default=14)
    p.add_argument("--profile-batch", type=int, default=32)
    p.add_argument("--output", type=Path, default=Path("logs/bench_hessian"))
    p.add_argument("--quick", action="store_true", help="smoke run: N 8, 24; B 1, 2; 1 repeat; 1 s of rows")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch_sizes, args.repeats = [8, 24], [1, 2], 1
        args.row_budget, args.case_budget, args.ad_vec_max_atoms, args.ad_vec_max_batch = 1.0, 5.0, 8, 0
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_default_dtype(getattr(torch, args.dtype))
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    model = HIPEquiformerV2().to(device).eval()
    builder = model.graph_builder()
    horm = read_horm(args.horm)
    clock = Clock(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (f"HIP-EquiformerV2, paper size ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
              f"parameters, random weights), {args.dtype}, device {device} ({name}), "
              f"{torch.get_num_threads()} intra-op thread(s), torch {torch.__version__}")
    print(header, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)

    if args.profile:
        batches = {f"single N={args.profile_natoms}": [single_molecule(args.profile_natoms, horm)[0]],
                   f"batch B={args.profile_batch}": [horm[i % len(horm)] for i in range(args.profile_batch)]}
        profile_hip(model, {k: collate_molecules(v, builder).to(device) for k, v in batches.items()},
                    repeats=args.repeats)
        return []

    results: list[Result] = []
    t_start = time.perf_counter()
    for n in args.sizes:
        mol, source = single_molecule(n, horm)
        batch = collate_molecules([mol], builder).to(device)
        methods = methods_for("single", n, 1, args)
        print(f"[{time.perf_counter() - t_start:6.0f} s] single N={n} ({source}): {', '.join(methods)}", flush=True)
        results += bench_case(model, batch, methods, args, clock, device, experiment="single", natoms=n,
                              batch_size=1, total_atoms=n, source=source)
    for b in args.batch_sizes:
        mols = [horm[i % len(horm)] for i in range(b)]
        batch = collate_molecules(mols, builder).to(device)
        n = int(batch.natoms.max())
        methods = methods_for("batch", n, b, args)
        print(f"[{time.perf_counter() - t_start:6.0f} s] batch B={b} (max N={n}): {', '.join(methods)}", flush=True)
        results += bench_case(model, batch, methods, args, clock, device, experiment="batch", natoms=n,
                              batch_size=b, total_atoms=int(batch.natoms.sum()), source=f"HORM #0..{b - 1}")
    elapsed = time.perf_counter() - t_start
    print(f"benchmark time {elapsed:.0f} s; command: {' '.join(sys.argv)}\n")
    print_tables(results, header)
    meta = {"device": str(device), "device_name": name, "threads": torch.get_num_threads(), "dtype": args.dtype,
            "torch": torch.__version__}
    write_csv(results, args.output / "bench_hessian.csv", meta)
    plot(results, args.output / "bench_hessian.png", header)
    print(f"\nwrote {args.output / 'bench_hessian.csv'} and {args.output / 'bench_hessian.png'}")
    return results


if __name__ == "__main__":
    main()
