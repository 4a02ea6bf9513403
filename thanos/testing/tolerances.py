"""Every tolerance of the suite, written once with its derivation, and the helpers that apply them.

The unit is LAPACK's: a solve with condition number kappa in a dtype of machine epsilon eps
(``eps(d)``, the spacing of the dtype at 1) is judged by its error in units of ``n kappa eps``
(LAPACK's dget04 divides ``||x - x_hat|| / ||x_hat||`` by ``kappa eps`` and compares with 30).

Why ``C n kappa eps`` and why ``C = 30`` (``C_SOLVE``). Each step the reference takes (Cholesky of
H, the inverse from its factor, the Cholesky factor of H^-1, a solve with the s x s block R_hat,
a product with R) is backward stable with a backward error of at most ``gamma_{c n} ~ c n eps/2``
of the data, c <= 3 per step (Higham, *Accuracy and Stability*, Thm. 10.3/10.4 for Cholesky,
Sec. 14.3 for the inverse); four to five such steps compose to ``~ 6-8 n eps`` of backward error,
which a forward error multiplies by kappa (the principal blocks H_KK, H_{j:,j:} and
(H^-1)_{qq} are no worse conditioned than H, by eigenvalue interlacing). That gives
``C ~ 8``; measured on 3000 draws of n <= 16, kappa <= sqrt(0.1/eps) and scales 1e-20..1e20, the
worst ratio ``error / (n kappa eps)`` of every check in this suite was 1.3. We take LAPACK's
threshold 30: a check fails only when the error is ~4x the worst-case analysis and ~20x the worst
observed, and a real defect (a sign, a wrong block, a missing inverse) gives errors of order 1.

Norms: errors are normwise in the max norm, relative to the max norm of the exact answer (or of a
scale the caller names, for answers that are legitimately 0). This is one combined bound, like
``atol = tol * ||expected||`` with rtol = 0 -- never an rtol alone (STYLE.md: assert_close wants
both or neither), so entries that should be 0 are held to the same absolute accuracy.

Kappa: pass the 2-norm condition number of the matrix actually solved (``condition_number``),
not the one a strategy asked for (they agree to ``n kappa eps``, ``tests/test_strategies.py``).

No torch here: the low-precision differential helper takes NumPy arrays (call ``.double().cpu()
.numpy()`` on tensors first), so importing this module never initialises CUDA.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = [
    "C_SOLVE", "C_ROUNDING", "LOW_PRECISION_FACTOR", "LOW_PRECISION_FLOOR_ULPS", "eps",
    "condition_number", "solve_tol", "rounding_tol", "quadratic_form_scale", "max_error", "assert_close",
    "assert_scalar_close", "assert_small", "assert_exactly_zero",
    "assert_no_worse_than_reference",
]

#: Constant of the solve tolerance ``C n kappa eps`` (derivation in the module docstring).
C_SOLVE = 30.0

#: Constant of a pure rounding tolerance ``C n eps`` (no solve: sums of n products, e.g. a loss
#: evaluated two ways from the same Delta). A dot product of length n has a relative error at most
#: ``gamma_n ~ n eps/2`` times ``sum |x_i y_i| / |sum x_i y_i|``, which is 1 for the sums of
#: squares this is used on; two such evaluations compared against each other give ``n eps``; the
#: same factor 30 of headroom as ``C_SOLVE`` makes C = 30.
C_ROUNDING = 30.0

#: Low-precision differential tests (PyTorch test_ops, FlashAttention): production's distance to the
#: float64 answer may be at most this multiple of the same-dtype reference's distance. Both run
#: algorithms of the same backward-error bound in the same dtype, so neither should be more than
#: that bound away; their realised errors scatter below it by orders that depend on summation
#: order, and 2 (FlashAttention's factor) admits one of them sitting at the bound while the other
#: happens to land at half of it, but not a production solver that loses a whole factor of
#: accuracy (a float16 accumulation, a missing refinement step, TF32 on by accident).
LOW_PRECISION_FACTOR = 2.0

#: ... plus a floor of this many ulps of the answer's max norm, for when the same-dtype reference
#: happens to be exact (its distance 0): rounding the float64 answer to the dtype costs 1/2 ulp,
#: and a production that computes in float32 and rounds once at the end may round the other way
#: (1 ulp); 2 ulps leaves one more rounding of slack, and is far below any real defect.
LOW_PRECISION_FLOOR_ULPS = 2.0

_EPS_BY_NAME = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}


def eps(dtype="float64") -> float:
    """Machine epsilon (spacing at 1) of a dtype: a NumPy dtype, a name such as ``"bfloat16"`` or
    ``"torch.float32"``, or anything whose ``str`` ends with one of those names."""
    try:
        return float(np.finfo(np.dtype(dtype)).eps)
    except TypeError:
        pass
    name = str(dtype).rsplit(".", 1)[-1]
    if name not in _EPS_BY_NAME:
        raise ValueError(f"unknown floating dtype {dtype!r}")
    return _EPS_BY_NAME[name]


def condition_number(A) -> float:
    """2-norm condition number ``||A|| ||A^-1||`` of a square matrix (inf when singular)."""
    A = np.asarray(A, dtype=np.float64)
    if A.size == 0:
        return 1.0
    with np.errstate(all="ignore"):
        k = float(np.linalg.cond(A))
    return k if math.isfinite(k) else math.inf


def solve_tol(n: int, kappa: float, dtype="float64", C: float = C_SOLVE) -> float:
    """Relative tolerance of a solve of condition kappa in dtype: ``C n kappa eps(dtype)``."""
    return C * max(int(n), 1) * max(float(kappa), 1.0) * eps(dtype)


def rounding_tol(n: int, dtype="float64", C: float = C_ROUNDING) -> float:
    """Relative tolerance of an evaluation without a solve (sums of n terms): ``C n eps(dtype)``."""
    return C * max(int(n), 1) * eps(dtype)


def quadratic_form_scale(D, H) -> float:
    """``sum_k 1/2 |D_k| |H| |D_k|^T``: the yardstick of the rounding error of a loss
    ``sum_k 1/2 D_k H D_k^T``. A sum of n products is exact to ``gamma_n sum |terms|`` (Higham
    Sec. 3.1), and an *optimal* D makes the loss itself far smaller than the sum of its absolute
    terms (the update cancels the pruned weights' contribution), so a loss comparison is held to
    ``rounding_tol(n) * quadratic_form_scale(D, H)`` rather than to the loss."""
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    A = np.abs(D)
    return 0.5 * float(np.sum((A @ np.abs(np.asarray(H, dtype=np.float64))) * A))


def max_error(actual, expected):
    """(max |actual - expected|, its index as a tuple) -- the worst element."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape} vs expected {e.shape}")
    if a.size == 0:
        return 0.0, ()
    diff = np.abs(a - e)
    diff = np.where(np.isnan(diff), np.inf, diff)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return float(diff[idx]), tuple(int(i) for i in idx)


