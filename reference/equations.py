"""The paper's equations, one float64 NumPy/SciPy function each (Ilin & Richtarik, 2025).

Notation (DESIGN.md): W is (c, b), X is (b, a), H = 2 X X^T is (b, b). One row w is (b,), a set q
of s column indices is removed from it, Delta is the row's change. Loss of a row change:
1/2 Delta H Delta^T = ||Delta X||^2. Masks are boolean with True = pruned.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def hessian(X) -> np.ndarray:
    """Layer Hessian H = 2 X X^T, Eq. (2).  X: (b, a) -> H: (b, b)."""
    X = _f64(X)
    return 2.0 * X @ X.T


def column_norms(H) -> np.ndarray:
    """||X_j||_2 from the Hessian: H_jj = 2 ||X_j||^2.  H: (b, b) -> (b,)."""
    return np.sqrt(np.maximum(np.diag(_f64(H)), 0.0) / 2.0)


def psi_metric(W, H) -> np.ndarray:
    """Wanda / Thanos mask metric psi, Eq. (11): |W_ij| ||X_j||_2.  W: (c, b), H: (b, b) -> (c, b)."""
    return np.abs(_f64(W)) * column_norms(H)[None, :]


def sparsegpt_metric(W, U) -> np.ndarray:
    """SparseGPT's mask metric (its Sec. 3.2, OBS's saliency): W_ij^2 / [H_F^-1]_jj with H_F^-1 =
    (H_{j:, j:})^-1, the inverse Hessian of the columns not yet passed when column j's turn comes.
    U is the upper Cholesky factor of H^-1 (``inverse_cholesky_factor``); as U is upper,
    [(H_{j:, j:})^-1]_00 = [U_{j:, j:}^T U_{j:, j:}]_00 = U_jj^2 (``trailing_inverse``).
    W: (c, n), U: (n, n) (or the trailing block U[j:, j:] for the trailing columns) -> (c, n)."""
    return _f64(W) ** 2 / np.diag(_f64(U))[None, :] ** 2


def row_loss(W, H) -> np.ndarray:
    """Row loss, Eq. (14): h_k = sum_j W_kj^2 ||X_j||^2 (the sum of the row's one-weight OBD losses;
    the true no-update cost 1/2 w H w^T of removing the whole row differs when features correlate).

    W: (c, b), H: (b, b) -> (c,)."""
    return np.sum(psi_metric(W, H) ** 2, axis=1)


def column_loss(W, H, rows=None) -> np.ndarray:
    """Column loss, Eq. (15): v_j = ||X_j||^2 sum_{k in rows} W_kj^2, over the given rows (all if None).

    W: (c, b), H: (b, b), rows: index array -> (b,)."""
    P = psi_metric(W, H) ** 2
    if rows is not None:
        P = P[np.asarray(rows, dtype=int)]
    return np.sum(P, axis=0)


def row_change_loss(delta, H) -> float:
    """Loss of one row change: 1/2 Delta H Delta^T (Eq. 6 objective).  delta: (b,), H: (b, b)."""
    delta = _f64(delta)
    return 0.5 * float(delta @ _f64(H) @ delta)


def layer_loss(W_old, W_new, H) -> float:
    """Layer loss sum_k 1/2 Delta_k H Delta_k^T = ||(W_new - W_old) X||_F^2 (Eq. 1-2).

    W_old, W_new: (c, b), H: (b, b)."""
    D = _f64(W_new) - _f64(W_old)
    return 0.5 * float(np.sum((D @ _f64(H)) * D))


def kkt_solve(w, H, q):
    """Lagrangian / KKT system, Eq. (6)-(9): min 1/2 Delta H Delta^T s.t. Delta e_q + w_q = 0.

    Solves [[H, E], [E^T, 0]] [Delta^T; mu] = [0; -w_q] with E = I[:, q] directly, without H^-1:
    the root oracle. w: (b,), H: (b, b) SPD, q: s column indices -> (Delta (b,), loss)."""
    w, H = _f64(w), _f64(H)
    q = np.asarray(q, dtype=int)
    b, s = H.shape[0], q.size
    E = np.zeros((b, s))
    E[q, np.arange(s)] = 1.0
    K = np.block([[H, E], [E.T, np.zeros((s, s))]])
    rhs = np.concatenate([np.zeros(b), -w[q]])
    sol = np.linalg.solve(K, rhs)
    delta = sol[:b]
    return delta, row_change_loss(delta, H)


def closed_form_update(w, Hinv, q):
    """Closed-form multi-weight update, Eq. (10): Delta = -u^T R_hat^-1 R, loss 1/2 u^T R_hat^-1 u.

    R = (H^-1)_{q,:} (s, b), R_hat = (H^-1)_{q,q} (s, s), u = w_q (s,).
    w: (b,), Hinv: (b, b), q: s indices -> (Delta (b,), loss)."""
    w, Hinv = _f64(w), _f64(Hinv)
    q = np.asarray(q, dtype=int)
    if q.size == 0:
        return np.zeros_like(w), 0.0
    u = w[q]
    R = Hinv[q, :]
    R_hat = Hinv[np.ix_(q, q)]
    x = sla.solve(R_hat, u, assume_a="pos")
    return -x @ R, 0.5 * float(u @ x)


def obs_update(w, Hinv, q: int):
    """Optimal Brain Surgeon, s = 1: Delta = -w_q / [H^-1]_qq (H^-1)_{q,:}, loss 1/2 w_q^2 / [H^-1]_qq.

    w: (b,), Hinv: (b, b), q: one index -> (Delta (b,), loss)."""
    w, Hinv = _f64(w), _f64(Hinv)
    d = Hinv[q, q]
    return -(w[q] / d) * Hinv[q, :], 0.5 * w[q] ** 2 / d


def obd_loss(w, H, q) -> float:
    """Optimal Brain Damage / Wanda loss (no update): 1/2 u H_qq u^T, = 1/2 w_q^2 H_qq = w_q^2 ||X_q||^2 for s = 1.

    w: (b,), H: (b, b), q: s indices."""
    w, H = _f64(w), _f64(H)
    q = np.atleast_1d(np.asarray(q, dtype=int))
    u = w[q]
    return 0.5 * float(u @ H[np.ix_(q, q)] @ u)


def fixed_mask_optimum(W, H, mask) -> np.ndarray:
    """Best kept weights for a fixed mask (least squares): W_K <- W_K + W_Q H_QK H_KK^-1, W_Q <- 0.

    Row by row; Q = pruned, K = kept. W: (c, b), H: (b, b) SPD, mask: (c, b) bool -> (c, b)."""
    W, H = _f64(W).copy(), _f64(H)
    mask = np.asarray(mask, dtype=bool)
    for k in range(W.shape[0]):
        Q = np.flatnonzero(mask[k])
        K = np.flatnonzero(~mask[k])
        if Q.size and K.size:
            W[k, K] += sla.solve(H[np.ix_(K, K)], H[np.ix_(K, Q)] @ W[k, Q], assume_a="pos")
        W[k, Q] = 0.0
    return W


def inverse_cholesky_factor(H) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), from H without forming a product of inverses.

    H: (b, b) SPD -> U: (b, b) upper triangular. Raises numpy/scipy LinAlgError if H is not SPD."""
    H = _f64(H)
    L = sla.cholesky(H, lower=True)
    Hinv = sla.cho_solve((L, True), np.eye(H.shape[0]))
    Hinv = (Hinv + Hinv.T) / 2.0
    return sla.cholesky(Hinv, lower=False)


