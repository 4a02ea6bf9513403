"""The argument contract both implementations share (``reference/spec.py``), checked on both at once.

Each test is one rule of DESIGN.md / README "Semantics worth knowing" that an input class once
broke (issue 7): dead columns counted in the sparsity, an indefinite H refused instead of damped,
one damping rule in every compute dtype, NumPy and 0-d tensor numbers accepted, meta tensors and
full-width digits refused, a structured request that cannot be met said out loud, float64 weights
computed in float64. Production and reference are run on the same values and must agree on
decisions (masks, counts, damping, warnings word for word) -- never on bits of floating-point
results from their different code paths.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import reference
import strategies as S
import thanos
import tolerances as T
from test_production_solver import _recording  # (result, warning messages) of one prune call
from reference import spec

device_settings = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])


def _both(W, H, **kwargs):
    """(production result, its warnings, reference result, its warnings) on the same float64 values."""
    prod, prod_warnings = _recording(thanos.prune, torch.tensor(W), None if H is None else torch.tensor(H), **kwargs)
    kwargs.pop("compute_dtype", None)
    ref, ref_warnings = _recording(reference.prune, W, H, **kwargs)
    return prod, prod_warnings, ref, ref_warnings


# ------------------------------------------------------------------------------- dead columns
@pytest.mark.parametrize("method", ["thanos", "sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "structured"])
def test_zero_hessian_reports_sparsity_one_with_a_warning(device, method, pattern):
    """H = 0 (an accumulator never updated): every column is dead and every weight is pruned; the
    reported sparsity is 1.0 (it was 0.5 while every weight came back 0), with a warning giving
    requested and achieved sparsity, the same words in both implementations."""
    W = torch.arange(1.0, 33.0).reshape(4, 8)
    sparsity = None if ":" in pattern else 0.5
    message = r"8 dead column\(s\).*requested sparsity 0\.5 \(16 of 32 weights\), achieved 1 \(32\)"
    with pytest.warns(RuntimeWarning, match=message) as prod_record:
        prod = thanos.prune(W.to(device), torch.zeros(8, 8, device=device), method=method, pattern=pattern, sparsity=sparsity,
                            alpha=0.0)  # alpha 0: 16 of 32 requested (test_golden_zero_hessian_prunes_everything_and_says_so)
    with pytest.warns(RuntimeWarning, match=message) as ref_record:
        ref = reference.prune(W.numpy(), np.zeros((8, 8), dtype=np.float32), method=method, pattern=pattern, sparsity=sparsity,
                              alpha=0.0)
    assert [str(w.message) for w in prod_record] == [str(w.message) for w in ref_record]
    assert prod.sparsity == ref.sparsity == 1.0
    assert bool(prod.mask.all()) and bool((prod.weight == 0).all()) and prod.loss == 0.0


@device_settings
@given(st.data())
def test_dead_columns_agree_with_the_reference(device, data):
    """Dead columns in every method that uses H and every pattern: the same masks (dead weights
    first, counted in their group), the same counts, the same warnings as the reference."""
    layer = data.draw(S.layers(max_c=6, max_b=12, max_kappa=1e4, dead_columns=True, b_multiple_of=data.draw(st.sampled_from([1, 2, 4]))), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"], method_names=("thanos", "sparsegpt", "wanda")), label="kwargs")
    prod, prod_warnings, ref, ref_warnings = _both(layer.W, layer.H, compute_dtype=torch.float64, **kwargs)
    assert prod_warnings == ref_warnings, (prod_warnings, ref_warnings)
    assert np.array_equal(prod.mask.numpy(), ref.mask), kwargs
    assert prod.sparsity == ref.sparsity and prod.outlier_rows == ref.outlier_rows
    rows = np.setdiff1d(np.arange(layer.info["c"]), ref.outlier_rows)
    assert ref.mask[np.ix_(rows, layer.info["dead"])].all(), "dead weights are pruned in every row that is not an outlier"
    for k in ref.outlier_rows:
        assert np.array_equal(prod.weight[k].numpy(), layer.W[k]), "outlier rows are left untouched, dead columns included"


def test_golden_sparsegpt_blocks_count_dead_weights_cumulatively():
    """SparseGPT, c = 1, b = 4, blocks of 2, p = 0.5: cumulative counts floor(0.5 j) = 1 after the
    first block, 2 after the second. Column 0 dead: block 1 prunes it (its count), block 2 prunes
    one more (2 - 1). Columns 2 and 3 dead instead: block 1 prunes its smallest live weight (count
    1), block 2 must take both dead weights: 3 pruned, 1 more than asked, and the warning says so."""
    W = np.array([[4.0, 3.0, 2.0, 1.0]])
    H = np.diag([0.0, 2.0, 2.0, 2.0])
    prod, prod_warnings, ref, ref_warnings = _both(W, H, method="sparsegpt", pattern="unstructured", sparsity=0.5, block_size=2)
    assert ref.mask.tolist() == [[True, False, False, True]] and prod_warnings == ref_warnings == []
    assert np.array_equal(prod.mask.numpy(), ref.mask)
    H = np.diag([2.0, 2.0, 0.0, 0.0])
    prod, prod_warnings, ref, ref_warnings = _both(W, H, method="sparsegpt", pattern="unstructured", sparsity=0.5, block_size=2)
    assert ref.mask.tolist() == [[False, True, True, True]] and np.array_equal(prod.mask.numpy(), ref.mask)
    assert prod_warnings == ref_warnings and len(ref_warnings) == 1
    assert "requested sparsity 0.5 (2 of 4 weights), achieved 0.75 (3)" in ref_warnings[0]


# --------------------------------------------------------------------------- indefinite H
def _indefinite(b: int, ratio: float, rng, dtype=np.float64) -> np.ndarray:
    """A symmetric H with a positive diagonal and lambda_min = -ratio * lambda_max."""
    Q = S.random_orthogonal(b, rng)
    lam = np.linspace(1.0, 2.0, b)
    lam[0] = -ratio * lam[-1]
    H = (Q * lam) @ Q.T
    H = ((H + H.T) / 2).astype(dtype)
    assert np.all(np.diag(H) > 0)
    return H


@pytest.mark.parametrize("percdamp", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("h_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["thanos", "sparsegpt"])
def test_indefinite_hessian_is_refused_before_any_damping(device, method, h_dtype, percdamp):
    """lambda_min = -1e-3 lambda_max with a positive diagonal: far beyond rounding (the tolerance
    is 30 b eps(H) lambda_max: 1.2e-5 in float32, 2e-14 in float64 at b = 16), so ValueError
    before any damping warning -- even at percdamp 0.1, where the damped Cholesky succeeds and
    the result would look normal. It once returned a negative loss after damping to 100."""
    rng = np.random.default_rng(5)
    b = 16
    H = _indefinite(b, 1e-3, rng, h_dtype)
    W = rng.standard_normal((3, b))
    kwargs = dict(method=method, pattern="unstructured", sparsity=0.5, percdamp=percdamp)
    assert np.linalg.cholesky(H.astype(np.float64) + 0.1 * np.mean(np.diag(H)) * np.eye(b)) is not None  # damping would hide it
    for compute in (torch.float32, torch.float64):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no damping warning may come first
            with pytest.raises(ValueError, match="H is not positive semi-definite: its smallest eigenvalue"):
                thanos.prune(torch.tensor(W, device=device), torch.tensor(H, device=device), compute_dtype=compute, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="H is not positive semi-definite: its smallest eigenvalue"):
            reference.prune(W, H, **kwargs)


def test_golden_negative_loss_case_is_refused():
    """H = [[1, 3], [3, 1]] (eigenvalues 4 and -2, positive diagonal): both refuse it."""
    H = np.array([[1.0, 3.0], [3.0, 1.0]])
    for prune, Wt, Ht in ((reference.prune, np.ones((1, 2)), H), (thanos.prune, torch.ones(1, 2), torch.tensor(H))):
        with pytest.raises(ValueError, match=r"H is not positive semi-definite: its smallest eigenvalue -2 is below"):
            prune(Wt, Ht, method="thanos", pattern="unstructured", sparsity=0.5)


def test_dead_column_with_off_diagonal_entries_is_refused():
    """H_jj = 0 with H_ij != 0 is not PSD (a 2x2 minor has determinant -H_ij^2); setting H_jj to
    mean(diag H) for the dead column must not hide that (production checks the input H)."""
    H = np.array([[0.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    for percdamp in (0.0, 0.01):
        with pytest.raises(ValueError, match="H is not positive semi-definite"):
            thanos.prune(torch.ones(2, 3), torch.tensor(H, dtype=torch.float32), method="thanos", pattern="unstructured", sparsity=0.5, percdamp=percdamp)
        with pytest.raises(ValueError, match="H is not positive semi-definite"):
            reference.prune(np.ones((2, 3)), H.astype(np.float32), method="thanos", pattern="unstructured", sparsity=0.5, percdamp=percdamp)


@device_settings
@given(st.data())
def test_rounding_level_negative_eigenvalues_are_accepted(device, data):
    """A rank-deficient 2 X X^T accumulated in float32 has eigenvalues a rounding below 0: not an
    error, in either implementation (it is damped like any singular H)."""
    b = data.draw(st.integers(4, 24), label="b")
    tokens = data.draw(st.integers(1, b - 1), label="tokens")
    seed = data.draw(S.seeds(), label="seed")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((tokens, b)) * 10.0 ** rng.uniform(-3, 3, b)
    acc = thanos.HessianAccumulator(b)
    acc.update(torch.tensor(X, dtype=torch.float32))
    H = acc.hessian
    lam = np.linalg.eigvalsh(H.double().numpy())
    note(f"lambda_min / lambda_max = {lam[0] / lam[-1]:.3g}")
    W = rng.standard_normal((2, b))
    _recording(thanos.prune, torch.tensor(W, dtype=torch.float32, device=device), H.to(device), method="sparsegpt", pattern="unstructured", sparsity=0.5)
    _recording(reference.prune, W.astype(np.float32), H.numpy(), method="sparsegpt", pattern="unstructured", sparsity=0.5)


# --------------------------------------------------------------------- one damping rule
SINGULAR_LAYERS = st.one_of(
    S.layers(rank_deficient=True, hessian="tokens", max_c=4, max_b=12, max_kappa=1e4, h_scale=(1e-10, 1e10)),
    S.layers(rank_deficient=False, duplicate_columns=True, hessian="tokens", min_b=3, max_c=4, max_b=12, max_kappa=1e4, h_scale=(1e-10, 1e10)),
)


@device_settings
@given(layer=SINGULAR_LAYERS, method=st.sampled_from(["thanos", "sparsegpt"]), percdamp=st.sampled_from([0.0, 1e-12, 1e-9]))
def test_damping_and_warnings_are_the_references_in_every_compute_dtype(device, layer, method, percdamp):
    """Singular or rank-deficient H, (almost) no damping: production in float32 and in float64 and
    the reference accept the same load (the reference's float64 test decides; a float32
    breakdown at a load float64 accepts is redone in float64), so they record the same damping
    after the same warnings, word for word."""
    kwargs = dict(method=method, pattern="unstructured", sparsity=0.5, percdamp=percdamp)
    ref, ref_warnings = _recording(reference.prune, layer.W, layer.H, **kwargs)
    for compute in (torch.float32, torch.float64):
        prod, prod_warnings = _recording(thanos.prune, torch.tensor(layer.W, device=device), torch.tensor(layer.H, device=device), compute_dtype=compute, **kwargs)
        assert prod_warnings == ref_warnings, (compute, prod_warnings, ref_warnings)
        assert prod.damping == ref.damping, (compute, prod.damping, ref.damping)
        assert np.all(np.isfinite(prod.weight.cpu().numpy()))


def test_golden_issue_case_float32_settles_where_the_reference_does():
    """The issue's case class: 3 tokens for 6 features (H of rank 3), percdamp = 0. The float64
    test accepts the second load (1e-7 x mean(diag H)); float32's factorisation breaks down there
    and used to step once more (two warnings, 10x the damping, a different loss). Now float32
    computes that layer in float64 and settles with the reference: one warning, the same damping."""
    rng = np.random.default_rng(48)
    X = rng.standard_normal((6, 3)) * np.geomspace(1, 10, 6)[:, None]
    H = 2.0 * X @ X.T / 3
    W = rng.standard_normal((4, 6))
    kwargs = dict(method="thanos", pattern="unstructured", sparsity=0.5, percdamp=0.0)
    ref, ref_warnings = _recording(reference.prune, W, H, **kwargs)
    assert len(ref_warnings) == 1 and ref.damping == list(spec.damping_schedule(0.0, float(np.mean(np.diag(H)))))[1]
    for compute in (torch.float32, torch.float64):
        prod, prod_warnings = _recording(thanos.prune, torch.tensor(W), torch.tensor(H), compute_dtype=compute, **kwargs)
        assert (prod.damping, prod_warnings) == (ref.damping, ref_warnings), compute
        assert np.array_equal(prod.mask.numpy(), ref.mask)
        kappa = T.condition_number(H + ref.damping * np.eye(6))
        T.assert_scalar_close(prod.loss, ref.loss, tol=T.solve_tol(6, kappa), scale=T.quadratic_form_scale(W, H), kappa=kappa, what=f"loss, {compute}")


# -------------------------------------------------------------------------------- type edges
@pytest.mark.parametrize(
    "name, value, plain",
    [
        ("sparsity", np.float32(0.5), 0.5),
        ("sparsity", np.float64(0.25), 0.25),
        ("sparsity", torch.tensor(0.5, dtype=torch.float64), 0.5),
        ("sparsity", np.array(0.5), 0.5),
        ("block_size", np.int64(8), 8),
        ("block_size", torch.tensor(4), 4),
        ("percdamp", np.float32(0.125), 0.125),
        ("percdamp", torch.tensor(0.125), 0.125),
    ],
)
def test_numpy_and_0d_tensor_numbers_are_numbers(name, value, plain):
    """``np.float32(0.5)``, ``torch.tensor(0.5)``, ``np.int64(8)`` are the numbers they hold: the
    result is bit-identical to passing the plain Python number (the same code runs twice)."""
    rng = np.random.default_rng(2)
    W = rng.standard_normal((4, 16))
    H = S.spd_with_condition(16, 10.0, rng)
    base = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=8, percdamp=0.01)
    for prune, Wt, Ht in ((reference.prune, W, H), (thanos.prune, torch.tensor(W), torch.tensor(H))):
        a = prune(Wt, Ht, **{**base, name: value})
        b = prune(Wt, Ht, **{**base, name: plain})
        assert np.array_equal(np.asarray(a.weight), np.asarray(b.weight)) and a.damping == b.damping
    assert thanos.prune(torch.tensor(W), torch.tensor(H), max_extra_memory=np.int64(1 << 20), **base).sparsity == 0.5


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sparsity=True), "sparsity must be a number in"),
        (dict(sparsity=torch.tensor(True)), "sparsity must be a number in"),
        (dict(sparsity=torch.tensor([0.5])), "sparsity must be a number in"),
        (dict(block_size=torch.tensor(4.0)), "block_size must be a positive integer"),
        (dict(block_size=np.bool_(True)), "block_size must be a positive integer"),
        (dict(pattern="\uff11:\uff14", sparsity=None), "pattern must be"),
        (dict(pattern="\uff12:\uff14", sparsity=None), "pattern must be"),
    ],
)
def test_refused_edges_say_what_is_wrong(change, message):
    """Booleans are not numbers, a float is not a block size, a 1-element array is not a number,
    and only ASCII digits make an N:M pattern (full-width "１:４" once parsed as 1:4)."""
    W = np.ones((2, 8))
    H = np.eye(8)
    kwargs = {**dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=4), **change}
    with pytest.raises(ValueError, match=message):
        reference.prune(W, H, **kwargs)
    with pytest.raises(ValueError, match=message):
        thanos.prune(torch.tensor(W), torch.tensor(H), **kwargs)


def test_integer_weights_are_refused_by_both_with_the_same_message():
    H = np.eye(8)
    for W in (np.arange(16).reshape(2, 8), np.ones((2, 8), dtype=bool)):
        with pytest.raises(ValueError) as ref_error:
            reference.prune(W, H, method="wanda", pattern="unstructured", sparsity=0.5)
        with pytest.raises(ValueError) as prod_error:
            thanos.prune(torch.tensor(W), torch.tensor(H), method="wanda", pattern="unstructured", sparsity=0.5)
        assert str(ref_error.value).split(", got")[0] == str(prod_error.value).split(", got")[0] == "W must be a floating-point array or tensor"


@pytest.mark.parametrize("which", ["W", "H"])
def test_meta_tensors_are_refused_by_name(which):
    W, H = torch.ones(2, 8), torch.eye(8)
    if which == "W":
        W = W.to("meta")
    else:
        H = H.to("meta")
    with pytest.raises(ValueError, match=f"^{which} is on the 'meta' device"):
        thanos.prune(W, H, method="thanos", pattern="unstructured", sparsity=0.5)


# ------------------------------------------------------------------ structured, compute dtype
@pytest.mark.parametrize("alpha, c, achieved", [(0.99, 8, 0.125), (0.5, 4, 0.5), (0.75, 4, 0.25)])
def test_structured_request_that_cannot_be_met_warns(alpha, c, achieved):
    """p = 0.5 with alpha = 0.99 on 8 rows: ceil(p b / (1 - alpha)) > b, so every column goes from
    the 1 row that is not an outlier: effective sparsity 1/8 = 0.125, said in a warning (both
    implementations, same words). With alpha = 0.5 on 4 rows the request is met exactly: no word."""
    rng = np.random.default_rng(4)
    b = 16
    W = rng.standard_normal((c, b))
    H = S.spd_with_condition(b, 10.0, rng)
    prod, prod_warnings, ref, ref_warnings = _both(W, H, method="thanos", pattern="structured", sparsity=0.5 if alpha != 0.75 else 0.3, alpha=alpha)
    assert prod_warnings == ref_warnings
    assert ref.sparsity == prod.sparsity == pytest.approx(achieved, rel=T.rounding_tol(1), abs=0)
    if alpha == 0.5:
        assert ref_warnings == []
    else:
        assert len(ref_warnings) == 1 and re.search(rf"requested sparsity 0\.[35], achieved {achieved:g}$", ref_warnings[0]), ref_warnings


def test_float64_weights_compute_in_float64_by_default():
    """DESIGN: float64 weights are solved in float64 unless asked otherwise. On kappa = 1e6 the
    default must meet the float64 tolerance against the reference (float32 would miss it by
    ~1e8), and equal an explicit compute_dtype=torch.float64 bit for bit (the same code)."""
    rng = np.random.default_rng(6)
    b = 32
    W = rng.standard_normal((8, b))
    H = S.spd_with_condition(b, 1e6, rng)
    kwargs = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=8)
    default = thanos.prune(torch.tensor(W), torch.tensor(H), **kwargs)
    explicit = thanos.prune(torch.tensor(W), torch.tensor(H), compute_dtype=torch.float64, **kwargs)
    assert torch.equal(default.weight, explicit.weight) and default.weight.dtype == torch.float64
    ref = reference.prune(W, H, **kwargs)
    kappa = T.condition_number(H + ref.damping * np.eye(b))
    T.assert_close(default.weight.numpy(), ref.weight, tol=T.solve_tol(b, kappa), scale=np.abs(W).max(), kappa=kappa, what="float64 default")
    # an explicit float32 still wins (and rounds like float32)
    as32 = thanos.prune(torch.tensor(W), torch.tensor(H), compute_dtype=torch.float32, **kwargs)
    assert as32.weight.dtype == torch.float64 and not torch.equal(as32.weight, default.weight)
    for low in (torch.float32, torch.float16, torch.bfloat16):  # and the others stay in float32
        r = thanos.prune(torch.tensor(W).to(low), torch.tensor(H), **kwargs)
        r32 = thanos.prune(torch.tensor(W).to(low), torch.tensor(H), compute_dtype=torch.float32, **kwargs)
        assert torch.equal(r.weight, r32.weight)


def _one_layer_in_both(method, *, c, b, extra_rows, seed):
    """[(prune, W, H)] for ``reference.prune`` (NumPy) and ``thanos.prune`` (torch) on one random
    layer: W (c, b) and H = X^T X / n of n = b + extra_rows Gaussian rows (positive definite with
    probability 1); H None for magnitude, which takes none."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((b + extra_rows, b))
    W = rng.standard_normal((c, b))
    H = None if method == "magnitude" else X.T @ X / X.shape[0]
    return [(reference.prune, W, H), (thanos.prune, torch.tensor(W), None if H is None else torch.tensor(H))]


