"""``HessianAccumulator``: stream calibration activations into the layer Hessian H = (2/N) sum x x^T.

Used from forward hooks by the model pipeline, one accumulator per ``nn.Linear``:

    acc = HessianAccumulator(layer.in_features, device="cuda")
    hook = layer.register_forward_hook(lambda mod, inp, out: acc.update(inp[0]))
    ...
    result = thanos.prune(layer.weight, acc.hessian, method="thanos", ...)

H is kept as a running mean over all N tokens seen so far, rescaled at every batch
(H <- N_old/N_new H + 2/N_new X^T X), so it stays O(1) whatever N and is the same (to rounding)
whatever the batch split. Any positive scaling of H leaves ``prune`` unchanged.
"""

from __future__ import annotations

import math

import torch

from reference import spec


class HessianAccumulator:
    """Running H = (2/N) sum over tokens of x x^T for a layer with ``columns`` inputs.

    columns: b, the layer's input features (an integer: int or NumPy integer). device: where H
    lives (activations are moved there). dtype: torch.float32 (default) or torch.float64, the
    accumulation dtype; fp16/bf16 activations are upcast before any product. name: the layer's
    name (e.g. its module name in the model), included in every error message.
    A batch with NaN or Inf is refused (ValueError) before it touches H."""

    def __init__(self, columns: int, device=None, dtype: torch.dtype = torch.float32, name: str | None = None):
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, got {name!r}")
        self.name = name
        count = spec.as_integer(columns)
        if count is None or count < 1:
            raise ValueError(self._where(f"columns must be a positive integer, got {columns!r}"))
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(self._where(f"dtype must be torch.float32 or torch.float64, got {dtype!r}"))
        self.columns = count
        self.device = torch.device("cpu") if device is None else torch.device(device)
        if self.device.type == "meta":
            raise ValueError(self._where("device must hold values; 'meta' has none"))
        self.dtype = dtype
        self._H = torch.zeros((count, count), device=self.device, dtype=dtype)
        self._tokens = 0

    def _where(self, message: str) -> str:
        return message if self.name is None else f"layer {self.name!r}: {message}"

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of activations x of shape (..., b): every leading index is one token. NaN or
        Inf anywhere in x raises ValueError at once, and H is left as it was."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(self._where(f"x must be a torch.Tensor, got {type(x).__name__}"))
        if x.ndim < 1 or x.shape[-1] != self.columns:
            raise ValueError(self._where(f"x must have shape (..., {self.columns}), got {tuple(x.shape)}"))
        if x.device.type == "meta":
            raise ValueError(self._where("x is on the 'meta' device: it has a shape but no values"))
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(self._where(f"x must hold real numbers, got dtype {x.dtype}"))
        X = x.detach().reshape(-1, self.columns).to(device=self.device, dtype=self.dtype)
        n = X.shape[0]
        if n == 0:
            return
        # one summation pass: NaN or Inf anywhere makes the sum non-finite; only then (or when finite
        # values overflow the sum) is every entry checked
        if not math.isfinite(float(X.sum())) and not bool(torch.isfinite(X).all()):
            raise ValueError(self._where(f"x contains NaN or Inf (a batch of {n} tokens); H is unchanged"))
        total = self._tokens + n
        self._H.mul_(self._tokens / total)
        self._H.addmm_(X.mT, X, alpha=2.0 / total)
        self._tokens = total

    @property
    def hessian(self) -> torch.Tensor:
        """H = (2/N) sum x x^T over all tokens seen, symmetrised (b, b); zeros before any update."""
        return (self._H + self._H.mT) / 2

    @property
    def tokens(self) -> int:
        """N, the number of tokens seen."""
        return self._tokens

    @property
    def column_norms(self) -> torch.Tensor:
        """sqrt(H_jj / 2) = ||X_j|| / sqrt(N), the per-feature activation norms over all batches."""
        return torch.sqrt(self._H.diagonal().clamp(min=0) / 2)

    def __repr__(self) -> str:
        name = "" if self.name is None else f"name={self.name!r}, "
        return f"HessianAccumulator({name}columns={self.columns}, tokens={self._tokens}, device={self.device}, dtype={self.dtype})"
