"""thanos.data: calibration windows, evaluation windows, text sources, perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch

from thanos import data
from thanos.assets import byte_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_default_texts_are_the_packaged_samples():
    assert data.default_calibration_path().name == "c4.utf8"
    assert data.default_eval_path().name == "wiki.utf8"
    assert data.default_calibration_path().stat().st_size > 1_000_000


def test_strip_doc_tags_removes_only_markup_lines():
    text = '<doc id="1" url="u" title="T">\nT\n\nBody <doc> inline.\n</doc>\n<doc id="2">\nNext\n</doc>\n'
    assert data.strip_doc_tags(text) == "T\n\nBody <doc> inline.\nNext\n"


def test_default_eval_text_has_no_doc_lines():
    text = data.read_text(data.default_eval_path(), strip_docs=True)
    assert "<doc id=" not in text and "</doc>" not in text
    assert len(text) > 1_000_000


def test_calibration_windows_are_seeded_slices_of_the_text(tokenizer, tmp_path):
    source = tmp_path / "cal.txt"
    source.write_text("abcdefghijklmnopqrstuvwxyz" * 40)
    tokens = data.calibration_tokens(tokenizer, source)
    a = data.calibration_windows(tokenizer, source, nsamples=6, seqlen=17, seed=3)
    b = data.calibration_windows(tokenizer, source, nsamples=6, seqlen=17, seed=3)
    c = data.calibration_windows(tokenizer, source, nsamples=6, seqlen=17, seed=4)
    assert a.shape == (6, 17) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    joined = tokens.tolist()
    for row in a.tolist():  # every window is a contiguous slice of the token stream
        assert any(joined[s : s + 17] == row for s in range(len(joined) - 16))


def test_too_little_text_names_needed_and_found(tokenizer, tmp_path):
    source = tmp_path / "short.txt"
    source.write_text("tiny")  # 4 byte tokens
    with pytest.raises(ValueError, match=r"need at least 10 tokens, found 4"):
        data.calibration_windows(tokenizer, source, nsamples=2, seqlen=10)
    with pytest.raises(ValueError, match=r"needs 10 tokens, found 4"):
        data.eval_windows(data.eval_tokens(tokenizer, source), 10)


def test_eval_windows_are_non_overlapping_and_capped():
    tokens = torch.arange(103)
    w = data.eval_windows(tokens, 10)
    assert w.shape == (10, 10) and torch.equal(w.flatten(), torch.arange(100))
    assert data.eval_windows(tokens, 10, max_windows=3).shape == (3, 10)
    assert data.eval_windows(tokens, 10, max_windows=50).shape == (10, 10)
    with pytest.raises(ValueError, match="max_windows"):
        data.eval_windows(tokens, 10, max_windows=0)


def test_dataset_folder_with_txt_json_jsonl(tmp_path):
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "b.jsonl").write_text(json.dumps({"text": "beta", "id": 1}) + "\n" + json.dumps({"text": "gamma"}) + "\n")
    (folder / "sub" / "c.json").write_text(json.dumps([{"text": "delta"}, {"text": "epsilon"}]))
    (folder / "dataset_info.json").write_text(json.dumps({"description": "not text"}))
    assert data.read_text(folder) == "alpha\n\nbeta\n\ngamma\n\ndelta\n\nepsilon"


def test_json_without_text_column_is_a_clear_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"content": "no"}) + "\n")
    with pytest.raises(ValueError, match="record 0 has no 'text' field"):
        data.read_text(path)
    with pytest.raises(ValueError, match="no .txt"):
        (tmp_path / "empty").mkdir()
        data.read_text(tmp_path / "empty")


def test_parquet_folder(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    import pyarrow as pa

    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"text": ["one", "two"]}), tmp_path / "ds" / "train.parquet")
    assert data.read_text(tmp_path / "ds") == "one\n\ntwo"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        data.read_text(tmp_path / "nope.txt")


def test_perplexity_is_exp_mean_cross_entropy_over_all_predicted_tokens():
    model, tok = tiny_model("llama", seed=1)
    windows = torch.randint(0, len(tok), (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    result = data.perplexity(model, windows, batch_size=2)
    assert result.tokens == 3 * 8 and result.windows == 3
    # float32 logits and a mean over 24 tokens in batches of 2 vs all at once: the cross-entropy
    # differs by ~24 eps32 ~ 3e-6 of its size, and exp passes that relative error through
    assert result.value == pytest.approx(math.exp(float(nll)), rel=1e-5)


# ------------------------------------------------------------------ distinct windows, UTF-8 (issue 7)


def test_text_that_cannot_give_distinct_windows_is_refused(tokenizer, tmp_path):
    """43 bytes give 43 - 32 + 1 = 12 distinct windows of 32 tokens: 128 are refused, not drawn
    with replacement; the message says what the text allows."""
    source = tmp_path / "short.txt"
    source.write_bytes(b"The quick brown fox jumps over the lazy dog")  # 43 bytes = 43 byte tokens
    tokens = data.calibration_tokens(tokenizer, source)
    assert tokens.numel() == 43
    with pytest.raises(ValueError, match=r"43 tokens give only 12 distinct windows of seqlen=32 tokens, fewer than nsamples=128"):
        data.calibration_windows(tokenizer, source, nsamples=128, seqlen=32)
    windows = data.calibration_windows(tokenizer, source, nsamples=12, seqlen=32)  # exactly what it allows
    assert len({tuple(w) for w in windows.tolist()}) == 12


@pytest.mark.parametrize("positions,nsamples", [(1, 1), (12, 12), (100, 60), (1000, 128), (300, 150), (10**6, 200)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_window_starts_are_distinct_in_range_and_seeded(positions, nsamples, seed):
    starts = data.distinct_starts(positions, nsamples, torch.Generator().manual_seed(seed))
    again = data.distinct_starts(positions, nsamples, torch.Generator().manual_seed(seed))
    assert starts == again  # the same code and seed twice: identical by construction
    assert len(starts) == nsamples and len(set(starts)) == nsamples
    assert all(0 <= s < positions for s in starts)


def test_a_draw_without_repeats_keeps_the_previous_windows():
    """Where the old with-replacement draw had no repeat, the windows are unchanged (recorded
    results that used them stay valid); this seed's 128 draws from 300 000 have none."""
    positions, nsamples = 300_000, 128
    previous = torch.randint(0, positions, (nsamples,), generator=torch.Generator().manual_seed(0)).tolist()
    assert len(set(previous)) == nsamples
    assert data.distinct_starts(positions, nsamples, torch.Generator().manual_seed(0)) == previous