def _context(kappa, dtype, tol) -> str:
    k = "n/a" if kappa is None else f"{kappa:.3g}"
    return f"kappa={k}, eps={eps(dtype):.3g} ({dtype}), tol={tol:.3g}"


def assert_close(actual, expected, *, tol: float, what: str, kappa: Optional[float] = None, dtype="float64", scale: Optional[float] = None) -> None:
    """``max |actual - expected| <= tol * S`` with ``S = max(max|expected|, scale)``.

    tol: from ``solve_tol`` / ``rounding_tol``; scale: the size of the problem when the expected
    answer may be (near) zero, e.g. ``max|w|`` for an update Delta. The message names the worst
    element, its index, both values, kappa and eps."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    err, idx = max_error(a, e)
    S = max(float(np.max(np.abs(e))) if e.size else 0.0, 0.0 if scale is None else float(scale))
    bound = tol * S
    if not err <= bound:
        raise AssertionError(
            f"{what}: max error {err:.3g} at index {idx} (actual {a[idx]!r}, expected {e[idx]!r}) "
            f"exceeds {bound:.3g} = tol * {S:.3g}; relative {err / S if S else math.inf:.3g}; {_context(kappa, dtype, tol)}"
        )


def assert_scalar_close(actual: float, expected: float, *, tol: float, what: str, kappa: Optional[float] = None, dtype="float64", scale: Optional[float] = None) -> None:
    """``|actual - expected| <= tol * max(|expected|, scale)``, with an informative message."""
    S = max(abs(float(expected)), 0.0 if scale is None else float(scale))
    err = abs(float(actual) - float(expected))
    if not err <= tol * S:
        raise AssertionError(
            f"{what}: {actual!r} vs expected {expected!r}: error {err:.3g} exceeds {tol * S:.3g} = tol * {S:.3g}; "
            f"{_context(kappa, dtype, tol)}"
        )


def assert_small(residual, *, tol: float, scale: float, what: str, kappa: Optional[float] = None, dtype="float64") -> None:
    """A residual that should vanish: ``max |residual| <= tol * scale`` (scale: the size the residual
    is measured against, e.g. the Lagrange multipliers for a gradient). Names the worst element."""
    r = np.asarray(residual, dtype=np.float64)
    if r.size == 0:
        return
    err, idx = max_error(r, np.zeros_like(r))
    if not err <= tol * scale:
        raise AssertionError(
            f"{what}: residual {r[idx]!r} at index {idx} exceeds {tol * scale:.3g} = tol * {scale:.3g}; "
            f"{_context(kappa, dtype, tol)}"
        )


def assert_exactly_zero(W, mask, *, what: str) -> None:
    """Every entry of W where mask is True is exactly 0.0 (pruned means zero, not 'small')."""
    W = np.asarray(W)
    mask = np.asarray(mask, dtype=bool)
    bad = np.argwhere(mask & (W != 0))
    if bad.size:
        i = tuple(int(v) for v in bad[0])
        raise AssertionError(f"{what}: {len(bad)} pruned entries are not exactly 0, first at {i}: {W[i]!r}")


def assert_no_worse_than_reference(
    actual,
    reference,
    exact,
    *,
    dtype,
    what: str,
    factor: float = LOW_PRECISION_FACTOR,
    floor_ulps: float = LOW_PRECISION_FLOOR_ULPS,
) -> None:
    """Low-precision differential check (PyTorch test_ops style), NumPy arrays in (any float dtype).

    actual: production's answer in ``dtype``; reference: the float64 reference's algorithm run on
    the same inputs rounded to ``dtype`` (or the reference's answer rounded to ``dtype``); exact: the
    float64 answer. Passes when ``max|actual - exact| <= factor * max|reference - exact| + floor``,
    ``floor = floor_ulps * eps(dtype) * max|exact|``. The message gives both distances and the
    worst element of ``actual``."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    e = np.asarray(exact, dtype=np.float64)
    err_actual, idx = max_error(a, e)
    err_reference, _ = max_error(r, e)
    floor = floor_ulps * eps(dtype) * (float(np.max(np.abs(e))) if e.size else 0.0)
    bound = factor * err_reference + floor
    if not err_actual <= bound:
        raise AssertionError(
            f"{what}: production is {err_actual:.3g} from the float64 answer (worst at {idx}: {a[idx]!r} vs {e[idx]!r}), "
            f"more than {factor} x the same-dtype reference's {err_reference:.3g} + floor {floor:.3g} "
            f"(eps={eps(dtype):.3g}, {dtype})"
        )
