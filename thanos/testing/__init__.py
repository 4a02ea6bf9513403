"""``thanos.testing``: a conformance kit for any pruning implementation (``thanos conform``).

Point the catalogue of named properties at an implementation and get, per property and case
family, PASS or the smallest failing case (array-api-tests is the model):

    from thanos.testing import FunctionAdapter, LayerAdapter, run_catalogue
    report = run_catalogue(FunctionAdapter(my_prune), methods=["thanos"], patterns=["2:4"])
    for finding in report.findings: print(finding.line())

or from the shell ``thanos conform MODULE:CALLABLE`` and from pytest
``pytest --pyargs thanos.testing --impl MODULE:CALLABLE``.

Modules: ``tolerances`` (the project's one tolerance model; NumPy only), ``strategies`` (Hypothesis
strategies of layers and row problems), ``cases`` (conformance cases and their families),
``adapters`` (function and layer adapters), ``oracle`` and ``properties`` (the catalogue),
``runner`` (the run and its report), ``registry`` (production kernels paired with their reference
functions). Importing ``thanos.testing`` imports neither torch nor Hypothesis; the catalogue
needs Hypothesis (``pip install 'thanos[conform]'``).
"""

from importlib import import_module

_LAZY = {
    "Adapter": "adapters", "FunctionAdapter": "adapters", "LayerAdapter": "adapters", "Output": "adapters",
    "load_implementation": "adapters", "Case": "cases", "FAMILIES": "cases", "make_case": "cases",
    "golden_cases": "cases", "case_strategy": "cases", "CATALOGUE": "properties", "PROPERTY_NAMES": "properties",
    "Violation": "properties", "Report": "runner", "Finding": "runner", "run_catalogue": "runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
