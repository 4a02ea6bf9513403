"""The command line: argument errors before any load, atomic output, prune/eval end to end.

Fast tests use a tiny seeded LLaMA saved to a folder (byte tokenizer); the one marked ``slow``
runs ``thanos prune`` on the real SmolLM2 and reloads its output with transformers.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from thanos import cli, data
from thanos.assets import tiny_model
from thanos.model import prune_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tokenizer = tiny_model("llama", seed=3, layers=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(data.read_text(data.default_calibration_path())[:20000])
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a model or tokenise text fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or text was loaded before the arguments were checked")

    monkeypatch.setattr("thanos.assets.load_model", forbidden)
    monkeypatch.setattr("thanos.data.calibration_windows", forbidden)
    monkeypatch.setattr("thanos.model.prune_model", forbidden)


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


@pytest.mark.parametrize("extra", [["--nsamples", "0"], ["--seqlen", "x"], ["--method", "obs"]])
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
    assert cli.main(["eval", "--model", str(tiny_dir), "--eval", str(short), "--eval-seqlen", "64", "--no-progress"]) == 1
    assert "needs 64 tokens, found 9" in capsys.readouterr().err


def test_verify_argument_errors(no_loading, capsys):
    assert cli.main(["verify", "--only", "obs"]) == 2
    assert "--only" in capsys.readouterr().err
    assert cli.main(["verify", "--nsamples", "0"]) == 2


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
