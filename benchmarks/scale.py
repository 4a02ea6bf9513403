"""``python -m benchmarks scale``: on paper, LLaMA-2-7B/13B/70B and a 405B-shaped model.

For each model: per-layer Hessian and factor memory (exact: b x b float32 each), the solver's peak
extra memory per layer and its time (fitted to the measured per-layer runs of ``python -m
benchmarks speed``, stated formulas below), the peak device memory of one block in the sequential
pipeline, the expected wall time on 1..N ranks (linears dealt by ``thanos.distributed.assign``),
and how many devices of a given memory make it fit. Nothing is run at these sizes: the numbers
follow from the shapes, the pipeline's accounting and the measured fits, reproducibly.

Fits (least squares with non-negative coefficients, over the Thanos unstructured rows of the
speed benchmark's JSON):

- time  t(c, b) = alpha c b + beta c b^2 + gamma b^3  (per-row solves ~ c b/B systems of a fixed
  size; block GEMMs ~ c b^2; the factorisation ~ b^3);
- memory m(c, b) = a + k1 c b + k2 b^2  bytes (float32 working copies of W; H, its factor and
  the trailing inverse; the chunk budget).

Peak device memory of one block (what ``prune_model`` puts on the compute device, as its
``peak_block_memory_mib`` counts it, plus the solver's and the forward's transients):
  block weights (storage dtype) + Hessians of the block (one b x b float32 per distinct input)
  + calibration inputs and outputs (2 x tokens x hidden, storage dtype) / ranks
  + the largest layer's solver peak m(c, b) + one batch's forward transient
  (batch tokens x (2 intermediate + hidden) x 4 bytes).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np

#: (hidden, intermediate, layers, kv width, vocab, tied embeddings)
MODELS = {
    "LLaMA-2-7B": (4096, 11008, 32, 4096, 32000, False),
    "LLaMA-2-13B": (5120, 13824, 40, 5120, 32000, False),
    "LLaMA-2-70B": (8192, 28672, 80, 1024, 32000, False),
    "405B-shaped (LLaMA-3.1-405B)": (16384, 53248, 126, 1024, 128256, False),
}
GIB = 2**30


def block_linears(h: int, i: int, kv: int) -> dict:
    """(c, b) of each Linear of a LLaMA block and the input it reads (linears reading the same
    input share one Hessian)."""
    return {"q_proj": ((h, h), "attn_in"), "k_proj": ((kv, h), "attn_in"), "v_proj": ((kv, h), "attn_in"),
            "o_proj": ((h, h), "attn_out"), "gate_proj": ((i, h), "mlp_in"), "up_proj": ((i, h), "mlp_in"),
            "down_proj": ((h, i), "mlp_mid")}


def fit(rows: list, variant: str = "thanos") -> dict:
    from scipy.optimize import nnls

    pts = [(r["c"], r["b"], r["median_s"], r["peak_extra_bytes"]) for r in rows if r["variant"] == variant]
    c = np.array([p[0] for p in pts], float)
    b = np.array([p[1] for p in pts], float)
    t = np.array([p[2] for p in pts])
    m = np.array([p[3] for p in pts], float)
    # relative least squares: every point weighs the same whatever its size
    At = np.stack([c * b, c * b * b, b**3], 1) / t[:, None]
    time_coef, _ = nnls(At, np.ones_like(t))
    Am = np.stack([np.ones_like(c), c * b, b * b], 1) / m[:, None]
    mem_coef, _ = nnls(Am, np.ones_like(m))
    pred_t = np.stack([c * b, c * b * b, b**3], 1) @ time_coef
    pred_m = np.stack([np.ones_like(c), c * b, b * b], 1) @ mem_coef
    return {"points": len(pts), "time": time_coef.tolist(), "memory": mem_coef.tolist(),
            "time_worst_ratio": float(np.max(np.maximum(pred_t / t, t / pred_t))),
            "memory_worst_ratio": float(np.max(np.maximum(pred_m / m, m / pred_m)))}


def seconds(f: dict, c: int, b: int) -> float:
    alpha, beta, gamma = f["time"]
    return alpha * c * b + beta * c * b * b + gamma * b**3


def solver_bytes(f: dict, c: int, b: int) -> float:
    a, k1, k2 = f["memory"]
    return a + k1 * c * b + k2 * b * b


def rank_seconds(f: dict, linears: dict, world: int) -> float:
    """The slowest rank's pruning time for one block under ``thanos.distributed.assign``."""
    import torch

    from thanos.distributed import assign

    fake = {n: SimpleNamespace(weight=torch.empty(shape, device="meta")) for n, (shape, _) in linears.items()}
    owners = assign(fake, "thanos", world)
    load = [0.0] * world
    for name, (shape, _) in linears.items():
        load[owners[name]] += seconds(f, *shape)
    return max(load)