def _assert_same_bits(a, b):
    """Two results of the same code on the same values (a default against the value it stands for):
    the same weights and mask, bit for bit."""
    assert (np.asarray(a.weight) == np.asarray(b.weight)).all()
    assert (np.asarray(a.mask) == np.asarray(b.mask)).all()


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "structured", "2:4", "4:8"])
@pytest.mark.parametrize("b", [1024 + 8, spec.WHOLE_LAYER_MAX_COLUMNS + 8])
def test_block_size_none_means_the_documented_default_in_both(method, pattern, b):
    """``block_size=None`` (the default of ``reference.prune``, ``thanos.prune``, ``prune_model`` and
    the CLI) is ``spec.default_block_size`` for the layer's width: the same result as passing that B
    (the same code runs twice on the same values, so the results are the same bits), a multiple of
    M for N:M. b = 1032 (under the whole-layer limit) and 1544 (over it) are both wider than every
    fixed B, so the blocks matter: at 2:4 Thanos' default is the whole layer at 1032 and B = 512 at
    1544, and the other B gives other weights."""
    B = thanos.default_block_size(method, pattern, b)
    kind, _, m = spec.parse_pattern(pattern)
    assert B >= 1 and (kind != "N:M" or B % m == 0)
    whole = method == "thanos" and pattern == "2:4" and b <= spec.WHOLE_LAYER_MAX_COLUMNS
    assert B == (b if whole else spec.fixed_block_size(method, pattern))
    sparsity = None if kind == "N:M" else 0.3
    for prune, w, h in _one_layer_in_both(method, c=6, b=b, extra_rows=68, seed=0):
        default = prune(w, h, method=method, pattern=pattern, sparsity=sparsity)
        explicit = prune(w, h, method=method, pattern=pattern, sparsity=sparsity, block_size=B)
        _assert_same_bits(default, explicit)
        if method == "thanos" and kind == "N:M":  # the test can tell the whole layer from the fixed B
            other = prune(w, h, method=method, pattern=pattern, block_size=512 if whole else b)
            assert not np.allclose(np.asarray(default.weight), np.asarray(other.weight))


