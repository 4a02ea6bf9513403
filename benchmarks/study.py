"""``python -m benchmarks study STUDY [--quick] [options]``: quality studies on SmolLM2-135M.

Studies (issue 10), each a grid of pruning runs of the whole model, every run evaluated by
perplexity on several texts, every configuration repeated over calibration seeds:

- ``blocksize``: Thanos at block sizes B (and the whole layer) against SparseGPT (B = 128) at 50 %
  unstructured, 2:4, 4:8 (and structured 30 %, which has no B);
- ``metric``: the score inside Thanos (``thanos.prune``'s ``metric``: psi = |W| ||X||, |W|,
  SparseGPT's w^2 / [H^-1]_jj), the same update, at 50 % and 70 % unstructured, 2:4 and 4:8;
- ``alpha``: Thanos alpha in 0..0.3 at structured 30 % (alpha compensated: equal achieved
  sparsity) and 2:4 (alpha rows dense: lower achieved sparsity, reported next to it);
- ``calibration``: the number of calibration windows;
- ``owl``: uniform against outlier-weighted (OWL) block sparsity at 50 % and 70 %;
- ``runtime``: seconds per pipeline stage and solver step, and peak memory, per method;
- ``report``: tables (mean +- std over seeds) into ``benchmarks/README.md`` and PNG plots, from
  the recorded runs.

Every run is appended as one JSON line to ``benchmarks/results/study-<size>.jsonl`` (``size`` =
``quick`` or ``full``) as soon as it finishes; a study started again skips the runs already
recorded, so a long study can be stopped and resumed.

Texts: calibration windows are drawn (seeded) from the first 90 % of the tokens of exllamav3's
C4 sample; evaluation on the Wikipedia sample (``wiki``), on the last 10 % of the C4 sample
(``c4-heldout``, never drawn from by calibration) and, with ``--texts``, on the other samples that
ship in the same folder (``code``, ``technical``, ``multilingual``, ``tiny``: TinyStories).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks import cpu_name
from reference import spec

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see thanos/cli.py

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"

WHOLE = 0  # block size label for "the whole layer" (B >= every layer's input width)
# the widest Linear input of SmolLM2-135M (down_proj), the model every study prunes (a test checks it)
MODEL_MAX_INPUT_WIDTH = 1536
CALIBRATION_SHARE = 0.9  # calibration draws from the first 90 % of the C4 sample's tokens
TEXTS = ("wiki", "c4-heldout", "code", "technical", "multilingual", "tiny")
STUDIES = ("blocksize", "metric", "alpha", "calibration", "owl", "runtime")
METRICS = spec.METRICS  # thanos.prune's metric option: psi (the default), magnitude, sparsegpt
# the metric study also runs unstructured 70 %: the sparsity where the OWL study found Thanos' lead
# over SparseGPT gone on four of five texts, so whether the score (psi) is the cause is asked there
METRIC_SPARSITIES = {"unstructured": (0.5, 0.7)}
# the OWL study's Thanos scores per sparsity: at 70 %, where SparseGPT's score restored Thanos'
# lead over SparseGPT (the metric study), whether it and OWL's block sparsities add up is asked
OWL_SCORES = {0.5: ("psi",), 0.7: ("psi", "sparsegpt")}


def study_block_size(method: str, pattern: str) -> int:
    """The B every study but blocksize runs a method at: ``spec.fixed_block_size``, which was the
    library's default before Thanos at 2:4 moved to the whole layer (2026-12-06); their runs were
    made there, and what they vary (the score, alpha, the calibration size, OWL) is not B."""
    return spec.fixed_block_size(method, pattern)


def library_block_size(method: str, pattern: str) -> int:
    """The B ``block_size=None`` gives on the studies' model, as the tables label it: WHOLE where
    the default is the whole layer up to its widest input (then for every narrower one too), else
    the fixed B."""
    b = spec.default_block_size(method, pattern, MODEL_MAX_INPUT_WIDTH)
    return WHOLE if method == "thanos" and b == MODEL_MAX_INPUT_WIDTH else b


def calibration_settings(method: str, pattern: str) -> tuple:
    """The (B, alpha) one method runs at in the calibration study (its grid and its table): the
    studies' fixed B at alpha 0, and the library's defaults where they differ (Thanos at 2:4: the
    whole layer; at structured: alpha = ``spec.default_alpha``, 0.2), so that the defaults table has
    a line for every calibration size at the settings a user gets."""
    return tuple(dict.fromkeys(((study_block_size(method, pattern), 0.0),
                                (library_block_size(method, pattern), spec.default_alpha(method, pattern)))))


def owl_scores(method: str, sparsity: float) -> tuple:
    """The scores one method runs with in the OWL study at one sparsity (its grid and its table):
    none at a sparsity the study does not run; psi only for the methods other than Thanos."""
    if sparsity not in OWL_SCORES:
        return ()
    return OWL_SCORES[sparsity] if method == "thanos" else ("psi",)


def metric_sparsities(pattern: str) -> tuple:
    """The requested sparsities the metric study runs at for one pattern (its grid and its table)."""
    return METRIC_SPARSITIES.get(pattern, (PATTERN_SPARSITY[pattern],))


@dataclass(frozen=True)
class Size:
    """One study size: calibration windows x tokens, evaluation windows x tokens per text, seeds."""

    nsamples: int
    seqlen: int
    eval_windows: int
    eval_seqlen: int
    seeds: tuple
    block_sizes: tuple
    alphas: tuple
    calibration_counts: tuple


SIZES = {
    # minutes per run on one CPU thread: for a 2-core machine shared with others
    "quick": Size(nsamples=32, seqlen=256, eval_windows=8, eval_seqlen=512, seeds=(0, 1, 2),
                  block_sizes=(128, 512, WHOLE), alphas=(0.0, 0.1, 0.2, 0.3), calibration_counts=(16, 32, 64)),
    # the sizes: hours on a CPU
    "full": Size(nsamples=128, seqlen=512, eval_windows=40, eval_seqlen=512, seeds=(0, 1, 2, 3, 4),
                 block_sizes=(32, 64, 128, 256, 512, 1024, WHOLE), alphas=(0.0, 0.05, 0.1, 0.2, 0.3),
                 calibration_counts=(16, 32, 64, 128, 256)),
}

PATTERN_SPARSITY = {"unstructured": 0.5, "2:4": None, "4:8": None, "structured": 0.3}


# ------------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Config:
    """One pruning run (before the seed). ``block_size`` None: ``study_block_size`` for the method
    and pattern; ``nsamples`` None: the size's default."""

    study: str
    method: str
    pattern: str
    sparsity: Optional[float]
    block_size: Optional[int] = None
    alpha: float = 0.0
    metric: str = "psi"
    layer_sparsity: str = "uniform"
    nsamples: Optional[int] = None

    def resolved(self, size: Size) -> "Config":
        block = study_block_size(self.method, self.pattern) if self.block_size is None else self.block_size
        return dataclasses.replace(self, block_size=block, nsamples=self.nsamples or size.nsamples)

    def key(self, seed: int, size: str) -> str:
        """What identifies a run: its parameters, whichever study asked for it (a run one study made
        serves every study whose grid holds it); runtime runs are timed in a fresh process, apart."""
        c = self.resolved(SIZES[size])
        return json.dumps([size, "runtime" if c.study == "runtime" else "run", c.method, c.pattern, c.sparsity,
                           c.block_size, c.alpha, c.metric, c.layer_sparsity, c.nsamples, seed])


def _patterns(args) -> list:
    return args.patterns.split(",")


