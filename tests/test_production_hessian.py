"""``thanos.HessianAccumulator``: the streamed H equals the one-shot ``2/N X^T X`` whatever the split.

Tolerance (tests/tolerances.py): each entry of H is a sum of N products plus one rescaling per
batch, so its rounding error is at most ``gamma_{N + batches} * sum_t |x_ti||x_tj| * 2/N``, and by
Cauchy-Schwarz that sum is at most ``sqrt(H_ii H_jj) <= max|H|``: hence
``rounding_tol(N + batches, dtype)`` relative to max|H|, the yardstick ``assert_close`` uses.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies as S
import thanos
import tolerances as T

device_settings = settings(suppress_health_check=[*settings().suppress_health_check, HealthCheck.function_scoped_fixture])
ACCUMULATION = {"float32": torch.float32, "float64": torch.float64}


@st.composite
def batch_splits(draw):
    """Activations (N tokens, b features) of a chosen condition and scale, cut into batches of
    random sizes, each reshaped to a random (batch, seq, b) or (tokens, b) layout."""
    b = draw(st.integers(1, 12), label="b")
    tokens = draw(st.integers(1, 60), label="tokens")
    kappa = draw(S.kappas(1e4), label="kappa")
    scale = draw(S.scales(1e-6, 1e6), label="scale")
    seed = draw(S.seeds(), label="seed")
    X = S.calibration_input(b, tokens, kappa, np.random.default_rng(seed), scale=scale).T  # (tokens, b)
    cuts = sorted(draw(st.sets(st.integers(1, tokens - 1), max_size=6), label="cuts")) if tokens > 1 else []
    bounds = [0, *cuts, tokens]
    batches = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        chunk = X[lo:hi]
        n = hi - lo
        seq = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]), label="seq")
        batches.append(chunk.reshape(n // seq, seq, b) if draw(st.booleans(), label="3-d") else chunk)
    return X, batches


@device_settings
@pytest.mark.parametrize("accumulation", list(ACCUMULATION))
@given(case=batch_splits())
def test_streamed_hessian_equals_one_shot(device, accumulation, case):
    X, batches = case
    tokens, b = X.shape
    acc = thanos.HessianAccumulator(b, device=device, dtype=ACCUMULATION[accumulation])
    for batch in batches:
        acc.update(torch.tensor(batch, dtype=ACCUMULATION[accumulation], device=device))
    exact = 2.0 / tokens * X.T @ X
    tol = T.rounding_tol(tokens + len(batches), accumulation)
    H = acc.hessian
    assert H.shape == (b, b) and H.dtype == ACCUMULATION[accumulation] and H.device.type == device
    assert acc.tokens == tokens
    assert torch.equal(H, H.mT), "the returned H must be exactly symmetric"
    T.assert_close(H.cpu().double().numpy(), exact, tol=tol, what=f"streamed H, {len(batches)} batches", dtype=accumulation)
    # column norms from all batches: ||X_j|| / sqrt(N)
    norms = np.linalg.norm(X, axis=0) / np.sqrt(tokens)
    T.assert_close(acc.column_norms.cpu().double().numpy(), norms, tol=tol, what="column norms", dtype=accumulation)


@device_settings
@given(case=batch_splits())
def test_two_different_splits_agree(device, case):
    X, batches = case
    one = thanos.HessianAccumulator(X.shape[1], device=device, dtype=torch.float64)
    one.update(torch.tensor(X, device=device))
    many = thanos.HessianAccumulator(X.shape[1], device=device, dtype=torch.float64)
    for batch in batches:
        many.update(torch.tensor(batch, device=device))
    T.assert_close(many.hessian.cpu().numpy(), one.hessian.cpu().numpy(),
                   tol=T.rounding_tol(X.shape[0] + len(batches)), what="two splits")


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_half_precision_activations_are_upcast(device, low):
    """fp16/bf16 activations give exactly what their float32 upcast gives (no half-precision product)."""
    x = torch.randn(3, 5, 16).to(low).to(device)
    a = thanos.HessianAccumulator(16, device=device)
    a.update(x)
    b = thanos.HessianAccumulator(16, device=device)
    b.update(x.float())
    assert a.hessian.dtype == torch.float32 and torch.equal(a.hessian, b.hessian)


def test_golden_running_mean():
    """x = [1, 2] then x = [3, 0]: H = 2/2 ([1 2; 2 4] + [9 0; 0 0]) = [10 2; 2 4]."""
    acc = thanos.HessianAccumulator(2, dtype=torch.float64)
    acc.update(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert acc.hessian.tolist() == [[2.0, 4.0], [4.0, 8.0]] and acc.tokens == 1
    acc.update(torch.tensor([[3.0, 0.0]], dtype=torch.float64))
    assert acc.hessian.tolist() == [[10.0, 2.0], [2.0, 4.0]] and acc.tokens == 2
    assert acc.column_norms.tolist() == pytest.approx([np.sqrt(5.0), np.sqrt(2.0)], rel=4 * T.eps())
    acc.update(torch.zeros(0, 2, dtype=torch.float64))  # an empty batch changes nothing
    assert acc.tokens == 2 and acc.hessian.tolist() == [[10.0, 2.0], [2.0, 4.0]]


def test_streamed_hessian_prunes_like_the_one_shot_hessian():
    """The point of the accumulator: prune(W, streamed H) == prune(W, 2 X^T X) (any scale of H is
    immaterial), same mask."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 32))
    W = torch.tensor(rng.standard_normal((16, 32)))
    acc = thanos.HessianAccumulator(32, dtype=torch.float64)
    for lo in range(0, 200, 37):
        acc.update(torch.tensor(X[lo:lo + 37]).reshape(-1, 1, 32))
    a = thanos.prune(W, acc.hessian, method="thanos", pattern="unstructured", sparsity=0.5, block_size=8, compute_dtype=torch.float64)
    b = thanos.prune(W, torch.tensor(2.0 * X.T @ X), method="thanos", pattern="unstructured", sparsity=0.5, block_size=8, compute_dtype=torch.float64)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=T.solve_tol(32, 10.0) * float(W.abs().max()))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: thanos.HessianAccumulator(0), "columns"),
        (lambda: thanos.HessianAccumulator(4, dtype=torch.float16), "dtype"),
        (lambda: thanos.HessianAccumulator(4).update(torch.ones(3, 5)), r"shape \(\.\.\., 4\)"),
        (lambda: thanos.HessianAccumulator(4).update([1.0, 2.0, 3.0, 4.0]), "torch.Tensor"),
    ],
    ids=["columns", "dtype", "shape", "type"],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_non_finite_activations_are_refused_at_once_with_the_layer_name(device, bad, dtype):
    """NaN or Inf anywhere in a batch: ValueError naming the layer, raised by ``update`` itself
    (not later in ``prune``), and H and the token count are left exactly as they were."""
    acc = thanos.HessianAccumulator(6, device=device, name="model.layers.3.mlp.down_proj")
    acc.update(torch.randn(4, 6, device=device))
    before, tokens = acc.hessian.clone(), acc.tokens
    x = torch.randn(2, 5, 6, device=device).to(dtype)
    x[1, 3, 2] = bad
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.3\.mlp\.down_proj': x contains NaN or Inf"):
        acc.update(x)
    assert torch.equal(acc.hessian, before) and acc.tokens == tokens, "a refused batch must leave H untouched"


