"""Adapters: how the kit calls an implementation, and what it reads back.

Two shapes of implementation are supported:

- ``FunctionAdapter(fn)``: ``fn(W, H, *, method, pattern, sparsity, block_size, alpha, percdamp)``,
  the signature of ``thanos.prune`` and ``reference.prune``;
- ``LayerAdapter(fn)``: ``fn(W, batches, *, method, pattern, sparsity, block_size, alpha, percdamp)``
  for research code that keeps state per layer and is fed activations batch by batch (the
  ``add_batch(inp)`` / ``prune(...)`` shape): ``batches`` is a list of ``(tokens_i, b)`` arrays.

Either returns an object with ``.weight`` and ``.mask`` (and, optionally, ``.loss``, ``.damping``,
``.outlier_rows``), or a tuple ``(weight, mask)``, or the weight alone (the mask is then read as
``weight == 0``). ``array`` says what the function takes: ``"torch"`` tensors (in the case's dtype,
on its device), ``"numpy"`` arrays, or ``"auto"`` (tried on a small probe case: torch, and numpy if
the result comes back as a NumPy array). ``damping``: the diagonal load the implementation used,
if it reports one; the kit assumes ``percdamp * mean(diag H)`` otherwise.

``load_implementation("MODULE:CALLABLE")`` resolves the command line's argument: an adapter object
is used as it is, a plain callable is wrapped in a ``FunctionAdapter``.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .cases import Case

ARRAYS = ("auto", "torch", "numpy")


class Unsupported(Exception):
    """The implementation does not support a case (it raised NotImplementedError, or it takes
    NumPy and the dtype is bfloat16): the kit reports SKIP with this reason."""


@dataclass
class Output:
    """What an implementation returned, read back into float64 NumPy (weight, mask) plus what it
    says about itself. ``mask_reported``: False when the mask was read as ``weight == 0``."""

    weight: np.ndarray
    mask: np.ndarray
    mask_reported: bool
    loss: Optional[float]
    damping: Optional[float]
    outlier_rows: Optional[list]
    dtype: str
    device: str
    raw_weight: Any = None
    raw_mask: Any = None
    warnings: list = field(default_factory=list)


def _dtype_name(x) -> str:
    return str(getattr(x, "dtype", type(x).__name__)).replace("torch.", "")


def _device_name(x) -> str:
    dev = getattr(x, "device", None)
    return "cpu" if dev is None or isinstance(x, np.ndarray) else str(dev)


def to_numpy(x) -> np.ndarray:
    """A tensor or array as a float64 (or bool) NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64) if x.dtype != bool else x.copy()
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return x.numpy().copy() if x.dtype == torch.bool else x.to(torch.float64).numpy()
    except ImportError:  # pragma: no cover - the kit ships with torch
        pass
    return np.asarray(x, dtype=np.float64)


