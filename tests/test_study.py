"""The quality-study tooling (``python -m benchmarks study``) and the outlier-weighted (OWL) block
sparsity of ``prune_model``, on tiny models (seconds).

What must hold: the metric swap inside Thanos ranks by exactly the score it names (checked against
the mask derived by hand for a diagonal H, where each metric has a closed form), leaves the solver
as it was afterwards; OWL's block sparsities average the requested sparsity, prune the blocks with
more outliers less, and each layer is pruned to its block's exact count; a study records one line
per run, resumes without redoing runs, and its report has a table and a plot.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the repository, not installed
from benchmarks import study  # noqa: E402
import tolerances as T  # noqa: E402
import thanos  # noqa: E402
from thanos import solver  # noqa: E402
from thanos.assets import tiny_model  # noqa: E402
from thanos.model import decoder_layers, outlier_ratios, owl_sparsities, prune_model  # noqa: E402
from thanos.verify import expected_pruned  # noqa: E402


def _calibration(nsamples=6, seqlen=16, seed=0, vocab=257):
    return torch.randint(0, vocab, (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- metric inside Thanos
def test_metric_study_prunes_with_thanos_prunes_metric_option(tmp_path, tiny_study, monkeypatch):
    """The metric study runs ``prune_model(metric=...)`` (the library option, tested against the
    reference in tests/test_production_solver.py), one run per score, and records the score."""
    import thanos.model

    seen = []
    real = thanos.model.prune_model

    def spy(*args, **kwargs):
        seen.append(kwargs.get("metric", "psi"))
        return real(*args, **kwargs)

    monkeypatch.setattr(thanos.model, "prune_model", spy)
    out = tmp_path / "runs.jsonl"
    assert study.main(["metric", "--patterns", "2:4", "--seeds", "0", "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert sorted(seen) == sorted(r["metric"] for r in runs) == sorted(study.METRICS)


# ------------------------------------------------------------------------------------------- OWL
def test_owl_sparsities_average_the_requested_sparsity_and_favour_outliers():
    ratios = [0.01, 0.05, 0.02, 0.08, 0.03]
    out = owl_sparsities(ratios, 0.6, spread=0.1)
    assert math.isclose(sum(out) / len(out), 0.6, rel_tol=0, abs_tol=T.rounding_tol(len(ratios)))  # a sum of 5 terms
    order_ratio = sorted(range(5), key=lambda i: ratios[i])
    order_sparsity = sorted(range(5), key=lambda i: -out[i])
    assert order_ratio == order_sparsity  # more outliers, lower sparsity
    assert math.isclose(max(out) - min(out), 0.2, abs_tol=T.rounding_tol(len(ratios)))  # mapped onto [0, 2 lambda]
    assert owl_sparsities([0.04] * 3, 0.5) == [0.5] * 3


def test_outlier_ratios_follow_the_threshold():
    model, _ = tiny_model("llama")
    cal = _calibration()
    zero = outlier_ratios(model, cal, threshold=1e-12)
    huge = outlier_ratios(model, cal, threshold=1e12)
    mid = outlier_ratios(model, cal, threshold=2.0)
    blocks = len(decoder_layers(model))
    assert len(zero) == len(huge) == len(mid) == blocks
    assert all(r > 0.99 for r in zero) and all(r == 0.0 for r in huge)
    assert all(0.0 < r < 0.5 for r in mid)  # a few weights above twice their block's mean score


def test_prune_model_owl_prunes_each_block_to_its_own_sparsity():
    model, _ = tiny_model("llama")
    dense = copy.deepcopy(model)
    result = prune_model(model, _calibration(), method="thanos", pattern="unstructured", sparsity=0.5,
                         block_size=16, layer_sparsity="owl", owl_spread=0.1)
    blocks = result.block_sparsity
    assert len(blocks) == len(decoder_layers(model))
    assert math.isclose(sum(blocks) / len(blocks), 0.5, abs_tol=T.rounding_tol(len(blocks)))
    assert max(blocks) - min(blocks) > 0.1  # non-uniform
    ratios = outlier_ratios(dense, _calibration())
    assert blocks == owl_sparsities(ratios, 0.5, 0.1)  # the same function on the same numbers
    for layer in result.layers:
        assert layer.pruned == expected_pruned("thanos", "unstructured", blocks[layer.block], 0.0, *layer.shape)


def test_prune_model_takes_one_sparsity_per_block():
    model, _ = tiny_model("llama")
    result = prune_model(model, _calibration(), method="sparsegpt", sparsity=0.5, block_size=16,
                         layer_sparsity=[0.3, 0.5, 0.7])
    for layer in result.layers:
        assert layer.pruned == expected_pruned("sparsegpt", "unstructured", [0.3, 0.5, 0.7][layer.block], 0.0, *layer.shape)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pattern="2:4", layer_sparsity="owl"), "unstructured"),
    (dict(method="magnitude", layer_sparsity="owl"), "magnitude"),
    (dict(layer_sparsity="wide"), "layer_sparsity"),
    (dict(layer_sparsity=[0.5, 0.5]), "3 decoder blocks"),
    (dict(layer_sparsity=[0.5, 0.5, 1.0]), r"\[0, 1\)"),
    (dict(pattern="4:8", layer_sparsity=[0.5, 0.5, 0.5]), "N:M"),
    (dict(layer_sparsity="owl", owl_spread=0.3), "owl_spread"),
    (dict(layer_sparsity="owl", owl_threshold=0), "owl_threshold"),
])
def test_prune_model_refuses_bad_layer_sparsity_before_any_work(kwargs, match):
    model, _ = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = dict(method="thanos", pattern="unstructured", block_size=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        prune_model(model, _calibration(), **args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_cli_refuses_owl_with_nm_before_loading(tmp_path, capsys):
    from thanos import cli

    rc = cli.main(["prune", "--pattern", "2:4", "--layer-sparsity", "owl", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--layer-sparsity owl" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------- study runs
TINY = study.Size(nsamples=4, seqlen=16, eval_windows=2, eval_seqlen=32, seeds=(0, 1), block_sizes=(16, study.WHOLE),
                  alphas=(0.0, 0.25), calibration_counts=(2, 4))


@pytest.fixture
def tiny_study(monkeypatch, fake_study_texts):
    monkeypatch.setitem(study.SIZES, "quick", TINY)
    return lambda: tiny_model("llama", layers=2)


def test_blocksize_study_records_resumes_and_reports(tmp_path, tiny_study, monkeypatch):
    out = tmp_path / "runs.jsonl"
    argv = ["blocksize", "--quick", "--patterns", "unstructured,2:4", "--out", str(out), "--no-progress"]
    assert study.main(argv, loader=tiny_study) == 0
    records = study.read_records(out)
    runs = [r for r in records if r["method"] != "dense"]
    grid = study.configs("blocksize", TINY, ["unstructured", "2:4"])
    assert len(runs) == len(grid) * len(TINY.seeds)
    assert {(r["method"], r["block_size"]) for r in runs} == {("sparsegpt", 128), ("thanos", 16), ("thanos", 0)}
    for r in runs:
        assert set(r["perplexity"]) == {"wiki", "c4-heldout"}
        assert all(math.isfinite(v) and v > 1 for v in r["perplexity"].values())
        assert abs(r["achieved_sparsity"] - 0.5) < 0.01
    assert study.main(argv, loader=tiny_study) == 0  # resumed: nothing left to do
    assert len(study.read_records(out)) == len(records)
    assert study.main(["report", "--out", str(out)]) == 0
    table = (tmp_path / "runs.md").read_text() if (tmp_path / "runs.md").exists() else (tmp_path / "study-quick.md").read_text()
    assert "| thanos | whole | 2 |" in table and "beats SparseGPT on wiki" in table
    # the metric, alpha, calibration and OWL studies have only their shared baseline run here
    assert "#### Metric inside Thanos" not in table and "#### Calibration size" not in table
    assert (tmp_path / "study-quick-blocksize.png").stat().st_size > 1000
    # another size's report into the same folder writes its own files and leaves these alone
    quick = {p.name: p.read_bytes() for p in tmp_path.glob("study-quick*")}
    monkeypatch.setitem(study.SIZES, "full", TINY)
    assert study.main(["report", "--full", "--out", str(out)]) == 0
    assert (tmp_path / "study-full-blocksize.png").stat().st_size > 1000 and (tmp_path / "study-full.md").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("study-quick*")} == quick


def test_a_run_serves_every_study_that_asks_for_it(tmp_path, tiny_study):
    """The metric study's psi run at the default B is the block-size study's run: not made twice,
    and both studies' tables read it."""
    from benchmarks import cpu_name

    out = tmp_path / "runs.jsonl"
    default_b = study.study_block_size("thanos", "2:4")
    assert study.main(["blocksize", "--patterns", "2:4", "--seeds", "0", "--block-sizes", str(default_b), "--out", str(out),
                       "--no-progress"], loader=tiny_study) == 0
    before = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert study.main(["metric", "--patterns", "2:4", "--seeds", "0", "--out", str(out), "--no-progress"],
                      loader=tiny_study) == 0
    added = [r for r in study.read_records(out) if r["method"] != "dense"][len(before):]
    assert sorted(r["metric"] for r in added) == sorted(m for m in study.METRICS if m != "psi")
    assert {r["cpu"] for r in before + added} == {cpu_name()}  # each record names the processor it ran on
    records = study.newest_records(study.read_records(out), "quick")
    metric_runs = study.group(records, "metric", TINY)
    assert sorted(k[5] for k in metric_runs) == sorted(study.METRICS)


