"""One registry pairing each production kernel with its reference function (PyTorch OpInfo's ``ref=``).

An entry carries the production callable, its reference, sample inputs and how the two are
compared; one generic test (``tests/test_registry.py``) iterates the registry per device and
dtype, and another checks that every public kernel of ``thanos._kernels`` has an entry, so a
kernel added without its reference is visible. The top-level pair ``thanos.prune`` /
``reference.prune`` is judged by the whole conformance catalogue (``compare="catalogue"``).

Sample inputs are NumPy float64 arrays (values already representable in the dtype under test);
``to_production`` turns them into the production call's arguments. Comparisons:

- ``"exact"``: discrete results (masks, indices) computed from the *same* input values by
  comparisons only, so equality is the point (no arithmetic on either side);
- ``"solve"``: ``solve_tol(n, kappa, dtype)`` relative to the reference result's max norm, kappa
  given by the entry for each sample;
- ``"rounding"``: ``rounding_tol(n, dtype)`` (sums of n products, no solve);
- ``"bound"``: production returns a certified lower bound on the reference's value: it may not
  exceed it by more than ``rounding_tol(n)`` of the matrix's max norm.

Importing this module imports neither torch nor Hypothesis (production callables are resolved by
name on use).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import scipy.linalg as sla

from reference import equations as eq
from reference.algorithms import prune as reference_prune

from . import tolerances as T


@dataclass(frozen=True)
class Sample:
    """One input of a kernel: reference arguments (NumPy), the size n and condition kappa its
    tolerance is written in."""

    args: tuple
    n: int = 1
    kappa: float = 1.0
    note: str = ""


@dataclass(frozen=True)
class KernelInfo:
    name: str
    production: str  # "module:attribute"
    ref: Callable
    samples: Callable  # (rng, dtype) -> Iterator[Sample]
    compare: str = "exact"  # "exact" | "solve" | "rounding" | "catalogue"
    to_production: Optional[Callable] = None  # (torch, sample args, dtype, device) -> production args
    from_production: Optional[Callable] = None  # production result -> NumPy (or a tuple of them)
    dtypes: tuple = ("float64", "float32")

    def production_callable(self) -> Callable:
        module, attr = self.production.split(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


# ------------------------------------------------------------------------------ reference functions
# The reference keeps these steps inline in ``reference.algorithms``; the registry names them.


def ref_smallest_columns(column_scores, s: int) -> np.ndarray:
    """Indices of the s lowest scores, ties to the lower index, sorted (``reference._no_update_mask``)."""
    return np.sort(np.argsort(np.asarray(column_scores, dtype=np.float64), kind="stable")[:s])


def ref_largest_rows(row_scores, k: int) -> np.ndarray:
    """Indices of the k highest scores, ties to the lower index, sorted (``reference._outlier_rows``)."""
    return np.sort(np.argsort(-np.asarray(row_scores, dtype=np.float64), kind="stable")[:k])


def ref_upper_triangular_inverse(V) -> np.ndarray:
    """V^-1 of an upper triangular V by a triangular solve against I."""
    V = np.asarray(V, dtype=np.float64)
    return sla.solve_triangular(V, np.eye(V.shape[0]), lower=False)


def ref_spd_solve(A, u) -> np.ndarray:
    """x_k = A_k^-1 u_k for a batch of SPD A (k, s, s), one Cholesky solve each."""
    return np.stack([sla.solve(a, v, assume_a="pos") for a, v in zip(np.asarray(A, dtype=np.float64), np.asarray(u, dtype=np.float64))])


def ref_solve_rows(W_block, T_bb, block_mask) -> np.ndarray:
    """Per row k: x_k = (T_bb[q_k, q_k])^-1 W_block[k, q_k] scattered to the row's pruned
    columns (the R_hat^-1 u of Eq. 10, one row at a time, no padding)."""
    W_block, T_bb = np.asarray(W_block, dtype=np.float64), np.asarray(T_bb, dtype=np.float64)
    X = np.zeros_like(W_block)
    for k, row in enumerate(np.asarray(block_mask, dtype=bool)):
        q = np.flatnonzero(row)
        if q.size:
            X[k, q] = sla.solve(T_bb[np.ix_(q, q)], W_block[k, q], assume_a="pos")
    return X


def ref_damped_factor(H, percdamp: float):
    """(U, damping): ``reference.prepare_hessian`` on a layer without dead columns."""
    from reference.algorithms import prepare_hessian

    H = np.asarray(H, dtype=np.float64)
    W = np.zeros((1, H.shape[0]))
    return prepare_hessian(W, H, percdamp)


def ref_streamed_hessian(batches) -> np.ndarray:
    """``reference.hessian`` of all tokens at once, divided by their number: (2/N) X X^T."""
    X = np.concatenate([np.asarray(x, dtype=np.float64) for x in batches], axis=0).T
    return eq.hessian(X) / X.shape[1]


# ------------------------------------------------------------------------------ samples


def _ties(rng, shape, dtype):
    """Scores with deliberate ties (few distinct values) and without (continuous)."""
    yield rng.integers(0, 4, size=shape).astype(np.float64)
    yield _round(rng.standard_normal(shape), dtype)


def _round(a, dtype):
    from .cases import round_to

    return round_to(a, dtype)


def _mask_samples(rng, dtype) -> Iterator[Sample]:
    for shape in ((1, 1), (3, 5), (4, 8), (7, 16)):
        for scores in _ties(rng, shape, dtype):
            for r in sorted({0, 1, scores.size // 2, scores.size - 1, scores.size}):
                yield Sample((scores, r))
    big = _round(rng.standard_normal((300, 300)), dtype)  # > 2**16 scores: the bracketed selection path
    yield Sample((big, 45000), note="bracketed")
    yield Sample((np.round(big * 4), 45000), note="bracketed, ties")


def _per_row_samples(rng, dtype) -> Iterator[Sample]:
    for shape in ((1, 4), (3, 5), (6, 16)):
        for scores in _ties(rng, shape, dtype):
            for count in sorted({0, 1, shape[1] // 2, shape[1]}):
                yield Sample((scores, count))


def _nm_samples(rng, dtype) -> Iterator[Sample]:
    for n, m in ((1, 2), (2, 4), (3, 4), (4, 8)):
        for scores in _ties(rng, (5, 2 * m), dtype):
            yield Sample((scores, n, m))


def _vector_samples(rng, dtype) -> Iterator[Sample]:
    for size in (1, 5, 16):
        for scores in _ties(rng, (size,), dtype):
            for k in sorted({0, 1, size // 2, size}):
                yield Sample((scores.reshape(-1), k))


def _spd(rng, n, kappa, dtype):
    from .strategies import spd_with_condition

    return _round(spd_with_condition(n, kappa, rng), dtype)


def _kappas(dtype):
    return (2.0, 1e3, 1e6) if dtype == "float64" else (2.0, 1e2)


def _factor_samples(rng, dtype) -> Iterator[Sample]:
    for n in (1, 4, 12):
        for kappa in _kappas(dtype):
            H = _spd(rng, n, kappa, dtype)
            yield Sample((H, 0.01), n=n, kappa=T.condition_number(H + 0.01 * np.mean(np.diag(H)) * np.eye(n)))


def _triangular_samples(rng, dtype) -> Iterator[Sample]:
    for n in (1, 5, 16, 600):  # 600: the 2x2-block recursion above 512
        for kappa in _kappas(dtype):
            if n == 600 and kappa > 1e3:
                continue
            H = _spd(rng, n, kappa, "float64")
            V = _round(np.linalg.cholesky(H).T, dtype)
            yield Sample((V,), n=n, kappa=T.condition_number(V))


def _spd_solve_samples(rng, dtype) -> Iterator[Sample]:
    for k, s in ((1, 1), (4, 3), (6, 8)):
        for kappa in _kappas(dtype):
            A = np.stack([_spd(rng, s, kappa, dtype) for _ in range(k)])
            u = _round(rng.standard_normal((k, s)), dtype)
            yield Sample((A, u), n=s, kappa=max(T.condition_number(a) for a in A))


def _solve_rows_samples(rng, dtype) -> Iterator[Sample]:
    for c, width in ((1, 3), (5, 6), (9, 8)):
        for kappa in _kappas(dtype):
            T_bb = _spd(rng, width, kappa, dtype)
            W = _round(rng.standard_normal((c, width)), dtype)
            mask = rng.random((c, width)) < 0.5  # rows with different counts: the padding path
            yield Sample((W, T_bb, mask), n=width, kappa=T.condition_number(T_bb))


def _hessian_samples(rng, dtype) -> Iterator[Sample]:
    for b, sizes in ((1, (3,)), (5, (2, 7, 1)), (12, (30, 4))):
        batches = [_round(rng.standard_normal((t, b)), dtype) for t in sizes]
        yield Sample((batches,), n=sum(sizes))


# ------------------------------------------------------------------------------ production adapters


def _tensors(torch, args, dtype, device):
    dt = getattr(torch, dtype)
    return tuple(torch.tensor(a, dtype=torch.bool if a.dtype == bool else dt, device=device) if isinstance(a, np.ndarray) else a
                 for a in args)


def _factor_call(torch, args, dtype, device):
    """damped_factor(H, H64, mean(diag H), percdamp, lambda_min_lower): no lower bound is claimed
    (-inf), so every load is decided by the float64 eigenvalue test, as the reference decides it."""
    H, percdamp = args
    Ht = torch.tensor(H, dtype=getattr(torch, dtype), device=device)
    mean_diagonal = float(np.mean(np.diag(H))) or 1.0
    return (Ht, torch.tensor(H, dtype=torch.float64, device=device), mean_diagonal, percdamp, -np.inf)


def ref_psd_lower_bound(H, shift: float, eps: float) -> float:
    """lambda_min(H) from float64 eigenvalues; H not PSD up to rounding raises as ``reference.prune``
    does (``spec.check_psd``). Production's answer is a *lower bound* on it (compare="bound")."""
    from reference import spec

    lam = np.linalg.eigvalsh(np.asarray(H, dtype=np.float64))
    spec.check_psd(float(lam[0]), float(lam[-1]), lam.size, eps)
    return float(lam[0])


