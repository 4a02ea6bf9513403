"""The project's own implementations run through the conformance kit (``thanos.testing``), and
the kit proves it can fail: a gallery of broken implementations (``conform_gallery.py``), one
bug class of the field each, is flagged by the property named for its bug, while production, the
reference and a correct research-style implementation raise no alarm.

Case counts follow the Hypothesis profile (``ci``: 20 per method, pattern and family).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import settings

import conform_gallery as G
import reference
import thanos
from reference import spec
from thanos import cli
from thanos.testing import FunctionAdapter, run_catalogue
from thanos.testing.cases import FAMILIES

PATTERNS = ("unstructured", "structured", "N:M")
ALL_FAMILIES = list(FAMILIES)
EXAMPLES = max(10, settings.default.max_examples // 2)
#: cases per gallery bug, whatever the profile (the draws are derandomized, so each bug is found at
#: the same case every run; measured: every bug is flagged within 10 cases)
GALLERY_EXAMPLES = 30


def _production(compute_dtype=None) -> FunctionAdapter:
    fn = thanos.prune if compute_dtype is None else functools.partial(thanos.prune, compute_dtype=compute_dtype)
    return FunctionAdapter(fn, name="thanos:prune", array="torch")


#: properties every (method, pattern) must have exercised and passed, not merely not failed
CORE = ("pruned_weights_exactly_zero", "exact_counts", "mask_rule", "input_not_modified", "dtype_and_device",
        "deterministic", "bad_inputs_raise")


def _assert_conforms(report) -> None:
    bad = [f.line() for f in report.findings if f.status not in ("PASS", "SKIP")]
    assert not bad, f"{report.implementation}:\n" + "\n".join(bad)
    for method in report.settings["methods"]:
        for pattern in report.settings["patterns"]:
            passed = {f.property for f in report.findings if f.method == method and f.pattern == pattern and f.status == "PASS"}
            assert set(CORE) <= passed, f"{method} {pattern}: never exercised: {sorted(set(CORE) - passed)}"


@pytest.mark.parametrize("method", spec.METHODS)
def test_production_conforms(device, method):
    """``thanos conform thanos:prune`` (float32 weights, the default), per method."""
    report = run_catalogue(_production(), methods=[method], patterns=PATTERNS, dtype="float32", device=device,
                           examples=EXAMPLES, families=ALL_FAMILIES)
    _assert_conforms(report)


@pytest.mark.parametrize("method", spec.METHODS)
def test_production_in_float64_conforms(device, method):
    """float64 weights solved in float64 are held to float64 tolerances."""
    report = run_catalogue(_production(torch.float64), methods=[method], patterns=PATTERNS, dtype="float64",
                           device=device, examples=EXAMPLES, families=ALL_FAMILIES)
    _assert_conforms(report)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_production_in_low_precision_conforms(device, dtype):
    """``thanos conform thanos:prune --dtype bf16`` (on CUDA: the GPU regression check)."""
    report = run_catalogue(_production(), methods=["thanos"], patterns=PATTERNS, dtype=dtype, device=device,
                           examples=EXAMPLES, families=ALL_FAMILIES)
    _assert_conforms(report)


@pytest.mark.parametrize("method", spec.METHODS)
def test_reference_conforms(method):
    """``thanos conform reference:prune --dtype float64``."""
    adapter = FunctionAdapter(reference.prune, name="reference:prune", array="numpy")
    report = run_catalogue(adapter, methods=[method], patterns=PATTERNS, dtype="float64", examples=EXAMPLES, families=ALL_FAMILIES)
    _assert_conforms(report)


def test_research_thanos_without_a_bug_conforms():
    """The control of the gallery: the same research-style class without a planted bug passes the
    whole catalogue, so every flag below is the bug's doing."""
    for dtype in ("float64", "float32"):
        report = run_catalogue(G.research_thanos, methods=["thanos"], patterns=PATTERNS, dtype=dtype, examples=EXAMPLES,
                               families=ALL_FAMILIES)
        _assert_conforms(report)


@pytest.mark.parametrize("bug", list(G.GALLERY), ids=lambda cls: cls.__name__)
def test_gallery_bug_is_flagged_by_its_property(bug):
    prop, pattern, family, dtype = G.GALLERY[bug]
    report = run_catalogue(G.layer_adapter(bug), methods=["thanos"], patterns=[pattern], dtype=dtype,
                           examples=GALLERY_EXAMPLES, families=[family], properties=[prop], shrink=False)
    statuses = {f.property: f.status for f in report.findings}
    assert statuses.get(prop) == "FAIL", f"{bug.__name__} ({bug.__doc__.strip()}) was not flagged by {prop}: {statuses}"