def test_repeats_are_redrawn():
    """A seed whose first draw repeats a position (found by search here, 20 of 40 positions): the
    repeats are replaced, the first occurrences kept."""
    positions, nsamples = 40, 20
    for seed in range(100):
        first = torch.randint(0, positions, (nsamples,), generator=torch.Generator().manual_seed(seed)).tolist()
        if len(set(first)) < nsamples:
            break
    else:
        pytest.fail("no seed with a repeated position in 100 tries")
    starts = data.distinct_starts(positions, nsamples - 1, torch.Generator().manual_seed(seed))  # 19 < 20: rejection path
    first = first[: nsamples - 1]
    kept = {}
    for i, s in enumerate(first):
        kept.setdefault(s, i)
    assert all(starts[i] == s for s, i in kept.items())
    assert len(set(starts)) == nsamples - 1


def test_non_utf8_text_names_the_file(tokenizer, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))  # 0xe9 at offset 3
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3"):
        data.read_text(path)
    with pytest.raises(ValueError, match=r"^--calibration .*latin1\.txt: .*not UTF-8 text"):
        data.check_text_source(path, "--calibration")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"^--eval .*ds: .*a\.jsonl: not UTF-8 text \(byte 0xff at offset 25"):
        data.check_text_source(folder, "--eval")


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 1 << 20])
def test_utf8_check_reads_in_chunks_and_reports_the_offset(tmp_path, chunk):
    path = tmp_path / "t.txt"
    good = "\u00e9\u4e2d\U0001f600 ok ".encode("utf-8")  # 2-, 3- and 4-byte characters, split by small chunks
    path.write_bytes(good)
    data.check_utf8(path, chunk=chunk)
    path.write_bytes(good + b"\xc3(" + good)  # a lead byte followed by a non-continuation byte
    with pytest.raises(ValueError, match=rf"byte 0xc3 at offset {len(good)}"):
        data.check_utf8(path, chunk=chunk)
    path.write_bytes(good + b"\xe4\xb8")  # truncated at the end of the file
    with pytest.raises(ValueError, match=rf"byte 0xe4 at offset {len(good)}"):
        data.check_utf8(path, chunk=chunk)
