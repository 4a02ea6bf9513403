"""Run the catalogue on an implementation: one finding per property, method, pattern and family.

For each (method, pattern, family) Hypothesis draws cases (the golden ones first); each case is
run once and every applicable property judged on that one output. A property that fails is then
searched again on its own, with shrinking, so the report carries the *smallest* failing case
Hypothesis finds (shape, seed, arguments, the violated quantity and its bound).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from reference import spec

from .adapters import Adapter, Unsupported
from .cases import FAMILIES, Case, case_strategy, golden_cases, is_nm, make_case
from .properties import BAD_INPUTS, CATALOGUE, Context, NotApplicable, Violation, bad_inputs_raise, judge

STATUSES = ("PASS", "FAIL", "XFAIL", "XPASS", "SKIP")


@dataclass
class Finding:
    """The verdict of one property on one (method, pattern, family)."""

    property: str
    family: str
    method: str
    pattern: str
    dtype: str
    device: str
    status: str
    cases: int = 0
    reason: Optional[str] = None
    violation: Optional[dict] = None
    smallest_case: Optional[dict] = None

    @property
    def key(self) -> str:
        return f"{self.property}[{self.method}-{self.pattern}-{self.family}]"

    def line(self) -> str:
        where = f"[{self.method} {self.pattern} / {self.family}]"
        head = f"{self.status:<5} {self.property:<36} {where:<40}"
        if self.status in ("PASS", "XPASS"):
            return f"{head} {self.cases} cases"
        if self.status == "SKIP":
            return f"{head} {self.reason}"
        v = self.violation or {}
        text = v.get("message", "")
        case = self.smallest_case or {}
        shown = " ".join(f"{k}={case[k]}" for k in ("shape", "seed", "pattern", "sparsity", "block_size", "alpha", "percdamp",
                                                     "kappa", "tokens", "batches", "dead", "duplicated", "golden") if case.get(k) not in (None, [], ()))
        return f"{head} {text}\n      smallest case: {shown}"


@dataclass
class Report:
    implementation: str
    settings: dict
    findings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list:
        return [f for f in self.findings if f.status == "FAIL"]

    @property
    def checked(self) -> int:
        return sum(1 for f in self.findings if f.status in ("PASS", "FAIL", "XFAIL", "XPASS"))

    def counts(self) -> dict:
        return {s: sum(1 for f in self.findings if f.status == s) for s in STATUSES}

    def as_dict(self) -> dict:
        return dict(implementation=self.implementation, settings=self.settings, passed=not self.failures,
                    counts=self.counts(), seconds=round(self.seconds, 3), findings=[asdict(f) for f in self.findings])

    def write_json(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(_jsonable(self.as_dict()), fh, indent=2)
            fh.write("\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def _violation_dict(v: Violation) -> dict:
    return dict(quantity=v.quantity, value=_jsonable(v.value), bound=_jsonable(v.bound), detail=v.detail, message=v.message())


def read_xfails(path) -> set:
    """Known failures, one ``property[method-pattern-family]`` a line (shell wildcards allowed,
    ``#`` comments), as in array-api-tests' xfails files: they are reported XFAIL (or XPASS)
    instead of failing the run."""
    keys = set()
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                keys.add(line)
    return keys


def _matches(key: str, pattern: str) -> bool:
    """``*`` matches any run of characters; everything else (brackets too) is literal."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), key) is not None


def fixed_case(method: str, pattern: str, dtype: str, device: str) -> Case:
    """A small deterministic valid case (seed 0) for the bad-input checks."""
    rng = np.random.default_rng(0)
    if is_nm(pattern):
        pat = "2:4" if pattern == "N:M" else pattern
        m = spec.parse_pattern(pat)[2]
        b, block, sparsity = 2 * m, m, None
    else:
        pat, b, block, sparsity = pattern, 8, 4, 0.5
    X = rng.standard_normal((3 * b, b))
    return make_case("bad_inputs", method=method, pattern=pat, sparsity=sparsity, block_size=block, alpha=0.0, percdamp=0.01,
                     W=rng.standard_normal((4, b)), batches=[X[: b], X[b:]], dtype=dtype, device=device, info=dict(seed=0))


def _hypothesis_settings(examples: int, derandomize: bool, shrink: bool):
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=examples, derandomize=derandomize, database=None, deadline=None, phases=phases,
                    suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False,
                    print_blob=False)


def explore(adapter: Adapter, family: str, method: str, pattern: str, dtype: str, device: str, props: list, *,
            examples: int, derandomize: bool = True, shrink: bool = True) -> dict:
    """Draw cases of one family and judge every property on each; then re-search each failed
    property alone with shrinking. Returns {property: (cases judged, Violation or None, smallest
    failing Case, or when it never applied the last reason it gave)} and, under key None, the
    reason every case was skipped (or None)."""
    from hypothesis import example, given

    strategy = case_strategy(family, method, pattern, dtype, device)
    golden = golden_cases(method, pattern, dtype, device) if family == "generic" else []
    counts = {p.name: 0 for p in props}
    not_applicable = {p.name: None for p in props}
    first: dict = {}
    unsupported: list = []

    def body(case):
        try:
            ctx = Context.run(case, adapter)
        except Unsupported as err:
            unsupported.append(str(err))
            return
        for p in props:
            if p.name in first:
                continue  # already failing: the shrink run finds its smallest case
            try:
                v = judge(ctx, p)
            except NotApplicable as why:
                not_applicable[p.name] = str(why)
                continue
            except Unsupported as err:
                unsupported.append(str(err))
                continue
            counts[p.name] += 1
            if v is not None:
                first[p.name] = (case, v)

    test = given(strategy)(body)
    for g in golden:
        test = example(g)(test)
    _hypothesis_settings(examples, derandomize, shrink=False)(test)()

    results = {p.name: (counts[p.name], None, not_applicable[p.name]) for p in props}
    for p in props:
        if p.name not in first:
            continue
        case0, v0 = first[p.name]
        smallest = _shrink(adapter, strategy, p, examples, derandomize) if shrink else None
        case, v = smallest if smallest is not None else (case0, v0)
        results[p.name] = (counts[p.name], v, case)
    results[None] = unsupported[0] if unsupported and not any(counts.values()) else None
    return results


