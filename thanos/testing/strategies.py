"""Hypothesis strategies shared by the whole suite: layers, row problems, patterns, sparsities.

Ill-conditioning is *built*, never filtered for (STYLE.md, "Hypothesis, used well"):

- an SPD Hessian is ``Q diag(lambda) Q^T`` with ``Q`` a random orthogonal matrix and a spectrum
  spread geometrically over ``[1/kappa, 1]``, kappa drawn from LAPACK's classes (``KAPPA_CLASSES``:
  2, sqrt(0.1/eps), 0.1/eps) or log-uniformly below a cap. 0.1/eps is too ill-conditioned for most
  float64 checks (a tolerance ``C n kappa eps`` exceeds 1), so every strategy takes ``max_kappa``
  (default ``KAPPA_SQRT``);
- a calibration input ``X`` (b features, a tokens) is ``Q diag(sigma) V^T`` with the same spectrum
  (``H = 2 X X^T``); fewer tokens than features gives a rank-deficient ``X`` (the reference's
  damping then makes ``H`` SPD); dead columns are zero rows of ``X``; duplicated columns are
  copied rows of ``X``;
- weights and Hessians are scaled anywhere in ``[1e-20, 1e20]``.

Large arrays are drawn as shapes plus a seed (``numpy.random.default_rng(seed)``), not entry by
entry; every strategy ``note()``s kappa, shapes and counts so a failure report says what it drew.
Weights are continuous Gaussians: with probability 1 no two psi scores tie, so masks that
depend on a comparison (global residual mask, row permutations) are well defined.

Plain NumPy builders (``random_orthogonal``, ``spd_with_condition``, ``calibration_input``,
``prepared_hessian``) are exposed too, for deterministic golden cases outside Hypothesis.
This module never imports torch.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import numpy as np
from hypothesis import note
from hypothesis import strategies as st

__all__ = [
    "EPS64", "KAPPA_WELL", "KAPPA_SQRT", "KAPPA_LIMIT", "KAPPA_CLASSES", "SCALE_RANGE",
    "METHODS", "Layer", "RowProblem",
    "random_orthogonal", "geometric_spectrum", "spd_with_condition", "calibration_input",
    "prepared_hessian",
    "seeds", "kappas", "scales", "sparsities", "exact_sparsities", "nm_patterns", "patterns",
    "block_sizes", "methods", "layers", "row_problems", "prune_arguments",
]

EPS64 = float(np.finfo(np.float64).eps)
#: LAPACK's condition classes for generated test matrices (dchkge / dlatms): well conditioned,
#: moderately ill (sqrt(0.1/eps) ~ 2.1e7) and at the edge of float64 (0.1/eps ~ 4.5e14).
KAPPA_WELL = 2.0
KAPPA_SQRT = math.sqrt(0.1 / EPS64)
KAPPA_LIMIT = 0.1 / EPS64
KAPPA_CLASSES = (KAPPA_WELL, KAPPA_SQRT, KAPPA_LIMIT)
#: Scales of W and H the strategies span.
SCALE_RANGE = (1e-20, 1e20)
METHODS = ("thanos", "sparsegpt", "wanda", "magnitude")


class Layer(NamedTuple):
    """One drawn layer. ``W`` (c, b); ``H`` (b, b) symmetric PSD (SPD unless ``info['singular']``);
    ``X`` (b, a) with ``H == 2 X X^T`` exactly as computed, or None when ``H`` was built from its
    spectrum; ``info`` a dict: seed, c, b, tokens, kappa (requested, of the non-zero spectrum),
    w_scale, h_scale, dead (list of dead columns), duplicated (list of (source, copy)), rank
    (of ``H``), singular (bool: H needs damping beyond the dead-column fix)."""

    W: np.ndarray
    H: np.ndarray
    X: Optional[np.ndarray]
    info: dict


class RowProblem(NamedTuple):
    """One row problem of Eq. (6)-(10). ``w`` (b,); ``H`` (b, b) SPD with condition ``info['kappa']``;
    ``q`` sorted distinct column indices to remove (s of them, 1 <= s <= b); ``X`` (b, b) with
    ``H == 2 X X^T`` up to rounding, or None; ``info``: seed, b, s, kappa, w_scale, h_scale."""

    w: np.ndarray
    H: np.ndarray
    q: np.ndarray
    X: Optional[np.ndarray]
    info: dict


# ---------------------------------------------------------------------------------------------
# Plain NumPy builders (deterministic given a Generator)
# ---------------------------------------------------------------------------------------------


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthogonal (n, n): QR of a Gaussian matrix with the signs of R's diagonal
    folded into Q (Mezzadri 2007), so the distribution does not depend on LAPACK's sign choice."""
    Z = rng.standard_normal((n, n))
    Q, R = np.linalg.qr(Z)
    signs = np.sign(np.diag(R))
    signs[signs == 0] = 1.0
    return Q * signs[None, :]


