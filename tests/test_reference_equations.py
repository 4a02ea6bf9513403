"""Property tests of reference/equations.py: one float64 function per paper equation.

Every property is an invariant of the exact problem (feasibility, stationarity, optimality against
random feasible moves, agreement of two independent derivations), checked to a tolerance derived in
tests/tolerances.py from the measured condition number kappa of the matrix solved. Hand-computed
golden cases sit next to the properties they pin down.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import reference
import strategies as S
import tolerances as T
from reference import equations as eq

# The row problems below span kappa up to sqrt(0.1/eps) and W, H scales over 1e-20 .. 1e20.
ROW_PROBLEMS = S.row_problems(max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE)


def _inverse(H):
    """H^-1 the way the reference forms it (U^T U from the Cholesky factor of H^-1)."""
    U = eq.inverse_cholesky_factor(H)
    return U.T @ U


def _kept(b, q):
    return np.setdiff1d(np.arange(b), q)


# ----------------------------------------------------------------------------------------------
# Eq. (6)-(10): the KKT oracle and the closed form
# ----------------------------------------------------------------------------------------------


@given(ROW_PROBLEMS)
def test_kkt_and_closed_form_agree(problem):
    w, H, q, X, info = problem
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    d_kkt, loss_kkt = eq.kkt_solve(w, H, q)
    d_cf, loss_cf = eq.closed_form_update(w, _inverse(H), q)
    T.assert_close(d_cf, d_kkt, tol=tol, kappa=kappa, what="closed form (Eq. 10) vs KKT (Eq. 6-9) Delta")
    T.assert_scalar_close(loss_cf, loss_kkt, tol=tol, kappa=kappa, what="closed form vs KKT loss")


@given(ROW_PROBLEMS, st.sampled_from(["kkt", "closed_form"]))
def test_feasible_and_stationary(problem, solver):
    """Delta removes w_q (feasibility) and the gradient H Delta^T vanishes on the kept coordinates K
    (stationarity of the Lagrangian: H Delta^T = -E mu, supported on q)."""
    w, H, q, X, info = problem
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    delta = eq.kkt_solve(w, H, q)[0] if solver == "kkt" else eq.closed_form_update(w, _inverse(H), q)[0]
    T.assert_small(w[q] + delta[q], tol=tol, scale=np.max(np.abs(w[q])), kappa=kappa, what=f"{solver}: (w + Delta)_q")
    gradient = H @ delta
    K = _kept(b, q)
    # (H Delta)_q = -mu are the Lagrange multipliers: the gradient's size on q is the yardstick
    T.assert_small(gradient[K], tol=tol, scale=np.max(np.abs(gradient[q])), kappa=kappa, what=f"{solver}: (H Delta^T)_K")


@given(ROW_PROBLEMS)
def test_loss_identities(problem):
    """closed_form's loss = 1/2 u^T R_hat^-1 u (with R_hat from an independent inverse)
    = 1/2 Delta H Delta^T = ||Delta X||^2 computed from X."""
    w, H, q, X, info = problem
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    delta, loss = eq.closed_form_update(w, _inverse(H), q)
    Hinv = np.linalg.inv(H)
    u = w[q]
    loss_u = 0.5 * float(u @ np.linalg.solve(Hinv[np.ix_(q, q)], u))
    T.assert_scalar_close(loss, loss_u, tol=tol, kappa=kappa, what="loss vs 1/2 u^T R_hat^-1 u")
    T.assert_scalar_close(eq.row_change_loss(delta, H), loss, tol=tol, kappa=kappa, what="1/2 Delta H Delta^T vs loss")
    loss_x = float(np.sum((delta @ X) ** 2))
    T.assert_scalar_close(loss_x, loss, tol=tol, kappa=kappa, what="||Delta X||^2 vs loss")


@given(ROW_PROBLEMS, S.seeds())
def test_no_random_feasible_move_does_better(problem, seed):
    """For a random direction z with z_q = 0 (so Delta + t z stays feasible), the best step along z,
    t* = -z^T H Delta / z^T H z, and the unit steps +-z, never lower the loss below Delta's.
    (At the optimum the improvement along t* is (z^T H Delta)^2 / (2 z^T H z) ~ (tol kappa)^2 loss:
    below tol * loss; a non-stationary Delta gives an improvement of order the loss.)"""
    w, H, q, X, info = problem
    b, kappa = info["b"], T.condition_number(H)
    K = _kept(b, q)
    if K.size == 0:
        note("s = b: the only feasible point is Delta = -w")
        return
    tol = T.solve_tol(b, kappa)
    for solver in ("kkt", "closed_form"):
        delta, _ = eq.kkt_solve(w, H, q) if solver == "kkt" else eq.closed_form_update(w, _inverse(H), q)
        best = eq.row_change_loss(delta, H)
        rng = np.random.default_rng(seed)
        for _ in range(3):
            z = np.zeros(b)
            z[K] = rng.standard_normal(K.size) * np.max(np.abs(delta))
            t_star = -float(z @ H @ delta) / float(z @ H @ z)
            for t in (t_star, 1.0, -1.0):
                moved = eq.row_change_loss(delta + t * z, H)
                assert moved >= best * (1.0 - tol), (
                    f"{solver}: the feasible move t={t:.3g} along z lowers the loss {best!r} -> {moved!r} "
                    f"(allowed {best * tol:.3g}; kappa={kappa:.3g}, eps={T.eps():.3g})"
                )


@given(S.row_problems(max_b=12, min_s=1, max_s=1, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE))
def test_one_weight_is_obs(problem):
    """s = 1: Eq. (10) reduces to Optimal Brain Surgeon, and OBS is the KKT optimum."""
    w, H, q, X, info = problem
    b, kappa = info["b"], T.condition_number(H)
    Hinv = _inverse(H)
    d_obs, loss_obs = eq.obs_update(w, Hinv, int(q[0]))
    d_cf, loss_cf = eq.closed_form_update(w, Hinv, q)
    # the same Hinv and the same two roundings (u / R_hat, times R), up to the 1x1 Cholesky solve
    # (sqrt(d)^2 in place of d): a few ulps, no conditioning involved
    tol = T.rounding_tol(1)
    T.assert_close(d_cf, d_obs, tol=tol, what="closed form with s = 1 vs OBS Delta")
    T.assert_scalar_close(loss_cf, loss_obs, tol=tol, what="closed form with s = 1 vs OBS loss")
    d_kkt, loss_kkt = eq.kkt_solve(w, H, q)
    T.assert_close(d_obs, d_kkt, tol=T.solve_tol(b, kappa), kappa=kappa, what="OBS vs KKT Delta")
    T.assert_scalar_close(loss_obs, loss_kkt, tol=T.solve_tol(b, kappa), kappa=kappa, what="OBS vs KKT loss")


@given(S.row_problems(max_b=12, diagonal=True, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE))
def test_diagonal_hessian_is_obd(problem):
    """Diagonal H: removing q moves nothing else (kept weights bit-identical) and the loss is OBD's
    1/2 sum w_q^2 H_qq."""
    w, H, q, X, info = problem
    b = info["b"]
    Hinv = np.diag(1.0 / np.diag(H))
    delta, loss = eq.closed_form_update(w, Hinv, q)
    K = _kept(b, q)
    assert np.array_equal((w + delta)[K], w[K]), "a diagonal H must leave the kept weights untouched"
    # Delta_q = -R_hat^-1... = -w_q up to the diagonal solve's roundings (1/h, then the Cholesky
    # solve's sqrt twice): a few ulps per entry
    T.assert_close(delta[q], -w[q], tol=T.rounding_tol(1), what="Delta_q = -w_q")
    # loss = 1/2 sum u_i^2 / (1/h_i) against 1/2 sum u_i^2 h_i: s terms of positive sums
    T.assert_scalar_close(loss, eq.obd_loss(w, H, q), tol=T.rounding_tol(info["s"]), what="closed-form loss vs OBD loss")


# ----------------------------------------------------------------------------------------------
# Golden cases, derived by hand
# ----------------------------------------------------------------------------------------------


def test_golden_diagonal_row():
    """w = [1, 2, 3, 4], X = diag(100, 10, 1, 0.1) (one token per feature), so ||X_j|| = [100, 10, 1, 0.1]
    and H = 2 X X^T = diag(2e4, 200, 2, 0.02).
    psi = |w| ||X_j|| = [100, 20, 3, 0.4]: the two smallest are columns 2 and 3 (torchao's case:
    keep [1, 2]). With diagonal H^-1 the closed form gives Delta = [0, 0, -3, -4] and the loss
    1/2 (3^2 * 2 + 4^2 * 0.02) = 9 + 0.16 = 9.16 = w_2^2 ||X_2||^2 + w_3^2 ||X_3||^2."""
    w = np.array([1.0, 2.0, 3.0, 4.0])
    X = np.diag([100.0, 10.0, 1.0, 0.1])
    H = eq.hessian(X)
    assert np.array_equal(H, np.diag([2e4, 200.0, 2.0, 2 * 0.1 * 0.1]))
    np.testing.assert_allclose(eq.psi_metric(w[None], H)[0], [100.0, 20.0, 3.0, 0.4], rtol=4 * T.eps())
    assert eq.global_residual_mask(eq.psi_metric(w[None], H), 2).tolist() == [[False, False, True, True]]
    delta, loss = eq.closed_form_update(w, np.linalg.inv(H), [2, 3])
    assert np.array_equal(delta[:2], [0.0, 0.0]), "diagonal H: the kept weights must not move at all"
    # -3 and -4 come back through 1/H_jj and the Cholesky solve's sqrt: a few ulps
    T.assert_close(delta, [0.0, 0.0, -3.0, -4.0], tol=T.rounding_tol(1), what="golden Delta")
    # 9.16 is not a float: a few roundings (1/0.02, 16 / 50, the sum) away
    assert loss == pytest.approx(9.16, rel=T.rounding_tol(4), abs=0)
    assert eq.obd_loss(w, H, [2, 3]) == pytest.approx(9.16, rel=T.rounding_tol(4), abs=0)
    # the whole prune pipeline gives the same: keep [1, 2], the loss 9.16
    result = reference.prune(w[None], H, method="thanos", pattern="unstructured", sparsity=0.5, block_size=4, percdamp=0.0)
    assert result.weight.tolist() == [[1.0, 2.0, 0.0, 0.0]]
    assert result.loss == pytest.approx(9.16, rel=T.rounding_tol(4), abs=0)


def test_golden_tridiagonal_row():
    """H = [[2,1,0],[1,2,1],[0,1,2]], w = [1, 1, 1], remove q = {1}.
    Fixed-mask optimum: Delta_K = H_KK^-1 H_KQ w_Q = (2 I)^-1 [1, 1]^T * 1 = [1/2, 1/2], so
    Delta = [1/2, -1, 1/2] and H Delta^T = [0, -1, 0] (zero on K: stationarity; mu = 1).
    Loss 1/2 Delta H Delta^T = 1/2 * 1 = 1/2; and by OBS: det H = 4, [H^-1]_11 = (2*2 - 0)/4 = 1,
    loss = 1/2 w_1^2 / [H^-1]_11 = 1/2."""
    H = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    w = np.ones(3)
    expected = np.array([0.5, -1.0, 0.5])
    tol = T.solve_tol(3, T.condition_number(H))  # kappa = (2 + sqrt 2) / (2 - sqrt 2) ~ 5.8
    for name, (delta, loss) in {
        "kkt": eq.kkt_solve(w, H, [1]),
        "closed_form": eq.closed_form_update(w, np.linalg.inv(H), [1]),
        "obs": eq.obs_update(w, np.linalg.inv(H), 1),
    }.items():
        T.assert_close(delta, expected, tol=tol, what=f"{name} Delta")
        T.assert_scalar_close(loss, 0.5, tol=tol, what=f"{name} loss")
    T.assert_close(eq.fixed_mask_optimum(w[None], H, np.array([[False, True, False]]))[0], w + expected, tol=tol, what="fixed mask")
    T.assert_close(H @ expected, [0.0, -1.0, 0.0], tol=0.0, scale=1.0, what="H Delta^T")


def test_golden_structured_update_settles_the_errata():
    """W = [[2, 5]], H = [[2, 1], [1, 2]], remove column 0 from the row.
    Correct (sub-blocks of H^-1 = 1/3 [[2, -1], [-1, 2]]): W - W_q (H^-1_qq)^-1 H^-1_{q,:} =
    [2, 5] - 2 * (3/2) * [2/3, -1/3] = [0, 6]; equals the least-squares fit 5 + 2 * H_10 / H_11 = 6;
    loss 1/2 [-2, 1] H [-2, 1]^T = 1/2 (8 - 4 + 2) = 3.
    The review's W - W_q (H_qq)^-1 H_{q,:} = [2, 5] - 2 * (1/2) * [2, 1] = [0, 4]: loss
    1/2 [-2, -1] H [-2, -1]^T = 1/2 (8 + 4 + 2) = 7, worse than no update at all (OBD: 1/2 * 4 * 2 = 4)."""
    W = np.array([[2.0, 5.0]])
    H = np.array([[2.0, 1.0], [1.0, 2.0]])
    tol = T.solve_tol(2, 3.0)
    corrected = eq.structured_update(W, np.linalg.inv(H), [0])
    assert corrected[0, 0] == 0.0
    T.assert_close(corrected, [[0.0, 6.0]], tol=tol, what="structured update (sub-blocks of H^-1)")
    T.assert_scalar_close(eq.layer_loss(W, corrected, H), 3.0, tol=tol, what="its loss")
    review = eq.structured_update_review(W, H, [0])
    T.assert_close(review, [[0.0, 4.0]], tol=tol, what="review's formula (sub-blocks of H)")
    T.assert_scalar_close(eq.layer_loss(W, review, H), 7.0, tol=tol, what="review's loss")
    assert eq.layer_loss(W, review, H) > eq.obd_loss(W[0], H, [0]) > eq.layer_loss(W, corrected, H)
    # removing nothing changes nothing, in both forms
    assert np.array_equal(eq.structured_update(W, np.linalg.inv(H), []), W)
    assert np.array_equal(eq.structured_update_review(W, H, []), W)


def test_golden_scores():
    """W = [[1, 2], [3, 4]], H = diag(2, 8): ||X_j||^2 = H_jj / 2 = [1, 4], ||X_j|| = [1, 2].
    psi = [[1, 4], [3, 8]]; row loss (Eq. 14) = [1 + 16, 9 + 64] = [17, 73];
    column loss (Eq. 15) = [1 + 9, 4 * (4 + 16)] = [10, 80], over row 1 only: [9, 64]."""
    W = np.array([[1.0, 2.0], [3.0, 4.0]])
    H = np.diag([2.0, 8.0])
    assert eq.column_norms(H).tolist() == [1.0, 2.0]
    assert eq.psi_metric(W, H).tolist() == [[1.0, 4.0], [3.0, 8.0]]
    assert eq.row_loss(W, H).tolist() == [17.0, 73.0]
    assert eq.column_loss(W, H).tolist() == [10.0, 80.0]
    assert eq.column_loss(W, H, rows=[1]).tolist() == [9.0, 64.0]
    assert eq.obd_loss(W[1], H, 1) == 0.5 * 16 * 8


def test_golden_masks_and_ties():
    """Ties break by row-major position (stable sort): all-equal scores prune the first r entries."""
    flat = np.ones((2, 3))
    assert eq.global_residual_mask(flat, 4).tolist() == [[True, True, True], [True, False, False]]
    assert eq.smallest_per_row(flat, 2).tolist() == [[True, True, False]] * 2
    scores = np.array([[4.0, 1.0, 3.0, 2.0, 0.5, 0.7, 0.6, 0.9]])
    assert eq.n_m_mask(scores, 2, 4).tolist() == [[False, True, False, True, True, False, True, False]]


# ----------------------------------------------------------------------------------------------
# Masks: exact counts on continuous scores
# ----------------------------------------------------------------------------------------------


@given(st.integers(1, 6), st.integers(1, 12), S.seeds(), st.data())
def test_mask_counts(c, b, seed, data):
    scores = np.random.default_rng(seed).standard_normal((c, b)) ** 2
    r = data.draw(st.integers(0, c * b), label="r")
    mask = eq.global_residual_mask(scores, r)
    assert mask.sum() == r
    if 0 < r < c * b:  # the r smallest: every pruned score <= every kept one
        assert scores[mask].max() <= scores[~mask].min()
    count = data.draw(st.integers(0, b), label="count")
    per_row = eq.smallest_per_row(scores, count)
    assert np.all(per_row.sum(axis=1) == count)
    for k in range(c):
        if 0 < count < b:
            assert scores[k, per_row[k]].max() <= scores[k, ~per_row[k]].min()
    pattern = data.draw(S.nm_patterns(b), label="pattern") if any(b % m == 0 for m in range(2, 9)) else None
    if pattern:
        n, m = map(int, pattern.split(":"))
        nm = eq.n_m_mask(scores, n, m).reshape(c, b // m, m)
        assert np.all(nm.sum(axis=2) == n)
        grouped = scores.reshape(c, b // m, m)
        assert np.all(np.where(nm, grouped, -np.inf).max(axis=2) <= np.where(nm, np.inf, grouped).min(axis=2))


# ----------------------------------------------------------------------------------------------
# Hessian, losses, trailing inverse, fixed-mask optimum, structured update
# ----------------------------------------------------------------------------------------------


@given(S.layers(hessian="tokens", rank_deficient=None, max_b=12, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE), S.seeds())
def test_hessian_and_layer_loss(layer, seed):
    """hessian(X) = 2 X X^T; layer_loss(W, W + D, H) = ||D X||_F^2 = sum_k row_change_loss(D_k, H)."""
    W, H, X, info = layer
    b = info["b"]
    # H is the strategy's symmetrised (2 X X^T + (2 X X^T)^T) / 2: a GEMM does not promise that
    # entries (i, j) and (j, i) see the same summation order (OpenBLAS on AMD Zen rounds them
    # differently, ~2e-17), so hessian(X) agrees with H to the rounding of a length-tokens dot
    # product, gamma_tokens * sum_k |2 x_ik x_jk| <= gamma_tokens * max |H| (Cauchy-Schwarz).
    T.assert_close(eq.hessian(X), H, tol=T.rounding_tol(info["tokens"]), what="hessian(X) vs 2 X X^T")
    D = np.random.default_rng(seed).standard_normal(W.shape) * info["w_scale"]
    loss = eq.layer_loss(W, W + D, H)
    # sums of a * b products of magnitude ||D X||^2: a dot product of length b + tokens per row
    tol = T.rounding_tol(b + info["tokens"])
    T.assert_scalar_close(loss, float(np.sum((D @ X) ** 2)), tol=tol, what="layer loss vs ||D X||^2")
    T.assert_scalar_close(loss, sum(eq.row_change_loss(d, H) for d in D), tol=tol, what="layer loss vs sum of rows")
    T.assert_close(eq.column_norms(H) ** 2, np.sum(X**2, axis=1), tol=T.rounding_tol(info["tokens"]), what="||X_j||^2")


@given(S.layers(hessian="any", max_b=12, max_kappa=S.KAPPA_SQRT, h_scale=S.SCALE_RANGE))
def test_trailing_inverse_is_the_inverse_of_the_trailing_block(layer):
    """U_{j:,j:}^T U_{j:,j:} = (H_{j:,j:})^-1 for every j, from one factorisation of H^-1."""
    W, H, X, info = layer
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    U = eq.inverse_cholesky_factor(H)
    assert np.array_equal(U, np.triu(U)), "U must be upper triangular"
    T.assert_close(U.T @ U, np.linalg.inv(H), tol=tol, kappa=kappa, what="U^T U vs H^-1")
    for j in range(b):
        direct = np.linalg.inv(H[j:, j:])
        T.assert_close(eq.trailing_inverse(U, j), direct, tol=tol, kappa=kappa, what=f"trailing inverse at j={j}")


@given(S.layers(hessian="any", max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE))
def test_sparsegpt_metric_is_w2_over_the_trailing_inverse_diagonal(layer):
    """SparseGPT's score W_ij^2 / [(H_{j:,j:})^-1]_00, from the factor U, against its definition with
    every trailing block inverted directly; the trailing block U[j:, j:] gives the trailing columns'."""
    W, H, X, info = layer
    b, kappa = info["b"], T.condition_number(H)
    U = eq.inverse_cholesky_factor(H)
    direct = np.stack([W[:, j] ** 2 / np.linalg.inv(H[j:, j:])[0, 0] for j in range(b)], axis=1)
    scores = eq.sparsegpt_metric(W, U)
    # each score is w^2 over one entry of a solve: the solve's error, relative, plus a rounding or two
    T.assert_close(scores, direct, tol=T.solve_tol(b, kappa), kappa=kappa, what="w^2 / [(H_{j:,j:})^-1]_00")
    for j in range(b):
        assert np.array_equal(eq.sparsegpt_metric(W[:, j:], U[j:, j:]), scores[:, j:]), "trailing block"


