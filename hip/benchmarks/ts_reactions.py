"""TS search from a reactant and a product, per model Hessian, on the embedded reaction set (paper §4, Fig. 4).

The benchmark harness of ``scripts/bench_ts_search.py``'s default mode: every reaction of
:mod:`hip.data.reactions` is run through :func:`hip.reaction.find_reaction` from its DFT reactant and
product with each method of :data:`hip.benchmarks.TS_SEARCH_METHODS` (RS-P-RFO with a fresh HIP,
autodiff or finite-difference Hessian every step, or one at the start and TS-BFGS updates), and the
stages ReactBench records are counted over all reactions: path, converged (the TS search met the
criteria), TS success (exactly one imaginary mode below −10 cm⁻¹), IRC (both ways, both ends relaxed),
intended (the IRC ends are the reactant and the product). Each TS success is then recomputed with DFT
(:func:`hip.dft.dft_verify`): one imaginary DFT mode and a DFT force RMS below 2e-3 Hartree/Bohr (the
paper) or 3e-3 (ReactBench's code). Also per method: how far the found TS lies from the DFT TS (aligned
RMSD, Å) and the error of the model's forward barrier against the DFT one (eV).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from hip.benchmarks.results import quartiles
from hip.data.reactions import LabelledReaction
from hip.dft import DFTCheck, dft_verify
from hip.irc import aligned_rmsd
from hip.optimize import OptimizerSpec
from hip.reaction import STAGES, ReactionSettings, find_reaction

#: The pipeline stages counted (% of all reactions): a stage counts only if every one before it passed.
STAGE_COLUMNS = {"path": "Path [%]", "ts_search": "Converged [%]", "ts_success": "TS success [%]",
                 "irc": "IRC [%]", "intended": "Intended [%]"}
DFT_COLUMNS = ("DFT checked", "DFT TS, RMS < 2e-3 [%]", "DFT TS, RMS < 3e-3 [%]")
COLUMNS = ("Reactions", *STAGE_COLUMNS.values(), *DFT_COLUMNS, "TS RMSD to DFT median [Å]",
           "|ΔE‡ error| median [eV]", "Time median [s]")


def reaction_settings(spec: OptimizerSpec, **options) -> ReactionSettings:
    """:class:`hip.reaction.ReactionSettings` for ``spec`` (its Hessian every step or only at the start)
    and ``options`` (other ``ReactionSettings`` fields)."""
    return ReactionSettings(hessian_every_step=spec.every_step, **options)


def run_reaction(reaction: LabelledReaction, spec: OptimizerSpec, calculator, settings: ReactionSettings) -> dict:
    """Run ``reaction`` from its DFT reactant and product with ``calculator`` (the model with ``spec``'s
    Hessian); a flat, JSON-serialisable row for the results log."""
    def bare(atoms: Atoms) -> Atoms:
        return Atoms(numbers=atoms.numbers, positions=atoms.positions)

    result = find_reaction(bare(reaction.reactant), bare(reaction.product), calculator, settings)
    summary = result.as_dict()
    stages = result.stages
    row = {"reaction": reaction.name, "method": spec.key, "numbers": reaction.ts.numbers.tolist(),
           "passed": {name: stages[name].success for name in STAGES if name in stages},
           "failed_stage": result.failed_stage,
           "error": stages[result.failed_stage].error if result.failed_stage else "",
           "seconds": sum(r.seconds for r in stages.values()),
           "ts_steps": stages["ts_search"].steps if "ts_search" in stages else None,
           "hessian_calls": stages["ts_search"].details.get("hessian_calls") if "ts_search" in stages else None,
           "warnings": sorted({w for r in stages.values() for w in r.details.get("warnings", ())}),
           "imaginary_frequency_cm1": summary["imaginary_frequency_cm1"],
           "barrier_forward_eV": summary["barrier_forward_eV"],
           "dft_barrier_forward_eV": reaction.summary.get("barrier_forward_eV"),
           "ts_positions": None, "ts_rmsd_to_dft": None}
    if result.ts is not None:
        row["ts_positions"] = result.ts.positions.tolist()
        row["ts_rmsd_to_dft"] = aligned_rmsd(result.ts, reaction.ts)
    return row


def dft_check(row: dict, **label_kwargs) -> dict:
    """:func:`hip.dft.dft_verify` of the TS in ``row``, flattened, with both force-RMS thresholds."""
    check = dft_verify(Atoms(numbers=row["numbers"], positions=row["ts_positions"]), **label_kwargs)
    rms = check.force_rms
    return {"reaction": row["reaction"], "method": row["method"], **vars(check),
            "rms_below_2e-3": bool(check.ts and rms is not None and rms < DFTCheck.FORCE_RMS_THRESHOLD),
            "rms_below_3e-3": bool(check.ts and rms is not None and rms < DFTCheck.REACTBENCH_FORCE_RMS_THRESHOLD)}


def _passed(row: dict, stage: str) -> bool:
    """The stage passed and so did every one before it."""
    order = list(STAGES)
    return all(row["passed"].get(s, False) for s in order[: order.index(stage) + 1])


def summarize(rows: list[dict], dft_rows: list[dict], labels: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per method: the stage shares of all reactions (%), the DFT checks (% of all reactions), the median
    TS RMSD to the DFT TS (Å, over the searches that ended), the median |ΔE‡ error| (eV, over the
    reactions with a barrier) and the median wall time (s)."""
    table = {}
    for key, label in labels.items():
        mine = [r for r in rows if r["method"] == key]
        if not mine:
            continue
        checks = {d["reaction"]: d for d in dft_rows if d["method"] == key}
        errors = [abs(r["barrier_forward_eV"] - r["dft_barrier_forward_eV"]) for r in mine
                  if r["barrier_forward_eV"] is not None and r["dft_barrier_forward_eV"] is not None]
        table[label] = {
            "Reactions": float(len(mine)),
            **{column: 100.0 * np.mean([_passed(r, stage) for r in mine]) for stage, column in STAGE_COLUMNS.items()},
            "DFT checked": float(len(checks)),
            "DFT TS, RMS < 2e-3 [%]": 100.0 * np.mean([checks.get(r["reaction"], {}).get("rms_below_2e-3", False)
                                                        for r in mine]),
            "DFT TS, RMS < 3e-3 [%]": 100.0 * np.mean([checks.get(r["reaction"], {}).get("rms_below_3e-3", False)
                                                        for r in mine]),
            "TS RMSD to DFT median [Å]": quartiles(r["ts_rmsd_to_dft"] for r in mine
                                                   if r["ts_rmsd_to_dft"] is not None)[1],
            "|ΔE‡ error| median [eV]": quartiles(errors)[1],
            "Time median [s]": quartiles(r["seconds"] for r in mine)[1],
        }
    return table


def plot(path, table: dict[str, dict[str, float]]) -> None:
    """Fig. 4 style: per method, the share of reactions passing each stage and the DFT checks."""
    from hip.benchmarks.report import figure

    stages = [*STAGE_COLUMNS.values(), *DFT_COLUMNS[1:]]
    with figure(path, size=(12, 4.5)) as (_, ax):
        width = 0.8 / max(len(table), 1)
        for i, (label, values) in enumerate(table.items()):
            ax.bar(np.arange(len(stages)) + i * width, [values[s] for s in stages], width, label=label)
        ax.set_xticks(np.arange(len(stages)) + 0.4 - width / 2, [s.replace(" [%]", "") for s in stages])
        ax.set_ylabel("reactions [%]")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title("TS search from reactant + product (share of all reactions passing each stage)")
