"""``python -m benchmarks quality``: perplexity of SmolLM2-135M pruned by every method and pattern.

Dense, magnitude, Wanda, SparseGPT and Thanos at 50% unstructured, 4:8, 2:4 and structured 30%
(Thanos also with alpha = 0.2 outlier rows, its structured default), calibrated on C4 and evaluated on the Wikipedia
sample (exllamav3's standard_cal_data), with wall times and peak memory. Writes
``benchmarks/results/quality.json`` and the table of the "## Quality on SmolLM2-135M" section of
``benchmarks/README.md`` (only that section). One calibration seed: beside the targets, the section
shows the seed noise of the same Thanos-vs-SparseGPT comparisons at this size, from the
``study --quick`` records (``seed_noise``). ``--report`` rewrites the section from the JSON alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import resource
import shlex
import sys
import time
from pathlib import Path

from benchmarks import cpu_name
from reference import spec
from reference.spec import DEFAULT_BLOCK_SIZE  # its keys: the methods that work in column blocks
from thanos import verify

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see thanos/cli.py

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quality.json"
README = HERE / "README.md"
SECTION = "## Quality on SmolLM2-135M"
STUDY_QUICK = HERE / "results" / "study-quick.jsonl"  # where `python -m benchmarks study --quick` records its runs
NOISE_TEXT = "wiki"  # the study's name for the text this benchmark evaluates on (thanos.data.eval_tokens)
RUN_OPTIONS = ("nsamples", "seqlen", "eval_seqlen", "max_windows", "block_size", "seed", "device", "only")
SAVED_FIELDS = ("command", "date", "machine", "threads", "settings", "eval_windows", "dense_perplexity", "runs",
                "targets", "wall_seconds", "max_rss_mib", "commit")  # what the section is written from
RUN_FIELDS = ("method", "pattern", "alpha", "perplexity", "achieved_sparsity", "seconds")  # of each run, likewise

RUNS = verify.RUNS  # the same 17 runs as `thanos verify`, in table order
PATTERN_LABEL = {"unstructured": "50% unstructured", "4:8": "4:8", "2:4": "2:4", "structured": "structured 30%"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__.splitlines()[0])
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default: 32)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window (default: 256)")
    p.add_argument("--eval-seqlen", type=int, default=512, help="tokens per perplexity window (default: 512)")
    p.add_argument("--max-windows", type=int, default=8, help="perplexity windows (default: 8)")
    p.add_argument("--block-size", type=int, default=None,
                   help="columns per block (default: thanos.default_block_size for each method, pattern and layer width)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", default=None, help="comma-separated methods (default: all)")
    p.add_argument("--out", default=str(RESULTS), help=f"JSON output (default: {RESULTS.relative_to(HERE.parent)})")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true",
                   help="prune nothing: rewrite the README section from the JSON of --out, with the seed noise "
                        "read again from the study's records")
    args = p.parse_args(argv)
    if args.report:
        given = [f"--{name.replace('_', '-')}" for name in RUN_OPTIONS if getattr(args, name) != p.get_default(name)]
        if given:
            p.error(f"--report prunes nothing and takes only --out and --no-readme, not {' '.join(given)}")
        if not Path(args.out).is_file():
            p.error(f"--out: {args.out} does not exist (run the benchmark without --report first)")
        try:
            saved = json.loads(Path(args.out).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            p.error(f"--out: {args.out} is not readable JSON ({e})")
        missing = [k for k in SAVED_FIELDS if not isinstance(saved, dict) or k not in saved]
        if not missing:
            settings, runs = saved["settings"], saved["runs"]
            missing = [f"settings.{k}" for k in RUN_OPTIONS if not isinstance(settings, dict) or k not in settings]
            missing += [f"runs[{i}].{k}" for i, r in enumerate(runs if isinstance(runs, list) else [None])
                        for k in RUN_FIELDS if not isinstance(r, dict) or k not in r]
        if missing:
            p.error(f"--out: {args.out} is not this benchmark's JSON (no {', '.join(missing)})")
    for name in ("nsamples", "seqlen", "eval_seqlen", "max_windows", "block_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.only:
        from reference.spec import METHODS

        bad = [m for m in args.only.split(",") if m not in METHODS]
        if bad:
            p.error(f"--only: unknown method(s) {bad}")
    return args


def targets(runs: list) -> list:
    """The quality targets of the issue, judged on these numbers: (name, met, evidence). Each
    method at its default alpha (``spec.default_alpha``: Thanos structured keeps 0.2 of its rows
    dense)."""
    def ppl(method, pattern):
        alpha = spec.default_alpha(method, pattern)
        for r in runs:
            if (r["method"], r["pattern"], r["alpha"]) == (method, pattern, alpha):
                return r["perplexity"]
        return None

    out = []
    for pattern in ("2:4", "4:8", "structured"):
        t, s = ppl("thanos", pattern), ppl("sparsegpt", pattern)
        if t is not None and s is not None:
            out.append((f"thanos <= sparsegpt at {PATTERN_LABEL[pattern]}", t <= s, f"{t:.2f} vs {s:.2f}"))
    t, s = ppl("thanos", "unstructured"), ppl("sparsegpt", "unstructured")
    if t is not None and s is not None:
        out.append(("thanos within 3% of sparsegpt at 50% unstructured", t <= 1.03 * s, f"{t:.2f} vs {s:.2f} ({(t / s - 1) * 100:+.1f}%)"))
    t = ppl("thanos", "structured")
    for other in ("wanda", "magnitude"):
        o = ppl(other, "structured")
        if t is not None and o is not None:
            out.append((f"thanos far better than {other} at structured 30%", t < 0.5 * o, f"{t:.2f} vs {o:.2f}"))
    return out


def seed_noise(settings: dict, records_path: Path) -> list:
    """Markdown lines: the seed noise of this table's Thanos-vs-SparseGPT comparisons. The
    ``study --quick`` runs prune at this benchmark's default size (calibration windows and tokens,
    evaluation windows and tokens, each method's default B) at several seeds, and the study's
    defaults table judges each difference against that noise. Their calibration windows come from
    the first ``study.CALIBRATION_SHARE`` of the C4 sample (the rest is a held-out text), so their
    seed 0 is not this table's run. At other settings the noise was not measured, and the lines say so."""
    from benchmarks import study

    size = study.SIZES["quick"]
    ours = tuple(settings[k] for k in ("nsamples", "seqlen", "max_windows", "eval_seqlen", "block_size"))
    if ours != (size.nsamples, size.seqlen, size.eval_windows, size.eval_seqlen, None):
        return [f"Seed noise: not measured at these settings (the `study --quick` runs that measure it calibrate on "
                f"{size.nsamples} × {size.seqlen} tokens, evaluate {size.eval_windows} × {size.eval_seqlen} tokens and "
                f"prune at each method's default B)."]
    records = study.newest_records(study.read_records(records_path), "quick")
    table = [line for line in study.report_defaults(records, [NOISE_TEXT], size, windows=size.nsamples) if line]
    where = records_path.relative_to(HERE.parent) if records_path.is_relative_to(HERE.parent) else records_path
    if not table:
        return [f"Seed noise: not measured yet (no runs of both methods' defaults at this size in `{where}`)."]
    return [f"Seed noise: the targets above are judged on one calibration seed. The same comparisons at this size "
            f"over several seeds (the defaults table of `python -m benchmarks study report --quick`, from `{where}`: "
            f"Thanos and SparseGPT at their default B and alpha; calibration windows drawn from the first "
            f"{100 * study.CALIBRATION_SHARE:.0f} % of the C4 sample, "
            f"so seed 0 there is not this table's run; perplexity on the same Wikipedia windows; paired by seed; "
            f"noise = the larger standard deviation over seeds; **yes**: Thanos lower by more than the noise, a verdict "
            f"given from {study.MIN_VERDICT_SEEDS} paired seeds on, `MIN_VERDICT_SEEDS` in `benchmarks/study.py`):", "",
            *table]


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = [
        SECTION, "",
        f"Written by `{payload['command']}` on {payload['machine']} ({payload['threads']} thread{'s' if payload['threads'] != 1 else ''}), "
        f"{payload['date']}, commit {payload['commit']}; total {payload['wall_seconds'] / 60:.1f} min, peak RSS {payload['max_rss_mib']:.0f} MiB "
        f"(the dense model and one pruned copy resident).",
        "",
        f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32), every Linear of the 30 decoder blocks pruned; "
        f"calibration: {s['nsamples']} random windows of {s['seqlen']} tokens of C4 (seed {s['seed']}); "
        f"perplexity: the first {payload['eval_windows']} non-overlapping windows of {s['eval_seqlen']} tokens of the "
        f"Wikipedia sample; block size {s['block_size'] or 'B (the default of each method, pattern and layer width)'}, percdamp 0.01. Time: one run of the pruning pass (calibration "
        f"forwards + solver), without the evaluation.",
        "",
        "| method | pattern | alpha | B | perplexity | sparsity | time (s) |",
        "|---|---|---|---|---|---|---|",
        f"| dense | - | - | - | {payload['dense_perplexity']:.2f} | 0 | - |",
    ]
    for r in payload["runs"]:
        lines.append(f"| {r['method']} | {PATTERN_LABEL[r['pattern']]} | {r['alpha']:g} | {r.get('block_size') or '-' if r['method'] in DEFAULT_BLOCK_SIZE else '-'} | "
                     f"{r['perplexity']:.2f} | "
                     f"{r['achieved_sparsity']:.4f} | {r['seconds']:.1f} |")
    lines += ["", "Targets (one calibration seed):", ""]
    for name, met, evidence in payload["targets"]:
        lines.append(f"- {'met' if met else '**missed**'}: {name} ({evidence})")
    lines.append(f"- {'met' if payload['max_rss_mib'] < 4096 else '**missed**'}: peak memory pruning on CPU under 4 GB "
                 f"({payload['max_rss_mib']:.0f} MiB for the whole benchmark process)")
    if payload.get("seed_noise"):
        lines += ["", *payload["seed_noise"]]
    return "\n".join(lines) + "\n"