def test_golden_sparsegpt_metric():
    """H = [[2,1,0],[1,2,1],[0,1,2]] (below): [(H_{j:,j:})^-1]_00 = 3/4, 2/3, 1/2 for j = 0, 1, 2
    (cofactors: 3/4; inv([[2,1],[1,2]])_00 = 2/3; 1/2), so W = [[1, 1, 1], [2, 0, -3]] scores
    [[4/3, 3/2, 2], [16/3, 0, 18]]; psi would rank column 2's 1 level with column 0's."""
    H = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    W = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, -3.0]])
    tol = T.solve_tol(3, T.condition_number(H))
    T.assert_close(eq.sparsegpt_metric(W, eq.inverse_cholesky_factor(H)), np.array([[4 / 3, 1.5, 2.0], [16 / 3, 0.0, 18.0]]),
                   tol=tol, scale=18.0, what="sparsegpt metric")
    assert eq.psi_metric(W, H)[0, 0] == eq.psi_metric(W, H)[0, 2]


def test_golden_trailing_inverse_is_not_the_trailing_block_of_the_inverse():
    """H = [[2,1,0],[1,2,1],[0,1,2]]: H^-1 = 1/4 [[3,-2,1],[-2,4,-2],[1,-2,3]] (det 4, cofactors).
    At j = 1 the trailing inverse is inv([[2,1],[1,2]]) = 1/3 [[2,-1],[-1,2]], while the trailing
    block of H^-1 is [[1, -1/2], [-1/2, 3/4]]: a different matrix (errata item b)."""
    H = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    tol = T.solve_tol(3, T.condition_number(H))
    U = eq.inverse_cholesky_factor(H)
    T.assert_close(U.T @ U, np.array([[3.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 3.0]]) / 4, tol=tol, what="H^-1")
    T.assert_close(eq.trailing_inverse(U, 1), np.array([[2.0, -1.0], [-1.0, 2.0]]) / 3, tol=tol, what="trailing inverse j=1")
    T.assert_close(eq.trailing_inverse(U, 2), [[0.5]], tol=tol, what="trailing inverse j=2")
    T.assert_close(eq.trailing_inverse(U, 0), U.T @ U, tol=0.0, what="trailing inverse j=0 is H^-1")
    assert np.max(np.abs((U.T @ U)[1:, 1:] - eq.trailing_inverse(U, 1))) > 0.3