def _psd_samples(rng, dtype) -> Iterator[Sample]:
    """H is float64 (the kernel's input); eps is that of the dtype H came in, float32 or float64."""
    for eps in (T.eps("float64"), T.eps("float32")):
        for n in (1, 4, 12):
            for kappa in (2.0, 1e3, 1e6):
                H = _spd(rng, n, kappa, "float64")
                for shift in (0.0, 1e-3 * float(np.max(np.diag(H)))):
                    yield Sample((H, shift, eps), n=n)
            X = rng.standard_normal((n, max(1, n // 2)))  # rank-deficient 2 X X^T: lambda_min ~ rounding
            yield Sample((2.0 * X @ X.T, 0.0, eps), n=n, note="rank-deficient")


def _psd_call(torch, args, dtype, device):
    H, shift, eps = args
    return (torch.tensor(H, dtype=torch.float64, device=device), shift, eps)


def ref_trailing_residual_mask(W, norms, j1: int, r: int, columns: int) -> np.ndarray:
    """``global_residual_mask`` of psi (Eq. 11) over the trailing columns j1.., kept to the block's
    first ``columns`` columns (Alg. 1 at a block start)."""
    W = np.asarray(W, dtype=np.float64)
    return eq.global_residual_mask(np.abs(W[:, j1:]) * np.asarray(norms, dtype=np.float64)[j1:], r)[:, :columns]


def _trailing_mask_samples(rng, dtype) -> Iterator[Sample]:
    # norms are powers of two and W is representable in dtype, so |W| * norms is exact in every
    # dtype: both sides compare the same score values (equality is the point)
    for c, b, j1, columns in ((3, 8, 0, 4), (5, 16, 4, 4), (300, 300, 44, 64)):  # 300 x 256 > 2**16: bracketed
        W = _round(rng.standard_normal((c, b)), dtype)
        norms = 2.0 ** rng.integers(-3, 4, size=b).astype(np.float64)
        total = c * (b - j1)
        for r in sorted({1, total // 2, total - 1}):
            yield Sample((W, norms, j1, r, columns))
        yield Sample((np.round(W * 2), norms, j1, total // 3, columns), note="ties")


def _factor_result(result):
    V, U, damping = result
    return U.double().cpu().numpy(), damping


def _solve_rows_call(torch, args, dtype, device):
    W, T_bb, mask = _tensors(torch, args, dtype, device)
    return (W, T_bb, mask, 2**20)


def _hessian_call(torch, args, dtype, device):
    (batches,) = args
    return ([torch.tensor(x, dtype=getattr(torch, dtype), device=device) for x in batches], dtype, device)


def streamed_hessian(batches, dtype, device):
    """Production's ``HessianAccumulator`` fed batch by batch, as a function (for the registry)."""
    import torch

    from thanos.hessian import HessianAccumulator

    acc = HessianAccumulator(batches[0].shape[1], device=device, dtype=torch.float64 if dtype == "float64" else torch.float32)
    for x in batches:
        acc.update(x)
    return acc.hessian


REGISTRY = (
    KernelInfo("global_residual_mask", "thanos._kernels:global_residual_mask", eq.global_residual_mask, _mask_samples),
    KernelInfo("smallest_per_row", "thanos._kernels:smallest_per_row", eq.smallest_per_row, _per_row_samples),
    KernelInfo("n_m_mask", "thanos._kernels:n_m_mask", eq.n_m_mask, _nm_samples),
    KernelInfo("smallest_columns", "thanos._kernels:smallest_columns", ref_smallest_columns, _vector_samples),
    KernelInfo("largest_rows", "thanos._kernels:largest_rows", ref_largest_rows, _vector_samples),
    KernelInfo("damped_factor", "thanos._kernels:damped_factor", ref_damped_factor, _factor_samples, compare="solve",
               to_production=_factor_call, from_production=_factor_result),
    KernelInfo("psd_lower_bound", "thanos._kernels:psd_lower_bound", ref_psd_lower_bound, _psd_samples, compare="bound",
               to_production=_psd_call, dtypes=("float64",)),
    KernelInfo("trailing_residual_mask", "thanos._kernels:trailing_residual_mask", ref_trailing_residual_mask,
               _trailing_mask_samples),
    KernelInfo("upper_triangular_inverse", "thanos._kernels:upper_triangular_inverse", ref_upper_triangular_inverse,
               _triangular_samples, compare="solve"),
    KernelInfo("spd_solve", "thanos._kernels:spd_solve", ref_spd_solve, _spd_solve_samples, compare="solve"),
    KernelInfo("solve_rows", "thanos.solver:_solve_rows", ref_solve_rows, _solve_rows_samples, compare="solve",
               to_production=_solve_rows_call),
    KernelInfo("streamed_hessian", "thanos.testing.registry:streamed_hessian", ref_streamed_hessian, _hessian_samples,
               compare="rounding", to_production=_hessian_call),
    KernelInfo("prune", "thanos.solver:prune", reference_prune, lambda rng, dtype: iter(()), compare="catalogue"),
)

__all__ = ["KernelInfo", "REGISTRY", "Sample", "ref_damped_factor", "ref_largest_rows", "ref_smallest_columns",
           "ref_psd_lower_bound", "ref_solve_rows", "ref_spd_solve", "ref_trailing_residual_mask", "ref_streamed_hessian", "ref_upper_triangular_inverse", "streamed_hessian"]