def analyse(name: str, f: dict, *, nsamples: int, seqlen: int, batch: int, storage_bytes: int, device_gib: float,
            ranks: list) -> dict:
    h, i, layers, kv, vocab, tied = MODELS[name]
    linears = block_linears(h, i, kv)
    block_params = sum(c * b for (c, b), _ in linears.values()) + 2 * h
    model_params = layers * block_params + vocab * h * (1 if tied else 2) + h
    inputs = {}
    for (c, b), src in linears.values():
        inputs[src] = b
    hessians = sum(4 * b * b for b in inputs.values())
    tokens = nsamples * seqlen
    activations = 2 * tokens * h * storage_bytes
    transient = batch * seqlen * (2 * i + h) * 4
    worst_solver = max(solver_bytes(f, *shape) for shape, _ in linears.values())
    per_layer = {n: {"shape": list(shape), "hessian_gib": 4 * shape[1] ** 2 / GIB, "factor_gib": 4 * shape[1] ** 2 / GIB,
                     "solver_peak_gib": solver_bytes(f, *shape) / GIB, "seconds_1_thread": seconds(f, *shape)}
                 for n, (shape, _) in linears.items()}
    out = {"model": name, "hidden": h, "intermediate": i, "layers": layers, "params_billion": model_params / 1e9,
           "weights_gib": model_params * storage_bytes / GIB, "block_weights_gib": block_params * storage_bytes / GIB,
           "block_hessians_gib": hessians / GIB, "per_layer": per_layer, "by_ranks": {}}
    for n in ranks:
        peak = block_params * storage_bytes + hessians + activations / n + worst_solver + transient
        block_s = rank_seconds(f, linears, n)
        whole = model_params * storage_bytes + peak - block_params * storage_bytes
        out["by_ranks"][n] = {"peak_block_gib": peak / GIB, "hours_1_thread": layers * block_s / 3600,
                              "devices_without_offload": math.ceil(whole / (device_gib * GIB)),
                              "fits_one_device_with_offload": peak <= device_gib * GIB}
    return out


def table(results: list, ranks: list, device_gib: float) -> str:
    lines = ["| model | params (B) | weights (GiB) | layer (c, b) | H per layer (GiB) | factor (GiB) | solver peak (GiB) | "
             "1-thread s/layer |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        for n, layer in r["per_layer"].items():
            if n in ("k_proj", "v_proj", "up_proj"):
                continue  # same shape as q_proj (or smaller) / gate_proj
            lines.append(f"| {r['model']} | {r['params_billion']:.1f} | {r['weights_gib']:.0f} | {n} {tuple(layer['shape'])} | "
                         f"{layer['hessian_gib']:.3f} | {layer['factor_gib']:.3f} | {layer['solver_peak_gib']:.2f} | "
                         f"{layer['seconds_1_thread']:.0f} |")
    lines += ["", f"| model | block weights (GiB) | block Hessians (GiB) | " +
              " | ".join(f"peak/block, {n} rank{'s' if n > 1 else ''} (GiB)" for n in ranks) + " | " +
              " | ".join(f"hours, {n} rank{'s' if n > 1 else ''}" for n in ranks) +
              f" | {device_gib:g}-GiB devices, no offload | one {device_gib:g}-GiB device with offload |",
              "|---|---:|---:|" + "---:|" * (2 * len(ranks)) + "---:|---|"]
    for r in results:
        by = r["by_ranks"]
        lines.append(f"| {r['model']} | {r['block_weights_gib']:.2f} | {r['block_hessians_gib']:.2f} | " +
                     " | ".join(f"{by[n]['peak_block_gib']:.1f}" for n in ranks) + " | " +
                     " | ".join(f"{by[n]['hours_1_thread']:.1f}" for n in ranks) +
                     f" | {by[ranks[0]]['devices_without_offload']} | {'yes' if by[ranks[0]]['fits_one_device_with_offload'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks scale", description=__doc__.split("\n")[0])
    p.add_argument("--speed", default="benchmarks/results/speed-cpu.json", help="the speed benchmark's JSON to fit")
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--storage-bytes", type=int, default=2, help="bytes per weight/activation (bf16: 2)")
    p.add_argument("--device-gib", type=float, default=80.0, help="memory of one device (default: 80 GiB)")
    p.add_argument("--ranks", default="1,2,8")
    p.add_argument("--out", default="benchmarks/results/scale.json")
    args = p.parse_args(argv)
    speed = json.loads(Path(args.speed).read_text())
    f = fit(speed["rows"])
    ranks = [int(x) for x in args.ranks.split(",")]
    results = [analyse(name, f, nsamples=args.nsamples, seqlen=args.seqlen, batch=args.batch_size,
                       storage_bytes=args.storage_bytes, device_gib=args.device_gib, ranks=ranks) for name in MODELS]
    alpha, beta, gamma = f["time"]
    a, k1, k2 = f["memory"]
    print(f"fit over {f['points']} measured Thanos rows of {args.speed} ({speed['machine']}):")
    print(f"  t(c, b) = {alpha:.3e} c b + {beta:.3e} c b^2 + {gamma:.3e} b^3 s   (worst ratio to a measured point {f['time_worst_ratio']:.2f})")
    print(f"  m(c, b) = {a / 2**20:.1f} MiB + {k1:.2f} c b + {k2:.2f} b^2 bytes   (worst ratio {f['memory_worst_ratio']:.2f})")
    print(f"calibration {args.nsamples} x {args.seqlen} tokens, batches of {args.batch_size}, {args.storage_bytes}-byte storage\n")
    print(table(results, ranks, args.device_gib))
    Path(args.out).write_text(json.dumps({"command": "python -m benchmarks scale " + " ".join(argv or []), "fit": f,
                                          "settings": vars(args), "models": results}, indent=1) + "\n")
    return 0
