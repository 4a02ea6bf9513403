"""``prune_model``: prune the ``nn.Linear`` layers in the decoder blocks of a Hugging Face causal LM.

The SparseGPT/Wanda pipeline, block by block (DESIGN.md, "Model level"), written as four stages
that each take their device (and the solver its options) explicitly:

1. ``capture_block_inputs``: run the calibration windows through the model up to the first
   decoder block and keep what enters it: the hidden states and every keyword the block is
   called with (attention mask, ``position_ids``, LLaMA's ``position_embeddings``, ...);
2. ``accumulate_hessians``: run a block on its inputs with a forward hook on each targeted
   ``nn.Linear`` that streams the layer's input into a ``thanos.HessianAccumulator`` (linears fed
   the same tensor share one; ``thanos verify`` uses this stage too);
3. ``prune_linears``: prune each targeted Linear with ``thanos.prune``;
4. ``forward_block``: run the pruned block again; its outputs become the next block's inputs.

Only the block being worked on is on the compute device (``thanos.offload.onloaded``): a model
loaded with an Accelerate ``device_map`` (CPU or disk offload) has the block's weights brought in
from where they live and the pruned ones written back there. Under ``torch.distributed``
(``thanos.distributed``) the calibration batches are split across ranks and the linears of each
block are pruned in parallel; the result is bit-identical to one process.

Embeddings, final norm and LM head are left dense. Magnitude pruning needs no calibration data.
Works for the LLaMA family (SmolLM2, TinyLlama, Llama-2/3) and OPT, and for any model whose
decoder blocks sit in one ``nn.ModuleList`` of ``config.num_hidden_layers`` entries and are
called with the same keywords (models that give each block a different attention mask, such as
sliding-window/global alternation, are not supported).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from reference import spec

# keywords a decoder block must not receive during the pipeline: no KV cache is built
_CACHE_KEYWORDS = ("cache", "past_key_value", "past_key_values", "layer_past")


@dataclass
class LayerResult:
    """One pruned ``nn.Linear``: ``name`` is its path in the model, ``shape`` (out, in);
    ``block_size``: the B it was pruned with (the argument, or the default for its width,
    ``thanos.default_block_size``), None where B plays no role (Wanda, magnitude, structured Thanos)."""

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
    rank: int = 0
    block_size: Optional[int] = None


@dataclass
class ModelPruneResult:
    """What ``prune_model`` returns: the settings, one ``LayerResult`` per Linear (in pruning
    order), and the overall sparsity of the pruned Linears. ``masks`` (with ``keep_masks``) maps
    each pruned Linear's full name to its boolean mask (True = pruned) on the CPU; it is not part
    of ``as_dict``. ``block_size``: the argument; None (the default) lets each Linear take the
    default for its width, which its ``LayerResult.block_size`` reports (``block_sizes``: the
    distinct ones). ``peak_device_memory_mib``: ``torch.cuda.max_memory_allocated`` over the run on
    a CUDA device (None on the CPU); ``peak_block_memory_mib``: the largest sum, over one block, of
    what the pipeline put on the compute device (the block's parameters, its calibration inputs
    and outputs, its Hessians), counted tensor by tensor on any device."""

    method: str
    pattern: str
    sparsity: Optional[float]
    alpha: float
    block_size: Optional[int]
    percdamp: float
    device: str
    calibration_windows: int
    calibration_seqlen: int
    blocks: int
    storage_dtype: str = ""
    compute_dtype: str = ""
    world_size: int = 1
    offloaded: bool = False
    seconds: float = 0.0
    peak_device_memory_mib: Optional[float] = None
    peak_block_memory_mib: float = 0.0
    metric: str = "psi"
    block_sparsity: list = field(default_factory=list)
    layers: list = field(default_factory=list)
    masks: dict = field(default_factory=dict)

    @property
    def block_sizes(self) -> list:
        """The distinct block sizes the Linears were pruned with, ascending (empty where B plays no role)."""
        return sorted({layer.block_size for layer in self.layers if layer.block_size is not None})

    @property
    def achieved_sparsity(self) -> float:
        numel = sum(layer.numel for layer in self.layers)
        return sum(layer.pruned for layer in self.layers) / numel if numel else 0.0

    def as_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "masks"}
        out["achieved_sparsity"] = self.achieved_sparsity
        out["layers"] = [dict(asdict(layer), shape=list(layer.shape)) for layer in self.layers]
        return out

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")


def layer_block_size(method: str, pattern: str, block_size: Optional[int], columns: int) -> Optional[int]:
    """The B a Linear of ``columns`` inputs is pruned with: ``block_size``, or the default for its
    width; None where B plays no role (Wanda, magnitude, structured Thanos)."""
    if method not in spec.DEFAULT_BLOCK_SIZE or (method == "thanos" and spec.parse_pattern(pattern)[0] == "structured"):
        return None
    return int(block_size) if block_size is not None else spec.default_block_size(method, pattern, columns)


class _StopForward(Exception):
    """Raised by the catcher once the first block's inputs are captured."""


