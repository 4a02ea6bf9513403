"""Conformance cases: one layer, its calibration activations in batches, and the arguments of ``prune``.

A ``Case`` carries everything an implementation needs, in both shapes research code takes it:
the calibration activations ``batches`` (torch layout, each ``(tokens_i, b)``; several batches)
and ``H = (2/N) sum_t x_t x_t^T`` over all N tokens (the running mean ``thanos.HessianAccumulator``
keeps, the paper's ``2 X X^T`` up to the positive factor 1/N, which changes no update). W and H
are stored in float64 holding values exactly representable in the case's dtypes (W in ``dtype``,
H and the activations in ``hessian_dtype``: float32 for fp16/bf16/fp32 weights, float64 for
float64), so the float64 oracle judges the implementation on exactly the inputs it was given.

Families (``FAMILIES``) are the kinds of layers a catalogue run draws: generic well- to
ill-conditioned layers (kappa up to 1e8), rank-deficient calibration data (fewer tokens than
features) with too little damping, duplicated columns, one weight pruned (OBS), a diagonal H (OBD),
and dead columns. Hand-computed golden cases (``golden_cases``) run first in every generic run.
The Hypothesis strategies (``case_strategy``) draw shapes, a seed and a condition number, never
every entry (STYLE.md). This module imports Hypothesis lazily (``case_strategy`` only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from reference import spec

DTYPES = ("float64", "float32", "float16", "bfloat16")
#: patterns a catalogue run understands: the three kinds, "N:M" meaning any N:M drawn, or a fixed "n:m"
PATTERN_KINDS = ("unstructured", "structured", "N:M")


def hessian_dtype(dtype: str) -> str:
    """The dtype H and the activations are given in: float64 for float64 weights, else float32
    (what ``thanos.HessianAccumulator`` accumulates in; fp16/bf16 statistics lose too much)."""
    return "float64" if dtype == "float64" else "float32"


def compute_dtype(dtype: str) -> str:
    """The precision the kit assumes an implementation computes in (DESIGN.md: float32 for
    fp16/bf16/fp32 weights, float64 for float64): the eps its tolerances are written in."""
    return "float64" if dtype == "float64" else "float32"


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` and back to float64 (bfloat16 through torch, imported here only)."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a.copy()
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(a).to(torch.bfloat16).to(torch.float64).numpy()
    return a.astype(np.dtype(dtype)).astype(np.float64)


def hessian_from_batches(batches) -> np.ndarray:
    """``H = (2/N) sum_t x_t x_t^T`` over every token of every batch, in float64, symmetrised."""
    N = sum(x.shape[0] for x in batches)
    b = batches[0].shape[1]
    H = np.zeros((b, b))
    for x in batches:
        H += 2.0 * x.T @ x
    H /= max(N, 1)
    return (H + H.T) / 2.0


@dataclass
class Case:
    """One conformance case. W: (c, b) float64 (values of ``dtype``); batches: list of (tokens_i, b)
    float64 arrays (values of ``hessian_dtype``); H: (b, b) float64 (values of ``hessian_dtype``),
    ``(2/N) sum x x^T`` of all batches; arguments of ``prune``; ``expected_mask`` for golden cases."""

    family: str
    method: str
    pattern: str
    sparsity: Optional[float]
    block_size: int
    alpha: float
    percdamp: float
    W: np.ndarray
    batches: list
    H: np.ndarray
    dtype: str = "float64"
    device: str = "cpu"
    info: dict = field(default_factory=dict)
    expected_mask: Optional[np.ndarray] = None

    @property
    def hessian_dtype(self) -> str:
        return hessian_dtype(self.dtype)

    @property
    def compute_dtype(self) -> str:
        return compute_dtype(self.dtype)

    @property
    def shape(self) -> tuple:
        return tuple(self.W.shape)

    def arguments(self) -> dict:
        """Keyword arguments of ``prune`` (the adapter signature)."""
        return dict(method=self.method, pattern=self.pattern, sparsity=self.sparsity, block_size=self.block_size,
                    alpha=self.alpha, percdamp=self.percdamp)

    def options(self) -> spec.Options:
        return spec.check_arguments(self.W.shape, self.H.shape, **self.arguments())

    def describe(self) -> dict:
        """What a report prints of the case: shape, seed, arguments, what the family built."""
        c, b = self.W.shape
        keep = ("seed", "kappa", "rho", "tokens", "batches", "dead", "duplicated", "w_scale", "h_scale", "golden")
        extra = {k: v for k, v in self.info.items() if k in keep}
        return dict(family=self.family, shape=[c, b], dtype=self.dtype, device=self.device, **self.arguments(), **extra)

    def short(self) -> str:
        d = self.describe()
        parts = [f"shape=({d['shape'][0]}, {d['shape'][1]})"]
        for k in ("seed", "golden", "pattern", "sparsity", "block_size", "alpha", "percdamp", "kappa", "rho", "tokens", "batches", "dead", "duplicated", "w_scale", "h_scale"):
            if k in d and d[k] not in (None, [], ()):
                v = d[k]
                parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
        return " ".join(parts)


def make_case(
    family: str,
    *,
    method: str,
    pattern: str,
    sparsity: Optional[float],
    block_size: int,
    alpha: float,
    percdamp: float,
    W: np.ndarray,
    batches: list,
    dtype: str = "float64",
    device: str = "cpu",
    info: Optional[dict] = None,
    expected_mask: Optional[np.ndarray] = None,
) -> Case:
    """A case from raw arrays: W rounded to ``dtype``, the activations to ``hessian_dtype``, H formed
    in float64 from the rounded activations and rounded to ``hessian_dtype`` (symmetric exactly)."""
    hd = hessian_dtype(dtype)
    W = round_to(W, dtype)
    batches = [round_to(x, hd) for x in batches]
    H = round_to(hessian_from_batches(batches), hd)
    H = np.triu(H) + np.triu(H, 1).T  # rounding keeps symmetry; make it exact anyway
    return Case(family, method, pattern, sparsity, block_size, alpha, percdamp, W, batches, H, dtype, device,
                dict(info or {}), expected_mask)


# ---------------------------------------------------------------------------------------------
# Golden cases: hand-computed, next to the properties (STYLE.md, torchao's X = [100, 10, 1, 0.1])
# ---------------------------------------------------------------------------------------------


def _diagonal_batches(norms, repeats: int = 1) -> list:
    """Activations whose H is exactly diagonal with ``H_jj = 2 norms_j^2 / tokens * repeats``:
    token t activates feature t only (products of distinct features are exact zeros)."""
    b = len(norms)
    X = np.zeros((b * repeats, b))
    for r in range(repeats):
        X[r * b + np.arange(b), np.arange(b)] = norms
    return [X]


def golden_cases(method: str, pattern: str, dtype: str = "float64", device: str = "cpu") -> list:
    """Hand-computed cases for one method and pattern (the expected mask written out by hand).

    - W = [1, 2, 3, 4] with feature norms [100, 10, 1, 0.1]: psi = [100, 20, 3, 0.4], so at 50 %
      Thanos and Wanda prune the last two and keep [1, 2]; magnitude prunes the first two.
      H is diagonal, so Thanos and SparseGPT update nothing else (OBD).
    - N:M 2:4 on two rows [[4, 3, 2, 1], [1, 2, 3, 4]], identity-like norms: the two smallest of
      each row's group go.
    - Structured: W = [[1, 1, 5, 5], [1, 1, 5, 5]] with equal norms: columns 0 and 1 (Eq. 15 loss
      2 each against 50) go at 50 %.
    """
    kind = "N:M" if is_nm(pattern) else pattern
    out = []
    if kind == "unstructured":
        W = np.array([[1.0, 2.0, 3.0, 4.0]])
        batches = _diagonal_batches(np.array([100.0, 10.0, 1.0, 0.1]))
        expected = np.array([[False, False, True, True]]) if method != "magnitude" else np.array([[True, True, False, False]])
        out.append(make_case("golden", method=method, pattern="unstructured", sparsity=0.5, block_size=4, alpha=0.0,
                             percdamp=0.01, W=W, batches=batches, dtype=dtype, device=device,
                             info=dict(golden="psi [100, 20, 3, 0.4]"), expected_mask=expected))
    elif kind == "N:M":
        if pattern not in ("N:M", "2:4"):
            return out
        W = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
        expected = np.array([[False, False, True, True], [True, True, False, False]])
        out.append(make_case("golden", method=method, pattern="2:4", sparsity=None, block_size=4, alpha=0.0,
                             percdamp=0.01, W=W, batches=_diagonal_batches(np.ones(4)), dtype=dtype, device=device,
                             info=dict(golden="2:4 on monotone rows"), expected_mask=expected))
    else:
        W = np.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])
        batches = _diagonal_batches(np.ones(4))
        expected = np.array([[True, True, False, False]] * 2)
        out.append(make_case("golden", method=method, pattern="structured", sparsity=0.5, block_size=4, alpha=0.0,
                             percdamp=0.01, W=W, batches=batches, dtype=dtype, device=device,
                             info=dict(golden="column loss [2, 2, 50, 50]"), expected_mask=expected))
    return out


# ---------------------------------------------------------------------------------------------
# Families and their Hypothesis strategies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A kind of layer. ``applies(method, kind) -> bool``."""

    name: str
    description: str
    applies: Callable


