"""``prune_model``: prune every ``nn.Linear`` in the decoder blocks of a Hugging Face causal LM.

The SparseGPT/Wanda pipeline, block by block (DESIGN.md, "Model level"):

1. run the calibration windows through the model up to the first decoder block and keep what
   enters it: the hidden states and every keyword the block is called with (attention mask,
   ``position_ids``, LLaMA's ``position_embeddings`` from the rotary embedding, ...);
2. for each block in turn, on the compute device: run it on its inputs with a forward hook on
   each ``nn.Linear`` that streams the layer's input into a ``HessianAccumulator``; prune every
   Linear with ``thanos.prune``; run the pruned block again, and its outputs become the next
   block's inputs. The block then goes back where it was.

Embeddings, final norm and LM head are left dense. Magnitude pruning needs no calibration data.
Works for the LLaMA family (SmolLM2, TinyLlama, Llama-2/3) and OPT, and for any model whose
decoder blocks sit in one ``nn.ModuleList`` of ``config.num_hidden_layers`` entries and are
called with the same keywords (models that give each block a different attention mask, such as
sliding-window/global alternation, are not supported).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from reference import spec

# keywords a decoder block must not receive during the pipeline: no KV cache is built
_CACHE_KEYWORDS = ("cache", "past_key_value", "past_key_values", "layer_past")


@dataclass
class LayerResult:
    """One pruned ``nn.Linear``: ``name`` is its path in the model, ``shape`` (out, in)."""

    name: str
    block: int
    shape: tuple
    pruned: int
    numel: int
    sparsity: float
    loss: Optional[float]
    damping: Optional[float]
    outlier_rows: int
    seconds: float
    tokens: int


@dataclass
class ModelPruneResult:
    """What ``prune_model`` returns: the settings, one ``LayerResult`` per Linear (in pruning
    order), and the overall sparsity of the pruned Linears."""

    method: str
    pattern: str
    sparsity: Optional[float]
    alpha: float
    block_size: int
    percdamp: float
    device: str
    calibration_windows: int
    calibration_seqlen: int
    blocks: int
    seconds: float = 0.0
    layers: list = field(default_factory=list)

    @property
    def achieved_sparsity(self) -> float:
        numel = sum(layer.numel for layer in self.layers)
        return sum(layer.pruned for layer in self.layers) / numel if numel else 0.0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["achieved_sparsity"] = self.achieved_sparsity
        out["layers"] = [dict(asdict(layer), shape=list(layer.shape)) for layer in self.layers]
        return out

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")


class _StopForward(Exception):
    """Raised by the catcher once the first block's inputs are captured."""


class _Catcher(nn.Module):
    """Stands in for decoder block 0: records what the model feeds it, then stops the forward."""

    def __init__(self):
        super().__init__()
        self.inputs: list = []
        self.kwargs: list = []

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise TypeError("decoder block called with extra positional arguments; pass them as keywords")
        self.inputs.append(hidden_states.detach())
        self.kwargs.append(_block_kwargs(kwargs))
        raise _StopForward


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value


