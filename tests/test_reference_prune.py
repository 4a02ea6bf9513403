"""Property tests of ``reference.prune``: Thanos (Alg. 1, 2, 8), SparseGPT, Wanda and magnitude.

Each algorithm is checked against an independent construction from the equations (the fixed-mask
optimum for one block, column-by-column OBS from ``obs_update`` + ``trailing_inverse`` for one
column per block and for SparseGPT), against symmetries (scale of H, row permutations) and against
its exact counting contract, to tolerances derived in tests/tolerances.py.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import reference
import strategies as S
import tolerances as T
from reference import equations as eq
from reference import spec

# Small layers (the reference is a plain loop): c <= 6 rows, b <= 12 columns, kappa up to
# sqrt(0.1/eps), W and H anywhere in 1e-20 .. 1e20.
PRUNE_LAYERS = dict(max_c=6, max_b=12, max_kappa=S.KAPPA_SQRT, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE)


def _with_dead_columns_zeroed(W, H):
    """The reference's dead-column rule (DESIGN.md): W[:, j] = 0 where H_jj = 0."""
    W = np.array(W, dtype=np.float64, copy=True)
    W[:, np.diag(H) == 0] = 0.0
    return W


def sequential_obs(W, Hd, mask):
    """Column-by-column OBS over a given mask, built from ``obs_update`` and ``trailing_inverse``
    only: at column j the free problem is columns j.. with inverse (Hd_{j:,j:})^-1; every row that
    prunes column j applies the s = 1 update (Eq. 10 with s = 1) to its columns j.."""
    W = np.array(W, dtype=np.float64, copy=True)
    U = eq.inverse_cholesky_factor(Hd)
    for j in range(W.shape[1]):
        Tj = eq.trailing_inverse(U, j)
        for k in np.flatnonzero(mask[:, j]):
            delta, _ = eq.obs_update(W[k, j:], Tj, 0)
            W[k, j:] += delta
            W[k, j] = 0.0
    return W


def contract_count(p: float, n: int):
    """The counts ``floor(p n)`` may take: exactly ``floor(p n)`` in rational arithmetic, except that
    a product within 8 * 2^-52 * n of an integer (the float round-off of p = k / n, spec._SNAP)
    means that integer; at that edge either neighbour is accepted."""
    exact = Fraction(p) * n
    nearest = round(exact)
    slack = Fraction(16 * 2.0**-52) * n  # twice the snap: the edge itself is ambiguous
    if abs(exact - nearest) <= slack:
        return {nearest, math.floor(exact)}
    return {math.floor(exact)}


def _prune(W, H, **kwargs):
    result = reference.prune(W, H, **kwargs)
    note(f"pruned {int(result.mask.sum())} of {result.mask.size}, damping={result.damping}, outliers={result.outlier_rows}")
    return result


# ----------------------------------------------------------------------------------------------
# Thanos against independent constructions
# ----------------------------------------------------------------------------------------------


@given(st.data())
def test_one_block_is_the_fixed_mask_optimum(data):
    """With one block (B >= b) Thanos unstructured / N:M, and structured always, solve each row over
    its whole mask at once: the result is the least-squares fit for its own mask, with the damped
    H; rows left dense (alpha > 0) are bit-identical to the input."""
    dead = data.draw(st.booleans(), label="dead columns")
    W, H, X, info = data.draw(S.layers(dead_columns=dead, **PRUNE_LAYERS), label="layer")
    b = info["b"]
    pattern = data.draw(S.patterns(b, b), label="pattern")
    block_size = data.draw(st.sampled_from([b, 2 * b]), label="block_size")
    alpha = data.draw(st.sampled_from([0.0, 0.25, 0.5]), label="alpha") if pattern != "unstructured" else 0.0
    sparsity = None if ":" in pattern else data.draw(S.sparsities(), label="sparsity")
    percdamp = data.draw(st.sampled_from([0.0, 0.01]), label="percdamp")
    result = _prune(W, H, method="thanos", pattern=pattern, sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp)
    Hd = S.prepared_hessian(H, result.damping)
    kappa = T.condition_number(Hd)
    expected = eq.fixed_mask_optimum(_with_dead_columns_zeroed(W, H), Hd, result.mask)
    T.assert_close(result.weight, expected, tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W)), what="one-block Thanos vs fixed-mask optimum")
    T.assert_exactly_zero(result.weight, result.mask, what="one-block Thanos")
    if not dead:
        for k in result.outlier_rows:
            assert np.array_equal(result.weight[k], W[k]), f"outlier row {k} must be bit-identical to the input"


