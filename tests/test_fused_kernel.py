"""The fused CPU kernels (``thanos._fused``, numba) against the torch path they replace.

The torch code in ``thanos.solver._solve_rows`` / ``thanos._kernels.global_residual_mask`` is the
fallback and the reference here; the float64 NumPy solve of each row's system is the exact answer.

- Per-block solve: the kernel and the torch path (with a budget that forces its chunking) each
  solve the same rows' systems ``T[q_k, q_k] x_k = w_k[q_k]``; every x_k must be within
  ``solve_tol(s_max, kappa, dtype)`` of the float64 solve (relative to max|x|; kappa: cond(T),
  which bounds every principal sub-block's by eigenvalue interlacing), and exactly 0 off the mask.
  Inputs reach the padding paths: c not a multiple of the 8 lanes, rows of every count from 0 to
  the full block width (s = B), in float32 and float64.
- Threshold: the kernel's r-th smallest trailing score gives the same mask as
  ``global_residual_mask`` on the materialised scores (both are exact selections of the same
  float values: bit-equal scores, so equality is the right test), with ties and at every rank edge.
- Whole layers: ``thanos.prune`` with the kernels and with the torch fallback give identical masks
  (float64: their weights differ by ~ n kappa eps64, far below any score gap, so no mask decision
  can flip) and weights within ``solve_tol(b, kappa, dtype)`` relative to max|W|. float32 weights
  differ by ~ n kappa eps32, which can flip a near-tie of the *next* block's global mask (a
  legitimate difference, STYLE.md): there the first block's mask (decided before any solve) must
  be equal and the counts exact, and the loss within the float32 solve tolerance. N:M masks are
  compared whole in float32 too: each decision is among the m scores of one row's group, whose
  gaps (~1/m of their spread, not 1/(c b)) are far above the ~n kappa eps32 the paths differ by.
- Reruns of the same kernel are bit-identical: the kernels are single-threaded loops in a fixed
  order (rows sorted stably by count, fixed lane groups, fixed summation order), compiled once per
  process, so nothing can reorder a sum between two calls.
- Without numba (or with ``THANOS_DISABLE_FUSED=1``) the torch path runs; tested with numba hidden.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import strategies as S
import thanos
import tolerances as T
from thanos import _fused, solver
from thanos import _kernels as K

needs_numba = pytest.mark.skipif(
    not _fused.available(), reason="numba is not installed (optional extra `fast`) or THANOS_DISABLE_FUSED is set"
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@pytest.fixture
def torch_path(monkeypatch):
    """Force the torch fallback (what runs without numba and on CUDA)."""
    monkeypatch.setattr(_fused, "numba", None)
    assert not _fused.available()


def _trailing_inverse_block(width: int, kappa: float, seed: int) -> np.ndarray:
    """T = (H_{j:, j:})^-1 [:B, :B] of an SPD H of condition kappa: the matrix whose principal
    sub-blocks the per-row systems are."""
    rng = np.random.default_rng(seed)
    H = S.spd_with_condition(width + 7, kappa, rng)
    return np.linalg.inv(H)[:width, :width]


def _block_mask(c: int, width: int, seed: int) -> np.ndarray:
    """Rows of every count 0..width (in a shuffled order), then random rows: groups of 8 lanes
    holding different counts, empty rows and full rows (s = B)."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate([np.arange(width + 1), rng.integers(0, width + 1, size=c - width - 1)])
    rng.shuffle(counts)
    mask = np.zeros((c, width), dtype=bool)
    for row, k in enumerate(counts):
        mask[row, rng.choice(width, size=k, replace=False)] = True
    return mask


def _exact_solutions(T_bb: np.ndarray, W_block: np.ndarray, mask: np.ndarray) -> np.ndarray:
    X = np.zeros(W_block.shape)
    for k in range(mask.shape[0]):
        q = np.flatnonzero(mask[k])
        if q.size:
            X[k, q] = np.linalg.solve(T_bb[np.ix_(q, q)], W_block[k, q])
    return X


