"""Batched building blocks of ``thanos.solver``: masks with the reference's tie-breaking, the
factor ``U`` of the damped ``H^-1``, and batched SPD solves.

Every mask helper breaks ties exactly like ``np.argsort(kind="stable")`` in ``reference``: by
position (row-major for the layer-wide masks, by column inside a row or an N:M group).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import torch

from reference import spec


# --------------------------------------------------------------------------------------- masks
def global_residual_mask(scores: torch.Tensor, r: int, columns: int | None = None) -> torch.Tensor:
    """The ``r`` smallest of ``scores`` (c, n) over the whole matrix, ties to the lower row-major
    position (App. G.4.1); returns the mask restricted to the first ``columns`` columns.

    Never sorts the c*n scores: the r-th smallest value t is bracketed from a deterministic strided
    sample, checked by counting, and found exactly among the few scores inside the bracket (a
    full ``kthvalue`` only when the bracket misses). Without ties at t the mask is ``scores <= t``;
    with ties the first ones in row-major order are taken, as a stable argsort would."""
    c, n = scores.shape
    columns = n if columns is None else columns
    if r <= 0:
        return torch.zeros((c, columns), dtype=torch.bool, device=scores.device)
    if r >= c * n:
        return torch.ones((c, columns), dtype=torch.bool, device=scores.device)
    flat = scores.reshape(-1)
    threshold, n_below, n_at_most = _kth_smallest(flat, r)
    if n_at_most == r:  # no surplus ties at the threshold
        return scores[:, :columns] <= threshold
    mask = scores[:, :columns] < threshold
    ties = (flat == threshold).nonzero().squeeze(1)[: r - n_below]  # row-major = stable order
    ties = ties[(ties % n) < columns]
    mask[ties // n, ties % n] = True
    return mask


def _kth_smallest(flat: torch.Tensor, k: int):
    """The k-th smallest value t (1-based) of a 1-D tensor, exactly, with #{< t} and #{<= t}."""
    total = flat.numel()
    lo_count, candidates = 0, flat
    if total > 1 << 16:
        stride = total // (1 << 14)
        sample = torch.sort(flat[::stride]).values
        m = sample.numel()
        centre = k / total * m
        slack = 4.0 * (m * (k / total) * (1 - k / total)) ** 0.5 + 4
        lo = sample[max(0, int(centre - slack))]
        hi = sample[min(m - 1, int(centre + slack))]
        below_lo = flat < lo
        n_below_lo = int(below_lo.sum())
        inside = flat[(flat <= hi) ^ below_lo]  # lo <= hi, so this is lo <= flat <= hi
        if n_below_lo < k <= n_below_lo + inside.numel():
            lo_count, candidates = n_below_lo, inside
    t = torch.kthvalue(candidates, k - lo_count).values
    return t, lo_count + int((candidates < t).sum()), lo_count + int((candidates <= t).sum())


def smallest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Per-row mask of the ``count`` smallest scores, ties to the lower column (a stable argsort's
    choice), without sorting: the per-row ``count``-th smallest value t, everything below t, and
    of the entries equal to t the first ones by column."""
    c, n = scores.shape
    if count <= 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if count >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = torch.kthvalue(scores, count, dim=1, keepdim=True).values
    below = scores < threshold
    at = scores == threshold
    needed = count - below.sum(1, keepdim=True)
    return below | (at & (at.cumsum(1) <= needed))


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
def damped_factor(
    H: torch.Tensor,
    mean_diagonal: float,
    percdamp: float,
    H64: torch.Tensor,
    certify_psd: Optional[Callable[[], None]] = None,
):
    """Factor the damped H as H + lambda I = V V^T with V *upper* triangular, and U = V^-1, the upper
    Cholesky factor of the damped H^-1 (H^-1 = V^-T V^-1 = U^T U; U is upper with a positive
    diagonal, so by uniqueness it is that factor). H^-1 itself is never formed.

    V comes from the lower Cholesky factor of the reversed matrix: P H P = L L^T gives
    H = (P L P)(P L P)^T with P L P upper. The loads of ``spec.damping_schedule`` are tried in turn,
    and each is accepted or rejected by the reference's float64 test (``reference.prepare_hessian``),
    whatever the compute dtype: Cholesky of A = H64 + lambda I succeeds and A is not numerically
    singular, lambda_min(A) > ``spec.singular_ratio(b)`` lambda_max(A). That is decided cheaply
    where it can be:

    1. In the compute dtype: Cholesky and U; if U is finite and lambda_min(A) >= 1/||U||_F^2 clears
       ``singular_ratio`` lambda_max(A) <= ||A||_F with a margin of b eps(compute dtype) for the
       factorisation's own backward error, the load is accepted with this factor.
    2. Otherwise in float64 (H64: the prepared H in float64): Cholesky (a breakdown rejects the
       load), the same certificate with float64's margin, and only when that too is inconclusive
       float64 eigenvalues. An accepted load then uses the float64 factor, cast: a float32
       breakdown at a load float64 accepts no longer moves the damping up, so the damping and the
       warnings are the reference's in every compute dtype.

    certify_psd: called once, before the first rejected load (so before any warning), unless the
    first load's Cholesky in the compute dtype succeeded -- the caller passes it only when that
    success certifies H positive semi-definite up to rounding. Each rejected load warns
    (RuntimeWarning) and raises the load; after the last a ``torch.linalg.LinAlgError`` with
    ``spec.damping_error``. Returns (V, U, damping)."""
    b = H.shape[0]
    schedule = spec.damping_schedule(percdamp, mean_diagonal)
    damping = next(schedule)
    ratio = spec.singular_ratio(b)
    h_norm = _frobenius(H)
    flipped = H.flip(0, 1)
    flipped64 = None if H.dtype == torch.float64 else H64.flip(0, 1)
    first = True
    while True:
        V, U, verdict = _try_load(flipped, damping, ratio, h_norm)
        if first and certify_psd is not None and verdict == "breakdown":
            certify_psd()
        first = False
        if verdict == "undecided" or (verdict == "breakdown" and flipped64 is not None):
            V, U, verdict = _decide_in_float64(flipped64, H64, damping, ratio, h_norm, verdict, V, U)
            if verdict == "accept" and V.dtype != H.dtype:
                V, U = V.to(H.dtype), U.to(H.dtype)
        if verdict == "accept":
            return V, U, damping
        nxt = next(schedule, None)
        if nxt is None:
            raise torch.linalg.LinAlgError(spec.damping_error(damping))
        warnings.warn(spec.damping_warning(damping, nxt), RuntimeWarning, stacklevel=4)
        damping = nxt


def _try_load(flipped: torch.Tensor, damping: float, ratio: float, h_norm: float):
    """Cholesky and U at one load in ``flipped``'s dtype -> (V, U, verdict): "accept" (certified not
    numerically singular, with margin for this dtype's rounding), "undecided" or "breakdown"."""
    b = flipped.shape[0]
    eye = torch.eye(b, dtype=flipped.dtype, device=flipped.device)
    L, info = torch.linalg.cholesky_ex(flipped + damping * eye)
    if int(info) != 0:
        return None, None, "breakdown"
    V = L.flip(0, 1)
    U = upper_triangular_inverse(V)
    u_norm2 = _frobenius(U) ** 2
    if not math.isfinite(u_norm2):
        return V, U, "undecided"
    a_norm = h_norm + damping * math.sqrt(b)  # >= ||H + lambda I||_F >= lambda_max
    margin = ratio + b * torch.finfo(flipped.dtype).eps  # the factorisation's own backward error
    return V, U, "accept" if u_norm2 * a_norm * margin < 1.0 else "undecided"