def test_default_block_size_is_the_whole_layer_where_measured_else_per_pattern():
    """Thanos' default B: the whole layer (B = b) at the patterns of ``DEFAULT_WHOLE_LAYER`` up to
    ``WHOLE_LAYER_MAX_COLUMNS`` input columns; else looked up by the (N, M) the pattern parses to
    where the block-size study measured that pattern, else by the pattern's kind. Other methods
    have one B for every pattern and width."""
    limit = spec.WHOLE_LAYER_MAX_COLUMNS
    assert spec.DEFAULT_WHOLE_LAYER == {("N:M", 2, 4)}
    for pattern in ("unstructured", "structured", "2:4", "4:8", "1:4", "8:16", " 4 : 8 ", " 2 : 4 "):
        kind, n, m = spec.parse_pattern(pattern)
        fixed = spec.DEFAULT_BLOCK_SIZE_NM.get((n, m), spec.DEFAULT_BLOCK_SIZE["thanos"][kind])
        assert spec.fixed_block_size("thanos", pattern) == fixed
        for b in (16, 576, limit, limit + 16, 11008):
            whole = (kind, n, m) == ("N:M", 2, 4) and b <= limit
            assert thanos.default_block_size("thanos", pattern, b) == (b if whole else fixed)
            for method in ("sparsegpt", "wanda", "magnitude"):
                assert thanos.default_block_size(method, pattern, b) == spec.DEFAULT_BLOCK_SIZE["sparsegpt"]
    assert thanos.default_block_size("thanos", " 4 : 8 ", 64) == thanos.default_block_size("thanos", "4:8", 64)
    assert all(nm[0] < nm[1] and b % nm[1] == 0 for nm, b in spec.DEFAULT_BLOCK_SIZE_NM.items())


