"""The catalogue: named properties of a pruning implementation, each judged on its *own* output.

Each property takes a ``Context`` (the case, the adapter and the implementation's output) and
either returns (it holds, or it does not apply to this case: ``NotApplicable``) or raises
``Violation`` naming the quantity that broke, its value and its bound. The mask an implementation
returns is the truth the other properties are judged against: a different but valid tie break is
not a failure, because the update, the counts and the mask rule are all checked for *that* mask.

Tolerances come from ``thanos.testing.tolerances``: a weight is held to ``C n kappa eps`` of the
layer's scale (``solve_tol``), with kappa the condition number of the damped, prepared H and eps
that of the precision the implementation is assumed to compute in (float64 for float64 weights,
float32 otherwise), plus two ulps of the weight's dtype for the final rounding (low precision).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from reference import equations as eq
from reference import spec

from . import oracle as O
from . import tolerances as T
from .adapters import Adapter, Output, Unsupported
from .cases import Case, merged


class Violation(AssertionError):
    """A property does not hold: ``quantity`` = ``value`` against ``bound`` (None where the
    property is exact), with a sentence of ``detail``."""

    def __init__(self, quantity: str, value=None, bound=None, detail: str = ""):
        self.quantity, self.value, self.bound, self.detail = quantity, value, bound, detail
        super().__init__(self.message())

    def message(self) -> str:
        v = "" if self.value is None else f" = {self.value:.3g}" if isinstance(self.value, float) else f" = {self.value}"
        bnd = "" if self.bound is None else f" (bound {self.bound:.3g})" if isinstance(self.bound, float) else f" (expected {self.bound})"
        return f"{self.quantity}{v}{bnd}" + (f": {self.detail}" if self.detail else "")


class NotApplicable(Exception):
    """The property says nothing about this case (e.g. outlier rows when alpha = 0)."""


@dataclass
class Context:
    """One case, run once; the oracle's quantities are computed on demand and cached."""

    case: Case
    adapter: Adapter
    output: Optional[Output] = None
    error: Optional[BaseException] = None
    inputs_modified: Optional[str] = None
    cache: dict = field(default_factory=dict)

    @classmethod
    def run(cls, case: Case, adapter: Adapter) -> "Context":
        """Call the implementation once on the case; keep its output, or the exception it raised,
        and whether it modified its inputs."""
        ctx = cls(case, adapter)
        W, second = adapter.inputs(case)
        W_before, second_before = _snapshot(W), _snapshot(second)
        try:
            ctx.output = adapter.read(adapter.call(case, W=W, second=second))
        except Unsupported:
            raise
        except Exception as err:  # noqa: BLE001 - reported as the implementation's failure
            ctx.error = err
        changed = [name for name, before, after in (("W", W_before, W), ("H" if adapter.kind == "function" else "batches", second_before, second))
                   if not _same(before, after)]
        ctx.inputs_modified = ", ".join(changed) or None
        return ctx

    # -- the implementation's output -------------------------------------------------------------
    @property
    def out(self) -> Output:
        if self.error is not None:
            raise Violation("the implementation raised", type(self.error).__name__, None, str(self.error)[:300])
        return self.output

    @property
    def opts(self) -> spec.Options:
        return self.cached("opts", self.case.options)

    def cached(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    # -- the oracle ------------------------------------------------------------------------------
    @property
    def uses_hessian_update(self) -> bool:
        return self.case.method in ("thanos", "sparsegpt")

    @property
    def damping(self) -> float:
        """The damping the implementation reports, or the nominal one."""
        if self.output is not None and self.output.damping is not None:
            return self.output.damping
        return O.nominal_damping(self.case)

    @property
    def Hd(self) -> np.ndarray:
        return self.cached("Hd", lambda: O.prepared_hessian(self.case.H, self.damping))

    @property
    def kappa(self) -> float:
        return self.cached("kappa", lambda: T.condition_number(self.Hd))

    @property
    def dead(self) -> np.ndarray:
        return O.dead_columns(self.case.H)

    @property
    def W_in(self) -> np.ndarray:
        """The input weights with dead columns zeroed (every method that reads H prunes them)."""
        def make():
            W = self.case.W.copy()
            if self.case.method != "magnitude":
                W[:, self.dead] = 0.0
            return W
        return self.cached("W_in", make)

    @property
    def weight_tol(self) -> float:
        """Relative tolerance of a weight: ``solve_tol(b, kappa, compute dtype)`` plus two ulps of
        the weight's dtype for the final rounding."""
        case = self.case
        if self.uses_hessian_update:
            tol = T.solve_tol(case.shape[1], self.kappa, case.compute_dtype)
        else:  # no solve: the kept weights are copies, the loss a sum of products
            tol = T.rounding_tol(case.shape[1], case.compute_dtype)
        if case.dtype != "float64":
            tol += T.LOW_PRECISION_FLOOR_ULPS * T.eps(case.dtype)
        return tol

    @property
    def outlier_rows(self) -> list:
        """The rows the implementation left dense: the ones it reports, else the rows with an
        empty mask (only when the pattern prunes something from every other row)."""
        k = O.expected_outlier_count(self.case)
        if k == 0:
            return []
        if self.out.outlier_rows is not None:
            return sorted(self.out.outlier_rows)
        return [int(i) for i in np.flatnonzero(~self.out.mask.any(axis=1))]

    @property
    def active_rows(self) -> np.ndarray:
        c = self.case.shape[0]
        return np.setdiff1d(np.arange(c), np.asarray(self.outlier_rows, dtype=int))


def _snapshot(x):
    if isinstance(x, list):
        return [_snapshot(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.copy()
    return x.clone()


def _same(a, b) -> bool:
    """Bit equality of the inputs before and after the call (the same memory compared with its
    own copy: any difference is a modification)."""
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    import torch

    return a.shape == b.shape and bool(torch.equal(torch.nan_to_num(a.cpu()), torch.nan_to_num(b.cpu())))


def _where(a) -> str:
    return str(tuple(int(v) for v in a))


def _assert_weights(actual: np.ndarray, expected: np.ndarray, ctx: Context, quantity: str, rows=None) -> None:
    rows = np.arange(actual.shape[0]) if rows is None else np.asarray(rows, dtype=int)
    if rows.size == 0:
        return
    a, e = actual[rows], expected[rows]
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise Violation(quantity, "non-finite weight", None, f"at row {int(rows[bad[0]])}, column {int(bad[1])}")
    scale = max(float(np.max(np.abs(ctx.W_in))), float(np.max(np.abs(e))), np.finfo(float).tiny)
    err, idx = T.max_error(a, e)
    bound = ctx.weight_tol * scale
    if not err <= bound:
        i = (int(rows[idx[0]]), int(idx[1]))
        raise Violation(f"{quantity}: max |weight - expected| / scale", err / scale, ctx.weight_tol,
                        f"worst at {i}: {a[idx]!r} vs {e[idx]!r}; kappa={ctx.kappa:.3g}, compute {ctx.case.compute_dtype}")


# ============================================================================ the properties


def pruned_weights_exactly_zero(ctx: Context) -> None:
    """Every weight the implementation's mask calls pruned is exactly 0 (pruned means zero, not 'small')."""
    out = ctx.out
    if not out.mask_reported:
        raise NotApplicable("the implementation returns no mask (the kit reads weight == 0)")
    bad = np.argwhere(out.mask & (out.weight != 0))
    if bad.size:
        i = tuple(int(v) for v in bad[0])
        raise Violation("pruned entries not exactly 0", int(len(bad)), 0, f"first at {i}: {out.weight[i]!r}")


def _group_expectation(count: int, dead_in_group: int) -> int:
    """Dead weights count toward a group's count; a group with more dead weights than its count
    loses all of them."""
    return max(count, dead_in_group)


def exact_counts(ctx: Context) -> None:
    """Exact counts on the implementation's mask: the layer total (Thanos, SparseGPT, magnitude
    unstructured), per row (Wanda), strict N:M in every row and group, whole columns (structured),
    with exactly floor(alpha c) rows left dense; dead weights count and are all pruned."""
    out, case, opts = ctx.out, ctx.case, ctx.opts
    M = out.mask
    c, b = case.shape
    if M.shape != (c, b):
        raise Violation("mask shape", str(M.shape), str((c, b)))
    dead = ctx.dead if case.method != "magnitude" else np.zeros(b, dtype=bool)
    if dead.any():
        missed = np.argwhere(~M[:, dead])
        if missed.size:
            r, j = missed[0]
            raise Violation("dead weights not in the mask", int(len(missed)), 0,
                            f"first at row {int(r)}, column {int(np.flatnonzero(dead)[j])}")
    k = O.expected_outlier_count(case)
    outliers = ctx.outlier_rows
    rows = ctx.active_rows
    if k:
        if len(outliers) != k:
            raise Violation("rows left dense", len(outliers), k, f"floor(alpha c) with alpha={opts.alpha}, c={c}: rows {outliers}")
        if M[outliers].any():
            raise Violation("pruned entries in rows left dense", int(M[outliers].sum()), 0)
    if opts.kind == "N:M":
        n, m = opts.n, opts.m
        groups = M[rows].reshape(len(rows), b // m, m).sum(axis=2)
        dead_g = dead.reshape(b // m, m).sum(axis=1)
        expected = np.maximum(n, dead_g)[None, :]
        bad = np.argwhere(groups != expected)
        if bad.size:
            r, g = bad[0]
            raise Violation(f"pruned per group of {m}", int(groups[r, g]), int(expected[0, g]),
                            f"row {int(rows[r])}, group {int(g)} (columns {int(g) * m}..{int(g) * m + m - 1}); {len(bad)} groups off")
        return
    if opts.kind == "structured":
        alpha = opts.alpha if case.method == "thanos" else 0.0
        s = _group_expectation(spec.structured_column_count(opts.sparsity, alpha, b), int(dead.sum()))
        if rows.size:
            first = M[rows[0]]
            differing = [int(r) for r in rows if not np.array_equal(M[r], first)]
            if differing:
                raise Violation("rows pruning different columns", len(differing), 0, f"row {differing[0]} vs row {int(rows[0])}")
            if int(first.sum()) != s:
                raise Violation("columns removed", int(first.sum()), s, f"min(b, ceil(p b / (1 - alpha))), p={opts.sparsity}, alpha={alpha}")
        return
    if case.method == "wanda":
        per_row = spec.per_row_count(opts.sparsity, b)
        expected = np.full(c, per_row) if not dead.any() else np.full(c, _group_expectation(per_row, int(dead.sum())))
        got = M.sum(axis=1)
        bad = np.flatnonzero(got != expected)
        if bad.size:
            raise Violation("pruned in a row", int(got[bad[0]]), int(expected[bad[0]]), f"row {int(bad[0])}: floor(p b), p={opts.sparsity}")
        return
    total = spec.unstructured_count(opts.sparsity, c * b)
    expected = _group_expectation(total, int(dead.sum()) * c)
    got = int(M.sum())
    if case.method == "sparsegpt" and dead.any():  # per-block counts: dead weights may push a block over its share
        if not expected <= got <= total + int(dead.sum()) * c:
            raise Violation("pruned in the layer", got, f"{expected}..{total + int(dead.sum()) * c}")
        return
    if got != expected:
        raise Violation("pruned in the layer", got, expected, f"floor(p c b), p={opts.sparsity}, c={c}, b={b}")


def outlier_rows(ctx: Context) -> None:
    """Exactly floor(alpha c) rows are left untouched, and they are the rows of highest Eq. 14 loss."""
    case = ctx.case
    k = O.expected_outlier_count(case)
    if k == 0:
        raise NotApplicable("alpha = 0 or not Thanos structured / N:M")
    out = ctx.out
    rows = ctx.outlier_rows
    if len(rows) != k:
        raise Violation("rows left dense", len(rows), k, f"floor(alpha c), alpha={case.alpha}, c={case.shape[0]}")
    W0 = case.W
    changed = np.abs(out.weight[rows] - W0[rows]) > T.eps(case.compute_dtype) * np.abs(W0[rows])
    if changed.any():
        r, j = np.argwhere(changed)[0]
        raise Violation("weights changed in a row left dense", int(changed.sum()), 0, f"row {rows[r]}, column {int(j)}")
    loss = eq.row_loss(ctx.W_in, case.H)  # Eq. (14)
    others = np.setdiff1d(np.arange(case.shape[0]), rows)
    if others.size:
        tau = T.rounding_tol(case.shape[1] + 4, case.compute_dtype) * float(np.max(loss))
        lo, hi = float(np.min(loss[rows])), float(np.max(loss[others]))
        if lo < hi - tau:
            raise Violation("Eq. 14 loss of a dense row below that of a pruned row", lo, hi - tau,
                            f"dense row {rows[int(np.argmin(loss[rows]))]} vs row {int(others[np.argmax(loss[others])])}")


def kkt_residual(ctx: Context) -> None:
    """Stationarity of the one-block problems (Thanos with one block, structured): the gradient
    (W_out - W_in) H of the layer loss vanishes on every kept weight of the pruned rows."""
    case, opts = ctx.case, ctx.opts
    if case.method != "thanos" or (opts.kind != "structured" and opts.block_size < case.shape[1]):
        raise NotApplicable("only Thanos structured, or Thanos with one block, solves one problem per row")
    out = ctx.out
    rows = ctx.active_rows
    if rows.size == 0:
        return
    D = out.weight[rows] - ctx.W_in[rows]
    if not np.all(np.isfinite(D)):
        raise Violation("non-finite weights")
    G = D @ ctx.Hd
    kept = ~out.mask[rows]
    scale = max(float(np.max(np.abs(ctx.W_in))), float(np.max(np.abs(out.weight))), np.finfo(float).tiny)
    bound = 2.0 * ctx.weight_tol * scale * float(np.max(np.sum(np.abs(ctx.Hd), axis=1)))
    if kept.any():
        g = np.abs(np.where(kept, G, 0.0))
        idx = np.unravel_index(int(np.argmax(g)), g.shape)
        if not g[idx] <= bound:
            raise Violation("KKT residual |((W_out - W_in) H)_kept|", float(g[idx]), bound,
                            f"row {int(rows[idx[0]])}, column {int(idx[1])}; kappa={ctx.kappa:.3g}")


def trailing_block_optimum(ctx: Context) -> None:
    """Thanos unstructured / N:M: the weights are those of replaying the algorithm with the
    implementation's own mask: per block, each row's change is the least-squares optimum of the
    trailing problem (columns before the block frozen), i.e. Eq. (10) with (H_{j:,j:})^-1."""
    case, opts = ctx.case, ctx.opts
    if case.method != "thanos" or opts.kind == "structured":
        raise NotApplicable("Thanos unstructured / N:M only")
    out = ctx.out
    rows = ctx.active_rows
    expected, _ = ctx.cached("replay", lambda: O.replay_thanos_blocks(ctx.W_in, ctx.Hd, out.mask, rows, opts.block_size))
    _assert_weights(out.weight, expected, ctx, "trailing-problem optimum per block", rows)


def sequential_obs(ctx: Context) -> None:
    """SparseGPT: the weights are those of column-by-column OBS with the implementation's mask."""
    if ctx.case.method != "sparsegpt":
        raise NotApplicable("SparseGPT only")
    out = ctx.out
    expected, _ = ctx.cached("replay", lambda: O.replay_sparsegpt(ctx.W_in, ctx.Hd, out.mask))
    _assert_weights(out.weight, expected, ctx, "column-by-column OBS")


def structured_update_optimal(ctx: Context) -> None:
    """Thanos structured: every pruned row's kept weights are the least-squares optimum for its
    mask (the update with sub-blocks of H^-1, Eq. 13 corrected)."""
    case, opts = ctx.case, ctx.opts
    if case.method != "thanos" or opts.kind != "structured":
        raise NotApplicable("Thanos structured only")
    out = ctx.out
    rows = ctx.active_rows
    expected = O.fixed_mask_optimum(ctx.W_in, ctx.Hd, out.mask, rows)
    _assert_weights(out.weight, expected, ctx, "least-squares optimum of the structured update", rows)


def no_update(ctx: Context) -> None:
    """Wanda and magnitude change no kept weight (to one rounding through the compute dtype)."""
    case = ctx.case
    if case.method not in ("wanda", "magnitude"):
        raise NotApplicable("Wanda and magnitude only")
    out = ctx.out
    kept = ~out.mask
    W0 = ctx.W_in
    changed = kept & (np.abs(out.weight - W0) > T.eps(case.compute_dtype) * np.abs(W0))
    if changed.any():
        i = tuple(int(v) for v in np.argwhere(changed)[0])
        raise Violation("kept weights changed", int(changed.sum()), 0, f"first at {i}: {out.weight[i]!r} vs input {W0[i]!r}")


def loss_closed_form(ctx: Context) -> None:
    """The reported loss equals sum_k 1/2 Delta_k H Delta_k^T of the returned weights, undamped H."""
    out, case = ctx.out, ctx.case
    if out.loss is None:
        raise NotApplicable("the implementation reports no loss")
    D = out.weight - case.W
    H = case.H
    recomputed = eq.layer_loss(case.W, out.weight, H)
    scale = T.quadratic_form_scale(D, H) + float(np.sum((np.abs(D) @ np.abs(H)) * np.abs(case.W)))
    tol = ctx.weight_tol + T.rounding_tol(case.shape[1], case.compute_dtype)
    if not (math.isfinite(out.loss) and (out.loss == recomputed or abs(out.loss - recomputed) <= tol * scale)):
        raise Violation("|loss - 1/2 sum D H D^T| / scale", abs(out.loss - recomputed) / scale if scale else math.inf, tol,
                        f"reported {out.loss!r}, recomputed {recomputed!r}")
    if out.loss < -tol * scale:
        raise Violation("negative loss", out.loss, 0.0)


def obs_one_weight(ctx: Context) -> None:
    """One weight pruned: the update is OBS on the trailing problem, Delta = -w_q / T_qq T[q, :]."""
    case = ctx.case
    if case.family != "one_weight" or case.method not in ("thanos", "sparsegpt"):
        raise NotApplicable("one_weight cases of Thanos / SparseGPT")
    out = ctx.out
    pruned = np.argwhere(out.mask)
    if len(pruned) != 1:
        raise NotApplicable("the mask does not prune exactly one weight (exact_counts says so)")
    k, q = (int(v) for v in pruned[0])
    j = (q // case.block_size) * case.block_size if case.method == "thanos" else q
    Tinv = O.trailing_inverse(ctx.Hd, j)
    expected = ctx.W_in.copy()
    w = expected[k, j:]
    expected[k, j:] = w - w[q - j] / Tinv[q - j, q - j] * Tinv[q - j, :]
    expected[k, q] = 0.0
    _assert_weights(out.weight, expected, ctx, f"OBS update of weight ({k}, {q})")


def obd_diagonal_hessian(ctx: Context) -> None:
    """Diagonal H: no kept weight moves (OBD), and the loss is 1/2 sum w_q^2 H_qq."""
    case = ctx.case
    if case.family != "diagonal_hessian":
        raise NotApplicable("diagonal_hessian cases")
    out = ctx.out
    kept = ~out.mask
    expected = np.where(kept, ctx.W_in, 0.0)
    _assert_weights(out.weight, expected, ctx, "OBD: kept weights unchanged")
    if out.loss is not None:
        obd = 0.5 * float(np.sum(np.where(out.mask, case.W, 0.0) ** 2 * np.diag(case.H)[None, :]))
        tol = ctx.weight_tol + T.rounding_tol(case.shape[1], case.compute_dtype)
        scale = 0.5 * float(np.sum(case.W**2 * np.diag(case.H)[None, :]))
        if not abs(out.loss - obd) <= tol * scale:
            raise Violation("|loss - 1/2 sum w_q^2 H_qq| / scale", abs(out.loss - obd) / scale, tol)


def _psi_tau(ctx: Context, W_cur: np.ndarray, norms: np.ndarray) -> float:
    """Slack of a psi comparison: the implementation's current weights may differ from the
    replay's by the weight tolerance; psi itself rounds in the compute dtype."""
    scale = max(float(np.max(np.abs(ctx.W_in))), float(np.max(np.abs(W_cur))))
    dw = (ctx.weight_tol if ctx.uses_hessian_update else 0.0) * scale
    psi_max = float(np.max(np.abs(W_cur) * norms[None, :])) if W_cur.size else 0.0
    return dw * float(np.max(norms)) + 4 * T.eps(ctx.case.compute_dtype) * psi_max


def _check_groups(scores: np.ndarray, M: np.ndarray, m: int, tau: float, what: str, rows, col0: int = 0) -> None:
    c, w = scores.shape
    for r in range(c):
        for g in range(0, w, m):
            v, i, u = O.selection_violation(scores[r, g:g + m], M[r, g:g + m], tau)
            if v > 0:
                raise Violation(f"{what}: a pruned score exceeds a kept one in its group", v + tau, tau,
                                f"row {int(rows[r])}, columns {col0 + g + i} (pruned) vs {col0 + g + u} (kept)")


def mask_rule(ctx: Context) -> None:
    """The mask follows the method's rule, on the implementation's own earlier choices: Thanos's
    global residual mask on psi of the *current* weights at every block start (N:M: the n smallest
    psi of each group, current weights); SparseGPT's per-block OBS saliency w^2 / [H^-1]_jj^2 with
    its per-block count; Wanda's per-row psi; magnitude's |W| over the layer; structured: the
    columns of lowest column loss; golden cases: the hand-computed mask."""
    case, opts, out = ctx.case, ctx.opts, ctx.out
    M = out.mask
    c, b = case.shape
    if case.expected_mask is not None and not np.array_equal(M, case.expected_mask):
        raise Violation("golden mask", M.astype(int).tolist(), case.expected_mask.astype(int).tolist(), case.info.get("golden", ""))
    norms = O.column_norms(case.H)
    rows = ctx.active_rows
    if rows.size == 0:
        return
    if opts.kind == "structured":
        _structured_rule(ctx, norms, rows)
        return
    if case.method == "thanos":
        W_final, snaps = ctx.cached("replay", lambda: O.replay_thanos_blocks(ctx.W_in, ctx.Hd, M, rows, opts.block_size))
        total = spec.unstructured_count(opts.sparsity, len(rows) * b)
        for j1, W_cur in sorted(snaps.items()):
            j2 = min(j1 + opts.block_size, b)
            Wc = W_cur[rows, j1:]
            scores = np.abs(Wc) * norms[None, j1:]
            tau = _psi_tau(ctx, Wc, norms[j1:])
            Mb = M[rows, j1:j2]
            if opts.kind == "N:M":
                _check_groups(scores[:, : j2 - j1], Mb, opts.m, tau, "N:M on psi of the current weights", rows, j1)
                continue
            r = total - int(M[rows, :j1].sum())
            in_block = np.zeros(scores.shape, dtype=bool)
            in_block[:, : j2 - j1] = True
            selected = np.zeros(scores.shape, dtype=bool)
            selected[:, : j2 - j1] = Mb
            if r <= 0:
                extra = selected & (scores > tau)
                if extra.any():
                    rr, jj = np.argwhere(extra)[0]
                    raise Violation("global residual mask: pruned beyond the layer's count", int(extra.sum()), 0,
                                    f"block at column {j1}, row {int(rows[rr])}, column {j1 + int(jj)}")
                continue
            t = float(np.sort(scores, axis=None)[min(r, scores.size) - 1])
            over = selected & (scores > t + tau)
            under = in_block & ~selected & (scores < t - tau)
            for bad, what in ((over, "pruned above"), (under, "kept below")):
                if bad.any():
                    rr, jj = np.argwhere(bad)[0]
                    raise Violation(f"global residual mask: a weight {what} the threshold", float(scores[rr, jj]), t,
                                    f"block at column {j1}: the {r} smallest psi of the current remaining weights end at {t:.6g} "
                                    f"(tau {tau:.3g}); row {int(rows[rr])}, column {j1 + int(jj)}")
        return
    if case.method == "sparsegpt":
        W_final, snaps = ctx.cached("replay", lambda: O.replay_sparsegpt(ctx.W_in, ctx.Hd, M))
        d = ctx.cached("sparsegpt_d", lambda: O.sparsegpt_diagonal(ctx.Hd))
        dw = ctx.weight_tol * max(float(np.max(np.abs(ctx.W_in))), float(np.max(np.abs(W_final))))
        if opts.kind == "N:M":
            for g in range(0, b, opts.m):
                Wc = snaps[g][:, g:g + opts.m]
                sal = Wc**2 / d[None, g:g + opts.m] ** 2
                tau = (2 * float(np.max(np.abs(Wc))) * dw + dw**2) / float(np.min(d[g:g + opts.m])) ** 2 + 4 * T.eps(case.compute_dtype) * float(np.max(sal))
                _check_groups(sal, M[:, g:g + opts.m], opts.m, tau, "N:M on OBS saliency of the current weights", np.arange(c), g)
            return
        for j1 in range(0, b, opts.block_size):
            j2 = min(j1 + opts.block_size, b)
            Wc = snaps[j1][:, j1:j2]
            sal = Wc**2 / d[None, j1:j2] ** 2
            # the block tops the layer up to floor(p c j2) (what earlier blocks pruned counts, dead
            # weights included); a block with more dead weights than that loses all of them
            before = int(M[:, :j1].sum())
            count = _group_expectation(max(spec.cumulative_count(opts.sparsity, c, j2) - before, 0),
                                       int(ctx.dead[j1:j2].sum()) * c)
            got = int(M[:, j1:j2].sum())
            if got != count:
                raise Violation("SparseGPT per-block count", got, count,
                                f"block {j1}..{j2 - 1}: floor(p c j2) - {before} pruned before, dead first")
            tau = (2 * float(np.max(np.abs(Wc))) * dw + dw**2) / float(np.min(d[j1:j2])) ** 2 + 4 * T.eps(case.compute_dtype) * float(np.max(sal))
            v, i, u = O.selection_violation(sal, M[:, j1:j2], tau)
            if v > 0:
                w = j2 - j1
                raise Violation("SparseGPT block mask: a pruned saliency exceeds a kept one", v + tau, tau,
                                f"block {j1}..{j2 - 1}: ({i // w}, {j1 + i % w}) pruned vs ({u // w}, {j1 + u % w}) kept")
        return
    W0 = ctx.W_in
    scores = np.abs(W0) * norms[None, :] if case.method == "wanda" else np.abs(W0)
    tau = 4 * T.eps(case.compute_dtype) * float(np.max(scores))
    if opts.kind == "N:M":
        _check_groups(scores, M, opts.m, tau, f"{case.method} N:M", np.arange(c))
    elif case.method == "wanda":
        _check_groups(scores, M, b, tau, "Wanda per-row psi", np.arange(c))
    else:
        v, i, u = O.selection_violation(scores, M, tau)
        if v > 0:
            raise Violation("magnitude: a pruned |w| exceeds a kept one", v + tau, tau, f"flat indices {i} (pruned) vs {u} (kept)")


def _structured_rule(ctx: Context, norms: np.ndarray, rows) -> None:
    case, out = ctx.case, ctx.out
    W0 = ctx.W_in
    removed = out.mask[rows].all(axis=0)
    if case.method in ("thanos", "wanda"):
        score = np.sum((W0[rows] * norms[None, :]) ** 2, axis=0)  # Eq. (15)
        tau = T.rounding_tol(len(rows) + 4, case.compute_dtype) * float(np.max(score))
    elif case.method == "magnitude":
        score = np.sum(W0**2, axis=0)
        tau = T.rounding_tol(case.shape[0] + 4, case.compute_dtype) * float(np.max(score))
    else:
        d = ctx.cached("sparsegpt_d", lambda: O.sparsegpt_diagonal(ctx.Hd))
        score = np.sum(W0**2, axis=0) / d**2
        tau = (ctx.weight_tol + T.rounding_tol(case.shape[0] + 4, case.compute_dtype)) * float(np.max(score))
    v, i, u = O.selection_violation(score, removed, tau)
    if v > 0:
        raise Violation("structured: a removed column's loss exceeds a kept column's", v + tau, tau,
                        f"column {i} (removed, {score[i]:.6g}) vs column {u} (kept, {score[u]:.6g})")


def statistics_from_all_batches(ctx: Context) -> None:
    """An implementation that accumulates its own statistics, fed X in several batches, gives what
    it gives for one batch of all of X (the same mask, weights within tolerance; or, where near
    ties flip the mask, the same layer loss)."""
    if ctx.adapter.kind != "layer":
        raise NotApplicable("the implementation takes H, not activations")
    if len(ctx.case.batches) < 2:
        raise NotApplicable("one batch")
    out = ctx.out
    one = ctx.adapter.run(merged(ctx.case))
    case = ctx.case
    if np.array_equal(out.mask, one.mask):
        _assert_weights(out.weight, one.weight, ctx, "several batches vs one batch")
        return
    H = case.H
    l1, l2 = eq.layer_loss(case.W, out.weight, H), eq.layer_loss(case.W, one.weight, H)
    scale = T.quadratic_form_scale(case.W, H)
    tol = ctx.weight_tol + T.rounding_tol(case.shape[1], case.compute_dtype)
    if not abs(l1 - l2) <= tol * scale:
        diff = np.argwhere(out.mask != one.mask)[0]
        raise Violation("loss with several batches vs one batch, / scale", abs(l1 - l2) / scale, tol,
                        f"{int((out.mask != one.mask).sum())} mask entries differ, first at {_where(diff)}")


def input_not_modified(ctx: Context) -> None:
    """The implementation leaves W and H (or the activations) as they were."""
    if ctx.inputs_modified:
        raise Violation("inputs modified", ctx.inputs_modified)


def _device_key(device: str) -> str:
    return device if ":" in device or device == "cpu" else f"{device}:0"


def dtype_and_device(ctx: Context) -> None:
    """The returned weight has the input's dtype and device; the mask is boolean of W's shape."""
    out, case = ctx.out, ctx.case
    if out.dtype != case.dtype:
        raise Violation("weight dtype", out.dtype, case.dtype)
    if _device_key(out.device) != _device_key(case.device):
        raise Violation("weight device", out.device, case.device)
    if out.weight.shape != case.shape:
        raise Violation("weight shape", str(out.weight.shape), str(case.shape))
    if out.mask_reported:
        raw = out.raw_mask
        dt = str(getattr(raw, "dtype", "")).replace("torch.", "")
        if dt != "bool":
            raise Violation("mask dtype", dt, "bool")
        if _device_key(_mask_device(raw)) != _device_key(case.device) and not isinstance(raw, np.ndarray):
            raise Violation("mask device", _mask_device(raw), case.device)


def _mask_device(raw) -> str:
    return "cpu" if isinstance(raw, np.ndarray) else str(getattr(raw, "device", "cpu"))


def deterministic(ctx: Context) -> None:
    """A second run on the same inputs gives the same mask and, on the CPU, bit-identical weights
    (the same code run twice: equality is the point)."""
    out = ctx.out
    again = ctx.adapter.run(ctx.case)
    if not np.array_equal(out.mask, again.mask):
        raise Violation("mask entries differing between two runs", int((out.mask != again.mask).sum()), 0)
    if ctx.case.device == "cpu" and not np.array_equal(out.weight, again.weight, equal_nan=True):
        err, idx = T.max_error(out.weight, again.weight)
        raise Violation("weights differing between two runs (CPU)", err, 0.0, f"worst at {idx}")


def failed_factorisation_raises_damping(ctx: Context) -> None:
    """When the damped H does not factor (rank-deficient or duplicated features, little damping),
    the implementation raises the damping until it does -- it neither falls back to the identity
    nor goes on with a singular factor: the result is finite and the damping it used (the reported
    one, else the nominal one) leaves H numerically non-singular."""
    case = ctx.case
    if case.family not in ("rank_deficient", "duplicated_columns") or case.method not in ("thanos", "sparsegpt"):
        raise NotApplicable("singular-H families of Thanos / SparseGPT")
    out = ctx.out
    if not np.all(np.isfinite(out.weight)):
        raise Violation("non-finite weights", int((~np.isfinite(out.weight)).sum()), 0)
    if O.numerically_singular(ctx.Hd):
        lam = np.linalg.eigvalsh(ctx.Hd)
        raise Violation("lambda_min / lambda_max of the damped H", float(lam[0] / lam[-1]), 10.0 * case.shape[1] * T.eps("float64"),
                        f"damping {ctx.damping:.3g} ({'reported' if out.damping is not None else 'nominal'}) leaves H singular: "
                        "the factorisation cannot have succeeded")


# ---------------------------------------------------------------------- bad inputs (one per run)

def bad_input_variants(case: Case, adapter: Adapter) -> list:
    """(name, W, second argument, arguments) of inputs that must be refused."""
    W, second = adapter.inputs(case)
    args = case.arguments()
    variants = []

    def with_value(x, value):
        y = x.copy() if isinstance(x, np.ndarray) else x.clone()
        y[0, 0] = value
        return y

    variants.append(("NaN in W", with_value(W, float("nan")), second, args))
    if adapter.kind == "function":
        variants.append(("Inf in H", W, with_value(second, float("inf")), args))
        variants.append(("H of the wrong shape", W, second[:-1, :-1], args))
    else:
        variants.append(("Inf in the activations", W, [with_value(second[0], float("inf"))] + list(second[1:]), args))
        variants.append(("activations of the wrong width", W, [x[:, :-1] for x in second], args))
    opts = case.options()
    if opts.kind != "N:M":
        for bad in (1.5, -0.1, float("nan")):
            variants.append((f"sparsity={bad}", W, second, dict(args, sparsity=bad)))
    for bad in ("4:2", "2:2", "0:4"):
        variants.append((f"pattern={bad!r}", W, second, dict(args, pattern=bad, sparsity=None)))
    variants.append(("alpha=1.0", W, second, dict(args, alpha=1.0)))
    variants.append(("block_size=0", W, second, dict(args, block_size=0)))
    return variants


def bad_inputs_raise(case: Case, adapter: Adapter) -> None:
    """Bad inputs (NaN/Inf, shapes, sparsity outside [0, 1), N:M with N >= M, alpha = 1) raise an
    exception instead of returning a result."""
    accepted = []
    for name, W, second, args in bad_input_variants(case, adapter):
        try:
            adapter._call(W, second, args)
        except Exception:  # noqa: BLE001 - any refusal counts; the project's own code raises ValueError
            continue
        accepted.append(name)
    if accepted:
        raise Violation("bad inputs accepted", len(accepted), 0, "; ".join(accepted))


# ================================================================================ the catalogue


def _any(method, kind, family):
    return True


@dataclass(frozen=True)
class Property:
    """A named property; ``applies(method, kind, family)`` says statically where it can say
    something (the check itself may still find a case says nothing: ``NotApplicable``)."""

    name: str
    check: Callable
    applies: Callable = _any
    reruns: bool = False  # calls the implementation again (costs a run)

    @property
    def description(self) -> str:
        return (self.check.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _thanos(*kinds):
    return lambda method, kind, family: method == "thanos" and kind in kinds


CATALOGUE = {
    p.name: p
    for p in (
        Property("pruned_weights_exactly_zero", pruned_weights_exactly_zero),
        Property("exact_counts", exact_counts),
        Property("outlier_rows", outlier_rows, lambda method, kind, family: method == "thanos" and kind != "unstructured" and family == "generic"),
        Property("kkt_residual", kkt_residual, _thanos("unstructured", "structured", "N:M")),
        Property("trailing_block_optimum", trailing_block_optimum, _thanos("unstructured", "N:M")),
        Property("sequential_obs", sequential_obs, lambda method, kind, family: method == "sparsegpt"),
        Property("structured_update_optimal", structured_update_optimal, _thanos("structured")),
        Property("no_update", no_update, lambda method, kind, family: method in ("wanda", "magnitude")),
        Property("loss_closed_form", loss_closed_form),
        Property("obs_one_weight", obs_one_weight, lambda method, kind, family: family == "one_weight"),
        Property("obd_diagonal_hessian", obd_diagonal_hessian, lambda method, kind, family: family == "diagonal_hessian"),
        Property("mask_rule", mask_rule),
        Property("failed_factorisation_raises_damping", failed_factorisation_raises_damping,
                 lambda method, kind, family: method in ("thanos", "sparsegpt") and family in ("rank_deficient", "duplicated_columns")),
        Property("statistics_from_all_batches", statistics_from_all_batches, reruns=True),
        Property("input_not_modified", input_not_modified),
        Property("dtype_and_device", dtype_and_device),
        Property("deterministic", deterministic, reruns=True),
    )
}
#: judged once per method and pattern on a fixed case, not per drawn case
BAD_INPUTS = "bad_inputs_raise"
PROPERTY_NAMES = tuple(CATALOGUE) + (BAD_INPUTS,)


def judge(ctx: Context, prop: Property) -> Optional[Violation]:
    """Run one property: None when it holds; raises NotApplicable when it says nothing here."""
    try:
        # garbage output may overflow the oracle's arithmetic, and SciPy warns on ill-conditioned
        # solves: the kit judges with derived tolerances instead (a warning under pytest's
        # filterwarnings = error would otherwise turn into a false alarm)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prop.check(ctx)
    except Violation as v:
        return v
    except (NotApplicable, Unsupported):
        raise
    except Exception as err:  # noqa: BLE001 - an oracle failure on a garbage output is a violation too
        if ctx.error is None and ctx.output is not None and not np.all(np.isfinite(ctx.output.weight)):
            return Violation("non-finite weights", int((~np.isfinite(ctx.output.weight)).sum()), 0)
        return Violation(f"the check could not be evaluated ({type(err).__name__})", None, None, str(err)[:300])
    return None


__all__ = ["BAD_INPUTS", "CATALOGUE", "Context", "NotApplicable", "PROPERTY_NAMES", "Property", "Violation",
           "bad_input_variants", "bad_inputs_raise", "judge"]