@given(st.data())
def test_one_column_per_block_is_sequential_obs(data):
    """Thanos unstructured with B = 1 removes, column by column, the weights its global residual mask
    selects: exactly OBS (s = 1) with the trailing inverse. SparseGPT, whatever B and pattern, is
    the same sequential OBS over its own mask."""
    dead = data.draw(st.booleans(), label="dead columns")
    W, H, X, info = data.draw(S.layers(dead_columns=dead, **PRUNE_LAYERS), label="layer")
    b = info["b"]
    method = data.draw(st.sampled_from(["thanos", "sparsegpt"]), label="method")
    if method == "thanos":
        pattern, block_size = "unstructured", 1
    else:
        pattern = data.draw(S.patterns(b), label="pattern")
        m = int(pattern.split(":")[1]) if ":" in pattern else 1
        block_size = data.draw(S.block_sizes(b, m), label="block_size")
    sparsity = None if ":" in pattern else data.draw(S.sparsities(), label="sparsity")
    result = _prune(W, H, method=method, pattern=pattern, sparsity=sparsity, block_size=block_size, percdamp=data.draw(st.sampled_from([0.0, 0.01])))
    Hd = S.prepared_hessian(H, result.damping)
    kappa = T.condition_number(Hd)
    expected = sequential_obs(_with_dead_columns_zeroed(W, H), Hd, result.mask)
    # b successive OBS steps, each a solve of condition <= kappa: the errors add, within
    # C n kappa eps of max|W| (measured worst 0.08 n kappa eps)
    T.assert_close(result.weight, expected, tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W)), what=f"{method} B={block_size} vs sequential OBS")
    T.assert_exactly_zero(result.weight, result.mask, what=method)


def thanos_by_blocks(W, H, Hd, total, block_size, nm=None):
    """Alg. 1 / Alg. 8 rebuilt from the fixed-mask optimum: at each block start j1, score the
    *current* weights of columns j1.. with psi (Eq. 11); unstructured: take the ``total - pruned so
    far`` smallest over that whole remaining matrix (row-major ties) and keep the part inside the
    block; N:M: each row's n smallest of every group of m in the block. Then every row gets the
    least-squares fit of its trailing problem (columns j1.., matrix Hd_{j1:,j1:}) for that mask."""
    W = np.array(W, dtype=np.float64, copy=True)
    c, b = W.shape
    mask = np.zeros((c, b), dtype=bool)
    norms = np.sqrt(np.diag(H) / 2.0)
    remaining = total
    for j1 in range(0, b, block_size):
        j2 = min(j1 + block_size, b)
        scores = np.abs(W[:, j1:]) * norms[None, j1:]
        if nm is None:
            chosen = np.zeros(scores.size, dtype=bool)
            chosen[np.argsort(scores, axis=None, kind="stable")[:remaining]] = True
            block = chosen.reshape(scores.shape)[:, : j2 - j1]
            remaining -= int(block.sum())
        else:
            n, m = nm
            grouped = scores[:, : j2 - j1].reshape(c, -1, m)
            ranks = np.argsort(np.argsort(grouped, axis=2, kind="stable"), axis=2, kind="stable")
            block = (ranks < n).reshape(c, j2 - j1)
        trailing = np.zeros((c, b - j1), dtype=bool)
        trailing[:, : j2 - j1] = block
        W[:, j1:] = eq.fixed_mask_optimum(W[:, j1:], Hd[j1:, j1:], trailing)
        mask[:, j1:j2] = block
    return W, mask