def configs(study: str, size: Size, patterns: list) -> list:
    """The grid of one study (seeds apart)."""
    out = []
    if study == "blocksize":
        for pattern in patterns:
            sp = PATTERN_SPARSITY[pattern]
            out.append(Config(study, "sparsegpt", pattern, sp, 128))
            if pattern == "structured":  # Thanos structured removes whole columns at once: no B
                out.append(Config(study, "thanos", pattern, sp, 128))
                continue
            out += [Config(study, "thanos", pattern, sp, b) for b in size.block_sizes]
    elif study == "metric":
        for pattern in patterns:
            if pattern == "structured":
                continue
            for sp in metric_sparsities(pattern):
                out += [Config(study, "thanos", pattern, sp, metric=m) for m in METRICS]
    elif study == "alpha":
        for pattern in patterns:
            if pattern == "unstructured":
                continue  # alpha applies to structured and N:M
            sp = PATTERN_SPARSITY[pattern]
            out += [Config(study, "thanos", pattern, sp, alpha=a) for a in size.alphas]
            out.append(Config(study, "sparsegpt", pattern, sp))
            if pattern != "structured":  # N:M with alpha rows dense prunes less: compare at its achieved sparsity
                for a in size.alphas:
                    if a > 0:
                        out.append(Config(study, "thanos", "unstructured", round(0.5 * (1 - a), 6)))
                        out.append(Config(study, "sparsegpt", "unstructured", round(0.5 * (1 - a), 6)))
    elif study == "calibration":
        for pattern in patterns:
            sp = PATTERN_SPARSITY[pattern]
            for n in size.calibration_counts:
                out += [Config(study, m, pattern, sp, b, alpha=a, nsamples=n) for m in ("thanos", "sparsegpt")
                        for b, a in calibration_settings(m, pattern)]
    elif study == "owl":
        for sp in OWL_SCORES:
            for method in ("thanos", "sparsegpt", "wanda"):
                for m in owl_scores(method, sp):
                    out += [Config(study, method, "unstructured", sp, metric=m, layer_sparsity=ls) for ls in ("uniform", "owl")]
    elif study == "runtime":
        for pattern in patterns:
            sp = PATTERN_SPARSITY[pattern]
            for method in spec.METHODS:
                out.append(Config(study, method, pattern, sp))
    else:
        raise ValueError(f"unknown study {study!r}; expected one of {STUDIES}")
    return out


# ------------------------------------------------------------------------------ runtime per step
class StepTimer:
    """Wall seconds per named step, by wrapping module functions for the duration of a run."""

    PIPELINE = ("capture_block_inputs", "accumulate_hessians", "prune_linear", "forward_block")
    SOLVER = (("K", "damped_factor", "factorisation"), ("K", "global_residual_mask", "mask"), ("K", "n_m_mask", "mask"),
              ("solver", "_solve_rows", "per-row solves"), ("K", "smallest_per_row", "mask"),
              ("K", "smallest_columns", "mask"), ("solver", "_sparsegpt", "sparsegpt column loop"),
              ("solver", "_thanos_structured", "structured solve"))

    def __init__(self):
        self.seconds: dict = {}
        self._restore: list = []

    def _wrap(self, module, name, label):
        original = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)
        self._restore.append((module, name, original))

    def __enter__(self):
        from thanos import _kernels, model, solver

        for name in self.PIPELINE:
            self._wrap(model, name, name)
        modules = {"K": _kernels, "solver": solver}
        for where, name, label in self.SOLVER:
            self._wrap(modules[where], name, label)
        return self

    def __exit__(self, *exc):
        for module, name, original in reversed(self._restore):
            setattr(module, name, original)
        self._restore.clear()

    def breakdown(self) -> dict:
        """Seconds per step; ``GEMMs and rest of the solver`` = prune_linear minus the steps inside it."""
        out = dict(self.seconds)
        inside = sum(v for k, v in out.items() if k not in self.PIPELINE)
        out["GEMMs and rest of the solver"] = max(0.0, out.get("prune_linear", 0.0) - inside)
        return out


# ------------------------------------------------------------------------------------ the runs
def load_texts(tokenizer, names, eval_windows: int, eval_seqlen: int):
    """(calibration tokens, {text name: evaluation windows})."""
    from thanos import data

    c4 = data.calibration_tokens(tokenizer)
    split = int(c4.numel() * CALIBRATION_SHARE)
    windows = {}
    for name in names:
        if name == "wiki":
            tokens = data.eval_tokens(tokenizer)
        elif name == "c4-heldout":
            tokens = c4[split:]
        else:
            tokens = data.tokenize(tokenizer, data.read_text(data.standard_text(f"{name}.utf8")))
        windows[name] = data.eval_windows(tokens, eval_seqlen, eval_windows)
    return c4[:split], windows


