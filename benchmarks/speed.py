"""``python -m benchmarks speed [--quick] [--out FILE] [--shapes CxB,...] [--repeats N] [--variants A,B] [--no-memory]``

Per-layer wall time and peak extra memory of production Thanos (unstructured p = 0.5 B = 128,
2:4, structured 30 %), SparseGPT, Wanda, magnitude, the "explicit trailing inverse" Thanos variant
(``torch.linalg.inv(H[j:, j:])`` after every block, as the paper's code does; a benchmark-only
switch of ``thanos.solver._prune``) and the float64 reference, on random layers (W Gaussian,
H = 2/N X^T X from N = 2b Gaussian tokens).

Method, so the numbers can be trusted on a shared machine:

- time: for one shape, one worker process runs every variant in round-robin rounds (the order
  rotated each round) after a warm-up on a small layer, and reports the median over rounds; all
  ratios are between variants of the same worker, so a load spike hits them alike.
- memory: each (shape, variant) is run once more in a fresh worker process; the peak extra memory
  is ``ru_maxrss`` after the call minus ``ru_maxrss`` just before it (inputs already built), i.e.
  the high-water mark of resident memory the call added (Linux reports KiB). tracemalloc does not
  see torch's allocator, and a fresh process per case keeps one variant's peak from hiding
  another's. On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call.

Writes JSON (default ``benchmarks/results/speed-<device>.json``) and rewrites the
"## Speed and memory per layer" section of benchmarks/README.md (and only it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import cpu_name

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "benchmarks" / "README.md"
SECTION = "## Speed and memory per layer"

VARIANTS = {
    "thanos": dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=128),
    "thanos-2:4": dict(method="thanos", pattern="2:4", block_size=128),
    # alpha 0, as the recorded results were measured (the library's structured default is 0.2 since 2026-12-06, 0.1 earlier that day)
    "thanos-structured": dict(method="thanos", pattern="structured", sparsity=0.3, alpha=0.0),
    "thanos-explicit-inverse": dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=128),
    "sparsegpt": dict(method="sparsegpt", pattern="unstructured", sparsity=0.5, block_size=128),
    "wanda": dict(method="wanda", pattern="unstructured", sparsity=0.5),
    "magnitude": dict(method="magnitude", pattern="unstructured", sparsity=0.5),
    "reference": dict(method="thanos", pattern="unstructured", sparsity=0.5, block_size=128),
}
LABELS = {
    "thanos": "Thanos unstructured 50 %, B=128",
    "thanos-2:4": "Thanos 2:4, B=128",
    "thanos-structured": "Thanos structured 30 %",
    "thanos-explicit-inverse": "Thanos, explicit inv(H[j:,j:]) per block",
    "sparsegpt": "SparseGPT unstructured 50 %, B=128",
    "wanda": "Wanda unstructured 50 %",
    "magnitude": "magnitude unstructured 50 %",
    "reference": "reference (float64 NumPy) Thanos 50 %",
}
CPU_SHAPES = [(576, 576), (1536, 576), (576, 1536), (1024, 1024), (2048, 2048), (4096, 4096)]
REFERENCE_SHAPES = {(576, 576), (1536, 576), (576, 1536), (1024, 1024)}
GPU_SHAPES = CPU_SHAPES + [(11008, 4096), (4096, 11008)]  # with (4096, 4096): LLaMA-7B's
QUICK_SHAPES = [(576, 576), (1024, 1024)]


# ------------------------------------------------------------------------------------- worker
def _layer(c, b, device):
    import torch

    g = torch.Generator().manual_seed(c * 100003 + b)
    X = torch.randn(2 * b, b, generator=g)
    H = (2.0 / X.shape[0]) * (X.T @ X)
    W = torch.randn(c, b, generator=g)
    return W.to(device), H.to(device)


def _call(name, W, H):
    import torch

    import reference
    from thanos import solver

    kwargs = VARIANTS[name]
    if name == "reference":
        return reference.prune(W.double().cpu().numpy(), H.double().cpu().numpy(), **kwargs)
    if name == "magnitude":
        H = None
    full = dict(alpha=0.0, percdamp=0.01, compute_dtype=torch.float32, allow_tf32=False, max_extra_memory=None)
    full.update({k: v for k, v in kwargs.items()})
    full.setdefault("sparsity", None)
    full.setdefault("block_size", 128)
    return solver._prune(W, H, explicit_trailing_inverse=name == "thanos-explicit-inverse", **full)


def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _worker(job: dict) -> dict:
    import torch

    device, c, b = job["device"], job["c"], job["b"]
    names = job["variants"]
    if job["kind"] == "memory":
        (name,) = names
        W, H = _layer(c, b, device)
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            _call(name, W, H)
            _sync(device)
            peak = torch.cuda.max_memory_allocated() - before
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            _call(name, W, H)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        return {"peak_extra_bytes": int(peak)}
    Ws, Hs = _layer(64, 256, device)
    for name in names:  # warm-up: libraries, allocator, lazy imports
        _call(name, Ws, Hs)
    W, H = _layer(c, b, device)
    times = {name: [] for name in names}
    for r in range(job["repeats"]):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if name == "reference" and len(times[name]) >= job["reference_repeats"]:
                continue
            _sync(device)
            t0 = time.perf_counter()
            _call(name, W, H)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {"times": times}


def _spawn(job: dict, module: str = "benchmarks.speed") -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-m", module, "--worker", json.dumps(job)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"benchmark worker failed for {job}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- driver
def _targets(rows_by_shape: dict, device: str) -> list:
    def t(shape, name):
        row = rows_by_shape.get(shape, {}).get(name)
        return None if row is None else row["median_s"]

    checks = []

    def ratio_check(text, shape, num, den, bound, higher_is_better):
        a, b = t(shape, num), t(shape, den)
        if a is None or b is None:
            return
        ratio = a / b
        met = ratio >= bound if higher_is_better else ratio <= bound
        checks.append(dict(target=text, shape=list(shape), ratio=ratio, bound=bound, met=bool(met)))

    for shape in [(2048, 2048), (4096, 4096)]:
        ratio_check("Thanos unstructured time / SparseGPT time <= 1.2", shape, "thanos", "sparsegpt", 1.2, False)
        ratio_check("Thanos 2:4 time / SparseGPT time <= 1.2", shape, "thanos-2:4", "sparsegpt", 1.2, False)
    for shape in rows_by_shape:
        if shape[1] == 4096:
            ratio_check("explicit-inverse variant time / Thanos time >= 3 (b = 4096)", shape, "thanos-explicit-inverse", "thanos", 3.0, True)
    for shape in rows_by_shape:
        ratio_check("SparseGPT time / Thanos structured time >= 10", shape, "sparsegpt", "thanos-structured", 10.0, True)
    ratio_check("reference time / Thanos time >= 50 at (1024, 1024)", (1024, 1024), "reference", "thanos", 50.0, True)
    return checks


def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpu = cpu_name()
    from thanos import _fused

    kernels = f"fused CPU kernels: numba {_fused.numba.__version__}" if _fused.available() else "fused CPU kernels: off (torch path)"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; {kernels}"


def _markdown(result: dict) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{result['command']}` ({result['date']}; {result['machine']}; compute dtype float32).",
        "Times: median over round-robin rounds in one worker process per shape "
        f"({result['repeats']} rounds; the reference {result['reference_repeats']}); ratios within that worker. "
        "Peak extra memory: `ru_maxrss` after minus before the call, in a fresh process per case "
        "(CUDA: `max_memory_allocated` above the inputs). Raw numbers: "
        f"`{result['out']}`.",
        "",
    ]
    for shape in result["shapes"]:
        rows = {r["variant"]: r for r in result["rows"] if (r["c"], r["b"]) == tuple(shape)}
        if not rows:
            continue
        base = rows.get("sparsegpt", {}).get("median_s")
        lines += [f"**(c, b) = ({shape[0]}, {shape[1]})**", "",
                  "| variant | median time (s) | time / SparseGPT | peak extra memory (MiB) |",
                  "|---|---:|---:|---:|"]
        for name in VARIANTS:
            if name in rows:
                r = rows[name]
                rel = f"{r['median_s'] / base:.2f}" if base else "n/a"
                mem = "n/a" if r.get("peak_extra_bytes") is None else f"{r['peak_extra_bytes'] / 2**20:.0f}"
                lines.append(f"| {LABELS[name]} | {r['median_s']:.3f} | {rel} | {mem} |")
        lines.append("")
    lines += ["Targets (same machine, same run):", "", "| target | (c, b) | measured | met |", "|---|---|---:|---|"]
    for chk in result["targets"]:
        lines.append(f"| {chk['target']} | ({chk['shape'][0]}, {chk['shape'][1]}) | {chk['ratio']:.2f} | {'yes' if chk['met'] else '**no**'} |")
    if result.get("notes"):
        lines += ["", *result["notes"]]
    return "\n".join(lines) + "\n"


def _write_readme(section: str) -> None:
    text = README.read_text()
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    README.write_text(text[:start] + section + ("\n" if nxt >= 0 else "") + text[end:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small shapes, 2 rounds (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/results/speed-<device>.json)")
    parser.add_argument("--shapes", default=None, help="comma-separated CxB list, e.g. 576x576,2048x2048")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin rounds per shape (default 5; quick 2)")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    else:
        shapes = QUICK_SHAPES if args.quick else (GPU_SHAPES if device == "cuda" else CPU_SHAPES)
    repeats = args.repeats or (2 if args.quick else 5)
    reference_repeats = 1 if args.quick else 3
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"speed-{device}.json"
    command = "python -m benchmarks speed" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    rows = []
    for c, b in shapes:
        names = [n for n in VARIANTS if n != "reference" or ((c, b) in REFERENCE_SHAPES and device == "cpu" or args.quick)]
        if args.variants:
            names = [n for n in names if n in args.variants.split(",")]
        if args.quick and (c, b) != QUICK_SHAPES[0]:
            names = [n for n in names if n != "reference"]
        timing = _spawn(dict(kind="time", device=device, c=c, b=b, variants=names, repeats=repeats,
                             reference_repeats=reference_repeats))
        for name in names:
            mem = {"peak_extra_bytes": None} if args.no_memory else _spawn(dict(kind="memory", device=device, c=c, b=b, variants=[name]))
            runs = timing["times"][name]
            rows.append(dict(c=c, b=b, variant=name, label=LABELS[name], runs=runs, median_s=statistics.median(runs),
                             peak_extra_bytes=mem["peak_extra_bytes"]))
            print(f"({c}, {b}) {name}: {statistics.median(runs):.3f} s", file=sys.stderr)
    by_shape: dict = {}
    for r in rows:
        by_shape.setdefault((r["c"], r["b"]), {})[r["variant"]] = r
    result = dict(
        command=command, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=_machine(device),
        device=device, repeats=repeats, reference_repeats=reference_repeats, out=str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
        shapes=[list(s) for s in shapes], rows=rows, targets=_targets(by_shape, device),
        load_average=os.getloadavg(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if not args.no_readme:
        _write_readme(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
