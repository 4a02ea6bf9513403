"""The quality benchmark's bookkeeping (``python -m benchmarks quality``), without pruning: the
targets it judges, the seed noise it puts beside them (from the ``study --quick`` records, which
prune at its size), ``--report``, and that it rewrites only its own README section.

The pruning itself is the ``prune_model`` the other tests check; this file checks what the
benchmark says about the numbers, since a table that misreports them is wrong however good they are.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the repository, not installed
from benchmarks import quality, study  # noqa: E402

QUICK = study.SIZES["quick"]
DEFAULT_SETTINGS = dict(nsamples=QUICK.nsamples, seqlen=QUICK.seqlen, eval_seqlen=QUICK.eval_seqlen,
                        max_windows=QUICK.eval_windows, block_size=None, seed=0, device="cpu", only=None)


def _run(method, pattern, perplexity, alpha=0.0):
    return dict(method=method, pattern=pattern, alpha=alpha, perplexity=perplexity)


def test_targets_judge_each_comparison_on_the_numbers():
    runs = [_run("thanos", "2:4", 70.0), _run("sparsegpt", "2:4", 72.0),
            _run("thanos", "4:8", 55.0), _run("sparsegpt", "4:8", 53.0),
            _run("thanos", "unstructured", 41.0), _run("sparsegpt", "unstructured", 40.0),  # +2.5 %: within 3 %
            _run("thanos", "structured", 180.0, alpha=0.2), _run("sparsegpt", "structured", 250.0),
            _run("wanda", "structured", 359.0), _run("magnitude", "structured", 361.0),
            _run("thanos", "structured", 1.0)]  # alpha 0: not Thanos' structured default (0.2), not the target's run
    got = {name: met for name, met, _ in quality.targets(runs)}
    assert got == {"thanos <= sparsegpt at 2:4": True, "thanos <= sparsegpt at 4:8": False,
                   "thanos <= sparsegpt at structured 30%": True,
                   "thanos within 3% of sparsegpt at 50% unstructured": True,
                   "thanos far better than wanda at structured 30%": False,  # 180 is not under half of 359
                   "thanos far better than magnitude at structured 30%": True}
    runs[5] = _run("sparsegpt", "unstructured", 39.8)  # +3.02 %
    assert not dict((n, m) for n, m, _ in quality.targets(runs))["thanos within 3% of sparsegpt at 50% unstructured"]


def _study_record(method, pattern, block_size, seed, wiki, nsamples=QUICK.nsamples):
    return dict(study="calibration", method=method, pattern=pattern, sparsity=study.PATTERN_SPARSITY[pattern],
                block_size=block_size, alpha=0.0, metric="psi", layer_sparsity="uniform", nsamples=nsamples,
                seed=seed, perplexity={"wiki": wiki})


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_seed_noise_is_the_quick_studys_comparison_of_the_defaults_at_this_size(tmp_path):
    thanos_wiki, sparsegpt_wiki = [70.0, 71.0, 69.0], [75.0, 77.0, 74.0]
    whole = study.library_block_size("thanos", "2:4")
    records = [_study_record("thanos", "2:4", whole, s, v) for s, v in enumerate(thanos_wiki)]
    records += [_study_record("sparsegpt", "2:4", 128, s, v) for s, v in enumerate(sparsegpt_wiki)]
    # not this benchmark's runs: another calibration size, and Thanos at a B that is not its default
    records += [_study_record("thanos", "2:4", whole, s, 10.0, nsamples=2 * QUICK.nsamples) for s in range(3)]
    records += [_study_record("sparsegpt", "2:4", 128, s, 99.0, nsamples=2 * QUICK.nsamples) for s in range(3)]
    records += [_study_record("thanos", "2:4", whole + 512, s, 1.0) for s in range(3)]
    lines = quality.seed_noise(DEFAULT_SETTINGS, _write_jsonl(tmp_path / "quick.jsonl", records))
    rows = [line for line in lines if line.startswith("| 2:4")]
    assert len(rows) == 1 and len(lines) == 5  # the sentence, a blank line, the header, the rule, the one row
    cells = rows[0].split(" | ")
    assert cells[2:4] == [str(QUICK.nsamples), "3"]
    paired = [t - s for t, s in zip(thanos_wiki, sparsegpt_wiki)]  # the same seeds on both sides
    assert cells[4].startswith(f"{statistics.fmean(thanos_wiki):.2f} vs {statistics.fmean(sparsegpt_wiki):.2f}: "
                               f"{statistics.fmean(paired):+.2f} ± {statistics.stdev(paired):.2f}")
    noise = max(statistics.stdev(thanos_wiki), statistics.stdev(sparsegpt_wiki))
    assert f"noise {noise:.2f}" in cells[4] and cells[4].endswith("**yes** |")


@pytest.mark.parametrize("change", [dict(nsamples=64), dict(seqlen=512), dict(max_windows=40), dict(eval_seqlen=256),
                                    dict(block_size=512)])
def test_seed_noise_says_it_was_not_measured_at_other_settings(tmp_path, change):
    records = [_study_record(m, "2:4", study.library_block_size(m, "2:4"), s, 70.0 + s) for m in ("thanos", "sparsegpt")
               for s in range(3)]
    path = _write_jsonl(tmp_path / "quick.jsonl", records)
    assert any(line.startswith("| 2:4") for line in quality.seed_noise(DEFAULT_SETTINGS, path))
    [line] = quality.seed_noise({**DEFAULT_SETTINGS, **change}, path)
    assert line.startswith("Seed noise: not measured at these settings")
    [line] = quality.seed_noise(DEFAULT_SETTINGS, tmp_path / "missing.jsonl")
    assert line.startswith("Seed noise: not measured yet")


def _payload():
    runs = [dict(method="thanos", pattern="2:4", sparsity=None, alpha=0.0, block_size="576/1536", perplexity=70.5,
                 achieved_sparsity=0.5, seconds=250.0, solver_seconds=200.0),
            dict(method="sparsegpt", pattern="2:4", sparsity=None, alpha=0.0, block_size="128", perplexity=72.5,
                 achieved_sparsity=0.5, seconds=100.0, solver_seconds=60.0)]
    return dict(command="python -m benchmarks quality", date="2026-12-06", machine="x86_64 CPU", threads=1,
                settings=dict(DEFAULT_SETTINGS), eval_windows=QUICK.eval_windows, dense_perplexity=19.67, runs=runs,
                wall_seconds=600.0, max_rss_mib=2000.0, versions={}, commit="abc1234",
                targets=[list(t) for t in quality.targets(runs)])


def test_report_rewrites_only_its_readme_section_from_the_json(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    before, after = "# Benchmarks\n\nintro\n\n", "## Next section\n\nkept as it was\n"
    readme.write_text(before + quality.SECTION + "\n\nold table\n\n" + after, encoding="utf-8")
    records = [_study_record(m, "2:4", study.library_block_size(m, "2:4"), s, (70.0 if m == "thanos" else 80.0) + s % 2)
               for m in ("thanos", "sparsegpt") for s in range(3)]
    monkeypatch.setattr(quality, "README", readme)
    monkeypatch.setattr(quality, "STUDY_QUICK", _write_jsonl(tmp_path / "quick.jsonl", records))
    out = tmp_path / "quality.json"
    out.write_text(json.dumps(_payload()), encoding="utf-8")
    assert quality.main(["--report", "--out", str(out)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(before + quality.SECTION + "\n") and text.endswith("\n" + after)
    assert "old table" not in text and "| thanos | 2:4 | 0 | 576/1536 | 70.50 |" in text
    assert "- met: thanos <= sparsegpt at 2:4 (70.50 vs 72.50)" in text
    assert "Seed noise: the targets above are judged on one calibration seed" in text and "| 2:4 | whole | 32 | 3 |" in text
    saved = json.loads(out.read_text(encoding="utf-8"))
    assert saved["seed_noise"] == quality.seed_noise(DEFAULT_SETTINGS, quality.STUDY_QUICK)
    assert quality.SECTION in capsys.readouterr().out
    # --no-readme: the JSON is written again, the README left alone
    readme.write_text("untouched\n", encoding="utf-8")
    assert quality.main(["--report", "--no-readme", "--out", str(out)]) == 0
    assert readme.read_text(encoding="utf-8") == "untouched\n"


@pytest.mark.parametrize("argv, names", [(["--report", "--seed", "3"], "--seed"),
                                         (["--report", "--nsamples", "64", "--only", "thanos"], "--nsamples --only"),
                                         (["--report", "--out", "MISSING"], "--out"),
                                         (["--report"], "--out: "), (["--report", "--out", "NOT_JSON"], "not readable JSON"),
                                         (["--report", "--out", "NO_SEED"], "settings.seed"),
                                         (["--report", "--out", "RUN_LACKS"], "runs[1].perplexity")])
def test_report_refuses_run_options_and_a_missing_or_foreign_json_before_any_work(tmp_path, monkeypatch, capsys, argv,
                                                                                   names):
    out = tmp_path / "quality.json"
    out.write_text("{}", encoding="utf-8")  # JSON, but not this benchmark's: no settings, runs, ...
    (tmp_path / "not.json").write_text("{", encoding="utf-8")
    payload = _payload()
    del payload["settings"]["seed"]
    (tmp_path / "no_seed.json").write_text(json.dumps(payload), encoding="utf-8")
    payload = _payload()
    del payload["runs"][1]["perplexity"]
    (tmp_path / "run_lacks.json").write_text(json.dumps(payload), encoding="utf-8")
    argv = [{"MISSING": str(tmp_path / "missing.json"), "NOT_JSON": str(tmp_path / "not.json"),
             "NO_SEED": str(tmp_path / "no_seed.json"), "RUN_LACKS": str(tmp_path / "run_lacks.json")}.get(a, a)
            for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    readme = tmp_path / "README.md"
    readme.write_text("kept\n", encoding="utf-8")
    monkeypatch.setattr(quality, "README", readme)
    with pytest.raises(SystemExit) as exit_info:
        quality.main(argv)
    assert exit_info.value.code == 2 and names in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == "{}" and readme.read_text(encoding="utf-8") == "kept\n"


def test_every_target_has_its_run_at_the_default_alpha():
    """The targets read each method's run at ``spec.default_alpha``; the runs the benchmark (and
    ``thanos verify``) make must include it for every method and pattern they prune, or a target
    would silently drop out when a default moves (as the structured alpha did, 0.1 to 0.2)."""
    made = {(m, p, a) for m, p, _, a in quality.RUNS}
    for method, pattern in {(m, p) for m, p, _, _ in quality.RUNS}:
        assert (method, pattern, quality.spec.default_alpha(method, pattern)) in made, (method, pattern)
    runs = [_run(m, p, 100.0, alpha=a) for m, p, _, a in quality.RUNS]
    assert len(quality.targets(runs)) == 6  # 2:4, 4:8, structured, 50 %, and structured against wanda and magnitude
