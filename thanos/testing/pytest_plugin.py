"""pytest entry of the conformance kit: ``pytest --pyargs thanos.testing --impl MODULE:CALLABLE``.

Registered as a pytest plugin (entry point ``pytest11``), so the options exist wherever the
project is installed; the tests themselves (``thanos/testing/test_catalogue.py``) are collected
only when asked for with ``--pyargs thanos.testing``. One test per property, method, pattern and
case family (the lines ``thanos conform`` prints); each (method, pattern, family) is explored once
and shared by its properties.
"""

from __future__ import annotations

_RUNS: dict = {}


def pytest_addoption(parser):
    group = parser.getgroup("thanos conform", "conformance catalogue (pytest --pyargs thanos.testing)")
    group.addoption("--impl", default=None, metavar="MODULE:CALLABLE", help="the implementation to check (e.g. thanos:prune)")
    group.addoption("--conform-methods", default=None, help="comma-separated methods (default: all it offers)")
    group.addoption("--conform-patterns", default="unstructured,structured,N:M", help="comma-separated patterns")
    group.addoption("--conform-dtype", default="float32", help="weight dtype of the cases (default: float32)")
    group.addoption("--conform-device", default="cpu", help="device of the cases (default: cpu)")
    group.addoption("--conform-examples", type=int, default=20, help="cases per method, pattern and family")
    group.addoption("--conform-families", default=None, help="comma-separated case families (default: all)")
    group.addoption("--conform-array", default="auto", help="auto, torch or numpy")


def _settings(config) -> dict:
    from reference import spec

    from .adapters import load_implementation

    impl = config.getoption("--impl")
    adapter = load_implementation(impl, array=config.getoption("--conform-array"))
    methods = config.getoption("--conform-methods")
    families = config.getoption("--conform-families")
    return dict(
        adapter=adapter,
        methods=methods.split(",") if methods else list(adapter.methods or spec.METHODS),
        patterns=config.getoption("--conform-patterns").split(","),
        dtype={"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(
            config.getoption("--conform-dtype"), config.getoption("--conform-dtype")),
        device=config.getoption("--conform-device"),
        examples=config.getoption("--conform-examples"),
        families=families.split(",") if families else None,
    )


def pytest_generate_tests(metafunc):
    if "conform_target" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if not config.getoption("--impl"):
        metafunc.parametrize("conform_target", [None], ids=["no-impl"])
        return
    from .cases import FAMILIES, is_nm
    from .properties import BAD_INPUTS, CATALOGUE

    s = _settings(config)
    config._thanos_conform = s
    targets, ids = [], []
    for method in s["methods"]:
        for pattern in s["patterns"]:
            kind = "N:M" if is_nm(pattern) else pattern
            for fam in s["families"] or list(FAMILIES):
                if FAMILIES[fam].applies(method, kind):
                    for prop, p in CATALOGUE.items():
                        if not p.applies(method, kind, fam) or (prop == "statistics_from_all_batches" and s["adapter"].kind != "layer"):
                            continue
                        targets.append((method, pattern, fam, prop))
                        ids.append(f"{prop}[{method}-{pattern}-{fam}]")
            targets.append((method, pattern, "bad_inputs", BAD_INPUTS))
            ids.append(f"{BAD_INPUTS}[{method}-{pattern}]")
    metafunc.parametrize("conform_target", targets, ids=ids)


def finding_for(config, target):
    """The Finding of one (method, pattern, family, property), exploring its family on first use."""
    from .properties import BAD_INPUTS, CATALOGUE
    from .runner import run_catalogue

    s = config._thanos_conform
    method, pattern, fam, prop = target
    key = (method, pattern, fam)
    if key not in _RUNS:
        report = run_catalogue(
            s["adapter"], methods=[method], patterns=[pattern], dtype=s["dtype"], device=s["device"], examples=s["examples"],
            families=[] if fam == "bad_inputs" else [fam], properties=[BAD_INPUTS] if fam == "bad_inputs" else list(CATALOGUE),
        )
        _RUNS[key] = {f.property: f for f in report.findings}
    return _RUNS[key].get(prop)