def _shrink(adapter, strategy, prop, examples, derandomize):
    """Search for one property's failures alone, with shrinking; the last failing case seen is the
    smallest one (Hypothesis replays it last)."""
    from hypothesis import given

    last: dict = {}

    def target(case):
        try:
            ctx = Context.run(case, adapter)
            v = judge(ctx, prop)
        except (NotApplicable, Unsupported):
            return
        if v is not None:
            last["found"] = (case, v)
            raise v

    try:
        _hypothesis_settings(examples, derandomize, shrink=True)(given(strategy)(target))()
    except Violation:
        pass
    except Exception:  # noqa: BLE001 - e.g. a flaky implementation: keep what was seen
        pass
    return last.get("found")


def run_catalogue(
    adapter: Adapter,
    *,
    methods=spec.METHODS,
    patterns=("unstructured", "structured", "N:M"),
    dtype: str = "float32",
    device: str = "cpu",
    examples: int = 20,
    families=None,
    properties=None,
    derandomize: bool = True,
    shrink: bool = True,
    xfails=(),
    on_finding: Optional[Callable] = None,
) -> Report:
    """Run the catalogue; ``on_finding(finding)`` is called as each line is settled."""
    started = time.perf_counter()
    props = [CATALOGUE[n] for n in (properties or CATALOGUE) if n in CATALOGUE]
    want_bad_inputs = properties is None or BAD_INPUTS in properties
    families = list(families or FAMILIES)
    xfails = set(xfails)
    report = Report(adapter.name, dict(methods=list(methods), patterns=list(patterns), dtype=dtype, device=device,
                                       examples=examples, families=families, derandomize=derandomize))

    def emit(f: Finding):
        if any(_matches(f.key, pattern) for pattern in xfails):
            f.status = {"FAIL": "XFAIL", "PASS": "XPASS"}.get(f.status, f.status)
        report.findings.append(f)
        if on_finding:
            on_finding(f)

    skip_all = _device_skip(device)
    for method in methods:
        for pattern in patterns:
            kind = "N:M" if is_nm(pattern) else pattern
            base = dict(method=method, pattern=pattern, dtype=dtype, device=device)
            if skip_all:
                for p in props:
                    emit(Finding(p.name, "-", status="SKIP", reason=skip_all, **base))
                continue
            if adapter.methods is not None and method not in adapter.methods:
                emit(Finding("*", "-", status="SKIP", reason=f"the implementation offers {adapter.methods}", **base))
                continue
            for fam in families:
                family = FAMILIES[fam]
                if not family.applies(method, kind):
                    continue
                fam_props = [p for p in props if p.applies(method, kind, fam)]
                if adapter.kind != "layer":
                    fam_props = [p for p in fam_props if p.name != "statistics_from_all_batches"]
                results = explore(adapter, fam, method, pattern, dtype, device, fam_props, examples=examples,
                                  derandomize=derandomize, shrink=shrink)
                skipped = results.pop(None)
                for p in fam_props:
                    n, v, case = results[p.name]
                    if skipped:
                        emit(Finding(p.name, fam, status="SKIP", reason=skipped, **base))
                    elif v is not None:
                        emit(Finding(p.name, fam, status="FAIL", cases=n, violation=_violation_dict(v),
                                     smallest_case=_jsonable(case.describe()), **base))
                    elif n:
                        emit(Finding(p.name, fam, status="PASS", cases=n, **base))
                    else:  # case holds the last reason the property gave for not applying
                        reason = f"not applicable: {case}" if case else "no drawn case exercised it (more --examples?)"
                        emit(Finding(p.name, fam, status="SKIP", reason=reason, **base))
            if want_bad_inputs:
                emit(_bad_inputs_finding(adapter, method, pattern, dtype, device, base))
    report.seconds = time.perf_counter() - started
    return report


def _bad_inputs_finding(adapter, method, pattern, dtype, device, base) -> Finding:
    case = fixed_case(method, pattern, dtype, device)
    try:
        bad_inputs_raise(case, adapter)
    except Violation as v:
        return Finding(BAD_INPUTS, "bad_inputs", status="FAIL", cases=1, violation=_violation_dict(v),
                       smallest_case=_jsonable(case.describe()), **base)
    except Unsupported as err:
        return Finding(BAD_INPUTS, "bad_inputs", status="SKIP", reason=str(err), **base)
    return Finding(BAD_INPUTS, "bad_inputs", status="PASS", cases=1, **base)


def _device_skip(device: str) -> Optional[str]:
    if not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    return None


__all__ = ["Finding", "Report", "STATUSES", "explore", "fixed_case", "read_xfails", "run_catalogue"]