def trailing_inverse(U, j: int) -> np.ndarray:
    """Trailing inverse (H_{j:,j:})^-1 = U_{j:,j:}^T U_{j:,j:} with U the upper Cholesky factor of H^-1.

    Errata item (b): one factorisation of H^-1 serves every block. U: (b, b), j: first free column
    -> (b - j, b - j)."""
    Uj = _f64(U)[j:, j:]
    return Uj.T @ Uj


def global_residual_mask(scores, r: int) -> np.ndarray:
    """Global residual mask, Eq. (11) / App. G.4.1: the r smallest scores of the whole remaining matrix.

    Ties are broken by row-major position (a stable sort), so the mask is deterministic.
    scores: (c, n) -> (c, n) bool with exactly r True."""
    scores = _f64(scores)
    order = np.argsort(scores, axis=None, kind="stable")
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[:r]] = True
    return mask.reshape(scores.shape)


def smallest_per_row(scores, count: int) -> np.ndarray:
    """Per-row mask of the ``count`` smallest scores (stable ties). scores: (c, n) -> (c, n) bool."""
    scores = _f64(scores)
    order = np.argsort(scores, axis=1, kind="stable")[:, :count]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def n_m_mask(scores, n: int, m: int) -> np.ndarray:
    """N:M mask, Alg. 8: in every group of m consecutive columns each row loses its n smallest scores.

    scores: (c, b) with b % m == 0 -> (c, b) bool."""
    scores = _f64(scores)
    c, b = scores.shape
    grouped = scores.reshape(c, b // m, m)
    order = np.argsort(grouped, axis=2, kind="stable")[:, :, :n]
    mask = np.zeros(grouped.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(c, b)


def structured_update(W, Hinv, q) -> np.ndarray:
    """Structured update, Eq. (13) / Alg. 2 step 10 / App. Eq. (72), in its corrected form:

    W <- W - W_{:,q} ((H^-1)_{q,q})^-1 (H^-1)_{q,:}: sub-blocks OF THE INVERSE H^-1. Removes the same
    columns q from every row; the removed entries come out exactly 0.
    W: (c, b), Hinv: (b, b), q: s indices -> (c, b)."""
    W, Hinv = _f64(W).copy(), _f64(Hinv)
    q = np.asarray(q, dtype=int)
    if q.size == 0:
        return W
    X = sla.solve(Hinv[np.ix_(q, q)], W[:, q].T, assume_a="pos")  # (s, c)
    W -= X.T @ Hinv[q, :]
    W[:, q] = 0.0
    return W


def structured_update_review(W, H, q) -> np.ndarray:
    """A published review's proposed replacement of Eq. (13): W <- W - W_{:,q} (H_{q,q})^-1 H_{q,:},
    sub-blocks of H itself. Kept only so proofs/ can show what it does (errata item a).
    W: (c, b), H: (b, b), q: s indices -> (c, b)."""
    W, H = _f64(W).copy(), _f64(H)
    q = np.asarray(q, dtype=int)
    if q.size == 0:
        return W
    X = sla.solve(H[np.ix_(q, q)], W[:, q].T, assume_a="pos")
    return W - X.T @ H[q, :]
