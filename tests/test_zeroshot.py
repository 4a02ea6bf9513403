"""``thanos eval --tasks``: zero-shot tasks through lm-evaluation-harness, from local files only.

The task file is our own (tests/data/zeroshot): six multiple-choice questions in a JSON-lines
file. What must hold: every log-likelihood lm-eval reports is the one computed directly from the
model (the sum of log-softmax of each continuation token given the text before it), the accuracy
is the share of documents whose best-scoring choice is the labelled one, and tasks that would
reach a hub, or files that do not exist, are refused before the model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tolerances as T
from thanos import cli, zeroshot
from thanos.assets import tiny_model

TASKS = Path(__file__).parent / "data" / "zeroshot"
TASK_FILE = TASKS / "tiny_choice.yaml"
DOCS = [json.loads(line) for line in (TASKS / "tiny_choice.jsonl").read_text().splitlines() if line.strip()]


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), summed over the continuation's tokens (byte tokenizer: the
    tokens of context + continuation split exactly at the boundary)."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    assert whole[: len(ctx)] == ctx
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return float(sum(logprobs[i - 1, whole[i]] for i in range(len(ctx), len(whole))))


def test_task_files_are_checked_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        zeroshot.task_files([tmp_path / "missing.yaml"])
    with pytest.raises(ValueError, match="no .yaml"):
        zeroshot.task_files([tmp_path])
    hub = tmp_path / "hub.yaml"
    hub.write_text("task: remote\ndataset_path: someone/dataset\noutput_type: multiple_choice\n")
    with pytest.raises(ValueError, match="nothing is fetched"):
        zeroshot.load_task_config(hub)
    missing = tmp_path / "missing_data.yaml"
    missing.write_text("task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: nowhere.jsonl\n")
    with pytest.raises(ValueError, match="not found"):
        zeroshot.load_task_config(missing)
    config = zeroshot.load_task_config(TASK_FILE)
    assert Path(config["dataset_kwargs"]["data_files"]["test"]).is_absolute()


def test_cli_refuses_a_missing_task_file_before_loading(tmp_path, capsys):
    rc = cli.main(["eval", "--tasks", str(tmp_path / "none.yaml")])
    assert rc == 2
    assert "--tasks" in capsys.readouterr().err


def test_loglikelihoods_and_accuracy_match_the_model(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra 'eval' (pip install 'thanos[eval]')")
    model, tokenizer = tiny_model("llama", seed=1)
    out = zeroshot.evaluate(model, tokenizer, [TASK_FILE], device="cpu", cache_dir=str(tmp_path / "cache"),
                            return_loglikelihoods=True)
    assert out["samples"]["thanos_tiny_choice"] == len(DOCS)
    reported = out["loglikelihoods"]["thanos_tiny_choice"]
    assert len(reported) == len(DOCS)
    correct = 0
    for doc, got in zip(DOCS, reported):
        expected = [_loglikelihood(model, tokenizer, doc["question"], choice) for choice in doc["choices"]]
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            n = len(tokenizer(doc["question"] + " x")["input_ids"])
            T.assert_scalar_close(g, e, tol=T.rounding_tol(n * model.config.hidden_size, "float32"),
                                  what="lm-eval log-likelihood", scale=max(1.0, abs(e)))
        best = max(range(len(expected)), key=lambda i: expected[i])
        gap = sorted(expected)[-1] - sorted(expected)[-2]
        assert gap > 1e-3, "two choices score alike: the accuracy check would hinge on rounding"
        correct += best == doc["label"]
    assert out["results"]["thanos_tiny_choice"]["acc"] == pytest.approx(correct / len(DOCS), abs=T.rounding_tol(len(DOCS)))


def test_thanos_eval_tasks_end_to_end(tmp_path, capsys):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra 'eval' (pip install 'thanos[eval]')")
    model, tokenizer = tiny_model("llama", seed=1)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rc = cli.main(["eval", "--model", str(folder), "--tasks", str(TASKS), "--json", "--limit", "4", "--no-progress"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"]["thanos_tiny_choice"] == 4
    assert 0.0 <= printed["results"]["thanos_tiny_choice"]["acc"] <= 1.0