@given(st.data())
def test_thanos_blocks_rebuilt_from_the_fixed_mask_optimum(data):
    """Multi-block Thanos = per block: the global residual mask (or N:M groups) of the current,
    already updated weights, then the least-squares fit of the trailing problem. kappa <= 1e4 here:
    the two constructions differ by ~n kappa eps, so with kappa 1e4 two psi scores would have to
    agree to ~1e-11 relative to choose differently, which continuous weights never do."""
    dead = data.draw(st.booleans(), label="dead columns")
    layer_kwargs = {**PRUNE_LAYERS, "max_kappa": 1e4, "max_b": 12}
    pattern = data.draw(st.sampled_from(["unstructured", "1:2", "2:4"]), label="pattern")
    nm = tuple(map(int, pattern.split(":"))) if ":" in pattern else None
    m = nm[1] if nm else 1
    W, H, X, info = data.draw(S.layers(dead_columns=dead, b_multiple_of=m, min_b=max(2, m), **layer_kwargs), label="layer")
    b = info["b"]
    block_size = data.draw(S.block_sizes(b, m), label="block_size")
    sparsity = None if nm else data.draw(S.sparsities(0.1, 0.9), label="sparsity")
    result = _prune(W, H, method="thanos", pattern=pattern, sparsity=sparsity, block_size=block_size)
    Hd = S.prepared_hessian(H, result.damping)
    kappa = T.condition_number(Hd)
    total = spec.unstructured_count(result.sparsity if nm else sparsity, W.size)
    expected, mask = thanos_by_blocks(_with_dead_columns_zeroed(W, H), H, Hd, total, block_size, nm)
    assert np.array_equal(result.mask, mask), "the mask is not the block-wise global residual (or N:M) mask of the current weights"
    # one fit per block, each of condition <= kappa, applied in sequence: C n kappa eps of max|W|
    T.assert_close(result.weight, expected, tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W)), what=f"Thanos {pattern} B={block_size} vs block-wise fixed-mask fits")


# ----------------------------------------------------------------------------------------------
# Symmetries
# ----------------------------------------------------------------------------------------------


@given(st.data())
def test_scaling_h_changes_no_mask_and_no_update(data):
    """H -> s H (any s > 0, e.g. a running mean instead of a sum) leaves every mask and update
    unchanged and multiplies the loss and the damping by s."""
    dead = data.draw(st.booleans(), label="dead columns")
    W, H, X, info = data.draw(S.layers(dead_columns=dead, **PRUNE_LAYERS), label="layer")
    b = info["b"]
    kwargs = data.draw(S.prune_arguments(b), label="kwargs")
    s = data.draw(S.scales(), label="s")
    percdamp = data.draw(st.sampled_from([0.0, 0.01]), label="percdamp")
    base = _prune(W, H, percdamp=percdamp, **kwargs)
    scaled = _prune(W, s * H, percdamp=percdamp, **kwargs)
    assert np.array_equal(base.mask, scaled.mask), "scaling H changed the mask"
    assert base.outlier_rows == scaled.outlier_rows
    kappa = T.condition_number(S.prepared_hessian(H, base.damping or 0.0))
    # the same solves on an H whose entries differ by one rounding (s H_ij): C n kappa eps
    tol = T.solve_tol(b, kappa)
    T.assert_close(scaled.weight, base.weight, tol=tol, kappa=kappa, scale=np.max(np.abs(W)), what=f"weights with H scaled by {s:.3g}")
    # a weight error delta moves the loss by sum_k Delta_k H delta_k <= ||H||_2 ||Delta||_F ||delta||_F,
    # with ||delta||_F <= sqrt(c b) tol max|W| from the line above
    D = base.weight - W
    loss_scale = s * np.linalg.norm(H, 2) * np.linalg.norm(D) * math.sqrt(W.size) * np.max(np.abs(W))
    T.assert_scalar_close(scaled.loss, s * base.loss, tol=tol, kappa=kappa, scale=loss_scale, what="loss scales with H")
    if base.damping is not None:
        T.assert_scalar_close(scaled.damping, s * base.damping, tol=T.rounding_tol(b), what="damping scales with H")