def _decide_in_float64(flipped64, H64, damping, ratio, h_norm, verdict, V, U):
    """The reference's test at one load, in float64. ``flipped64`` is None when the compute dtype is
    float64 already (V, U and verdict are then that dtype's)."""
    if flipped64 is not None:
        V, U, verdict = _try_load(flipped64, damping, ratio, h_norm)
    if verdict == "breakdown":
        return None, None, "breakdown"
    if verdict == "accept":
        return V, U, verdict
    return V, U, "breakdown" if _numerically_singular(H64, damping, ratio) else "accept"


def _frobenius(A: torch.Tensor) -> float:
    """||A||_F as a Python float, in float64 only if the compute dtype overflows."""
    norm = float(torch.linalg.matrix_norm(A))
    return norm if math.isfinite(norm) else float(torch.linalg.matrix_norm(A.double()))


def _numerically_singular(H64: torch.Tensor, damping: float, ratio: float) -> bool:
    """The reference's test, in float64: lambda_min <= ratio * lambda_max of H64 + damping I."""
    lam = torch.linalg.eigvalsh(H64 + damping * torch.eye(H64.shape[0], dtype=torch.float64, device=H64.device))
    return not float(lam[0]) > ratio * float(lam[-1])


def certify_positive_semidefinite(H64: torch.Tensor, eps: float) -> None:
    """Refuse an H with an eigenvalue below ``-spec.psd_tolerance(b, eps) lambda_max`` (eps: that of
    H's dtype), as the reference does with eigenvalues, but cheaply: a float64 Cholesky of
    H + tau I, tau = tolerance x max(diag H) <= tolerance x lambda_max, that succeeds proves
    lambda_min > -tau (to float64 rounding, far below the tolerance); only when it breaks down are
    the float64 eigenvalues computed and ``spec.check_psd`` decides. H64: (b, b) float64."""
    b = H64.shape[0]
    tau = spec.psd_tolerance(b, eps) * float(H64.diagonal().max())
    shifted = H64 + tau * torch.eye(b, dtype=torch.float64, device=H64.device)
    if int(torch.linalg.cholesky_ex(shifted)[1]) == 0:
        return
    del shifted
    lam = torch.linalg.eigvalsh(H64)
    spec.check_psd(float(lam[0]), float(lam[-1]), b, eps)


def upper_triangular_inverse(V: torch.Tensor) -> torch.Tensor:
    """V^-1 for an upper triangular V, by 2x2 blocks: [[A, B], [0, C]]^-1 = [[A^-1, -A^-1 B C^-1],
    [0, C^-1]]; about b^3/3 GEMM flops instead of the b^3 of a triangular solve against I."""
    n = V.shape[0]
    if n <= 512:
        return torch.linalg.solve_triangular(V, torch.eye(n, dtype=V.dtype, device=V.device), upper=True)
    h = n // 2
    Ai = upper_triangular_inverse(V[:h, :h])
    Ci = upper_triangular_inverse(V[h:, h:])
    out = torch.zeros_like(V)
    out[:h, :h] = Ai
    out[h:, h:] = Ci
    out[:h, h:] = -((Ai @ V[:h, h:]) @ Ci)
    return out


# ------------------------------------------------------------------------------ batched solves
def spd_solve(A: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Solve A x = u for a batch of SPD A (k, s, s) and u (k, s): batched Cholesky and two batched
    triangular solves (never a batched LU solve: on the CPU build it hangs above ~150x150). If a
    float32 factorisation breaks down (a sub-block of an ill-conditioned inverse), the batch is
    redone in float64."""
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        if A.dtype == torch.float64:
            raise torch.linalg.LinAlgError("batched Cholesky of a trailing sub-block failed in float64")
        return spd_solve(A.double(), u.double()).to(A.dtype)
    y = torch.linalg.solve_triangular(L, u.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True).squeeze(-1)