@given(S.layers(max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE), S.sparsities(0.05, 0.9), S.seeds())
def test_fixed_mask_optimum_is_the_closed_form(layer, p, seed):
    """For any mask, the least-squares fit equals Eq. (10) row by row; it is feasible (pruned = 0
    exactly) and stationary ((H Delta^T)_K = 0)."""
    W, H, X, info = layer
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    mask = np.random.default_rng(seed).random(W.shape) < p
    fitted = eq.fixed_mask_optimum(W, H, mask)
    T.assert_exactly_zero(fitted, mask, what="fixed_mask_optimum")
    Hinv = _inverse(H)
    for k in range(W.shape[0]):
        q = np.flatnonzero(mask[k])
        delta, _ = eq.closed_form_update(W[k], Hinv, q)
        T.assert_close(fitted[k], W[k] + delta, tol=tol, kappa=kappa, scale=np.max(np.abs(W[k])), what=f"row {k}: fixed mask vs Eq. 10")
        if q.size and q.size < b:
            gradient = H @ (fitted[k] - W[k])
            T.assert_small(gradient[~mask[k]], tol=tol, scale=np.max(np.abs(gradient[q])), kappa=kappa, what=f"row {k}: (H Delta^T)_K")
    assert np.array_equal(fitted[~mask.any(axis=1)], W[~mask.any(axis=1)]), "rows with nothing pruned stay as they are"


