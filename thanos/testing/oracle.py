"""The float64 oracle the properties judge with: given the implementation's *own* mask, what its
weights must be (a replay of the algorithm's update with that mask), and the scores its mask rule
must have used.

Every replay forms each trailing inverse ``(H_{j:,j:})^-1`` directly from the damped, prepared H
(a Cholesky of that block), not through the one-factor shortcut that production and the reference
use, so the kit does not share the code that decides a result with either of them; the equations
themselves (closed form Eq. 10, fixed-mask optimum) come from ``reference.equations``, which the
proofs ledger checks against a 60-digit oracle.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from reference import equations as eq
from reference import spec

from . import tolerances as T
from .cases import Case


def mean_diagonal(H: np.ndarray) -> float:
    """mean(diag H) of the input H, 1 when every column is dead (DESIGN.md, damping)."""
    return float(np.mean(np.diag(H))) or 1.0


def nominal_damping(case: Case) -> float:
    """``percdamp * mean(diag H)``: the first load of the damping schedule."""
    return case.percdamp * mean_diagonal(case.H)


def prepared_hessian(H: np.ndarray, damping: float) -> np.ndarray:
    """Dead columns (H_jj = 0) get H_jj = mean(diag H), then ``damping`` on the diagonal."""
    Hp = np.array(H, dtype=np.float64, copy=True)
    dead = np.diag(Hp) == 0
    Hp[dead, dead] = mean_diagonal(H)
    return Hp + damping * np.eye(Hp.shape[0])


def numerically_singular(A: np.ndarray) -> bool:
    """lambda_min(A) <= 10 b eps64 lambda_max(A) (the contract's rule for a failed factorisation)."""
    lam = np.linalg.eigvalsh(A)
    return not lam[0] > 10.0 * A.shape[0] * T.eps("float64") * lam[-1]


def dead_columns(H: np.ndarray) -> np.ndarray:
    return np.diag(H) == 0


def column_norms(H: np.ndarray) -> np.ndarray:
    """||X_j|| up to the common factor: sqrt(H_jj / 2)."""
    return np.sqrt(np.maximum(np.diag(H), 0.0) / 2.0)


def trailing_inverse(Hd: np.ndarray, j: int) -> np.ndarray:
    """``(Hd_{j:,j:})^-1`` from a Cholesky of that block (the trailing problem's own inverse)."""
    block = Hd[j:, j:]
    inv = sla.cho_solve(sla.cho_factor(block, lower=True), np.eye(block.shape[0]))
    return (inv + inv.T) / 2.0


def replay_thanos_blocks(W_in: np.ndarray, Hd: np.ndarray, mask: np.ndarray, rows, block_size: int):
    """Alg. 1 / 8 replayed with a given mask: block by block, each row removes its masked entries of
    the block with the closed form (Eq. 10) over the trailing problem (columns before the block
    frozen). Returns (final W, {j1: W at the start of block j1})."""
    W = np.array(W_in, dtype=np.float64, copy=True)
    b = W.shape[1]
    snapshots = {}
    for j1 in range(0, b, block_size):
        j2 = min(j1 + block_size, b)
        snapshots[j1] = W.copy()
        Tinv = trailing_inverse(Hd, j1)
        for k in rows:
            q = np.flatnonzero(mask[k, j1:j2])
            if q.size:
                delta, _ = eq.closed_form_update(W[k, j1:], Tinv, q)
                W[k, j1:] += delta
                W[k, j1 + q] = 0.0
    W[np.asarray(mask, dtype=bool)] = 0.0
    return W, snapshots


def sparsegpt_diagonal(Hd: np.ndarray) -> np.ndarray:
    """d_j = sqrt([(Hd_{j:,j:})^-1]_00): SparseGPT's ``[H^-1]_jj`` (the diagonal of the upper
    Cholesky factor of H^-1)."""
    b = Hd.shape[0]
    return np.sqrt(np.array([trailing_inverse(Hd, j)[0, 0] for j in range(b)]))


def replay_sparsegpt(W_in: np.ndarray, Hd: np.ndarray, mask: np.ndarray):
    """SparseGPT replayed with a given mask: column by column, the pruned entries of column i are
    removed by OBS on the trailing problem (``Delta = -w_i / T_00 T[0, :]``, T = (Hd_{i:,i:})^-1).
    Returns (final W, {i: W before column i})."""
    W = np.array(W_in, dtype=np.float64, copy=True)
    b = W.shape[1]
    snapshots = {}
    for i in range(b):
        snapshots[i] = W.copy()
        pruned = np.flatnonzero(mask[:, i])
        if pruned.size:
            Tinv = trailing_inverse(Hd, i)
            W[pruned, i:] -= np.outer(W[pruned, i] / Tinv[0, 0], Tinv[0, :])
            W[pruned, i] = 0.0
    W[np.asarray(mask, dtype=bool)] = 0.0
    return W, snapshots


def fixed_mask_optimum(W_in: np.ndarray, Hd: np.ndarray, mask: np.ndarray, rows) -> np.ndarray:
    """The least-squares best kept weights for the mask, row by row (``reference.fixed_mask_optimum``)."""
    W = np.array(W_in, dtype=np.float64, copy=True)
    rows = np.asarray(rows, dtype=int)
    if rows.size:
        W[rows] = eq.fixed_mask_optimum(W[rows], Hd, mask[rows])
    return W


def expected_outlier_count(case: Case) -> int:
    opts = case.options()
    if case.method == "thanos" and opts.kind != "unstructured":
        return spec.outlier_row_count(opts.alpha, opts.rows)
    return 0


def selection_violation(scores: np.ndarray, selected: np.ndarray, tau: float):
    """How far a selection is from 'the selected are the smallest scores': max(selected) -
    min(unselected) - tau (> 0 is a violation), with the two entries' indices."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    selected = np.asarray(selected, dtype=bool).reshape(-1)
    if not selected.any() or selected.all():
        return -np.inf, None, None
    i_sel = np.flatnonzero(selected)[np.argmax(scores[selected])]
    i_un = np.flatnonzero(~selected)[np.argmin(scores[~selected])]
    return float(scores[i_sel] - scores[i_un] - tau), int(i_sel), int(i_un)


__all__ = [
    "column_norms", "dead_columns", "expected_outlier_count", "fixed_mask_optimum", "mean_diagonal", "nominal_damping",
    "numerically_singular", "prepared_hessian", "replay_sparsegpt", "replay_thanos_blocks", "selection_violation",
    "sparsegpt_diagonal", "trailing_inverse",
]
