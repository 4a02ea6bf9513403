"""Optional compiled CPU kernels for the per-block work of ``thanos.solver`` (numba, extra ``fast``).

``solve_block_rows`` is the per-block step of Thanos fused into one pass: for each row k it gathers
``R_hat_k = T[q_k, q_k]`` and ``u_k = W[k, q_k]`` (q_k: the row's pruned columns of the block,
ascending), factors ``R_hat_k = L L^T``, solves ``L L^T x = u`` and scatters ``x`` into ``Xs[k, q_k]``.
Rows are sorted by their count s_k (stable) and taken in groups of ``LANES``; a group's systems are
stored interleaved, element (i, j) of lane l at ``(i * ld + j) * LANES + l`` (s: the group's largest
count; ld: s rounded up to an odd number, so that rows are not a power of two bytes apart and do
not evict each other from the cache; the smaller systems padded with identity rows and zero
right-hand sides, App. H Eq. 77-79, which leaves x = 0 on the padding), so that every step of the
factorisation and of both triangular solves is one ``LANES``-wide vector operation across the group.

``bracket_scores`` is the one pass over the trailing psi scores ``|W[i, j]| * norms[j]``, j >= j1,
that the global residual mask needs per block (count those below a bracket, keep those inside),
without forming the c x (b - j1) scores; ``thanos._kernels.trailing_residual_mask`` does the rest.

Both are plain loops in a fixed order, single-threaded: the same inputs give the same bits on
every run of the same compiled code. The torch code in ``thanos.solver`` / ``thanos._kernels`` is
the fallback (numba absent, CUDA tensors) and the reference the kernels are tested against
(``tests/test_fused_kernel.py``).

Vectorisation: the lane loops are written as 8-tuples (SSA values, no stores in the inner loops),
which LLVM's SLP vectoriser turns into 8-wide vector arithmetic. numba leaves SLP off unless
``NUMBA_SLP_VECTORIZE`` is set, so it is switched on (``numba.config.SLP_VECTORIZE``) while these
kernels compile and restored right after; the compiled code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

try:  # the optional extra ``fast``
    import numba
except ImportError:  # pragma: no cover - exercised by the fallback test with numba hidden
    numba = None

LANES = 8
_DISABLE_ENV = "THANOS_DISABLE_FUSED"  # set to 1 to force the torch path (debugging, benchmarks)


def available() -> bool:
    """True when numba is importable and the fused kernels are not disabled by the environment."""
    return numba is not None and os.environ.get(_DISABLE_ENV, "") in ("", "0")


_compile_lock = threading.Lock()
_ready: set = set()


@contextlib.contextmanager
def _slp_vectorize():
    """Turn on LLVM's SLP vectoriser for the kernels compiled (or loaded) inside the block."""
    before = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = before


def _call(kernel, key, *args):
    """Run a kernel; its first call per dtype (which compiles or loads the cache) under SLP."""
    if key in _ready:
        return kernel(*args)
    with _compile_lock, _slp_vectorize():
        out = kernel(*args)
        _ready.add(key)
    return out


