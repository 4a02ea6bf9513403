"""Several processes (``thanos.distributed``): two gloo ranks on the CPU, launched with ``torchrun``.

The result on two ranks must be the single-process result bit for bit, not within a tolerance:
the ranks split the calibration batches and the linears, but every Hessian is built by the same
``HessianAccumulator.update`` calls on the same activations in the same batch order as in one
process (each batch's layer inputs are broadcast as raw bits from the rank that computed them),
each layer is pruned by the same code on the same (W, H), and the pruned weights travel as raw
bits. So it is the same code on the same values, at the same thread count (one per process);
the summation order is fixed by construction. The workers run ``tests/distributed_worker.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thanos.distributed import assign
from thanos.assets import tiny_model
from thanos.model import block_linears, decoder_layers, layer_cost

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import distributed_worker  # noqa: E402

CASES = ["llama:thanos:unstructured", "opt:thanos:unstructured", "llama:sparsegpt:2:4", "opt:wanda:2:4",
         "llama:magnitude:unstructured"]


def torchrun(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def check_equal(single: dict, ranks: list) -> None:
    for got in ranks:
        assert got["world_size"] == 2
        assert got["layers"] == single["layers"]  # names, counts, losses, damping, tokens: all equal
        assert got["weights"].keys() == single["weights"].keys()
        for key, value in single["weights"].items():
            assert torch.equal(got["weights"][key], value), key
        assert all(torch.equal(got["masks"][k], single["masks"][k]) for k in single["masks"])
    assert set(ranks[0]["ranks"]) == {0, 1}  # both ranks pruned some linears


def test_two_gloo_ranks_prune_tiny_models_bit_identical_to_one_process(tmp_path, one_thread):
    # the last case: each rank's model offloaded to disk, against the plain in-memory single run
    distributed_worker.save_tiny("opt", tmp_path)
    torchrun(str(HERE / "distributed_worker.py"), str(tmp_path), *CASES, "offload:opt:thanos:unstructured")
    for case in [*CASES, "offload:opt:thanos:unstructured"]:
        single = distributed_worker.run_case(case.removeprefix("offload:"))
        ranks = [torch.load(tmp_path / f"{case.replace(':', '_')}.rank{r}.pt") for r in (0, 1)]
        assert all(got["offloaded"] == case.startswith("offload:") for got in ranks)
        check_equal(single, ranks)


@pytest.mark.slow
def test_two_gloo_ranks_prune_smollm2_first_blocks_bit_identical(tmp_path, one_thread):
    from thanos.assets import load_model

    model, tokenizer = load_model()  # the GGUF, dequantised to float32 once
    model.save_pretrained(tmp_path / "smollm2")
    tokenizer.save_pretrained(tmp_path / "smollm2")
    del model
    torchrun(str(HERE / "distributed_worker.py"), str(tmp_path), "smollm2")
    single = distributed_worker.run_case("smollm2", str(tmp_path))
    check_equal(single, [torch.load(tmp_path / f"smollm2.rank{r}.pt") for r in (0, 1)])
    assert len(single["layers"]) == 14


def test_torchrun_cli_writes_once_and_equals_one_process(tmp_path, one_thread):
    from safetensors.torch import load_file

    from thanos import cli, data

    model, tokenizer = tiny_model("opt", seed=3, layers=2)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text(data.read_text(data.default_calibration_path())[:20000])
    args = ["prune", "--model", str(tmp_path / "model"), "--calibration", str(text), "--nsamples", "5", "--seqlen", "32",
            "--batch-size", "2", "--block-size", "16", "--no-eval", "--no-progress"]
    torchrun("-m", "thanos", *args, "--out", str(tmp_path / "two"))
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "one", "text.txt", "two"]  # no rank left a temporary
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    import json

    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["pipeline"]["world_size"] == 2 and {layer["rank"] for layer in report["layers"]} == {0, 1}


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_assignment_balances_cost_and_is_deterministic(world):
    model, _ = tiny_model("llama", hidden=64, intermediate=192, layers=1)
    linears = block_linears(decoder_layers(model)[0])
    owners = assign(linears, "thanos", world)
    assert owners == assign(linears, "thanos", world) and set(owners) == set(linears)
    cost = {n: layer_cost(tuple(l.weight.shape), "thanos") for n, l in linears.items()}
    load = [sum(cost[n] for n, r in owners.items() if r == k) for k in range(world)]
    # greedy largest-first: no rank exceeds the even share by more than one layer's cost
    assert max(load) <= sum(cost.values()) / world + max(cost.values())
    assert all(0 <= r < world for r in owners.values())
