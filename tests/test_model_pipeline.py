"""prune_model plumbing on tiny seeded LLaMA and OPT models (seconds, no real weights needed).

What the pipeline must do (DESIGN.md, "Model level"): capture every calibration batch, prune the
blocks in order, leave embeddings / norms / LM head untouched, feed block i+1 the *pruned* block
i's outputs, prune each Linear to its exact count, be deterministic, and refuse bad arguments
before touching the model.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import thanos
from reference import spec
from thanos.assets import tiny_model
from thanos.model import block_linears, decoder_layers, prune_model
from thanos.verify import expected_pruned, nm_violations

ARCHS = ("llama", "opt")
CASES = [
    ("thanos", "unstructured", 0.5, 0.0), ("thanos", "2:4", None, 0.0), ("thanos", "structured", 0.3, 0.0),
    ("thanos", "structured", 0.3, 0.25), ("thanos", "4:8", None, 0.1), ("sparsegpt", "unstructured", 0.6, 0.0),
    ("sparsegpt", "4:8", None, 0.0), ("wanda", "unstructured", 0.5, 0.0), ("wanda", "structured", 0.3, 0.0),
    ("magnitude", "2:4", None, 0.0), ("magnitude", "unstructured", 0.7, 0.0),
]


def calibration(nsamples=5, seqlen=16, seed=0, vocab=257):
    return torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def linear_weight_names(model):
    prefix = {m: n for n, m in model.named_modules()}
    names = set()
    for block in decoder_layers(model):
        for lin in block_linears(block).values():
            names.add(prefix[lin] + ".weight")
    return names


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,pattern,sparsity,alpha", CASES)
def test_every_linear_pruned_exactly_and_nothing_else_touched(arch, method, pattern, sparsity, alpha):
    model, _ = tiny_model(arch)
    before = snapshot(model)
    result = prune_model(model, calibration(), method=method, pattern=pattern, sparsity=sparsity, alpha=alpha, block_size=16)
    after = snapshot(model)
    pruned_names = linear_weight_names(model)
    n_linears = sum(len(block_linears(b)) for b in decoder_layers(model))
    assert len(result.layers) == n_linears
    for key in before:  # embeddings, positions, norms, biases, LM head: bit-identical
        if key not in pruned_names:
            assert torch.equal(before[key], after[key]), key
    for layer in result.layers:
        c, b = layer.shape
        assert layer.pruned == expected_pruned(method, pattern, sparsity, alpha, c, b), layer.name
        weight = after[layer.name + ".weight"]
        assert int((weight == 0).sum()) >= layer.pruned
        if ":" in pattern and alpha == 0:
            n, m = map(int, pattern.split(":"))
            assert nm_violations(weight, n, m) == 0
        if method != "magnitude":
            assert layer.tokens == 5 * 16  # every calibration batch reached every hook
            assert layer.loss is not None and layer.loss >= 0


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_see_all_calibration_batches(arch, monkeypatch):
    seen = []
    real = thanos.HessianAccumulator

    class Recording(real):
        def update(self, x):
            seen.append(tuple(x.shape[:-1]))
            super().update(x)

    monkeypatch.setattr(thanos, "HessianAccumulator", Recording)
    model, _ = tiny_model(arch, layers=2)
    result = prune_model(model, calibration(nsamples=7, seqlen=12), method="wanda", pattern="unstructured", batch_size=3)
    # Linears fed the very same tensor share one accumulation: a LLaMA block's 7 linears read 4
    # inputs (q/k/v, o, gate/up, down), an OPT block's 6 read 4 (q/k/v, out, fc1, fc2)
    inputs_per_block = 4
    n_inputs = inputs_per_block * len(decoder_layers(model))
    # 3 forward batches (3 + 3 + 1 windows) per input; OPT flattens tokens in its MLP
    assert len(seen) == 3 * n_inputs
    assert sum(int(torch.tensor(s).prod()) for s in seen) == 7 * 12 * n_inputs
    assert all(layer.tokens == 7 * 12 for layer in result.layers)  # every layer got every batch


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_pruned_in_order_and_next_block_sees_pruned_outputs(arch):
    model, _ = tiny_model(arch, layers=3)
    layers = decoder_layers(model)
    order, first_inputs = [], {}

    def record(i):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            first_inputs.setdefault(i, []).append(hidden.detach().clone())
        return hook

    handles = [block.register_forward_pre_hook(record(i), with_kwargs=True) for i, block in enumerate(layers)]
    cal = calibration(nsamples=4, seqlen=10)
    result = prune_model(model, cal, method="sparsegpt", pattern="unstructured", batch_size=4,
                         on_block=lambda i, block: order.append(i))
    assert order == [0, 1, 2]
    assert [layer.block for layer in result.layers] == sorted(layer.block for layer in result.layers)
    pipeline_inputs = {i: v[0] for i, v in first_inputs.items()}  # the first pass of block i in the pipeline
    for v in first_inputs.values():
        v.clear()
    with torch.no_grad():
        model(input_ids=cal, use_cache=False)  # the finished (pruned) model on the same windows
    for h in handles:
        h.remove()
    for i in range(1, 3):
        # what block i saw while being pruned is what the pruned blocks 0..i-1 produce
        # same float32 ops on the same batch, reached through the pipeline's captured kwargs or the
        # model's own forward: they may round differently per op, ~n eps32 = 64 * 1.2e-7 ~ 8e-6 of
        # the hidden width n = 64, hence rtol 1e-5 (atol 1e-6 for entries near 0)
        torch.testing.assert_close(pipeline_inputs[i], first_inputs[i][0], rtol=1e-5, atol=1e-6)
    # and not what the dense model would have fed it (the test can fail)
    dense, _ = tiny_model(arch, layers=3)
    dense_inputs = []
    h = decoder_layers(dense)[2].register_forward_pre_hook(lambda _m, a, k: dense_inputs.append((a[0] if a else k["hidden_states"]).clone()), with_kwargs=True)
    with torch.no_grad():
        dense(input_ids=cal, use_cache=False)
    h.remove()
    assert not torch.allclose(dense_inputs[0], pipeline_inputs[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_deterministic(arch):
    weights = []
    for _ in range(2):
        model, _ = tiny_model(arch, seed=5)
        prune_model(model, calibration(seed=1), method="thanos", pattern="unstructured", block_size=16)
        weights.append(snapshot(model))
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_magnitude_needs_no_calibration():
    model, _ = tiny_model("llama")
    result = prune_model(model, None, method="magnitude", pattern="unstructured", sparsity=0.5)
    assert result.calibration_windows == 0 and abs(result.achieved_sparsity - 0.5) < 1e-9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="thanos", calibration=None), "calibration"),
        (dict(method="thanos", pattern="2:4", block_size=6), "block_size 6 must be a multiple"),
        (dict(method="wanda", pattern="5:4"), "N:M needs"),
        (dict(method="thanos", sparsity=1.0), "sparsity must be"),
        (dict(method="sparsegpt", alpha=0.1, pattern="structured", sparsity=0.3), "alpha"),
        (dict(method="thanos", percdamp=-1), "percdamp"),
        (dict(method="bogus"), "method must be one of"),
        (dict(method="thanos", metric="hessian"), "metric must be one of"),
        (dict(method="wanda", metric="sparsegpt"), "metric"),
        (dict(method="thanos", batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_rejected_before_any_work(kwargs, match):
    model, _ = tiny_model("opt", layers=2)
    before = snapshot(model)
    cal = kwargs.pop("calibration", calibration())
    with pytest.raises(ValueError, match=match):
        prune_model(model, cal, **kwargs)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_layer_shape_errors_name_the_layer():
    model, _ = tiny_model("llama", hidden=72, intermediate=128, layers=1)
    with pytest.raises(ValueError, match=r"layer 0\.self_attn\.q_proj of shape \(72, 72\).*divisible by M = 16"):
        prune_model(model, calibration(), method="thanos", pattern="1:16", block_size=16)


def test_report_saved_and_progress_optional(tmp_path, capsys):
    model, _ = tiny_model("llama", layers=2)
    path = tmp_path / "layers.json"
    result = prune_model(model, calibration(), method="wanda", pattern="2:4", report_path=path, progress=False)
    assert capsys.readouterr().err == ""
    saved = json.loads(path.read_text())
    assert saved["achieved_sparsity"] == pytest.approx(result.achieved_sparsity)
    assert [layer["name"] for layer in saved["layers"]] == [layer.name for layer in result.layers]
    assert set(saved["layers"][0]) >= {"name", "shape", "loss", "sparsity", "damping", "seconds"}
    model, _ = tiny_model("llama", layers=2)
    prune_model(model, calibration(), method="wanda", pattern="2:4", progress=True)
    assert "block" in capsys.readouterr().err


@pytest.mark.parametrize("method,pattern", [("thanos", "2:4"), ("thanos", "unstructured"), ("sparsegpt", "2:4"),
                                            ("thanos", "structured"), ("wanda", "2:4")])
@pytest.mark.parametrize("block_size", [None, 16])
def test_the_block_size_reported_is_the_one_used(method, pattern, block_size):
    """The result reports the argument (None: each Linear's default for its width,
    ``thanos.default_block_size``) and, per Linear, the B it was pruned with; None where B plays no
    role (Wanda, structured Thanos)."""
    model, _ = tiny_model("llama", layers=1)
    sparsity = None if ":" in pattern else 0.5
    result = prune_model(model, calibration(), method=method, pattern=pattern, sparsity=sparsity,
                         block_size=block_size, progress=False)
    assert result.block_size == block_size and result.as_dict()["block_size"] == block_size
    blockless = method == "wanda" or pattern == "structured"
    widths = {layer.shape[1] for layer in result.layers}
    assert len(widths) > 1  # the tiny model's Linears differ in width, so a per-width default shows
    for layer, record in zip(result.layers, result.as_dict()["layers"]):
        expected = None if blockless else block_size or thanos.default_block_size(method, pattern, layer.shape[1])
        assert layer.block_size == record["block_size"] == expected
    assert result.block_sizes == sorted({layer.block_size for layer in result.layers} - {None})
    if method == "thanos" and pattern == "2:4" and block_size is None:  # the whole layer, every width
        assert result.block_sizes == sorted(widths)


@pytest.mark.parametrize("method,alpha", [("thanos", None), ("thanos", 0.0), ("sparsegpt", None)])
def test_the_alpha_reported_is_the_one_used(method, alpha):
    """``alpha=None`` is ``thanos.default_alpha``: 0.2 for Thanos structured, which the result
    reports (not None) and which keeps floor(0.2 c) rows of every Linear dense; 0 for SparseGPT."""
    model, _ = tiny_model("llama", layers=1)
    result = prune_model(model, calibration(), method=method, pattern="structured", sparsity=0.3, alpha=alpha,
                         progress=False)
    used = thanos.default_alpha(method, "structured") if alpha is None else alpha
    assert result.alpha == result.as_dict()["alpha"] == used
    assert used == (0.2 if (method, alpha) == ("thanos", None) else 0.0)
    for layer in result.layers:
        assert layer.outlier_rows == spec.outlier_row_count(used, layer.shape[0])


def test_decoder_layers_found_or_clear_error():
    model, _ = tiny_model("opt", layers=2)
    assert decoder_layers(model) is model.model.decoder.layers
    with pytest.raises(ValueError, match="cannot find the decoder blocks"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    results = []
    for dev in ("cpu", "cuda"):
        model, _ = tiny_model("llama", seed=2)
        prune_model(model, calibration(), method="thanos", pattern="2:4", block_size=16, device=dev)
        assert next(model.parameters()).device.type == "cpu"  # blocks went back where they were
        results.append(snapshot(model))
    for key in results[0]:
        masks = [r[key] == 0 for r in results]
        # float32 GEMMs sum in a different order on the two devices, so weights agree to ~n eps and
        # a mask may flip only where two psi scores sit within that of each other: with continuous
        # random weights such near-ties are rare; 1% of entries flipping means a real divergence
        assert (masks[0] != masks[1]).float().mean() < 0.01, key



# ----------------------------------------------------------------- choosing layers, masks, refusals


def test_targets_and_ignore_choose_the_linears_by_full_name():
    model, _ = tiny_model("llama", layers=2)
    before = snapshot(model)
    result = prune_model(model, calibration(), method="wanda", targets=["model.layers.*.mlp.*"], ignore=["*.0.mlp.up_proj"],
                         keep_masks=True)
    names = [layer.name for layer in result.layers]
    assert names == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj",
                     "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    after = snapshot(model)
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == (key.removesuffix(".weight") in names), key  # exactly the chosen weights changed
    assert result.masks.keys() == set(names)
    for layer in result.layers:
        mask = result.masks[layer.name]
        assert mask.dtype == torch.bool and mask.device.type == "cpu" and int(mask.sum()) == layer.pruned
        assert bool((after[layer.name + ".weight"][mask] == 0).all())  # True = pruned = zero


def test_only_the_first_block_targeted_leaves_the_rest_untouched():
    model, _ = tiny_model("opt", layers=3)
    before = snapshot(model)
    order = []
    result = prune_model(model, calibration(), method="thanos", block_size=16, targets=["model.decoder.layers.0.*"],
                         on_block=lambda i, block: order.append(i))
    assert order == [0] and {layer.block for layer in result.layers} == {0}
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("model.decoder.layers.0."))
    assert result.masks == {}  # masks only on request


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(targets=["model.layers.*.mlp.nothing"]), r"targets: the pattern 'model.layers.\*.mlp.nothing' matches no nn.Linear"),
        (dict(ignore=["*.fc1"]), r"ignore: the pattern '\*.fc1' matches no nn.Linear"),
        (dict(targets=["lm_head"]), r"targets: \['lm_head'\] lie outside the decoder blocks"),
        (dict(targets=["*"]), r"targets: \['lm_head'\] lie outside"),
        (dict(targets="model.layers.0.*", ignore=["model.layers.0.*"]), "leave no nn.Linear"),
        (dict(targets=[]), "targets must be a non-empty"),
        (dict(keep_masks="yes"), "keep_masks"),
    ],
)
def test_bad_targets_rejected_before_any_work(kwargs, match):
    model, _ = tiny_model("llama", layers=2)
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        prune_model(model, calibration(), method="thanos", **kwargs)
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch,context", [("llama", 512), ("opt", 512)])
def test_calibration_longer_than_the_context_is_refused(arch, context):
    model, _ = tiny_model(arch, layers=1)
    before = snapshot(model)
    with pytest.raises(ValueError, match=rf"calibration windows of {context + 1} tokens .* context of {context} positions"):
        prune_model(model, calibration(nsamples=1, seqlen=context + 1), method="wanda")
    assert all(torch.equal(before[k], v) for k, v in snapshot(model).items())
    prune_model(model, calibration(nsamples=1, seqlen=context), method="wanda")  # the context itself is fine


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_activations_name_the_layer_before_its_block_is_pruned(bad):
    model, _ = tiny_model("llama", layers=3)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[5] = bad  # poisons the MLP input of block 1
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"input of model\.layers\.1\.mlp\.gate_proj: \d+ non-finite"):
        prune_model(model, calibration(), method="thanos", block_size=16)
    after = snapshot(model)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
    for key in linear_weight_names(model):  # nothing of block 1 (nor after it) was pruned
        if key.startswith(("model.layers.1.", "model.layers.2.")):
            assert torch.equal(before[key], after[key]), key


def test_non_finite_embeddings_are_refused_before_block_0():
    model, _ = tiny_model("opt", layers=2)
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[:] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match="inputs of decoder block 0"):
        prune_model(model, calibration(), method="sparsegpt")
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in linear_weight_names(model))


def test_hessian_accumulators_carry_the_layer_name(monkeypatch):
    names = []
    real = thanos.HessianAccumulator

    def recording(columns, device=None, dtype=torch.float32, name=None):
        names.append(name)
        return real(columns, device=device, dtype=dtype)

    monkeypatch.setattr(thanos, "HessianAccumulator", recording)
    model, _ = tiny_model("opt", layers=1)
    prune_model(model, calibration(), method="wanda")
    # one accumulator per distinct input (q/k/v share the first), named after the linear that owns it
    assert names == [f"model.decoder.layers.0.{n}" for n in ("self_attn.q_proj", "self_attn.out_proj", "fc1", "fc2")]
