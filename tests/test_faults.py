"""Fault injection: ``python -m thanos prune`` run as a real process and stopped with SIGINT,
SIGTERM and SIGKILL while loading, while pruning and while writing; a full disk and an unwritable
target refused before any work.

The stop points are made deterministic by the CLI's test hook (``THANOS_TEST_PAUSE=STAGE``, see
``thanos/cli.py``): the process prints ``thanos: test pause at STAGE`` and sleeps there, and the
test sends the signal once it has read that line. Stages: ``loading`` (arguments checked, model
not loaded yet), ``pruning`` (block 0 of the model pruned in memory), ``writing`` (the weights
already written into the temporary folder next to ``--out``, the tokenizer and report not yet).

What "nothing left behind" means:
- SIGINT/SIGTERM: exit status 130/143, one line on stderr and no traceback, no temporary folder,
  a pre-existing ``--out`` identical byte for byte.
- SIGKILL: no code runs, so a temporary folder written so far stays, but it is named
  ``.OUT.thanos-tmp-HOST-PID-RANDOM``; the pre-existing ``--out`` is identical byte for byte, and
  the next ``thanos prune`` next to it removes the folder since process PID no longer exists.

Every process imports torch and transformers (most of its time); about 10 processes in all.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thanos import data
from thanos.assets import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Tiny LLaMA and OPT folders and a calibration text, apart from the folders the tests watch."""
    home = tmp_path_factory.mktemp("inputs")
    for arch, seed in (("llama", 3), ("opt", 4)):
        model, tokenizer = tiny_model(arch, seed=seed, layers=2)
        model.save_pretrained(home / arch)
        tokenizer.save_pretrained(home / arch)
    (home / "text.txt").write_text(data.read_text(data.default_calibration_path())[:4000], encoding="utf-8")
    return home


@pytest.fixture
def previous_out(tmp_path):
    """A pre-existing --out with content that must survive every failed run byte for byte."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (out / "sub" / "notes.txt").write_text("a previous run\n")
    return out


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _environment(**extra) -> dict:
    """This worktree's code first on the path (the subprocess must not import another copy)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("THANOS_TEST_PAUSE", None)
    env.update(extra)
    return env


def _prune_command(inputs: Path, arch: str, method: str, out: Path) -> list:
    command = [sys.executable, "-m", "thanos", "prune", "--model", str(inputs / arch), "--method", method,
               "--no-eval", "--no-progress", "--block-size", "16", "--out", str(out), "--overwrite"]
    if method != "magnitude":
        command += ["--calibration", str(inputs / "text.txt"), "--nsamples", "4", "--seqlen", "32"]
    return command


def _run_until_paused(command: list, stage: str, timeout: float = 120.0):
    """Start ``command`` with the pause hook at ``stage``; return (process, stderr so far) once it
    says it has paused there. stderr is read from the raw pipe (a buffered reader could hold the
    pause line while select() waits for more)."""
    proc = subprocess.Popen(command, cwd=ROOT, env=_environment(THANOS_TEST_PAUSE=stage), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    marker = f"thanos: test pause at {stage}\n".encode()
    received = b""
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker not in received and time.monotonic() < deadline:
            if selector.select(timeout=max(deadline - time.monotonic(), 0)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                received += chunk
    if marker not in received:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the run never paused at {stage!r}; stderr:\n{received.decode(errors='replace')}")
    return proc, received.decode()


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name != "out")


# (signal, stage, architecture, method). SIGINT and SIGTERM share one handler, so SIGTERM while
# loading and SIGKILL while loading (nothing exists yet to leave behind) are left out: each
# process costs seconds of torch and transformers imports.
INTERRUPTS = [
    (signal.SIGINT, "loading", "llama", "magnitude"),
    (signal.SIGINT, "pruning", "llama", "thanos"),
    (signal.SIGINT, "writing", "llama", "magnitude"),
    (signal.SIGTERM, "pruning", "opt", "thanos"),
    (signal.SIGTERM, "writing", "opt", "magnitude"),
]


@pytest.mark.parametrize("sig,stage,arch,method", INTERRUPTS, ids=[f"{s.name}-{st}-{a}" for s, st, a, _ in INTERRUPTS])
def test_interrupt_leaves_nothing_and_keeps_the_previous_out(sig, stage, arch, method, inputs, previous_out, tmp_path):
    before = _tree(previous_out)
    proc, _ = _run_until_paused(_prune_command(inputs, arch, method, previous_out), stage)
    if stage == "writing":  # the temporary folder exists, with the weights in it
        (partial,) = [tmp_path / name for name in _leftovers(tmp_path)]
        assert (partial / "model.safetensors").is_file()
    proc.send_signal(sig)
    stdout, rest = proc.communicate(timeout=60)
    stdout, rest = stdout.decode(), rest.decode()
    assert proc.returncode == 128 + sig, rest
    assert "Traceback" not in rest and stdout == ""
    assert rest.splitlines() == [f"thanos prune: interrupted by {sig.name}; nothing written, --out {previous_out} left as it was"]
    assert _tree(previous_out) == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", ["pruning", "writing"])
def test_sigkill_leaves_only_a_recognisable_folder_that_the_next_run_removes(stage, inputs, previous_out, tmp_path):
    before = _tree(previous_out)
    proc, _ = _run_until_paused(_prune_command(inputs, "llama", "magnitude", previous_out), stage)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _tree(previous_out) == before
    left = _leftovers(tmp_path)
    if stage == "pruning":
        assert left == []  # nothing is created before the output is written
        return
    (name,) = left
    assert name.startswith(".out.thanos-tmp-") and name.split("-")[-2] == str(proc.pid)
    # the next run (no pause) sees that process is gone, removes its folder, and replaces --out
    run = subprocess.run(_prune_command(inputs, "llama", "magnitude", previous_out), cwd=ROOT, env=_environment(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"removed {tmp_path / name}, left by process {proc.pid} (which no longer runs)" in run.stderr
    assert _leftovers(tmp_path) == [] and (previous_out / "report.json").is_file()


def test_unwritable_target_is_refused_before_any_work(inputs, tmp_path):
    run = subprocess.run(_prune_command(inputs, "llama", "magnitude", Path("/proc/thanos/out")), cwd=ROOT,
                         env=_environment(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.splitlines() == [
        "thanos prune: error: --out /proc/thanos/out: cannot create a folder and a file in /proc "
        f"({os.strerror(2)}); choose a writable location"]  # no "loading" line: refused before
    assert not Path("/proc/thanos").exists()


def test_full_disk_is_refused_before_any_work(inputs, previous_out, tmp_path):
    """A real process whose free-space query answers 1 MiB (the only way to fill a disk here
    without privileges); the run stops before loading and --out stays as it was."""
    before = _tree(previous_out)
    command = _prune_command(inputs, "llama", "magnitude", previous_out)
    script = ("import sys; import thanos.cli as cli; cli.free_bytes = lambda folder: 2**20; "
              f"sys.exit(cli.main({command[3:]!r}))")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=_environment(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"thanos prune: error: --out {previous_out}: {tmp_path} has 1.0 MiB free, but the output needs about")
    assert _tree(previous_out) == before and _leftovers(tmp_path) == []