def test_a_run_missing_a_requested_text_is_run_again_and_the_newest_record_counts(tmp_path, tiny_study):
    out = tmp_path / "runs.jsonl"
    argv = ["blocksize", "--patterns", "unstructured", "--seeds", "0", "--block-sizes", "16", "--out", str(out),
            "--no-progress"]
    assert study.main(argv + ["--texts", "wiki"], loader=tiny_study) == 0
    first = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert study.main(argv + ["--texts", "wiki,code"], loader=tiny_study) == 0
    records = study.read_records(out)
    assert len([r for r in records if r["method"] != "dense"]) == 2 * len(first)
    newest = [r for r in study.newest_records(records, "quick") if r["method"] != "dense"]
    assert len(newest) == len(first) and all(set(r["perplexity"]) == {"wiki", "code"} for r in newest)
    # the same run, the same code, one process: the shared text's perplexity is the same number
    old = {study.record_key(r, "quick"): r["perplexity"]["wiki"] for r in first}
    assert all(old[study.record_key(r, "quick")] == r["perplexity"]["wiki"] for r in newest)
    # runs evaluated on fewer texts than others: the tables and plots show what each run has
    assert study.main(argv[:5] + ["--block-sizes", "0", "--out", str(out), "--no-progress", "--texts", "wiki"],
                      loader=tiny_study) == 0
    assert study.main(["report", "--out", str(out)]) == 0
    assert (tmp_path / "study-quick-blocksize.png").stat().st_size > 1000


def test_whole_layer_block_size_equals_the_widest_input(tiny_study):
    model, _ = tiny_study()
    assert study.max_input_width(model) == max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)
                                               and m is not model.lm_head)


@pytest.mark.parametrize("name,patterns", [("metric", "2:4"), ("alpha", "structured"), ("calibration", "unstructured"),
                                           ("owl", "unstructured")])