# ------------------------------------------------------------------------------ per-block solve
@needs_numba
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("width", [5, 64, 128])
def test_fused_block_solve_matches_torch_path_and_exact(dtype, width):
    kappa_H = 100.0
    T64 = _trailing_inverse_block(width, kappa_H, seed=width)
    kappa = T.condition_number(T64)
    c = width + 1 + 43  # every count once, then random ones; not a multiple of 8
    mask = _block_mask(c, width, seed=width + 1)
    W64 = np.random.default_rng(width + 2).standard_normal((c, width + 9))
    j1 = 4  # the block is a strided view of a wider W, as in the solver
    tdtype = DTYPES[dtype]
    W = torch.tensor(W64, dtype=tdtype)
    W_block = W[:, j1 : j1 + width]
    T_bb = torch.tensor(T64, dtype=tdtype)
    block_mask = torch.tensor(mask)

    fused = solver._solve_rows(W_block, T_bb, block_mask, solver.DEFAULT_MAX_EXTRA_MEMORY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fused, "numba", None)
        fallback = solver._solve_rows(W_block, T_bb, block_mask, 1)  # budget 1: a chunk per row

    exact = _exact_solutions(T64, W_block.double().numpy(), mask)
    tol = T.solve_tol(width, kappa, dtype)
    scale = float(np.abs(exact).max())
    for name, X in (("fused kernel", fused), ("torch path", fallback)):
        assert X.dtype == tdtype and X.shape == (c, width)
        T.assert_close(X.double().numpy(), exact, tol=tol, scale=scale, kappa=kappa, dtype=dtype,
                       what=f"{name} vs float64 solve, {dtype}, B={width}")
        assert not X[~block_mask].any(), f"{name}: nonzero x off the mask"
    T.assert_close(fused.double().numpy(), fallback.double().numpy(), tol=2 * tol, scale=scale, kappa=kappa,
                   dtype=dtype, what=f"fused vs torch path, {dtype}, B={width}")


