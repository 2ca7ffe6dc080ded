"""The reports of ``scripts/bench_hessian.py``: profiler tables, FLOP/s, printed ratios, CSV and figure."""

from __future__ import annotations

import contextlib
import csv
import itertools
import statistics
from pathlib import Path

import torch
from torch.utils import benchmark

from hip.benchmarks.hessian_timing import LABELS, METHODS, PATHS, Result
from hip.model.autodiff import prefers_vectorized
from hip.model.hip_equiformer import HIPEquiformerV2


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
    columns = ["case", "HIP fast", "per molecule", "fwd fast/eager", "fwd comp/eager", "HIP fast/eager",
               "HIP comp/eager", "HIP/fwd (fast)", f"AD/HIP ({ad})", "ADloop/HIP", "ADvec/HIP", "FD/HIP",
               "AD rows timed", "peak MiB fwd/HIP eager", "peak MiB fwd/HIP/AD fast", "peak MiB HIP comp",
               "mem HIP/fwd"]
    rows = []
    for case, by in cases.items():
        hip, fwd = by.get(("hip", "fast")), by.get(("forward", "fast"))
        chosen = by.get((ad, "fast"))
        eager = {m: by.get((m, "eager")) for m in ("forward", "hip")}
        rows.append([
            case, _fmt_time(hip.seconds), _fmt_time(hip.seconds / hip.batch_size),
            _ratio(fwd, eager["forward"]), _ratio(by.get(("forward", "compiled")), eager["forward"]),
            _ratio(hip, eager["hip"]), _ratio(by.get(("hip", "compiled")), eager["hip"]), _ratio(hip, fwd),
            _ratio(chosen, hip), _ratio(by.get(("ad_loop", "fast")), hip), _ratio(by.get(("ad_vec", "fast")), hip),
            _ratio(by.get(("fd", "fast")), hip),
            f"{chosen.rows_timed}/{chosen.rows_total}" if chosen else "–",
            _memories(eager["forward"], eager["hip"]), _memories(fwd, hip, chosen),
            _memories(by.get(("hip", "compiled"))), _memory_ratio(hip, fwd)])
    print_table(f"Ratios of median times [{clock}] ('~': AD/FD rows extrapolated; AD/FD on the fast path)",
                columns, rows)
    expensive = [r for r in results if r.method not in ("forward", "hip")]
    if expensive:
        print_table("AD and FD Hessians (fast path)", ["case", "method", "time", "rows timed", "peak MiB"],
                    [[r.case, r.method, ("~" if r.estimated else "") + _fmt_time(r.seconds),
                      f"{r.rows_timed}/{r.rows_total}", f"{r.peak_mib:.0f}"] for r in expensive])
    print("Notes: eager = fairchem's own forwards (HIPEquiformerV2.set_fast_paths(False)), fast = the default, "
          "comp = the fast path through torch.compile (set_compiled(True)), timed after its one-time compile. "
          "AD/FD times with rows timed < rows total are setup + measured time per row × all rows. Peak MiB: "
          "CUDA max_memory_allocated / CPU allocator peak from torch.profiler memory events, above what was "
          "allocated before the call. '–': not run (caps: --expensive-max-*, --ad-*-max-*, --no-expensive).")


def write_csv(results: list[Result], path: Path, meta: dict) -> None:
    fields = ["readout_layers", "experiment", "natoms", "batch_size", "total_atoms", "edges", "hessian_edges",
              "method", "path",
              "seconds", "seconds_per_molecule", "seconds_all", "repeats", "rows_timed", "rows_total", "estimated",
              "peak_mib", "rss_peak_mib", "source", *meta]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({
                "experiment": r.experiment, "natoms": r.natoms, "batch_size": r.batch_size,
                "total_atoms": r.total_atoms, "edges": r.edges, "hessian_edges": r.hessian_edges,
                "readout_layers": r.readout_layers, "method": r.method, "path": r.path, "seconds": f"{r.seconds:.6g}",
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
            ax.plot(xs, ys, {"fast": "-", "eager": ":", "compiled": "--"}[p], color=color, label=f"{LABELS[m]}, {p}")
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
    fig.suptitle(title + "   (dotted: eager path, dashed: compiled; hollow: AD/FD rows partly extrapolated)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# ---- floating-point throughput --------------------------------------------------------------------

def hip_flops(model: HIPEquiformerV2, batch) -> int:
    """Floating-point operations of one HIP pass (fast path), counted by ``torch.utils.flop_counter``.

    The counter covers matrix products (``mm``, ``bmm``, ``addmm``, ``linear``, convolutions), where
    nearly all arithmetic of the model is; elementwise work (SiLU, norms, sums, scatters) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from hip.benchmarks.hessian_timing import use_path

    use_path(model, "fast")
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(batch)
    return counter.get_total_flops()


def core_peak_flops() -> tuple[float, str]:
    """Single-precision peak of one core (FLOP/s) from /proc/cpuinfo, and the assumption it rests on.

    FLOP per cycle: 2 FMA units × 2 operations × lanes, 8 float32 lanes with AVX2 (32 FLOP/cycle),
    16 with AVX-512 (64); at the clock /proc/cpuinfo reports (``cpu MHz``, no turbo). NaN off Linux.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return float("nan"), "no /proc/cpuinfo"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
    mhz = float(fields.get("cpu MHz", "nan"))
    per_cycle = 2 * 2 * lanes
    model = fields.get("model name", "?")
    return mhz * 1e6 * per_cycle, f"{model}, {mhz:.0f} MHz × {per_cycle} FLOP/cycle (2 FMA units × {lanes} lanes)"


def flop_table(results: list[Result], flops: dict[str, int]) -> None:
    """Counted FLOPs of one HIP pass, and FLOP/s of the fast and compiled paths against one core's peak."""
    peak, assumption = core_peak_flops()
    by = {(r.case, r.method, r.path): r for r in results}
    rows = []
    for case, count in flops.items():
        row = [case, f"{count / 1e9:.2f}"]
        for path in ("fast", "compiled"):
            r = by.get((case, "hip", path))
            rate = count / r.seconds if r else float("nan")
            row += [f"{rate / 1e9:.1f}" if r else "–", f"{rate / peak:.1%}" if r else "–"]
        rows.append(row)
    print_table(f"Throughput of one HIP pass (counted matmul FLOPs / median time); core peak {peak / 1e9:.0f} "
                f"GFLOP/s float32 ({assumption})",
                ["case", "GFLOP", "fast GFLOP/s", "fast % peak", "comp GFLOP/s", "comp % peak"], rows)
