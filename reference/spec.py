"""The shared contract of ``reference.prune`` and ``thanos.prune``: argument checks, exact counts.

Both implementations call these functions, so they reject the same inputs with the same messages
and prune the same number of weights. Nothing here touches array values: each implementation
computes the facts (finiteness, asymmetry, eigenvalue bounds, counts achieved) its own way and
passes them in; the rules and messages (argument checks, exact counts, the PSD tolerance, the
singularity ratio of the damping test, the warnings) live here. This module never imports torch:
NumPy scalars and 0-d arrays or tensors are read through ``numbers`` and ``.item()``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Optional

METHODS = ("thanos", "sparsegpt", "wanda", "magnitude")
PATTERNS = ("unstructured", "structured", "N:M")
# The score Thanos' mask ranks weights by (unstructured and N:M; the update is the same for all):
# "psi" = |W_ij| ||X_j|| (the paper's Eq. 11, the default), "magnitude" = |W_ij|, "sparsegpt" =
# W_ij^2 / [(H_{j:, j:})^-1]_00, SparseGPT's OBS saliency with the inverse of the damped H of the
# columns from j on (the trailing problem at column j's turn). benchmarks/README.md, "metric":
# psi is as good or better at 50 %, 2:4 and 4:8; "sparsegpt" is better at 70 % on three of five texts.
METRICS = ("psi", "magnitude", "sparsegpt")

# Float sparsities such as p = k / n come back from p * n as k +- a few ulps of k. Two roundings
# (the division and the product) move p * n by at most 2 * 2**-53 * n, so we snap to the integer
# within 8 * 2**-52 * n (four times that bound) before flooring or ceiling. The snap can only
# change a count when p * n lies within 1e-15 * n of an integer, i.e. when the user meant it.
_SNAP = 8 * 2.0**-52


def _floor(x: float, n: int) -> int:
    return math.floor(x + _SNAP * max(n, 1))


def _ceil(x: float, n: int) -> int:
    return math.ceil(x - _SNAP * max(n, 1))


def unstructured_count(sparsity: float, numel: int) -> int:
    """Weights a layer of ``numel`` weights loses at sparsity p: ``floor(p * numel)``."""
    return _floor(sparsity * numel, numel)


def cumulative_count(sparsity: float, rows: int, columns: int) -> int:
    """``floor(p * rows * columns)``: SparseGPT prunes ``cumulative(j2) - cumulative(j1)`` in
    block ``[j1, j2)``, so its per-block counts add up to the exact layer total."""
    return unstructured_count(sparsity, rows * columns)


def per_row_count(sparsity: float, b: int) -> int:
    """Weights each row loses in Wanda's per-row comparison group: ``floor(p * b)``."""
    return _floor(sparsity * b, b)


def outlier_row_count(alpha: float, c: int) -> int:
    """Rows Thanos leaves dense (Sec. 4.7.1): ``k = floor(alpha * c)``."""
    return _floor(alpha * c, c)


def structured_column_count(sparsity: float, alpha: float, b: int) -> int:
    """Columns removed from every non-outlier row (Alg. 2 step 2): ``min(b, ceil(p b / (1 - alpha)))``."""
    return min(b, _ceil(sparsity * b / (1.0 - alpha), b))


