"""The command line: argument errors before any load, atomic output, prune/eval end to end.

Fast tests use a tiny seeded LLaMA saved to a folder (byte tokenizer); the one marked ``slow``
runs ``thanos prune`` on the real SmolLM2 and reloads its output with transformers.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

import thanos
from reference import spec
from thanos import cli, data
from thanos.assets import tiny_model
from thanos.model import prune_model
from thanos.stdout import exit_quietly_if_reader_gone


def _saved_tiny_model(tmp_path_factory, arch: str, seed: int):
    """A tiny two-block model of ``arch`` saved as a Hugging Face folder (model + tokenizer)."""
    folder = tmp_path_factory.mktemp(f"tiny_{arch}") / "model"
    model, tokenizer = tiny_model(arch, seed=seed, layers=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _saved_tiny_model(tmp_path_factory, "llama", seed=3)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(data.read_text(data.default_calibration_path())[:20000])
    return path


def _forbid(monkeypatch, targets, why):
    """Calling any of ``targets`` ("module.attribute") fails the test with ``why``."""
    def forbidden(*args, **kwargs):
        raise AssertionError(why)

    for target in targets:
        monkeypatch.setattr(target, forbidden)


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or tokenise text fails the test."""
    _forbid(monkeypatch, ("thanos.assets.load_model", "thanos.data.calibration_windows", "thanos.model.prune_model"),
            "a model or text was loaded before the arguments were checked")


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--sparsity", "1.5"], "--sparsity"),
        (["--sparsity", "-0.1"], "--sparsity"),
        (["--pattern", "5:4"], "--pattern"),
        (["--pattern", "bogus"], "--pattern"),
        (["--pattern", "2:4", "--sparsity", "0.3"], "--sparsity"),
        (["--pattern", "2:4", "--block-size", "6"], "--block-size"),
        (["--block-size", "0"], "--block-size"),
        (["--alpha", "0.1"], "--alpha"),
        (["--alpha", "1.0", "--pattern", "structured"], "--alpha"),
        (["--percdamp", "-1"], "--percdamp"),
        (["--metric", "sparsegpt", "--method", "sparsegpt"], "--metric"),
        (["--metric", "magnitude", "--pattern", "structured"], "--metric"),
        (["--calibration", "/nonexistent/c4.txt"], "--calibration"),
        (["--eval", "/nonexistent/wiki.txt"], "--eval"),
        (["--model", "/nonexistent/model"], "--model"),
        (["--device", "tpu"], "--device"),
        (["--device", "cuda:99"], "--device"),
    ],
)
def test_prune_argument_errors_before_any_load(extra, flag, tmp_path, no_loading, capsys):
    out = tmp_path / "out"
    code = cli.main(["prune", "--out", str(out), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert flag in err and "error" in err
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--nsamples", "0"], ["--seqlen", "x"], ["--method", "obs"], ["--metric", "hessian"]])
def test_argparse_errors_exit_2(extra, tmp_path, no_loading, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["prune", "--out", str(tmp_path / "o"), *extra])
    assert info.value.code == 2
    assert extra[0] in capsys.readouterr().err


def test_out_must_be_missing_empty_or_overwritten(tmp_path, no_loading, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert cli.main(["prune", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["prune", "--out", str(a_file)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "x"
    assert cli.main(["prune", "--out", str(a_file / "below")]) == 2


def _prune_args(tiny_dir, text_file, out, *extra):
    return ["prune", "--model", str(tiny_dir), "--calibration", str(text_file), "--eval", str(text_file),
            "--nsamples", "4", "--seqlen", "32", "--eval-seqlen", "32", "--max-windows", "2", "--block-size", "16",
            "--no-progress", "--out", str(out), *extra]


def test_prune_writes_a_loadable_model_and_report(tiny_dir, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    assert cli.main(_prune_args(tiny_dir, text_file, out, "--pattern", "2:4", "--seed", "7")) == 0
    assert "perplexity" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no temporary folder left
    report = json.loads((out / "report.json").read_text())
    assert report["achieved_sparsity"] == 0.5  # exact counts: pruned / numel is exactly 1/2
    assert report["perplexity_before"]["perplexity"] > 0 and report["perplexity_after"]["perplexity"] > 0
    assert report["peak_memory"]["max_rss_mib"] > 0 and report["wall_seconds"] > 0
    assert len(report["layers"]) == 14 and all(layer["sparsity"] == 0.5 for layer in report["layers"])
    assert report["block_sizes"] == [16] and all(layer["block_size"] == 16 for layer in report["layers"])
    assert report["alpha"] == 0.0  # no --alpha: the default, 0 at N:M (thanos.default_alpha)
    assert (out / "model.safetensors").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reloaded = AutoModelForCausalLM.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    # the same pruning done in memory, with the same seed, gives the same weights (determinism)
    model, tok = tiny_model("llama", seed=3, layers=2)
    cal = data.calibration_windows(tok, text_file, nsamples=4, seqlen=32, seed=7)
    prune_model(model, cal, method="thanos", pattern="2:4", block_size=16)
    ids = torch.tensor([tokenizer("The quick brown fox")["input_ids"]])
    with torch.no_grad():
        # the same forward code on the same weights (safetensors round-trips them bit for bit): equal
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_failed_write_leaves_nothing_and_keeps_the_old_folder(tiny_dir, text_file, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    def broken(self, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", broken)
    out = tmp_path / "pruned"
    with pytest.raises(OSError, match="simulated"):
        cli.main(_prune_args(tiny_dir, text_file, out, "--method", "magnitude", "--no-eval"))
    assert list(tmp_path.iterdir()) == []  # no DIR, no half-written temporary folder
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    with pytest.raises(OSError, match="simulated"):
        cli.main(_prune_args(tiny_dir, text_file, out, "--method", "magnitude", "--no-eval", "--overwrite"))
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_overwrite_replaces_the_folder(tiny_dir, text_file, tmp_path):
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    assert cli.main(_prune_args(tiny_dir, text_file, out, "--method", "magnitude", "--no-eval", "--overwrite")) == 0
    assert not (out / "old.txt").exists() and (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]


def test_eval_command(tiny_dir, text_file, capsys):
    assert cli.main(["eval", "--model", str(tiny_dir), "--eval", str(text_file), "--eval-seqlen", "32",
                     "--max-windows", "3", "--json", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 3 and result["predicted_tokens"] == 3 * 31 and result["perplexity"] > 1


def test_eval_errors(tiny_dir, tmp_path, capsys):
    assert cli.main(["eval", "--model", str(tmp_path / "none")]) == 2
    assert "--model" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert cli.main(["eval", "--model", str(tiny_dir), "--eval", str(short), "--eval-seqlen", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--eval" in err and "--eval-seqlen 64" in err and "needs 64 tokens, found 9" in err


def test_verify_argument_errors(no_loading, capsys):
    assert cli.main(["verify", "--only", "obs"]) == 2
    assert "--only" in capsys.readouterr().err
    assert cli.main(["verify", "--nsamples", "0"]) == 2


def test_prune_structured_reports_the_default_alpha(tiny_dir, text_file, tmp_path, capsys):
    """No --alpha at structured: Thanos keeps thanos.default_alpha = 0.2 of each Linear's rows dense
    (floor(0.2 c)), and the report says 0.2, not a missing value."""
    out = tmp_path / "pruned"
    assert cli.main(_prune_args(tiny_dir, text_file, out, "--pattern", "structured", "--sparsity", "0.3")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["alpha"] == 0.2
    assert all(layer["outlier_rows"] == spec.outlier_row_count(0.2, layer["shape"][0]) for layer in report["layers"])
    assert any(layer["outlier_rows"] > 0 for layer in report["layers"])


@pytest.mark.slow
def test_prune_smollm2_end_to_end(tmp_path, capsys):
    """The real model through the CLI: magnitude 2:4 (no calibration), saved, reloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "smol"
    assert cli.main(["prune", "--method", "magnitude", "--pattern", "2:4", "--eval-seqlen", "128", "--max-windows", "2",
                     "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["achieved_sparsity"] == 0.5  # exact counts: pruned / numel is exactly 1/2
    assert report["perplexity_after"]["perplexity"] > report["perplexity_before"]["perplexity"]
    assert len(report["layers"]) == 30 * 7
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    weight = model.model.layers[3].mlp.down_proj.weight
    assert int((weight.reshape(-1, 4) == 0).sum(-1).min()) >= 2
    assert tokenizer.decode(tokenizer("The capital of France")["input_ids"]).endswith("The capital of France")


# ------------------------------------------------------------------ issue 7: refused early, basics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_opt_dir(tmp_path_factory):
    return _saved_tiny_model(tmp_path_factory, "opt", seed=4)


@pytest.fixture
def no_pruning(monkeypatch):
    """Loading is allowed, calibration and pruning are not."""
    _forbid(monkeypatch, ("thanos.data.calibration_windows", "thanos.model.prune_model"),
            "calibration or pruning started before the loaded model was checked")


def _magnitude_args(tiny_dir, out, *extra):
    return ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--no-eval", "--no-progress", "--out", str(out), *extra]


def _tree(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes (to show a folder survived byte for byte)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_version_everywhere(capsys):
    expected = importlib.metadata.version("thanos")
    assert thanos.__version__ == expected
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"thanos {expected}"
    run = subprocess.run([sys.executable, "-m", "thanos", "--version"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"thanos {expected}", run.stderr


def test_python_dash_m_thanos_runs_the_cli(tmp_path):
    # an argparse error: the command ran without importing torch (seconds); tests/test_faults.py runs whole prunes
    run = subprocess.run([sys.executable, "-m", "thanos", "prune", "--out", str(tmp_path / "o"), "--nsamples", "0"],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert run.returncode == 2 and "--nsamples must be >= 1, got 0" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("command", [
    ["thanos", "conform", "thanos:prune", "--methods", "thanos", "--patterns", "unstructured", "--examples", "1"],
    ["benchmarks", "study", "calibration", "--quick", "--dry-run"]], ids=["thanos", "benchmarks"])
def test_a_reader_that_closed_stdout_ends_the_command_quietly(command):
    # `thanos conform ... | head -0`: the pipe's read end is closed before the child starts, so its first
    # flush of stdout fails with EPIPE. It ends with 128 + SIGPIPE, as a writer that SIGPIPE killed, and
    # no traceback (before the fix: a BrokenPipeError traceback and exit status 1)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    finally:
        os.close(write_end)
    assert run.returncode == 128 + signal.SIGPIPE and "Traceback" not in run.stderr, run.stderr


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden():
    def command():
        raise BrokenPipeError(errno.EPIPE, "a socket's peer went away")

    with pytest.raises(BrokenPipeError, match="socket"):
        exit_quietly_if_reader_gone(command)
    assert exit_quietly_if_reader_gone(lambda: 3) == 3


def test_py_typed_is_shipped():
    import importlib.resources

    assert importlib.resources.files("thanos").joinpath("py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["thanos"]


@pytest.mark.parametrize("place", ["/proc", "/sys"])
def test_out_on_a_virtual_file_system_is_refused_before_loading(place, no_loading, capsys):
    """os.access says root may write /proc and /sys; creating anything there fails."""
    if not Path(place).is_dir():
        pytest.skip(f"{place} does not exist on this system")
    assert cli.main(["prune", "--out", f"{place}/thanos-out/pruned"]) == 2
    err = capsys.readouterr().err
    assert f"--out {place}/thanos-out/pruned: cannot create a folder and a file in {place}" in err
    assert not Path(place, "thanos-out").exists()


def test_out_on_a_read_only_file_system_is_refused_before_loading(tmp_path, no_loading, monkeypatch, capsys):
    """A read-only mount, simulated: creating a folder fails with EROFS (mounting one needs privileges)."""
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    assert cli.main(["prune", "--out", str(tmp_path / "a" / "b")]) == 2
    assert f"cannot create a folder and a file in {tmp_path} ({os.strerror(errno.EROFS)})" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_refused_before_loading(tiny_dir, tmp_path, no_loading, monkeypatch, capsys):
    weights = sum(p.stat().st_size for p in tiny_dir.glob("*.safetensors"))
    monkeypatch.setattr(cli, "free_bytes", lambda folder: weights + cli.OUTPUT_MARGIN_BYTES - 1)
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'out'}: {tmp_path} has" in err and "MiB free" in err and "weight files" in err
    assert list(tmp_path.iterdir()) == []


def test_full_disk_for_the_loaded_model_is_refused_before_pruning(tiny_dir, tmp_path, no_pruning, monkeypatch, capsys):
    """The exact size is known once the model is loaded (its tensors); checked before any work."""
    from thanos.assets import load_model

    model, _ = load_model(tiny_dir)
    tensors = cli._tensor_bytes(model.state_dict().values())
    tied = model.get_input_embeddings().weight
    assert tensors == sum(p.numel() * p.element_size() for p in model.parameters())  # tied lm_head counted once
    assert tied.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    monkeypatch.setattr("thanos.assets.weights_bytes", lambda path: 0)  # the first check passes
    monkeypatch.setattr(cli, "free_bytes", lambda folder: tensors + cli.OUTPUT_MARGIN_BYTES - 1)
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "out")) == 2
    assert "the model's tensors" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(cli, "free_bytes", lambda folder: tensors + cli.OUTPUT_MARGIN_BYTES)  # just enough: passes the check
    with pytest.raises(AssertionError, match="pruning started"):
        cli.main(_magnitude_args(tiny_dir, tmp_path / "out"))


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("flags,flag", [(["--seqlen", "600"], "--seqlen"), (["--eval-seqlen", "513"], "--eval-seqlen")])
def test_windows_longer_than_the_context_are_refused_before_loading(arch, flags, flag, tiny_dir, tiny_opt_dir, tmp_path,
                                                                     no_loading, capsys):
    folder = tiny_dir if arch == "llama" else tiny_opt_dir
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 512
    assert cli.main(["prune", "--model", str(folder), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {flags[1]} is longer than the model's context of 512 positions (config.max_position_embeddings)" in err
    if flag == "--eval-seqlen":
        assert cli.main(["eval", "--model", str(folder), *flags]) == 2
        assert "context of 512 positions" in capsys.readouterr().err
    # the limits themselves are accepted: with 512 the run proceeds to loading (forbidden here)
    with pytest.raises(AssertionError, match="loaded"):
        cli.main(["prune", "--model", str(folder), "--out", str(tmp_path / "o"), flag, "512"])


def test_seqlen_unused_by_magnitude_is_not_checked(tiny_dir, tmp_path, no_loading):
    with pytest.raises(AssertionError, match="loaded"):  # got past the checks
        cli.main(_magnitude_args(tiny_dir, tmp_path / "o", "--seqlen", "4096"))


def test_context_of_a_model_whose_config_is_unreadable_up_front_is_checked_after_loading(
        tiny_dir, text_file, tmp_path, no_pruning, monkeypatch, capsys):
    """GGUF files give their context only once loaded: the check then runs before calibration."""
    monkeypatch.setattr("thanos.assets.context_length", lambda path: None)
    assert cli.main(_prune_args(tiny_dir, text_file, tmp_path / "o", "--seqlen", "600")) == 2
    assert "--seqlen 600 is longer than the model's context of 512 positions" in capsys.readouterr().err


def test_calibration_text_too_short_for_distinct_windows(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("thanos.model.prune_model", lambda *a, **k: pytest.fail("pruning started"))
    short = tmp_path / "short.txt"
    short.write_bytes(b"The quick brown fox jumps over the lazy dog")  # 43 bytes: 12 windows of 32
    assert cli.main(["prune", "--model", str(tiny_dir), "--calibration", str(short), "--no-eval", "--seqlen", "32",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"--calibration {short} with --nsamples 128 --seqlen 32" in err
    assert "43 tokens give only 12 distinct windows" in err and "nsamples <= 12 or seqlen <= " not in err
    assert not (tmp_path / "o").exists()


def test_non_utf8_calibration_is_refused_before_loading(tiny_dir, tmp_path, no_loading, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("na\u00efve caf\u00e9".encode("latin-1"))
    assert cli.main(["prune", "--model", str(tiny_dir), "--calibration", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"--calibration {bad}: {bad}: not UTF-8 text (byte 0xef at offset 2" in capsys.readouterr().err


def test_dataset_folder_without_text_files_is_refused_before_loading(tmp_path, no_loading, capsys):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")  # metadata only
    assert cli.main(["prune", "--eval", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert f"--eval {folder}: {folder}: the folder has no .txt/" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["same", "contains", "inside"])
def test_out_overlapping_the_model_is_refused_before_anything_is_deleted(where, tiny_dir, tmp_path, no_loading, capsys):
    import shutil

    home = tmp_path / "home"
    model = home / "model"
    shutil.copytree(tiny_dir, model)
    before = _tree(home)
    out = {"same": model, "contains": home, "inside": model / "pruned"}[where]
    relation = {"same": "is", "contains": "contains", "inside": "lies inside"}[where]
    assert cli.main(["prune", "--model", str(model), "--out", str(out), "--overwrite"]) == 2
    assert f"--out {out} {relation} --model {model}" in capsys.readouterr().err
    assert _tree(home) == before


def test_out_overlapping_a_text_input_is_refused(tiny_dir, tmp_path, no_loading, capsys):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("some text")
    assert cli.main(["prune", "--model", str(tiny_dir), "--calibration", str(folder / "a.txt"), "--out", str(folder),
                     "--overwrite"]) == 2
    assert f"--out {folder} contains --calibration" in capsys.readouterr().err
    assert (folder / "a.txt").read_text() == "some text"


def test_output_folder_gets_the_mode_of_a_plain_mkdir(tiny_dir, tmp_path):
    previous = os.umask(0o027)
    try:
        out = tmp_path / "pruned"
        assert cli.main(_magnitude_args(tiny_dir, out)) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~0o027  # mkdtemp would give 0o700


def test_overwrite_without_the_atomic_exchange(tiny_dir, tmp_path, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is unavailable, the two-rename fallback gives the same result."""
    monkeypatch.setattr(cli, "_exchange", lambda a, b: False)
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    assert cli.main(_magnitude_args(tiny_dir, out, "--overwrite")) == 0
    assert (out / "report.json").is_file() and not (out / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", ["loading", "writing"])
def test_interrupt_prints_one_line_and_keeps_the_old_out(sig, stage, tiny_dir, tmp_path, monkeypatch, capsys):
    """In-process: the signal arrives while loading or in the middle of writing the output."""
    from transformers import PreTrainedTokenizerFast

    import thanos.assets

    def interrupt(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("the signal did not stop the run")

    if stage == "loading":
        monkeypatch.setattr(thanos.assets, "load_model", interrupt)
    else:
        monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", interrupt)
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    before = _tree(out)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(_magnitude_args(tiny_dir, out, "--overwrite")) == 128 + sig
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last == f"thanos prune: interrupted by {sig.name}; nothing written, --out {out} left as it was"
    assert "Traceback" not in err
    assert _tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["pruned"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


def test_interrupt_of_eval_prints_one_line(tiny_dir, text_file, monkeypatch, capsys):
    import thanos.assets

    def interrupt(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(thanos.assets, "load_model", interrupt)
    assert cli.main(["eval", "--model", str(tiny_dir), "--eval", str(text_file), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "thanos eval: interrupted by SIGINT" and "Traceback" not in err


def test_interrupt_during_the_commit_is_held_until_it_is_complete(tiny_dir, tmp_path, monkeypatch, capsys):
    commit = cli._commit

    def interrupted_commit(tmp, out, overwrite):
        os.kill(os.getpid(), signal.SIGINT)  # held: delivered when the commit is done
        commit(tmp, out, overwrite)

    monkeypatch.setattr(cli, "_commit", interrupted_commit)
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    assert cli.main(_magnitude_args(tiny_dir, out, "--overwrite")) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"thanos prune: interrupted by SIGINT; --out {out} was already complete")
    assert (out / "report.json").is_file() and not (out / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_folders_of_dead_processes_are_removed(tiny_dir, tmp_path):
    out = tmp_path / "pruned"
    host = cli._temporary_name(out, "tmp").split("-tmp-")[1].rsplit("-", 2)[0]
    dead = _dead_pid()
    stale = tmp_path / f".pruned.thanos-tmp-{host}-{dead}-0123abcd"
    live = tmp_path / f".pruned.thanos-tmp-{host}-{os.getpid()}-0123abcd"
    other_host = tmp_path / f".pruned.thanos-tmp-elsewhere-{dead}-0123abcd"
    other_name = tmp_path / f".other.thanos-tmp-{host}-{dead}-0123abcd"
    for folder in (stale, live, other_host, other_name):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    assert cli.main(_magnitude_args(tiny_dir, out)) == 0
    assert not stale.exists() and live.exists() and other_host.exists() and other_name.exists()


def test_previous_out_left_aside_by_a_killed_run_is_restored(tmp_path):
    """A run killed between moving the old --out aside and moving the new one in (the fallback
    without the atomic exchange): the next run puts the previous content back first."""
    out = tmp_path / "pruned"
    host = cli._temporary_name(out, "tmp").split("-tmp-")[1].rsplit("-", 2)[0]
    dead = _dead_pid()
    aside = tmp_path / f".pruned.thanos-old-{host}-{dead}-0123abcd"
    (aside / "previous").mkdir(parents=True)
    (aside / "previous" / "old.txt").write_text("previous run")
    cli.remove_stale_temporaries(out)
    assert (out / "old.txt").read_text() == "previous run" and not aside.exists()


def test_log_levels(tiny_dir, tmp_path, capsys):
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "a")) == 0
    captured = capsys.readouterr()
    assert f"loading {tiny_dir}" in captured.err and "pruned block 0" not in captured.err
    assert captured.out.startswith("sparsity 0.5000")
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "b", "-q")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("sparsity 0.5000")
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "c", "-v")) == 0
    assert "pruned block 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(_magnitude_args(tiny_dir, tmp_path / "d", "-q", "-v"))


def test_no_progress_silences_transformers_bars(tiny_dir, tmp_path, capsys):
    import transformers.utils.logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    args = ["prune", "--model", str(tiny_dir), "--method", "magnitude", "--no-eval"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "Loading weights" in capsys.readouterr().err  # transformers' own bar, shown by default
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err and "%|" not in err
    assert hf_logging.is_progress_bar_enabled()  # restored for whoever runs next in this process


def test_targets_matching_nothing_are_refused_before_pruning(tiny_dir, tmp_path, no_pruning, capsys):
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "o", "--targets", "model.layers.*.mlp.*", "decoder.*")) == 2
    err = capsys.readouterr().err
    assert "--targets: the pattern 'decoder.*' matches no nn.Linear of LlamaForCausalLM (full module names such as 'model.layers.0." in err


@pytest.mark.parametrize("bad,message", [(["--targets"], "expected at least one argument"),
                                         (["--ignore", ""], "patterns must be non-empty"),
                                         (["--targets", "a b"], "without spaces")])
def test_target_pattern_syntax(bad, message, tmp_path, no_loading, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["prune", "--out", str(tmp_path / "o"), *bad])
    err = capsys.readouterr().err
    assert info.value.code == 2 and bad[0] in err and message in err


def test_targets_and_ignore_choose_the_pruned_linears(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "o"
    assert cli.main(_magnitude_args(tiny_dir, out, "--targets", "model.layers.*.mlp.*", "--ignore", "model.layers.1.*")) == 0
    report = json.loads((out / "report.json").read_text())
    expected = [f"model.layers.0.mlp.{name}" for name in ("gate_proj", "up_proj", "down_proj")]
    assert sorted(layer["name"] for layer in report["layers"]) == sorted(expected)
    dense = AutoModelForCausalLM.from_pretrained(tiny_dir)
    pruned = AutoModelForCausalLM.from_pretrained(out)
    modules = dict(dense.named_modules())
    for name, module in pruned.named_modules():
        if isinstance(module, torch.nn.Linear):
            same = torch.equal(module.weight, modules[name].weight)  # untouched weights are copied, not recomputed
            assert same == (name not in expected), name
    assert report["achieved_sparsity"] == 0.5


def test_save_masks_writes_the_real_masks(tiny_dir, text_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "o"
    assert cli.main(_prune_args(tiny_dir, text_file, out, "--pattern", "2:4", "--no-eval", "--save-masks")) == 0
    masks = load_file(str(out / "masks.safetensors"))
    report = json.loads((out / "report.json").read_text())
    assert sorted(masks) == sorted(layer["name"] for layer in report["layers"]) and len(masks) == 14
    pruned = dict(AutoModelForCausalLM.from_pretrained(out).named_modules())
    for layer in report["layers"]:
        mask = masks[layer["name"]]
        weight = pruned[layer["name"]].weight
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        assert int(mask.sum()) == layer["pruned"] and bool((weight[mask] == 0).all())
        assert bool((mask.reshape(-1, 4).sum(-1) == 2).all())  # 2:4 in every group


def test_lm_head_stays_dense_and_cannot_be_targeted(tiny_dir, tmp_path, capsys):
    """Only the Linears inside the decoder blocks are pruned: the tiny LLaMA ties lm_head to the
    embeddings, so pruning it would prune the embeddings too; a target naming it is refused
    (exit 2, naming --targets) before any work."""
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "o", "--targets", "*")) == 2
    err = capsys.readouterr().err
    assert "--targets: ['lm_head'] lie outside the decoder blocks" in err and not (tmp_path / "o").exists()
    assert cli.main(_magnitude_args(tiny_dir, tmp_path / "p")) == 0
    names = [layer["name"] for layer in json.loads((tmp_path / "p" / "report.json").read_text())["layers"]]
    assert "lm_head" not in names and len(names) == 14