@pytest.mark.parametrize("method", spec.METHODS)
@pytest.mark.parametrize("pattern", ["unstructured", "structured", "2:4"])
def test_alpha_none_means_the_documented_default_in_both(method, pattern):
    """``alpha=None`` (the default of ``reference.prune``, ``thanos.prune``, ``prune_model`` and the
    CLI) is ``spec.default_alpha``: 0.2 for Thanos structured, 0 elsewhere; the same result as
    passing it (the same code runs twice on the same values: the same bits), and the outlier rows
    the result reports are floor(alpha c). c = 40 rows, so Thanos structured keeps floor(0.2 * 40)
    = 8 dense, and at p = 0.3 removes ceil(0.3 b / 0.8) = 12 of b = 32 columns from the other 32
    rows: an effective sparsity of 32 * 12 / (40 * 32) = 0.3, the request."""
    alpha = thanos.default_alpha(method, pattern)
    assert alpha == (spec.DEFAULT_ALPHA_STRUCTURED if (method, pattern) == ("thanos", "structured") else 0.0)
    assert spec.DEFAULT_ALPHA_STRUCTURED == 0.2  # the value the docstring's counts are derived for
    c, b = 40, 32
    sparsity = None if ":" in pattern else 0.3
    for prune, w, h in _one_layer_in_both(method, c=c, b=b, extra_rows=20, seed=1):
        default = prune(w, h, method=method, pattern=pattern, sparsity=sparsity)
        explicit = prune(w, h, method=method, pattern=pattern, sparsity=sparsity, alpha=alpha)
        _assert_same_bits(default, explicit)
        assert len(default.outlier_rows) == spec.outlier_row_count(alpha, c)
        if alpha > 0:
            assert len(default.outlier_rows) == 8 and default.sparsity == pytest.approx(0.3, abs=1e-12)
            zero = prune(w, h, method=method, pattern=pattern, sparsity=sparsity, alpha=0.0)
            assert len(zero.outlier_rows) == 0 and not (np.asarray(zero.mask) == np.asarray(default.mask)).all()


def test_default_alpha_names_a_wrong_argument():
    with pytest.raises(ValueError, match="method"):
        thanos.default_alpha("obs", "structured")
    with pytest.raises(ValueError, match="pattern"):
        thanos.default_alpha("thanos", "4:2")


def test_default_block_size_names_a_wrong_argument():
    with pytest.raises(ValueError, match="method"):
        thanos.default_block_size("obs", "2:4", 64)
    with pytest.raises(ValueError, match="pattern"):
        thanos.default_block_size("thanos", "4:2", 64)
    for columns in (0, -8, 64.0, True, None, "64"):
        with pytest.raises(ValueError, match="columns"):
            thanos.default_block_size("thanos", "2:4", columns)