def parse_pattern(pattern: Any) -> tuple[str, int, int]:
    """``"unstructured"`` / ``"structured"`` / ``"N:M"`` -> (kind, n, m); n = m = 0 unless N:M."""
    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a string, got {pattern!r}")
    if pattern in ("unstructured", "structured"):
        return pattern, 0, 0
    parts = [p.strip() for p in pattern.split(":")]
    # ASCII digits only: str.isdigit and int() also take full-width and other Unicode digits ("１:４")
    if len(parts) == 2 and all(p.isascii() and p.isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if n < 1 or n >= m:
            raise ValueError(f"pattern {pattern!r}: N:M needs 1 <= N < M (N pruned of every M)")
        return "N:M", n, m
    raise ValueError(f"pattern must be 'unstructured', 'structured' or 'N:M' such as '2:4', got {pattern!r}")


# What ``block_size=None`` (the default) means, per method, pattern and layer width. SparseGPT keeps
# its paper's B = 128. Thanos' B is chosen from the block-size study on SmolLM2-135M (benchmarks/
# README.md, "The default block size"): the perplexity above the per-text best B, averaged over
# five evaluation texts, five calibration seeds of every B at --full size:
# - 2:4: the whole layer (B = b, one block) on a layer of at most WHOLE_LAYER_MAX_COLUMNS input
#   columns: 0.6 % above the per-text best (0.0-0.1 % on four texts, 2.8 % on multilingual, where
#   B = 64 is the best); B = 512 1.9 %, 1024 2.6 %, 128 5.9 %, 32 6.1 %, 64 6.2 %. Each row's
#   system grows with the block (the solve costs c b B^2), so the whole layer's cost is cubic in
#   b: wider layers, where it is neither measured nor cheap, take the fixed B = 512, as the
#   paper's code uses.
# - unstructured: B = 128 (1.0 %; 64 and 1024 1.1 %, 256 1.2 %, 512 1.4 %), the only B ahead of
#   SparseGPT by more than the seed noise on every text. The whole layer (0.7 %) and B = 32
#   (0.8 %) are not (multilingual); the whole layer costs 7-12 times the solver time and is worse
#   on code at every seed; B = 32 and 128 are level on one processor (0.5 and 0.6 %); and only 128
#   was measured at other sparsities, which the same default covers.
# - 4:8: B = 256 (1.2 %; the whole layer and 512 1.7 %, 1024 2.2 %; 32 3.3 %, 64 2.5 %): no B
#   is within 1 %.
# An N:M pattern the study did not measure takes the N:M entry, 512, and no whole layer.
# Structured Thanos removes whole columns at once and ignores B.
DEFAULT_BLOCK_SIZE = {"sparsegpt": 128, "thanos": {"unstructured": 128, "N:M": 512, "structured": 128}}
# the N:M patterns (N, M) measured to want a B other than the N:M entry above
DEFAULT_BLOCK_SIZE_NM = {(4, 8): 256}
# the patterns (kind, N, M) where Thanos' default is the whole layer, up to this many input columns
# (the widest layer measured: SmolLM2-135M's down_proj)
DEFAULT_WHOLE_LAYER = {("N:M", 2, 4)}
WHOLE_LAYER_MAX_COLUMNS = 1536


def fixed_block_size(method: Any, pattern: Any) -> int:
    """The fixed B of ``DEFAULT_BLOCK_SIZE`` for ``method`` and ``pattern``: the default on a layer
    the whole-layer rule does not cover (``default_block_size``)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kind, n, m = parse_pattern(pattern)
    if method != "thanos":
        return DEFAULT_BLOCK_SIZE["sparsegpt"]  # Wanda and magnitude have no blocks; any B is the same
    return DEFAULT_BLOCK_SIZE_NM.get((n, m), DEFAULT_BLOCK_SIZE["thanos"][kind])


def default_block_size(method: Any, pattern: Any, columns: Any) -> int:
    """The block size ``block_size=None`` stands for with ``method`` and ``pattern`` on a layer of
    ``columns`` input columns (b): for Thanos at a pattern of ``DEFAULT_WHOLE_LAYER`` with
    b <= ``WHOLE_LAYER_MAX_COLUMNS``, the whole layer (B = b); else ``fixed_block_size``."""
    block = fixed_block_size(method, pattern)
    b = as_integer(columns)
    if b is None or b < 1:
        raise ValueError(f"columns (the layer's input width b) must be a positive integer, got {columns!r}")
    if method == "thanos" and parse_pattern(pattern) in DEFAULT_WHOLE_LAYER and b <= WHOLE_LAYER_MAX_COLUMNS:
        return b
    return block


# What ``alpha=None`` (the default) means: the fraction of rows Thanos keeps dense, per method and
# pattern. Thanos at structured: alpha = 0.2, floor(0.2 c) outlier rows (Eq. 14) kept dense and the
# other rows pruned more, so the achieved sparsity is the requested one up to rounding (and above it
# on layers of fewer than 1 / alpha rows, where floor(alpha c) = 0: README, "Counts are exact").
# Chosen by the alpha study on SmolLM2-135M (benchmarks/README.md, "The default alpha"), by the rule
# the block sizes were chosen by (the mean over the five evaluation texts of the perplexity above
# each text's best): at structured 30 %, --full size, five seeds, 0.2 is 0.7 % above the per-text
# best of {0.1, 0.2} and 0.1 (the paper's value, its Tables 2-3, and the default earlier on 2026-12-06)
# 7.3 %: 0.2 is lower on code (-9 %) and multilingual (-20 %) at every seed, beyond the seed
# noise, higher on c4-heldout (+2.1 %, beyond it), and within it on wiki and technical; the
# --quick size splits the texts the same way. Both are below alpha = 0 beyond the noise on four
# texts. Everywhere else 0: at N:M any alpha > 0 keeps rows dense and so prunes less than the
# pattern, at a worse perplexity per pruned weight than unstructured pruning at the sparsity it
# achieves; unstructured Thanos and the other methods have no outlier rows.
DEFAULT_ALPHA_STRUCTURED = 0.2


def default_alpha(method: Any, pattern: Any) -> float:
    """The alpha ``alpha=None`` stands for with ``method`` and ``pattern``: ``DEFAULT_ALPHA_STRUCTURED``
    for Thanos at the structured pattern, else 0."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    structured = parse_pattern(pattern)[0] == "structured"
    return DEFAULT_ALPHA_STRUCTURED if method == "thanos" and structured else 0.0


@dataclass(frozen=True)
class Options:
    """Validated arguments of ``prune``."""

    method: str
    kind: str  # "unstructured" | "structured" | "N:M"
    n: int
    m: int
    sparsity: float  # the requested (or, for N:M, implied) sparsity
    block_size: int
    alpha: float
    percdamp: float
    rows: int
    columns: int
    metric: str = "psi"


def _scalar(x: Any) -> Any:
    """A 0-d array-like (``np.float32(0.5)`` is a number already; ``np.array(0.5)``,
    ``torch.tensor(0.5)``) as the Python scalar its ``.item()`` gives; anything else unchanged."""
    if not isinstance(x, numbers.Number) and getattr(x, "shape", None) == () and callable(getattr(x, "item", None)):
        try:
            return x.item()
        except Exception:  # e.g. a tensor on the 'meta' device has no value
            return x
    return x


def as_real(x: Any) -> Optional[float]:
    """``x`` as a finite Python float if it is a real number (``numbers.Real``: int, float, NumPy
    scalars; or a 0-d array or tensor holding one), else None. Booleans are not numbers here."""
    x = _scalar(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):  # NumPy's bool is no numbers.Real
        return None
    try:
        value = float(x)
    except OverflowError:  # an int beyond float's range
        return None
    return value if math.isfinite(value) else None


def as_integer(x: Any) -> Optional[int]:
    """``x`` as a Python int if it is an integer (``numbers.Integral``: int, NumPy integers; or a 0-d
    integer array or tensor), else None. Booleans and floats (even 8.0) are not integers here."""
    x = _scalar(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        return None
    return int(x)


def check_arguments(
    W_shape: tuple,
    H_shape: Optional[tuple],
    *,
    method: Any,
    pattern: Any,
    sparsity: Any,
    block_size: Any,
    alpha: Any,
    percdamp: Any,
    metric: Any = "psi",
) -> Options:
    """Validate every argument of ``prune`` before any work; raise ``ValueError`` naming it."""
    if len(W_shape) != 2 or min(W_shape) < 1:
        raise ValueError(f"W must be a non-empty 2-D (c, b) matrix, got shape {tuple(W_shape)}")
    c, b = int(W_shape[0]), int(W_shape[1])
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if H_shape is None:
        if method != "magnitude":
            raise ValueError(f"H is required for method {method!r} (only 'magnitude' ignores it)")
    elif tuple(H_shape) != (b, b):
        raise ValueError(f"H must be square (b, b) = ({b}, {b}) to match W of shape ({c}, {b}), got {tuple(H_shape)}")
    kind, n, m = parse_pattern(pattern)
    if kind == "N:M":
        implied = n / m
        if sparsity is not None and (as_real(sparsity) is None or abs(as_real(sparsity) - implied) > 1e-12):
            raise ValueError(f"sparsity {sparsity!r} contradicts pattern {pattern!r} (which prunes {implied}); pass None")
        sparsity_value = implied
        if b % m:
            raise ValueError(f"pattern {pattern!r} needs b = {b} input columns divisible by M = {m}")
    else:
        sparsity_value = None if sparsity is None else as_real(sparsity)
        if sparsity_value is None or not 0.0 <= sparsity_value < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    block = default_block_size(method, pattern, b) if block_size is None else as_integer(block_size)
    if block is None or block < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if kind == "N:M" and block % m:
        raise ValueError(f"block_size {block} must be a multiple of M = {m} for pattern {pattern!r}")
    alpha_value = default_alpha(method, pattern) if alpha is None else as_real(alpha)
    if alpha_value is None or not 0.0 <= alpha_value < 1.0:
        raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}")
    if alpha_value > 0 and not (method == "thanos" and kind in ("structured", "N:M")):
        raise ValueError(
            f"alpha (outlier rows kept dense) applies to method 'thanos' with a structured or N:M pattern, "
            f"not to method {method!r} with pattern {pattern!r}; got alpha={alpha!r}"
        )
    percdamp_value = as_real(percdamp)
    if percdamp_value is None or percdamp_value < 0:
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric != "psi" and not (method == "thanos" and kind in ("unstructured", "N:M")):
        raise ValueError(
            f"metric (the score Thanos' mask ranks weights by) applies to method 'thanos' with an unstructured or N:M "
            f"pattern, not to method {method!r} with pattern {pattern!r}; got metric={metric!r}"
        )
    return Options(method, kind, n, m, sparsity_value, block, alpha_value, percdamp_value, c, b, metric)


def check_values(name: str, all_finite: bool) -> None:
    """NaN or Inf in W or H: refuse before any work."""
    if not all_finite:
        raise ValueError(f"{name} contains NaN or Inf")


def check_floating(name: str, is_floating: bool, dtype: Any) -> None:
    """W and H hold floating-point values (an integer, bool or complex array is refused, in both
    implementations with this message)."""
    if not is_floating:
        raise ValueError(f"{name} must be a floating-point array or tensor, got dtype {dtype}")


def check_device(name: str, device_type: str) -> None:
    """A tensor on PyTorch's ``meta`` device has a shape but no values: refuse it by name."""
    if device_type == "meta":
        raise ValueError(f"{name} is on the 'meta' device: it has a shape but no values (load or materialise it first)")


def check_hessian(max_asymmetry: float, max_abs: float, min_diagonal: float, eps: float) -> None:
    """H must be symmetric (to ``sqrt(eps)`` of its largest entry) with a non-negative diagonal."""
    if max_asymmetry > math.sqrt(eps) * max_abs:
        raise ValueError(f"H is not symmetric: max |H - H^T| = {max_asymmetry:.3g} against max |H| = {max_abs:.3g}")
    if min_diagonal < 0:
        raise ValueError(f"H is not positive semi-definite: its diagonal has {min_diagonal:.3g} < 0")


# Positive semi-definiteness up to rounding. H arrives as fl(2 X X^T) (or a running mean of such
# products) in its dtype, of machine epsilon eps. Entry (i, j) is a dot product of columns i and j
# of X^T, so its rounding error is at most gamma * sum_t |x_ti x_tj| <= gamma sqrt(H_ii H_jj)
# (Cauchy-Schwarz), gamma = k eps with k the summation's error growth. The error matrix E is then
# bounded entrywise by gamma d d^T (d_i = sqrt(H_ii)), so ||E||_2 <= gamma ||d||^2 = gamma trace(H)
# <= gamma b lambda_max(H): an exactly PSD matrix comes out with lambda_min >= -k b eps lambda_max.
# Blocked and pairwise summation (every BLAS) keep k far below the naive worst case (the length
# of the dot product). Measured with thanos.HessianAccumulator on rank-1 to rank-12 X with features
# scaled over six decades (b = 16, 64, 256; 8 to 2**17 tokens; batches of 1 to 4096), the worst
# -lambda_min / (b eps lambda_max) was 0.08 in float32 and 0.69 in float64 (where eigvalsh's own
# error, ~ b eps64 lambda_max, is of the same order). We take C = 30 (the suite's usual headroom
# over a constant of about 1): an eigenvalue below -30 b eps lambda_max is not rounding, and H is
# refused.
PSD_C = 30.0


def psd_tolerance(b: int, eps: float) -> float:
    """``C b eps``: how far below 0, relative to lambda_max, rounding can push lambda_min of a PSD H
    of size b computed in a dtype of machine epsilon eps (derivation above)."""
    return PSD_C * max(int(b), 1) * eps


def check_psd(lambda_min: float, lambda_max: float, b: int, eps: float) -> None:
    """Refuse an H with an eigenvalue clearly below 0: ``lambda_min < -C b eps lambda_max``."""
    tolerance = psd_tolerance(b, eps)
    if lambda_min < -tolerance * max(lambda_max, 0.0):
        raise ValueError(
            f"H is not positive semi-definite: its smallest eigenvalue {lambda_min:.3g} is below "
            f"-{tolerance:.3g} x its largest {lambda_max:.3g} (the most rounding of 2 X X^T can explain); "
            "check how H was computed (damping would hide this, so it is refused)"
        )


#: A damped matrix A counts as numerically singular when ``lambda_min(A) <= SINGULAR_C b eps64
#: lambda_max(A)``, decided in float64 (reference.algorithms.prepare_hessian explains the 10).
SINGULAR_C = 10.0


def singular_ratio(b: int) -> float:
    """``10 b eps64``: a damping load is accepted only if lambda_min(A) exceeds this x lambda_max(A)."""
    return SINGULAR_C * max(int(b), 1) * 2.0**-52


def requested_count(opts: "Options", outlier_rows: int) -> int:
    """The number of weights the contract prunes from a layer without dead columns: floor(p c b)
    (Thanos, SparseGPT, magnitude unstructured), c floor(p b) (Wanda), (c - k) n b / m (N:M), and
    (c - k) s (structured), k = ``outlier_rows``."""
    c, b = opts.rows, opts.columns
    active = c - outlier_rows
    if opts.kind == "N:M":
        return active * (b // opts.m) * opts.n
    if opts.kind == "structured":
        return active * structured_column_count(opts.sparsity, opts.alpha, b)
    if opts.method == "wanda":
        return c * per_row_count(opts.sparsity, b)
    return unstructured_count(opts.sparsity, active * b)


def dead_columns_warning(dead_columns: int, requested: int, achieved: int, numel: int) -> str:
    """Dead columns (H_jj = 0) are pruned first and in full; when they outnumber a comparison
    group's count the layer ends sparser than requested, and this says so."""
    return (
        f"{dead_columns} dead column(s) of H (H_jj = 0: no calibration input) hold more weights than their "
        f"comparison group may prune; all of them are pruned: requested sparsity {requested / numel:.6g} "
        f"({requested} of {numel} weights), achieved {achieved / numel:.6g} ({achieved})"
    )


def structured_sparsity_warning(sparsity: float, alpha: float, c: int, b: int) -> Optional[str]:
    """Structured Thanos removes s = min(b, ceil(p b / (1 - alpha))) columns from the c - k rows that
    are not outliers; when the ceiling asks for more than b columns the request cannot be met, and
    the message gives the effective sparsity (c - k) / c instead. None when it can be met."""
    wanted = _ceil(sparsity * b / (1.0 - alpha), b)
    if wanted <= b:
        return None
    k = outlier_row_count(alpha, c)
    return (
        f"structured pattern: sparsity {sparsity:.6g} with alpha {alpha:.6g} needs ceil(p b / (1 - alpha)) = {wanted} "
        f"columns of b = {b}; all {b} are removed from the {c - k} rows that are not outliers ({k} stay dense): "
        f"requested sparsity {sparsity:.6g}, achieved {(c - k) / c:.6g}"
    )


def damping_schedule(percdamp: float, mean_diagonal: float, tries: int = 8):
    """Diagonal loads to try in turn: ``percdamp * mean(diag H)``, then x10 each time a Cholesky fails.

    A zero first load (``percdamp = 0``) steps up from ``1e-8 * mean(diag H)``."""
    first = percdamp * mean_diagonal
    yield first
    step = max(first, 1e-8 * mean_diagonal)
    for _ in range(tries):
        step *= 10.0
        yield step


def damping_warning(failed: float, next_damping: float) -> str:
    return f"Cholesky factorisation failed with damping {failed:.3g}; retrying with {next_damping:.3g}"


def damping_error(last: float) -> str:
    return f"H is not positive definite even with damping {last:.3g}: check the calibration data"


@dataclass
class PruneResult:
    """What ``prune`` returns, in the input's array type.

    weight: pruned weights, the input's shape and dtype. mask: bool, True = pruned.
    loss: layer loss ``sum_k 1/2 Delta_k H Delta_k^T`` with the undamped H (None without H).
    sparsity: the fraction of weights pruned (the effective sparsity, which differs from the
    request when alpha > 0). damping: the diagonal load actually used (None without H).
    outlier_rows: indices of the rows left dense (alpha > 0), sorted.
    """

    weight: Any
    mask: Any
    loss: Optional[float]
    sparsity: float
    damping: Optional[float] = None
    outlier_rows: list = field(default_factory=list)
