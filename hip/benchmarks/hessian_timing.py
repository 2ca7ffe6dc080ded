"""The harness of ``scripts/bench_hessian.py`` (speed and memory of HIP Hessians, paper Fig. 2 and 8):
test molecules, clocks, peak memory, and the timing of one case on the eager, fast and compiled paths.

The methods and the timing protocol are described in the script's docstring.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark
from torch.utils.benchmark.utils.common import TaskSpec

from hip.data import HormDataset
from hip.model.autodiff import autodiff_hessian, finite_difference_hessian
from hip.model.hip_equiformer import HIPEquiformerV2

#: ``eager``: fairchem's own forwards; ``fast``: the default fast paths; ``compiled``: the fast paths
#: through ``torch.compile`` (:meth:`~hip.model.hip_equiformer.HIPEquiformerV2.set_compiled`).
PATHS = ("eager", "fast", "compiled")
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
    path: str  # "eager", "fast" or "compiled" (PATHS)
    readout_layers: int  # the model's num_layers_hessian
    times: list[float] = field(default_factory=list)
    rows_timed: int = 0
    rows_total: int = 0
    peak_mib: float = math.nan
    rss_peak_mib: float = math.nan
    source: str = ""

    @property
    def case(self) -> str:
        size = f"single N={self.natoms}" if self.experiment == "single" else \
            f"batch B={self.batch_size} (max N={self.natoms})"
        return f"L={self.readout_layers} {size}"

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


def use_path(model: HIPEquiformerV2, path: str) -> None:
    """Run ``model`` on one of :data:`PATHS` (the compiled graphs are kept while another path runs)."""
    model.set_fast_paths(path != "eager")
    model.set_compiled(path == "compiled")


def bench_case(model: HIPEquiformerV2, batch, methods: list[str], args, clock: Callable[[], float],
               device: torch.device, **info) -> list[Result]:
    """Time and measure the memory of ``methods`` on one batch (forward and HIP on every path of
    ``args.paths``; AD and FD on the fast path)."""
    def result(method: str, path: str) -> Result:
        return Result(method=method, path=path, edges=batch.edge_index.shape[1],
                      hessian_edges=batch.edge_index_hessian.shape[1], **info)

    def call(method: str, path: str) -> Callable[[], object]:
        use_path(model, path)
        return lambda: model(batch, hessian=method == "hip")

    cheap = [(m, p) for m in methods if m in ("forward", "hip") for p in args.paths]
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
    use_path(model, "fast")
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