@given(st.data())
def test_permuting_rows_permutes_the_result(data):
    """prune(P W) = P prune(W) for a row permutation P. The data are tie-free (continuous weights,
    no dead columns), so the global residual mask's row-major tie-break never decides."""
    W, H, X, info = data.draw(S.layers(**PRUNE_LAYERS), label="layer")
    c, b = W.shape
    kwargs = data.draw(S.prune_arguments(b), label="kwargs")
    perm = np.array(data.draw(st.permutations(range(c)), label="perm"), dtype=int)
    base = _prune(W, H, **kwargs)
    permuted = _prune(W[perm], H, **kwargs)
    assert np.array_equal(permuted.mask, base.mask[perm]), "row permutation changed the mask"
    assert sorted(perm[permuted.outlier_rows].tolist()) == base.outlier_rows
    kappa = T.condition_number(S.prepared_hessian(H, base.damping)) if base.damping is not None else 1.0
    # each row is computed by the same operations on the same numbers; only BLAS blocking of
    # multi-row products may differ, by rounding: well within C n kappa eps
    T.assert_close(permuted.weight, base.weight[perm], tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W)), what="row-permuted weights")
    if base.loss is not None:
        T.assert_scalar_close(permuted.loss, base.loss, tol=T.solve_tol(b, kappa), kappa=kappa, what="loss")


# ----------------------------------------------------------------------------------------------
# Exact counts
# ----------------------------------------------------------------------------------------------


@given(st.data())
def test_unstructured_total_is_floor_p_c_b(data):
    W, H, X, info = data.draw(S.layers(**PRUNE_LAYERS), label="layer")
    c, b = W.shape
    method = data.draw(st.sampled_from(["thanos", "sparsegpt", "magnitude"]), label="method")
    p = data.draw(S.sparsities(0.0, 0.95), label="p")
    result = _prune(W, None if method == "magnitude" else H, method=method, pattern="unstructured", sparsity=p, block_size=data.draw(S.block_sizes(b)))
    assert int(result.mask.sum()) in contract_count(p, c * b), (int(result.mask.sum()), p, c * b)
    assert result.sparsity == result.mask.mean()


@given(st.data())
def test_sparsity_k_over_numel_prunes_exactly_k(data):
    W, H, X, info = data.draw(S.layers(**PRUNE_LAYERS), label="layer")
    c, b = W.shape
    p, k = data.draw(S.exact_sparsities(c * b), label="p, k")
    method = data.draw(st.sampled_from(["thanos", "sparsegpt", "magnitude"]), label="method")
    result = _prune(W, H, method=method, pattern="unstructured", sparsity=p, block_size=data.draw(S.block_sizes(b)))
    assert int(result.mask.sum()) == k


@given(st.data())
def test_wanda_prunes_floor_p_b_per_row(data):
    W, H, X, info = data.draw(S.layers(**PRUNE_LAYERS), label="layer")
    c, b = W.shape
    p = data.draw(S.sparsities(0.0, 0.95), label="p")
    result = _prune(W, H, method="wanda", pattern="unstructured", sparsity=p)
    counts = set(result.mask.sum(axis=1).tolist())
    assert len(counts) == 1 and counts <= contract_count(p, b), (counts, p, b)
    (count,) = counts
    # Wanda prunes the smallest psi of each row and updates nothing
    psi = eq.psi_metric(W, H)
    if 0 < count < b:
        for k in range(c):
            assert psi[k, result.mask[k]].max() <= psi[k, ~result.mask[k]].min()
    assert np.array_equal(result.weight[~result.mask], W[~result.mask])