def test_other_studies_run_at_a_tiny_size(tmp_path, tiny_study, name, patterns):
    out = tmp_path / "runs.jsonl"
    assert study.main([name, "--patterns", patterns, "--seeds", "0", "--out", str(out), "--no-progress"],
                      loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert len(runs) == len(study.configs(name, TINY, [patterns]))
    if name == "alpha":  # structured with alpha keeps the achieved sparsity (the other rows pruned more)
        for r in runs:
            assert abs(r["achieved_sparsity"] - 0.3) < 0.02, r
    if name == "calibration":
        assert {r["nsamples"] for r in runs} == set(TINY.calibration_counts)
    assert study.main(["report", "--out", str(out)]) == 0


@pytest.mark.parametrize("option,values,field", [("--calibration-windows", "3", "nsamples"), ("--alphas", "0.5", "alpha")])
def test_a_study_grid_can_be_widened_from_the_command_line(tmp_path, tiny_study, option, values, field):
    """--calibration-windows / --alphas replace the size's grid, as --block-sizes does."""
    out = tmp_path / "runs.jsonl"
    name = "calibration" if field == "nsamples" else "alpha"
    assert study.main([name, "--patterns", "structured", "--seeds", "0", "--only-method", "thanos", option, values,
                       "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    if field == "alpha":
        assert [r[field] for r in runs] == [float(values)]
    else:  # structured Thanos runs at the studies' alpha 0 and at its default alpha (calibration_settings)
        assert [r[field] for r in runs] == [int(values)] * len(study.calibration_settings("thanos", "structured")) == [3, 3]


def assert_rejected_before_any_run(argv, out, loader, capsys, message):
    """A filter that leaves no configuration: status 2, an error holding ``message`` (the filters as
    the user wrote them), and the record file ``out`` untouched: nothing run, nothing written."""
    before = out.read_bytes()
    capsys.readouterr()
    assert study.main(argv + ["--out", str(out), "--no-progress"], loader=loader) == 2
    assert message in capsys.readouterr().err
    assert out.read_bytes() == before


def test_only_method_and_only_sparsities_narrow_the_grid(tmp_path, tiny_study, capsys):
    """--only-method / --only-sparsities run part of a study's grid; a filter that leaves nothing is
    an error naming the filters, before any run, with the record file untouched."""
    out = tmp_path / "runs.jsonl"
    assert study.main(["owl", "--seeds", "0", "--only-method", "thanos", "--only-sparsities", "0.7", "--out", str(out),
                       "--no-progress"], loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert sorted((r["method"], r["sparsity"], r["metric"], r["layer_sparsity"]) for r in runs) == [
        ("thanos", 0.7, m, ls) for m in ("psi", "sparsegpt") for ls in ("owl", "uniform")]
    assert_rejected_before_any_run(["owl", "--seeds", "1", "--only-sparsities", "0.3"], out, tiny_study, capsys,
                                   "--only-sparsities 0.3, --only-alphas any and --only-block-sizes any;")


def test_only_alphas_runs_structured_thanos_at_its_default_alpha_alone_in_the_calibration_study(tmp_path, tiny_study,
                                                                                              capsys):
    """The calibration study runs structured Thanos at alpha 0 and at its default alpha
    (calibration_settings); --only-alphas runs one of them, at every calibration size, and an alpha
    the grid lacks is an error naming --only-alphas, before any run."""
    out = tmp_path / "runs.jsonl"
    default = study.spec.default_alpha("thanos", "structured")
    assert {a for _, a in study.calibration_settings("thanos", "structured")} == {0.0, default} and default > 0
    assert study.main(["calibration", "--patterns", "structured", "--seeds", "0", "--only-method", "thanos",
                       "--only-alphas", f"{default:g}", "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert sorted((r["nsamples"], r["alpha"]) for r in runs) == [(n, default) for n in sorted(TINY.calibration_counts)]
    assert_rejected_before_any_run(["calibration", "--patterns", "structured", "--seeds", "0", "--only-alphas", "0.1"],
                                   out, tiny_study, capsys, "--only-alphas 0.1 and")


def test_only_block_sizes_runs_thanos_at_its_2_4_default_alone_in_the_calibration_study(tmp_path, tiny_study, capsys):
    """The calibration study runs Thanos at 2:4 at the studies' fixed B and at its default, the whole
    layer (calibration_settings); --only-block-sizes 0 runs the whole layer alone, at every
    calibration size, and a B the grid lacks is an error naming --only-block-sizes, before any run."""
    out = tmp_path / "runs.jsonl"
    settings = study.calibration_settings("thanos", "2:4")
    assert {b for b, _ in settings} == {study.study_block_size("thanos", "2:4"), study.WHOLE} != {study.WHOLE}
    assert study.main(["calibration", "--patterns", "2:4", "--seeds", "0", "--only-method", "thanos",
                       "--only-block-sizes", f"{study.WHOLE}", "--out", str(out), "--no-progress"],
                      loader=tiny_study) == 0
    runs = [r for r in study.read_records(out) if r["method"] != "dense"]
    assert sorted((r["nsamples"], r["block_size"]) for r in runs) == [
        (n, study.WHOLE) for n in sorted(TINY.calibration_counts)]
    assert_rejected_before_any_run(["calibration", "--patterns", "2:4", "--seeds", "0", "--only-block-sizes", "48"],
                                   out, tiny_study, capsys, "--only-block-sizes 48;")
    # a grid that leaves B to the study (the alpha study) is filtered by the B its runs are made at
    # (Thanos at 4:8 at each alpha; not its unstructured runs at the matched sparsities, at another B)
    fixed = study.study_block_size("thanos", "4:8")
    assert study.study_block_size("thanos", "unstructured") != fixed
    assert study.main(["alpha", "--patterns", "4:8", "--only-method", "thanos", "--only-block-sizes", f"{fixed}",
                       "--out", str(out), "--dry-run"], loader=tiny_study) == 0
    assert f"): {len(TINY.alphas)} configurations x" in capsys.readouterr().out  # the count, not a suffix of one


def test_metric_study_at_70_percent_reuses_the_owl_studys_uniform_thanos_run(tmp_path, tiny_study):
    """The metric study asks at 70 % unstructured too; its psi run there is the OWL study's uniform
    Thanos run (not made again), --only-metric runs one score, and the metric table groups all three
    scores at 70 %."""
    out = tmp_path / "runs.jsonl"
    assert study.main(["owl", "--seeds", "0", "--only-method", "thanos", "--only-metric", "psi", "--only-sparsities", "0.7",
                       "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    before = len(study.read_records(out))
    assert study.main(["metric", "--patterns", "unstructured", "--only-sparsities", "0.7", "--only-metric", "sparsegpt",
                       "--seeds", "0", "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    added = study.read_records(out)[before:]
    assert [(r["metric"], r["sparsity"]) for r in added] == [("sparsegpt", 0.7)]
    assert study.main(["metric", "--patterns", "unstructured", "--only-sparsities", "0.7", "--seeds", "0",
                       "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    added = study.read_records(out)[before:]
    assert sorted((r["metric"], r["sparsity"]) for r in added) == [("magnitude", 0.7), ("sparsegpt", 0.7)]
    groups = study.group(study.newest_records(study.read_records(out), "quick"), "metric", TINY)
    assert sorted((k[2], k[5]) for k in groups) == [(0.7, m) for m in sorted(study.METRICS)]
    assert {k[2] for k in study.group(study.read_records(out), "owl", TINY)} == {0.7}  # the OWL study keeps its run


def test_owl_study_at_70_percent_also_runs_thanos_with_sparsegpts_score(tmp_path, tiny_study):
    """At 70 % the OWL study runs Thanos with SparseGPT's score too, uniform and OWL (at 50 % psi only);
    the uniform one is the metric study's run (reused, not made again); the table shows the score."""
    out = tmp_path / "runs.jsonl"
    assert study.main(["metric", "--patterns", "unstructured", "--only-sparsities", "0.7", "--only-metric", "sparsegpt",
                       "--seeds", "0", "--out", str(out), "--no-progress"], loader=tiny_study) == 0
    before = len(study.read_records(out))
    assert study.main(["owl", "--seeds", "0", "--only-method", "thanos", "--only-metric", "sparsegpt", "--out", str(out),
                       "--no-progress"], loader=tiny_study) == 0
    added = study.read_records(out)[before:]
    assert [(r["metric"], r["sparsity"], r["layer_sparsity"]) for r in added] == [("sparsegpt", 0.7, "owl")]
    groups = study.group(study.read_records(out), "owl", TINY)
    assert sorted((k[5], k[6]) for k in groups) == [("sparsegpt", "owl"), ("sparsegpt", "uniform")]
    table = study.report_generic(study.read_records(out), ["wiki"], "owl", ["method", "metric", "pattern", "layer sparsity"], TINY)
    assert sum("| thanos | sparsegpt |" in line for line in table) == 2
    assert all(c.metric == "psi" for c in study.configs("owl", TINY, ["unstructured"]) if c.sparsity == 0.5)


def test_defaults_table_has_a_line_per_calibration_size_with_the_paired_test(tmp_path, tiny_study):
    out = tmp_path / "runs.jsonl"
    assert study.main(["calibration", "--patterns", "structured", "--seeds", "0,1", "--out", str(out),
                       "--no-progress"], loader=tiny_study) == 0
    records = study.newest_records(study.read_records(out), "quick")
    lines = study.report_defaults(records, ["wiki"], TINY)
    rows = [line for line in lines if line.startswith("| structured")]
    assert [row.split(" | ")[2] for row in rows] == [str(n) for n in sorted(TINY.calibration_counts)]
    assert {row.split(" | ")[1] for row in rows} == {"-"}  # structured Thanos works in no blocks: no B to name
    table = study.report_generic(records, ["wiki"], "calibration", ["method", "pattern", "B", "alpha", "calibration windows"],
                                 TINY)
    assert {line.split(" | ")[2] for line in table if line.startswith("| thanos")} == {"-"}
    # structured Thanos at the studies' alpha 0 and at the library's default alpha, a line each per size
    assert sorted(line.split(" | ")[3] for line in table if line.startswith("| thanos")) == sorted(
        ["0.0", str(study.spec.DEFAULT_ALPHA_STRUCTURED)] * len(TINY.calibration_counts))
    assert {r["alpha"] for p in study.defaults_pairs(records, TINY) for r in p[2]} == {study.spec.DEFAULT_ALPHA_STRUCTURED}
    assert {line.split(" | ")[2] for line in table if line.startswith("| sparsegpt")} == {"128"}  # SparseGPT has blocks
    table = study.report_blocksize(records, ["wiki"], TINY)
    assert {line.split(" | ")[1] for line in table if line.startswith("| thanos")} == {"-"}
    assert all(" p " in row or "p < 0.001" in row or "p n/a" in row for row in rows)
    # one seed: the difference in %, and no verdict (no noise to judge it by)
    one = study.report_defaults([r for r in records if r.get("seed", 0) == 0], ["wiki"], TINY)
    rows = [line for line in one if line.startswith("| structured")]
    assert len(rows) == len(TINY.calibration_counts) and all("one seed: noise not measured" in row for row in rows)
    assert not any("**" in row for row in rows)
    assert study.main(["report", "--out", str(out)]) == 0
    assert (tmp_path / "study-quick-defaults.png").stat().st_size > 1000


def test_calibration_study_runs_thanos_also_at_the_library_default_where_it_differs(tmp_path, tiny_study):
    """At 2:4, where Thanos' default (the whole layer) is not the studies' fixed B, the calibration
    study runs both, its table tells them apart by B, and the defaults table has a 2:4 line for
    every calibration size (Thanos at the whole layer against SparseGPT)."""
    fixed, library = study.study_block_size("thanos", "2:4"), study.library_block_size("thanos", "2:4")
    assert fixed != library == study.WHOLE
    assert study.calibration_settings("thanos", "2:4") == ((fixed, 0.0), (library, 0.0))
    assert study.calibration_settings("thanos", "4:8") == ((study.study_block_size("thanos", "4:8"), 0.0),)
    assert study.calibration_settings("sparsegpt", "2:4") == ((study.study_block_size("sparsegpt", "2:4"), 0.0),)
    structured_b = study.study_block_size("thanos", "structured")
    assert study.calibration_settings("thanos", "structured") == ((structured_b, 0.0), (structured_b, 0.2))
    assert study.calibration_settings("sparsegpt", "structured") == ((study.study_block_size("sparsegpt", "structured"), 0.0),)
    out = tmp_path / "runs.jsonl"
    assert study.main(["calibration", "--patterns", "2:4", "--seeds", "0", "--out", str(out), "--no-progress"],
                      loader=tiny_study) == 0
    records = study.newest_records(study.read_records(out), "quick")
    runs = [r for r in records if r["method"] != "dense"]
    assert sorted((r["method"], r["block_size"], r["nsamples"]) for r in runs) == sorted(
        [("thanos", b, n) for b in (fixed, library) for n in TINY.calibration_counts]
        + [("sparsegpt", study.study_block_size("sparsegpt", "2:4"), n) for n in TINY.calibration_counts])
    assert {(k[0], k[3]) for k in study.group(records, "calibration", TINY)} == {
        ("thanos", fixed), ("thanos", library), ("sparsegpt", study.study_block_size("sparsegpt", "2:4"))}
    table = study.report_generic(records, ["wiki"], "calibration", ["method", "pattern", "B", "alpha", "calibration windows"],
                                 TINY)
    assert sum(line.startswith("| thanos | 2:4 | whole |") for line in table) == len(TINY.calibration_counts)
    assert sum(line.startswith(f"| thanos | 2:4 | {fixed} |") for line in table) == len(TINY.calibration_counts)
    pairs = study.defaults_pairs(records, TINY)
    assert [(p[0], p[1]) for p in pairs] == [("2:4", n) for n in sorted(TINY.calibration_counts)]
    assert all({r["block_size"] for r in p[2]} == {library} for p in pairs)


def test_runtime_breakdown_adds_up(tmp_path, tiny_study):
    out = tmp_path / "runs.jsonl"
    assert study.main(["runtime", "--in-process", "--patterns", "unstructured", "--seeds", "0", "--out", str(out),
                       "--no-progress"], loader=tiny_study) == 0
    runs = {r["method"]: r for r in study.read_records(out) if r["method"] != "dense"}
    assert set(runs) == {"thanos", "sparsegpt", "wanda", "magnitude"}
    for method, r in runs.items():
        steps = r["steps"]
        assert steps["prune_linear"] <= r["seconds"]
        inside = sum(v for k, v in steps.items() if k not in study.StepTimer.PIPELINE + ("GEMMs and rest of the solver",))
        assert inside <= steps["prune_linear"] + 1e-3  # the solver's steps happen inside prune_linear
        assert r["max_rss_mib"] > 0
    assert "factorisation" in runs["thanos"]["steps"] and "per-row solves" in runs["thanos"]["steps"]
    assert "accumulate_hessians" not in runs["magnitude"]["steps"]  # no calibration for magnitude


def test_runtime_rows_follow_pattern_then_method_whatever_the_recording_order():
    def run(method, pattern, sparsity):
        return {"study": "runtime", "method": method, "pattern": pattern, "sparsity": sparsity, "seed": 0,
                "seconds": 1.0, "steps": {"prune_linear": 1.0}, "max_rss_mib": 1.0}
    order = [(m, p, sp) for p, sp in (("unstructured", 0.5), ("2:4", None), ("4:8", None), ("structured", 0.3))
             for m in ("thanos", "sparsegpt", "wanda", "magnitude")]
    shuffled = [order[i] for i in (13, 2, 7, 0, 15, 9, 4, 11, 1, 14, 6, 3, 10, 5, 12, 8)]
    assert shuffled != order and sorted(shuffled, key=order.index) == order  # a true shuffle of the grid
    records = [run(*o) for o in shuffled] + [{"study": "runtime", "method": "dense"}]  # no steps: not a row
    assert [(r["method"], r["pattern"], r["sparsity"]) for r in study.runtime_runs(records)] == order
    rows = [line for line in study.report_runtime(records)[2:] if line]
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows] == [
        (m, study._pattern_label(p, sp)) for m, p, sp in order]


def test_study_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        study.parse_args(["blocksize", "--patterns", "3:4"])
    with pytest.raises(SystemExit):
        study.parse_args(["blocksize", "--texts", "news"])
    with pytest.raises(SystemExit):
        study.parse_args(["blocksize", "--seeds", "a,b"])
    for option, bad in (("--alphas", "1.0"), ("--alphas", "x"), ("--calibration-windows", "0"),
                        ("--calibration-windows", "2.5"), ("--block-sizes", "-1"), ("--only-sparsities", "1.0"),
                        ("--only-alphas", "1.0"), ("--only-alphas", "-0.1"), ("--only-block-sizes", "-1"),
                        ("--only-block-sizes", "x"), ("--only-metric", "hessian")):
        with pytest.raises(SystemExit):
            study.parse_args(["alpha", option, bad])
        assert option in capsys.readouterr().err  # the error names the option


def test_beats_needs_the_difference_above_the_noise():
    assert study.beats([10.0, 10.1, 9.9], [12.0, 12.1, 11.9]).startswith("yes")
    assert study.beats([10.0, 11.0, 9.0], [10.5, 11.5, 9.5]).startswith("within noise")
    assert study.beats([12.0, 12.1, 11.9], [10.0, 10.1, 9.9]).startswith("worse")
    assert study.beats([10.0], [12.0]).startswith("n/a")
    # two seeds: the numbers, but no verdict, however large the gap (MIN_VERDICT_SEEDS)
    two = study.compare([10.0, 10.1], [20.0, 20.1])
    assert two.verdict == study.TOO_FEW_SEEDS and two.difference == pytest.approx(-10.0)
    assert study.beats([10.0, 10.1], [20.0, 20.1]).startswith(study.TOO_FEW_SEEDS)
    assert study.compare([10.0, 10.1, 9.9], [20.0, 20.1, 19.9]).verdict == "yes"
    c = study.compare([10.0, 10.1, 9.9], [12.0, 12.2, 11.8])  # Thanos - SparseGPT: negative when Thanos is lower
    assert c.difference == pytest.approx(-2.0) and c.paired_mean == pytest.approx(-2.0) and c.noise == pytest.approx(0.2)
    assert json.loads(study.Config("blocksize", "thanos", "2:4", None).key(0, "quick"))[-1] == 0


def test_two_seeds_pin_the_noise_down_too_loosely_for_a_verdict():
    """MIN_VERDICT_SEEDS' reason: the noise is a std over n seeds, and s^2 / sigma^2 follows
    chi^2(n - 1) / (n - 1), so the 90 % interval of sigma given s spans a factor of
    sqrt(chi2.ppf(0.95, n - 1) / chi2.ppf(0.05, n - 1)): about 31 at two seeds, under 8 at three."""
    from scipy import stats

    def span(n):
        return math.sqrt(stats.chi2.ppf(0.95, n - 1) / stats.chi2.ppf(0.05, n - 1))

    assert span(study.MIN_VERDICT_SEEDS - 1) > 30 and span(study.MIN_VERDICT_SEEDS) < 8


def test_paired_t_test_matches_the_closed_form_at_two_degrees_of_freedom():
    """Differences -1, -2, -3: t = mean / (s / sqrt(n)) = -2 / (1 / sqrt(3)) = -sqrt(12), and with two
    degrees of freedom the t distribution's CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
    p = 1 - sqrt(12) / sqrt(14)."""
    p = study.paired_t_test([10.0, 10.0, 10.0], [11.0, 12.0, 13.0])
    assert p == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert study.compare([10.0, 10.0, 10.0], [11.0, 12.0, 13.0]).paired_p == p
    assert math.isnan(study.paired_t_test([1.0, 2.0], [2.0, 3.0]))  # no spread in the differences
    d = [10.0 - 20.0, 10.1 - 20.1]
    assert d[0] != d[1]  # a spread in the last bit only: rounding, no spread either (and no SciPy warning)
    assert math.isnan(study.paired_t_test([10.0, 10.1], [20.0, 20.1]))


def test_paired_runs_line_up_by_seed_when_a_text_is_missing_on_one_side():
    a = [dict(seed=0, perplexity={"wiki": 1.0}), dict(seed=1, perplexity={"wiki": 2.0, "code": 5.0})]
    b = [dict(seed=1, perplexity={"wiki": 3.0, "code": 6.0}), dict(seed=0, perplexity={"wiki": 4.0, "code": 7.0})]
    assert study._paired(a, b, "wiki") == ([1.0, 2.0], [4.0, 3.0])
    assert study._paired(a, b, "code") == ([5.0], [6.0])


def _saved_tiny_model(tmp_path, layers):
    """A tiny LLaMA saved as a model folder, and a calibration text file from the C4 sample, for
    ``thanos prune`` runs: (folder, text, model, tokenizer)."""
    from thanos import data

    model, tokenizer = tiny_model("llama", seed=3, layers=layers)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(data.read_text(data.default_calibration_path())[:20000])
    return folder, text, model, tokenizer


def test_cli_prune_with_owl_reaches_prune_model(tmp_path):
    """``thanos prune --layer-sparsity owl``: blocks pruned at different sparsities averaging --sparsity."""
    from thanos import cli

    folder, text, _, _ = _saved_tiny_model(tmp_path, layers=3)
    out = tmp_path / "out"
    rc = cli.main(["prune", "--model", str(folder), "--calibration", str(text), "--nsamples", "4", "--seqlen", "32",
                   "--block-size", "16", "--layer-sparsity", "owl", "--owl-spread", "0.1", "--no-eval", "--out", str(out),
                   "--no-progress", "--quiet"])
    assert rc == 0
    layers = json.loads((out / "report.json").read_text())["layers"]
    per_block = {}
    for layer in layers:
        per_block.setdefault(layer["block"], []).append(layer["pruned"] / layer["numel"])
    block_means = [sum(v) / len(v) for _, v in sorted(per_block.items())]
    assert max(block_means) - min(block_means) > 0.05
    assert abs(sum(block_means) / len(block_means) - 0.5) < 0.01  # each layer rounds its count down


def test_cli_prune_with_metric_reaches_prune_model_and_the_report(tmp_path):
    """``thanos prune --metric sparsegpt``: the report says which score ranked the weights, and the
    pruned weights are what ``prune_model(metric="sparsegpt")`` gives (not psi's)."""
    from thanos import cli, data
    from thanos.model import prune_model

    folder, text, model, tokenizer = _saved_tiny_model(tmp_path, layers=2)
    common = ["--model", str(folder), "--calibration", str(text), "--nsamples", "4", "--seqlen", "32", "--pattern", "2:4",
              "--block-size", "16", "--no-eval", "--no-progress", "--quiet"]
    outs = {m: tmp_path / f"out-{m}" for m in ("psi", "sparsegpt")}
    for metric, out in outs.items():
        assert cli.main(["prune", *common, "--metric", metric, "--out", str(out)]) == 0
    report = json.loads((outs["sparsegpt"] / "report.json").read_text())
    assert report["config"]["metric"] == "sparsegpt"
    pruned = {m: type(model).from_pretrained(out) for m, out in outs.items()}
    name = "model.layers.0.mlp.down_proj.weight"
    masks = {m: p.state_dict()[name] == 0 for m, p in pruned.items()}
    assert not torch.equal(masks["psi"], masks["sparsegpt"])  # the option changed the mask
    direct = type(model).from_pretrained(folder)
    windows = data.calibration_windows(tokenizer, text, nsamples=4, seqlen=32, seed=0)
    prune_model(direct, windows, pattern="2:4", block_size=16, metric="sparsegpt")
    # the same code on the same inputs in one process: the same model, bit for bit
    assert torch.equal(direct.state_dict()[name], pruned["sparsegpt"].state_dict()[name])


def test_alphas_are_ranked_by_the_block_size_rule():
    """The alpha study's table of structured Thanos by alpha ("The default alpha") is the block-size
    table over alpha: values in numeric order (0 before 0.05), labelled as given, the percent above
    each text's best alpha and its mean over the texts. wiki: 0.1 is the best (110) and 0.2 is
    100 * (121 / 110 - 1) = 10 % above it; code: 0.2 is the best (40) and 0.1 is 25 % above (50),
    so the means are 12.5 % for 0.1 and 5 % for 0.2."""
    def runs(wiki, code, seeds=(0, 1)):
        return [dict(seed=s, perplexity={"wiki": wiki, "code": code}) for s in seeds]

    by_alpha = {0.2: runs(121.0, 40.0), 0.0: runs(130.0, 80.0), 0.1: runs(110.0, 50.0)}
    lines = study._against_best_b(by_alpha, ["wiki", "code"], study.ALPHA_AXIS)
    assert lines[0].startswith("Thanos by alpha, mean over seeds 0, 1 (which every alpha here ran)")
    rows = [line for line in lines if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 0.1", "| 0.2"]
    assert rows[1] == "| 0.1 | 0.0 | 25.0 | 12.5 | no |" and rows[2] == "| 0.2 | 10.0 | 0.0 | 5.0 | no |"


def test_block_sizes_are_compared_at_the_seeds_they_share():
    """B = 128 ran seed 0, 1024 seeds 0-1, 256 seeds 0-2, 512 seeds 0-4: one table over seed 0
    (all four B), one over seeds 0-1 (1024, 256, 512), one over seeds 0-2 (256 and 512), never a
    mean over seeds one of the compared B's lacks, and a B with fewer seeds never shrinks the
    table of those with more."""
    def runs(b, seeds):
        return [dict(seed=s, perplexity={"wiki": 100.0 + b / 128 + s}) for s in seeds]

    by_b = {128: runs(128, [0]), 256: runs(256, [0, 1, 2]), 512: runs(512, [0, 1, 2, 3, 4]), 1024: runs(1024, [0, 1])}
    lines = study._against_best_b(by_b, ["wiki"])
    titles = [line for line in lines if line.startswith("Thanos by B")]
    assert [t.split(" (")[0] for t in titles] == ["Thanos by B, mean over seed 0", "Thanos by B, mean over seeds 0, 1",
                                                   "Thanos by B, mean over seeds 0, 1, 2"]

    def rows(title):
        table = lines[lines.index(title) + 2:]
        return [row.split(" | ")[0] for row in table[2:table.index("")]]
    assert [rows(t) for t in titles] == [["| 128", "| 256", "| 512", "| 1024"], ["| 256", "| 512", "| 1024"],
                                         ["| 256", "| 512"]]
    third = lines[lines.index(titles[2]):]
    # seeds 0-2: 256 has mean 103, 512 has 105, so 512 is 100 * (105 / 103 - 1) % above the best
    assert f"| 512 | {100 * (105 / 103 - 1):.1f} |" in "\n".join(third)


def test_report_rows_sort_numbers_by_value():
    assert sorted([("thanos", "4:8", 128), ("thanos", "4:8", 32), ("thanos", "2:4", 64)], key=study._sort_key) == [
        ("thanos", "2:4", 64), ("thanos", "4:8", 32), ("thanos", "4:8", 128)]
    assert sorted([(None,), (0.5,), (0.3,)], key=study._sort_key) == [(0.3,), (0.5,), (None,)]


def test_cpu_name_reads_the_model_name_else_falls_back(tmp_path):
    """Records name the processor (BLAS kernels, hence the last bits of a result, depend on it)."""
    from benchmarks import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\n"
                    "model name\t: AMD EPYC 7B13\n")
    assert cpu_name(str(info)) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")  # no model name line (some ARM and VM kernels)
    fallback = cpu_name(str(info))
    assert fallback and fallback == cpu_name(str(tmp_path / "missing"))


def test_defaults_table_pairs_sparsegpt_with_thanos_at_the_library_default(tmp_path, tiny_study):
    """``block_size=None`` at 2:4 is the whole layer on the studies' model (every input at most
    ``MODEL_MAX_INPUT_WIDTH`` wide), so the defaults table takes Thanos' whole-layer runs there, not
    the B = 512 runs the other studies make; at the other patterns both are the fixed B."""
    assert study.library_block_size("thanos", "2:4") == study.WHOLE != study.study_block_size("thanos", "2:4")
    for pattern in ("unstructured", "4:8", "structured"):
        assert study.library_block_size("thanos", pattern) == study.study_block_size("thanos", pattern) > 0
    assert study.library_block_size("sparsegpt", "2:4") == study.study_block_size("sparsegpt", "2:4") == 128
    out = tmp_path / "runs.jsonl"
    assert study.main(["blocksize", "--patterns", "2:4", "--seeds", "0,1", "--block-sizes",
                       f"{study.study_block_size('thanos', '2:4')},0", "--out", str(out), "--no-progress"],
                      loader=tiny_study) == 0
    records = study.newest_records(study.read_records(out), "quick")
    assert {r["block_size"] for r in records if r["method"] == "thanos"} == {512, study.WHOLE}
    [(pattern, n, thanos_runs, sparsegpt_runs)] = study.defaults_pairs(records, TINY)
    assert (pattern, n) == ("2:4", TINY.nsamples)
    assert sorted((r["block_size"], r["seed"]) for r in thanos_runs) == [(study.WHOLE, 0), (study.WHOLE, 1)]
    assert sorted((r["block_size"], r["seed"]) for r in sparsegpt_runs) == [(128, 0), (128, 1)]
    [row] = [line for line in study.report_defaults(records, ["wiki"], TINY) if "2:4" in line]
    assert row.split(" | ")[1] == "whole"


def _record(method, pattern, seed, perplexity, *, block_size=None, alpha=0.0, seconds=100.0,
            nsamples=study.SIZES["full"].nsamples):
    """A recorded run as ``run_study`` writes one, for the report functions: psi, uniform, the
    pattern's standard sparsity, at the library's default B unless given."""
    b = study.library_block_size(method, pattern) if block_size is None else block_size
    return dict(study="blocksize", method=method, pattern=pattern, sparsity=study.PATTERN_SPARSITY[pattern],
                block_size=b, alpha=alpha, metric="psi", layer_sparsity="uniform", nsamples=nsamples, seed=seed,
                perplexity=perplexity, seconds=seconds)


def test_glance_table_states_the_target_per_pattern_with_the_noise_in_percent():
    """The glance is the defaults table and the best-B (alpha) tables boiled down, derived by hand
    here. 50 %, wiki: Thanos 10, 11, 12 (mean 11, std 1) against SparseGPT 12.5, 13, 13.5 (mean 13,
    std 0.5): -2 = -15.4 % of 13, noise max(1, 0.5) = 1 = 7.7 %: ahead. code: 20, 21, 22 against
    20.5, 21.5, 22.5: -0.5 = -2.3 % of 21.5, noise 1 = 4.7 %: within. B = 64 has wiki 10.45 and code
    20 at every seed, so the default 128 is 100 (11 / 10.45 - 1) = 5.3 % above the best on wiki and
    100 (21 / 20 - 1) = 5.0 % on code: mean 5.1 %. Structured: only alpha (no B), seed 0 and 1 of
    alpha 0.2 and seed 0 of alpha 0.1 shared: one seed, ranked over seed 0 only; two seeds of the
    pair: numbers, no verdict."""
    full = study.SIZES["full"]

    def run(method, pattern, seed, wiki, code, **settings):
        return _record(method, pattern, seed, {"wiki": wiki, "code": code}, **settings)

    records = [run("thanos", "unstructured", s, 10.0 + s, 20.0 + s, seconds=30.0) for s in range(3)]
    records += [run("sparsegpt", "unstructured", s, 12.5 + s / 2, 20.5 + s, seconds=40.0) for s in range(3)]
    records += [run("thanos", "unstructured", s, 10.45, 20.0, block_size=64) for s in range(3)]
    records += [run("thanos", "unstructured", 0, 30.0, 30.0, nsamples=16), run("sparsegpt", "unstructured", 0, 40.0, 40.0,
                                                                                nsamples=16)]  # another size: not here
    alpha = study.spec.default_alpha("thanos", "structured")
    records += [run("thanos", "structured", s, 100.0 + s, 50.0, alpha=alpha) for s in (0, 1)]
    records += [run("thanos", "structured", 0, 90.0, 60.0, alpha=0.1)]
    records += [run("sparsegpt", "structured", s, 120.0, 50.0 + 2 * s) for s in (0, 1)]
    lines = study.report_glance(records, ["wiki", "code"], full)
    rows = [line.split(" | ") for line in lines if line.startswith("| 50%") or line.startswith("| structured")]
    assert len(rows) == 2
    fifty, structured = rows
    assert fifty[1:4] == ["B 128", "3", f"{-200 / 13:+.1f} % (noise {100 / 13:.1f} %): yes"]
    assert fifty[4] == f"{-50 / 21.5:+.1f} % (noise {100 / 21.5:.1f} %): within noise"
    assert fifty[5] == "1 of 2"
    mean = (100 * (11 / 10.45 - 1) + 100 * (21 / 20 - 1)) / 2
    assert fifty[6] == (f"{mean:.1f} mean (not within 1 %), {100 * (11 / 10.45 - 1):.1f} on wiki "
                        "(2 B values measured, seeds 0, 1, 2)")
    assert fifty[7] == "30 / 40 |"
    assert structured[1:3] == [f"no B, alpha {alpha:g}", "2"]
    assert structured[3] == f"{100 * (100.5 / 120 - 1):+.1f} % (noise {100 * 0.5 ** 0.5 / 120:.1f} %): {study.TOO_FEW_SEEDS}"
    assert structured[5] == "0 of 0"
    # over seed 0: wiki 100 against 0.1's 90 (11.1 % above), code 50 against 60 (the best): mean 5.6 %
    assert structured[6] == (f"{(100 * (100 / 90 - 1)) / 2:.1f} mean (not within 1 %), {100 * (100 / 90 - 1):.1f} on wiki "
                             "(2 alpha values measured, seed 0)")
    assert lines[-2] == "Cells where Thanos is ahead by more than the seed noise: 1 of 2."


def test_glance_prints_a_mean_that_rounds_to_one_percent_with_the_digits_that_place_it():
    """A default 1.0002 % above the best B on average is not within 1 %: the glance prints 1.0002,
    not 1.0 beside "not within". B = 64 is the best (100); 128 is 1.0002 % above it."""
    records = [_record("thanos", "unstructured", 0, {"wiki": 100.0}, block_size=64),
               _record("thanos", "unstructured", 0, {"wiki": 101.0002}, block_size=128),
               _record("sparsegpt", "unstructured", 0, {"wiki": 120.0})]
    [row] = [line for line in study.report_glance(records, ["wiki"], study.SIZES["full"]) if line.startswith("| 50%")]
    assert row.split(" | ")[5].startswith(f"{100 * (101.0002 / 100 - 1):.4f} mean (not within 1 %)")
    assert row.split(" | ")[5].startswith("1.0002 mean")
