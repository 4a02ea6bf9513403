"""The conformance catalogue as pytest tests: ``pytest --pyargs thanos.testing --impl MODULE:CALLABLE``
(options: ``pytest --help``, group "thanos conform"). One test per property, method, pattern and
case family; a failure prints the smallest failing case."""

import pytest

from thanos.testing.pytest_plugin import finding_for


def test_conformance(request, conform_target):
    if conform_target is None:
        pytest.skip("no implementation given: pytest --pyargs thanos.testing --impl MODULE:CALLABLE")
    finding = finding_for(request.config, conform_target)
    if finding is None:
        pytest.skip("the property does not apply to any case of this family")
    if finding.status == "SKIP":
        pytest.skip(finding.reason)
    assert finding.status == "PASS", finding.line()