@given(st.data())
def test_n_m_is_strict_in_every_row_and_group(data):
    m = data.draw(st.sampled_from([2, 4]), label="m")
    W, H, X, info = data.draw(S.layers(b_multiple_of=m, min_b=m, **PRUNE_LAYERS), label="layer")
    c, b = W.shape
    n = data.draw(st.integers(1, m - 1), label="n")
    method = data.draw(S.methods(), label="method")
    block_size = data.draw(S.block_sizes(b, m), label="block_size")
    alpha = data.draw(st.sampled_from([0.0, 0.5]), label="alpha") if method == "thanos" else 0.0
    result = _prune(W, H, method=method, pattern=f"{n}:{m}", sparsity=None, block_size=block_size, alpha=alpha)
    groups = result.mask.reshape(c, b // m, m).sum(axis=2)
    dense = result.outlier_rows
    assert len(dense) == spec.outlier_row_count(alpha, c) == math.floor(alpha * c)
    others = np.setdiff1d(np.arange(c), dense)
    assert np.all(groups[others] == n), f"{method} {n}:{m}: group counts {groups.tolist()}"
    assert np.all(groups[dense] == 0)
    for k in dense:
        assert np.array_equal(result.weight[k], W[k]), f"dense row {k} must be bit-identical"
    T.assert_exactly_zero(result.weight, result.mask, what=f"{method} {n}:{m}")


@given(st.data())
def test_structured_counts_and_outlier_rows(data):
    """Structured Thanos: alpha = 0 leaves no row dense (every row loses the same s columns);
    alpha > 0 leaves exactly floor(alpha c) rows -- those of highest row loss (Eq. 14) --
    bit-identical, and reports the effective sparsity (c - k) s / (c b)."""
    W, H, X, info = data.draw(S.layers(**PRUNE_LAYERS), label="layer")
    c, b = W.shape
    p = data.draw(S.sparsities(0.0, 0.9), label="p")
    alpha = data.draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75]), label="alpha")
    result = _prune(W, H, method="thanos", pattern="structured", sparsity=p, alpha=alpha)
    (k,) = contract_count(alpha, c)  # alpha c for alpha in the list above is never near an integer but at one
    # s = min(b, ceil(p b / (1 - alpha))) in rational arithmetic (either neighbour at the float edge)
    ratio = Fraction(p) * b / (1 - Fraction(alpha))
    allowed_s = {min(b, v) for v in (math.ceil(ratio), round(ratio) if abs(ratio - round(ratio)) <= Fraction(16 * 2.0**-52) * b else math.ceil(ratio))}
    s = spec.structured_column_count(p, alpha, b)
    assert s in allowed_s, (s, allowed_s)
    dense = result.outlier_rows
    assert len(dense) == k
    if k:
        h = eq.row_loss(W, H)
        assert np.min(h[dense]) >= np.max(np.delete(h, dense)), "outlier rows must be those of highest row loss"
    for row in range(c):
        if row in dense:
            assert not result.mask[row].any() and np.array_equal(result.weight[row], W[row])
        else:
            assert result.mask[row].sum() == s
    others = np.setdiff1d(np.arange(c), dense)
    if others.size:
        assert np.all(result.mask[others] == result.mask[others[0]]), "every pruned row loses the same columns"
    effective = (c - k) * s / (c * b)
    assert result.sparsity == pytest.approx(effective, rel=T.rounding_tol(1), abs=0)
    # continuous data: the weights that are exactly 0 are exactly the pruned ones
    assert result.sparsity == pytest.approx(float(np.mean(result.weight == 0)), rel=T.rounding_tol(1), abs=0)
    if alpha == 0 and s > 0:
        assert result.mask.any(axis=1).all(), "alpha = 0 must leave no row dense"
    # the structured update (Eq. 13, sub-blocks of H^-1) is each row's least-squares fit
    Hd = S.prepared_hessian(H, result.damping)
    kappa = T.condition_number(Hd)
    T.assert_close(result.weight, eq.fixed_mask_optimum(W, Hd, result.mask), tol=T.solve_tol(b, kappa), kappa=kappa,
                   scale=np.max(np.abs(W)), what="structured Thanos vs fixed-mask optimum")


def test_golden_structured_counts():
    """c = 4, b = 10, p = 0.3, alpha = 0.25: k = floor(1) = 1 dense row; s = ceil(3 / 0.75) = 4
    columns from the 3 other rows; effective sparsity 3 * 4 / 40 = 0.3."""
    rng = np.random.default_rng(7)
    W = rng.standard_normal((4, 10))
    W[2] *= 10  # row 2 has the highest row loss: the outlier
    H = S.spd_with_condition(10, 10.0, rng)
    result = reference.prune(W, H, method="thanos", pattern="structured", sparsity=0.3, alpha=0.25)
    assert result.outlier_rows == [2]
    assert result.mask.sum(axis=1).tolist() == [4, 4, 0, 4]
    assert result.sparsity == 0.3
    assert np.array_equal(result.weight[2], W[2])


