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
    """lambda_min(A) <= 10 b eps lambda_max(A): an exactly singular 2 X X^T comes out of rounding with
    |lambda_min| up to ~3 b eps lambda_max (forming it, then eigvalsh), and Cholesky may then pass on
    tiny positive pivots, leaving an H^-1 of noise whose later solves fail. Such a matrix counts as a
    failed factorisation, so damping steps up. A = A^T (b, b)."""
    lam = np.linalg.eigvalsh(A)
    return not lam[0] > 10.0 * A.shape[0] * np.finfo(np.float64).eps * lam[-1]


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


def _thanos_blocks(W, H, U, rows, opts: spec.Options, mask):
    """Alg. 1 (unstructured, global residual mask) and Alg. 8 (N:M), on the given rows of W."""
    c_active, b = len(rows), W.shape[1]
    remaining = spec.unstructured_count(opts.sparsity, c_active * b)
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        scores = eq.psi_metric(W[rows, j1:], H[j1:, j1:])  # psi of the *current* weights
        if opts.kind == "N:M":
            block_mask = eq.n_m_mask(scores[:, : j2 - j1], opts.n, opts.m)
        else:
            block_mask = eq.global_residual_mask(scores, remaining)[:, : j2 - j1]
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


def _thanos_structured(W, H, U, rows, opts: spec.Options, mask):
    """Alg. 2: remove the s columns of lowest column loss (Eq. 15) from the non-outlier rows."""
    s = spec.structured_column_count(opts.sparsity, opts.alpha, W.shape[1])
    order = np.argsort(eq.column_loss(W, H, rows), kind="stable")
    q = np.sort(order[:s])
    W[rows] = eq.structured_update(W[rows], U.T @ U, q)
    mask[np.ix_(rows, q)] = True


def _sparsegpt(W, U, opts: spec.Options, mask):
    """SparseGPT: sequential OBS column by column, the mask chosen per block of columns by
    w^2 / [H^-1]_jj^2 (here [H^-1]_jj is the sequential U_jj^2), written without lazy batching."""
    c, b = W.shape
    d = np.diag(U)
    if opts.kind == "structured":
        s = spec.structured_column_count(opts.sparsity, 0.0, b)
        order = np.argsort(np.sum(W**2, axis=0) / d**2, kind="stable")
        mask[:, order[:s]] = True
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        if opts.kind == "unstructured":
            count = spec.cumulative_count(opts.sparsity, c, j2) - spec.cumulative_count(opts.sparsity, c, j1)
            mask[:, j1:j2] = eq.global_residual_mask(W[:, j1:j2] ** 2 / d[j1:j2] ** 2, count)
        for i in range(j1, j2):
            if opts.kind == "N:M" and i % opts.m == 0:
                mask[:, i : i + opts.m] = eq.smallest_per_row(W[:, i : i + opts.m] ** 2 / d[i : i + opts.m] ** 2, opts.n)
            pruned = mask[:, i]
            err = W[pruned, i] / d[i]
            W[pruned, i:] -= np.outer(err, U[i, i:])  # OBS with the trailing inverse's row
            W[pruned, i] = 0.0


def _no_update_mask(W, H, opts: spec.Options):
    """Wanda (psi, per-row groups) and magnitude (|W|, per-layer): the mask only."""
    c, b = W.shape
    if opts.method == "wanda":
        scores = eq.psi_metric(W, H)
        column_scores = eq.column_loss(W, H)
    else:
        scores = np.abs(W)
        column_scores = np.sum(W**2, axis=0)
    if opts.kind == "N:M":
        return eq.n_m_mask(scores, opts.n, opts.m)
    if opts.kind == "structured":
        s = spec.structured_column_count(opts.sparsity, 0.0, b)
        mask = np.zeros((c, b), dtype=bool)
        mask[:, np.argsort(column_scores, kind="stable")[:s]] = True
        return mask
    if opts.method == "wanda":
        return eq.smallest_per_row(scores, spec.per_row_count(opts.sparsity, b))
    return eq.global_residual_mask(scores, spec.unstructured_count(opts.sparsity, c * b))


def prune(W, H, *, method, pattern, sparsity=None, block_size=128, alpha=0.0, percdamp=0.01) -> spec.PruneResult:
    """Prune one layer. W: (c, b), H: (b, b) or None (magnitude only). NumPy in, NumPy out.

    method: 'thanos' | 'sparsegpt' | 'wanda' | 'magnitude'; pattern: 'unstructured' | 'structured'
    | 'N:M'; sparsity in [0, 1) (implied by N:M, pass None); block_size B; alpha: fraction of rows
    left dense (Thanos structured and N:M); percdamp: damping as a fraction of mean(diag H).
    The result's weight has W's dtype; the inputs are never modified."""
    W_in = np.asarray(W)
    opts = spec.check_arguments(
        W_in.shape, None if H is None else np.shape(H), method=method, pattern=pattern,
        sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp,
    )
    spec.check_values("W", bool(np.all(np.isfinite(W_in))))
    W0 = W_in.astype(np.float64)
    H64 = None
    if H is not None:
        H_in = np.asarray(H)
        spec.check_values("H", bool(np.all(np.isfinite(H_in))))
        H64 = H_in.astype(np.float64)
        eps = np.finfo(H_in.dtype).eps if np.issubdtype(H_in.dtype, np.floating) else np.finfo(np.float64).eps
        spec.check_hessian(float(np.max(np.abs(H64 - H64.T))), float(np.max(np.abs(H64))), float(np.min(np.diag(H64))), eps)

    Wk = W0.copy()
    c = Wk.shape[0]
    mask = np.zeros(Wk.shape, dtype=bool)
    damping, outliers = None, np.zeros(0, dtype=int)
    if opts.method in ("thanos", "sparsegpt"):
        U, damping = prepare_hessian(Wk, H64, opts.percdamp)
        if opts.method == "sparsegpt":
            _sparsegpt(Wk, U, opts, mask)
        else:
            if opts.alpha > 0:
                outliers = _outlier_rows(Wk, H64, opts.alpha)
            rows = np.setdiff1d(np.arange(c), outliers)
            if opts.kind == "structured":
                _thanos_structured(Wk, H64, U, rows, opts, mask)
            else:
                _thanos_blocks(Wk, H64, U, rows, opts, mask)
    else:
        mask = _no_update_mask(Wk, H64, opts)
        Wk[mask] = 0.0
    Wk[mask] = 0.0
    loss = None if H64 is None else eq.layer_loss(W0, Wk, H64)
    weight = Wk.astype(W_in.dtype if np.issubdtype(W_in.dtype, np.floating) else np.float64)
    return spec.PruneResult(weight, mask, loss, float(mask.mean()), damping, [int(i) for i in outliers])
