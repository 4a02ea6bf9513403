"""Meta-tests of the conformance kit's case generation (``thanos.testing.cases``), as array-api-tests
tests its own strategies: every family draws what it promises, and the golden cases' expected
masks are the ones their docstring derives by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

import tolerances as T
from reference import spec
from thanos.testing.cases import FAMILIES, case_strategy, golden_cases, hessian_from_batches, merged, round_to


def _check_common(case):
    c, b = case.shape
    assert case.H.shape == (b, b) and np.array_equal(case.H, case.H.T)
    assert np.array_equal(case.W, round_to(case.W, case.dtype)), "W must hold values of its dtype"
    for x in case.batches:
        assert x.shape[1] == b and np.array_equal(x, round_to(x, case.hessian_dtype))
    # H is (2/N) sum x x^T of the very activations handed out, rounded once to its dtype
    T.assert_close(case.H, hessian_from_batches(case.batches), tol=T.rounding_tol(sum(x.shape[0] for x in case.batches)) + T.eps(case.hessian_dtype),
                   what="H of the batches")
    spec.check_arguments(case.W.shape, case.H.shape, **case.arguments())  # always valid arguments


@settings(max_examples=15)
@given(case_strategy("generic", "thanos", "N:M", "float16"))
def test_generic_nm_cases_are_valid_and_low_precision_representable(case):
    _check_common(case)
    kind, n, m = spec.parse_pattern(case.pattern)
    assert kind == "N:M" and case.shape[1] % m == 0 and case.block_size % m == 0


@settings(max_examples=15)
@given(case_strategy("rank_deficient", "sparsegpt", "unstructured", "float64"))
def test_rank_deficient_cases_have_fewer_tokens_than_features(case):
    _check_common(case)
    tokens = sum(x.shape[0] for x in case.batches)
    assert tokens < case.shape[1] and np.linalg.matrix_rank(case.H) <= tokens
    assert case.percdamp in (0.0, 1e-12)


@settings(max_examples=15)
@given(case_strategy("dead_columns", "wanda", "structured", "float32"))
def test_dead_column_cases_have_exactly_zero_diagonal(case):
    _check_common(case)
    dead = case.info["dead"]
    assert dead and np.all(np.diag(case.H)[dead] == 0) and np.all(case.H[dead] == 0)


@settings(max_examples=15)
@given(case_strategy("duplicated_columns", "thanos", "unstructured", "float64"))
def test_duplicated_column_cases_copy_a_feature(case):
    _check_common(case)
    (source, copy), = case.info["duplicated"]
    assert all(np.array_equal(x[:, source], x[:, copy]) for x in case.batches)


@settings(max_examples=15)
@given(case_strategy("diagonal_hessian", "thanos", "unstructured", "float64"))
def test_diagonal_cases_have_an_exactly_diagonal_h(case):
    _check_common(case)
    assert np.count_nonzero(case.H - np.diag(np.diag(case.H))) == 0 and np.all(np.diag(case.H) > 0)


@settings(max_examples=15)
@given(case_strategy("one_weight", "sparsegpt", "unstructured", "float64"))
def test_one_weight_cases_prune_exactly_one(case):
    _check_common(case)
    c, b = case.shape
    assert spec.unstructured_count(case.sparsity, c * b) == 1


def test_merged_case_is_one_batch_of_the_same_tokens():
    case = golden_cases("thanos", "unstructured")[0]
    one = merged(case)
    assert len(one.batches) == 1 and np.array_equal(one.batches[0], np.concatenate(case.batches))
    assert one.H is case.H


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "structured", "2:4"])
def test_golden_masks_match_the_reference(method, pattern):
    """The hand-derived masks (cases.golden_cases docstring) are what the reference prunes."""
    import reference

    for case in golden_cases(method, pattern):
        _check_common(case)
        result = reference.prune(case.W, case.H, **case.arguments())
        assert np.array_equal(result.mask, case.expected_mask), (method, pattern, result.mask, case.expected_mask)


def test_every_family_applies_somewhere():
    for family in FAMILIES.values():
        assert any(family.applies(m, k) for m in spec.METHODS for k in ("unstructured", "structured", "N:M")), family.name


@settings(max_examples=15)
@given(case_strategy("correlated_features", "thanos", "unstructured", "float64"))
def test_correlated_feature_cases_use_several_blocks(case):
    _check_common(case)
    assert case.info["rho"] in (0.9, 0.99, 0.999) and (case.block_size < case.shape[1] or case.shape[1] <= 2)