# --------------------------------------------------------------------------------- the kernels
if numba is not None:
    _U = np.uint64  # unsigned indices: numba emits no negative-index wraparound selects for them,
    # which would stop LLVM from vectorising the 8 consecutive loads of a lane tuple
    _L = _U(LANES)
    _J = dict(cache=True, nogil=True, boundscheck=False, fastmath={"contract"})

    @numba.njit(**_J)
    def _load(A, p):
        return (A[p], A[p + _U(1)], A[p + _U(2)], A[p + _U(3)], A[p + _U(4)], A[p + _U(5)], A[p + _U(6)], A[p + _U(7)])

    @numba.njit(**_J)
    def _minus_product(a, A, p, B, q):
        """a - A[p:p+8] * B[q:q+8], lane by lane."""
        return (a[0] - A[p] * B[q], a[1] - A[p + _U(1)] * B[q + _U(1)], a[2] - A[p + _U(2)] * B[q + _U(2)],
                a[3] - A[p + _U(3)] * B[q + _U(3)], a[4] - A[p + _U(4)] * B[q + _U(4)],
                a[5] - A[p + _U(5)] * B[q + _U(5)], a[6] - A[p + _U(6)] * B[q + _U(6)],
                a[7] - A[p + _U(7)] * B[q + _U(7)])

    @numba.njit(**_J)
    def _add(a, b):
        return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], a[5] + b[5], a[6] + b[6], a[7] + b[7])

    @numba.njit(**_J)
    def _zeros_like(a):
        z = a[0] - a[0]
        return (z, z, z, z, z, z, z, z)

    @numba.njit(**_J)
    def _dot_down(a, A, p, stride_p, B, q, stride_q, count):
        """a - sum_{t < count} A[p + t*stride_p : +8] * B[q + t*stride_q : +8], lane by lane, as two
        interleaved partial sums (two independent FMA chains), added once at the end."""
        even = a
        odd = _zeros_like(a)
        t = 0
        while t + 1 < count:
            even = _minus_product(even, A, p, B, q)
            odd = _minus_product(odd, A, p + stride_p, B, q + stride_q)
            p += stride_p + stride_p
            q += stride_q + stride_q
            t += 2
        if t < count:
            even = _minus_product(even, A, p, B, q)
        return _add(even, odd)

    @numba.njit(**_J)
    def _dot_down_pair(a, b, A, p, q, r, count):
        """(a - sum_t A[p+8t : +8] * A[q+8t : +8], b - sum_t A[p+8t : +8] * A[r+8t : +8]) over t < count:
        two dot products sharing the row at p, each as two interleaved partial sums (four
        independent FMA chains), added once at the end."""
        a_odd = _zeros_like(a)
        b_odd = _zeros_like(b)
        t = 0
        while t + 1 < count:
            a = _minus_product(a, A, p, A, q)
            b = _minus_product(b, A, p, A, r)
            a_odd = _minus_product(a_odd, A, p + _L, A, q + _L)
            b_odd = _minus_product(b_odd, A, p + _L, A, r + _L)
            p += _L + _L
            q += _L + _L
            r += _L + _L
            t += 2
        if t < count:
            a = _minus_product(a, A, p, A, q)
            b = _minus_product(b, A, p, A, r)
        return _add(a, a_odd), _add(b, b_odd)

    @numba.njit(**_J)
    def _store(A, p, a):
        A[p] = a[0]
        A[p + _U(1)] = a[1]
        A[p + _U(2)] = a[2]
        A[p + _U(3)] = a[3]
        A[p + _U(4)] = a[4]
        A[p + _U(5)] = a[5]
        A[p + _U(6)] = a[6]
        A[p + _U(7)] = a[7]

    @numba.njit(**_J)
    def _times(a, D, p):
        """a * D[p:p+8], lane by lane."""
        return (a[0] * D[p], a[1] * D[p + _U(1)], a[2] * D[p + _U(2)], a[3] * D[p + _U(3)], a[4] * D[p + _U(4)],
                a[5] * D[p + _U(5)], a[6] * D[p + _U(6)], a[7] * D[p + _U(7)])

    @numba.njit(**_J)
    def _all_positive(a):
        return (a[0] > 0) & (a[1] > 0) & (a[2] > 0) & (a[3] > 0) & (a[4] > 0) & (a[5] > 0) & (a[6] > 0) & (a[7] > 0)

    @numba.njit(**_J)
    def _reciprocal_sqrt(a):
        one = a[0] - a[0] + 1
        return (one / np.sqrt(a[0]), one / np.sqrt(a[1]), one / np.sqrt(a[2]), one / np.sqrt(a[3]),
                one / np.sqrt(a[4]), one / np.sqrt(a[5]), one / np.sqrt(a[6]), one / np.sqrt(a[7]))

    @numba.njit(**_J)
    def _factor_and_solve(A, D, y, s, ld):
        """In place: the lower Cholesky factor L of the LANES interleaved s x s systems in A
        (row-wise Crout: L[i, j] from the dot product of rows i and j, j < i, two j at a time), with the reciprocals
        of its diagonal in D (s x LANES) instead of the diagonal itself (as LAPACK's potf2 scales by
        1 / L[j, j]); then y <- A^-1 y by forward and back substitution. Returns False, leaving the
        rest undone, when a pivot is not positive (or is NaN) in any lane."""
        row = _U(ld) * _L  # row i of the systems starts at i * ld * LANES
        for i in range(s):
            ib = _U(i) * row
            j = 0
            while j + 1 < i:  # L[i, j] and L[i, j + 1] together: their common terms k < j share row i's loads
                ij = ib + _U(j) * _L
                jb = _U(j) * row
                a, b = _dot_down_pair(_load(A, ij), _load(A, ij + _L), A, ib, jb, jb + row, j)
                lij = _times(a, D, _U(j) * _L)
                _store(A, ij, lij)
                b = _minus_product(b, A, ij, A, jb + row + _U(j) * _L)  # the k = j term: L[i, j] L[j + 1, j]
                _store(A, ij + _L, _times(b, D, _U(j + 1) * _L))
                j += 2
            if j < i:
                ij = ib + _U(j) * _L
                a = _dot_down(_load(A, ij), A, ib, _L, A, _U(j) * row, _L, j)
                _store(A, ij, _times(a, D, _U(j) * _L))
            ii = ib + _U(i) * _L
            a = _dot_down(_load(A, ii), A, ib, _L, A, ib, _L, i)
            if not _all_positive(a):
                return False
            _store(D, _U(i) * _L, _reciprocal_sqrt(a))
        for i in range(s):  # forward: L z = y
            ib = _U(i) * row
            iy = _U(i) * _L
            a = _dot_down(_load(y, iy), A, ib, _L, y, _U(0), _L, i)
            _store(y, iy, _times(a, D, iy))
        for i in range(s - 1, -1, -1):  # back: L^T x = z, column i of L read downwards
            iy = _U(i) * _L
            below = _U(i + 1)
            a = _dot_down(_load(y, iy), A, below * row + iy, row, y, below * _L, _L, s - 1 - i)
            _store(y, iy, _times(a, D, iy))
        return True

    @numba.njit(**_J)
    def _solve_block_rows(T, W, mask, Xs, failed):
        c, width = mask.shape
        counts = np.zeros(c, np.int64)
        cols = np.empty((c, width), np.int64)
        for r in range(c):
            n = 0
            for j in range(width):
                if mask[r, j]:
                    cols[r, n] = j
                    n += 1
            counts[r] = n
        # rows by count, ties in row order (a stable counting sort)
        starts = np.zeros(width + 2, np.int64)
        for r in range(c):
            starts[counts[r] + 1] += 1
        for k in range(width + 1):
            starts[k + 1] += starts[k]
        order = np.empty(c, np.int64)
        for r in range(c):
            order[starts[counts[r]]] = r
            starts[counts[r]] += 1
        first = 0
        while first < c and counts[order[first]] == 0:
            first += 1
        s_max = counts[order[c - 1]] if c > 0 else 0
        A = np.empty(s_max * (s_max + 1) * LANES, T.dtype)
        y = np.empty(s_max * LANES, T.dtype)
        D = np.empty(s_max * LANES, T.dtype)
        rows = np.empty(LANES, np.int64)
        row_counts = np.zeros(LANES, np.int64)
        for g0 in range(first, c, LANES):
            g1 = min(g0 + LANES, c)
            s = counts[order[g1 - 1]]
            ld = s + 1 - s % 2  # odd row length: rows 2^k bytes apart would share cache sets
            for lane in range(LANES):
                if g0 + lane < g1:
                    rows[lane] = order[g0 + lane]
                    row_counts[lane] = counts[rows[lane]]
                else:
                    rows[lane] = -1
                    row_counts[lane] = 0
            for lane in range(LANES):  # gather R_hat (lower triangle) and u, identity padding
                r = rows[lane]
                sl = row_counts[lane]
                for i in range(s):
                    base = i * ld * LANES + lane
                    if i < sl:
                        qi = cols[r, i]
                        for j in range(i + 1):
                            A[base + j * LANES] = T[qi, cols[r, j]]
                        y[i * LANES + lane] = W[r, qi]
                    else:
                        for j in range(i):
                            A[base + j * LANES] = 0.0
                        A[base + i * LANES] = 1.0
                        y[i * LANES + lane] = 0.0
            if not _factor_and_solve(A, D, y, s, ld):
                for lane in range(LANES):
                    if rows[lane] >= 0:
                        failed[rows[lane]] = True
                continue
            for lane in range(LANES):  # scatter
                r = rows[lane]
                for i in range(row_counts[lane]):
                    Xs[r, cols[r, i]] = y[i * LANES + lane]

    @numba.njit(**_J)
    def _bracket_scores(W, norms, j1, lo, hi, inside):
        """One pass over the psi scores ``|W[i, j]| * norms[j]``, i < c, j1 <= j < b: count those
        below lo and copy those in [lo, hi] to ``inside`` (in row-major order). Returns (count
        below lo, count inside, whether ``inside`` held them all)."""
        c, b = W.shape
        n = b - j1
        n_below = 0
        n_inside = 0
        for i in range(c):
            if n_inside + n > inside.shape[0]:
                return n_below, n_inside, False
            for j in range(j1, b):  # branch-free: store always, advance when inside
                v = abs(W[i, j]) * norms[j]
                n_below += v < lo
                inside[n_inside] = v
                n_inside += (v >= lo) & (v <= hi)
        return n_below, n_inside, True