# ----------------------------------------------------------------------------------------------
# Results: exact zeros, losses, dtypes, dead columns
# ----------------------------------------------------------------------------------------------


@given(st.data())
def test_result_zeros_loss_and_sparsity(data):
    """Pruned entries are exactly 0; with continuous data no kept entry is 0; the loss is
    sum_k 1/2 Delta_k H Delta_k^T with the undamped H and equals ||Delta X||^2 from X."""
    W, H, X, info = data.draw(S.layers(hessian="tokens", **PRUNE_LAYERS), label="layer")
    b = info["b"]
    kwargs = data.draw(S.prune_arguments(b), label="kwargs")
    result = _prune(W, H, **kwargs)
    T.assert_exactly_zero(result.weight, result.mask, what=kwargs["method"])
    assert np.all(result.weight[~result.mask] != 0), "a kept weight came out exactly 0"
    assert result.sparsity == result.mask.mean()
    assert result.weight.dtype == W.dtype and result.mask.dtype == bool
    D = result.weight - W
    # rounding only (the same D two ways): sums of b products for 1/2 D H D^T, of tokens products
    # for D X, measured against the sums of their absolute terms
    tol = T.rounding_tol(b + info["tokens"])
    scale = T.quadratic_form_scale(D, H) + float(np.sum((np.abs(D) @ np.abs(X)) ** 2))
    T.assert_scalar_close(result.loss, eq.layer_loss(W, result.weight, H), tol=tol, scale=scale, what="reported loss vs layer_loss")
    T.assert_scalar_close(result.loss, float(np.sum((D @ X) ** 2)), tol=tol, scale=scale, what="reported loss vs ||Delta X||^2")


@given(st.data())
def test_dead_columns_are_zeroed_and_cost_nothing(data):
    W, H, X, info = data.draw(S.layers(dead_columns=True, hessian="tokens", **PRUNE_LAYERS), label="layer")
    b = info["b"]
    kwargs = data.draw(S.prune_arguments(b, method_names=("thanos", "sparsegpt"), kinds=("unstructured", "N:M")), label="kwargs")
    result = _prune(W, H, **kwargs)
    dead = info["dead"]
    assert np.all(result.weight[:, dead] == 0), "Thanos / SparseGPT zero the weights of dead columns"
    D = result.weight - W
    assert np.all(np.isfinite(result.weight))
    assert result.loss >= -T.rounding_tol(b) * T.quadratic_form_scale(D, H), result.loss
    # a dead column's weight multiplies a zero input row: zeroing it changes no output
    alive = np.setdiff1d(np.arange(b), dead)
    T.assert_scalar_close(result.loss, eq.layer_loss(W[:, alive], result.weight[:, alive], H[np.ix_(alive, alive)]), tol=T.rounding_tol(b),
                          scale=T.quadratic_form_scale(D, H), what="loss ignores dead columns")
    assert np.array_equal(D[:, dead] @ X[dead], np.zeros((W.shape[0], X.shape[1])))


def test_dtypes_and_magnitude_without_h():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((3, 8))
    H = S.spd_with_condition(8, 4.0, rng)
    r32 = reference.prune(W.astype(np.float32), H, method="thanos", pattern="2:4")
    assert r32.weight.dtype == np.float32 and r32.mask.sum() == 12
    rint = reference.prune(np.arange(1, 25).reshape(3, 8), np.eye(8, dtype=int), method="wanda", pattern="unstructured", sparsity=0.5)
    assert rint.weight.dtype == np.float64
    # W = 1..24 and H = I: psi = |W|, so each row loses its four smallest (the first four) entries
    assert rint.mask.tolist() == [[True] * 4 + [False] * 4] * 3
    rmag = reference.prune(W, None, method="magnitude", pattern="unstructured", sparsity=0.25)
    assert rmag.loss is None and rmag.damping is None and rmag.mask.sum() == 6
    assert np.abs(W[rmag.mask]).max() <= np.abs(W[~rmag.mask]).min()
    for pattern in ("structured", "1:2"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            r = reference.prune(W, H, method=method, pattern=pattern, sparsity=None if ":" in pattern else 0.5)
            assert r.mask.sum() == 12, (method, pattern)
            if pattern == "structured":
                assert np.all(r.mask.sum(axis=0) % 3 == 0), "structured removes whole columns"


# ----------------------------------------------------------------------------------------------
# Bad arguments: ValueError naming the argument, inputs untouched
# ----------------------------------------------------------------------------------------------

_W = np.random.default_rng(11).standard_normal((4, 8))
_H = S.spd_with_condition(8, 10.0, np.random.default_rng(12))
_GOOD = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=4, alpha=0.0, percdamp=0.01)