def _torch_dtype(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class Adapter:
    """Base of both adapters. ``name``: shown in reports; ``methods``: the methods the
    implementation offers (None: all four)."""

    kind = "function"

    def __init__(self, fn: Callable, *, name: Optional[str] = None, array: str = "auto", methods: Optional[tuple] = None):
        if not callable(fn):
            raise ValueError(f"the implementation must be callable, got {type(fn).__name__}")
        if array not in ARRAYS:
            raise ValueError(f"array must be one of {ARRAYS}, got {array!r}")
        self.fn = fn
        self.name = name or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        self.array = array
        self.methods = tuple(methods) if methods else None

    # -- inputs ------------------------------------------------------------------------------
    def inputs(self, case: Case, *, array: Optional[str] = None) -> tuple:
        """(W, second argument) in the form the implementation takes: torch tensors on the case's
        device or NumPy arrays; the second argument is H (function) or the list of batches (layer)."""
        array = array or self.resolved_array(case)
        if array == "numpy":
            if case.dtype == "bfloat16":
                raise Unsupported("NumPy has no bfloat16")
            W = case.W.astype(np.dtype(case.dtype))
            hd = np.dtype(case.hessian_dtype)
            second = case.H.astype(hd) if self.kind == "function" else [x.astype(hd) for x in case.batches]
            return W, second
        import torch

        device = torch.device(case.device)
        W = torch.tensor(case.W, dtype=_torch_dtype(case.dtype), device=device)
        hd = _torch_dtype(case.hessian_dtype)
        if self.kind == "function":
            second = torch.tensor(case.H, dtype=hd, device=device)
        else:
            second = [torch.tensor(x, dtype=hd, device=device) for x in case.batches]
        return W, second

    def resolved_array(self, case: Case) -> str:
        if self.array == "auto":
            self.array = self._probe(case)
        return self.array

    def _probe(self, case: Case) -> str:
        """torch, unless the implementation hands a NumPy array back for torch input (or fails on
        torch input and works on NumPy input)."""
        from .cases import golden_cases

        method = case.method if self.methods is None or case.method in self.methods else self.methods[0]
        probe = golden_cases(method, "unstructured", "float32" if case.dtype == "bfloat16" else case.dtype, "cpu")[0]
        try:
            out = self._call(*self.inputs(probe, array="torch"), probe.arguments())
        except Exception:  # noqa: BLE001 - any failure on torch input: try NumPy
            try:
                self._call(*self.inputs(probe, array="numpy"), probe.arguments())
            except Exception:  # noqa: BLE001
                return "torch"
            return "numpy"
        weight = out[0] if isinstance(out, tuple) else getattr(out, "weight", out)
        return "numpy" if isinstance(weight, np.ndarray) else "torch"

    # -- calls -------------------------------------------------------------------------------
    def _call(self, W, second, arguments: dict):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = self.fn(W, second, **arguments)
        self._last_warnings = [f"{w.category.__name__}: {w.message}" for w in caught]
        return result

    def call(self, case: Case, *, W=None, second=None, arguments: Optional[dict] = None):
        """Call on the case's inputs (or the given replacements) and return the raw result."""
        if self.methods is not None and case.method not in self.methods:
            raise Unsupported(f"the implementation offers methods {self.methods}, not {case.method!r}")
        W0, s0 = self.inputs(case)
        try:
            return self._call(W0 if W is None else W, s0 if second is None else second, arguments or case.arguments())
        except NotImplementedError as err:
            raise Unsupported(f"the implementation raised NotImplementedError: {err}") from None

    def run(self, case: Case, *, W=None, second=None) -> Output:
        """Call on the case and read the result back (see ``Output``)."""
        result = self.call(case, W=W, second=second)
        return self.read(result)

    def read(self, result) -> Output:
        if isinstance(result, tuple):
            weight, mask = (result + (None,))[:2]
            loss = damping = outliers = None
        else:
            weight = getattr(result, "weight", result)
            mask = getattr(result, "mask", None)
            loss = getattr(result, "loss", None)
            damping = getattr(result, "damping", None)
            outliers = getattr(result, "outlier_rows", None)
        w = to_numpy(weight)
        m = None if mask is None else to_numpy(mask)
        reported = m is not None
        if m is None:
            m = w == 0
        elif m.dtype != bool:
            m = m != 0
        return Output(w, m, reported, None if loss is None else float(loss), None if damping is None else float(damping),
                      None if outliers is None else [int(i) for i in outliers], _dtype_name(weight), _device_name(weight),
                      weight, mask, list(getattr(self, "_last_warnings", [])))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, array={self.array})"


class FunctionAdapter(Adapter):
    """``fn(W, H, *, method, pattern, sparsity, block_size, alpha, percdamp)`` (see the module)."""

    kind = "function"


class LayerAdapter(Adapter):
    """``fn(W, batches, *, method, pattern, sparsity, block_size, alpha, percdamp)`` for research
    code fed activations batch by batch (see the module and the README's example)."""

    kind = "layer"


def load_implementation(target: str, *, array: str = "auto") -> Adapter:
    """Resolve ``"MODULE:CALLABLE"`` (``CALLABLE`` may be dotted): an ``Adapter`` is used as it is,
    a callable is wrapped in a ``FunctionAdapter``. Raises ValueError with what went wrong."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"the implementation must be given as MODULE:CALLABLE (e.g. thanos:prune), got {target!r}")
    module_name, attr = target.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} of {target!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{target!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if isinstance(obj, Adapter):
        if array != "auto":
            obj.array = array
        return obj
    if not callable(obj):
        raise ValueError(f"{target!r} is not callable (got {type(obj).__name__})")
    return FunctionAdapter(obj, name=target, array=array)


__all__ = ["ARRAYS", "Adapter", "FunctionAdapter", "LayerAdapter", "Output", "Unsupported", "load_implementation", "to_numpy"]