def write_readme_section(text: str, readme: Path = README) -> None:
    """Replace the body of the Quality section only (up to the next '## ' heading or the end)."""
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if not pattern.search(content):
        raise ValueError(f"{readme}: no {SECTION!r} section")
    rest_follows = bool(re.search(rf"^{re.escape(SECTION)}\n.*?^## ", content, re.S | re.M))
    content = pattern.sub(lambda _m: text + ("\n" if rest_follows else ""), content, count=1)
    readme.write_text(content, encoding="utf-8")


def _git_state() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "thanos"], cwd=HERE.parent, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (thanos/ modified)" if dirty else "")


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.report:
        return report(Path(args.out), readme=not args.no_readme)
    import torch

    from thanos import data
    from thanos.assets import load_model
    from thanos.model import prune_model

    started = time.perf_counter()
    commit = _git_state()
    model, tokenizer = load_model()
    calibration = data.calibration_windows(tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    windows = data.eval_windows(data.eval_tokens(tokenizer), args.eval_seqlen, args.max_windows)
    dense = data.perplexity(model, windows, device=args.device).value
    print(f"dense perplexity {dense:.3f}", flush=True)
    only = None if not args.only else set(args.only.split(","))
    runs = []
    for method, pattern, sparsity, alpha in RUNS:
        if only is not None and method not in only:
            continue
        pruned = copy.deepcopy(model)
        result = prune_model(pruned, calibration, method=method, pattern=pattern, sparsity=sparsity, alpha=alpha,
                             block_size=args.block_size, device=args.device, progress=not args.no_progress)
        ppl = data.perplexity(pruned, windows, device=args.device).value
        used = result.block_sizes  # per Linear: the default depends on the layer's width
        runs.append(dict(method=method, pattern=pattern, sparsity=sparsity, alpha=alpha,
                         block_size="/".join(str(b) for b in used) or None, perplexity=ppl,
                         achieved_sparsity=result.achieved_sparsity, seconds=result.seconds,
                         solver_seconds=sum(layer.seconds for layer in result.layers)))
        print(f"{method:9s} {pattern:12s} alpha={alpha:<4g} perplexity {ppl:9.3f}  sparsity {result.achieved_sparsity:.4f}  "
              f"{result.seconds:6.1f} s", flush=True)
        del pruned
    command = "python -m benchmarks quality" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    payload = dict(
        command=command, date=time.strftime("%Y-%m-%d"), machine=cpu_name(), threads=torch.get_num_threads(),
        settings={k: getattr(args, k) for k in RUN_OPTIONS},
        eval_windows=int(windows.shape[0]), dense_perplexity=dense, runs=runs,
        wall_seconds=time.perf_counter() - started,
        max_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        versions={"torch": torch.__version__, "python": platform.python_version()}, commit=commit,
    )
    return write(payload, Path(args.out), readme=not args.no_readme)


def report(out: Path, *, readme: bool = True) -> int:
    """``--report``: the section again from the JSON ``out``, with the seed noise read again."""
    return write(json.loads(out.read_text(encoding="utf-8")), out, readme=readme)


def write(payload: dict, out: Path, *, readme: bool) -> int:
    """Add the targets (judged again from the runs, so that ``--report`` follows the defaults) and
    the seed noise to ``payload``, write it to ``out`` as JSON, print the section, and rewrite it
    in the README unless ``readme`` is false."""
    payload["targets"] = [list(t) for t in targets(payload["runs"])]
    payload["seed_noise"] = seed_noise(payload["settings"], STUDY_QUICK)  # the module global, at call time
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    text = markdown(payload)
    print("\n" + text)
    if readme:
        write_readme_section(text, README)  # the module global, at call time
    return 0


if __name__ == "__main__":
    sys.exit(main())
