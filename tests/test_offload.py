"""Sequential onloading (``thanos.offload``) and dtypes kept, on tiny seeded LLaMA and OPT models.

A model loaded with Accelerate's ``device_map`` and a small ``max_memory`` lives on disk (its
parameters on ``meta``, read from the checkpoint or the offload folder); ``prune_model`` brings one
block at a time onto the compute device and writes the pruned weights back. The pruned model must
be the in-memory run's, bit for bit. Why equality holds (the same code on the same values, not two
code paths): onloading reads each weight back bit-exactly (safetensors / raw ``.dat`` bytes, no
dtype conversion), each block then runs on the same device, in the same dtype, through the same
stages and kernels, on the same calibration batches in the same order (a fixed thread count);
only where the tensors are kept between blocks differs.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import pytest
import torch

from thanos import cli, data
from thanos.assets import load_model, tiny_model
from thanos.model import block_linears, decoder_layers, prune_model

# transformers warns (UserWarning) that saving an offloaded model needs CPU memory for one shard
SAVE_WARNING = "ignore:Attempting to save a model with offloaded modules"


def calibration(nsamples=5, seqlen=16, seed=0, vocab=257):
    return torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved(tmp_path, arch, dtype=torch.float32, name="model"):
    model, tokenizer = tiny_model(arch, seed=4, layers=3)
    model = model.to(dtype)
    folder = tmp_path / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.filterwarnings(SAVE_WARNING)
@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method,pattern", [("thanos", "unstructured"), ("sparsegpt", "2:4"), ("wanda", "unstructured")])
def test_disk_offloaded_model_prunes_bit_identical_to_in_memory(tmp_path, arch, method, pattern):
    from transformers import AutoModelForCausalLM

    folder = saved(tmp_path, arch)
    checkpoint = folder / "model.safetensors"
    digest = sha256(checkpoint)
    cal = calibration()

    in_memory, _ = load_model(folder)
    expected = prune_model(in_memory, cal, method=method, pattern=pattern, block_size=16, keep_masks=True)

    offloaded, _ = load_model(folder, max_memory={"cpu": 100_000}, offload_folder=tmp_path / "offload")
    layers = decoder_layers(offloaded)
    assert all(p.device.type == "meta" for p in layers.parameters())  # every block really is on disk
    result = prune_model(offloaded, cal, method=method, pattern=pattern, block_size=16, keep_masks=True)
    assert result.offloaded and not expected.offloaded
    assert all(p.device.type == "meta" for p in layers.parameters())  # and went back there

    assert [(l.name, l.pruned, l.loss, l.damping, l.tokens) for l in result.layers] == \
           [(l.name, l.pruned, l.loss, l.damping, l.tokens) for l in expected.layers]
    assert result.masks.keys() == expected.masks.keys()
    assert all(torch.equal(result.masks[k], expected.masks[k]) for k in expected.masks)
    # the pruned weights were written to the offload folder, never into the user's checkpoint
    assert sha256(checkpoint) == digest
    written = {p.name for p in (tmp_path / "offload").iterdir()}
    assert {f"{l.name}.weight.dat" for l in result.layers} <= written
    # the saved model is complete and is the in-memory result, bit for bit
    offloaded.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    want, got = state(in_memory), state(reloaded)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]
    # only one block (plus its inputs and Hessians) was ever held on the compute device
    model_mib = sum(p.numel() * p.element_size() for p in in_memory.parameters()) / 2**20
    block_mib = sum(p.numel() * p.element_size() for p in decoder_layers(in_memory)[0].parameters()) / 2**20
    assert block_mib <= result.peak_block_memory_mib < model_mib


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoint_loads_and_prunes_in_its_dtype(tmp_path, dtype):
    folder = saved(tmp_path, "llama", dtype)
    model, _ = load_model(folder)
    assert all(p.dtype == dtype for p in model.parameters())  # not upcast to float32 on load
    result = prune_model(model, calibration(), method="thanos", pattern="2:4", block_size=16)
    assert result.storage_dtype == str(dtype).replace("torch.", "") and result.compute_dtype == "float32"
    assert all(p.dtype == dtype for p in model.parameters())
    for block in decoder_layers(model):
        for linear in block_linears(block).values():
            assert (linear.weight.reshape(-1, 4) == 0).sum(-1).min() >= 2


def test_float64_model_computes_in_float64_unless_asked(tmp_path):
    model, _ = tiny_model("opt", layers=1)
    model = model.double()
    assert prune_model(model, calibration(), method="thanos", block_size=16).compute_dtype == "float64"
    model, _ = tiny_model("opt", layers=1)
    result = prune_model(model.double(), calibration(), method="thanos", block_size=16, compute_dtype=torch.float32)
    assert result.compute_dtype == "float32" and next(model.parameters()).dtype == torch.float64
    with pytest.raises(ValueError, match="compute_dtype"):
        prune_model(tiny_model("opt", layers=1)[0], calibration(), compute_dtype=torch.float16)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(data.read_text(data.default_calibration_path())[:20000])
    return path


def _args(model, text, out, *extra):
    return ["prune", "--model", str(model), "--calibration", str(text), "--eval", str(text), "--nsamples", "4",
            "--seqlen", "32", "--eval-seqlen", "32", "--max-windows", "2", "--block-size", "16", "--no-progress",
            "--out", str(out), *extra]


@pytest.mark.filterwarnings(SAVE_WARNING)
def test_cli_bf16_in_bf16_out_offloaded_or_not(tmp_path, text_file, capsys):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder = saved(tmp_path, "llama", torch.bfloat16)
    plain, offloaded = tmp_path / "plain", tmp_path / "offloaded"
    assert cli.main(_args(folder, text_file, plain)) == 0
    assert cli.main(_args(folder, text_file, offloaded, "--offload-folder", str(tmp_path / "off"), "--max-memory", "cpu=100KB")) == 0
    capsys.readouterr()
    for out in (plain, offloaded):
        with safe_open(out / "model.safetensors", framework="pt") as f:  # stored as bf16, not float32
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    # the same size as the bf16 input (a float32 save would be twice it); the offloaded save may also
    # hold the LM head tied to the embeddings as a tensor of its own (transformers' offloaded save)
    assert (plain / "model.safetensors").stat().st_size == pytest.approx((folder / "model.safetensors").stat().st_size, rel=0.01)
    report = json.loads((offloaded / "report.json").read_text())
    assert report["pipeline"]["offloaded"] is True and report["pipeline"]["storage_dtype"] == "bfloat16"
    assert report["pipeline"]["peak_block_memory_mib"] > 0 and report["achieved_sparsity"] == 0.5
    assert json.loads((plain / "report.json").read_text())["pipeline"]["offloaded"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        a = AutoModelForCausalLM.from_pretrained(plain)  # plain transformers loading: bf16 as saved
        b = AutoModelForCausalLM.from_pretrained(offloaded)
    assert a.dtype == b.dtype == torch.bfloat16
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the same code on the same values (module docstring)


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--max-memory", "cpu"], "--max-memory"),
        (["--max-memory", "cpu=lots"], "--max-memory"),
        (["--max-memory", "tpu=1GB"], "--max-memory"),
        (["--max-memory", "cpu=1GB,cpu=2GB"], "--max-memory"),
        (["--max-memory", "99=1GB"], "--max-memory"),
    ],
)
def test_placement_flag_errors_before_any_load(extra, flag, tmp_path, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr("thanos.assets.load_model", forbidden)
    out = tmp_path / "out"
    assert cli.main(["prune", "--method", "magnitude", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert flag in err and "error" in err and not out.exists()


def test_offload_folder_inside_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("thanos.assets.load_model", lambda *a, **k: pytest.fail("loaded"))
    out = tmp_path / "out"
    assert cli.main(["prune", "--method", "magnitude", "--out", str(out), "--offload-folder", str(out / "off")]) == 2
    assert "--offload-folder" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_cpu_offloaded_model_prunes_bit_identical_to_in_memory(arch):
    """Accelerate's ``cpu_offload``: parameters on ``meta``, values in an in-memory state dict that
    the hooks copy in at each forward; the pruned values must land in that state dict."""
    from accelerate import cpu_offload

    cal = calibration()
    plain, _ = tiny_model(arch, seed=8, layers=2)
    offloaded, _ = tiny_model(arch, seed=8, layers=2)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    expected = prune_model(plain, cal, method="sparsegpt", pattern="4:8", block_size=16, keep_masks=True)
    result = prune_model(offloaded, cal, method="sparsegpt", pattern="4:8", block_size=16, keep_masks=True)
    assert result.offloaded and all(p.device.type == "meta" for p in decoder_layers(offloaded).parameters())
    assert [(l.name, l.pruned, l.loss) for l in result.layers] == [(l.name, l.pruned, l.loss) for l in expected.layers]
    assert all(torch.equal(result.masks[k], expected.masks[k]) for k in expected.masks)
    ids = cal[:2]
    with torch.no_grad():  # the offloaded model computes with the pruned weights: the same logits
        assert torch.equal(offloaded(input_ids=ids).logits, plain(input_ids=ids).logits)