def _always(method, kind):
    return True


FAMILIES = {
    f.name: f
    for f in (
        Family("generic", "random layers, kappa(H) up to 1e8, W and H scaled 1e-20..1e20 (float64), several batches", _always),
        Family("correlated_features", "neighbouring features correlated (rho 0.9-0.99, as in LLM activations), several blocks: "
               "updates large enough to reorder later scores", _always),
        Family("rank_deficient", "fewer tokens than features, percdamp 0 or tiny: the factorisation fails until damping is raised",
               lambda method, kind: method in ("thanos", "sparsegpt", "wanda")),
        Family("duplicated_columns", "copied features (singular H)", lambda method, kind: method in ("thanos", "sparsegpt", "wanda")),
        Family("one_weight", "exactly one weight pruned: the update is OBS", lambda method, kind: kind == "unstructured" and method in ("thanos", "sparsegpt")),
        Family("diagonal_hessian", "H exactly diagonal: the update is OBD (nothing else moves)",
               lambda method, kind: method in ("thanos", "sparsegpt", "wanda")),
        Family("dead_columns", "features that never fire (H_jj = 0): their weights are pruned and counted",
               lambda method, kind: method in ("thanos", "sparsegpt", "wanda")),
    )
}


def _nm_choices(b_max: int, pattern: str) -> list:
    if pattern == "N:M":
        return [(n, m) for m in (2, 4, 8) for n in range(1, m)]
    kind, n, m = spec.parse_pattern(pattern)
    return [(n, m)]


