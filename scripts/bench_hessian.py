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

``forward`` and ``hip`` run on both code paths of the same weights: ``eager``, fairchem's own
forwards (the implementation before the fast paths), and ``fast``, the default
(:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_fast_paths`). AD and FD run on the fast path
only, so every AD/HIP and FD/HIP ratio compares each method at its best. All run under
``torch.inference_mode`` except AD.

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
  python scripts/bench_hessian.py                       # the full run
  python scripts/bench_hessian.py --quick               # smoke run
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
import contextlib
import csv
import ctypes
import gc
import itertools
import json
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
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import TaskSpec

from hip.data import HormDataset
from hip.data.graphs import collate_molecules
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian, prefers_vectorized
from hip.model.hip_equiformer import HIPEquiformerV2

HORM_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "horm" / "sample_100.lmdb"
PATHS = ("eager", "fast")
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

def make_clock(kind: str, device: torch.device) -> Callable[[], float]:
    """Seconds of process CPU time (``"cpu"``) or wall time (``"wall"``, after a CUDA synchronise)."""
    if kind == "cpu":
        if device.type == "cuda":
            raise ValueError("--clock cpu does not measure GPU work: use --clock wall with --device cuda")
        return time.process_time

    def wall() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
    return wall


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
    """Time of a row-by-row Hessian, setup (the forward pass) included, and the rows it is based on."""

    seconds: float
    rows_timed: int
    rows_total: int


def row_timing(clock: Callable[[], float], compute: Callable[[int], object], n_rows: int, step: int,
               budget: float | None) -> RowTiming:
    """Time a row-by-row Hessian of the library, extrapolating the rows that do not fit in ``budget`` s.

    ``compute(k)`` runs :func:`autodiff_hessian` or :func:`finite_difference_hessian` with
    ``max_rows=k``. The set-up (``k = 0``: the forward pass) is timed on its own; the cost per row
    comes from the first ``step`` rows, then from as many rows as fit in the budget.
    """
    def timed(k: int) -> float:
        start = clock()
        compute(k)
        return clock() - start

    if budget is None:
        return RowTiming(timed(n_rows), n_rows, n_rows)
    setup = timed(0)
    done = min(step, n_rows)
    run = timed(done)
    per_row = max(run - setup, 1e-9) / done
    fit = min(n_rows, max(done, int(budget / per_row) // step * step))
    if fit > done:
        done, run = fit, timed(fit)
    return RowTiming(setup + (run - setup) * n_rows / done, done, n_rows)


@dataclass
class Result:
    experiment: str  # "single" or "batch"
    natoms: int  # atoms of the molecule (single) or of the largest molecule (batch)
    batch_size: int
    total_atoms: int
    edges: int
    hessian_edges: int
    method: str
    path: str  # "eager" or "fast"
    times: list[float] = field(default_factory=list)
    rows_timed: int = 0
    rows_total: int = 0
    peak_mib: float = math.nan
    rss_peak_mib: float = math.nan
    source: str = ""

    @property
    def case(self) -> str:
        return f"{self.experiment} N={self.natoms}" if self.experiment == "single" else \
            f"batch B={self.batch_size} (max N={self.natoms})"

    @property
    def seconds(self) -> float:
        """Median time, s."""
        return statistics.median(self.times) if self.times else math.nan

    @property
    def estimated(self) -> bool:
        return self.rows_timed < self.rows_total

    def measurement(self, clock: str) -> benchmark.Measurement:
        """The repeats as a ``torch.utils.benchmark`` measurement (for ``Compare``)."""
        task = TaskSpec(stmt=f"{self.method} ({self.path})", setup="", label=f"time [{clock}]",
                        sub_label=self.case, description=f"{self.method} {self.path}",
                        num_threads=torch.get_num_threads())
        return benchmark.Measurement(number_per_run=1, raw_times=self.times, task_spec=task)


def bench_case(model: HIPEquiformerV2, batch, methods: list[str], args, clock: Callable[[], float],
               device: torch.device, **info) -> list[Result]:
    """Time and measure the memory of ``methods`` on one batch (forward and HIP on both paths)."""
    def result(method: str, path: str) -> Result:
        return Result(method=method, path=path, edges=batch.edge_index.shape[1],
                      hessian_edges=batch.edge_index_hessian.shape[1], **info)

    def call(method: str, path: str) -> Callable[[], object]:
        model.set_fast_paths(path == "fast")
        return lambda: model(batch, hessian=method == "hip")

    cheap = [(m, p) for m in methods if m in ("forward", "hip") for p in PATHS]
    results = {key: result(*key) for key in cheap}
    with torch.inference_mode():
        for key in cheap:  # warm-up, then an untimed memory run
            call(*key)()
            if not args.no_memory:
                results[key].peak_mib, results[key].rss_peak_mib = peak_memory_mib(call(*key), device)
        start = time.perf_counter()
        for rep in range(args.repeats):
            for key in cheap if rep % 2 == 0 else cheap[::-1]:
                run = call(*key)
                t0 = clock()
                run()
                results[key].times.append(clock() - t0)
            if time.perf_counter() - start > args.case_budget:
                break
    model.set_fast_paths(True)
    n_rows = 3 * int(batch.natoms.max())

    def compute(method: str) -> Callable[[int], object]:
        if method == "fd":
            return lambda k: finite_difference_hessian(model, batch, max_rows=k)
        return lambda k: autodiff_hessian(model, batch, args.ad_chunk, vectorized=method == "ad_vec", max_rows=k)

    for method in methods:
        if method in ("forward", "hip"):
            continue
        step = args.ad_chunk if method == "ad_vec" else 1
        res = results[(method, "fast")] = result(method, "fast")
        for _ in range(args.expensive_repeats):
            timing = row_timing(clock, compute(method), n_rows, step, args.row_budget or None)
            res.times.append(timing.seconds)
            res.rows_timed, res.rows_total = timing.rows_timed, timing.rows_total
        if not args.no_memory:  # the first chunk/row only; later ones reuse the same working set
            res.peak_mib, res.rss_peak_mib = peak_memory_mib(lambda m=method, s=step: compute(m)(s), device)
    return list(results.values())


def methods_for(experiment: str, natoms: int, batch_size: int, args) -> list[str]:
    """The methods run on a case: forward and HIP always, AD and FD within the caps of ``args``."""
    methods = ["forward", "hip"]
    if args.no_expensive or natoms > args.expensive_max_atoms or batch_size > args.expensive_max_batch:
        return methods
    if natoms <= args.ad_vec_max_atoms if experiment == "single" else batch_size <= args.ad_vec_max_batch:
        methods.append("ad_vec")
    if natoms <= args.ad_loop_max_atoms:
        methods.append("ad_loop")
    return [*methods, "fd"]


@contextlib.contextmanager
def labelled_stages(model: HIPEquiformerV2):
    """Within the block, profiler ranges name the model's stages (top-level modules, each layer, and
    the readout's own functions), so that ``key_averages()`` gives each stage's inclusive time."""
    import fairchem.core.models.equiformer_v2.so3 as so3
    from torch.profiler import record_function

    import hip.model.fast_layers as fast_layers
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
    patched += [(fast_layers, f, getattr(fast_layers, f)) for f in ("grid_map", "so2_convolution", "m_primary_wigner")]
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
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _ratio(a: Result | None, b: Result | None) -> str:
    if a is None or b is None:
        return "–"
    value = a.seconds / b.seconds
    return ("~" if a.estimated or b.estimated else "") + (f"{value:.2f}" if value < 10 else f"{value:.0f}")


def _memories(*results: Result | None) -> str:
    return "/".join("–" if r is None else f"{r.peak_mib:.0f}" for r in results)


def _memory_ratio(a: Result | None, b: Result | None) -> str:
    return "–" if a is None or b is None else f"{a.peak_mib / b.peak_mib:.2f}"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    for row in [columns, *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def print_tables(results: list[Result], header: str, clock: str, device: torch.device) -> None:
    """Medians of forward and HIP (``torch.utils.benchmark.Compare``), then AD/FD times and ratios."""
    print(header)
    compare = benchmark.Compare([r.measurement(clock) for r in results if r.method in ("forward", "hip")])
    compare.print()

    ad = "ad_vec" if prefers_vectorized(device) else "ad_loop"
    cases: dict[str, dict[tuple[str, str], Result]] = {}
    for r in results:
        cases.setdefault(r.case, {})[(r.method, r.path)] = r
    columns = ["case", "HIP fast", "per molecule", "fwd eager/fast", "HIP eager/fast", "HIP/fwd (fast)",
               f"AD/HIP ({ad})", "ADloop/HIP", "ADvec/HIP", "FD/HIP", "AD rows timed", "peak MiB fwd/HIP eager",
               "peak MiB fwd/HIP/AD fast", "mem HIP/fwd"]
    rows = []
    for case, by in cases.items():
        hip, fwd = by.get(("hip", "fast")), by.get(("forward", "fast"))
        chosen = by.get((ad, "fast"))
        rows.append([
            case, _fmt_time(hip.seconds), _fmt_time(hip.seconds / hip.batch_size),
            _ratio(by.get(("forward", "eager")), fwd), _ratio(by.get(("hip", "eager")), hip), _ratio(hip, fwd),
            _ratio(chosen, hip), _ratio(by.get(("ad_loop", "fast")), hip), _ratio(by.get(("ad_vec", "fast")), hip),
            _ratio(by.get(("fd", "fast")), hip),
            f"{chosen.rows_timed}/{chosen.rows_total}" if chosen else "–",
            _memories(by.get(("forward", "eager")), by.get(("hip", "eager"))), _memories(fwd, hip, chosen),
            _memory_ratio(hip, fwd)])
    print_table(f"Ratios of median times [{clock}] ('~': AD/FD rows extrapolated; AD/FD on the fast path)",
                columns, rows)
    expensive = [r for r in results if r.method not in ("forward", "hip")]
    if expensive:
        print_table("AD and FD Hessians (fast path)", ["case", "method", "time", "rows timed", "peak MiB"],
                    [[r.case, r.method, ("~" if r.estimated else "") + _fmt_time(r.seconds),
                      f"{r.rows_timed}/{r.rows_total}", f"{r.peak_mib:.0f}"] for r in expensive])
    print("Notes: eager = fairchem's own forwards (HIPEquiformerV2.set_fast_paths(False)), fast = the default. "
          "AD/FD times with rows timed < rows total are setup + measured time per row × all rows. Peak MiB: "
          "CUDA max_memory_allocated / CPU allocator peak from torch.profiler memory events, above what was "
          "allocated before the call. '–': not run (caps: --expensive-max-*, --ad-*-max-*, --no-expensive).")


def write_csv(results: list[Result], path: Path, meta: dict) -> None:
    fields = ["experiment", "natoms", "batch_size", "total_atoms", "edges", "hessian_edges", "method", "path",
              "seconds", "seconds_per_molecule", "seconds_all", "repeats", "rows_timed", "rows_total", "estimated",
              "peak_mib", "rss_peak_mib", "source", *meta]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({
                "experiment": r.experiment, "natoms": r.natoms, "batch_size": r.batch_size,
                "total_atoms": r.total_atoms, "edges": r.edges, "hessian_edges": r.hessian_edges,
                "method": r.method, "path": r.path, "seconds": f"{r.seconds:.6g}",
                "seconds_per_molecule": f"{r.seconds / r.batch_size:.6g}",
                "seconds_all": ";".join(f"{x:.6g}" for x in r.times), "repeats": len(r.times),
                "rows_timed": r.rows_timed, "rows_total": r.rows_total, "estimated": int(r.estimated),
                "peak_mib": f"{r.peak_mib:.4g}", "rss_peak_mib": f"{r.rss_peak_mib:.4g}", "source": r.source,
                **meta})


def plot(results: list[Result], path: Path, title: str) -> None:
    import matplotlib.ticker
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    style = {"forward": ("tab:gray", "s"), "hip": ("tab:orange", "o"), "ad_vec": ("tab:blue", "^"),
             "ad_loop": ("tab:cyan", "v"), "fd": ("tab:green", "D")}
    fig = Figure(figsize=(15, 4.4))  # its own Agg canvas: Matplotlib's global backend is left alone
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    panels = [(axes[0], "single", "natoms", lambda r: r.seconds * 1e3, "a  Time (single molecule)",
               "atoms N", "time (ms)"),
              (axes[1], "single", "natoms", lambda r: r.peak_mib, "b  Peak memory (single molecule)",
               "atoms N", "peak memory (MiB)"),
              (axes[2], "batch", "batch_size", lambda r: r.seconds * 1e3, "c  Time (batch of HORM molecules)",
               "batch size", "time per batch (ms)")]
    for ax, exp, xkey, y, panel_title, xlabel, ylabel in panels:
        for m, p in itertools.product(METHODS, PATHS):
            pts = sorted((getattr(r, xkey), y(r), r.estimated) for r in results
                         if r.experiment == exp and r.method == m and r.path == p and y(r) == y(r))
            if not pts:
                continue
            color, marker = style[m]
            xs, ys, _ = zip(*pts, strict=True)
            ax.plot(xs, ys, "-" if p == "fast" else ":", color=color, label=f"{LABELS[m]}, {p}")
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
    axes[0].legend(fontsize=7)
    fig.suptitle(title + "   (dotted: eager path; hollow: AD/FD rows partly extrapolated)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# ---- main -----------------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--model-kwargs", type=json.loads, default={},
                   help="JSON overrides of the HIPEquiformerV2 arguments (default: paper size, 3 Hessian layers)")
    p.add_argument("--sizes", type=_ints, default=[8, 14, 21, 30, 45, 60],
                   help="single-molecule atom counts (8..21: HORM sample; others: G2 composites)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8, 16, 32],
                   help="batch sizes of HORM sample molecules ('' skips the batched experiment)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats of forward and HIP per case and path")
    p.add_argument("--case-budget", type=float, default=40.0,
                   help="stop repeating forward/HIP of a case after this many seconds (≥ 1 repeat)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="process CPU time or wall time (default: cpu on a CPU, wall on CUDA)")
    p.add_argument("--row-budget", type=float, default=5.0,
                   help="seconds of AD/FD rows timed per case before extrapolating (0: time every row)")
    p.add_argument("--expensive-repeats", type=int, default=1, help="timed repeats of AD and FD per case")
    p.add_argument("--no-expensive", action="store_true", help="forward and HIP only (no AD, no FD)")
    p.add_argument("--no-memory", action="store_true", help="skip the (untimed) peak-memory runs")
    p.add_argument("--expensive-max-atoms", type=int, default=60, help="AD/FD only for single molecules ≤ this")
    p.add_argument("--expensive-max-batch", type=int, default=8, help="AD/FD only for batches ≤ this")
    p.add_argument("--ad-loop-max-atoms", type=int, default=60, help="AD loop variant only up to this N")
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
    p.add_argument("--quick", action="store_true", help="smoke run: N 8, 24; B 1, 2; 1 repeat; 1 s of rows")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch_sizes, args.repeats = [8, 24], [1, 2], 1
        args.row_budget, args.case_budget, args.ad_vec_max_atoms, args.ad_vec_max_batch = 1.0, 5.0, 8, 0
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    device = torch.device(args.device)
    clock_kind = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = make_clock(clock_kind, device)
    torch.set_default_dtype(getattr(torch, args.dtype))
    if args.threads is not None or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    torch.manual_seed(args.seed)
    model = HIPEquiformerV2(**args.model_kwargs).to(device).eval()
    builder = model.graph_builder()
    horm = read_horm(args.horm)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    header = (f"HIP-EquiformerV2 ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
              f"{model.config['num_layers_hessian']} Hessian layer(s), random weights), {args.dtype}, device "
              f"{device} ({name}), {torch.get_num_threads()} intra-op thread(s), torch {torch.__version__}, "
              f"clock: {clock_kind}")
    print(header, flush=True)
    args.output.mkdir(parents=True, exist_ok=True)

    if args.profile:
        model.set_fast_paths(not args.eager)
        print(f"path: {'eager' if args.eager else 'fast'}")
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
    print(f"benchmark time {time.perf_counter() - t_start:.0f} s; command: {' '.join(sys.argv)}\n")
    print_tables(results, header, clock_kind, device)
    meta = {"device": str(device), "device_name": name, "threads": torch.get_num_threads(), "dtype": args.dtype,
            "torch": torch.__version__, "clock": clock_kind,
            "num_layers_hessian": model.config["num_layers_hessian"]}
    write_csv(results, args.output / "bench_hessian.csv", meta)
    plot(results, args.output / "bench_hessian.png", header)
    print(f"\nwrote {args.output / 'bench_hessian.csv'} and {args.output / 'bench_hessian.png'}")
    return results


if __name__ == "__main__":
    main()