def solve_block_rows(T_bb: np.ndarray, W_block: np.ndarray, block_mask: np.ndarray, Xs: np.ndarray) -> np.ndarray:
    """Fill ``Xs`` (c, width; zeros on entry) with x_k = T_bb[q_k, q_k]^-1 W_block[k, q_k] at q_k, for
    every row k of ``block_mask`` (c, width; True = pruned). T_bb (width, width), W_block and Xs
    (c, width) of one floating dtype, all C-contiguous. Returns the bool vector of rows whose
    factorisation broke down (a pivot not positive; their Xs rows are left 0, the caller redoes
    them in float64)."""
    failed = np.zeros(block_mask.shape[0], dtype=np.bool_)
    _call(_solve_block_rows, ("solve", T_bb.dtype.str), T_bb, W_block, block_mask, Xs, failed)
    return failed


def bracket_scores(W: np.ndarray, norms: np.ndarray, j1: int, lo: float, hi: float, inside: np.ndarray):
    """Count the psi scores ``|W[:, j1:]| * norms[j1:]`` below ``lo`` and copy those in [lo, hi]
    into ``inside`` (1-D, W's dtype, at least one row long), in one pass without forming the
    scores. Returns (count below, count inside, complete: False if ``inside`` ran out of room)."""
    below, count, complete = _call(_bracket_scores, ("bracket", W.dtype.str), W, norms, np.int64(j1), lo, hi, inside)
    return int(below), int(count), bool(complete)
