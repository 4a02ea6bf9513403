"""``thanos.prune``: production Thanos (Alg. 1, 2, 8), SparseGPT, Wanda and magnitude on torch tensors.

The same signature, checks, counts and masks as ``reference.prune`` (the float64 oracle), built
for speed: one Cholesky factor ``U`` of the damped ``H^-1`` per layer (``H^-1 = U^T U``, U upper),
from which every block's trailing inverse rows come as ``T[block, :] = Ub^T Ur`` (Ub = U[block,
block], Ur = U[block, j:]); per block the rows' small SPD systems ``T[q_k, q_k] x_k = w_k[q_k]`` are
solved in batched Cholesky calls (rows sorted by their count, padded with identity, App. H Eq.
77-79), and the whole block's update is one GEMM ``W[:, j:] -= Xs (Ub^T Ur)``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Optional

import numpy as np
import torch

from reference import spec
from reference.spec import PruneResult

from . import _fused
from . import _kernels as K

DEFAULT_MAX_EXTRA_MEMORY = 256 * 2**20  # bytes of batched-solve temporaries per chunk of rows

# A chunk of rows solved in one batched call costs a fixed overhead (a dozen torch calls, ~0.2 ms
# here) worth about this many flops at the ~2 GFLOP/s small batched factorisations reach.
_CALL_OVERHEAD_FLOPS = 4e5


def prune(
    W: torch.Tensor,
    H: Optional[torch.Tensor],
    *,
    method: str,
    pattern: str,
    sparsity: Optional[float] = None,
    block_size: Optional[int] = None,
    alpha: Optional[float] = None,
    percdamp: float = 0.01,
    compute_dtype: Optional[torch.dtype] = None,
    allow_tf32: bool = False,
    max_extra_memory: Optional[int] = None,
    metric: str = "psi",
) -> PruneResult:
    """Prune one layer. W: (c, b) tensor (fp16/bf16/fp32/fp64, any device), H: (b, b) or None
    (magnitude only). Semantics of ``reference.prune``; returns ``reference.spec.PruneResult`` with a
    ``weight`` of W's dtype and device, a bool ``mask`` (True = pruned) and the layer ``loss`` with
    the undamped H.

    compute_dtype: None (default: torch.float64 for float64 weights, torch.float32 for fp16, bf16
    and fp32 weights), or torch.float32 / torch.float64 explicitly, whatever W's dtype. allow_tf32: let
    CUDA matmuls use TF32 (off by default; the global flags are restored afterwards).
    max_extra_memory: bytes of temporaries one batched solve may use (rows are chunked to fit).
    metric: the score Thanos' mask ranks weights by, unstructured and N:M (``reference.spec.METRICS``):
    'psi' = |W| ||X_j|| (the paper's, the default), 'magnitude' = |W|, 'sparsegpt' = SparseGPT's
    w^2 / [(H_{j:, j:})^-1]_00 of the damped H; the update and the counts are the same for all.
    Numbers may be Python, NumPy or 0-d array/tensor scalars (not bool). Dead columns (H_jj = 0)
    are pruned first and counted (a RuntimeWarning when they exceed a group's count); an H with an
    eigenvalue clearly below 0 raises ValueError (``spec.check_psd``); damping follows the
    reference's float64 rule in every compute dtype. The inputs are never modified."""
    return _prune(
        W, H, method=method, pattern=pattern, sparsity=sparsity, block_size=block_size, alpha=alpha,
        percdamp=percdamp, compute_dtype=compute_dtype, allow_tf32=allow_tf32,
        max_extra_memory=max_extra_memory, metric=metric,
    )


def _prune(
    W, H, *, method, pattern, sparsity, block_size, alpha, percdamp, compute_dtype, allow_tf32,
    max_extra_memory, metric="psi", explicit_trailing_inverse=False,
) -> PruneResult:
    """``prune`` with one benchmark-only switch: ``explicit_trailing_inverse`` recomputes
    ``torch.linalg.inv(H[j:, j:])`` after every block (what the paper's code does) instead of
    reading the trailing inverse off the one Cholesky factor."""
    if not isinstance(W, torch.Tensor):
        raise ValueError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if H is not None and not isinstance(H, torch.Tensor):
        raise ValueError(f"H must be a torch.Tensor or None, got {type(H).__name__}")
    spec.check_device("W", W.device.type)
    if H is not None:
        spec.check_device("H", H.device.type)
    opts = spec.check_arguments(
        tuple(W.shape), None if H is None else tuple(H.shape), method=method, pattern=pattern,
        sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp, metric=metric,
    )
    spec.check_floating("W", W.is_floating_point(), W.dtype)
    if compute_dtype is None:
        compute_dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    elif compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be None, torch.float32 or torch.float64, got {compute_dtype!r}")
    if max_extra_memory is None:
        max_extra_memory = DEFAULT_MAX_EXTRA_MEMORY
    elif spec.as_integer(max_extra_memory) is None or spec.as_integer(max_extra_memory) < 1:
        raise ValueError(f"max_extra_memory must be a positive number of bytes, got {max_extra_memory!r}")
    else:
        max_extra_memory = spec.as_integer(max_extra_memory)
    if not isinstance(allow_tf32, bool):
        raise ValueError(f"allow_tf32 must be a bool, got {allow_tf32!r}")
    spec.check_values("W", bool(torch.isfinite(W).all()))
    if H is not None:
        spec.check_floating("H", H.is_floating_point(), H.dtype)
        spec.check_values("H", bool(torch.isfinite(H).all()))
        Hd = H.detach()
        spec.check_hessian(
            float((Hd - Hd.mT).abs().max()), float(Hd.abs().max()), float(Hd.diagonal().min()),
            torch.finfo(H.dtype).eps,
        )

    with _tf32(allow_tf32), torch.no_grad():
        return _run(W, H, opts, compute_dtype, max_extra_memory, explicit_trailing_inverse)


@contextlib.contextmanager
def _tf32(allow: bool):
    """Set the CUDA TF32 switches for the call and restore them afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def _working_copies(W, H, dtype):
    """(Wk, W0, Hc, norms): the weights to prune and their original, H and ||X_j|| (from the
    undamped H), in the compute dtype on W's device; Hc and norms None without H."""
    Wk = W.detach().to(device=W.device, dtype=dtype, copy=True)
    if H is None:
        return Wk, Wk.clone(), None, None
    Hc = H.detach().to(device=W.device, dtype=dtype, copy=True)
    return Wk, Wk.clone(), Hc, torch.sqrt(Hc.diagonal().clamp(min=0) / 2)


def _run(W, H, opts: spec.Options, dtype, budget, explicit) -> PruneResult:
    device = W.device
    Wk, W0, Hc, norms = _working_copies(W, H, dtype)
    c, b = Wk.shape
    mask = torch.zeros((c, b), dtype=torch.bool, device=device)
    damping, outliers = None, torch.zeros(0, dtype=torch.long, device=device)
    dead = torch.zeros(b, dtype=torch.bool, device=device)
    if H is not None and opts.method != "magnitude":  # dead columns (H_jj = 0) are pruned first
        dead = H.detach().diagonal().to(device) == 0

    loss = None
    if opts.method in ("thanos", "sparsegpt"):
        structured = opts.method == "thanos" and opts.kind == "structured"
        V, U, Hdamped, damping = _prepare_hessian(Wk, H, Hc, dead, opts.percdamp, explicit)
        if U.dtype != dtype:  # float32 cannot factor the load float64 accepts: compute in float64
            Wk, W0, Hc, norms = _working_copies(W, H, U.dtype)
            Wk[:, dead] = 0.0  # as _prepare_hessian did to the float32 copy
        if opts.method == "sparsegpt":
            _sparsegpt(Wk, U, opts, mask, dead)
        else:
            if opts.alpha > 0:
                row_loss = ((Wk * norms) ** 2).sum(1)  # Eq. (14)
                outliers = K.largest_rows(row_loss, spec.outlier_row_count(opts.alpha, c))
                Wk[outliers] = W0[outliers]  # left untouched, dead columns included (exactly: below)
            keep = torch.ones(c, dtype=torch.bool, device=device)
            keep[outliers] = False
            rows = keep.nonzero().squeeze(1)
            if structured:
                loss = _thanos_structured(Wk, U, Hc, norms, rows, opts, mask, dead)
                if bool(dead.any()):  # the low-rank loss formula covers the update only
                    loss = None
            else:
                _thanos_blocks(Wk, U, Hdamped, _score_scale(opts.metric, norms, U), rows, opts, mask, budget, dead)
    else:
        mask = _no_update_mask(Wk, norms, opts, dead)
    Wk.masked_fill_(mask, 0.0)

    if Hc is not None and loss is None:
        D = Wk - W0
        loss = 0.5 * float(((D @ Hc) * D).sum(dtype=torch.float64))
    count = int(mask.sum())
    requested = spec.requested_count(opts, outliers.numel())
    if count > requested:
        warnings.warn(spec.dead_columns_warning(int(dead.sum()), requested, count, mask.numel()), RuntimeWarning, stacklevel=4)
    if opts.method == "thanos" and opts.kind == "structured":
        message = spec.structured_sparsity_warning(opts.sparsity, opts.alpha, c, b)
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
    weight = Wk.to(W.dtype)
    if outliers.numel():  # the input's own values, whatever the compute dtype rounded
        weight[outliers] = W.detach()[outliers]
    return PruneResult(weight, mask, loss, count / mask.numel(), damping, [int(i) for i in outliers.tolist()])


def _prepare_hessian(Wk, H, Hc, dead, percdamp, explicit):
    """Dead columns and damping, as ``reference.prepare_hessian``: H_jj = 0 -> H_jj = mean(diag H)
    (of the input H; 1 if every column is dead) and W[:, j] = 0; damping percdamp * mean(diag H).
    First H must be positive semi-definite up to rounding (``spec.check_psd``), certified by one
    float64 Cholesky of H + s I, s = min(PSD tolerance x max(diag H), first load / 2), which also
    lets ``damped_factor`` accept the first load without eigenvalues (``psd_lower_bound``).

    Returns (V, U, damped H or None, damping) with H + lambda I = V V^T (V upper) and U = V^-1 the
    upper Cholesky factor of the damped H^-1, in the compute dtype -- or in float64 when the
    compute dtype cannot factor the load the float64 test accepts (the caller then switches)."""
    diag64 = H.detach().diagonal().to(torch.float64)
    # mean(diag) exactly as the reference computes it (NumPy's pairwise float64 sum), so that the
    # damping recorded in the result is the same number
    mean_diagonal = float(np.mean(diag64.cpu().numpy())) or 1.0
    H64 = H.detach().to(device=Wk.device, dtype=torch.float64, copy=True)  # the input H, for now
    b = H64.shape[0]
    tolerance_shift = spec.psd_tolerance(b, torch.finfo(H.dtype).eps) * float(diag64.max())
    first_load = percdamp * mean_diagonal
    shift = min(tolerance_shift, first_load / 2) if first_load > 0 else tolerance_shift
    lambda_min_lower = K.psd_lower_bound(H64, shift, torch.finfo(H.dtype).eps)
    Hd = Hc.clone()
    if bool(dead.any()):  # a PSD change (a larger diagonal): the lower bound still holds
        Hd.diagonal()[dead] = mean_diagonal
        H64.diagonal()[dead] = mean_diagonal
        Wk[:, dead] = 0.0
    V, U, damping = K.damped_factor(Hd, H64, mean_diagonal, percdamp, lambda_min_lower)
    del H64
    Hdamped = None
    if explicit:
        Hdamped = Hd.to(U.dtype)
        Hdamped.diagonal().add_(damping)
    return V, U, Hdamped, damping


# ------------------------------------------------------------------------------------ Thanos
def _score_scale(metric: str, norms, U):
    """Thanos ranks ``|W_ij| * scale_j``; per ``spec.METRICS``: psi, ``scale = ||X_j||``; magnitude,
    ``scale = 1``; sparsegpt, ``scale = 1 / U_jj``, since ``U_jj^2 = [(H_{j:, j:})^-1]_00`` (U upper,
    ``H^-1 = U^T U``), so that ``(|W_ij| scale_j)^2`` is SparseGPT's ``w^2 / [H_F^-1]_jj``."""
    if metric == "psi":
        return norms
    if metric == "magnitude":
        return torch.ones_like(norms)
    return 1.0 / U.diagonal()


def _thanos_blocks(Wk, U, Hdamped, scale, rows, opts: spec.Options, mask, budget, dead):
    """Alg. 1 (unstructured, global residual mask over the current weights) and Alg. 8 (N:M),
    on the given rows of Wk, in place, ranking ``|W_ij| * scale_j`` (``_score_scale``: psi by
    default). Dead columns (already zero) are pruned first: their scores sit below every real
    score (>= 0), and their weights count toward the layer total / N:M group."""
    all_rows = rows.numel() == Wk.shape[0]
    Wr = Wk if all_rows else Wk[rows]
    c_active, b = Wr.shape
    Mr = torch.zeros((c_active, b), dtype=torch.bool, device=Wk.device)
    remaining = spec.unstructured_count(opts.sparsity, c_active * b)
    any_dead = bool(dead.any())
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        width = j2 - j1
        if opts.kind == "N:M":
            block_mask = K.n_m_mask((Wr[:, j1:j2].abs() * scale[j1:j2]).masked_fill_(dead[j1:j2], -1.0), opts.n, opts.m)
            block_mask |= dead[j1:j2]
        else:
            if remaining <= 0:  # only dead weights are left to prune; they are 0 already
                Mr[:, j1:] |= dead[j1:]
                break
            if any_dead:  # dead weights first: below every score, ahead of live weights that are 0
                scores = (Wr[:, j1:].abs() * scale[j1:]).masked_fill_(dead[j1:], -1.0)  # psi, Eq. (11), by default
                block_mask = K.global_residual_mask(scores, remaining, width)
                del scores
            else:  # the current weights' scores, never formed whole with the fused kernels
                block_mask = K.trailing_residual_mask(Wr, scale, j1, remaining, width)
            block_mask |= dead[j1:j2]
            remaining -= int(block_mask.sum())
        if Hdamped is not None:
            T_rows = torch.linalg.inv(Hdamped[j1:, j1:])[:width]  # benchmark-only variant
        else:  # (H_{j:, j:})^-1 [block, :] = Ub^T Ur, no inversion
            T_rows = U[j1:j2, j1:j2].mT @ U[j1:j2, j1:]
        Xs = _solve_rows(Wr[:, j1:j2], T_rows[:, :width], block_mask, budget)
        Wr[:, j1:].addmm_(Xs, T_rows, alpha=-1.0)  # Delta = -Xs T[block, :]: one GEMM
        del Xs, T_rows
        Wr[:, j1:j2].masked_fill_(block_mask, 0.0)
        Mr[:, j1:j2] = block_mask
    if all_rows:
        mask |= Mr
    else:
        Wk[rows] = Wr
        mask[rows] = Mr


def _solve_rows(W_block, T_bb, block_mask, budget):
    """Per row k, x_k = (T_bb[q_k, q_k])^-1 W_block[k, q_k], scattered into a (c, B) matrix.

    Rows are sorted by their count s_k and solved in batched chunks padded to the chunk's largest
    count with identity rows/columns in R_hat and zeros in u (App. H, Eq. 77-79), which leaves
    x = 0 on the padding. The padding comes out of the gather itself: R_hat is read from
    [[T_bb, 0], [0, I]], padded slot p pointing at index B + p. Chunks trade padding flops against
    per-call overhead and keep each chunk's temporaries under ``budget`` bytes."""
    if W_block.device.type == "cpu" and _fused.available():  # the fused CPU kernel; torch below: fallback, CUDA
        return _solve_rows_fused(W_block, T_bb, block_mask)
    c, width = W_block.shape
    Xs = torch.zeros_like(W_block)
    counts = block_mask.sum(1)
    order = torch.sort(counts, stable=True).indices
    values, multiplicity = torch.unique_consecutive(counts[order], return_counts=True)
    groups, start = [], 0
    for s, k in zip(values.tolist(), multiplicity.tolist()):
        if s > 0:
            groups.append((start, start + k, s))
        start += k
    if not groups:
        return Xs
    s_max = groups[-1][2]
    side = width + s_max
    T_ext = torch.zeros((side, side), dtype=T_bb.dtype, device=T_bb.device)
    T_ext[:width, :width] = T_bb
    T_ext[width:, width:].fill_diagonal_(1.0)
    T_ext = T_ext.reshape(-1)
    cols_all = torch.sort((~block_mask).to(torch.uint8), dim=1, stable=True).indices  # pruned first
    slots = torch.arange(s_max, device=W_block.device)
    itemsize = W_block.element_size()
    # int32 flat indices (side**2 < 2**31 for any block size below 46000) and index_select: both
    # measurably faster here than int64 advanced indexing for this (k, s, s) gather
    for lo, hi, s in _chunk_plan(groups, lambda s: s * s * (4 + 4 * itemsize) + 64 * s, budget):
        idx = order[lo:hi]
        cols = cols_all[idx, :s]
        valid = slots[:s] < counts[idx].unsqueeze(1)
        ext = torch.where(valid, cols, width + slots[:s]).to(torch.int32)
        flat = ((ext * side).unsqueeze(2) + ext.unsqueeze(1)).view(-1)
        R_hat = T_ext.index_select(0, flat).view(hi - lo, s, s)
        u = torch.gather(W_block[idx], 1, cols) * valid
        Xs[idx.unsqueeze(1), cols] = K.spd_solve(R_hat, u)
    return Xs


def _solve_rows_fused(W_block, T_bb, block_mask):
    """``_solve_rows`` by ``thanos._fused.solve_block_rows`` (rows in groups of 8 vector lanes, the
    gather, factorisation, both triangular solves and the scatter in one compiled pass; its
    temporaries, whatever the budget: one group's systems, 8 s (s + 1) numbers, and the rows'
    column lists, c x B indices). Rows whose float32 factorisation breaks down are redone in
    float64, as ``K.spd_solve`` does."""
    c, width = W_block.shape
    Wb = W_block.contiguous()
    mask = block_mask.contiguous().numpy()
    Xs = torch.zeros((c, width), dtype=W_block.dtype)
    failed = _fused.solve_block_rows(T_bb.contiguous().numpy(), Wb.numpy(), mask, Xs.numpy())
    if failed.any():
        if W_block.dtype == torch.float64:
            raise torch.linalg.LinAlgError("batched Cholesky of a trailing sub-block failed in float64")
        rows = torch.from_numpy(failed.nonzero()[0])
        X64 = torch.zeros((rows.numel(), width), dtype=torch.float64)
        again = _fused.solve_block_rows(T_bb.double().contiguous().numpy(), Wb[rows].double().numpy(),
                                        np.ascontiguousarray(mask[failed]), X64.numpy())
        if again.any():
            raise torch.linalg.LinAlgError("batched Cholesky of a trailing sub-block failed in float64")
        Xs[rows] = X64.to(Xs.dtype)
    return Xs


def _chunk_plan(groups, row_bytes, budget):
    """Merge runs of rows with equal counts (sorted ascending) into chunks (lo, hi, s): a merge is
    taken when padding the smaller systems to s costs fewer flops than one more call would."""

    def cost(rows, s):
        return rows * (s**3 / 3 + 2 * s * s) + _CALL_OVERHEAD_FLOPS

    chunks = []
    for lo, hi, s in groups:
        per_chunk = max(1, budget // row_bytes(s))
        if chunks:
            c_lo, c_hi, c_s = chunks[-1]
            merged_rows = hi - c_lo
            if merged_rows <= per_chunk and cost(merged_rows, s) <= cost(c_hi - c_lo, c_s) + cost(hi - lo, s):
                chunks[-1] = (c_lo, hi, s)
                continue
        for a in range(lo, hi, per_chunk):
            chunks.append((a, min(a + per_chunk, hi), s))
    return chunks


def _thanos_structured(Wk, U, Hc, norms, rows, opts: spec.Options, mask, dead):
    """Alg. 2: the s columns q of lowest column loss (Eq. 15, over the non-outlier rows) are removed
    from those rows with W <- W - W[:, q] ((H^-1)_qq)^-1 (H^-1)_{q,:} (sub-blocks of the inverse).

    (H^-1)_{q,:} = U[:, q]^T U is one GEMM; then one s x s Cholesky solve and one GEMM. Returns the
    layer loss of the change, from its low-rank form (no c x b x b product): with
    Xt = W[:, q] R_hat^-1 and res = the rounding left in the removed columns,
    D = -(Xt R + res E_q^T) and 1/2 tr(D H D^T) needs only R H (s x b)."""
    b = Wk.shape[1]
    s = spec.structured_column_count(opts.sparsity, opts.alpha, b)
    Wr = Wk[rows]
    q = K.smallest_columns(((Wr * norms) ** 2).sum(0).masked_fill_(dead, -1.0), s)
    q = torch.unique(torch.cat([q, dead.nonzero().squeeze(1)]))  # sorted; dead columns all go
    if q.numel() == 0:
        return 0.0
    R = U[:, q].mT @ U  # (s, b)
    R_hat = R[:, q]
    L, info = torch.linalg.cholesky_ex(R_hat)
    if int(info) == 0:
        X = torch.cholesky_solve(Wr[:, q].mT, L)  # (s, c_active)
    else:  # float32 rounding broke the sub-block's definiteness: redo it in float64
        X = torch.cholesky_solve(Wr[:, q].mT.double(), torch.linalg.cholesky(R_hat.double())).to(Wr.dtype)
    Wr.addmm_(X.mT, R, alpha=-1.0)
    res = Wr[:, q].clone()
    Wr[:, q] = 0.0
    Wk[rows] = Wr
    mask[rows.unsqueeze(1), q] = True
    RH = R @ Hc  # (s, b)
    Xt = X.mT
    f64 = torch.float64
    quadratic = ((Xt @ (RH @ R.mT)) * Xt).sum(dtype=f64)
    cross = ((Xt @ RH[:, q]) * res).sum(dtype=f64)
    residual = ((res @ Hc[q][:, q]) * res).sum(dtype=f64)
    return 0.5 * float(quadratic + 2 * cross + residual)


# --------------------------------------------------------------------------------- SparseGPT
def _sparsegpt(Wk, U, opts: spec.Options, mask, dead):
    """SparseGPT with lazy block updates: inside a block, column-by-column OBS with rank-1 updates
    of the (c, B) block; the rest of the layer receives one GEMM ``Err U[block, j2:]`` per block.
    Mask per block by w^2 / U_jj^2 (the count ``cumulative(j2)`` minus the weights pruned so far);
    N:M chosen at every i % m == 0; structured columns chosen once up front. Dead columns (zero
    already) are pruned first, in full, and count in their block or group."""
    c, b = Wk.shape
    d = U.diagonal()
    if opts.kind == "structured":
        s = spec.structured_column_count(opts.sparsity, 0.0, b)
        mask[:, K.smallest_columns(((Wk**2).sum(0) / d**2).masked_fill_(dead, -1.0), s)] = True
        mask[:, dead] = True
    pruned_so_far = 0
    for j1 in range(0, b, opts.block_size):
        j2 = min(j1 + opts.block_size, b)
        W1 = Wk[:, j1:j2].clone()
        M1 = mask[:, j1:j2]
        U1 = U[j1:j2, j1:j2]
        dead1 = dead[j1:j2]
        Err1 = torch.zeros_like(W1)
        if opts.kind == "unstructured":
            count = max(spec.cumulative_count(opts.sparsity, c, j2) - pruned_so_far, 0)
            M1.copy_(K.global_residual_mask((W1**2 / d[j1:j2] ** 2).masked_fill_(dead1, -1.0), count) | dead1)
            pruned_so_far += int(M1.sum())
        for i in range(j2 - j1):
            if opts.kind == "N:M" and i % opts.m == 0:
                group = slice(i, i + opts.m)
                scores = (W1[:, group] ** 2 / d[j1:j2][group] ** 2).masked_fill_(dead1[group], -1.0)
                M1[:, group] = K.smallest_per_row(scores, opts.n) | dead1[group]
            pruned = M1[:, i]
            err = torch.where(pruned, W1[:, i], 0.0) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            W1[:, i].masked_fill_(pruned, 0.0)
            Err1[:, i] = err
        Wk[:, j1:j2] = W1
        if j2 < b:
            Wk[:, j2:].addmm_(Err1, U[j1:j2, j2:], alpha=-1.0)


# ------------------------------------------------------------------------------ Wanda, magnitude
def _no_update_mask(Wk, norms, opts: spec.Options, dead):
    """Wanda (psi, per-row groups) and magnitude (|W|, per-layer): the mask only. Wanda's dead
    columns (``dead``; none for magnitude, which ignores H) are pruned first and in full."""
    c, b = Wk.shape
    if opts.method == "wanda":
        scores = Wk.abs() * norms
        column_scores = (scores**2).sum(0).masked_fill_(dead, -1.0)
        scores.masked_fill_(dead, -1.0)
    else:
        scores = Wk.abs()
        column_scores = (Wk**2).sum(0)
    if opts.kind == "N:M":
        mask = K.n_m_mask(scores, opts.n, opts.m)
    elif opts.kind == "structured":
        mask = torch.zeros((c, b), dtype=torch.bool, device=Wk.device)
        mask[:, K.smallest_columns(column_scores, spec.structured_column_count(opts.sparsity, 0.0, b))] = True
    elif opts.method == "wanda":
        mask = K.smallest_per_row(scores, spec.per_row_count(opts.sparsity, b))
    else:
        mask = K.global_residual_mask(scores, spec.unstructured_count(opts.sparsity, c * b))
    mask |= dead
    return mask
