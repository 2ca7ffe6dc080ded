"""The harness shared by the downstream benchmarks (scripts/bench_relax.py, bench_ts_search.py,
bench_zpe.py; paper Fig. 3, Fig. 4, Table 2), apart from the library a user's workflow calls
(:mod:`hip.optimize`, :mod:`hip.irc`, :mod:`hip.dft`, :mod:`hip.calculator`).

* :mod:`~hip.benchmarks.methods`: the paper's optimiser tables and the model calculators;
* :mod:`~hip.benchmarks.molecules`: molecules from shards or files, selected and noised;
* :mod:`~hip.benchmarks.results`: the resumable results log, quartiles;
* :mod:`~hip.benchmarks.cli`: the scripts' shared options and the settings that change results;
* :mod:`~hip.benchmarks.report`: the printed table, ``summary.csv``, ``table.txt`` and figures.
"""

from hip.benchmarks.cli import add_common_arguments, add_dft_arguments, common_settings
from hip.benchmarks.methods import (
    HESSIAN_LABELS,
    RELAXATION_METHODS,
    TS_SEARCH_METHODS,
    attach,
    model_calculators,
    select_methods,
)
from hip.benchmarks.molecules import Molecule, load_molecules, perturb, select_molecules
from hip.benchmarks.report import figure, write_report
from hip.benchmarks.results import ResultsLog, quartiles

__all__ = [
    "HESSIAN_LABELS",
    "RELAXATION_METHODS",
    "TS_SEARCH_METHODS",
    "Molecule",
    "ResultsLog",
    "add_common_arguments",
    "add_dft_arguments",
    "attach",
    "common_settings",
    "figure",
    "load_molecules",
    "model_calculators",
    "perturb",
    "quartiles",
    "select_methods",
    "select_molecules",
    "write_report",
]
