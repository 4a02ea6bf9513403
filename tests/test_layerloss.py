"""``python -m benchmarks layerloss`` on a tiny model (seconds).

What must hold: a row for every pattern x Linear x B x Hessian; the losses under the calibration
Hessian are the solver's own layer losses of the same prunes (so the rows measure what they name);
the table's "% above the layer's best B" and its count of layers where a B is the lowest are
derived as stated; wrong arguments are refused with the
argument named, before anything is written.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a folder of the repository, not installed
from benchmarks import layerloss, study  # noqa: E402
import tolerances as T  # noqa: E402
import thanos  # noqa: E402
from thanos import data  # noqa: E402
from thanos.assets import tiny_model  # noqa: E402
from thanos.model import block_linears, decoder_layers  # noqa: E402
from thanos.verify import real_hessians  # noqa: E402

ARGS = ["--patterns", "2:4,unstructured", "--block-sizes", "16,0", "--blocks", "0,1", "--calibration-windows", "4",
        "--seqlen", "16", "--eval-windows", "2", "--texts", "wiki,code", "--no-progress"]


@pytest.fixture
def tiny(fake_study_texts):
    return lambda: tiny_model("llama", layers=2)


def test_rows_cover_the_grid_and_the_calibration_rows_are_the_solver_losses(tmp_path, tiny, capsys):
    out = tmp_path / "layerloss.json"
    assert layerloss.main(ARGS + ["--out", str(out)], loader=tiny) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    model, tokenizer = tiny()
    names = list(block_linears(decoder_layers(model)[0]))
    keys = {(r["pattern"], r["block"], r["name"], r["B"], r["hessian"]) for r in rows}
    assert len(keys) == len(rows) == 2 * 2 * len(names) * 2 * 3  # patterns x blocks x Linears x B x Hessians
    assert all(math.isfinite(r["loss"]) and r["loss"] >= 0 for r in rows)
    # the calibration Hessian, rebuilt here from the same draw, gives the solver's own loss of each prune
    calibration_tokens, _ = study.load_texts(tokenizer, ["wiki"], 2, 16)
    hessians = real_hessians(model, data.random_windows(calibration_tokens, 4, 16, 0), [0, 1], names)
    for r in (r for r in rows if r["hessian"] == layerloss.CALIBRATION):
        W, H = hessians[(r["block"], r["name"])]
        pruned = thanos.prune(W.float(), H.float(), method="thanos", pattern=r["pattern"],
                              sparsity=study.PATTERN_SPARSITY[r["pattern"]], block_size=r["B"] or W.shape[1], alpha=0.0)
        D = (pruned.weight.double() - W).numpy()
        # the solver sums in float32 from float32 weights, the benchmark in float64 from float64 ones:
        # rounding of b-term sums, on the scale of |D| |H| (|D| + |W|)
        scale = T.quadratic_form_scale(D, H.numpy()) + float(((abs(D) @ abs(H.numpy())) * abs(W.numpy())).sum())
        assert abs(r["loss"] - pruned.loss) <= T.rounding_tol(W.shape[1], "float32") * scale, r
    # the other Hessians are other data: the same prune's loss differs
    by_key = {(r["pattern"], r["block"], r["name"], r["B"], r["hessian"]): r["loss"] for r in rows}
    assert any(by_key[k[:4] + ("wiki",)] != v for k, v in by_key.items() if k[4] == layerloss.CALIBRATION)
    table = capsys.readouterr().out
    assert "**2:4**" in table and "**50% unstructured**" in table and "| calibration |" in table and "| code |" in table


def test_above_best_is_the_mean_over_layers_of_the_excess_over_each_layers_best():
    rows = [dict(pattern="2:4", hessian="wiki", block=0, name="a", B=16, loss=1.0),
            dict(pattern="2:4", hessian="wiki", block=0, name="a", B=0, loss=2.0),
            dict(pattern="2:4", hessian="wiki", block=1, name="a", B=16, loss=3.0),
            dict(pattern="2:4", hessian="wiki", block=1, name="a", B=0, loss=1.5)]
    # layer 0: B=16 is the best (0 %), the whole layer 100 % above; layer 1: B=16 100 % above, whole 0 %
    assert layerloss.above_best(rows) == {("2:4", "wiki"): {16: 50.0, 0: 50.0}}
    assert layerloss.lowest_in(rows) == {("2:4", "wiki"): {16: 1, 0: 1}}
    tie = rows + [dict(pattern="2:4", hessian="wiki", block=2, name="a", B=16, loss=1.0),
                  dict(pattern="2:4", hessian="wiki", block=2, name="a", B=0, loss=1.0)]
    assert layerloss.lowest_in(tie) == {("2:4", "wiki"): {16: 2, 0: 2}}  # a tie counts for both


@pytest.mark.parametrize("argv, message", [
    (["--patterns", "structured"], "--patterns"),
    (["--block-sizes", "-1"], "--block-sizes"),
    (["--texts", "novel"], "--texts"),
    (["--calibration-windows", "0"], "--calibration-windows"),
])
def test_wrong_arguments_are_refused_naming_the_argument(argv, message, capsys, tmp_path):
    out = tmp_path / "layerloss.json"
    with pytest.raises(SystemExit):
        layerloss.main(argv + ["--out", str(out)], loader=lambda: pytest.fail("loaded the model before checking"))
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_block_the_model_lacks_is_refused_before_any_hessian(tmp_path, tiny):
    out = tmp_path / "layerloss.json"
    with pytest.raises(SystemExit, match="--blocks: the model has 2 decoder blocks"):
        layerloss.main(ARGS[:4] + ["--blocks", "0,2"] + ARGS[6:] + ["--out", str(out)], loader=tiny)
    assert not out.exists()