def _nan_at(A, i, value=np.nan):
    A = A.copy()
    A.flat[i] = value
    return A


_BAD = [
    (dict(sparsity=1.0), "sparsity"),
    (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=float("nan")), "sparsity"),
    (dict(sparsity=None), "sparsity"),
    (dict(pattern="4:4"), "N:M"),
    (dict(pattern="5:4"), "N:M"),
    (dict(pattern="2:3", sparsity=None), "divisible by M"),  # b = 8 is not a multiple of 3
    (dict(pattern="2:4", sparsity=None, block_size=6), "block_size"),
    (dict(pattern="2:4", sparsity=0.3), "sparsity"),
    (dict(pattern="blocky"), "pattern"),
    (dict(pattern=24), "pattern"),
    (dict(method="obs"), "method"),
    (dict(block_size=0), "block_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(alpha=1.0, pattern="structured"), "alpha"),
    (dict(alpha=-0.5, pattern="structured"), "alpha"),
    (dict(alpha=0.25), "alpha"),  # alpha with unstructured
    (dict(alpha=0.25, method="wanda", pattern="structured"), "alpha"),
    (dict(percdamp=-1.0), "percdamp"),
    (dict(percdamp=float("inf")), "percdamp"),
    (dict(W=_nan_at(_W, 5)), "W contains NaN"),
    (dict(W=_nan_at(_W, 0, np.inf)), "W contains NaN"),
    (dict(H=_nan_at(_H, 9)), "H contains NaN"),
    (dict(H=_nan_at(_H, 0, -np.inf)), "H contains NaN"),
    (dict(H=_H[:7, :7]), "H must be square"),
    (dict(H=np.ones((8, 7))), "H must be square"),
    (dict(H=_H + np.triu(np.ones((8, 8)), 1)), "H is not symmetric"),
    (dict(H=_H - 2 * np.eye(8) * np.max(np.diag(_H))), "H is not positive semidefinite"),
    (dict(H=None), "H is required"),
    (dict(W=np.ones(8)), "W must be"),
]


@pytest.mark.parametrize("change, message", _BAD, ids=[f"{i}-{m}" for i, (_, m) in enumerate(_BAD)])
def test_bad_arguments_raise_value_error_naming_them(change, message):
    change = dict(change)
    W = change.pop("W", _W).copy()
    H = change.pop("H", _H)
    H = None if H is None else H.copy()
    W_before = W.copy()
    H_before = None if H is None else H.copy()
    with pytest.raises(ValueError, match=message):
        reference.prune(W, H, **{**_GOOD, **change})
    assert np.array_equal(W, W_before, equal_nan=True) and (H is None or np.array_equal(H, H_before, equal_nan=True)), "inputs modified"


@given(st.data())
def test_inputs_are_never_modified(data):
    """Read-only inputs: any in-place write inside prune would raise."""
    W, H, X, info = data.draw(S.layers(dead_columns=data.draw(st.booleans()), **PRUNE_LAYERS), label="layer")
    kwargs = data.draw(S.prune_arguments(info["b"]), label="kwargs")
    W_copy, H_copy = W.copy(), H.copy()
    W.setflags(write=False)
    H.setflags(write=False)
    reference.prune(W, H, **kwargs)
    assert np.array_equal(W, W_copy) and np.array_equal(H, H_copy)


# ----------------------------------------------------------------------------------------------
# Damping
# ----------------------------------------------------------------------------------------------


