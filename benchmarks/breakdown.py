"""``python -m benchmarks breakdown [--shapes CxB,...] [--repeats N] [--out FILE] | --compile-time``

Where one Thanos layer's time goes, per step, with the fused CPU kernels (``thanos._fused``) and
with the torch path (``THANOS_DISABLE_FUSED=1``), next to SparseGPT's total; the same random layers
as ``python -m benchmarks speed`` (B = 128, float32).

Steps, timed by wrapping the solver's own functions (nothing re-implemented here):

- factor: ``solver._prepare_hessian`` (dead columns, damping, Cholesky, the triangular inverse);
- mask: ``_kernels.trailing_residual_mask`` (unstructured) or ``_kernels.n_m_mask`` (N:M), summed
  over blocks;
- solve: ``solver._solve_rows`` (gather, factorisation, triangular solves, scatter), summed;
- rest: everything else -- per block ``Ub^T Ur``, the update GEMM ``W[:, j:] -= Xs T``, zeroing
  the pruned entries; once, the copies and the loss ``1/2 tr(D H D^T)``.

``--compile-time``: the fused kernels' first-call cost. A fresh process with an empty numba cache
(``NUMBA_CACHE_DIR`` a new temporary folder) prunes a (64, 256) layer twice per compute dtype
(float32, then float64): the first call compiles, the second runs; then a second process with
that cache: its first call loads the compiled code from disk.

One worker process per shape runs every variant in round-robin rounds (order rotated per round)
after a warm-up on a small layer (which also compiles or loads the kernels), and reports medians.
Writes JSON (default ``benchmarks/results/breakdown-<device>.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.speed import ROOT, _layer, _machine, _spawn

VARIANTS = {
    "thanos fused": (dict(method="thanos", pattern="unstructured", sparsity=0.5), True),
    "thanos torch": (dict(method="thanos", pattern="unstructured", sparsity=0.5), False),
    "thanos-2:4 fused": (dict(method="thanos", pattern="2:4"), True),
    "thanos-2:4 torch": (dict(method="thanos", pattern="2:4"), False),
    "sparsegpt": (dict(method="sparsegpt", pattern="unstructured", sparsity=0.5), None),
}
STEPS = ("factor", "mask", "solve", "rest")


def _timed_call(name, W, H):
    import torch

    from thanos import _fused, solver
    from thanos import _kernels as K

    kwargs, fused = VARIANTS[name]
    if fused is not None:
        os.environ[_fused._DISABLE_ENV] = "0" if fused else "1"
    spent = dict.fromkeys(STEPS[:-1], 0.0)
    originals = {}

    def wrap(module, attr, step):
        original = getattr(module, attr)
        originals[(module, attr)] = original

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                spent[step] += time.perf_counter() - t0

        setattr(module, attr, timed)

    wrap(solver, "_prepare_hessian", "factor")
    wrap(K, "trailing_residual_mask", "mask")
    wrap(K, "n_m_mask", "mask")
    wrap(solver, "_solve_rows", "solve")
    try:
        t0 = time.perf_counter()
        solver.prune(W, H, block_size=128, compute_dtype=torch.float32, **kwargs)
        total = time.perf_counter() - t0
    finally:
        for (module, attr), original in originals.items():
            setattr(module, attr, original)
    return dict(total=total, **spent, rest=total - sum(spent.values()))


def _worker(job: dict) -> dict:
    Ws, Hs = _layer(64, 256, "cpu")
    for name in VARIANTS:
        _timed_call(name, Ws, Hs)
    W, H = _layer(job["c"], job["b"], "cpu")
    runs = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(job["repeats"]):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            runs[name].append(_timed_call(name, W, H))
    return {"runs": runs}


def _compile_worker() -> dict:
    import torch

    import thanos
    from thanos import _fused

    W, H = _layer(64, 256, "cpu")
    out = {"fused": _fused.available()}
    for dtype in (torch.float32, torch.float64):
        for call in ("first", "second"):
            t0 = time.perf_counter()
            thanos.prune(W.to(dtype), H.to(dtype), method="thanos", pattern="unstructured", sparsity=0.5, compute_dtype=dtype)
            out[f"{str(dtype).split('.')[-1]} {call} call"] = time.perf_counter() - t0
    return out


def _compile_time() -> int:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        for label in ("empty cache (compiles)", "warm cache (loads)"):
            out = subprocess.run([sys.executable, "-m", "benchmarks.breakdown", "--worker", json.dumps({"compile": True})],
                                 cwd=ROOT, env=env, capture_output=True, text=True, check=True)
            times = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{label}: " + ", ".join(f"{k} {v:.2f} s" if isinstance(v, float) else f"{k} {v}" for k, v in times.items()))
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


def _markdown(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}` ({result['date']}; {result['machine']}; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in result['load_average'])}). Medians over {result['repeats']} round-robin rounds "
        "(each step's median separately, so the steps need not add up to the total exactly).",
        "",
        "| (c, b) | variant | total (s) | factor | mask | solve | rest (GEMMs, loss, copies) | total / SparseGPT |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for shape in result["shapes"]:
        rows = result["medians"][f"{shape[0]}x{shape[1]}"]
        base = rows["sparsegpt"]["total"]
        for name in VARIANTS:
            m = rows[name]
            steps = " | ".join("–" if name == "sparsegpt" and s in ("mask", "solve") else f"{m[s]:.3f}" for s in STEPS)
            lines.append(f"| ({shape[0]}, {shape[1]}) | {name} | {m['total']:.3f} | {steps} | {m['total'] / base:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks breakdown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="2048x2048", help="comma-separated CxB list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--compile-time", action="store_true", help="first-call compile and cache-load time of the kernels")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        print(json.dumps(_compile_worker() if job.get("compile") else _worker(job)))
        return 0
    if args.compile_time:
        return _compile_time()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "breakdown-cpu.json"
    command = "python -m benchmarks breakdown" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    medians, raw = {}, {}
    for c, b in shapes:
        runs = _spawn(dict(c=c, b=b, repeats=args.repeats), module="benchmarks.breakdown")["runs"]
        raw[f"{c}x{b}"] = runs
        medians[f"{c}x{b}"] = {name: {k: statistics.median(r[k] for r in rs) for k in ("total", *STEPS)} for name, rs in runs.items()}
        print(f"({c}, {b}) done", file=sys.stderr)
    import torch

    result = dict(command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  machine=_machine("cpu"), repeats=args.repeats, shapes=[list(s) for s in shapes],
                  medians=medians, runs=raw, load_average=os.getloadavg(), torch_threads=torch.get_num_threads())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
