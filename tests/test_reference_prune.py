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
from hypothesis.control import currently_in_test_context
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
    """The reference's dead-column rule (DESIGN.md): W[:, j] = 0 where H_jj = 0 (in every row a
    method prunes; dead weights are pruned first, so they are in the mask too)."""
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
    """``reference.prune`` with its warnings checked: never fewer weights pruned than the contract's
    count; the dead-column warning exactly when more (dead columns outnumbering a group's count);
    the structured warning exactly when s = ceil(p b / (1 - alpha)) exceeds b; no damping warning
    (those are tested on their own below)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = reference.prune(W, H, **kwargs)
    if currently_in_test_context():
        note(f"pruned {int(result.mask.sum())} of {result.mask.size}, damping={result.damping}, outliers={result.outlier_rows}")
    messages = [str(w.message) for w in record]
    assert all(w.category is RuntimeWarning for w in record), messages
    full = {**dict(sparsity=None, block_size=128, alpha=0.0, percdamp=0.01), **kwargs}
    opts = spec.check_arguments(np.shape(W), None if H is None else np.shape(H), **full)
    requested, achieved = spec.requested_count(opts, len(result.outlier_rows)), int(result.mask.sum())
    assert achieved >= requested, (achieved, requested)
    dead_warnings = [m for m in messages if "dead column" in m]
    assert len(dead_warnings) == int(achieved > requested), (messages, achieved, requested)
    if dead_warnings:
        assert f"achieved {achieved / result.mask.size:.6g} ({achieved})" in dead_warnings[0]
    structured_warnings = [m for m in messages if m.startswith("structured pattern")]
    if opts.method == "thanos" and opts.kind == "structured":
        # capped when ceil(p b / (1 - alpha)) > b in rational arithmetic; within the snap of an
        # integer (spec._SNAP, the float edge) either answer is the contract's
        ratio = Fraction(opts.sparsity) * opts.columns / (1 - Fraction(opts.alpha))
        at_edge = abs(ratio - round(ratio)) <= Fraction(16 * 2.0**-52) * opts.columns
        if not at_edge:
            assert len(structured_warnings) == int(math.ceil(ratio) > opts.columns), (messages, opts)
    else:
        assert not structured_warnings, messages
    assert len(messages) == len(dead_warnings) + len(structured_warnings), messages
    return result


# ----------------------------------------------------------------------------------------------
# Thanos against independent constructions
# ----------------------------------------------------------------------------------------------


@given(st.data())
def test_one_block_is_the_fixed_mask_optimum(data):
    """With one block (B >= b) Thanos unstructured / N:M (any metric), and structured always, solve
    each row over its whole mask at once: the result is the least-squares fit for its own mask, with
    the damped H; rows left dense (alpha > 0) are bit-identical to the input."""
    dead = data.draw(st.booleans(), label="dead columns")
    W, H, X, info = data.draw(S.layers(dead_columns=dead, **PRUNE_LAYERS), label="layer")
    b = info["b"]
    pattern = data.draw(S.patterns(b, b), label="pattern")
    block_size = data.draw(st.sampled_from([b, 2 * b]), label="block_size")
    alpha = data.draw(st.sampled_from([0.0, 0.25, 0.5]), label="alpha") if pattern != "unstructured" else 0.0
    sparsity = None if ":" in pattern else data.draw(S.sparsities(), label="sparsity")
    percdamp = data.draw(st.sampled_from([0.0, 0.01]), label="percdamp")
    # whichever score chose the mask (spec.METRICS), the update is the fit for that mask
    metric = data.draw(st.sampled_from(spec.METRICS), label="metric") if pattern != "structured" else "psi"
    result = _prune(W, H, method="thanos", pattern=pattern, sparsity=sparsity, block_size=block_size, alpha=alpha,
                    percdamp=percdamp, metric=metric)
    Hd = S.prepared_hessian(H, result.damping)
    kappa = T.condition_number(Hd)
    # dead weights are in the mask (pruned first), so W itself goes in: their rows and columns of
    # H are zero, they move no kept weight
    dead_columns = np.flatnonzero(np.diag(H) == 0)
    pruned_rows = np.setdiff1d(np.arange(W.shape[0]), result.outlier_rows)
    assert result.mask[np.ix_(pruned_rows, dead_columns)].all(), "dead columns are pruned in every row that is not an outlier"
    expected = eq.fixed_mask_optimum(W, Hd, result.mask)
    T.assert_close(result.weight, expected, tol=T.solve_tol(b, kappa), kappa=kappa, scale=np.max(np.abs(W)), what="one-block Thanos vs fixed-mask optimum")
    T.assert_exactly_zero(result.weight, result.mask, what="one-block Thanos")
    for k in result.outlier_rows:
        assert np.array_equal(result.weight[k], W[k]) and not result.mask[k].any(), f"outlier row {k} must be bit-identical to the input"


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
    *current* weights of columns j1.. with psi (Eq. 11), dead columns (H_jj = 0) ranked before
    every live weight; unstructured: take the ``total - pruned so far`` first of that whole
    remaining matrix (row-major ties) and keep the part inside the block; N:M: each row's n first
    of every group of m in the block; either way every dead weight of the block too. Then every
    row gets the least-squares fit of its trailing problem (columns j1.., matrix Hd_{j1:,j1:})."""
    W = np.array(W, dtype=np.float64, copy=True)
    c, b = W.shape
    mask = np.zeros((c, b), dtype=bool)
    norms = np.sqrt(np.diag(H) / 2.0)
    live = np.broadcast_to(np.diag(H) != 0, (c, b))
    remaining = total
    for j1 in range(0, b, block_size):
        j2 = min(j1 + block_size, b)
        scores = np.abs(W[:, j1:]) * norms[None, j1:]
        if nm is None:
            chosen = np.zeros(scores.size, dtype=bool)
            order = np.lexsort((scores.ravel(), live[:, j1:].ravel()))  # dead first, then by psi; stable
            chosen[order[: max(remaining, 0)]] = True
            block = chosen.reshape(scores.shape)[:, : j2 - j1]
        else:
            n, m = nm
            grouped = scores[:, : j2 - j1].reshape(c, -1, m)
            grouped_live = live[:, j1:j2].reshape(c, -1, m)
            ranks = np.argsort(np.lexsort((grouped, grouped_live), axis=2), axis=2, kind="stable")
            block = (ranks < n).reshape(c, j2 - j1)
        block = block | ~live[:, j1:j2]
        remaining -= int(block.sum())
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
    """Dead columns (H_jj = 0) in the methods that use H: their weights are pruned first -- zero
    and in the mask in every row that is not an outlier -- and count toward their comparison
    group, so the layer prunes exactly the contract's count unless the dead weights alone exceed
    a group's count (then all are pruned, with the warning ``_prune`` checks). Zeroing them
    changes no output on the calibration data."""
    W, H, X, info = data.draw(S.layers(dead_columns=True, hessian="tokens", **PRUNE_LAYERS), label="layer")
    c, b = W.shape
    kwargs = data.draw(S.prune_arguments(b, method_names=("thanos", "sparsegpt", "wanda")), label="kwargs")
    result = _prune(W, H, **kwargs)
    dead = info["dead"]
    rows = np.setdiff1d(np.arange(c), result.outlier_rows)
    assert np.all(result.weight[np.ix_(rows, dead)] == 0), "dead columns' weights are zeroed"
    assert np.all(result.mask[np.ix_(rows, dead)]), "dead columns' weights are in the mask"
    assert result.sparsity == result.mask.mean()
    # the count, built here from the groups: each group prunes max(its count, its dead weights)
    n_dead = len(dead)
    p = kwargs["sparsity"]
    pattern = kwargs["pattern"]
    if ":" in pattern:
        n, m = map(int, pattern.split(":"))
        dead_per_group = np.bincount(np.asarray(dead, dtype=int) // m, minlength=b // m)
        expected = len(rows) * int(np.sum(np.maximum(dead_per_group, n)))
    elif pattern == "structured":
        expected = len(rows) * max(spec.structured_column_count(p, kwargs["alpha"], b), n_dead)
    elif kwargs["method"] == "wanda":
        expected = c * max(spec.per_row_count(p, b), n_dead)
    elif kwargs["method"] == "thanos":
        expected = max(spec.unstructured_count(p, c * b), c * n_dead)
    else:  # SparseGPT's cumulative block counts: exact unless a prefix's dead weights exceed it
        expected = None
        assert int(result.mask.sum()) >= max(spec.unstructured_count(p, c * b), c * n_dead)
    if expected is not None:
        assert int(result.mask.sum()) == expected, (int(result.mask.sum()), expected)
    D = result.weight - W
    assert np.all(np.isfinite(result.weight))
    assert result.loss >= -T.rounding_tol(b) * T.quadratic_form_scale(D, H), result.loss
    # a dead column's weight multiplies a zero input row: zeroing it changes no output
    alive = np.setdiff1d(np.arange(b), dead)
    T.assert_scalar_close(result.loss, eq.layer_loss(W[:, alive], result.weight[:, alive], H[np.ix_(alive, alive)]), tol=T.rounding_tol(b),
                          scale=T.quadratic_form_scale(D, H), what="loss ignores dead columns")
    # X[dead] is exactly 0, so every product and sum is an exact 0 whatever the BLAS kernel
    assert np.array_equal(D[:, dead] @ X[dead], np.zeros((W.shape[0], X.shape[1])))


@pytest.mark.parametrize("method", ["thanos", "sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_golden_zero_hessian_prunes_everything_and_says_so(method, pattern):
    """H = 0 (an accumulator never updated): every column is dead, every weight is pruned, and the
    reported sparsity is 1.0 with a warning giving requested and achieved -- not the requested 0.5
    while every weight is zero."""
    W = np.arange(1.0, 33.0).reshape(4, 8)
    # alpha 0: at structured, Thanos' default 0.2 keeps floor(0.8) = 0 of 4 rows dense yet removes
    # ceil(0.5 * 8 / 0.8) = 5 columns, a request of 20 of 32 (README, "Counts are exact")
    with pytest.warns(RuntimeWarning, match=r"8 dead column\(s\).*requested sparsity 0.5 \(16 of 32 weights\), achieved 1 \(32\)"):
        result = reference.prune(W, np.zeros((8, 8)), method=method, pattern=pattern, sparsity=None if ":" in pattern else 0.5,
                                 alpha=0.0)
    assert result.sparsity == 1.0 and result.mask.all() and np.all(result.weight == 0) and result.loss == 0.0


def test_golden_dead_columns_count_toward_the_layer_total():
    """c = 2, b = 4, p = 0.5: 4 weights go. Column 1 is dead (2 weights, psi 0), so Thanos prunes
    those and the 2 smallest live psi: with H = 2 I on the live columns psi = |W| sqrt(1), the
    smallest live |W| are 1 (row 0, col 0) and 2 (row 1, col 3). No warning: 2 dead <= 4."""
    W = np.array([[1.0, 9.0, 5.0, 6.0], [7.0, 9.0, 8.0, 2.0]])
    H = np.diag([2.0, 0.0, 2.0, 2.0])
    for method in ("thanos", "sparsegpt", "wanda"):
        result = _prune(W, H, method=method, pattern="unstructured", sparsity=0.5, block_size=4)
        # Wanda's per-row groups (2 each) happen to pick the same: the dead weight and the smallest
        assert result.mask.tolist() == [[True, True, False, False], [False, True, False, True]], (method, result.mask)
        assert result.sparsity == 0.5


def test_dtypes_and_magnitude_without_h():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((3, 8))
    H = S.spd_with_condition(8, 4.0, rng)
    r32 = reference.prune(W.astype(np.float32), H, method="thanos", pattern="2:4")
    assert r32.weight.dtype == np.float32 and r32.mask.sum() == 12
    r16 = reference.prune(np.arange(1, 25, dtype=np.float16).reshape(3, 8), np.eye(8), method="wanda", pattern="unstructured", sparsity=0.5)
    assert r16.weight.dtype == np.float16
    # W = 1..24 and H = I: psi = |W|, so each row loses its four smallest (the first four) entries
    assert r16.mask.tolist() == [[True] * 4 + [False] * 4] * 3
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


def _indefinite_part(H):
    """A symmetric perturbation that moves H's smallest eigenvalue to -1e-3 lambda_max (far beyond
    the PSD tolerance 30 b eps of a float64 H) while its diagonal stays positive."""
    lam, Q = np.linalg.eigh(H)
    return (-1e-3 * lam[-1] - lam[0]) * np.outer(Q[:, 0], Q[:, 0])


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
    (dict(metric="hessian"), "metric must be one of"),
    (dict(metric=None), "metric must be one of"),
    (dict(metric=np.array(["psi"])), "metric must be one of"),
    (dict(metric="sparsegpt", method="sparsegpt"), "metric"),
    (dict(metric="magnitude", pattern="structured"), "metric"),
    (dict(W=_nan_at(_W, 5)), "W contains NaN"),
    (dict(W=_nan_at(_W, 0, np.inf)), "W contains NaN"),
    (dict(H=_nan_at(_H, 9)), "H contains NaN"),
    (dict(H=_nan_at(_H, 0, -np.inf)), "H contains NaN"),
    (dict(H=_H[:7, :7]), "H must be square"),
    (dict(H=np.ones((8, 7))), "H must be square"),
    (dict(H=_H + np.triu(np.ones((8, 8)), 1)), "H is not symmetric"),
    (dict(H=_H - 2 * np.eye(8) * np.max(np.diag(_H))), "H is not positive semi-definite: its diagonal"),
    # a positive diagonal, an eigenvalue of -1e12: refused before any damping (it once came back
    # damped to 100 with a negative loss)
    (dict(H=np.array([[1.0, 1e12], [1e12, 1.0]]), W=np.ones((1, 2)), pattern="unstructured"), "H is not positive semi-definite: its smallest eigenvalue"),
    (dict(H=_H + _indefinite_part(_H)), "H is not positive semi-definite: its smallest eigenvalue"),
    (dict(W=np.arange(32).reshape(4, 8)), "W must be a floating-point array or tensor, got dtype int64"),
    (dict(H=np.eye(8, dtype=np.int64)), "H must be a floating-point array or tensor, got dtype int64"),
    (dict(W=np.ones((4, 8), dtype=bool)), "W must be a floating-point"),
    (dict(pattern="\uff11:\uff14", sparsity=None), "pattern must be"),  # full-width digits
    (dict(pattern="\u0662:\u0664", sparsity=None), "pattern must be"),  # Arabic-Indic digits
    (dict(sparsity=True), "sparsity must be a number"),
    (dict(sparsity=np.bool_(False)), "sparsity must be a number"),
    (dict(sparsity=np.array([0.5])), "sparsity must be a number"),
    (dict(block_size=np.float64(4.0)), "block_size must be a positive integer"),
    (dict(block_size=True), "block_size must be a positive integer"),
    (dict(percdamp=np.array(-0.5)), "percdamp"),
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
    _prune(W, H, **kwargs)
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
    """An H that is PSD within its dtype's tolerance but that no load of the schedule makes
    positive definite: float16 H of size 64 with a block [[1, 50], [50, 1]] (eigenvalues 51 and
    -49; the tolerance 30 * 64 * 2^-10 = 1.9 x lambda_max makes -49 rounding as far as float16 can
    tell), percdamp 1e-12: the loads step from 1e-8 to 1 x mean(diag H) = 1. Every load warns,
    then LinAlgError."""
    H = np.eye(64)
    H[0, 1] = H[1, 0] = 50.0
    with pytest.warns(RuntimeWarning, match="Cholesky"):
        with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
            reference.prune(np.ones((1, 64)), H.astype(np.float16), method="thanos", pattern="unstructured", sparsity=0.5, percdamp=1e-12)


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
