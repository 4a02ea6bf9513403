"""``thanos conform MODULE:CALLABLE``: run the conformance catalogue on an implementation.

Prints one line per property, method, pattern and case family (PASS, or FAIL with the smallest
failing case: shape, seed, arguments, the violated quantity and its bound), writes a JSON report
with ``--report``, and exits 1 if any property failed, 3 if nothing could be checked (every case
skipped, e.g. ``--device cuda`` without CUDA), 2 on a usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reference import spec

INSTALL_HINT = ("the conformance kit needs Hypothesis: pip install 'thanos[conform]' "
                "(from a clone: pip install -e '.[conform]'; or just pip install hypothesis)")


def add_arguments(p) -> None:
    p.add_argument("implementation", metavar="MODULE:CALLABLE",
                   help="the implementation: a prune(W, H, *, method, pattern, sparsity, block_size, alpha, percdamp) "
                        "function, or a thanos.testing.FunctionAdapter / LayerAdapter object (e.g. thanos:prune, reference:prune)")
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default: all the implementation offers, of {','.join(spec.METHODS)})")
    p.add_argument("--patterns", default="unstructured,structured,N:M",
                   help="comma-separated patterns: unstructured, structured, N:M (any N:M drawn) or a fixed n:m such as 2:4 (default: all three kinds)")
    p.add_argument("--dtype", default="float32", choices=("float64", "float32", "float16", "bfloat16", "fp64", "fp32", "fp16", "bf16"),
                   help="weight dtype of the cases (default: float32)")
    p.add_argument("--device", default="cpu", help="device of the cases (cpu, cuda, cuda:N; default: cpu)")
    p.add_argument("--examples", type=int, default=20, help="cases drawn per method, pattern and family (default: 20)")
    p.add_argument("--families", default=None, help="comma-separated case families (default: all)")
    p.add_argument("--properties", default=None, help="comma-separated properties (default: the whole catalogue)")
    p.add_argument("--array", default="auto", choices=("auto", "torch", "numpy"), help="what the implementation takes (default: auto)")
    p.add_argument("--xfails", default=None, metavar="FILE", help="known failures, one property[method-pattern-family] a line")
    p.add_argument("--random", action="store_true", help="draw random cases (default: derandomized, the same cases every run)")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing case instead of the smallest")
    p.add_argument("--report", default=None, metavar="FILE", help="also write the report as JSON")


_DTYPE_ALIASES = {"fp64": "float64", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _split(value, allowed, flag):
    from ..cli import UsageError

    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if bad or not items:
        raise UsageError(f"{flag}: unknown {bad or value!r}; choose from {', '.join(allowed)}")
    return items


def run(args) -> int:
    from ..cli import UsageError, check_device

    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print(f"thanos conform: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from .adapters import load_implementation
    from .cases import FAMILIES, validate_pattern
    from .properties import PROPERTY_NAMES
    from .runner import read_xfails, run_catalogue

    if args.examples < 1:
        raise UsageError(f"--examples must be >= 1, got {args.examples}")
    dtype = _DTYPE_ALIASES.get(args.dtype, args.dtype)
    patterns = [v.strip() for v in args.patterns.split(",") if v.strip()]
    for pattern in patterns:
        try:
            validate_pattern(pattern)
        except ValueError as err:
            raise UsageError(f"--patterns: {err}") from None
    families = _split(args.families, tuple(FAMILIES), "--families") if args.families else None
    properties = _split(args.properties, PROPERTY_NAMES, "--properties") if args.properties else None
    xfails = ()
    if args.xfails:
        if not Path(args.xfails).is_file():
            raise UsageError(f"--xfails {args.xfails}: no such file")
        xfails = read_xfails(args.xfails)
    if args.report is not None:
        out = Path(args.report)
        if out.is_dir() or not out.absolute().parent.is_dir():
            raise UsageError(f"--report {args.report}: give a file in an existing folder")
    if not str(args.device).startswith("cuda"):
        check_device(args.device)
    try:
        adapter = load_implementation(args.implementation, array=args.array)
    except ValueError as err:
        raise UsageError(str(err)) from None
    methods = _split(args.methods, spec.METHODS, "--methods") if args.methods else list(adapter.methods or spec.METHODS)

    print(f"thanos conform {adapter.name}: methods {','.join(methods)}; patterns {','.join(patterns)}; dtype {dtype}; "
          f"device {args.device}; {args.examples} cases per family", flush=True)
    report = run_catalogue(adapter, methods=methods, patterns=patterns, dtype=dtype, device=args.device,
                           examples=args.examples, families=families, properties=properties,
                           derandomize=not args.random, shrink=not args.no_shrink, xfails=xfails,
                           on_finding=lambda f: print(f.line(), flush=True))
    counts = report.counts()
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" in {report.seconds:.1f} s")
    if args.report:
        report.write_json(args.report)
    if report.failures:
        return 1
    if report.checked == 0:
        print("thanos conform: nothing was checked (every case skipped)", file=sys.stderr)
        return 3
    return 0
