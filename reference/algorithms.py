"""``reference.prune``: Thanos (Alg. 1, 2, 8), SparseGPT, Wanda and magnitude in plain float64 loops.

Slow and obviously correct: every step is a call to one function of ``equations.py``. The same
signature and semantics as ``thanos.prune`` (DESIGN.md, "The algorithms").
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla

from . import equations as eq
from . import spec


def _numerically_singular(A: np.ndarray) -> bool:
    """lambda_min(A) <= 10 b eps lambda_max(A) (``spec.singular_ratio``): an exactly singular
    2 X X^T comes out of rounding with |lambda_min| up to ~3 b eps lambda_max (forming it, then
    eigvalsh), and Cholesky may then pass on tiny positive pivots, leaving an H^-1 of noise whose
    later solves fail. Such a matrix counts as a failed factorisation, so damping steps up. This
    float64 test decides every load, in both implementations and every compute dtype. A = A^T (b, b)."""
    lam = np.linalg.eigvalsh(A)
    return not lam[0] > spec.singular_ratio(A.shape[0]) * lam[-1]


def _dead_first(scores: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Scores with the dead columns' entries set to -1, below every real score (all are >= 0), so
    that a comparison group prunes its dead weights before any live one. scores: (c, n), dead: (n,)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[:, dead] = -1.0
    return scores


def prepare_hessian(W: np.ndarray, H: np.ndarray, percdamp: float):
    """Dead columns and damping (DESIGN.md): H_jj = 0 -> H_jj = mean(diag H) and W[:, j] = 0; then
    add lambda = percdamp * mean(diag H) to the diagonal, raising it x10 while Cholesky fails or
    the damped matrix is numerically singular.

    mean(diag H) is that of the input H (1 if every column is dead), so the prepared matrix, the
    damping and every update scale with H (a stand-in of 1 made both depend on H's units).
    W: (c, b) float64, modified in place; H: (b, b). Returns (U, damping) with U the upper Cholesky
    factor of the damped H^-1."""
    Hd = H.copy()
    dead = np.diag(Hd) == 0
    mean_diagonal = float(np.mean(np.diag(Hd))) or 1.0
    Hd[dead, dead] = mean_diagonal
    W[:, dead] = 0.0
    schedule = spec.damping_schedule(percdamp, mean_diagonal)
    damping = next(schedule)
    while True:
        try:
            Hdamped = Hd + damping * np.eye(Hd.shape[0])
            if _numerically_singular(Hdamped):
                raise np.linalg.LinAlgError("numerically singular")
            U = eq.inverse_cholesky_factor(Hdamped)
            return U, damping
        except (np.linalg.LinAlgError, sla.LinAlgError):
            nxt = next(schedule, None)
            if nxt is None:
                raise np.linalg.LinAlgError(spec.damping_error(damping)) from None
            warnings.warn(spec.damping_warning(damping, nxt), RuntimeWarning, stacklevel=3)
            damping = nxt


def _outlier_rows(W: np.ndarray, H: np.ndarray, alpha: float) -> np.ndarray:
    """The floor(alpha c) rows of highest row loss, Eq. (14); ties to the lower index."""
    k = spec.outlier_row_count(alpha, W.shape[0])
    order = np.argsort(-eq.row_loss(W, H), kind="stable")
    return np.sort(order[:k])


def _thanos_metric(W, H, U, metric: str) -> np.ndarray:
    """The score Thanos' mask ranks the *current* weights of the trailing columns by (``spec.METRICS``):
    psi (Eq. 11, the paper's), |W|, or SparseGPT's w^2 / [(H_{j:, j:})^-1]_00. W: (c, n), H and U:
    the trailing (n, n) blocks of H and of the upper Cholesky factor of the damped H^-1."""
    if metric == "psi":
        return eq.psi_metric(W, H)
    if metric == "magnitude":
        return np.abs(W)
    return eq.sparsegpt_metric(W, U)


def _thanos_blocks(W, H, U, rows, opts: spec.Options, mask, dead):
    """Alg. 1 (unstructured, global residual mask) and Alg. 8 (N:M), on the given rows of W.
    Dead columns' weights are pruned first and count toward the layer total / their N:M group."""
    c_active, b = len(rows), W.shape[1]
    remaining = spec.unstructured_count(opts.sparsity, c_active * b)
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        scores = _dead_first(_thanos_metric(W[rows, j1:], H[j1:, j1:], U[j1:, j1:], opts.metric), dead[j1:])
        if opts.kind == "N:M":
            block_mask = eq.n_m_mask(scores[:, : j2 - j1], opts.n, opts.m)
        else:
            block_mask = eq.global_residual_mask(scores, max(remaining, 0))[:, : j2 - j1]
        block_mask |= dead[None, j1:j2]
        remaining -= int(block_mask.sum())
        T = eq.trailing_inverse(U, j1)  # (H_{j1:, j1:})^-1, no new inversion
        for i, k in enumerate(rows):
            q = np.flatnonzero(block_mask[i])  # local to the trailing problem
            if q.size == 0:
                continue
            delta, _ = eq.closed_form_update(W[k, j1:], T, q)
            W[k, j1:] += delta
            W[k, j1 + q] = 0.0
            mask[k, j1 + q] = True


def _thanos_structured(W, H, U, rows, opts: spec.Options, mask, dead):
    """Alg. 2: remove the s columns of lowest column loss (Eq. 15) from the non-outlier rows; dead
    columns first (all of them, even beyond s)."""
    s = spec.structured_column_count(opts.sparsity, opts.alpha, W.shape[1])
    order = np.argsort(_dead_first(eq.column_loss(W, H, rows)[None, :], dead)[0], kind="stable")
    q = np.union1d(order[:s], np.flatnonzero(dead))
    W[rows] = eq.structured_update(W[rows], U.T @ U, q)
    mask[np.ix_(rows, q)] = True


def _sparsegpt(W, U, opts: spec.Options, mask, dead):
    """SparseGPT: sequential OBS column by column, the mask chosen per block of columns by
    w^2 / [H^-1]_jj^2 (here [H^-1]_jj is the sequential U_jj^2), written without lazy batching.
    Block [j1, j2) prunes ``cumulative(j2) - pruned so far`` (dead weights first and all of them),
    so the layer total stays floor(p c b) unless dead weights alone exceed a prefix's count."""
    c, b = W.shape
    d = np.diag(U)
    if opts.kind == "structured":
        s = spec.structured_column_count(opts.sparsity, 0.0, b)
        order = np.argsort(_dead_first((np.sum(W**2, axis=0) / d**2)[None, :], dead)[0], kind="stable")
        mask[:, order[:s]] = True
        mask[:, dead] = True
    pruned_so_far = 0
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        if opts.kind == "unstructured":
            count = max(spec.cumulative_count(opts.sparsity, c, j2) - pruned_so_far, 0)
            scores = eq.sparsegpt_metric(W[:, j1:j2], U[j1:j2, j1:j2])
            mask[:, j1:j2] = eq.global_residual_mask(_dead_first(scores, dead[j1:j2]), count)
            mask[:, j1:j2] |= dead[None, j1:j2]
            pruned_so_far += int(mask[:, j1:j2].sum())
        for i in range(j1, j2):
            if opts.kind == "N:M" and i % opts.m == 0:
                group = slice(i, i + opts.m)
                scores = eq.sparsegpt_metric(W[:, group], U[group, group])
                mask[:, group] = eq.smallest_per_row(_dead_first(scores, dead[group]), opts.n)
                mask[:, group] |= dead[None, group]
            pruned = mask[:, i]
            err = W[pruned, i] / d[i]
            W[pruned, i:] -= np.outer(err, U[i, i:])  # OBS with the trailing inverse's row
            W[pruned, i] = 0.0


def _no_update_mask(W, H, opts: spec.Options, dead):
    """Wanda (psi, per-row groups) and magnitude (|W|, per-layer): the mask only. Wanda prunes dead
    columns' weights first (all of them) in each group; magnitude ignores H (``dead`` is empty)."""
    c, b = W.shape
    if opts.method == "wanda":
        scores = _dead_first(eq.psi_metric(W, H), dead)
        column_scores = _dead_first(eq.column_loss(W, H)[None, :], dead)[0]
    else:
        scores = np.abs(W)
        column_scores = np.sum(W**2, axis=0)
    if opts.kind == "N:M":
        mask = eq.n_m_mask(scores, opts.n, opts.m)
    elif opts.kind == "structured":
        s = spec.structured_column_count(opts.sparsity, 0.0, b)
        mask = np.zeros((c, b), dtype=bool)
        mask[:, np.argsort(column_scores, kind="stable")[:s]] = True
    elif opts.method == "wanda":
        mask = eq.smallest_per_row(scores, spec.per_row_count(opts.sparsity, b))
    else:
        mask = eq.global_residual_mask(scores, spec.unstructured_count(opts.sparsity, c * b))
    mask[:, dead] = True
    return mask


def prune(W, H, *, method, pattern, sparsity=None, block_size=None, alpha=None, percdamp=0.01, metric="psi") -> spec.PruneResult:
    """Prune one layer. W: (c, b), H: (b, b) or None (magnitude only). NumPy in, NumPy out.

    method: 'thanos' | 'sparsegpt' | 'wanda' | 'magnitude'; pattern: 'unstructured' | 'structured'
    | 'N:M'; sparsity in [0, 1) (implied by N:M, pass None); block_size B (None: the default for the
    method and pattern, ``spec.default_block_size``); alpha: fraction of rows
    left dense (Thanos structured and N:M; None: ``spec.default_alpha``, 0.2 for Thanos structured,
    else 0); percdamp: damping as a fraction of mean(diag H); metric:
    the score Thanos' mask ranks weights by, unstructured and N:M (``spec.METRICS``; 'psi', the
    paper's, by default; the outlier rows of alpha > 0 are always chosen by Eq. 14's psi).
    Dead columns (H_jj = 0) are pruned first in every method that uses H; when they exceed what a
    group may prune, all are pruned and a RuntimeWarning gives requested and achieved sparsity.
    The result's weight has W's dtype; the inputs are never modified."""
    W_in = np.asarray(W)
    opts = spec.check_arguments(
        W_in.shape, None if H is None else np.shape(H), method=method, pattern=pattern,
        sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp, metric=metric,
    )
    spec.check_floating("W", np.issubdtype(W_in.dtype, np.floating), W_in.dtype)
    spec.check_values("W", bool(np.all(np.isfinite(W_in))))
    W0 = W_in.astype(np.float64)
    c, b = W0.shape
    H64 = None
    if H is not None:
        H_in = np.asarray(H)
        spec.check_floating("H", np.issubdtype(H_in.dtype, np.floating), H_in.dtype)
        spec.check_values("H", bool(np.all(np.isfinite(H_in))))
        H64 = H_in.astype(np.float64)
        eps = float(np.finfo(H_in.dtype).eps)
        spec.check_hessian(float(np.max(np.abs(H64 - H64.T))), float(np.max(np.abs(H64))), float(np.min(np.diag(H64))), eps)
        if opts.method in ("thanos", "sparsegpt"):  # the methods that factor H (and would damp it)
            lam = np.linalg.eigvalsh((H64 + H64.T) / 2.0)
            spec.check_psd(float(lam[0]), float(lam[-1]), b, eps)

    Wk = W0.copy()
    mask = np.zeros(Wk.shape, dtype=bool)
    dead = np.zeros(b, dtype=bool) if H64 is None or opts.method == "magnitude" else np.diag(H64) == 0
    damping, outliers = None, np.zeros(0, dtype=int)
    if opts.method in ("thanos", "sparsegpt"):
        U, damping = prepare_hessian(Wk, H64, opts.percdamp)
        if opts.method == "sparsegpt":
            _sparsegpt(Wk, U, opts, mask, dead)
        else:
            if opts.alpha > 0:
                outliers = _outlier_rows(W0, H64, opts.alpha)
                Wk[outliers] = W0[outliers]  # left untouched, dead columns included
            rows = np.setdiff1d(np.arange(c), outliers)
            if opts.kind == "structured":
                _thanos_structured(Wk, H64, U, rows, opts, mask, dead)
            else:
                _thanos_blocks(Wk, H64, U, rows, opts, mask, dead)
    else:
        mask = _no_update_mask(Wk, H64, opts, dead)
    Wk[mask] = 0.0
    achieved, requested = int(mask.sum()), spec.requested_count(opts, len(outliers))
    if achieved > requested:
        warnings.warn(spec.dead_columns_warning(int(dead.sum()), requested, achieved, mask.size), RuntimeWarning, stacklevel=2)
    if opts.method == "thanos" and opts.kind == "structured":
        message = spec.structured_sparsity_warning(opts.sparsity, opts.alpha, c, b)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
    loss = None if H64 is None else eq.layer_loss(W0, Wk, H64)
    return spec.PruneResult(Wk.astype(W_in.dtype), mask, loss, float(mask.mean()), damping, [int(i) for i in outliers])