def test_failure_reports_the_smallest_case():
    """With shrinking, the failing line carries a small case: Hypothesis shrinks shapes to the
    fewest rows and columns that still show the bug (one extra weight in one block: 1 x 1 suffices)."""
    report = run_catalogue(G.one_extra_per_block, methods=["thanos"], patterns=["unstructured"], dtype="float64",
                           examples=EXAMPLES, families=["generic"], properties=["exact_counts"])
    (finding,) = [f for f in report.findings if f.property == "exact_counts"]
    assert finding.status == "FAIL" and finding.violation["quantity"] == "pruned in the layer"
    c, b = finding.smallest_case["shape"]
    assert c * b <= 4, finding.line()
    assert "smallest case: shape=" in finding.line()


# ------------------------------------------------------------------------------------ entry points


def test_cli_passes_and_writes_a_json_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["conform", "reference:prune", "--methods", "magnitude,wanda", "--patterns", "2:4,unstructured",
                     "--examples", "4", "--families", ",".join(ALL_FAMILIES), "--report", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "PASS  exact_counts" in text and "FAIL" not in text
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["counts"]["FAIL"] == 0 and report["counts"]["PASS"] > 0
    assert {f["method"] for f in report["findings"]} == {"magnitude", "wanda"}


def test_cli_exits_non_zero_with_the_smallest_failing_case(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = cli.main(["conform", "conform_gallery:missing_final_zeroing", "--patterns", "unstructured", "--dtype", "fp64",
                     "--families", "generic", "--properties", "pruned_weights_exactly_zero", "--report", str(out)])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "FAIL  pruned_weights_exactly_zero" in text and "smallest case: shape=" in text
    (finding,) = json.loads(out.read_text())["findings"]
    assert finding["status"] == "FAIL" and finding["smallest_case"]["seed"] is not None


def test_cli_xfails_file_turns_known_failures_into_xfail(tmp_path, capsys):
    xfails = tmp_path / "xfails.txt"
    xfails.write_text("# known\npruned_weights_exactly_zero[thanos-unstructured-*]\n")
    code = cli.main(["conform", "conform_gallery:missing_final_zeroing", "--patterns", "unstructured", "--dtype", "float64",
                     "--families", "generic", "--properties", "pruned_weights_exactly_zero", "--xfails", str(xfails)])
    assert code == 0 and "XFAIL pruned_weights_exactly_zero" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["conform", "no_such_module_here:prune"], "cannot import module"),
    (["conform", "thanos"], "MODULE:CALLABLE"),
    (["conform", "thanos:no_such_function"], "has no attribute"),
    (["conform", "reference:prune", "--patterns", "4:2"], "--patterns"),
    (["conform", "reference:prune", "--methods", "obs"], "--methods"),
    (["conform", "reference:prune", "--families", "nope"], "--families"),
    (["conform", "reference:prune", "--examples", "0"], "--examples"),
])
def test_cli_usage_errors_name_the_argument(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_without_cuda_skips_with_a_reason_and_says_nothing_was_checked(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the cuda variants of the tests above run the catalogue there")
    code = cli.main(["conform", "thanos:prune", "--device", "cuda", "--methods", "magnitude", "--patterns", "2:4"])
    captured = capsys.readouterr()
    assert code == 3
    assert "SKIP" in captured.out and "CUDA is not available" in captured.out and "nothing was checked" in captured.err


def test_cli_without_hypothesis_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # import hypothesis now raises ImportError
    assert cli.main(["conform", "reference:prune"]) == 2
    assert "pip install 'thanos[conform]'" in capsys.readouterr().err


def test_pytest_entry(tmp_path):
    """``pytest --pyargs thanos.testing --impl MODULE:CALLABLE``: one test per property line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "thanos.testing", "--impl", "conform_gallery:one_extra_per_block",
         "--conform-patterns", "unstructured", "--conform-dtype", "float64", "--conform-families", "generic",
         "--conform-examples", "5", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    text = run.stdout + run.stderr
    assert run.returncode == 1, text
    assert "FAILED" in text and "exact_counts[thanos-unstructured-generic]" in text
    assert " passed" in text  # the other properties of the same family pass