def geometric_spectrum(n: int, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """n eigenvalues from 1 down to 1/kappa, geometrically spaced (LAPACK dlatms MODE 3), in random
    order; the extremes are always present so the condition number is exactly kappa (n >= 2)."""
    if n == 1:
        return np.ones(1)
    lam = kappa ** (-np.arange(n) / (n - 1))
    return rng.permutation(lam)


def spd_with_condition(n: int, kappa: float, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    """SPD ``scale * Q diag(lambda) Q^T`` with 2-norm condition number kappa (up to rounding:
    the computed matrix's kappa is within a relative ``~n kappa eps`` of the request), exactly
    symmetric."""
    Q = random_orthogonal(n, rng)
    lam = geometric_spectrum(n, kappa, rng)
    H = (Q * lam[None, :]) @ Q.T
    H = (H + H.T) / 2.0
    return H * scale


def calibration_input(
    n: int,
    tokens: int,
    kappa: float,
    rng: np.random.Generator,
    *,
    dead: Sequence[int] = (),
    duplicated: Sequence[tuple] = (),
    scale: float = 1.0,
) -> np.ndarray:
    """X (n features, ``tokens`` tokens) = ``sqrt(scale) Q[:, :r] diag(sigma) V^T``, r = min(n, tokens),
    with ``2 sigma^2`` a geometric spectrum of r eigenvalues and condition kappa: for tokens >= n,
    ``H = 2 X X^T`` has condition kappa; for tokens < n it has rank ``tokens`` and its non-zero
    eigenvalues have condition kappa.
    Then rows ``dead`` are zeroed (dead columns of W) and for each (source, copy) in ``duplicated``
    row ``copy`` becomes a copy of row ``source`` (duplicated columns)."""
    r = min(n, tokens)
    Q = random_orthogonal(n, rng)[:, :r]
    lam = geometric_spectrum(r, kappa, rng)  # the r non-zero eigenvalues of H, condition kappa
    V = random_orthogonal(tokens, rng)[:, :r]
    X = (Q * np.sqrt(lam / 2.0)[None, :]) @ V.T
    for source, copy in duplicated:
        X[copy] = X[source]
    X[list(dead)] = 0.0
    return X * math.sqrt(scale)


def prepared_hessian(H: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """The matrix the reference factors (DESIGN.md, damping): dead columns (H_jj = 0) get
    H_jj = mean(diag H) of the input (1 if all are dead), then ``damping`` is added to the
    diagonal. Pass ``result.damping`` of a prune. (The dead columns' stand-in value changes no
    update: their rows and columns of H are zero and their weights are zeroed.)"""
    Hp = np.array(H, dtype=np.float64, copy=True)
    dead = np.diag(Hp) == 0
    Hp[dead, dead] = float(np.mean(np.diag(Hp))) or 1.0
    return Hp + damping * np.eye(Hp.shape[0])


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------------


def seeds() -> st.SearchStrategy[int]:
    """Seeds of ``numpy.random.default_rng``: the entries of large arrays come from these."""
    return st.integers(0, 2**32 - 1)


def kappas(max_kappa: float = KAPPA_SQRT, min_kappa: float = 1.0) -> st.SearchStrategy[float]:
    """Condition numbers: LAPACK's classes ``KAPPA_CLASSES`` up to ``max_kappa`` (the cap itself
    when it lies between classes), or log-uniform in ``[min_kappa, max_kappa]``."""
    classes = [k for k in KAPPA_CLASSES if min_kappa <= k <= max_kappa] or [max_kappa]
    log_uniform = st.floats(math.log10(min_kappa), math.log10(max_kappa)).map(lambda e: 10.0**e)
    return st.one_of(st.sampled_from(classes), log_uniform)


def scales(lo: float = SCALE_RANGE[0], hi: float = SCALE_RANGE[1]) -> st.SearchStrategy[float]:
    """Positive scales: 1, the decades' extremes lo and hi, or log-uniform in [lo, hi]."""
    fixed = [s for s in (1.0, lo, hi) if lo <= s <= hi]
    log_uniform = st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)
    return st.one_of(st.sampled_from(fixed), log_uniform)


def sparsities(min_value: float = 0.0, max_value: float = 0.9) -> st.SearchStrategy[float]:
    """Sparsities p in [min_value, max_value] (max_value < 1): the classic ones or any float."""
    fixed = [p for p in (0.0, 0.5, 0.25, 0.75, 0.9) if min_value <= p <= max_value]
    return st.one_of(st.sampled_from(fixed), st.floats(min_value, max_value))


@st.composite
def exact_sparsities(draw, numel: int) -> tuple:
    """(p, k) with ``p = k / numel``, 0 <= k < numel: a prune at p must remove exactly k weights."""
    k = draw(st.integers(0, numel - 1))
    note(f"exact sparsity: k={k} of numel={numel}")
    return k / numel, k


def nm_patterns(b: Optional[int] = None, block_size: Optional[int] = None, max_m: int = 8) -> st.SearchStrategy[str]:
    """``"N:M"`` strings with 1 <= N < M <= max_m and M dividing b and block_size (when given)."""
    choices = [
        f"{n}:{m}"
        for m in range(2, max_m + 1)
        if (b is None or b % m == 0) and (block_size is None or block_size % m == 0)
        for n in range(1, m)
    ]
    if not choices:
        return st.nothing()
    return st.sampled_from(choices)


def patterns(b: Optional[int] = None, block_size: Optional[int] = None, kinds: Sequence[str] = ("unstructured", "structured", "N:M")) -> st.SearchStrategy[str]:
    """Pattern strings valid for b input columns and the block size (N:M only where M divides both)."""
    options = [st.just(k) for k in kinds if k != "N:M"]
    if "N:M" in kinds:
        nm = nm_patterns(b, block_size)
        if not nm.is_empty:
            options.append(nm)
    return st.one_of(options)


def block_sizes(b: int, multiple_of: int = 1) -> st.SearchStrategy[int]:
    """Block sizes B in [1, b] (and b itself, one block; and b + 1, over-long) divisible by ``multiple_of``."""
    candidates = sorted({B for B in list(range(1, b + 1)) + [b + multiple_of] if B % multiple_of == 0})
    return st.sampled_from(candidates)


def methods(names: Sequence[str] = METHODS) -> st.SearchStrategy[str]:
    """Method names of ``prune``."""
    return st.sampled_from(list(names))


@st.composite
def layers(
    draw,
    *,
    min_c: int = 1,
    max_c: int = 8,
    min_b: int = 2,
    max_b: int = 16,
    b_multiple_of: int = 1,
    max_kappa: float = KAPPA_SQRT,
    hessian: str = "any",
    rank_deficient: Optional[bool] = False,
    dead_columns: bool = False,
    duplicate_columns: bool = False,
    w_scale: Optional[tuple] = (1.0, 1.0),
    h_scale: Optional[tuple] = (1.0, 1.0),
) -> Layer:
    """A layer (W, H, X-or-None, info), see ``Layer``.

    hessian: ``"spectrum"`` (H = Q diag(lambda) Q^T, X None), ``"tokens"`` (H = 2 X X^T from a
    calibration input) or ``"any"``. rank_deficient: True forces fewer tokens than features
    (tokens in [1, b-1], needs ``hessian != "spectrum"``), False forces a full-rank spectrum,
    None lets Hypothesis choose. dead_columns / duplicate_columns: allow zero rows / copied rows
    of X (tokens only; a spectrum H gets dead columns as zero rows and columns). w_scale and
    h_scale: (lo, hi) ranges of the positive scales of W and H (default 1). b is a multiple of
    ``b_multiple_of`` (for N:M). Without dead or duplicated columns and with rank_deficient
    False, H is SPD with condition kappa <= max_kappa (as requested, up to ``n kappa eps``)."""
    c = draw(st.integers(min_c, max_c), label="c")
    b_choices = [b for b in range(max(min_b, 1), max_b + 1) if b % b_multiple_of == 0]
    b = draw(st.sampled_from(b_choices), label="b")
    kappa = draw(kappas(max_kappa), label="kappa")
    seed = draw(seeds(), label="seed")
    ws = draw(scales(*w_scale), label="w_scale") if w_scale else 1.0
    hs = draw(scales(*h_scale), label="h_scale") if h_scale else 1.0
    if hessian == "any":
        hessian = "tokens" if rank_deficient else draw(st.sampled_from(["spectrum", "tokens"]), label="hessian")
    if rank_deficient and hessian == "spectrum":
        raise ValueError("rank_deficient=True needs hessian='tokens' (fewer tokens than features)")
    rng = np.random.default_rng(seed)

    dead: list = []
    if dead_columns and b >= 2:
        dead = sorted(draw(st.sets(st.integers(0, b - 1), min_size=1, max_size=max(1, b // 3)), label="dead"))
    duplicated: list = []
    if duplicate_columns and hessian == "tokens" and b - len(dead) >= 2:
        live = [j for j in range(b) if j not in dead]
        pairs = draw(st.lists(st.tuples(st.sampled_from(live), st.sampled_from(live)).filter(lambda p: p[0] != p[1]), min_size=1, max_size=2), label="duplicated")
        sources: set = set()
        copies: set = set()
        for source, copy in pairs:  # no chains: a copy is never a source, nor copied twice
            if source not in copies and copy not in copies and copy not in sources:
                duplicated.append((source, copy))
                sources.add(source)
                copies.add(copy)

    if hessian == "spectrum":
        X = None
        H = spd_with_condition(b, kappa, rng, scale=hs)
        H[dead, :] = 0.0
        H[:, dead] = 0.0
        tokens = None
    else:
        if rank_deficient is None:
            rank_deficient = draw(st.booleans(), label="rank_deficient")
        tokens = draw(st.integers(1, b - 1) if rank_deficient else st.integers(b, 2 * b), label="tokens")
        X = calibration_input(b, tokens, kappa, rng, dead=dead, duplicated=duplicated, scale=hs)
        H = 2.0 * X @ X.T
        H = (H + H.T) / 2.0  # matmul of X with its transpose is symmetric already; make sure
    W = rng.standard_normal((c, b)) * ws
    rank = int(np.linalg.matrix_rank(H)) if np.all(np.isfinite(H)) else -1
    singular = bool(rank_deficient) or bool(duplicated)
    info = dict(seed=seed, c=c, b=b, tokens=tokens, kappa=kappa, w_scale=ws, h_scale=hs, dead=dead,
                duplicated=duplicated, rank=rank, singular=singular, hessian=hessian)
    note(f"layer: c={c} b={b} tokens={tokens} kappa={kappa:.3g} rank={rank} dead={dead} duplicated={duplicated} "
         f"w_scale={ws:.3g} h_scale={hs:.3g} hessian={hessian} seed={seed}")
    return Layer(W, H, X, info)


@st.composite
def row_problems(
    draw,
    *,
    min_b: int = 2,
    max_b: int = 16,
    min_s: int = 1,
    max_s: Optional[int] = None,
    max_kappa: float = KAPPA_SQRT,
    w_scale: tuple = (1.0, 1.0),
    h_scale: tuple = (1.0, 1.0),
    diagonal: bool = False,
) -> RowProblem:
    """One row problem (w, H, q, X, info), see ``RowProblem``: H SPD of condition kappa <= max_kappa
    (diagonal when ``diagonal``), q of s distinct sorted indices with min_s <= s <= min(max_s, b).
    X is the square calibration input with ``H = 2 X X^T`` (None when diagonal)."""
    b = draw(st.integers(max(min_b, min_s, 1), max_b), label="b")
    s_hi = b if max_s is None else min(max_s, b)
    s = draw(st.integers(min(min_s, s_hi), s_hi), label="s")
    kappa = draw(kappas(max_kappa), label="kappa")
    seed = draw(seeds(), label="seed")
    ws = draw(scales(*w_scale), label="w_scale")
    hs = draw(scales(*h_scale), label="h_scale")
    rng = np.random.default_rng(seed)
    if diagonal:
        X = None
        H = np.diag(geometric_spectrum(b, kappa, rng) * hs)
    else:
        X = calibration_input(b, b, kappa, rng, scale=hs)
        H = 2.0 * X @ X.T
        H = (H + H.T) / 2.0
    w = rng.standard_normal(b) * ws
    q = np.sort(rng.choice(b, size=s, replace=False))
    info = dict(seed=seed, b=b, s=s, kappa=kappa, w_scale=ws, h_scale=hs, diagonal=diagonal)
    note(f"row problem: b={b} s={s} q={q.tolist()} kappa={kappa:.3g} w_scale={ws:.3g} h_scale={hs:.3g} seed={seed}")
    return RowProblem(w, H, q, X, info)


@st.composite
def prune_arguments(draw, b: int, *, method_names: Sequence[str] = METHODS, kinds: Sequence[str] = ("unstructured", "structured", "N:M"), max_sparsity: float = 0.9) -> dict:
    """Keyword arguments of ``prune`` valid for b input columns: method, pattern, sparsity (None for
    N:M), block_size (a multiple of M for N:M) and alpha (> 0 only for Thanos structured / N:M)."""
    method = draw(methods(method_names), label="method")
    pattern = draw(patterns(b, None, kinds), label="pattern")
    if ":" in pattern:
        m = int(pattern.split(":")[1])
        block_size = draw(block_sizes(b, m), label="block_size")
        sparsity = None
    else:
        block_size = draw(block_sizes(b), label="block_size")
        sparsity = draw(sparsities(0.0, max_sparsity), label="sparsity")
    alpha = 0.0
    if method == "thanos" and pattern != "unstructured":
        alpha = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5]), label="alpha")
    kwargs = dict(method=method, pattern=pattern, sparsity=sparsity, block_size=block_size, alpha=alpha)
    note(f"prune arguments: {kwargs}")
    return kwargs