def case_strategy(family: str, method: str, pattern: str, dtype: str = "float64", device: str = "cpu",
                  *, max_c: int = 8, max_b: int = 16):
    """Hypothesis strategy of ``Case`` for one family, method and pattern (``"unstructured"``,
    ``"structured"``, ``"N:M"`` for any N:M, or a fixed ``"n:m"``). Draws shapes, a seed, kappa,
    scales and arguments; builds the arrays from the seed (``thanos.testing.strategies``)."""
    from hypothesis import note
    from hypothesis import strategies as st

    from . import strategies as S

    kind = spec.parse_pattern(pattern)[0] if pattern != "N:M" else "N:M"
    low = dtype != "float64"

    @st.composite
    def draw_case(draw):
        if kind == "N:M":
            n, m = draw(st.sampled_from(_nm_choices(max_b, pattern)), label="n:m")
            pat = f"{n}:{m}"
            b = m * draw(st.integers(1, max(1, max_b // m)), label="groups")
        else:
            pat, m = kind, 1
            b = draw(st.integers(2, max_b), label="b")
        c = draw(st.integers(1, max_c), label="c")
        seed = draw(S.seeds(), label="seed")
        rng = np.random.default_rng(seed)
        kappa = draw(S.kappas(1e8), label="kappa")
        if low:
            ws = draw(S.scales(1e-2, 1e2), label="w_scale")
            hs = draw(S.scales(1e-3, 1e3), label="h_scale")
        else:
            ws = draw(S.scales(), label="w_scale")
            hs = draw(S.scales(), label="h_scale")
        tokens = draw(st.integers(b, 2 * b), label="tokens")
        dead, duplicated = [], []
        percdamp = 0.01 if low else draw(st.sampled_from([0.01, 1e-4, 1e-8]), label="percdamp")
        sparsity = None
        if kind != "N:M":
            sparsity = draw(S.sparsities(0.0, 0.9), label="sparsity")
        if family == "rank_deficient":
            tokens = draw(st.integers(1, b - 1), label="tokens") if b > 1 else 1
            percdamp = draw(st.sampled_from([0.0, 1e-12]), label="percdamp") if not low else 0.01
        elif family == "duplicated_columns" and b >= 2:
            src, dst = draw(st.lists(st.integers(0, b - 1), min_size=2, max_size=2, unique=True), label="duplicated")
            duplicated = [(src, dst)]
        elif family == "dead_columns" and b >= 2:
            dead = sorted(draw(st.sets(st.integers(0, b - 1), min_size=1, max_size=max(1, b // 2)), label="dead"))
        elif family == "one_weight":
            sparsity = 1.0 / (c * b)
        diagonal = family == "diagonal_hessian"
        if family == "correlated_features":
            rho = draw(st.sampled_from([0.9, 0.99, 0.999]), label="rho")
            X = rng.standard_normal((b, tokens))
            for j in range(1, b):  # AR(1) across features
                X[j] = rho * X[j - 1] + math.sqrt(1.0 - rho**2) * X[j]
            X *= np.exp(rng.uniform(-1.0, 1.0, size=(b, 1))) * math.sqrt(hs)
            kappa = None  # not requested: the data decides it
        elif diagonal:
            norms = np.sqrt(S.geometric_spectrum(b, kappa, rng) * hs * b / 2.0)  # H_jj = 2 norm^2 / b tokens
            batches = _diagonal_batches(norms)
            X = batches[0].T
            tokens = b
        else:
            X = S.calibration_input(b, tokens, kappa, rng, dead=dead, duplicated=duplicated, scale=hs * tokens)
        n_batches = draw(st.integers(1, min(3, tokens)), label="batches")
        cuts = np.sort(rng.choice(np.arange(1, tokens), size=n_batches - 1, replace=False)) if n_batches > 1 else []
        batches = np.split(X.T, cuts)
        if family == "correlated_features" and kind != "N:M":
            block_size = draw(st.sampled_from(sorted({1, 2, max(1, b // 4), max(1, b // 2)})), label="block_size")
        elif method == "thanos" and kind == "unstructured":  # mostly several blocks: the global residual mask matters
            block_size = draw(st.sampled_from(sorted({1, 2, 3, max(1, b // 2), b, b + 1})), label="block_size")
        elif kind == "N:M":
            block_size = m * draw(st.integers(1, b // m + 1), label="block_size/M")
        else:
            block_size = draw(st.sampled_from(sorted({1, 2, max(1, b // 2), b})), label="block_size")
        alpha = 0.0
        if method == "thanos" and kind != "unstructured" and family == "generic":
            alpha = draw(st.sampled_from([0.0, 0.0, 0.1, 0.25, 0.5]), label="alpha")
        W = rng.standard_normal((c, b)) * ws
        info = dict(seed=seed, kappa=kappa, tokens=tokens, rho=rho if family == "correlated_features" else None, batches=len(batches), dead=dead, duplicated=duplicated,
                    w_scale=ws, h_scale=hs)
        case = make_case(family, method=method, pattern=pat, sparsity=sparsity, block_size=block_size, alpha=alpha,
                         percdamp=percdamp, W=W, batches=list(batches), dtype=dtype, device=device, info=info)
        note(f"case: {case.short()}")
        return case

    return draw_case()


def merged(case: Case) -> Case:
    """The same case with all its activations in one batch (the statistics-from-all-batches check)."""
    one = [np.concatenate(case.batches, axis=0)]
    return Case(case.family, case.method, case.pattern, case.sparsity, case.block_size, case.alpha, case.percdamp,
                case.W, one, case.H, case.dtype, case.device, dict(case.info, batches=1), case.expected_mask)


def is_nm(pattern: str) -> bool:
    return pattern == "N:M" or ":" in pattern


def validate_pattern(pattern: str) -> str:
    """A catalogue pattern: a kind of PATTERN_KINDS or a concrete ``"n:m"``; raises ValueError."""
    if pattern in PATTERN_KINDS:
        return pattern
    spec.parse_pattern(pattern)
    return pattern


__all__ = ["Case", "DTYPES", "FAMILIES", "Family", "PATTERN_KINDS", "case_strategy", "compute_dtype", "golden_cases",
           "hessian_dtype", "hessian_from_batches", "make_case", "merged", "round_to", "validate_pattern", "is_nm"]
