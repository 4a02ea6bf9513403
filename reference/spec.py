"""The shared contract of ``reference.prune`` and ``thanos.prune``: argument checks, exact counts.

Both implementations call these functions, so they reject the same inputs with the same messages
and prune the same number of weights. Nothing here touches array values except through the
``finite``/``symmetric`` callbacks each implementation passes in; this module never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

METHODS = ("thanos", "sparsegpt", "wanda", "magnitude")
PATTERNS = ("unstructured", "structured", "N:M")

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
    parts = pattern.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if n < 1 or n >= m:
            raise ValueError(f"pattern {pattern!r}: N:M needs 1 <= N < M (N pruned of every M)")
        return "N:M", n, m
    raise ValueError(f"pattern must be 'unstructured', 'structured' or 'N:M' such as '2:4', got {pattern!r}")


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


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


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
        if sparsity is not None and (not _is_number(sparsity) or abs(float(sparsity) - implied) > 1e-12):
            raise ValueError(f"sparsity {sparsity!r} contradicts pattern {pattern!r} (which prunes {implied}); pass None")
        sparsity = implied
        if b % m:
            raise ValueError(f"pattern {pattern!r} needs b = {b} input columns divisible by M = {m}")
    else:
        if sparsity is None or not _is_number(sparsity) or not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if kind == "N:M" and block_size % m:
        raise ValueError(f"block_size {block_size} must be a multiple of M = {m} for pattern {pattern!r}")
    if not _is_number(alpha) or not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in [0, 1), got {alpha!r}")
    if float(alpha) > 0 and not (method == "thanos" and kind in ("structured", "N:M")):
        raise ValueError(
            f"alpha (outlier rows kept dense) applies to method 'thanos' with a structured or N:M pattern, "
            f"not to method {method!r} with pattern {pattern!r}; got alpha={alpha!r}"
        )
    if not _is_number(percdamp) or float(percdamp) < 0:
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    return Options(method, kind, n, m, float(sparsity), int(block_size), float(alpha), float(percdamp), c, b)


def check_values(name: str, all_finite: bool) -> None:
    """NaN or Inf in W or H: refuse before any work."""
    if not all_finite:
        raise ValueError(f"{name} contains NaN or Inf")


def check_hessian(max_asymmetry: float, max_abs: float, min_diagonal: float, eps: float) -> None:
    """H must be symmetric (to ``sqrt(eps)`` of its largest entry) with a non-negative diagonal."""
    if max_asymmetry > math.sqrt(eps) * max_abs:
        raise ValueError(f"H is not symmetric: max |H - H^T| = {max_asymmetry:.3g} against max |H| = {max_abs:.3g}")
    if min_diagonal < 0:
        raise ValueError(f"H is not positive semidefinite: its diagonal has {min_diagonal:.3g} < 0")


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
