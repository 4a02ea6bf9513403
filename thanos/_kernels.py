"""Batched building blocks of ``thanos.solver``: masks with the reference's tie-breaking, the
factor ``U`` of the damped ``H^-1``, and batched SPD solves.

Every mask helper breaks ties exactly like ``np.argsort(kind="stable")`` in ``reference``: by
position (row-major for the layer-wide masks, by column inside a row or an N:M group).
"""

from __future__ import annotations

import warnings

import torch

from reference import spec


# --------------------------------------------------------------------------------------- masks
def global_residual_mask(scores: torch.Tensor, r: int, columns: int | None = None) -> torch.Tensor:
    """The ``r`` smallest of ``scores`` (c, n) over the whole matrix, ties to the lower row-major
    position (App. G.4.1); returns the mask restricted to the first ``columns`` columns.

    Never sorts the c*n scores: the r-th smallest value is bracketed from a deterministic strided
    sample, checked by two counts, and found exactly among the few scores inside the bracket (a
    full ``kthvalue`` only when the bracket misses)."""
    c, n = scores.shape
    columns = n if columns is None else columns
    if r <= 0:
        return torch.zeros((c, columns), dtype=torch.bool, device=scores.device)
    if r >= c * n:
        return torch.ones((c, columns), dtype=torch.bool, device=scores.device)
    flat = scores.reshape(-1)
    threshold = _kth_smallest(flat, r)
    below = scores < threshold
    missing = r - int(below.sum())
    ties = (flat == threshold).nonzero().squeeze(1)[:missing]  # row-major order = stable order
    mask = below[:, :columns].clone()
    ties = ties[(ties % n) < columns]
    mask[ties // n, ties % n] = True
    return mask


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) of a 1-D tensor, exactly."""
    total = flat.numel()
    if total <= 1 << 16:
        return torch.kthvalue(flat, k).values
    stride = max(1, total // (1 << 15))
    sample = torch.sort(flat[::stride]).values
    m = sample.numel()
    centre = k / total * m
    slack = 4.0 * (m * (k / total) * (1 - k / total)) ** 0.5 + 8
    lo = sample[max(0, int(centre - slack))]
    hi = sample[min(m - 1, int(centre + slack))]
    n_below = int((flat < lo).sum())
    inside = (flat >= lo) & (flat <= hi)
    n_inside = int(inside.sum())
    if n_below < k <= n_below + n_inside:
        return torch.kthvalue(flat[inside], k - n_below).values
    return torch.kthvalue(flat, k).values


def smallest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Per-row mask of the ``count`` smallest scores, ties to the lower column."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if count > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :count]
        mask.scatter_(1, order, True)
    return mask


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask (Alg. 8): in each group of m consecutive columns every row loses its n smallest."""
    c, b = scores.shape
    grouped = scores.reshape(c, b // m, m)
    order = torch.sort(grouped, dim=2, stable=True).indices[:, :, :n]
    mask = torch.zeros(grouped.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(2, order, True)
    return mask.reshape(c, b)


def smallest_columns(column_scores: torch.Tensor, s: int) -> torch.Tensor:
    """Indices of the s lowest column scores (ties to the lower index), sorted ascending."""
    order = torch.sort(column_scores, stable=True).indices[:s]
    return torch.sort(order).values


def largest_rows(row_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest row scores (ties to the lower index), sorted ascending."""
    order = torch.sort(-row_scores, stable=True).indices[:k]
    return torch.sort(order).values


# ------------------------------------------------------------------------------ factorisation
def inverse_cholesky_factor(H: torch.Tensor, mean_diagonal: float, percdamp: float):
    """Upper Cholesky factor U of the damped H^-1 (H^-1 = U^T U) and the inverse itself.

    Tries the loads of ``spec.damping_schedule`` in turn; each failure (of H + lambda I, or of the
    rounded inverse) warns and raises the load; after the last one a ``torch.linalg.LinAlgError``
    with ``spec.damping_error``. Returns (U, Hinv, damping)."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    schedule = spec.damping_schedule(percdamp, mean_diagonal)
    damping = next(schedule)
    while True:
        L, info = torch.linalg.cholesky_ex(H + damping * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            Hinv = (Hinv + Hinv.mT) / 2
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(U).all()):
                return U, Hinv, damping
        nxt = next(schedule, None)
        if nxt is None:
            raise torch.linalg.LinAlgError(spec.damping_error(damping))
        warnings.warn(spec.damping_warning(damping, nxt), RuntimeWarning, stacklevel=4)
        damping = nxt


# ------------------------------------------------------------------------------ batched solves
_BASE = 24  # below this size LAPACK's batched potrf is used as is


def batched_cholesky(A: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors of a batch of SPD matrices (k, s, s), recursively blocked so that
    most of the work is batched GEMM (``torch.baddbmm``) and triangular solves rather than many
    small LAPACK calls (which run at ~1 GFLOP/s on this CPU build). Raises on failure."""
    s = A.shape[-1]
    if s <= _BASE:
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            raise torch.linalg.LinAlgError("batched Cholesky of a trailing sub-block failed")
        return L
    h = s // 2
    L11 = batched_cholesky(A[:, :h, :h])
    # L21 = A21 L11^-T  <=>  L11 L21^T = A12
    L21 = torch.linalg.solve_triangular(L11, A[:, :h, h:], upper=False).mT
    S = torch.baddbmm(A[:, h:, h:], L21, L21.mT, alpha=-1)
    L22 = batched_cholesky(S)
    L = torch.zeros_like(A)
    L[:, :h, :h] = L11
    L[:, h:, :h] = L21
    L[:, h:, h:] = L22
    return L


def spd_solve(A: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Solve A x = u for a batch of SPD A (k, s, s) and u (k, s). If a float32 factorisation
    breaks down (a sub-block of an ill-conditioned inverse), the batch is redone in float64."""
    try:
        L = batched_cholesky(A)
    except torch.linalg.LinAlgError:
        if A.dtype == torch.float64:
            raise
        return spd_solve(A.double(), u.double()).to(A.dtype)
    y = torch.linalg.solve_triangular(L, u.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True).squeeze(-1)
