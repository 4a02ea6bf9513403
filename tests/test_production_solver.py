"""Differential tests of ``thanos.prune`` (production, torch) against ``reference.prune`` (float64 oracle).

What is compared, and to what tolerance (tests/tolerances.py has the derivations):

- float64 on the CPU (and CUDA when present): the same masks, counts, damping and outlier rows as
  the reference (tie-free Gaussian weights), weights within ``solve_tol(b, kappa)`` of the
  reference's, relative to max|W| (kappa: the condition number of the damped matrix both
  factor), and the loss within the same tolerance relative to ``quadratic_form_scale``.
- low precision, PyTorch test_ops style. The reference is float64-only, so "the same-dtype
  reference" is emulated as the float64 answer rounded to the dtype (``exact.astype(dtype)``), and
  the float64 answer is the reference run on the very inputs production got (the fp16/bf16 weights
  upcast). fp16/bf16 weights: production (float32 compute, one rounding at the end) may be at most
  ``LOW_PRECISION_FACTOR`` x that rounding error (+ 2 ulps) from the float64 answer: it must lose
  nothing beyond the final rounding. float32 weights: rounding-to-dtype would be a 1-ulp yardstick
  that no float32 solve can meet (its error is ``~ n kappa eps32``), so there the tolerance is the
  derived ``solve_tol(b, kappa, float32)``, relative to max|W| -- an honest float32 bound and still
  ~1e3 below what a wrong update (a sign, H for H^-1) produces. Low-precision draws keep kappa <=
  100 so that float32 rounding cannot flip a mask decision between two near-equal scores.
- invariants in every dtype: exact zeros at the mask, exact counts (floor(p c b), floor(p b) per
  Wanda row, strict N:M, whole structured columns, untouched outlier rows), the loss field equal to
  the loss recomputed from the returned weights, scaling H by 4^k bit-identical (every step of the
  solver is equivariant under it and powers of 4 scale exactly through the square roots), repeat
  runs bit-identical, inputs untouched, errors before any work.
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
from reference import spec
from thanos import solver

# The ``device`` fixture is a plain string, the same for every example: nothing to reset.
device_settings = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Layers small enough for the reference's Python loops (40 Hypothesis examples in seconds), with
# several blocks, rows of different counts per block, W and H anywhere in 1e-20 .. 1e20.
F64_LAYERS = dict(max_c=8, max_b=16, max_kappa=1e6, w_scale=S.SCALE_RANGE, h_scale=S.SCALE_RANGE)
LOW_LAYERS = dict(max_c=8, max_b=16, max_kappa=100.0, w_scale=(1e-3, 1e3), h_scale=(1e-3, 1e3))


# Every (method, pattern kind) gets its own test case, so none is left to the luck of the draw.
CASES = [(m, k) for m in ("thanos", "sparsegpt") for k in ("unstructured", "N:M", "structured")] + [
    ("wanda", "unstructured"), ("wanda", "N:M"), ("wanda", "structured"), ("magnitude", "unstructured"), ("magnitude", "N:M"),
    ("magnitude", "structured"),
]
CASE_IDS = [f"{m}-{k}" for m, k in CASES]


def _draw_case(data, case, **layer_options):
    """A layer (b even for N:M) and prune arguments of the given method and pattern kind."""
    method, kind = case
    if kind == "N:M":
        layer_options["b_multiple_of"] = 2
        layer_options["min_b"] = 2
    layer = data.draw(S.layers(**layer_options), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"], method_names=(method,), kinds=(kind,)), label="kwargs")
    return layer, kwargs


def _with_any_metric(data, kwargs):
    """``kwargs`` with a drawn ``metric`` where it applies (Thanos unstructured and N:M): the
    invariants below (counts, zeros, scaling, repeat runs) hold whatever score ranks the weights."""
    if kwargs["method"] == "thanos" and kwargs["pattern"] != "structured":
        return dict(kwargs, metric=data.draw(st.sampled_from(spec.METRICS), label="metric"))
    return kwargs


def _tie_free_in_half_precision(layer):
    """fp16/bf16 keep 11/8 significant bits, so rounded Gaussian weights tie often and a tie's
    winner is then decided by rounding noise in H. Here the magnitudes are a random permutation of
    a geometric grid over [1/4, 4] x w_scale with spacing 4/(c b) octaves: distinct after rounding
    for c b <= 128 (>= 2 % apart, above bf16's 0.8 % ulp); signs are W's."""
    W = layer.W
    rng = np.random.default_rng(layer.info["seed"])
    grid = 2.0 ** np.linspace(-2.0, 2.0, W.size) * layer.info["w_scale"]
    return layer._replace(W=np.sign(W) * rng.permutation(grid).reshape(W.shape))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _recording(prune, *args, **kwargs):
    """(result, warning messages) of one prune call; every warning must be a RuntimeWarning."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = prune(*args, **kwargs)
    assert all(w.category is RuntimeWarning for w in record), [str(w.message) for w in record]
    return result, [str(w.message) for w in record]


def _prune(W, H, **kwargs):
    """``thanos.prune`` whose warnings (dead columns beyond a group's count, a structured request
    that cannot be met, damping steps) are allowed; the differential tests compare them instead."""
    return _recording(thanos.prune, W, H, **kwargs)[0]


def _run_both(layer, kwargs, device, dtype="float64", compute_dtype=torch.float64):
    """Production on (W in ``dtype``, H in float64 or float32) and the reference on the same values;
    both must give the same warnings, word for word (the messages come from ``reference.spec``)."""
    tdtype = TORCH_DTYPES[dtype]
    W = torch.tensor(layer.W, dtype=torch.float64).to(tdtype).to(device)
    H = torch.tensor(layer.H, dtype=torch.float64 if dtype == "float64" else torch.float32).to(device)
    prod, prod_warnings = _recording(thanos.prune, W, H, compute_dtype=compute_dtype, **kwargs)
    ref, ref_warnings = _recording(reference.prune, _np(W), _np(H), **kwargs)
    assert prod_warnings == ref_warnings, f"{kwargs}: production warned {prod_warnings}, the reference {ref_warnings}"
    return W, H, prod, ref


def _kappa(H, damping) -> float:
    """Condition number of the matrix both solvers factor: dead columns' H_jj set to mean(diag H)
    of the input (reference.prepare_hessian), plus the damping."""
    Hp = np.array(H, dtype=np.float64, copy=True)
    dead = np.diag(Hp) == 0
    Hp[dead, dead] = float(np.mean(np.diag(Hp))) or 1.0
    return T.condition_number(Hp + (damping or 0.0) * np.eye(Hp.shape[0]))


def _assert_same_decisions(prod, ref, what):
    mask = prod.mask.cpu().numpy()
    assert mask.dtype == np.bool_
    if not np.array_equal(mask, ref.mask):
        bad = np.argwhere(mask != ref.mask)
        raise AssertionError(f"{what}: masks differ at {len(bad)} entries, first {tuple(bad[0])}")
    assert prod.sparsity == ref.sparsity, what
    assert prod.outlier_rows == ref.outlier_rows, what
    assert prod.damping == ref.damping, f"{what}: damping {prod.damping!r} vs reference {ref.damping!r}"


# --------------------------------------------------------------------------- float64 differential
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@device_settings
@given(data=st.data())
def test_float64_matches_reference(device, case, data):
    layer, kwargs = _draw_case(data, case, **F64_LAYERS)
    _check_float64_against_reference(layer, kwargs, device)


@pytest.mark.parametrize("metric", ["magnitude", "sparsegpt"])
@pytest.mark.parametrize("kind", ["unstructured", "N:M"])
@device_settings
@given(data=st.data())
def test_float64_matches_reference_with_another_metric(device, kind, metric, data):
    """``metric=``: Thanos' mask by |W| or by SparseGPT's w^2 / [H_F^-1]_jj (the reference's
    ``equations.sparsegpt_metric`` from its own factor), the same masks and weights as the reference."""
    layer, kwargs = _draw_case(data, ("thanos", kind), **F64_LAYERS)
    _check_float64_against_reference(layer, dict(kwargs, metric=metric), device)


def _check_float64_against_reference(layer, kwargs, device):
    W, H, prod, ref = _run_both(layer, kwargs, device)
    what = f"{kwargs}"
    assert prod.weight.dtype == torch.float64 and prod.weight.device.type == device
    _assert_same_decisions(prod, ref, what)
    weight = _np(prod.weight)
    T.assert_exactly_zero(weight, ref.mask, what=what)
    if kwargs["method"] in ("wanda", "magnitude"):
        assert np.array_equal(weight, ref.weight), f"{what}: masks only, weights must be W * ~mask exactly"
        tol = T.rounding_tol(layer.info["b"])
    else:
        kappa = _kappa(layer.H, ref.damping)
        note(f"kappa of the damped H: {kappa:.3g}")
        tol = T.solve_tol(layer.info["b"], kappa)
        T.assert_close(weight, ref.weight, tol=tol, scale=float(np.abs(layer.W).max()), kappa=kappa, what=f"{what}: weights")
    D = ref.weight - layer.W
    T.assert_scalar_close(prod.loss, ref.loss, tol=2 * tol, scale=T.quadratic_form_scale(D, layer.H) + T.quadratic_form_scale(layer.W, layer.H) * tol, what=f"{what}: loss")


@device_settings
@given(st.data())
def test_float64_matches_reference_with_dead_and_duplicated_columns(device, data):
    """Dead columns (H_jj = 0: W[:, j] zeroed, H_jj set to 1) and a singular H (duplicated columns
    or fewer tokens than features, fixed by the damping) give the reference's answer."""
    layer = data.draw(S.layers(max_c=6, max_b=12, max_kappa=1e4, hessian="tokens", rank_deficient=None,
                               dead_columns=data.draw(st.booleans(), label="dead"), duplicate_columns=True), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"], method_names=("thanos", "sparsegpt")), label="kwargs")
    kwargs = _with_any_metric(data, kwargs)  # every score puts dead weights first
    W, H, prod, ref = _run_both(layer, kwargs, device)
    _assert_same_decisions(prod, ref, f"{kwargs}")
    kappa = _kappa(layer.H, ref.damping)
    tol = T.solve_tol(layer.info["b"], kappa)
    T.assert_close(_np(prod.weight), ref.weight, tol=tol, scale=float(np.abs(layer.W).max()), kappa=kappa, what=f"{kwargs}: weights")


@device_settings
@given(data=st.data())
def test_undamped_singular_h_steps_damping_like_the_reference(device, data):
    """percdamp = 0 on a rank-deficient H: a load counts as failed when Cholesky breaks down or the
    damped H is numerically singular (reference.prepare_hessian); production must step through the
    same loads, with the same warnings, and then agree with the reference."""
    layer = data.draw(S.layers(max_c=6, max_b=12, max_kappa=1e4, hessian="tokens", rank_deficient=True), label="layer")
    method = data.draw(st.sampled_from(["thanos", "sparsegpt"]), label="method")
    kwargs = dict(method=method, pattern="unstructured", sparsity=0.5, percdamp=0.0)
    with warnings.catch_warnings(record=True) as prod_warnings:
        warnings.simplefilter("always")
        prod = thanos.prune(torch.tensor(layer.W, device=device), torch.tensor(layer.H, device=device),
                            compute_dtype=torch.float64, **kwargs)
    with warnings.catch_warnings(record=True) as ref_warnings:
        warnings.simplefilter("always")
        ref = reference.prune(layer.W, layer.H, **kwargs)
    assert [str(w.message) for w in prod_warnings] == [str(w.message) for w in ref_warnings]
    _assert_same_decisions(prod, ref, f"{kwargs}")


def test_golden_medium_layer_many_blocks_and_chunks(device):
    """A layer large enough for the batched paths: 48 rows of 96 columns, blocks of 32, so every
    block holds rows of many different counts (chunked, padded); and once more with a budget so
    small that every row is its own chunk: the same masks, and weights equal to rounding."""
    rng = np.random.default_rng(7)
    b, c = 96, 48
    H = S.spd_with_condition(b, 1e3, rng)
    W = rng.standard_normal((c, b))
    for kwargs in (dict(method="thanos", pattern="unstructured", sparsity=0.6, block_size=32),
                   dict(method="thanos", pattern="4:8", block_size=32),
                   dict(method="thanos", pattern="structured", sparsity=0.3, alpha=0.25),
                   dict(method="sparsegpt", pattern="unstructured", sparsity=0.6, block_size=32)):
        ref = reference.prune(W, H, **kwargs)
        kappa = _kappa(H, ref.damping)
        for budget in (None, 1):
            prod = thanos.prune(torch.tensor(W, device=device), torch.tensor(H, device=device),
                                compute_dtype=torch.float64, max_extra_memory=budget, **kwargs)
            _assert_same_decisions(prod, ref, f"{kwargs} budget={budget}")
            T.assert_close(_np(prod.weight), ref.weight, tol=T.solve_tol(b, kappa), scale=np.abs(W).max(), kappa=kappa,
                           what=f"{kwargs} budget={budget}")


def test_explicit_trailing_inverse_variant_agrees(device):
    """The benchmark-only variant (``torch.linalg.inv(H[j:, j:])`` per block) is the same algorithm."""
    rng = np.random.default_rng(3)
    b, c = 64, 24
    H = S.spd_with_condition(b, 1e2, rng)
    W = rng.standard_normal((c, b))
    kwargs = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=16)
    ref = reference.prune(W, H, **kwargs)
    prod = solver._prune(torch.tensor(W, device=device), torch.tensor(H, device=device), alpha=0.0, percdamp=0.01,
                         compute_dtype=torch.float64, allow_tf32=False, max_extra_memory=None,
                         explicit_trailing_inverse=True, **{k: v for k, v in kwargs.items()})
    _assert_same_decisions(prod, ref, "explicit trailing inverse")
    T.assert_close(_np(prod.weight), ref.weight, tol=T.solve_tol(b, _kappa(H, ref.damping)), scale=np.abs(W).max(), what="explicit")


# ---------------------------------------------------------------------- low-precision differential
@pytest.mark.parametrize("case", CASES[:6], ids=CASE_IDS[:6])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@device_settings
@given(data=st.data())
def test_low_precision_no_worse_than_reference(device, dtype, case, data):
    layer, kwargs = _draw_case(data, case, **LOW_LAYERS)
    if dtype in ("float16", "bfloat16"):
        layer = _tie_free_in_half_precision(layer)
    W, H, prod, ref = _run_both(layer, kwargs, device, dtype=dtype, compute_dtype=torch.float32)
    what = f"{dtype} {kwargs}"
    assert prod.weight.dtype == TORCH_DTYPES[dtype] and prod.weight.device.type == device
    _assert_same_decisions(prod, ref, what)
    weight = _np(prod.weight)
    T.assert_exactly_zero(weight, ref.mask, what=what)
    exact = ref.weight  # float64 answer on the inputs production got
    if dtype == "float32":
        kappa = _kappa(_np(H), ref.damping) if ref.damping is not None else 1.0
        T.assert_close(weight, exact, tol=T.solve_tol(layer.info["b"], kappa, "float32"),
                       scale=float(np.abs(_np(W)).max()), kappa=kappa, dtype="float32", what=what)
    else:
        rounded = exact.astype(np.float32)  # numpy has no bfloat16: round through torch
        rounded = torch.tensor(rounded).to(TORCH_DTYPES[dtype]).double().numpy()
        T.assert_no_worse_than_reference(weight, rounded, exact, dtype=dtype, what=what)


# ------------------------------------------------------------------------ invariants, every dtype
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@device_settings
@given(data=st.data())
def test_counts_zeros_and_loss_in_every_dtype(device, dtype, data):
    """Exact counts, exact zeros, strict N:M, whole structured columns, outlier rows untouched, and
    ``loss`` equal to the loss of the returned weights (float32/float64 weights: the loss is
    computed from the weights before the final cast, so fp16/bf16 are held to the count checks)."""
    layer = data.draw(S.layers(**LOW_LAYERS, b_multiple_of=data.draw(st.sampled_from([1, 4]), label="b multiple")), label="layer")
    b, c = layer.info["b"], layer.info["c"]
    kwargs = data.draw(S.prune_arguments(b), label="kwargs")
    kwargs = _with_any_metric(data, kwargs)
    tdtype = TORCH_DTYPES[dtype]
    W = torch.tensor(layer.W).to(tdtype).to(device)
    H = torch.tensor(layer.H, dtype=torch.float32).to(device)
    compute = torch.float64 if dtype == "float64" else torch.float32
    res = _prune(W, H, compute_dtype=compute, **kwargs)
    mask = res.mask.cpu().numpy()
    weight = _np(res.weight)
    what = f"{dtype} {kwargs}"
    T.assert_exactly_zero(weight, mask, what=what)
    opts = spec.check_arguments((c, b), (b, b), **kwargs, percdamp=0.01)
    count = int(mask.sum())
    assert res.sparsity == count / mask.size
    if opts.kind == "unstructured":
        if kwargs["method"] == "wanda":
            assert (mask.sum(1) == spec.per_row_count(opts.sparsity, b)).all(), what
        else:
            assert count == spec.unstructured_count(opts.sparsity, c * b), what
    elif opts.kind == "N:M":
        groups = mask.reshape(c, b // opts.m, opts.m).sum(2)
        dense = np.zeros(c, dtype=bool)
        dense[res.outlier_rows] = True
        assert (groups[~dense] == opts.n).all() and (groups[dense] == 0).all(), what
    else:
        s = spec.structured_column_count(opts.sparsity, opts.alpha, b)
        pruned_rows = np.setdiff1d(np.arange(c), res.outlier_rows)
        columns = mask[pruned_rows].any(0)
        assert columns.sum() == s and mask[np.ix_(pruned_rows, np.flatnonzero(columns))].all(), what
        assert not mask[res.outlier_rows].any(), what
    assert len(res.outlier_rows) == spec.outlier_row_count(opts.alpha, c)
    original = _np(W)
    if res.outlier_rows:
        rows_in = original[res.outlier_rows]
        rows_out = weight[res.outlier_rows]
        dead = np.diag(layer.H) == 0
        assert np.array_equal(rows_out[:, ~dead], rows_in[:, ~dead]), f"{what}: outlier rows must stay untouched"
    if dtype in ("float64", "float32"):
        H64 = _np(H)
        recomputed = reference.layer_loss(original, weight, H64)
        D = weight - original
        scale = T.quadratic_form_scale(D, H64)
        if kwargs["method"] == "thanos" and opts.kind == "structured":
            # low-rank evaluation (solver._thanos_structured): it also rounds the update X R once
            # more, an error of eps |W| per entry, i.e. up to |D||H||W| eps in the loss
            scale += T.quadratic_form_scale(np.abs(D) + np.abs(original), H64)
        T.assert_scalar_close(res.loss, recomputed, tol=T.rounding_tol(b, dtype), scale=scale, dtype=dtype, what=f"{what}: loss")


@device_settings
@given(st.data())
def test_scaling_h_by_powers_of_four_is_bit_identical(device, data):
    """Every step of the solver is equivariant under H -> 4^k H (damping scales with mean diag H,
    square roots of 4^k are exact), so masks and weights must be bit-identical and the loss x 4^k."""
    layer = data.draw(S.layers(max_c=8, max_b=16, max_kappa=1e4), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"]), label="kwargs")
    kwargs = _with_any_metric(data, kwargs)
    k = data.draw(st.integers(-20, 20), label="k")
    compute = data.draw(st.sampled_from([torch.float32, torch.float64]), label="compute")
    W = torch.tensor(layer.W, dtype=torch.float32, device=device)
    H = torch.tensor(layer.H, dtype=torch.float32, device=device)
    a = _prune(W, H, compute_dtype=compute, **kwargs)
    b = _prune(W, H * 4.0**k, compute_dtype=compute, **kwargs)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight), f"{kwargs} k={k}"
    assert b.loss == a.loss * 4.0**k
    assert (a.damping is None and b.damping is None) or b.damping == a.damping * 4.0**k


@device_settings
@given(st.data())
def test_scaling_h_by_any_factor_changes_nothing(device, data):
    layer = data.draw(S.layers(max_c=8, max_b=16, max_kappa=1e4), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"]), label="kwargs")
    kwargs = _with_any_metric(data, kwargs)
    scale = data.draw(S.scales(1e-12, 1e12), label="scale")
    W = torch.tensor(layer.W, device=device)
    a = _prune(W, torch.tensor(layer.H, device=device), compute_dtype=torch.float64, **kwargs)
    b = _prune(W, torch.tensor(layer.H * scale, device=device), compute_dtype=torch.float64, **kwargs)
    assert torch.equal(a.mask, b.mask), kwargs
    if a.damping is not None:
        kappa = _kappa(layer.H, a.damping)
        T.assert_close(_np(b.weight), _np(a.weight), tol=T.solve_tol(layer.info["b"], kappa), scale=np.abs(layer.W).max(), kappa=kappa, what=f"{kwargs}")


@device_settings
@given(st.data())
def test_repeat_runs_are_bit_identical_and_inputs_untouched(device, data):
    layer = data.draw(S.layers(max_c=8, max_b=16, max_kappa=1e4), label="layer")
    kwargs = data.draw(S.prune_arguments(layer.info["b"]), label="kwargs")
    kwargs = _with_any_metric(data, kwargs)
    dtype = data.draw(st.sampled_from(list(TORCH_DTYPES)), label="dtype")
    W = torch.tensor(layer.W).to(TORCH_DTYPES[dtype]).to(device)
    H = torch.tensor(layer.H, dtype=torch.float32, device=device)
    W_before, H_before = W.clone(), H.clone()
    a = _prune(W, H, **kwargs)
    b = _prune(W, H, **kwargs)
    assert torch.equal(W, W_before) and torch.equal(H, H_before), "prune modified its input"
    assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask) and a.loss == b.loss


def test_tf32_flags_are_restored():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        thanos.prune(torch.randn(4, 8), torch.eye(8), method="thanos", pattern="2:4", block_size=4)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)
        thanos.prune(torch.randn(4, 8), torch.eye(8), method="thanos", pattern="2:4", block_size=4, allow_tf32=True)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# -------------------------------------------------------------------------------- golden cases
def test_golden_magnitude_and_wanda():
    """torchao-style hand case: X norms [100, 10, 1, 0.1] on W = [1, 2, 3, 4]; Wanda's psi is
    [100, 20, 3, 0.4] so half sparsity keeps columns 0 and 1; magnitude keeps 3 and 4."""
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    H = torch.diag(2 * torch.tensor([100.0, 10.0, 1.0, 0.1]) ** 2)
    wanda = thanos.prune(W, H, method="wanda", pattern="unstructured", sparsity=0.5)
    assert wanda.weight.tolist() == [[1.0, 2.0, 0.0, 0.0]]
    magnitude = thanos.prune(W, None, method="magnitude", pattern="unstructured", sparsity=0.5)
    assert magnitude.weight.tolist() == [[0.0, 0.0, 3.0, 4.0]] and magnitude.loss is None and magnitude.damping is None


def test_golden_ties_break_by_row_major_position():
    """Equal scores: the global residual mask takes the earliest in row-major order, like
    np.argsort(kind='stable'); the per-row and N:M masks the earliest column."""
    W = torch.tensor([[1.0, 1.0, 2.0, 1.0], [1.0, 2.0, 1.0, 1.0]])
    mag = thanos.prune(W, None, method="magnitude", pattern="unstructured", sparsity=3 / 8)
    assert mag.mask.tolist() == [[True, True, False, True], [False, False, False, False]]
    nm = thanos.prune(W, None, method="magnitude", pattern="2:4", block_size=4)
    assert nm.mask.tolist() == [[True, True, False, False], [True, False, True, False]]
    for kwargs in (dict(pattern="unstructured", sparsity=3 / 8), dict(pattern="2:4")):
        ref = reference.prune(W.double().numpy(), None, method="magnitude", **kwargs)
        assert np.array_equal(thanos.prune(W, None, method="magnitude", **kwargs).mask.numpy(), ref.mask)
    wanda = thanos.prune(W, torch.eye(4), method="wanda", pattern="unstructured", sparsity=0.5)
    assert wanda.mask.tolist() == [[True, True, False, False], [True, False, True, False]], wanda.mask
    ref = reference.prune(W.double().numpy(), np.eye(4), method="wanda", pattern="unstructured", sparsity=0.5)
    assert np.array_equal(wanda.mask.numpy(), ref.mask)


def test_golden_thanos_one_block_is_the_fixed_mask_optimum():
    """Thanos with one block (B = b) on a 2-column row: removing w_1 from w = [1, 1] with
    H = [[2, 1], [1, 2]] moves w_0 by w_1 H_10 / H_00 = 0.5 (least squares), loss 3/4."""
    W = torch.tensor([[1.0, 1.0 + 1e-9]], dtype=torch.float64)
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    res = thanos.prune(W, H, method="thanos", pattern="unstructured", sparsity=0.5, percdamp=0.0, compute_dtype=torch.float64)
    assert res.mask.tolist() == [[True, False]]
    assert abs(res.weight[0, 1].item() - (1.0 + 1e-9 + 0.5)) < 1e-14
    assert abs(res.loss - 0.75) < 1e-14


@pytest.mark.parametrize("metric", spec.METRICS)
def test_golden_metric_ranks_one_block_by_its_formula(metric):
    """One block covering the layer, unstructured: the mask is the r smallest scores of the
    original weights. With H = diag(h), derived by hand: psi = |W| sqrt(h / 2); |W|; SparseGPT's
    w^2 / [(H_{j:, j:})^-1]_00 = w^2 (h_j + lambda) with the damped diagonal H, i.e. |W| sqrt(h + lambda).
    Exact mask equality is safe: at this seed the 120th and 121st scores are 1.0 %, 2.3 % and 1.3 %
    apart (psi, |W|, sparsegpt), some 1e13 times the few ulps by which the solvers' factors of a
    diagonal H can round the scale (a diagonal Cholesky has no sums, so no BLAS differs there)."""
    gen = torch.Generator().manual_seed(3)
    c, b = 12, 20
    W = torch.randn(c, b, generator=gen, dtype=torch.float64)
    h = torch.rand(b, generator=gen, dtype=torch.float64) * 10 + 0.1
    H = torch.diag(h)
    percdamp = 0.01
    damping = percdamp * float(h.mean())
    scores = {"psi": W.abs() * (h / 2).sqrt(), "magnitude": W.abs(), "sparsegpt": W.abs() * (h + damping).sqrt()}[metric]
    expected = torch.zeros(c * b, dtype=torch.bool)
    expected[torch.argsort(scores.reshape(-1))[: c * b // 2]] = True
    kwargs = dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=b, percdamp=percdamp, metric=metric)
    prod = thanos.prune(W, H, compute_dtype=torch.float64, **kwargs)
    ref = reference.prune(W.numpy(), H.numpy(), **kwargs)
    assert torch.equal(prod.mask.reshape(-1), expected)
    assert np.array_equal(ref.mask.reshape(-1), expected.numpy())


def test_metric_changes_the_mask_of_a_correlated_layer():
    """On a layer with correlated inputs the three scores rank differently (so the option reaches the
    solver), each one's mask is the reference's, and the psi mask is the default's."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((24, 200)) * np.geomspace(0.1, 10.0, 24)[:, None]
    X[1::2] += 0.9 * X[::2]  # neighbouring features correlated: the OBS saliency differs from psi
    H = reference.hessian(X)
    W = rng.standard_normal((10, 24))
    masks = {}
    for metric in spec.METRICS:
        kwargs = dict(method="thanos", pattern="2:4", block_size=8, metric=metric)
        prod = thanos.prune(torch.tensor(W), torch.tensor(H), compute_dtype=torch.float64, **kwargs)
        ref = reference.prune(W, H, **kwargs)
        assert np.array_equal(prod.mask.numpy(), ref.mask), metric
        masks[metric] = ref.mask
    assert not np.array_equal(masks["psi"], masks["sparsegpt"]) and not np.array_equal(masks["psi"], masks["magnitude"])
    default = thanos.prune(torch.tensor(W), torch.tensor(H), method="thanos", pattern="2:4", block_size=8, compute_dtype=torch.float64)
    assert np.array_equal(default.mask.numpy(), masks["psi"])


def test_golden_singular_h_warns_and_records_damping():
    """percdamp = 0 on a rank-one H: the first Cholesky fails exactly, the second load (1e-7 mean
    diag) works; the warning and the recorded damping are the reference's."""
    X = torch.ones(3, 5, dtype=torch.float64)
    H = 2 * X @ X.T
    W = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    with pytest.warns(RuntimeWarning, match="Cholesky factorisation failed with damping 0"):
        res = thanos.prune(W, H, method="thanos", pattern="unstructured", sparsity=0.5, percdamp=0.0)
    with pytest.warns(RuntimeWarning):
        ref = reference.prune(W.numpy(), H.numpy(), method="thanos", pattern="unstructured", sparsity=0.5, percdamp=0.0)
    assert res.damping == ref.damping == pytest.approx(1e-7 * 10.0)
    assert np.array_equal(res.mask.numpy(), ref.mask)


def test_hopeless_h_raises_after_the_damping_schedule():
    """float16 H of size 64 with a block [[1, 50], [50, 1]]: PSD within float16's tolerance
    (30 * 64 * 2^-10 x lambda_max), but no load of the schedule (percdamp 1e-12: up to 1 x
    mean(diag H)) makes it positive definite: every load warns, then LinAlgError, as the reference."""
    H = torch.eye(64, dtype=torch.float64)
    H[0, 1] = H[1, 0] = 50.0
    H = H.to(torch.float16)
    W = torch.ones(2, 64, dtype=torch.float64)
    loads = list(spec.damping_schedule(1e-12, 1.0))
    for compute in (torch.float32, torch.float64):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(torch.linalg.LinAlgError, match=re.escape(spec.damping_error(loads[-1]))):
                thanos.prune(W, H, method="sparsegpt", pattern="unstructured", sparsity=0.5, percdamp=1e-12, compute_dtype=compute)
        assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == len(loads) - 1


# ------------------------------------------------------------------------------------- errors
_GOOD = dict(method="thanos", pattern="unstructured", sparsity=0.5)


def _bad_cases():
    W, H = torch.randn(4, 8), torch.eye(8)
    nan_W = W.clone()
    nan_W[1, 2] = float("nan")
    inf_H = H.clone()
    inf_H[3, 3] = float("inf")
    asym = H.clone()
    asym[0, 1] = 1.0
    return [
        (nan_W, H, {}, "W contains NaN or Inf"),
        (W, inf_H, {}, "H contains NaN or Inf"),
        (W, asym, {}, "H is not symmetric"),
        (W, -H, {}, "H is not positive semi-definite: its diagonal"),
        (W, torch.eye(7), {}, "H must be square"),
        (W, None, {}, "H is required"),
        (W, H, dict(sparsity=1.0), "sparsity must be a number"),
        (W, H, dict(sparsity=-0.1), "sparsity must be a number"),
        (W, H, dict(pattern="3:2", sparsity=None), "N:M needs"),
        (W, H, dict(pattern="2:3", sparsity=None), "divisible by M"),
        (W, H, dict(method="obs"), "method must be one of"),
        (W, H, dict(block_size=0), "block_size must be a positive integer"),
        (W, H, dict(alpha=0.5), "alpha"),
        (W, H, dict(percdamp=-1.0), "percdamp"),
        (W, H, dict(metric="hessian"), "metric must be one of"),
        (W, H, dict(metric="sparsegpt", method="wanda"), "metric"),
        (W, H, dict(metric="sparsegpt", pattern="structured"), "metric"),
        (W, H, dict(compute_dtype=torch.float16), "compute_dtype"),
        (W, H, dict(max_extra_memory=0), "max_extra_memory"),
        (W.numpy(), H, {}, "W must be a torch.Tensor"),
        (W, H.numpy(), {}, "H must be a torch.Tensor"),
        (torch.ones(4, 8, dtype=torch.int64), H, {}, "W must be a floating-point"),
        (torch.zeros(0, 8), H, {}, "W must be a non-empty"),
    ]


@pytest.mark.parametrize("W, H, change, message", _bad_cases(), ids=[f"{i}-{case[3]}" for i, case in enumerate(_bad_cases())])
def test_bad_arguments_raise_value_error_before_any_work(W, H, change, message):
    W_before = W.clone() if isinstance(W, torch.Tensor) else W.copy()
    with pytest.raises(ValueError, match=message):
        thanos.prune(W, H, **{**_GOOD, **change})
    if isinstance(W, torch.Tensor):  # no arithmetic: the input must be the very values it was
        torch.testing.assert_close(W, W_before, rtol=0, atol=0, equal_nan=True)
