"""Reproducible pipelines: a notebook as a parameterised, recorded run.

    lepton run NB.ipynb -p lr 0.1            # one recorded run (papermill, `lepton` engine)
    papermill --engine lepton in.ipynb out.ipynb -p lr 0.1
    lepton sweep NB.ipynb -p lr 0.1 0.01 -p epochs 2 4 --parallel 2
    lepton runs | lepton compare RUN RUN | lepton reproduce RUN

From Python the same core: :func:`run_notebook`, :func:`run_sweep`, :func:`reproduce`,
:func:`compare`; inside a notebook, ``lepton_lab.record(name, value)``.
"""

from ._compare import Comparison, compare, format_comparison, reproduce
from ._record import record
from ._run import PipelineFailed, RunOptions, rerun, run_notebook
from ._sweep import SweepOptions, SweepResult, expand_grid, run_sweep

__all__ = ["Comparison", "PipelineFailed", "RunOptions", "SweepOptions", "SweepResult",
           "compare", "expand_grid", "format_comparison", "record", "reproduce", "rerun",
           "run_notebook", "run_sweep"]