def run_one(model, config: Config, seed: int, size: Size, calibration_tokens, windows: dict, *, device="cpu",
            progress=False) -> dict:
    """Prune a copy of ``model`` as ``config`` says and evaluate it on every text: one record."""
    from thanos import data
    from thanos.model import prune_model

    config = config.resolved(size)
    nsamples = config.nsamples
    calibration = data.random_windows(calibration_tokens, nsamples, size.seqlen, seed)
    pruned = copy.deepcopy(model)
    timer = StepTimer() if config.study == "runtime" else contextlib.nullcontext()
    with timer:
        result = prune_model(pruned, None if config.method == "magnitude" else calibration, method=config.method,
                             pattern=config.pattern, sparsity=config.sparsity,
                             block_size=config.block_size or max_input_width(model), alpha=config.alpha,
                             metric=config.metric, layer_sparsity=config.layer_sparsity, device=device,
                             progress=progress)
    record = dict(
        config.__dict__, seed=seed, nsamples=nsamples, seqlen=size.seqlen,
        achieved_sparsity=result.achieved_sparsity, seconds=result.seconds,
        solver_seconds=sum(layer.seconds for layer in result.layers),
        perplexity={name: data.perplexity(pruned, w, device=device).value for name, w in windows.items()},
        eval_windows={name: int(w.shape[0]) for name, w in windows.items()}, eval_seqlen=size.eval_seqlen,
    )
    if config.study == "runtime":
        record["steps"] = timer.breakdown()
        record["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def max_input_width(model) -> int:
    from thanos.model import block_linears, decoder_layers

    return max(lin.in_features for block in decoder_layers(model) for lin in block_linears(block).values())


def read_records(path: Path) -> list:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


def newest_records(records: list, size: str) -> list:
    """One record per run (configuration and seed) and one dense record: the newest, which a study
    re-ran because an older one lacked a requested text. A run is deterministic for its seed, so
    the two agree on the texts they share (on one machine; BLAS may differ in the last bits elsewhere)."""
    latest: dict = {}
    for r in records:
        latest["dense" if r.get("method") == "dense" else record_key(r, size)] = r
    return list(latest.values())


def record_key(r: dict, size: str) -> str:
    return Config(r["study"], r["method"], r["pattern"], r["sparsity"], r["block_size"], r["alpha"], r["metric"],
                  r["layer_sparsity"], r["nsamples"]).key(r["seed"], size)


def run_study(args) -> int:
    import torch

    from thanos.assets import load_model

    size = SIZES[args.size]
    if args.block_sizes:
        size = dataclasses.replace(size, block_sizes=args.block_sizes)
    if args.alphas:
        size = dataclasses.replace(size, alphas=args.alphas)
    if args.calibration_windows:
        size = dataclasses.replace(size, calibration_counts=args.calibration_windows)
    seeds = args.seeds or size.seeds
    sparsities, alphas, blocks = args.only_sparsities, args.only_alphas, args.only_block_sizes
    grid = [c for c in configs(args.study, size, _patterns(args))
            if args.only_method in (None, c.method) and args.only_metric in (None, c.metric)
            and (sparsities is None or c.sparsity in sparsities) and (alphas is None or c.alpha in alphas)
            and (blocks is None or c.resolved(size).block_size in blocks)]  # None: the study's fixed B
    if not grid:
        def shown(values):
            return "any" if values is None else ",".join(f"{v:g}" for v in values)
        print(f"study {args.study}: no configuration matches --patterns {args.patterns}, --only-method "
              f"{args.only_method or 'any'}, --only-metric {args.only_metric or 'any'}, --only-sparsities "
              f"{shown(sparsities)}, --only-alphas {shown(alphas)} and --only-block-sizes {shown(blocks)}; "
              f"nothing run", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else RESULTS / f"study-{args.size}.jsonl"
    texts = args.texts.split(",")
    # a run is done when a record of it evaluated every requested text (an older record with fewer
    # texts is run again; the report then reads the newest record of each run)
    done = {record_key(r, args.size) for r in read_records(out)
            if r.get("method") != "dense" and set(texts) <= set(r.get("perplexity", {}))}
    todo = [(c, s) for s in seeds for c in grid if c.key(s, args.size) not in done]
    print(f"study {args.study} ({args.size}): {len(grid)} configurations x {len(seeds)} seeds, "
          f"{len(todo)} runs to do, recording to {out}", flush=True)
    if args.dry_run:
        for c, s in todo:
            print(f"  {c} seed={s}")
        return 0
    if not todo:
        return 0
    if args.study == "runtime" and not args.in_process:
        return _runtime_in_children(args, todo, out)
    model, tokenizer = (args.loader or load_model)()
    calibration_tokens, windows = load_texts(tokenizer, texts, size.eval_windows, size.eval_seqlen)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not any(r.get("method") == "dense" and set(texts) <= set(r["perplexity"]) for r in read_records(out)):
        dense = {name: _dense_perplexity(model, w, args.device) for name, w in windows.items()}
        _append(out, dict(study="dense", method="dense", perplexity=dense, eval_seqlen=size.eval_seqlen,
                          eval_windows={n: int(w.shape[0]) for n, w in windows.items()}))
    for i, (config, seed) in enumerate(todo, 1):
        record = run_one(model, config, seed, size, calibration_tokens, windows, device=args.device,
                         progress=not args.no_progress)
        record.update(size=args.size, nsamples_requested=config.nsamples, threads=torch.get_num_threads(),
                      machine=f"{platform.machine()} CPU", cpu=cpu_name(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      command=args.command)
        _append(out, record)
        ppl = "  ".join(f"{n} {v:.2f}" for n, v in record["perplexity"].items())
        print(f"[{i}/{len(todo)}] {config.method} {config.pattern} B={record['block_size']} alpha={config.alpha} "
              f"metric={config.metric} {config.layer_sparsity} n={record['nsamples']} seed={seed}: {ppl}  "
              f"sparsity {record['achieved_sparsity']:.4f}  {record['seconds']:.0f} s", flush=True)
    return 0


def _dense_perplexity(model, windows, device):
    from thanos import data

    return data.perplexity(model, windows, device=device).value


def _append(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _runtime_in_children(args, todo, out) -> int:
    """Peak memory per method needs a fresh process per run: run each in a child."""
    for config, seed in todo:
        cmd = [sys.executable, "-m", "benchmarks", "study", "runtime", "--in-process", "--size", args.size,
               "--patterns", config.pattern, "--seeds", str(seed), "--only-method", config.method,
               "--texts", args.texts, "--out", str(out), "--no-progress", "--device", args.device]
        subprocess.run(cmd, check=True)
    return 0


# ------------------------------------------------------------------------------------ reporting
def mean_std(values: list) -> tuple:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def _baseline(r: dict, alpha: float = 0.0) -> bool:
    """Whether ``r`` is a Thanos or SparseGPT run with nothing but B and the calibration size
    varied: psi, uniform, ``alpha`` (the studies' 0 unless given), the pattern's standard sparsity,
    not a runtime run."""
    return (r.get("method") in ("thanos", "sparsegpt") and r["study"] != "runtime" and r["alpha"] == alpha
            and r["metric"] == "psi" and r["layer_sparsity"] == "uniform"
            and r["sparsity"] == PATTERN_SPARSITY.get(r["pattern"], -1))


def in_study(r: dict, study: str, size: Size) -> bool:
    """Whether run ``r`` belongs in ``study``'s tables: the runs its grid asks for, whichever study
    made them (the B = default, 32-window, alpha 0, psi, uniform run serves them all)."""
    if r.get("method") == "dense":
        return False
    if (r["study"] == "runtime") != (study == "runtime"):
        return False
    if study == "runtime":
        return True
    standard = r["sparsity"] == PATTERN_SPARSITY.get(r["pattern"], -1)
    default_b = r["block_size"] == study_block_size(r["method"], r["pattern"])
    plain = r["metric"] == "psi" and r["layer_sparsity"] == "uniform"
    calibrated = r["nsamples"] == size.nsamples
    if study == "blocksize":
        return _baseline(r) and calibrated and (r["method"] == "thanos" or default_b)
    if study == "metric":
        return (r["method"] == "thanos" and r["layer_sparsity"] == "uniform" and calibrated and r["alpha"] == 0
                and default_b and r["pattern"] != "structured" and r["sparsity"] in metric_sparsities(r["pattern"]))
    if study == "alpha":
        if not (plain and calibrated and default_b and r["method"] in ("thanos", "sparsegpt")):
            return False
        if r["pattern"] == "unstructured":  # the N:M runs' achieved sparsity, 0.5 (1 - alpha) for alpha > 0
            return r["alpha"] == 0 and r["sparsity"] < PATTERN_SPARSITY["unstructured"]
        return standard and (r["method"] == "thanos" or r["alpha"] == 0)
    if study == "calibration":
        return _baseline(r, r["alpha"]) and (r["block_size"], r["alpha"]) in calibration_settings(r["method"], r["pattern"])
    if study == "owl":
        return (r["pattern"] == "unstructured" and r["metric"] in owl_scores(r["method"], r["sparsity"]) and calibrated
                and default_b and r["alpha"] == 0)
    raise ValueError(f"unknown study {study!r}")


def group(records: list, study: str, size: Size) -> dict:
    """{config tuple: [records over seeds]} for one study."""
    out: dict = {}
    for r in records:
        if not in_study(r, study, size):
            continue
        key = (r["method"], r["pattern"], r["sparsity"], r["block_size"], r["alpha"], r["metric"], r["layer_sparsity"],
               r["nsamples"])
        out.setdefault(key, []).append(r)
    return out


# the fields of a group key (``group``), as the tables name them, and what each study varies
KEY_FIELDS = ("method", "pattern", "sparsity", "B", "alpha", "metric", "layer sparsity", "calibration windows")
STUDY_AXIS = {study: KEY_FIELDS.index(field) for study, field in
              (("metric", "metric"), ("alpha", "alpha"), ("calibration", "calibration windows"), ("owl", "layer sparsity"))}


def studied(records: list, study: str, size: Size) -> dict:
    """``group(records, study, size)``, or {} while every run in it has the same value of what the
    study varies (only the baseline runs the other studies share: nothing to table or plot yet)."""
    groups = group(records, study, size)
    return groups if len({k[STUDY_AXIS[study]] for k in groups}) > 1 else {}


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


# The fewest paired seeds that earn a verdict. The noise is a standard deviation over seeds: with two
# it rests on one degree of freedom (its 90 % interval spans a factor of about 30), and the paired
# t-test beside it has one too, so two seeds report their numbers but give no verdict.
MIN_VERDICT_SEEDS = 3
TOO_FEW_SEEDS = f"too few seeds (a verdict needs {MIN_VERDICT_SEEDS})"


@dataclass(frozen=True)
class Comparison:
    """Runs ``a`` (Thanos) against runs ``b`` (SparseGPT), paired by seed (the same calibration
    windows). ``difference`` = mean(a) - mean(b) (negative: ``a`` has the lower perplexity);
    ``noise`` = the larger of the two standard deviations over seeds; ``paired_mean`` /
    ``paired_std``: of the per-seed differences a - b; ``verdict``: "yes" when ``a`` is lower by
    more than the noise, "worse" when higher by more, else "within noise", and "too few seeds"
    below ``MIN_VERDICT_SEEDS`` paired seeds, whatever the gap. ``paired_p``: the
    two-sided p-value of a paired t-test of the per-seed differences (nan when they are all
    equal): reported beside the verdict, not folded into it. The two answer different questions
    (is the gap larger than one seed's scatter; is it consistent across paired seeds) and can
    disagree, most with two seeds, where the t-test has one degree of freedom."""

    difference: float
    noise: float
    paired_mean: float
    paired_std: float
    verdict: str
    paired_p: float = math.nan


def compare(a: list, b: list) -> Optional[Comparison]:
    """``Comparison`` of two paired lists of perplexities, or None with fewer than 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    difference, noise = ma - mb, max(sa, sb)
    if len(a) < MIN_VERDICT_SEEDS:
        verdict = TOO_FEW_SEEDS
    else:
        verdict = "yes" if -difference > noise else ("worse" if difference > noise else "within noise")
    pm, ps = mean_std([x - y for x, y in zip(a, b)])
    return Comparison(difference, noise, pm, ps, verdict, paired_t_test(a, b))


def paired_t_test(a: list, b: list) -> float:
    """Two-sided p-value of the paired t-test of ``a - b`` against 0 (nan when every difference is
    the same, where the test has no spread to judge by). "The same" is up to rounding: 10.1 - 20.1
    and 10.0 - 20.0 differ in the last bit, a spread that is rounding error, not data. SciPy warns of
    catastrophic cancellation where the differences lie within 10 eps of their mean; the cut here
    is twice that, so that the two means' own rounding cannot let a warning through."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return math.nan
    centre = statistics.fmean(d)
    if max(abs(x - centre) for x in d) <= 20 * sys.float_info.epsilon * abs(centre):
        return math.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def _p(p: float) -> str:
    return "p n/a" if math.isnan(p) else (f"p {p:.3f}" if p >= 0.001 else "p < 0.001")


def beats(a: list, b: list) -> str:
    """Whether mean(a) < mean(b) by more than the seed noise (``compare``), with the numbers."""
    c = compare(a, b)
    if c is None:
        return "n/a (fewer than 2 seeds)"
    return (f"{c.verdict} ({c.difference:+.2f}; noise {c.noise:.2f}; paired {c.paired_mean:+.2f} ± {c.paired_std:.2f}, "
            f"{_p(c.paired_p)})")


def _label_b(b: int) -> str:
    return "whole" if b == WHOLE else str(b)


def _b_cell(method: str, pattern: str, b: int) -> str:
    """A run's B as the tables label it, or "-" where B plays no role (structured Thanos chooses its
    columns once, with no blocks; ``thanos.model.layer_block_size``), whatever B the record keys."""
    from thanos.model import layer_block_size

    return "-" if layer_block_size(method, pattern, b, MODEL_MAX_INPUT_WIDTH) is None else _label_b(b)


def _thanos_default_b_label(pattern: str) -> str:
    """Thanos' default B at ``pattern`` as the tables label it (``_b_cell``)."""
    return _b_cell("thanos", pattern, library_block_size("thanos", pattern))


def _requested(pattern, sparsity) -> float:
    """The sparsity a run asked for: N/M for N:M, else its ``sparsity`` (alpha > 0 at N:M keeps rows
    dense, so less is achieved; at structured the other rows are pruned more, so as much is)."""
    kind, n, m = spec.parse_pattern(pattern)
    return n / m if kind == "N:M" else sparsity


def _pattern_label(pattern, sparsity):
    if pattern == "unstructured":
        return f"{sparsity * 100:g}% unstructured"
    if pattern == "structured":
        return f"structured {sparsity * 100:g}%"
    return pattern


def report_blocksize(records, texts, size) -> list:
    groups = group(records, "blocksize", size)
    lines = []
    patterns = sorted({(k[1], k[2]) for k in groups}, key=lambda p: list(PATTERN_SPARSITY).index(p[0]))
    for pattern, sparsity in patterns:
        lines += [f"**{_pattern_label(pattern, sparsity)}** (perplexity, mean ± std over seeds; 'beats "
                  f"SparseGPT': whether Thanos is lower by more than the larger std, then Thanos - SparseGPT: the "
                  f"difference of the means, the noise, the per-seed paired difference; a verdict from "
                  f"{MIN_VERDICT_SEEDS} seeds on)", "",
                  "| method | B | seeds | " + " | ".join(texts) + " | " +
                  " | ".join(f"beats SparseGPT on {t}" for t in texts) + " | prune time (s) |",
                  "|---|---|---:|" + "---:|" * len(texts) + "---|" * len(texts) + "---:|"]
        base = [v for k, v in groups.items() if k[0] == "sparsegpt" and k[1] == pattern]
        base = base[0] if base else []
        rows = sorted([(k, v) for k, v in groups.items() if k[1] == pattern],
                      key=lambda kv: (kv[0][0] != "sparsegpt", kv[0][3] or 10**6))
        for k, runs in rows:
            cells = [fmt(*mean_std([r["perplexity"][t] for r in runs if t in r["perplexity"]])) for t in texts]
            verdicts = ["-" if k[0] == "sparsegpt" else
                        beats(*_paired(runs, base, t)) for t in texts]
            seconds = statistics.fmean(r["seconds"] for r in runs)
            lines.append(f"| {k[0]} | {_b_cell(k[0], k[1], k[3])} | {len(runs)} | " + " | ".join(cells) + " | "
                         + " | ".join(verdicts) + f" | {seconds:.0f} |")
        lines.append("")
        lines += _against_best_b({k[3]: v for k, v in groups.items() if k[0] == "thanos" and k[1] == pattern}, texts)
    return lines


def defaults_pairs(records, size) -> list:
    """[(pattern, calibration windows, Thanos runs, SparseGPT runs)]: each method at the B
    ``block_size=None`` gives (``library_block_size``) and the alpha ``alpha=None`` gives
    (``spec.default_alpha``: 0.2 for Thanos structured, else 0; psi, uniform), for every
    calibration size both ran at."""
    runs: dict = {}
    for r in records:
        if (r.get("method") in ("thanos", "sparsegpt")
                and _baseline(r, spec.default_alpha(r["method"], r["pattern"]))
                and r["block_size"] == library_block_size(r["method"], r["pattern"])):
            runs.setdefault((r["pattern"], r["nsamples"], r["method"]), []).append(r)
    out = []
    for pattern in PATTERN_SPARSITY:
        for n in sorted({k[1] for k in runs if k[0] == pattern}):
            if (pattern, n, "thanos") in runs and (pattern, n, "sparsegpt") in runs:
                out.append((pattern, n, runs[(pattern, n, "thanos")], runs[(pattern, n, "sparsegpt")]))
    return out


def report_defaults(records, texts, size, windows: Optional[int] = None) -> list:
    """One line per pattern and calibration size (only ``windows`` calibration windows, if given):
    Thanos at its default B against SparseGPT at its default, text by text: mean perplexities over
    the shared seeds, the per-seed paired difference, the seed noise, the verdict and the paired
    t-test's p-value."""
    lines = ["| pattern | B | calibration windows | seeds | " + " | ".join(texts) + " |",
             "|---|---:|---:|---:|" + "---|" * len(texts)]
    for pattern, n, thanos_runs, sparsegpt_runs in defaults_pairs(records, size):
        if windows is not None and n != windows:
            continue
        cells = []
        for t in texts:
            a, b = _paired(thanos_runs, sparsegpt_runs, t)
            if not a:
                cells.append("-")
            elif len(a) == 1:  # one seed: the difference, but no noise to judge it by
                cells.append(f"{a[0]:.2f} vs {b[0]:.2f}: {a[0] - b[0]:+.2f} ({100 * (a[0] - b[0]) / b[0]:+.1f} %), "
                             "one seed: noise not measured")
            else:
                c = compare(a, b)
                cells.append(f"{statistics.fmean(a):.2f} vs {statistics.fmean(b):.2f}: {c.paired_mean:+.2f} ± "
                             f"{c.paired_std:.2f}, noise {c.noise:.2f}, {_p(c.paired_p)}: **{c.verdict}**")
        if all(c == "-" for c in cells):
            continue
        seeds = max(len(_paired(thanos_runs, sparsegpt_runs, t)[0]) for t in texts)
        lines.append(f"| {_pattern_label(pattern, PATTERN_SPARSITY[pattern])} | "
                     f"{_thanos_default_b_label(pattern)} | {n} | {seeds} | " + " | ".join(cells) + " |")
    return lines + [""] if len(lines) > 2 else []


# the settings the "best value" tables rank Thanos by: (name, how a value is labelled, sort key)
B_AXIS = ("B", _label_b, lambda b: b or 10**6)  # the whole layer (0) last
ALPHA_AXIS = ("alpha", lambda a: f"{a:g}", float)


def _against_best_b(by_b: dict, texts, axis: tuple = B_AXIS) -> list:
    """Thanos at each B (or each value of another setting, ``axis``: ``B_AXIS``, ``ALPHA_AXIS``)
    against the best one, text by text, at the seeds every compared value ran (paired runs: the
    same calibration windows): percent above the lowest perplexity, its mean over the texts, and
    whether a value is within 1 % of the best on every text. One table over the seeds all values
    share, then one per level of seeds: the values that ran at least k seeds, over the seeds they
    share, wherever that is more seeds than the table before."""
    if len(by_b) < 2:
        return []
    seeds_of = {b: {r["seed"] for r in runs} for b, runs in by_b.items()}
    lines, seeds_so_far = [], 0
    for k in sorted({len(s) for s in seeds_of.values()}):
        group = {b: runs for b, runs in by_b.items() if len(seeds_of[b]) >= k}
        shared = set.intersection(*(seeds_of[b] for b in group))
        if len(group) >= 2 and len(shared) > seeds_so_far:
            lines += _best_b_table(group, texts, shared, axis)
            seeds_so_far = len(shared)
    return lines


def _above_best(by_b: dict, texts, seeds: set) -> tuple:
    """(the texts every value evaluated at ``seeds``, {value: [its mean perplexity over ``seeds`` in %
    above the lowest value's, text by text]}): what the best-value tables and the glance rank by."""
    means = {b: {t: statistics.fmean(r["perplexity"][t] for r in runs if r["seed"] in seeds) for t in texts
                 if all(t in r["perplexity"] for r in runs if r["seed"] in seeds)} for b, runs in by_b.items()}
    shared = [t for t in texts if all(t in m for m in means.values())]
    best = {t: min(m[t] for m in means.values()) for t in shared}
    return shared, {b: [100 * (means[b][t] / best[t] - 1) for t in shared] for b in by_b}


def _seeds_label(seeds) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"


def _best_b_table(by_b: dict, texts, seeds: set, axis: tuple = B_AXIS) -> list:
    if not seeds:
        return []
    name, label, order = axis
    shared, above_of = _above_best(by_b, texts, seeds)
    lines = [f"Thanos by {name}, mean over {_seeds_label(seeds)} "
             f"(which every {name} here ran): perplexity above the best {name} on each text, in %", "",
             f"| {name} | " + " | ".join(shared) + " | mean over the texts | within 1 % of the best on every text |",
             "|---|" + "---:|" * len(shared) + "---:|---|"]
    for b in sorted(by_b, key=order):
        above = above_of[b]
        lines.append(f"| {label(b)} | " + " | ".join(f"{a:.1f}" for a in above)
                     + f" | {statistics.fmean(above):.1f} | {'yes' if max(above) <= 1 else 'no'} |")
    return lines + [""]


def thanos_by_setting(records, pattern: str, size: Size) -> tuple:
    """(axis, Thanos' default value, {value: Thanos runs}) of the setting Thanos' default at
    ``pattern`` was chosen over: B from the block-size study, or at structured (no B) alpha from the
    alpha study."""
    if pattern == "structured":
        return ALPHA_AXIS, spec.default_alpha("thanos", pattern), {
            k[4]: runs for k, runs in studied(records, "alpha", size).items() if k[0] == "thanos" and k[1] == pattern}
    return B_AXIS, library_block_size("thanos", pattern), {
        k[3]: runs for k, runs in group(records, "blocksize", size).items() if k[0] == "thanos" and k[1] == pattern}


def _default_against_best(records, pattern: str, texts, size: Size) -> str:
    """Thanos' default B (alpha at structured) against the best value measured, over the seeds every
    value ran: the mean over the texts and the worst text of its % above each text's best."""
    (name, _, _), default, by_value = thanos_by_setting(records, pattern, size)
    if default not in by_value or len(by_value) < 2:
        return "-"
    seeds = set.intersection(*({r["seed"] for r in runs} for runs in by_value.values()))
    shared, above_of = _above_best(by_value, texts, seeds) if seeds else ([], {})
    if not shared:
        return "-"
    above = above_of[default]
    mean, worst = statistics.fmean(above), max(range(len(shared)), key=above.__getitem__)
    digits = 1  # more where one decimal would print a mean beyond 1 % as 1.0 (or one within it as 1.0)
    while digits < 6 and mean != 1 and float(f"{mean:.{digits}f}") == 1:
        digits += 1
    return (f"{mean:.{digits}f} mean ({'within' if mean <= 1 else 'not within'} 1 %), {above[worst]:.1f} on {shared[worst]} "
            f"({len(by_value)} {name} values measured, {_seeds_label(seeds)})")


def report_glance(records, texts, size: Size) -> list:
    """The issue's target in one table, at the size's calibration windows: per pattern, Thanos at
    its defaults against SparseGPT text by text (the gap and the seed noise in % of SparseGPT's mean
    perplexity, and ``compare``'s verdict, as in the defaults table), how many of those cells are
    beyond the noise, the default's distance from the best B (alpha) measured
    (``_default_against_best``), and the mean prune times."""
    lines = ["| pattern | Thanos default | seeds | " + " | ".join(texts)
             + " | beyond the noise | default vs the best B (structured: alpha), % above | prune time (s), Thanos / SparseGPT |",
             "|---|---|---:|" + "---|" * len(texts) + "---:|---|---:|"]
    total = beyond_total = 0
    for pattern, n, thanos_runs, sparsegpt_runs in defaults_pairs(records, size):
        if n != size.nsamples:
            continue
        cells, judged, beyond = [], 0, 0
        for t in texts:
            a, b = _paired(thanos_runs, sparsegpt_runs, t)
            c = compare(a, b)
            if not a:
                cells.append("-")
            elif c is None:
                cells.append(f"{100 * (a[0] / b[0] - 1):+.1f} %, one seed")
            else:
                scale = 100 / statistics.fmean(b)
                cells.append(f"{scale * c.difference:+.1f} % (noise {scale * c.noise:.1f} %): {c.verdict}")
                if c.verdict != TOO_FEW_SEEDS:
                    judged, beyond = judged + 1, beyond + (c.verdict == "yes")
        total, beyond_total = total + judged, beyond_total + beyond
        seeds = max(len(_paired(thanos_runs, sparsegpt_runs, t)[0]) for t in texts)
        alpha, b = spec.default_alpha("thanos", pattern), _thanos_default_b_label(pattern)
        default = ("no B" if b == "-" else f"B {b}") + (f", alpha {alpha:g}" if alpha else "")
        times = " / ".join(f"{statistics.fmean(r['seconds'] for r in runs):.0f}" for runs in (thanos_runs, sparsegpt_runs))
        lines.append(f"| {_pattern_label(pattern, PATTERN_SPARSITY[pattern])} | {default} | {seeds} | " + " | ".join(cells)
                     + f" | {beyond} of {judged} | {_default_against_best(records, pattern, texts, size)} | {times} |")
    if len(lines) == 2:
        return []
    return lines + ["", f"Cells where Thanos is ahead by more than the seed noise: {beyond_total} of {total}.", ""]


def report_alpha(records, texts, size) -> list:
    """The alpha table, then Thanos at structured by alpha against the best alpha, text by text
    (the rule the default alpha is chosen by, as the block sizes are: "The default alpha")."""
    lines = report_generic(records, texts, "alpha", ["method", "pattern", "alpha"], size)
    axis, _, structured = thanos_by_setting(records, "structured", size)
    if len(structured) >= 2:
        lines += [f"At {_pattern_label('structured', PATTERN_SPARSITY['structured'])}:", ""]
        lines += _against_best_b(structured, texts, axis)
    return lines


def _paired(a_runs, b_runs, text):
    """The perplexities on ``text`` of the seeds both run lists evaluated it at, in seed order."""
    a_of = {r["seed"]: r["perplexity"][text] for r in a_runs if text in r["perplexity"]}
    b_of = {r["seed"]: r["perplexity"][text] for r in b_runs if text in r["perplexity"]}
    seeds = sorted(a_of.keys() & b_of.keys())
    return [a_of[s] for s in seeds], [b_of[s] for s in seeds]


def _sort_key(config: tuple) -> tuple:
    """Configurations in reading order: numbers by value (32 before 128), the rest by name."""
    return tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)) for x in config)


def report_generic(records, texts, study, columns, size) -> list:
    groups = studied(records, study, size)
    if not groups:
        return []
    lines = ["| " + " | ".join(columns) + " | seeds | requested sparsity | achieved sparsity | " + " | ".join(texts)
             + " | prune time (s) |",
             "|" + "---|" * len(columns) + "---:|---:|---:|" + "---:|" * len(texts) + "---:|"]
    for k, runs in sorted(groups.items(), key=lambda kv: _sort_key(kv[0])):
        cells = []
        for c in columns:
            v = k[KEY_FIELDS.index(c)]
            cells.append(_pattern_label(k[1], k[2]) if c == "pattern" else (_b_cell(k[0], k[1], v) if c == "B" else str(v)))
        ppl = [fmt(*mean_std([r["perplexity"][t] for r in runs if t in r["perplexity"]])) for t in texts]
        lines.append("| " + " | ".join(cells) + f" | {len(runs)} | {_requested(k[1], k[2]):.4f} | "
                     f"{statistics.fmean(r['achieved_sparsity'] for r in runs):.4f} | "
                     + " | ".join(ppl) + f" | {statistics.fmean(r['seconds'] for r in runs):.0f} |")
    return lines + [""]


def runtime_runs(records) -> list:
    """The runtime study's records (those with a step breakdown), by pattern (as PATTERN_SPARSITY
    lists them) and sparsity, then method (as spec.METHODS lists them), then seed: the table's and
    the plot's order, whatever order the runs were recorded in."""
    patterns = list(PATTERN_SPARSITY)
    runs = [r for r in records if r.get("study") == "runtime" and "steps" in r]
    return sorted(runs, key=lambda r: (patterns.index(r["pattern"]), r["sparsity"] or 0.0,
                                       spec.METHODS.index(r["method"]), r["seed"]))


def report_runtime(records) -> list:
    runs = runtime_runs(records)
    if not runs:
        return []
    steps = sorted({s for r in runs for s in r["steps"]})
    lines = ["| method | pattern | total (s) | " + " | ".join(steps) + " | peak RSS (MiB) |",
             "|---|---|---:|" + "---:|" * len(steps) + "---:|"]
    for r in runs:
        lines.append(f"| {r['method']} | {_pattern_label(r['pattern'], r['sparsity'])} | {r['seconds']:.1f} | "
                     + " | ".join(f"{r['steps'].get(s, 0.0):.1f}" for s in steps) + f" | {r['max_rss_mib']:.0f} |")
    return lines + [""]


def plot_defaults(plt, records, texts, out_dir: Path, size, size_name: str) -> Optional[Path]:
    """The target at a glance: per pattern, per text, Thanos - SparseGPT at their default B, in % of
    SparseGPT's perplexity, one dot per seed (paired: the same calibration windows) and the mean ±
    std (where there are several seeds), one colour per calibration size. Below zero: Thanos is better."""
    pairs = [p for p in defaults_pairs(records, size) if any(_paired(p[2], p[3], t)[0] for t in texts)]
    patterns = [p for p in PATTERN_SPARSITY if any(q[0] == p for q in pairs)]
    if not patterns:
        return None
    counts = sorted({q[1] for q in pairs})
    cols = min(2, len(patterns))
    rows = -(-len(patterns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(patterns):]:
        ax.axis("off")
    for j, pattern in enumerate(patterns):
        ax = axes.flat[j]
        for _, n, thanos_runs, sparsegpt_runs in (q for q in pairs if q[0] == pattern):
            colour = f"C{counts.index(n)}"
            shift = (counts.index(n) - (len(counts) - 1) / 2) * 0.18
            labelled = False
            for i, t in enumerate(texts):
                a, b = _paired(thanos_runs, sparsegpt_runs, t)
                if not a:
                    continue
                rel = [100 * (x - y) / y for x, y in zip(a, b)]
                m, s = mean_std(rel)
                label = None if labelled else f"{n} windows, {len(rel)} seed{'s' if len(rel) > 1 else ''}"
                if len(rel) == 1:  # one seed: its dot, no spread to show
                    ax.scatter([i + shift], rel, color=colour, s=24, label=label)
                else:
                    ax.scatter([i + shift] * len(rel), rel, color=colour, alpha=0.35, s=14)
                    ax.errorbar([i + shift], [m], yerr=[s], fmt="o", color=colour, capsize=4, label=label)
                labelled = True
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(texts)), texts, rotation=30, fontsize=8)
        ax.set_title(f"{_pattern_label(pattern, PATTERN_SPARSITY[pattern])}: Thanos - SparseGPT", fontsize=9)
        ax.set_ylabel("perplexity difference, % of SparseGPT's")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / f"study-{size_name}-defaults.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot(records, texts, out_dir: Path, size, size_name: str) -> list:
    """PNG plots ``study-<size_name>-<study>.png`` (one size's plots never overwrite another's):
    perplexity against B per pattern (Thanos, SparseGPT as a band), per text, and the other studies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def _legend_outside(fig, axes, below):
        """One legend for every panel, outside them (below the grid or right of it), so that it
        hides no data point; save with bbox_inches="tight" to keep it in the picture."""
        entries = {}
        for ax in axes.flat:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(label, handle)
        if below:
            fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                       ncol=3, fontsize=8)
        else:
            fig.legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7)

    written = []
    path = plot_defaults(plt, records, texts, out_dir, size, size_name)
    if path:
        written.append(path)
    groups = group(records, "blocksize", size)
    patterns = sorted({(k[1], k[2]) for k in groups}, key=lambda p: list(PATTERN_SPARSITY).index(p[0]))
    patterns = [p for p in patterns if p[0] != "structured"]
    if patterns:
        fig, axes = plt.subplots(len(texts), len(patterns), figsize=(4.2 * len(patterns), 3.2 * len(texts)), squeeze=False)
        for j, (pattern, sparsity) in enumerate(patterns):
            thanos_runs = sorted([(k[3] or 4096, v) for k, v in groups.items() if k[0] == "thanos" and k[1] == pattern])
            base = [v for k, v in groups.items() if k[0] == "sparsegpt" and k[1] == pattern]
            for i, text in enumerate(texts):
                ax = axes[i][j]
                # one line per seed that every B ran (paired: the same calibration windows), so that
                # B's with more seeds do not shift the line; mean +- std where a B ran several seeds
                xs = [b for b, _ in thanos_runs]
                common = set.intersection(*({r["seed"] for r in v} for _, v in thanos_runs)) if thanos_runs else set()
                for n, seed in enumerate(sorted(common)):
                    ax.plot(xs, [next(r["perplexity"].get(text, math.nan) for r in v if r["seed"] == seed)
                                 for _, v in thanos_runs], marker="o", color="C0", alpha=1.0 if n == 0 else 0.4,
                            label=(f"Thanos, seed {seed}", "Thanos, each other seed")[n] if n < 2 else "_nolegend_")
                several = [(b, v) for b, v in thanos_runs if len(_values(v, text)) > 1]
                if several:
                    values = [_values(v, text) for _, v in several]
                    ms = [mean_std(vs) for vs in values]
                    ax.errorbar([b for b, _ in several], [m for m, _ in ms], yerr=[s for _, s in ms], fmt="s",
                                color="C2", capsize=4, label="Thanos, mean ± std over the n seeds a B ran (n by the mark)")
                    for (b, _), (m, _), vs in zip(several, ms, values):  # B's may differ in how many seeds they ran
                        ax.annotate(f"n={len(vs)}", (b, m), textcoords="offset points", xytext=(6, 2), fontsize=6, color="C2")
                if base:
                    m, s = mean_std(_values(base[0], text))
                    ax.axhline(m, color="C1", label="SparseGPT (B=128), mean ± std")
                    if not math.isnan(s):
                        ax.axhspan(m - s, m + s, color="C1", alpha=0.2)
                    for n, seed in enumerate(sorted(common)):
                        same = [r["perplexity"][text] for r in base[0] if r["seed"] == seed and text in r["perplexity"]]
                        if same:
                            ax.axhline(same[0], color="C1", linestyle="--", linewidth=1,
                                       label="SparseGPT, each of these seeds" if n == 0 else "_nolegend_")
                if xs:
                    ax.set_xscale("log", base=2)
                    crowded = any(b / a < 1.9 for a, b in zip(xs, xs[1:]))  # a B between powers of two
                    ax.set_xticks(xs, [("whole" if x == 4096 else str(x)) for x in xs],
                                  **(dict(rotation=60, fontsize=7) if crowded else {}))
                ax.set_title(f"{_pattern_label(pattern, sparsity)}, {text}", fontsize=9)
                ax.set_xlabel("block size B")
                ax.set_ylabel("perplexity")
        fig.tight_layout()
        _legend_outside(fig, axes, below=True)
        path = out_dir / f"study-{size_name}-blocksize.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    for study, xlabel in (("calibration", "calibration windows"), ("alpha", "alpha")):
        key_index = STUDY_AXIS[study]
        groups = studied(records, study, size)
        series: dict = {}
        for k, v in groups.items():
            if study == "alpha" and k[1] == "unstructured":
                continue
            # the calibration study runs Thanos at two B (2:4) or two alpha (structured): one line each
            alpha = k[4] if study == "calibration" else None
            series.setdefault((k[0], k[1], k[2], k[3], alpha), []).append((k[key_index], v))
        if not series:
            continue
        fig, axes = plt.subplots(1, len(texts), figsize=(4.2 * len(texts), 3.2), squeeze=False)
        for i, text in enumerate(texts):
            ax = axes[0][i]
            for (method, pattern, sparsity, b, alpha), points in sorted(series.items(), key=lambda kv: _sort_key(kv[0])):
                points.sort()
                ms = [mean_std(_values(v, text)) for _, v in points]
                # B (alpha) in the label only where the study runs a method at more than one B (alpha)
                several = len({k[3] for k in series if k[:3] == (method, pattern, sparsity)}) > 1
                alphas = len({k[4] for k in series if k[:3] == (method, pattern, sparsity)}) > 1
                ax.errorbar([x for x, _ in points], [m for m, _ in ms], yerr=[0 if math.isnan(s) else s for _, s in ms],
                            marker="o", capsize=3, label=f"{method} {_pattern_label(pattern, sparsity)}"
                            + (f" B={_label_b(b)}" if several else "") + (f" alpha={alpha:g}" if alphas else ""))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("perplexity")
            ax.set_yscale("log")
            ax.set_title(text, fontsize=9)
        fig.tight_layout()
        _legend_outside(fig, axes, below=False)
        path = out_dir / f"study-{size_name}-{study}.png"
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    for study, label in (("metric", lambda k: f"{_pattern_label(k[1], k[2])}\n{k[5]}"),
                         ("owl", lambda k: f"{k[0]} {k[2] * 100:g}%\n{k[6]}{'' if k[5] == 'psi' else chr(10) + k[5] + ' score'}")):
        path = _bar_plot(plt, studied(records, study, size), texts, label, out_dir / f"study-{size_name}-{study}.png")
        if path:
            written.append(path)
    runs = runtime_runs(records)
    if runs:
        steps = sorted({s for r in runs for s in r["steps"] if s != "prune_linear"})
        fig, ax = plt.subplots(figsize=(1.2 * len(runs) + 3, 3.6))
        bottom = [0.0] * len(runs)
        for i, step in enumerate(steps):
            values = [r["steps"].get(step, 0.0) for r in runs]
            ax.bar(range(len(runs)), values, bottom=bottom, label=step, color=f"C{i % 10}")
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_xticks(range(len(runs)), [f"{r['method']}\n{_pattern_label(r['pattern'], r['sparsity'])}" for r in runs],
                      fontsize=7)
        ax.set_ylabel("seconds (one thread)")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        path = out_dir / f"study-{size_name}-runtime.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _values(runs: list, text: str) -> list:
    """The perplexities on ``text`` of the runs that were evaluated on it."""
    return [r["perplexity"][text] for r in runs if text in r["perplexity"]]


def _bar_plot(plt, groups: dict, texts, label, path: Path):
    """Perplexity per configuration (mean, seed std as error bars), one panel per text, stacked; a
    log axis, so that 50 % and 70 % (or |W| and psi) can be read in one panel."""
    if not groups:
        return None
    items = sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0]))
    fig, axes = plt.subplots(len(texts), 1, figsize=(max(4.0, 0.9 * len(items)), 2.6 * len(texts)), squeeze=False)
    for i, text in enumerate(texts):
        ax = axes[i][0]
        ax.set_yscale("log")
        ms = [mean_std(_values(runs, text)) for _, runs in items]
        ax.bar(range(len(items)), [m for m, _ in ms], yerr=[0 if math.isnan(s) else s for _, s in ms], capsize=3,
               color=[f"C{j % 10}" for j in range(len(items))])
        ax.set_xticks(range(len(items)), [label(k) for k, _ in items], fontsize=6)
        ax.set_ylabel("perplexity (log)")
        ax.set_title(text, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def report(args) -> int:
    path = Path(args.out) if args.out else RESULTS / f"study-{args.size}.jsonl"
    records = newest_records(read_records(path), args.size)
    size = SIZES[args.size]
    if not records:
        raise SystemExit(f"{path}: no recorded runs; run a study first")
    texts = [t for t in TEXTS if any(t in r.get("perplexity", {}) for r in records if r.get("method") != "dense")]
    dense = [r for r in records if r.get("method") == "dense"]
    lines = [f"### Studies at --{args.size} size", "",
             f"Recorded runs: `{path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}` "
             f"(one JSON line per run, with its command, date and thread count). "
             f"Tables written by `python -m benchmarks study report --size {args.size}`.", ""]
    some = next(r for r in records if r.get("method") != "dense")
    lines += [f"Sizes: calibration {some['nsamples']} (unless the table says) windows of {some['seqlen']} tokens from the "
              f"first {100 * CALIBRATION_SHARE:.0f} % of the C4 sample; perplexity over " + ", ".join(f"{n} windows of {some['eval_seqlen']} tokens of {t}"
              for t, n in some['eval_windows'].items()) + "; seeds = calibration seeds. Prune times: one thread, "
              f"on a machine shared with other jobs (compare them within a table only).", ""]
    if dense:
        lines += ["Dense: " + ", ".join(f"{t} {v:.2f}" for t, v in dense[0]["perplexity"].items()), ""]
    thanos_b = ", ".join(f"{_thanos_default_b_label(p)} at {_pattern_label(p, PATTERN_SPARSITY[p])}"
                         if _thanos_default_b_label(p) != "-" else f"none at {_pattern_label(p, PATTERN_SPARSITY[p])}"
                         for p in PATTERN_SPARSITY)
    thanos_alpha = ", ".join(f"{spec.default_alpha('thanos', p):g} at {_pattern_label(p, PATTERN_SPARSITY[p])}"
                             for p in PATTERN_SPARSITY)
    sections = [(f"At a glance: the defaults against the issue's target, {size.nsamples} calibration windows (cells: "
                 "Thanos - SparseGPT in % of SparseGPT's mean perplexity over the paired seeds, the seed noise in % "
                 "likewise, and the verdict of the table below)", report_glance(records, texts, size)),
                (f"The defaults against SparseGPT (Thanos at the B block_size=None gives on this model, "
                 f"thanos.default_block_size: {thanos_b}; and at the alpha alpha=None gives, thanos.default_alpha: "
                 f"{thanos_alpha}; SparseGPT at B = 128; "
                 "cells: Thanos vs SparseGPT mean perplexity, the per-seed paired difference mean ± std, the seed "
                 "noise = the larger std over seeds, the two-sided p-value of a paired t-test of the per-seed "
                 "differences, and whether Thanos is ahead by more than the noise: the verdict, given from "
                 f"{MIN_VERDICT_SEEDS} seeds on)",
                 report_defaults(records, texts, size)),
                ("Block size", report_blocksize(records, texts, size)),
                ("Metric inside Thanos", report_generic(records, texts, "metric", ["pattern", "metric"], size)),
                ("Alpha", report_alpha(records, texts, size)),
                ("Calibration size", report_generic(records, texts, "calibration", ["method", "pattern", "B", "alpha", "calibration windows"],
                                                     size)),
                ("Uniform against outlier-weighted (OWL) block sparsity",
                 report_generic(records, texts, "owl", ["method", "metric", "pattern", "layer sparsity"], size)),
                ("Runtime per step (seconds, one run, CPU)", report_runtime(records))]
    for title, body in sections:
        if body:
            lines += [f"#### {title}", ""] + body
    pngs = plot(records, texts, path.parent, size, args.size)
    lines += ["Plots: " + ", ".join(f"`{p.relative_to(HERE.parent) if p.is_relative_to(HERE.parent) else p}`" for p in pngs), ""]
    text = "\n".join(lines)
    (path.parent / f"study-{args.size}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


# ----------------------------------------------------------------------------------------- main
def _comma_list(convert, valid, what: str):
    """An argparse ``type``: "a,b,c" -> a tuple of ``convert``ed values, each ``valid``, else the
    option's error naming what was expected."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(v) for v in text.split(","))
        except ValueError:
            values = None
        if values is None or not all(valid(v) for v in values):
            raise argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}")
        return values
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks study", description=__doc__.splitlines()[0])
    p.add_argument("study", choices=STUDIES + ("report",))
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="size", action="store_const", const="quick",
                      help="the quick size (minutes per run on one thread; the default)")
    size.add_argument("--full", dest="size", action="store_const", const="full", help="the issue's sizes (hours)")
    size.add_argument("--size", dest="size", choices=tuple(SIZES))
    p.add_argument("--patterns", default="unstructured,2:4,4:8,structured",
                   help="comma-separated patterns among unstructured (50%%), 2:4, 4:8, structured (30%%)")
    p.add_argument("--seeds", default=None, type=_comma_list(int, lambda v: True, "integers"),
                   help="comma-separated calibration seeds (default: the size's)")
    block_sizes = _comma_list(int, lambda v: v >= 0, "integers >= 0")  # --block-sizes and --only-block-sizes
    p.add_argument("--block-sizes", default=None, type=block_sizes,
                   help="blocksize study: comma-separated block sizes, 0 = the whole layer (default: the size's)")
    alphas = _comma_list(float, lambda v: 0 <= v < 1, "numbers in [0, 1)")  # --alphas and --only-alphas
    p.add_argument("--alphas", default=None, type=alphas,
                   help="alpha study: comma-separated alphas in [0, 1) (default: the size's)")
    p.add_argument("--calibration-windows", default=None, type=_comma_list(int, lambda v: v > 0, "integers > 0"),
                   help="calibration study: comma-separated numbers of calibration windows > 0 (default: the size's)")
    p.add_argument("--texts", default="wiki,c4-heldout", help=f"comma-separated evaluation texts among {TEXTS}")
    p.add_argument("--only-method", default=None, help="run only this method's configurations")
    p.add_argument("--only-metric", default=None, choices=METRICS,
                   help="run only the configurations with this score inside Thanos (the metric study's axis)")
    p.add_argument("--only-sparsities", default=None,
                   type=_comma_list(float, lambda v: 0 < v < 1, "numbers in (0, 1)"),
                   help="run only the configurations at these requested sparsities (e.g. 0.7 in the owl study)")
    p.add_argument("--only-alphas", default=None, type=alphas,
                   help="run only the configurations at these alphas (e.g. 0.2, structured Thanos' default, in the "
                        "calibration study, whose grid holds alpha 0 too)")
    p.add_argument("--only-block-sizes", default=None, type=block_sizes,
                   help="run only the configurations at these block sizes, 0 = the whole layer (e.g. 0, Thanos' "
                        "2:4 default, in the calibration study, whose grid holds B = 512 too)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="the JSON-lines file of runs (default: benchmarks/results/study-SIZE.jsonl)")
    p.add_argument("--dry-run", action="store_true", help="list the runs to do and stop")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(size="quick")
    args = p.parse_args(argv)
    for pattern in _patterns(args):
        if pattern not in PATTERN_SPARSITY:
            p.error(f"--patterns: unknown pattern {pattern!r}; expected some of {list(PATTERN_SPARSITY)}")
    for text in args.texts.split(","):
        if text not in TEXTS:
            p.error(f"--texts: unknown text {text!r}; expected some of {list(TEXTS)}")
    args.command = "python -m benchmarks study " + " ".join(shlex.quote(a) for a in argv)
    args.loader = None
    return args


def main(argv=None, *, loader=None) -> int:
    """``loader``: a function returning ``(model, tokenizer)`` (tests pass a tiny model)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.loader = loader
    if args.study == "report":
        return report(args)
    return run_study(args)


if __name__ == "__main__":
    sys.exit(main())
