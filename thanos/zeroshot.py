"""Zero-shot evaluation through lm-evaluation-harness (``pip install 'thanos[eval]'``), offline.

``thanos eval --tasks FILE_OR_FOLDER ...`` runs the tasks defined in local lm-evaluation-harness
YAML files on a (pruned) model. Nothing is fetched: every task's dataset must be a local file read
by one of the ``datasets`` builders that ship inside the package (``json``, ``csv``, ``parquet``,
``text``, ``arrow``) or a local dataset folder; ``data_files`` paths relative to the YAML file are
resolved against the YAML file's folder. The Hugging Face hub is switched off
(``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``) before ``datasets`` and ``lm_eval`` are imported.

The model is handed to lm-eval's ``HFLM`` as the loaded object (no hub name), with its tokenizer.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
SUFFIXES = (".yaml", ".yml")
# keys of lm-eval task configs that would pull in other configs or code from elsewhere
_UNSUPPORTED_KEYS = ("include", "group", "class", "custom_dataset")


def require_lm_eval():
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ValueError("zero-shot tasks need lm-evaluation-harness: pip install 'thanos[eval]' "
                         "(install torch first, so that the CPU build you have is kept)") from None
    return lm_eval


def task_files(paths: Sequence[Union[str, Path]]) -> list:
    """The YAML files named, or found (sorted) in the folders named; ValueError for a path that
    does not exist or gives no YAML file."""
    if not paths:
        raise ValueError("tasks: give at least one task YAML file or folder")
    files = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"tasks: the folder {path} holds no .yaml task file")
            files += found
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ValueError(f"tasks: {path} is not a .yaml task file")
            files.append(path)
        else:
            raise ValueError(f"tasks: {path} does not exist (tasks are read from local YAML files; no hub)")
    return files


def load_task_config(path: Union[str, Path]) -> dict:
    """One task config, checked to be local, with its data files made absolute."""
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"tasks: {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise ValueError(f"tasks: {path} must define one task (a mapping with a 'task' name)")
    for key in _UNSUPPORTED_KEYS:
        if key in config:
            raise ValueError(f"tasks: {path}: the key {key!r} is not supported here (one self-contained task per file)")
    source = config.get("dataset_path")
    kwargs = dict(config.get("dataset_kwargs") or {})
    if source in LOCAL_BUILDERS:
        data_files = kwargs.get("data_files")
        if not data_files:
            raise ValueError(f"tasks: {path}: dataset_path {source!r} needs dataset_kwargs.data_files (local files)")
        kwargs["data_files"] = _resolve_files(data_files, path.parent, path)
    elif isinstance(source, str) and (path.parent / source).is_dir():
        config["dataset_path"] = str((path.parent / source).resolve())
    elif isinstance(source, str) and Path(source).is_dir():
        config["dataset_path"] = str(Path(source).resolve())
    else:
        raise ValueError(f"tasks: {path}: dataset_path {source!r} is neither a local builder {LOCAL_BUILDERS} with "
                         f"data_files nor a local dataset folder; nothing is fetched from a hub")
    config["dataset_kwargs"] = kwargs
    return config


def _resolve_files(value, folder: Path, where: Path):
    if isinstance(value, dict):
        return {k: _resolve_files(v, folder, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_resolve_files(v, folder, where) for v in value]
    file = Path(value)
    if not file.is_absolute():
        file = folder / file
    if not file.is_file():
        raise ValueError(f"tasks: {where}: data file {value!r} not found (looked for {file})")
    return str(file.resolve())


def evaluate(model, tokenizer, tasks: Sequence[Union[str, Path]], *, device: Optional[str] = None, batch_size: int = 1,
             limit: Optional[int] = None, num_fewshot: Optional[int] = None, cache_dir: Optional[str] = None,
             return_loglikelihoods: bool = False) -> dict:
    """Run the tasks of the YAML files/folders ``tasks`` on ``model``: ``{"results": {task:
    {metric: value}}, "samples": {task: number of documents}, "versions": {...}}``. ``limit``
    caps the documents per task; ``cache_dir``: where ``datasets`` caches the loaded files.
    ``return_loglikelihoods``: also ``"loglikelihoods": {task: [[log p(choice | text) per choice]
    per document, in file order]}`` (multiple-choice and log-likelihood tasks)."""
    configs = [load_task_config(p) for p in task_files(tasks)]
    names = [c["task"] for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: the same task name is defined twice: {sorted(n for n in names if names.count(n) > 1)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    if cache_dir is not None:
        for c in configs:
            c["dataset_kwargs"]["cache_dir"] = str(cache_dir)
    require_lm_eval()
    import torch

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    device = str(device) if device is not None else str(next(model.parameters()).device)
    with warnings.catch_warnings():  # lm-eval and datasets warn about their own internals
        warnings.simplefilter("ignore")
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        # the tasks come as configs: no need to index the hundreds of built-in ones
        task_dict = get_task_dict(configs, TaskManager(include_defaults=False))
        if num_fewshot is not None:
            for task in task_dict.values():
                task.set_config(key="num_fewshot", value=num_fewshot)
        with torch.no_grad():
            out = evaluator.evaluate(lm=lm, task_dict=task_dict, limit=limit, log_samples=return_loglikelihoods)
    results = {name: {k.split(",")[0]: v for k, v in values.items() if k != "alias" and isinstance(v, (int, float))}
               for name, values in out["results"].items()}
    samples = {name: int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
               for name, n in out.get("n-samples", {}).items()}
    answer = {"results": results, "samples": samples, "versions": {k: str(v) for k, v in out.get("versions", {}).items()}}
    if return_loglikelihoods:
        answer["loglikelihoods"] = {
            name: [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(docs, key=lambda s: s["doc_id"])]
            for name, docs in out.get("samples", {}).items()}
    return answer
