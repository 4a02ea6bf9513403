"""Meta-tests of tests/strategies.py and tests/tolerances.py: the strategies draw what they promise
(kappa as asked, X rank deficient, dead columns dead, duplicates duplicated, scales in range,
patterns valid for the shapes) and the tolerance helpers fail when they should."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as S
import tolerances as T
from reference import spec


def _kappa_tol(n: int, kappa: float) -> float:
    # Rounding Q diag(lambda) Q^T (or 2 X X^T) perturbs every eigenvalue by at most ~n eps ||H||
    # (Weyl), i.e. lambda_min = ||H|| / kappa by a relative n kappa eps: kappa itself moves by the
    # same relative amount. C_SOLVE gives the usual headroom (measured worst: 1.3 n kappa eps).
    return T.solve_tol(n, kappa)


@given(S.layers(max_kappa=S.KAPPA_SQRT, rank_deficient=False, h_scale=S.SCALE_RANGE, w_scale=S.SCALE_RANGE))
def test_layer_hessian_has_the_requested_condition_number(layer):
    W, H, X, info = layer
    b = info["b"]
    assert W.shape == (info["c"], b) and H.shape == (b, b)
    assert np.array_equal(H, H.T), "H must be exactly symmetric"
    measured = T.condition_number(H)
    assert abs(measured / info["kappa"] - 1.0) <= _kappa_tol(b, info["kappa"]), (measured, info["kappa"])
    assert np.all(np.linalg.eigvalsh(H) > 0), "a full-rank layer's H must be SPD"
    if X is not None:
        assert X.shape == (b, info["tokens"]) and info["tokens"] >= b
        # H was symmetrised after the GEMM, whose (i, j) and (j, i) entries may round differently
        # (OpenBLAS on AMD Zen): equal to the rounding of a length-tokens dot product, bounded by
        # gamma_tokens * max |H| (|2 x_i . x_j| <= sqrt(H_ii H_jj), Cauchy-Schwarz)
        T.assert_close(H, 2.0 * X @ X.T, tol=T.rounding_tol(info["tokens"]), what="H == 2 X X^T")


@given(st.integers(2, 12), st.sampled_from(S.KAPPA_CLASSES), S.seeds())
def test_spd_with_condition_spans_lapack_classes(n, kappa, seed):
    H = S.spd_with_condition(n, kappa, np.random.default_rng(seed))
    measured = T.condition_number(H)
    if kappa <= S.KAPPA_SQRT:
        assert abs(measured / kappa - 1.0) <= _kappa_tol(n, kappa)
    else:
        # At 0.1/eps the rounding of the product alone (n eps ||H||) is ~n/10 of lambda_min: the
        # class means "at the edge of float64", so we only ask for the right order of magnitude.
        assert measured >= 0.1 * kappa, measured


@given(S.layers(rank_deficient=True, max_b=16))
def test_rank_deficient_layers_have_fewer_tokens_than_features(layer):
    W, H, X, info = layer
    b, tokens = info["b"], info["tokens"]
    assert X is not None and X.shape == (b, tokens) and tokens < b
    assert info["rank"] <= tokens < b and info["singular"]
    assert np.linalg.matrix_rank(X) == tokens
    # H = 2 X X^T is PSD and singular: b - tokens eigenvalues vanish (to rounding of ||H||)
    lam = np.linalg.eigvalsh(H)
    assert lam[-1] > 0
    assert np.all(np.abs(lam[: b - tokens]) <= T.rounding_tol(b) * lam[-1]), lam


@given(S.layers(dead_columns=True, duplicate_columns=True, hessian="tokens", rank_deficient=None, min_b=3))
def test_dead_and_duplicated_columns(layer):
    W, H, X, info = layer
    dead, dup = info["dead"], info["duplicated"]
    assert dead, "dead_columns=True must draw at least one dead column"
    assert np.all(X[dead] == 0) and np.all(H[dead] == 0) and np.all(H[:, dead] == 0)
    assert np.all(np.diag(H)[[j for j in range(info["b"]) if j not in dead]] > 0)
    for source, copy in dup:
        assert source not in dead and copy not in dead
        assert np.array_equal(X[source], X[copy])
        # equal rows of X give equal rows of H in exact arithmetic, but the GEMM may sum the two
        # rows in different orders (kernel tiles and tails depend on the row's position and on the
        # CPU's BLAS kernels): equal to the rounding of a length-tokens dot product
        T.assert_close(H[copy], H[source], tol=T.rounding_tol(info["tokens"]), scale=float(np.max(np.abs(H))),
                       what=f"H row {copy} (copy of row {source})")
    # the prepared Hessian (the one the reference factors) fixes dead columns only
    Hp = S.prepared_hessian(H)
    assert np.all(np.diag(Hp)[dead] == np.mean(np.diag(H))) and np.all(Hp[dead][:, dead] == np.diag(np.diag(Hp)[dead]))
    if not dup and not info["singular"]:
        assert np.all(np.linalg.eigvalsh(Hp) > 0)


@given(S.layers(dead_columns=True, hessian="spectrum"))
def test_spectrum_layers_with_dead_columns(layer):
    W, H, X, info = layer
    assert X is None and info["dead"]
    assert np.all(H[info["dead"]] == 0) and np.all(H[:, info["dead"]] == 0)
    assert np.all(np.linalg.eigvalsh(S.prepared_hessian(H)) > 0)


@given(S.layers(w_scale=(1e-20, 1e20), h_scale=(1e-20, 1e20)))
def test_scales_stay_in_range(layer):
    W, H, X, info = layer
    assert 1e-20 <= info["w_scale"] <= 1e20 and 1e-20 <= info["h_scale"] <= 1e20
    # standard normal entries: max |W| / w_scale lies in (1e-3, 10) for any c*b <= 128 except with
    # probability < 1e-20 (the derandomized ci profile draws a fixed set of seeds)
    ratio = np.max(np.abs(W)) / info["w_scale"]
    assert 1e-3 < ratio < 10.0, ratio
    # ||H||_2 = h_scale (the spectrum's largest eigenvalue is 1)
    assert abs(np.linalg.eigvalsh(H)[-1] / info["h_scale"] - 1.0) <= T.rounding_tol(info["b"])


@given(S.layers())
def test_weights_have_no_ties(layer):
    W = layer.W
    assert np.unique(np.abs(W)).size == W.size, "continuous weights must not tie"


@given(S.row_problems(max_kappa=S.KAPPA_SQRT))
def test_row_problems(problem):
    w, H, q, X, info = problem
    b, s = info["b"], info["s"]
    assert w.shape == (b,) and H.shape == (b, b) and q.shape == (s,)
    assert 1 <= s <= b and np.all(np.diff(q) > 0) and 0 <= q[0] and q[-1] < b
    assert abs(T.condition_number(H) / info["kappa"] - 1.0) <= _kappa_tol(b, info["kappa"])
    T.assert_close(2.0 * X @ X.T, H, tol=T.rounding_tol(b), what="H = 2 X X^T")


@given(S.row_problems(diagonal=True))
def test_diagonal_row_problems(problem):
    w, H, q, X, info = problem
    assert X is None and np.array_equal(H, np.diag(np.diag(H)))
    assert abs(T.condition_number(H) / info["kappa"] - 1.0) <= _kappa_tol(info["b"], info["kappa"])


@given(st.integers(1, 24), st.integers(1, 24), st.data())
def test_patterns_are_valid_for_the_shape(b, block, data):
    pattern = data.draw(S.patterns(b, block))
    kind, n, m = spec.parse_pattern(pattern)
    if kind == "N:M":
        assert b % m == 0 and block % m == 0 and 1 <= n < m


@given(st.integers(2, 16), st.data())
def test_prune_arguments_pass_the_contract(b, data):
    kwargs = data.draw(S.prune_arguments(b))
    opts = spec.check_arguments((3, b), (b, b), percdamp=0.01, **kwargs)
    assert opts.method == kwargs["method"]


@given(st.integers(1, 200), st.data())
def test_exact_sparsities(numel, data):
    p, k = data.draw(S.exact_sparsities(numel))
    assert 0 <= k < numel and spec.unstructured_count(p, numel) == k


@given(S.kappas(max_kappa=1e3), S.scales(1e-5, 1e5), S.sparsities(0.1, 0.6))
def test_scalar_strategies_respect_their_bounds(kappa, scale, p):
    assert 1.0 <= kappa <= 1e3 * (1 + 1e-12)
    assert 1e-5 * (1 - 1e-12) <= scale <= 1e5 * (1 + 1e-12)
    assert 0.1 <= p <= 0.6


# ----------------------------------------------------------------------------------------------
# tolerances.py: the helpers must be able to fail, with the information a reader needs
# ----------------------------------------------------------------------------------------------


def test_eps_of_dtypes():
    assert T.eps(np.float64) == 2.0**-52 and T.eps("float32") == 2.0**-23
    assert T.eps("bfloat16") == 2.0**-7 and T.eps("torch.float16") == 2.0**-10
    with pytest.raises(ValueError, match="dtype"):
        T.eps("int8x")


def test_solve_tol_is_c_n_kappa_eps():
    assert T.solve_tol(10, 1e6) == T.C_SOLVE * 10 * 1e6 * 2.0**-52
    assert T.solve_tol(10, 1e6, "float32") == T.C_SOLVE * 10 * 1e6 * 2.0**-23


def test_assert_close_reports_worst_element_and_kappa():
    expected = np.array([[1.0, 2.0], [3.0, 4.0]])
    actual = expected.copy()
    actual[1, 0] += 1e-3
    T.assert_close(actual, expected, tol=1e-3, what="ok")  # 1e-3 <= 1e-3 * 4
    with pytest.raises(AssertionError, match=r"index \(1, 0\).*kappa=12.*eps="):
        T.assert_close(actual, expected, tol=1e-5, kappa=12.0, what="bad")
    with pytest.raises(AssertionError):
        T.assert_close(np.array([np.nan]), np.array([0.0]), tol=1.0, scale=1.0, what="nan")


def test_assert_small_scalar_and_zero_helpers():
    T.assert_small(np.array([1e-9, -2e-9]), tol=1e-8, scale=1.0, what="ok")
    with pytest.raises(AssertionError, match=r"index \(1,\)"):
        T.assert_small(np.array([1e-9, -2e-7]), tol=1e-8, scale=1.0, what="bad")
    T.assert_scalar_close(1.0 + 1e-12, 1.0, tol=1e-11, what="ok")
    with pytest.raises(AssertionError):
        T.assert_scalar_close(1.0 + 1e-10, 1.0, tol=1e-11, what="bad")
    W = np.array([[0.0, 1e-300], [2.0, 0.0]])
    T.assert_exactly_zero(W, np.array([[True, False], [False, True]]), what="ok")
    with pytest.raises(AssertionError, match=r"\(0, 1\)"):
        T.assert_exactly_zero(W, np.array([[True, True], [False, True]]), what="bad")


def test_assert_no_worse_than_reference():
    exact = np.linspace(-1, 1, 7)
    reference = exact + 1e-3
    T.assert_no_worse_than_reference(exact + 1.9e-3, reference, exact, dtype="bfloat16", what="ok")
    with pytest.raises(AssertionError, match="same-dtype reference"):
        T.assert_no_worse_than_reference(exact + 5e-2, reference, exact, dtype="bfloat16", what="bad")
    # an exact same-dtype reference: only the floor (2 ulps of max|exact| = 2 * 2^-23) is allowed
    T.assert_no_worse_than_reference(exact + 2.0**-23, exact, exact, dtype="float32", what="floor ok")
    with pytest.raises(AssertionError):
        T.assert_no_worse_than_reference(exact + 2.0**-20, exact, exact, dtype="float32", what="floor bad")


def test_condition_number_of_singular_matrix_is_inf():
    assert T.condition_number(np.zeros((3, 3))) == math.inf
    assert T.condition_number(np.diag([1.0, 4.0])) == pytest.approx(4.0, rel=1e-15)