def test_golden_singular_h_warns_and_records_damping():
    """X = [[1, 1], [1, 1], [1, -1]] (features 0 and 1 duplicated): H = 2 X X^T =
    [[4, 4, 0], [4, 4, 0], [0, 0, 4]] exactly. Cholesky: L_00 = 2, L_10 = 2, pivot 4 - 2^2 = 0: fails
    exactly. With percdamp = 0 the reference warns and steps the damping up from
    1e-8 * mean(diag H) = 4e-8 to 4e-7, where the factorisation succeeds."""
    X = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    H = eq.hessian(X)
    assert H.tolist() == [[4.0, 4.0, 0.0], [4.0, 4.0, 0.0], [0.0, 0.0, 4.0]]
    W = np.array([[1.0, -2.0, 3.0]])
    with pytest.warns(RuntimeWarning, match="Cholesky factorisation failed") as record:
        result = reference.prune(W, H, method="thanos", pattern="unstructured", sparsity=0.34, block_size=3, percdamp=0.0)
    assert len(record) == 1
    assert result.damping == 4e-8 * 10 and result.damping > 0
    assert result.mask.sum() == 1 and np.all(np.isfinite(result.weight))
    # the damping recorded is the one used: the result is the fixed-mask optimum of H + damping I
    Hd = H + result.damping * np.eye(3)
    T.assert_close(result.weight, eq.fixed_mask_optimum(W, Hd, result.mask), tol=T.solve_tol(3, T.condition_number(Hd)), scale=3.0, what="damped optimum")


def test_hopeless_h_raises_after_the_damping_schedule():
    """H = [[1, 1e12], [1e12, 1]] is symmetric with a positive diagonal but has an eigenvalue -1e12:
    no load in the schedule (up to percdamp * mean * 10^8 = 1e6) makes it SPD."""
    H = np.array([[1.0, 1e12], [1e12, 1.0]])
    with pytest.warns(RuntimeWarning, match="Cholesky"):
        with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
            reference.prune(np.ones((1, 2)), H, method="thanos", pattern="unstructured", sparsity=0.5)


SINGULAR_LAYERS = st.one_of(
    S.layers(rank_deficient=True, hessian="tokens", max_c=4, max_b=10, h_scale=S.SCALE_RANGE),
    S.layers(rank_deficient=False, duplicate_columns=True, hessian="tokens", min_b=3, max_c=4, max_b=10, h_scale=S.SCALE_RANGE),
)


@given(SINGULAR_LAYERS, S.sparsities(0.1, 0.9), st.sampled_from(["thanos", "sparsegpt"]))
def test_singular_h_without_damping_warns_and_records_the_damping(layer, p, method):
    """A singular H (fewer tokens than features, or duplicated columns) with percdamp = 0: the
    factorisation fails (a non-positive pivot, or lambda_min within rounding of 0), so prune warns
    once per step of the damping schedule and records the damping it ended with:
    schedule[number of warnings] > 0. The result is finite with the exact count."""
    W, H, X, info = layer
    assert info["singular"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = reference.prune(W, H, method=method, pattern="unstructured", sparsity=p, block_size=3, percdamp=0.0)
    messages = [str(w.message) for w in record]
    assert record and all(issubclass(w.category, RuntimeWarning) and "Cholesky" in str(w.message) for w in record), messages
    schedule = list(spec.damping_schedule(0.0, float(np.mean(np.diag(H)))))
    note(f"{len(record)} warnings, damping {result.damping:.3g}")
    assert result.damping == schedule[len(record)] and result.damping > 0
    assert np.all(np.isfinite(result.weight))
    # a singular H admits updates of (almost) zero loss; its float evaluation may then come out a
    # rounding below 0: the loss is >= -rounding_tol(b) * sum of its absolute terms
    D = result.weight - W
    assert result.loss >= -T.rounding_tol(info["b"]) * T.quadratic_form_scale(D, H), result.loss
    assert int(result.mask.sum()) in contract_count(p, W.size)


@given(S.layers(**PRUNE_LAYERS), st.sampled_from([0.001, 0.01, 0.1]))
def test_damping_is_percdamp_times_mean_diagonal(layer, percdamp):
    W, H, X, info = layer
    result = reference.prune(W, H, method="sparsegpt", pattern="unstructured", sparsity=0.5, percdamp=percdamp)
    T.assert_scalar_close(result.damping, percdamp * float(np.mean(np.diag(H))), tol=T.rounding_tol(info["b"]), what="damping")
