"""Batched building blocks of ``thanos.solver``: masks with the reference's tie-breaking, the
factor ``U`` of the damped ``H^-1``, and batched SPD solves.

Every mask helper breaks ties exactly like ``np.argsort(kind="stable")`` in ``reference``: by
position (row-major for the layer-wide masks, by column inside a row or an N:M group).
"""

from __future__ import annotations

import math
import warnings

import torch

from reference import spec

from . import _fused


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
    threshold, n_below, n_at_most = _kth_smallest(flat, r, n)
    if n_at_most == r:  # no surplus ties at the threshold
        return scores[:, :columns] <= threshold
    mask = scores[:, :columns] < threshold
    ties = (flat == threshold).nonzero().squeeze(1)[: r - n_below]  # row-major = stable order
    ties = ties[(ties % n) < columns]
    mask[ties // n, ties % n] = True
    return mask


def trailing_residual_mask(W: torch.Tensor, norms: torch.Tensor, j1: int, r: int, columns: int) -> torch.Tensor:
    """``global_residual_mask`` of the psi scores ``|W[:, j1:]| * norms[j1:]`` (Eq. 11) of the
    current weights, restricted to the block's first ``columns`` columns (Alg. 1, App. G.4.1).

    On the CPU with the fused kernels (``thanos._fused``) the c x (b - j1) scores are never formed:
    the same strided sample as ``_kth_smallest`` brackets the r-th smallest score, one compiled
    pass counts the scores below the bracket and keeps those inside, and the r-th is selected among
    those; only the block's scores are formed for the mask. With surplus ties at the threshold
    (where the row-major order over the whole trailing matrix decides), a missed bracket, and
    everywhere else, the scores are formed and ``global_residual_mask`` decides."""
    c, b = W.shape
    n = b - j1
    total = c * n
    if W.device.type == "cpu" and _fused.available() and 0 < r < total and W.is_contiguous():
        norms = norms.contiguous()
        if total > 1 << 16:
            stride = _sample_stride(total, n)
            flat = torch.arange(0, total, stride)
            rows, cols = flat // n, j1 + flat % n
            lo, hi, in_sample = _bracket(torch.sort(W[rows, cols].abs() * norms[cols]).values, r, total)
            room = min(total, 8 * in_sample * stride + 1024) + n
        else:
            lo, hi, room = -math.inf, math.inf, total + n
        inside = torch.empty(room, dtype=W.dtype)
        n_below, n_inside, complete = _fused.bracket_scores(W.numpy(), norms.numpy(), j1, float(lo), float(hi), inside.numpy())
        if complete and n_below < r <= n_below + n_inside:
            candidates = inside[:n_inside]
            threshold = torch.kthvalue(candidates, r - n_below).values
            if n_below + int((candidates <= threshold).sum()) == r:  # no surplus ties: scores <= t
                return W[:, j1 : j1 + columns].abs() * norms[j1 : j1 + columns] <= threshold
    return global_residual_mask(W[:, j1:].abs() * norms[j1:], r, columns)


def _sample_stride(total: int, row_length: int, sample_size: int = 1 << 14) -> int:
    """Stride of a deterministic sample of about ``sample_size`` of ``total`` row-major scores, made
    coprime with the row length so that the sample visits every column: a stride sharing a factor
    with it (total // 2**14 is a power of two for power-of-two shapes) would sample a few columns
    only -- biased by their norms, the bracket then misses and the selection falls back to all."""
    stride = max(1, total // sample_size)
    while math.gcd(stride, row_length) != 1:
        stride += 1
    return stride


def _bracket(sample: torch.Tensor, k: int, total: int):
    """(lo, hi, sample points from lo to hi) around the k-th smallest of ``total`` values, from a
    sorted sample of them: ranks k/total * m -+ 4 binomial standard deviations (+ 4) of the sample."""
    m = sample.numel()
    centre = k / total * m
    slack = 4.0 * (m * (k / total) * (1 - k / total)) ** 0.5 + 4
    lo_rank, hi_rank = max(0, int(centre - slack)), min(m - 1, int(centre + slack))
    return sample[lo_rank], sample[hi_rank], hi_rank - lo_rank + 1


def _kth_smallest(flat: torch.Tensor, k: int, row_length: int = 1):
    """The k-th smallest value t (1-based) of a 1-D tensor (row-major, rows of ``row_length``),
    exactly, with #{< t} and #{<= t}."""
    total = flat.numel()
    lo_count, candidates = 0, flat
    if total > 1 << 16:
        stride = _sample_stride(total, row_length)
        lo, hi, _ = _bracket(torch.sort(flat[::stride]).values, k, total)
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
def psd_lower_bound(H64: torch.Tensor, shift: float, eps: float) -> float:
    """A certified lower bound on lambda_min(H64), and the refusal of an H that is not positive
    semi-definite up to rounding (``spec.check_psd``: lambda_min < -C b eps lambda_max, eps that of
    H's dtype), at the cost of one float64 Cholesky in the common case.

    A float64 Cholesky of H64 + shift I that succeeds proves lambda_min(H64) > -shift (to its own
    backward error, ~ b eps64 ||H||_F, subtracted); shift <= ``spec.psd_tolerance(b, eps) x
    max(diag H)`` <= tolerance x lambda_max, so H passes the check. Only when it breaks down are
    the float64 eigenvalues computed: ``spec.check_psd`` decides, exactly as the reference does,
    and lambda_min itself is returned. H64: (b, b) float64, the input H."""
    b = H64.shape[0]
    eye = torch.eye(b, dtype=torch.float64, device=H64.device)
    if int(torch.linalg.cholesky_ex(H64 + shift * eye)[1]) == 0:
        return -shift - b * 2.0**-52 * _frobenius(H64)
    lam = torch.linalg.eigvalsh(H64)
    spec.check_psd(float(lam[0]), float(lam[-1]), b, eps)
    return float(lam[0])


def damped_factor(H: torch.Tensor, H64: torch.Tensor, mean_diagonal: float, percdamp: float, lambda_min_lower: float):
    """Factor the damped H as H + lambda I = V V^T with V *upper* triangular, and U = V^-1, the upper
    Cholesky factor of the damped H^-1 (H^-1 = V^-T V^-1 = U^T U; U is upper with a positive
    diagonal, so by uniqueness it is that factor). H^-1 itself is never formed.

    V comes from the lower Cholesky factor of the reversed matrix: P H P = L L^T gives
    H = (P L P)(P L P)^T with P L P upper. The loads of ``spec.damping_schedule`` are tried in turn
    and each is accepted or rejected by the reference's float64 test, in every compute dtype: A =
    H64 + lambda I must not be numerically singular, lambda_min(A) > ``spec.singular_ratio(b)``
    lambda_max(A) (and its Cholesky must succeed). The test is decided without eigenvalues when
    ``lambda_min_lower`` (a certified lower bound on lambda_min(H64), from ``psd_lower_bound``)
    plus lambda clears it against lambda_max(A) <= ||H64||_F + lambda; otherwise by the float64
    eigenvalues of H64, computed once (a load near the scale of rounding: percdamp = 0 or tiny).

    At an accepted load the factor is computed in H's dtype (the compute dtype). When a float32
    factorisation breaks down there, or comes out non-finite or beyond float32's reach (a lower
    bound on kappa(A) above 0.01 / eps32: every later float32 solve would be noise, see
    ``_factor``), the layer is factored -- and then computed -- in float64 at the same load
    instead of stepping the damping up: the factor comes back in float64 and the caller switches
    dtype. (Casting the float64 factor to float32, as first proposed, leaves the float32 trailing
    solves to break down later on the same ill-conditioning.)
    Each rejected load warns (RuntimeWarning) and raises the load; after the last a
    ``torch.linalg.LinAlgError`` with ``spec.damping_error``. H64: the prepared H in float64.
    Returns (V, U, damping), V and U in H's dtype or in float64."""
    b = H.shape[0]
    schedule = spec.damping_schedule(percdamp, mean_diagonal)
    damping = next(schedule)
    ratio = spec.singular_ratio(b)
    lambda_max_upper = _frobenius(H64)
    eigenvalues = None
    while True:
        accepted = lambda_min_lower + damping > ratio * (lambda_max_upper + damping)
        if not accepted:
            if eigenvalues is None:
                eigenvalues = torch.linalg.eigvalsh(H64)
            accepted = float(eigenvalues[0]) + damping > ratio * (float(eigenvalues[-1]) + damping)
        if accepted:
            factors = _factor(H, damping)
            if factors is None and H.dtype != torch.float64:
                factors = _factor(H64, damping)
            if factors is not None:
                return (*factors, damping)
        nxt = next(schedule, None)
        if nxt is None:
            raise torch.linalg.LinAlgError(spec.damping_error(damping))
        warnings.warn(spec.damping_warning(damping, nxt), RuntimeWarning, stacklevel=6)  # the caller of thanos.prune
        damping = nxt


def _factor(H: torch.Tensor, damping: float):
    """(V, U) of H + damping I in H's dtype, or None when the factorisation breaks down, is not
    finite, or (below float64) is too ill-conditioned for the dtype: max_i A_ii max_j (A^-1)_jj, a
    lower bound on kappa(A) (A_ii <= lambda_max(A), (A^-1)_jj = ||U[:, j]||^2 <= ||A^-1||_2; it is at
    least kappa / b^2), above 0.01 / eps. (The diagonal of U alone, U_jj^2 <= (A^-1)_jj, can miss
    kappa by any factor: 4e4 for a damped rank-deficient H of kappa 1.6e12, b = 8, measured.)"""
    b = H.shape[0]
    L, info = torch.linalg.cholesky_ex((H + damping * torch.eye(b, dtype=H.dtype, device=H.device)).flip(0, 1))
    if int(info) != 0:
        return None
    V = L.flip(0, 1)
    U = upper_triangular_inverse(V)
    if not bool(torch.isfinite(U).all()):
        return None
    if H.dtype != torch.float64:
        kappa_lower = (float(H.diagonal().max()) + damping) * float((U.double() ** 2).sum(0).max())
        if kappa_lower * torch.finfo(H.dtype).eps > 0.01:
            return None
    return V, U


def _frobenius(A: torch.Tensor) -> float:
    """||A||_F as a Python float, in float64 only if the compute dtype overflows."""
    norm = float(torch.linalg.matrix_norm(A))
    return norm if math.isfinite(norm) else float(torch.linalg.matrix_norm(A.double()))


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