@needs_numba
def test_float32_breakdown_is_redone_in_float64():
    """A system whose float32 factorisation breaks down although its float32 numbers form a
    positive definite matrix is redone in float64, as ``K.spd_solve`` does.

    The leading 2 x 2 block [[3, 17], [17, c]], c = 96.333336 (the float32 just above 17^2/3), has
    determinant 3c - 289 = 7.6e-6 > 0, but in float32 L[1, 0] = 17 * fl(1/fl(sqrt 3)) rounds up to
    9.814955, and c - L[1, 0]^2 = -1.0e-6 (worked out exactly with fractions): the pivot is
    negative. The rest of T is 2 I. Rows pruning columns 0 and 1 break down; the others do not."""
    width, c = 24, 16
    T32 = np.zeros((width, width), dtype=np.float32)
    T32[:2, :2] = [[3.0, 17.0], [17.0, 96.333336]]
    T32[2:, 2:] = 2.0 * np.eye(width - 2)
    assert 3.0 * float(T32[1, 1]) - 17.0**2 > 0  # positive definite as exact numbers
    mask = np.ones((c, width), dtype=bool)
    mask[c // 2 :, :2] = False  # these rows keep columns 0 and 1
    W32 = np.random.default_rng(5).standard_normal((c, width)).astype(np.float32)
    failed = _fused.solve_block_rows(T32, W32, mask, np.zeros((c, width), np.float32))
    assert failed.tolist() == [True] * (c // 2) + [False] * (c // 2)
    X = solver._solve_rows(torch.tensor(W32), torch.tensor(T32), torch.tensor(mask), solver.DEFAULT_MAX_EXTRA_MEMORY)
    exact = _exact_solutions(T32.astype(np.float64), W32.astype(np.float64), mask)
    kappa = T.condition_number(T32)
    # a float64 solve of the float32 numbers, then one rounding to float32
    tol = T.solve_tol(width, kappa, "float64") + T.eps("float32")
    T.assert_close(X.double().numpy(), exact, tol=tol + T.solve_tol(width, 1.0, "float32"), scale=float(np.abs(exact).max()),
                   kappa=kappa, what="float32 rows, the broken-down ones redone in float64")
    T.assert_close(X.double().numpy()[failed], exact[failed], tol=tol, scale=float(np.abs(exact[failed]).max()), kappa=kappa,
                   what="rows redone in float64")


# ---------------------------------------------------------------------------------- threshold
@needs_numba
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("c, b, j1, levels", [
    (7, 13, 0, None), (7, 13, 9, 3),            # small: every score is a candidate
    (300, 600, 0, None), (300, 600, 200, None),  # > 2**16 scores: a strided sample and a bracket
    (256, 512, 0, None),                         # power-of-two shapes: the sample must visit every column
    (300, 600, 100, 5),                          # heavy ties: candidates overflow, and surplus ties
])
def test_fused_global_mask_equals_the_torch_mask(dtype, c, b, j1, levels):
    rng = np.random.default_rng(c + b + j1)
    W64 = rng.standard_normal((c, b)) if levels is None else rng.integers(-levels, levels + 1, size=(c, b)).astype(float)
    norms64 = rng.uniform(0.5, 2.0, size=b) if levels is None else np.ones(b)
    W, norms = torch.tensor(W64, dtype=DTYPES[dtype]), torch.tensor(norms64, dtype=DTYPES[dtype])
    total = c * (b - j1)
    width = min(5, b - j1)
    scores = W[:, j1:].abs() * norms[j1:]
    for r in sorted({1, 2, total // 3, total // 2, total - 1}):
        expected = K.global_residual_mask(scores, r, width)
        got = K.trailing_residual_mask(W, norms, j1, r, width)
        assert torch.equal(got, expected), f"r={r}: masks differ at {int((got != expected).sum())} entries"


@needs_numba
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_bracket_pass_counts_and_keeps_the_scores(dtype):
    rng = np.random.default_rng(2)
    W = torch.tensor(rng.standard_normal((50, 70)), dtype=DTYPES[dtype])
    norms = torch.tensor(rng.uniform(0.5, 2.0, size=70), dtype=DTYPES[dtype])
    j1 = 20
    scores = (W[:, j1:].abs() * norms[j1:]).reshape(-1)
    lo, hi = float(scores.quantile(0.3)), float(scores.quantile(0.6))
    inside = torch.empty(scores.numel() + 50, dtype=W.dtype)
    below, count, complete = _fused.bracket_scores(W.numpy(), norms.numpy(), j1, lo, hi, inside.numpy())
    in_bracket = scores[(scores >= lo) & (scores <= hi)]
    assert complete and below == int((scores < lo).sum()) and count == in_bracket.numel()
    assert torch.equal(inside[:count], in_bracket)  # the same values, in row-major order
    short = torch.empty(100, dtype=W.dtype)  # room for a few rows only: reports it ran out
    assert _fused.bracket_scores(W.numpy(), norms.numpy(), j1, lo, hi, short.numpy())[2] is False


# -------------------------------------------------------------------------------- whole layers
def _layer(c, b, kappa, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((c, b)), S.spd_with_condition(b, kappa, rng)


LAYER_CASES = [
    # b > 512 (the blocked triangular inverse), blocks of 128, rows of many counts per block
    (dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=128), (40, 640)),
    # 90 %: some rows prune a whole block (s = B)
    (dict(method="thanos", pattern="unstructured", sparsity=0.9, block_size=32), (21, 96)),
    (dict(method="thanos", pattern="2:4", block_size=64), (19, 192)),
    (dict(method="thanos", pattern="4:8", block_size=32, alpha=0.2), (23, 96)),  # outlier rows: Wr a copy
]


@needs_numba
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kwargs, shape", LAYER_CASES, ids=[f"{k['pattern']}-{k.get('sparsity', '')}-{s}" for k, s in LAYER_CASES])
def test_prune_with_kernels_matches_the_torch_path(dtype, kwargs, shape, monkeypatch):
    W64, H64 = _layer(*shape, kappa=1e3, seed=sum(shape))
    tdtype = DTYPES[dtype]
    W, H = torch.tensor(W64, dtype=tdtype), torch.tensor(H64, dtype=tdtype)
    fused = thanos.prune(W, H, compute_dtype=tdtype, **kwargs)
    monkeypatch.setattr(_fused, "numba", None)
    fallback = thanos.prune(W, H, compute_dtype=tdtype, max_extra_memory=4096, **kwargs)  # chunked torch path
    kappa = T.condition_number(H64 + fused.damping * np.eye(shape[1]))
    tol = T.solve_tol(shape[1], kappa, dtype)
    assert fused.sparsity == fallback.sparsity and int(fused.mask.sum()) == int(fallback.mask.sum())
    block = kwargs["block_size"]
    if dtype == "float64" or kwargs["pattern"] != "unstructured":
        assert torch.equal(fused.mask, fallback.mask), f"masks differ at {int((fused.mask != fallback.mask).sum())} entries"
        T.assert_close(fused.weight.double().numpy(), fallback.weight.double().numpy(), tol=2 * tol,
                       scale=float(np.abs(W64).max()), kappa=kappa, dtype=dtype, what=f"weights {kwargs} {dtype}")
    else:
        assert torch.equal(fused.mask[:, :block], fallback.mask[:, :block]), "first block's mask differs"
    T.assert_scalar_close(fused.loss, fallback.loss, tol=2 * tol, kappa=kappa, dtype=dtype, what=f"loss {kwargs} {dtype}")
    T.assert_exactly_zero(fused.weight.numpy(), fused.mask.numpy(), what="fused")


@needs_numba
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_reruns_of_the_kernels_are_bit_identical(dtype):
    W64, H64 = _layer(33, 160, kappa=1e4, seed=11)
    W, H = torch.tensor(W64, dtype=DTYPES[dtype]), torch.tensor(H64, dtype=DTYPES[dtype])
    for kwargs in (dict(method="thanos", pattern="unstructured", sparsity=0.6, block_size=32),
                   dict(method="thanos", pattern="2:4", block_size=32)):
        a = thanos.prune(W, H, compute_dtype=DTYPES[dtype], **kwargs)
        b = thanos.prune(W, H, compute_dtype=DTYPES[dtype], **kwargs)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask) and a.loss == b.loss


# ------------------------------------------------------------------------------------- fallback
def test_without_numba_the_torch_path_runs(torch_path, monkeypatch):
    """numba hidden: the kernels are never called and the result is the reference's."""
    import reference

    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel ran without numba")

    monkeypatch.setattr(_fused, "solve_block_rows", refuse)
    monkeypatch.setattr(_fused, "bracket_scores", refuse)
    W64, H64 = _layer(12, 48, kappa=100.0, seed=3)
    kwargs = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=16)
    prod = thanos.prune(torch.tensor(W64), torch.tensor(H64), compute_dtype=torch.float64, **kwargs)
    ref = reference.prune(W64, H64, **kwargs)
    assert np.array_equal(prod.mask.numpy(), ref.mask)
    kappa = T.condition_number(H64 + ref.damping * np.eye(48))
    T.assert_close(prod.weight.numpy(), ref.weight, tol=T.solve_tol(48, kappa), scale=float(np.abs(W64).max()), kappa=kappa,
                   what="torch path vs reference")


def test_environment_switch_disables_the_kernels(monkeypatch):
    monkeypatch.setenv("THANOS_DISABLE_FUSED", "1")
    assert not _fused.available()
