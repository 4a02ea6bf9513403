"""High-precision oracles, test-matrix builders and the tolerance model shared by every check.

The oracle of every update is the KKT system of Eq. (6)-(9), solved by LU in mpmath at ``DPS``
digits on the *same* float64 inputs the reference sees (float64 numbers are exact in mpmath), so
the difference measured is the reference's own rounding error, not a change of problem.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np

from thanos.testing import tolerances as _tolerances

DPS = 60
EPS = float(np.finfo(np.float64).eps)

# Tolerance model: the one of the whole project, ``thanos.testing.tolerances`` (tests and
# ``thanos verify`` use it too). A backward-stable solve of an n x n system of 2-norm condition
# number kappa has forward relative error <= gamma_n * kappa, gamma_n = n eps / (1 - n eps)
# (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., Thm 7.2; Cholesky, Thm 10.4);
# the reference reaches its updates through a few such steps (H^-1 from a Cholesky of H, then a
# Cholesky solve with a sub-block of H^-1, no worse conditioned by Cauchy interlacing), and
# ``C_SOLVE`` (LAPACK dget04's 30) covers them with headroom; the derivation is written there.
# Plain sums and dot products of n terms are held to ``C_ROUNDING n eps`` relative to the sum of
# the absolute terms (Higham Eq. 3.5). A wrong formula misses by O(1), many orders of magnitude
# more than any of these bounds, so the bounds separate rounding from error.
SAFETY = _tolerances.C_SOLVE


def solve_tolerance(n: int, kappa: float) -> float:
    """Largest relative error accepted from a float64 solve of size n and condition kappa."""
    return _tolerances.solve_tol(n, kappa)


def sum_tolerance(n: int) -> float:
    """Largest relative error accepted from a float64 sum of n terms (relative to sum |terms|)."""
    return _tolerances.rounding_tol(n)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def spd_with_condition(gen: np.random.Generator, n: int, kappa: float) -> np.ndarray:
    """SPD H = Q diag(lambda) Q^T with lambda geometric from 1 to 1/kappa (LAPACK's construction)."""
    Q, _ = np.linalg.qr(gen.standard_normal((n, n)))
    lam = np.geomspace(1.0, 1.0 / kappa, n)
    H = (Q * lam) @ Q.T
    return (H + H.T) / 2.0


def correlated_tokens(gen: np.random.Generator, b: int, a: int, rho: float = 0.8) -> np.ndarray:
    """Calibration input X (b, a) with neighbouring features correlated (as in LLM activations)."""
    X = gen.standard_normal((b, a))
    for j in range(1, b):
        X[j] = rho * X[j - 1] + np.sqrt(1.0 - rho**2) * X[j]
    return X * gen.uniform(0.5, 2.0, size=(b, 1))


def condition(H: np.ndarray) -> float:
    return float(np.linalg.cond(H))


def to_mp(a) -> mp.matrix:
    a = np.atleast_2d(np.asarray(a, dtype=np.float64))
    return mp.matrix([[mp.mpf(float(x)) for x in row] for row in a])


def mp_to_np(m: mp.matrix) -> np.ndarray:
    return np.array([[float(m[i, j]) for j in range(m.cols)] for i in range(m.rows)])


def mp_norm(m: mp.matrix):
    return mp.sqrt(mp.fsum(x * x for x in m))


def rel_err(approx, exact: mp.matrix) -> float:
    """||approx - exact|| / ||exact|| (Frobenius), computed in mpmath; approx is float64."""
    with mp.workdps(DPS):
        A = to_mp(np.asarray(approx, dtype=np.float64).reshape(exact.rows, exact.cols))
        den = mp_norm(exact)
        num = mp_norm(A - exact)
        return float(num / den) if den != 0 else float(num)


def rel_err_scalar(approx: float, exact) -> float:
    with mp.workdps(DPS):
        return float(abs(mp.mpf(float(approx)) - exact) / abs(exact)) if exact != 0 else abs(float(approx))


def mp_kkt(w, H, q, frozen=()) -> tuple[mp.matrix, mp.mpf]:
    """Eq. (6)-(9) at DPS digits: min 1/2 Delta H Delta^T s.t. Delta_q = -w_q and Delta_f = 0 for f
    in ``frozen``. Solves [[H, E], [E^T, 0]] [Delta^T; mu] = [0; t] by LU. Returns (Delta as a
    1 x b mp row, loss)."""
    w = np.asarray(w, dtype=np.float64)
    q = [int(i) for i in q]
    frozen = [int(i) for i in frozen]
    b = len(w)
    cons = q + frozen
    m = len(cons)
    with mp.workdps(DPS):
        Hm = to_mp(H)
        K = mp.zeros(b + m, b + m)
        for i in range(b):
            for j in range(b):
                K[i, j] = Hm[i, j]
        for col, idx in enumerate(cons):
            K[idx, b + col] = 1
            K[b + col, idx] = 1
        rhs = mp.zeros(b + m, 1)
        for col, idx in enumerate(q):
            rhs[b + col] = -mp.mpf(float(w[idx]))
        sol = mp.lu_solve(K, rhs)
        delta = mp.matrix([[sol[i] for i in range(b)]])
        loss = (delta * Hm * delta.T)[0, 0] / 2
        return delta, loss


def mp_inverse(H) -> mp.matrix:
    with mp.workdps(DPS):
        return mp.inverse(to_mp(H))