def test_huge_finite_activations_are_not_mistaken_for_non_finite():
    """The cheap finiteness test (one sum) overflows on huge finite values; the exact check then
    clears them: no error (the values themselves are finite)."""
    acc = thanos.HessianAccumulator(2, dtype=torch.float64)
    acc.update(torch.full((3, 2), 1e308, dtype=torch.float64))
    assert acc.tokens == 3


def test_name_is_in_every_error_message():
    name = "model.layers.0.self_attn.q_proj"
    where = re.escape(f"layer {name!r}: ")
    for make, message in [
        (lambda: thanos.HessianAccumulator(0, name=name), "columns must be a positive integer"),
        (lambda: thanos.HessianAccumulator(4, dtype=torch.float16, name=name), "dtype must be"),
        (lambda: thanos.HessianAccumulator(4, name=name).update(torch.ones(3, 5)), r"x must have shape \(\.\.\., 4\)"),
        (lambda: thanos.HessianAccumulator(4, name=name).update([1.0, 2.0, 3.0, 4.0]), "x must be a torch.Tensor"),
        (lambda: thanos.HessianAccumulator(4, name=name).update(torch.ones(3, 4, device="meta")), "x is on the 'meta' device"),
        (lambda: thanos.HessianAccumulator(4, name=name).update(torch.ones(3, 4, dtype=torch.complex64)), "x must hold real numbers"),
    ]:
        with pytest.raises(ValueError, match=where + message):
            make()
    with pytest.raises(ValueError, match="name must be a string"):
        thanos.HessianAccumulator(4, name=7)
    assert repr(thanos.HessianAccumulator(4, name=name)).startswith(f"HessianAccumulator(name={name!r}, columns=4")


def test_numpy_and_0d_integers_are_column_counts():
    """``np.int64(8)`` (what ``W.shape`` gives through NumPy) and a 0-d integer tensor are integers;
    a float 8.0 and a bool are not."""
    assert thanos.HessianAccumulator(np.int64(8)).columns == 8
    assert thanos.HessianAccumulator(torch.tensor(8)).columns == 8
    for bad in (8.0, True, np.float64(8.0)):
        with pytest.raises(ValueError, match="columns must be a positive integer"):
            thanos.HessianAccumulator(bad)