class _Catcher(nn.Module):
    """Stands in for decoder block 0: records what the model feeds it, then stops the forward."""

    def __init__(self, device):
        super().__init__()
        self.device = device
        self.inputs: list = []
        self.kwargs: list = []

    def forward(self, hidden_states, *args, **kwargs):
        if args:
            raise TypeError("decoder block called with extra positional arguments; pass them as keywords")
        self.inputs.append(hidden_states.detach().to(self.device))
        self.kwargs.append(_to_device(_block_kwargs(kwargs), self.device))
        raise _StopForward


def _detach(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
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


def _check_patterns(value, name: str) -> Optional[list]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    try:
        patterns = list(value)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of module-name patterns, got {type(value).__name__}") from None
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name} must be a non-empty sequence of non-empty strings (fnmatch patterns), got {value!r}")
    return patterns


def select_linears(model: nn.Module, targets: Optional[Sequence[str]] = None,
                   ignore: Optional[Sequence[str]] = None) -> list:
    """The Linears to prune, per decoder block: a list (one entry per block) of ``{name in block:
    full name}``. ``targets``/``ignore`` are fnmatch patterns on full module names (``*`` also
    matches dots); the default targets are every ``nn.Linear`` inside the decoder blocks. Raises
    ValueError for a pattern that matches no ``nn.Linear``, a target outside the decoder blocks
    (the LM head, often tied to the embeddings, is not pruned), or an empty selection."""
    targets = _check_patterns(targets, "targets")
    ignore = _check_patterns(ignore, "ignore")
    layers = decoder_layers(model)
    prefix = _layers_prefix(model, layers)
    in_blocks = [{f"{prefix}.{i}.{name}": name for name in block_linears(block)} for i, block in enumerate(layers)]
    inside = {full for block in in_blocks for full in block}
    all_linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for patterns, what in ((targets, "targets"), (ignore, "ignore")):
        for pattern in patterns or ():
            if not any(fnmatch.fnmatchcase(name, pattern) for name in all_linears):
                raise ValueError(f"{what}: the pattern {pattern!r} matches no nn.Linear of {type(model).__name__} "
                                 f"(full module names such as {all_linears[0]!r})" if all_linears else
                                 f"{what}: the pattern {pattern!r} matches nothing: the model has no nn.Linear")
    if targets is not None:
        outside = [name for name in all_linears if name not in inside and any(fnmatch.fnmatchcase(name, p) for p in targets)]
        if outside:
            raise ValueError(f"targets: {outside} lie outside the decoder blocks ({prefix}.N.*); only the Linears inside "
                             f"the blocks can be pruned (the LM head and embeddings stay dense)")
    selected = []
    for block in in_blocks:
        chosen = {}
        for full, local in block.items():
            if targets is not None and not any(fnmatch.fnmatchcase(full, p) for p in targets):
                continue
            if ignore is not None and any(fnmatch.fnmatchcase(full, p) for p in ignore):
                continue
            chosen[local] = full
        selected.append(chosen)
    if not any(selected):
        raise ValueError(f"targets/ignore leave no nn.Linear to prune (targets={targets}, ignore={ignore})")
    return selected


