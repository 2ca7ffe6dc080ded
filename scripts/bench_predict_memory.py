"""Peak memory of predict.py against the number of frames: streaming keeps it flat.

    python scripts/bench_predict_memory.py                      # 1,000 and 10,000 frames, shipped checkpoint
    python scripts/bench_predict_memory.py --frames 500 5000 --ckpt <checkpoint>

Writes files of small molecules (H2O, NH3, CH4, HCN, CH3OH, each displaced by 0.03 Å), runs
``python predict.py input=<file>`` on each in a fresh process, and prints every run's peak resident
memory (the process's ``ru_maxrss``), wall time and the ratio of the largest to the smallest peak.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.build import molecule

ROOT = Path(__file__).resolve().parents[1]
FORMULAS = ("H2O", "NH3", "CH4", "HCN", "CH3OH")


def write_frames(path: Path, n: int, seed: int = 0) -> None:
    """``n`` displaced small molecules, written one at a time (the writer holds none of them)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            atoms = molecule(FORMULAS[i % len(FORMULAS)])
            atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
            ase.io.write(f, atoms, format="extxyz")


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """Run ``command``; its peak resident memory in MiB (Linux ``ru_maxrss`` is in KiB) and wall seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_predict_memory: {' '.join(command)} failed: {process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1000, 10000], help="file sizes to run")
    parser.add_argument("--ckpt", default=str(ROOT / "ckpt" / "hip_small.ckpt"), help="checkpoint to predict with")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.frames):
            path = Path(tmp) / f"frames_{n}.extxyz"
            write_frames(path, n)
            command = [sys.executable, str(ROOT / "predict.py"), f"input={path}", f"ckpt_path={args.ckpt}",
                       f"output_dir={Path(tmp) / f'out_{n}'}", f"eval.batch_size={args.batch_size}"]
            peaks[n], seconds = peak_rss_mib(command)
            print(f"{n:>7} frames: peak RSS {peaks[n]:8.1f} MiB, {seconds:7.1f} s ({n / seconds:6.1f} molecules/s)",
                  flush=True)
    smallest, largest = min(peaks), max(peaks)
    print(f"peak RSS ratio {largest} / {smallest} frames: {peaks[largest] / peaks[smallest]:.3f}")


if __name__ == "__main__":
    main()