@given(S.layers(max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE), st.data())
def test_structured_update_is_the_per_row_optimum(layer, data):
    """Eq. (13) with sub-blocks of H^-1 removes the same columns q from every row optimally: each row
    equals the KKT oracle's answer for that q, and the removed columns are exactly 0."""
    W, H, X, info = layer
    b, kappa = info["b"], T.condition_number(H)
    tol = T.solve_tol(b, kappa)
    q = np.array(sorted(data.draw(st.sets(st.integers(0, b - 1), min_size=0, max_size=b), label="q")), dtype=int)
    updated = eq.structured_update(W, _inverse(H), q)
    assert np.all(updated[:, q] == 0.0), "removed columns must be exactly 0"
    if q.size == 0:
        assert np.array_equal(updated, W)
        return
    for k in range(W.shape[0]):
        delta, _ = eq.kkt_solve(W[k], H, q)
        T.assert_close(updated[k], W[k] + delta, tol=tol, kappa=kappa, scale=np.max(np.abs(W[k])), what=f"row {k}: structured update vs KKT")


# ----------------------------------------------------------------------------------------------
# App. H, Eq. (77)-(79): rows that remove different counts, solved in one padded batch
# ----------------------------------------------------------------------------------------------


def padded_batched_update(W, Hinv, mask):
    """Eq. (77)-(79) in plain NumPy: each row's R_hat_k (s_k x s_k) is padded to s_max x s_max with an
    identity block, u_k with zeros and R_k with zero rows; one batched solve for all rows, then
    Delta_k = -x_k^T R_k. Returns (Delta (c, b), x (c, s_max))."""
    c, b = W.shape
    counts = mask.sum(axis=1)
    s_max = int(counts.max()) if c else 0
    R_hat = np.broadcast_to(np.eye(s_max), (c, s_max, s_max)).copy()
    u = np.zeros((c, s_max))
    R = np.zeros((c, s_max, b))
    for k in range(c):
        q = np.flatnonzero(mask[k])
        s = q.size
        R_hat[k, :s, :s] = Hinv[np.ix_(q, q)]
        u[k, :s] = W[k, q]
        R[k, :s] = Hinv[q, :]
    x = np.linalg.solve(R_hat, u[:, :, None])[:, :, 0]
    return -np.einsum("ks,ksb->kb", x, R), x


@given(S.layers(min_c=2, max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE), S.seeds())
def test_padded_batched_solve_equals_per_row_solves(layer, seed):
    W, H, X, info = layer
    c, b = W.shape
    kappa = T.condition_number(H)
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, b + 1, size=c)
    counts[0] = b // 2 + 1  # at least one non-empty row; rows differ in count (padding is exercised)
    mask = np.zeros((c, b), dtype=bool)
    for k in range(c):
        mask[k, rng.choice(b, size=counts[k], replace=False)] = True
    note(f"per-row counts {counts.tolist()}")
    Hinv = _inverse(H)
    batched, x = padded_batched_update(W, Hinv, mask)
    for k in range(c):
        # the identity padding with zero right-hand side leaves the padded unknowns exactly 0
        assert np.all(x[k, counts[k]:] == 0.0), f"row {k}: padded unknowns must be exactly 0"
        delta, _ = eq.closed_form_update(W[k], Hinv, np.flatnonzero(mask[k]))
        T.assert_close(batched[k], delta, tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W[k])), what=f"row {k}: padded batch vs per-row Eq. 10")