def check_model_arguments(model: nn.Module, *, method, pattern, sparsity, block_size, alpha, percdamp,
                          selection: Optional[list] = None, metric="psi") -> spec.Options:
    """Validate the pruning arguments against every selected Linear of every block before any work
    (``reference.spec.check_arguments``: the same messages as ``thanos.prune``)."""
    layers = decoder_layers(model)
    options = None
    for i, block in enumerate(layers):
        linears = block_linears(block)
        if selection is None and not linears:
            raise ValueError(f"decoder block {i} of {type(model).__name__} has no nn.Linear layers to prune")
        names = list(linears) if selection is None else list(selection[i])
        for name in names:
            c, b = linears[name].weight.shape
            try:
                opts = spec.check_arguments((c, b), None if method == "magnitude" else (b, b), method=method, pattern=pattern,
                                            sparsity=sparsity, block_size=block_size, alpha=alpha, percdamp=percdamp,
                                            metric=metric)
            except ValueError as err:
                raise ValueError(f"layer {i}.{name} of shape ({c}, {b}): {err}") from None
            options = options or opts
    return options


def context_length(model: nn.Module) -> Optional[int]:
    """The model's context (``config.max_position_embeddings``), or None when it has none."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


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
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _output_tensor(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_finite(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what}: {bad} non-finite (NaN/Inf) activation values; pruning stopped before the layers "
                         f"they feed were pruned")


def calibration_batches(nsamples: int, batch_size: int) -> list:
    """The (start, stop) window ranges of the calibration forwards, in order."""
    return [(s, min(s + batch_size, nsamples)) for s in range(0, nsamples, batch_size)]


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calibration: torch.Tensor, batches: Sequence[tuple], *, device) -> list:
    """Stage 1: run the calibration windows ``calibration[start:stop]`` of each batch up to the first
    decoder block; return one ``(hidden_states, kwargs)`` per batch, on ``device``. A model placed
    by Accelerate (``device_map``) stays where it is (its hooks move what they need); any other
    model has its embeddings moved to ``device`` for the pass and back after."""
    from .offload import is_dispatched

    layers = decoder_layers(model)
    device = torch.device(device)
    catcher = _Catcher(device)
    dispatched = is_dispatched(model)
    home = _model_device(model)
    with _layers_swapped_out(layers, catcher):
        if not dispatched:
            model.to(device)
        try:
            for start, stop in batches:
                ids = calibration[start:stop].to(home if dispatched else device)
                try:
                    model(input_ids=ids, use_cache=False)
                except _StopForward:
                    pass
                else:
                    raise RuntimeError("the model never called its first decoder block")
        finally:
            if not dispatched:
                model.to(home)
    for x in catcher.inputs:
        _check_finite(x, "the inputs of decoder block 0 (embeddings)")
    return list(zip(catcher.inputs, catcher.kwargs))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flat_key(x: torch.Tensor) -> tuple:
    return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)


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

    def hook(self, name: str, full_name: str, sink: Callable[[str, torch.Tensor], None]):
        def record(_module, args, _output):
            x = args[0]
            first, _ = self._first.setdefault(_flat_key(x), (name, x))
            if self.owner.setdefault(name, first) != first:
                raise RuntimeError(f"{name} shared its input with {self.owner[name]} in one batch and {first} in another")
            if first == name:
                _check_finite(x, f"the input of {full_name}")
                sink(name, x.detach())

        return record


def new_accumulator(columns: int, *, device, dtype: torch.dtype, name: str):
    """``thanos.HessianAccumulator`` for the layer ``name`` (its full module name, in every error)."""
    import thanos

    return thanos.HessianAccumulator(columns, device=device, dtype=dtype, name=name)


@torch.no_grad()
def accumulate_hessians(block: nn.Module, linears: dict, batches: Sequence[tuple], *, device, dtype: torch.dtype = torch.float32,
                        names: Optional[dict] = None, exchange=None) -> dict:
    """Stage 2: ``{name: HessianAccumulator}`` for the ``linears`` (``{name in block: nn.Linear}``) of
    ``block``, from running it on ``batches`` (``(hidden_states, kwargs)`` pairs, on ``device``).
    Linears fed the very same tensor share one accumulator (the same object under each name).
    ``names`` maps each name to its full module name (for the accumulators and error messages).
    ``exchange`` (``thanos.distributed``): the batches are this rank's share, and each accumulated
    input is sent to the ranks that prune a linear reading it, in the global batch order, so every
    H is the one a single process would build, bit for bit. Raises ValueError naming the layer on
    a non-finite input, before any pruning."""
    names = names or {name: name for name in linears}
    seen = _SharedInputs()
    accumulators: dict = {}  # one per distinct input, made when that input is first seen

    def accumulator(name):
        if name not in accumulators:
            accumulators[name] = new_accumulator(linears[name].in_features, device=device, dtype=dtype, name=names[name])
        return accumulators[name]

    if exchange is None:
        def sink(name, x):
            accumulator(name).update(x)
    else:
        pending: dict = {}

        def sink(name, x):
            pending[name] = x

    hooks = [lin.register_forward_hook(seen.hook(name, names[name], sink)) for name, lin in linears.items()]
    try:
        if exchange is None:
            for x, kw in batches:
                seen.new_forward()
                block(x, **kw)
        else:
            exchange.accumulate(block, linears, batches, seen, pending, accumulator)
    finally:
        for hook in hooks:
            hook.remove()
    if exchange is not None:  # a rank holds the Hessians of the linears it prunes only
        return {name: accumulators[seen.owner.get(name, name)] for name in linears
                if seen.owner.get(name, name) in accumulators}
    return {name: accumulator(seen.owner.get(name, name)) for name in linears}  # a linear never called: H = 0


def resolve_compute_dtype(compute_dtype: Optional[torch.dtype], storage: torch.dtype) -> torch.dtype:
    """float64 for a float64 model, else float32, unless asked (float32 or float64)."""
    if compute_dtype is None:
        return torch.float64 if storage == torch.float64 else torch.float32
    if compute_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"compute_dtype must be torch.float32, torch.float64 or None, got {compute_dtype!r}")
    return compute_dtype


def prune_linear(linear: nn.Linear, H: Optional[torch.Tensor], *, solver: dict, device) -> tuple:
    """Stage 3, one layer: prune ``linear`` in place with ``thanos.prune(**solver)`` (H None for
    magnitude); returns ``(PruneResult, seconds)``. The weight keeps its dtype."""
    import thanos

    device = torch.device(device)
    _synchronize(device)
    t0 = time.perf_counter()
    res = thanos.prune(linear.weight.data, H, **solver)
    linear.weight.data.copy_(res.weight)
    _synchronize(device)
    return res, time.perf_counter() - t0


@torch.no_grad()
def forward_block(block: nn.Module, batches: Sequence[tuple], *, what: str) -> list:
    """Stage 4: the block's outputs on each batch, as the next block's ``(hidden_states, kwargs)``;
    ValueError naming the block when an output is not finite."""
    out = []
    for x, kw in batches:
        y = _output_tensor(block(x, **kw)).detach()
        _check_finite(y, what)
        out.append((y, kw))
    return out


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


def _block_bytes(block: nn.Module) -> int:
    return sum(_nbytes(t) for t in list(block.parameters()) + list(block.buffers()))


def layer_cost(shape: tuple, method: str) -> float:
    """The relative cost of pruning a (c, b) layer, for balancing ranks: the solvers that update
    are O(c b^2) (a factorisation of H, b^3, is shared by all rows and smaller when c >= b); the
    others O(c b)."""
    c, b = shape
    return float(c) * b * b + float(b) ** 3 if method in ("thanos", "sparsegpt") else float(c) * b


OWL_THRESHOLD = 5.0  # OWL's M: a weight is an outlier when its score exceeds M times the block's mean score
OWL_SPREAD = 0.08  # OWL's lambda: block sparsities are spread over at most 2 lambda around the sparsity


def owl_sparsities(outlier_ratios: Sequence[float], sparsity: float, spread: float = OWL_SPREAD) -> list:
    """OWL's block sparsities (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"): the blocks'
    outlier ratios D are mapped linearly onto [0, 2 spread]; block l gets ``sparsity - (D'_l -
    mean D')``, so the mean over blocks is ``sparsity`` and the block with the most outliers is pruned
    least. Equal ratios give the uniform sparsity."""
    ratios = [float(r) for r in outlier_ratios]
    low, high = min(ratios), max(ratios)
    if high == low:
        return [float(sparsity)] * len(ratios)
    scaled = [(r - low) / (high - low) * 2 * spread for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [float(sparsity) - (d - mean) for d in scaled]


@torch.no_grad()
def outlier_ratios(model: nn.Module, calibration: torch.Tensor, *, selection: Optional[list] = None, device=None,
                   batch_size: int = 8, threshold: float = OWL_THRESHOLD) -> list:
    """Per decoder block, the fraction of its selected weights whose Wanda score |W_ij| ||X_j|| is
    above ``threshold`` times the mean score over the block (OWL's layerwise outlier distribution),
    from the *dense* model's activations on ``calibration`` (one forward pass, block by block)."""
    layers = decoder_layers(model)
    device = torch.device(device) if device is not None else _model_device(model)
    selection = selection if selection is not None else [dict.fromkeys(block_linears(b)) for b in layers]
    batches = calibration_batches(int(calibration.shape[0]), batch_size)
    inputs = capture_block_inputs(model, calibration, batches, device=device)
    ratios = []
    from .offload import onloaded

    for i, block in enumerate(layers):
        linears = {name: lin for name, lin in block_linears(block).items() if name in selection[i]}
        with onloaded(block, device, dirty=[]):
            squares: dict = {}

            def hook(name):
                def record(_module, args, _output):
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                    squares[name] = squares.get(name, 0) + (x * x).sum(0)
                return record

            hooks = [lin.register_forward_hook(hook(name)) for name, lin in linears.items()]
            try:
                outputs = forward_block(block, inputs, what=f"the outputs of decoder block {i}")
            finally:
                for h in hooks:
                    h.remove()
            scores = [(lin.weight.detach().to(torch.float64).abs() * squares[name].sqrt()).reshape(-1)
                      for name, lin in linears.items() if name in squares]
            if scores:
                flat = torch.cat(scores)
                ratios.append(float((flat > threshold * flat.mean()).sum()) / flat.numel())
            else:
                ratios.append(0.0)
        inputs = outputs
    return ratios


def _check_layer_sparsity(layer_sparsity, blocks: int, pattern: str, method: str) -> None:
    if layer_sparsity is None or (isinstance(layer_sparsity, str) and layer_sparsity in ("uniform", "owl")):
        if layer_sparsity == "owl" and spec.parse_pattern(pattern)[0] != "unstructured":
            raise ValueError(f"layer_sparsity='owl' applies to the unstructured pattern only (N:M fixes every block's "
                             f"sparsity, structured removes whole columns), got pattern {pattern!r}")
        if layer_sparsity == "owl" and method == "magnitude":
            raise ValueError("layer_sparsity='owl' needs calibration activations; method 'magnitude' has none")
        return
    if isinstance(layer_sparsity, str):
        raise ValueError(f"layer_sparsity must be 'uniform', 'owl' or a sequence of one sparsity per decoder block, "
                         f"got {layer_sparsity!r}")
    try:
        values = [float(v) for v in layer_sparsity]
    except (TypeError, ValueError):
        raise ValueError(f"layer_sparsity must be 'uniform', 'owl' or a sequence of numbers, got {layer_sparsity!r}") from None
    if len(values) != blocks:
        raise ValueError(f"layer_sparsity has {len(values)} entries; the model has {blocks} decoder blocks")
    if spec.parse_pattern(pattern)[0] == "N:M":
        raise ValueError(f"layer_sparsity per block does not apply to an N:M pattern ({pattern!r} fixes the sparsity)")
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"layer_sparsity entries must lie in [0, 1), got {bad}")


def prune_model(
    model: nn.Module,
    calibration: Optional[torch.Tensor] = None,
    *,
    method: str = "thanos",
    pattern: str = "unstructured",
    sparsity: Optional[float] = None,
    block_size: Optional[int] = None,
    alpha: Optional[float] = None,
    percdamp: float = 0.01,
    device: Union[str, torch.device, None] = None,
    compute_dtype: Optional[torch.dtype] = None,
    batch_size: int = 8,
    progress: bool = False,
    report_path: Union[str, Path, None] = None,
    on_block: Optional[Callable[[int, nn.Module], Any]] = None,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
    keep_masks: bool = False,
    process_group: Any = None,
    layer_sparsity: Union[None, str, Sequence[float]] = None,
    owl_threshold: float = OWL_THRESHOLD,
    owl_spread: float = OWL_SPREAD,
    metric: str = "psi",
) -> ModelPruneResult:
    """Prune the ``nn.Linear`` layers inside the decoder blocks of ``model`` in place, block by block.

    calibration: LongTensor (nsamples, seqlen) of token ids (``thanos.data.calibration_windows``),
    seqlen at most the model's context (``config.max_position_embeddings``); may be None for
    ``method="magnitude"`` only. method/pattern/sparsity/block_size/alpha/percdamp: as
    ``thanos.prune``; sparsity None means 0.5, or the N:M pattern's own n/m. device: where each
    block is computed (default: where the model lies); blocks go back where they were, offloaded
    ones (Accelerate ``device_map`` with CPU/disk offload) to their offload storage.
    compute_dtype: the solver's precision, float32 or float64 (None: float64 for a float64 model,
    else float32); weights keep their storage dtype. batch_size: calibration windows per forward.
    progress: a tqdm bar over blocks. report_path: also write the result as JSON. on_block(i,
    block): called after block i is pruned (before its outputs are computed). targets/ignore:
    fnmatch patterns on full module names choosing the Linears (default: all inside the decoder
    blocks). keep_masks: return every pruned Linear's mask in ``result.masks``. process_group: a
    ``torch.distributed`` group (default: the initialised default group, if any, of more than one
    rank): windows split across ranks, linears pruned in parallel, every rank ends with the same
    model. Every argument is checked before any work. Deterministic: the same model and
    calibration give the same pruned model (at a fixed thread count), whatever the rank count.
    layer_sparsity: None or ``"uniform"`` (every block at ``sparsity``), ``"owl"`` (outlier-weighted
    block sparsities, unstructured only: ``owl_sparsities(outlier_ratios(...))`` from a dense pass
    over the calibration windows, with ``owl_threshold`` (OWL's M) and ``owl_spread`` (OWL's lambda);
    the mean over blocks is ``sparsity``) or one sparsity per decoder block. metric: the score
    Thanos' mask ranks weights by, as ``thanos.prune`` (``'psi'``, the paper's, by default).
    """
    from tqdm.auto import tqdm

    from . import distributed
    from .offload import is_dispatched, onloaded

    started = time.perf_counter()
    layers = decoder_layers(model)
    nm = spec.parse_pattern(pattern)[0] == "N:M"
    if sparsity is None and not nm:
        sparsity = 0.5
    selection = select_linears(model, targets, ignore)
    options = check_model_arguments(model, method=method, pattern=pattern, sparsity=sparsity, block_size=block_size,
                                    alpha=alpha, percdamp=percdamp, selection=selection, metric=metric)
    alpha = options.alpha  # None: the method's and pattern's default (spec.default_alpha), reported as such
    _check_layer_sparsity(layer_sparsity, len(layers), pattern, method)
    if layer_sparsity == "owl":
        for name, value in (("owl_threshold", owl_threshold), ("owl_spread", owl_spread)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not value < float("inf"):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not sparsity - 2 * owl_spread >= 0.0 or not sparsity + 2 * owl_spread < 1.0:
            raise ValueError(f"owl_spread {owl_spread}: block sparsities can lie anywhere in sparsity +- 2 owl_spread, "
                             f"which leaves [0, 1) around sparsity {sparsity}")
    needs_data = method != "magnitude"
    if needs_data:
        if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.numel() == 0:
            raise ValueError(f"calibration must be a non-empty LongTensor (nsamples, seqlen) of token ids for method {method!r}")
        if calibration.dtype not in (torch.long, torch.int):
            raise ValueError(f"calibration must hold integer token ids, got dtype {calibration.dtype}")
        context = context_length(model)
        if context is not None and calibration.shape[1] > context:
            raise ValueError(f"calibration windows of {calibration.shape[1]} tokens are longer than the model's context "
                             f"of {context} positions (config.max_position_embeddings); use windows of at most {context}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(keep_masks, bool):
        raise ValueError(f"keep_masks must be True or False, got {keep_masks!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    storage = next(block_linears(layers[i])[name].weight.dtype for i, chosen in enumerate(selection) for name in chosen)
    compute = resolve_compute_dtype(compute_dtype, storage)
    group = distributed.resolve_group(process_group)
    world = distributed.world_size(group)
    rank = distributed.rank(group)
    prefix = _layers_prefix(model, layers)
    dispatched = is_dispatched(model)
    result = ModelPruneResult(
        method=method, pattern=pattern, sparsity=None if sparsity is None else float(sparsity), alpha=float(alpha),
        block_size=None if block_size is None else int(block_size),
        percdamp=float(percdamp), device=str(device),
        calibration_windows=int(calibration.shape[0]) if needs_data else 0,
        calibration_seqlen=int(calibration.shape[1]) if needs_data else 0, blocks=len(layers),
        storage_dtype=str(storage).replace("torch.", ""), compute_dtype=str(compute).replace("torch.", ""),
        world_size=world, offloaded=dispatched, metric=metric,
    )
    solver = dict(method=method, pattern=pattern, sparsity=sparsity, block_size=block_size, alpha=alpha,
                  percdamp=percdamp, compute_dtype=compute, metric=metric)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    was_training = model.training
    model.eval()
    try:
        all_batches = calibration_batches(int(calibration.shape[0]), batch_size) if needs_data else []
        mine = all_batches[rank::world]  # round-robin: round j holds batches j*world .. j*world + world - 1
        block_sparsity = [sparsity] * len(layers)
        if layer_sparsity == "owl":  # every rank runs the whole calibration set: the same sparsities everywhere
            block_sparsity = owl_sparsities(outlier_ratios(model, calibration, selection=selection, device=device,
                                                           batch_size=batch_size, threshold=owl_threshold),
                                            sparsity, owl_spread)
        elif layer_sparsity is not None and not isinstance(layer_sparsity, str):
            block_sparsity = [float(v) for v in layer_sparsity]
        result.block_sparsity = list(block_sparsity)
        inputs = capture_block_inputs(model, calibration, mine, device=device) if needs_data else []
        exchange = distributed.Exchange(group, all_batches, calibration.shape[1] if needs_data else 0) if world > 1 else None
        last = max(i for i, chosen in enumerate(selection) if chosen)  # blocks after it are left as they are
        bar = tqdm(range(last + 1), desc=f"{method} {pattern}", unit="block", disable=not progress or rank != 0)
        for i in bar:
            block = layers[i]
            names = selection[i]
            all_linears = block_linears(block)
            with onloaded(block, device, dirty=[f"{name}.weight" for name in names]):
                linears = {name: all_linears[name] for name in names}
                owners = distributed.assign(linears, method, world) if world > 1 else {name: 0 for name in linears}
                if exchange is not None:
                    exchange.begin_block({name for name, r in owners.items() if r == rank}, device)
                accumulators = {}
                if needs_data and linears:
                    accumulators = accumulate_hessians(block, linears, inputs, device=device,
                                                       dtype=torch.float64 if compute == torch.float64 else torch.float32,
                                                       names={n: f"{prefix}.{i}.{n}" for n in linears}, exchange=exchange)
                unique = {id(acc): acc for acc in accumulators.values()}.values()
                held = _block_bytes(block) + _nbytes(inputs) + sum(
                    acc.columns**2 * torch.empty((), dtype=acc.dtype).element_size() for acc in unique)
                records = {}
                for name, linear in linears.items():
                    if owners[name] != rank:
                        continue
                    acc = accumulators.get(name)
                    H = acc.hessian if acc is not None else None
                    res, seconds = prune_linear(linear, H, solver=dict(solver, sparsity=block_sparsity[i]), device=device)
                    pruned = int(res.mask.sum())
                    records[name] = (LayerResult(
                        name=f"{prefix}.{i}.{name}", block=i, shape=tuple(linear.weight.shape), pruned=pruned,
                        numel=linear.weight.numel(), sparsity=pruned / linear.weight.numel(),
                        loss=None if res.loss is None else float(res.loss),
                        damping=None if res.damping is None else float(res.damping),
                        outlier_rows=len(res.outlier_rows), seconds=seconds, tokens=int(acc.tokens) if acc is not None else 0,
                        rank=rank, block_size=layer_block_size(method, pattern, block_size, linear.in_features),
                    ), res.mask.to("cpu", torch.bool) if keep_masks else None)
                    del H, res
                del accumulators
                if world > 1:
                    records = distributed.share_pruned(group, linears, owners, records, keep_masks)
                for name in linears:
                    layer, mask = records[name]
                    result.layers.append(layer)
                    if keep_masks:
                        result.masks[layer.name] = mask
                if on_block is not None:
                    on_block(i, block)
                if needs_data and i < last:
                    outputs = forward_block(block, inputs, what=f"the outputs of decoder block {i} ({prefix}.{i})")
                    held += _nbytes(outputs)
                    inputs = outputs
                result.peak_block_memory_mib = max(result.peak_block_memory_mib, held / 2**20)
            bar.set_postfix(sparsity=f"{result.achieved_sparsity:.3f}")
        bar.close()
    finally:
        model.train(was_training)
    if device.type == "cuda":
        result.peak_device_memory_mib = torch.cuda.max_memory_allocated(device) / 2**20
    result.seconds = time.perf_counter() - started
    if report_path is not None and rank == 0:
        result.save(report_path)
    return result