def _block_kwargs(kwargs: dict) -> dict:
    kept = {k: _detach(v) for k, v in kwargs.items() if k not in _CACHE_KEYWORDS}
    if "use_cache" in kept:
        kept["use_cache"] = False
    if "output_attentions" in kept:
        kept["output_attentions"] = False
    return kept


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of decoder blocks: ``model.model.layers`` (LLaMA family),
    ``model.model.decoder.layers`` (OPT), or the one ModuleList of ``num_hidden_layers`` blocks."""
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and count is not None and len(m) == count]
    if len(lists) == 1:
        return lists[0]
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: expected model.layers or model.decoder.layers")


def block_linears(block: nn.Module) -> dict:
    """The ``nn.Linear`` layers of one decoder block, by name inside the block, in module order."""
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def _layers_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is layers:
            return name
    return "layers"


def check_model_arguments(model: nn.Module, *, method, pattern, sparsity, block_size, alpha, percdamp) -> spec.Options:
    """Validate the pruning arguments against every Linear of every block before any work
    (``reference.spec.check_arguments``: the same messages as ``thanos.prune``)."""
    layers = decoder_layers(model)
    options = None
    for i, block in enumerate(layers):
        linears = block_linears(block)
        if not linears:
            raise ValueError(f"decoder block {i} of {type(model).__name__} has no nn.Linear layers to prune")
        for name, linear in linears.items():
            c, b = linear.weight.shape
            try:
                opts = spec.check_arguments((c, b), None if method == "magnitude" else (b, b), method=method, pattern=pattern,
                                            sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp)
            except ValueError as err:
                raise ValueError(f"layer {i}.{name} of shape ({c}, {b}): {err}") from None
            options = options or opts
    return options


@contextlib.contextmanager
def _layers_swapped_out(layers: nn.ModuleList, first: nn.Module):
    """Put ``first`` in place of block 0 and identities in place of the others, so that moving the
    model moves only its embeddings, norms and head; restore the blocks on exit."""
    saved = list(layers)
    try:
        layers[0] = first
        for i in range(1, len(saved)):
            layers[i] = nn.Identity()
        yield
    finally:
        for i, block in enumerate(saved):
            layers[i] = block


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _output_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def _capture_first_inputs(model, layers, calibration: torch.Tensor, device, batch_size: int):
    """Run the calibration windows up to block 0; return (inputs, kwargs) per batch, on ``device``."""
    catcher = _Catcher()
    home = _model_device(model)
    with _layers_swapped_out(layers, catcher):
        model.to(device)
        try:
            for s in range(0, calibration.shape[0], batch_size):
                ids = calibration[s : s + batch_size].to(device)
                try:
                    model(input_ids=ids, use_cache=False)
                except _StopForward:
                    pass
                else:
                    raise RuntimeError("the model never called its first decoder block")
        finally:
            model.to(home)
    return catcher.inputs, catcher.kwargs


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _SharedInputs:
    """Linears fed the very same input tensor (q/k/v of attention, gate/up of a SwiGLU MLP) share one
    Hessian: within a forward, the first linear to see a tensor accumulates it and the others
    record that linear as the ``owner`` of their H. The tensors seen are held until the next
    forward, so the allocator cannot hand their memory to another input of the same shape and
    make two different inputs look the same."""

    def __init__(self):
        self.owner: dict = {}
        self._first: dict = {}

    def new_forward(self) -> None:
        self._first.clear()

    def hook(self, name: str, accumulators: dict):
        def record(_module, args, _output):
            x = args[0]
            key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
            first, _ = self._first.setdefault(key, (name, x))
            if self.owner.setdefault(name, first) != first:
                raise RuntimeError(f"{name} shared its input with {self.owner[name]} in one batch and {first} in another")
            if first == name:
                accumulators[name].update(x.detach())

        return record


def prune_model(
    model: nn.Module,
    calibration: Optional[torch.Tensor] = None,
    *,
    method: str = "thanos",
    pattern: str = "unstructured",
    sparsity: Optional[float] = None,
    block_size: int = 128,
    alpha: float = 0.0,
    percdamp: float = 0.01,
    device: Union[str, torch.device, None] = None,
    compute_dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    progress: bool = False,
    report_path: Union[str, Path, None] = None,
    on_block: Optional[Callable[[int, nn.Module], Any]] = None,
) -> ModelPruneResult:
    """Prune every ``nn.Linear`` inside the decoder blocks of ``model`` in place, block by block.

    calibration: LongTensor (nsamples, seqlen) of token ids (``thanos.data.calibration_windows``);
    may be None for ``method="magnitude"`` only. method/pattern/sparsity/block_size/alpha/percdamp:
    as ``thanos.prune``; sparsity None means 0.5, or the N:M pattern's own n/m. device: where each block is computed
    (default: where the model lies); blocks go back where they were. batch_size: calibration
    windows per forward. progress: a tqdm bar over blocks. report_path: also write the result as
    JSON. on_block(i, block): called after block i is pruned (before its outputs are computed).
    Deterministic: the same model and calibration give the same pruned model.
    """
    import thanos
    from tqdm.auto import tqdm

    started = time.perf_counter()
    layers = decoder_layers(model)
    nm = spec.parse_pattern(pattern)[0] == "N:M"
    if sparsity is None and not nm:
        sparsity = 0.5
    check_model_arguments(model, method=method, pattern=pattern, sparsity=sparsity, block_size=block_size,
                          alpha=alpha, percdamp=percdamp)
    needs_data = method != "magnitude"
    if needs_data:
        if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.numel() == 0:
            raise ValueError(f"calibration must be a non-empty LongTensor (nsamples, seqlen) of token ids for method {method!r}")
        if calibration.dtype not in (torch.long, torch.int):
            raise ValueError(f"calibration must hold integer token ids, got dtype {calibration.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    prefix = _layers_prefix(model, layers)
    result = ModelPruneResult(
        method=method, pattern=pattern, sparsity=None if sparsity is None else float(sparsity), alpha=float(alpha),
        block_size=int(block_size), percdamp=float(percdamp), device=str(device),
        calibration_windows=int(calibration.shape[0]) if needs_data else 0,
        calibration_seqlen=int(calibration.shape[1]) if needs_data else 0, blocks=len(layers),
    )
    was_training = model.training
    model.eval()
    try:
        inputs, kwargs = _capture_first_inputs(model, layers, calibration, device, batch_size) if needs_data else ([], [])
        bar = tqdm(range(len(layers)), desc=f"{method} {pattern}", unit="block", disable=not progress)
        for i in bar:
            block = layers[i]
            home = next(block.parameters()).device
            block.to(device)
            linears = block_linears(block)
            accumulators, hooks = {}, []
            if needs_data:
                seen = _SharedInputs()
                for name, linear in linears.items():
                    accumulators[name] = thanos.HessianAccumulator(linear.in_features, device=device, dtype=torch.float32)
                    hooks.append(linear.register_forward_hook(seen.hook(name, accumulators)))
                try:
                    with torch.no_grad():
                        for x, kw in zip(inputs, kwargs):
                            seen.new_forward()
                            block(x, **kw)
                finally:
                    for hook in hooks:
                        hook.remove()
                accumulators = {name: accumulators[seen.owner.get(name, name)] for name in linears}
            for name, linear in linears.items():
                acc = accumulators.get(name)
                H = acc.hessian if acc is not None else None
                _synchronize(device)
                t0 = time.perf_counter()
                res = thanos.prune(linear.weight.data, H, method=method, pattern=pattern, sparsity=sparsity,
                                   block_size=block_size, alpha=alpha, percdamp=percdamp, compute_dtype=compute_dtype)
                linear.weight.data.copy_(res.weight)
                _synchronize(device)
                seconds = time.perf_counter() - t0
                pruned = int(res.mask.sum())
                result.layers.append(LayerResult(
                    name=f"{prefix}.{i}.{name}", block=i, shape=tuple(linear.weight.shape), pruned=pruned,
                    numel=linear.weight.numel(), sparsity=pruned / linear.weight.numel(),
                    loss=None if res.loss is None else float(res.loss),
                    damping=None if res.damping is None else float(res.damping),
                    outlier_rows=len(res.outlier_rows), seconds=seconds, tokens=int(acc.tokens) if acc is not None else 0,
                ))
                del H, res
            del accumulators
            if on_block is not None:
                on_block(i, block)
            if needs_data and i + 1 < len(layers):
                with torch.no_grad():
                    inputs = [_output_tensor(block(x, **kw)).detach() for x, kw in zip(inputs, kwargs)]
            block.to(home)
            bar.set_postfix(sparsity=f"{result.achieved_sparsity:.3f}")
        bar.close()
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - started
    if report_path is not None:
        result.save(report_path)
    return result
