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

import torch


class HessianAccumulator:
    """Running H = (2/N) sum over tokens of x x^T for a layer with ``columns`` inputs.

    columns: b, the layer's input features. device: where H lives (activations are moved there).
    dtype: torch.float32 (default) or torch.float64, the accumulation dtype; fp16/bf16 activations
    are upcast before any product."""

    def __init__(self, columns: int, device=None, dtype: torch.dtype = torch.float32):
        if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
            raise ValueError(f"columns must be a positive integer, got {columns!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self.columns = columns
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = dtype
        self._H = torch.zeros((columns, columns), device=self.device, dtype=dtype)
        self._tokens = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of activations x of shape (..., b): every leading index is one token."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.columns:
            raise ValueError(f"x must have shape (..., {self.columns}), got {tuple(x.shape)}")
        X = x.detach().reshape(-1, self.columns).to(device=self.device, dtype=self.dtype)
        n = X.shape[0]
        if n == 0:
            return
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
        return f"HessianAccumulator(columns={self.columns}, tokens={self._tokens}, device={self.device}, dtype={self.dtype})"
