"""A research-style Thanos and a gallery of broken variants of it, one bug class of the field each.

``ResearchThanos`` has the shape most pruning repositories use: one object per layer, fed the
layer's inputs batch by batch (``add_batch``), then asked to ``prune``. It is our own, written for
the conformance kit (tests and README), computes in float64 whatever the weight's dtype, and is
correct; each subclass below overrides one small method to plant exactly one known bug, and
``GALLERY`` names the property of ``thanos.testing`` that must flag it.

Run the kit on any of them from a shell (``tests`` on the path):

    PYTHONPATH=tests thanos conform conform_gallery:research_thanos --methods thanos
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from reference import spec
from thanos.testing import LayerAdapter

F64 = torch.float64


@dataclass
class ResearchResult:
    weight: torch.Tensor
    mask: torch.Tensor
    damping: float
    outlier_rows: list = field(default_factory=list)
    loss: Optional[float] = None


class ResearchThanos:
    """Thanos for one layer, research-code style. ``weight``: (c, b), never modified."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.columns = weight.shape[1]
        self.H = torch.zeros((self.columns, self.columns), dtype=F64, device=weight.device)
        self.scaler_row = torch.zeros(self.columns, dtype=F64, device=weight.device)  # mean x_j^2 (psi)
        self.nsamples = 0

    # ------------------------------------------------------------------ statistics
    def add_batch(self, inp: torch.Tensor) -> None:
        """Running means over all tokens: H = (2/N) sum x x^T and scaler_row = (1/N) sum x^2."""
        if inp.shape[-1] != self.columns:
            raise ValueError(f"inp must have {self.columns} features, got shape {tuple(inp.shape)}")
        x = inp.reshape(-1, self.columns).to(F64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("inp contains NaN or Inf")
        total = self.nsamples + x.shape[0]
        self.H *= self.nsamples / total
        self.H += (2.0 / total) * x.T @ x
        self.scaler_row *= self.nsamples / total
        self.scaler_row += (x**2).sum(0) / total
        self.nsamples = total

    def column_norms(self) -> torch.Tensor:
        return torch.sqrt(self.scaler_row)

    # ------------------------------------------------------------------ pieces a bug may replace
    def factor(self, H: torch.Tensor, damping: float, mean_diagonal: float, percdamp: float):
        """Upper Cholesky factor U of (H + lambda I)^-1, raising lambda x10 while the damped H does
        not factor or is numerically singular. Returns (U, lambda)."""
        eye = torch.eye(H.shape[0], dtype=F64, device=H.device)
        for lam in spec.damping_schedule(percdamp, mean_diagonal):
            A = H + lam * eye
            L, info = torch.linalg.cholesky_ex(A)
            eig = torch.linalg.eigvalsh(A)
            if int(info) == 0 and float(eig[0]) > 10 * A.shape[0] * 2.0**-52 * float(eig[-1]):
                return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), lam
        raise torch.linalg.LinAlgError("H is not positive definite even with damping")

    def outlier_count(self, alpha: float, c: int) -> int:
        return spec.outlier_row_count(alpha, c)

    def nm(self, n: int, m: int) -> tuple:
        return n, m

    def scores(self, W_current, W_original, norms, j1):
        """psi of the *current* weights of the remaining columns."""
        return W_current[:, j1:].abs() * norms[j1:]

    def block_mask(self, scores, remaining: int, width: int, block_count: int):
        """The global residual mask: the ``remaining`` smallest scores of the whole remaining
        matrix, restricted to the block's columns (ties to the lower row-major position)."""
        flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        flat[torch.sort(scores.reshape(-1), stable=True).indices[:remaining]] = True
        return flat.reshape(scores.shape)[:, :width]

    def extra(self, block_mask, scores):
        return block_mask

    def trailing_rows(self, U, j1: int, j2: int):
        """Rows of the trailing inverse (H_{j1:, j1:})^-1 for the block: Ub^T U[block, j1:]."""
        return U[j1:j2, j1:j2].T @ U[j1:j2, j1:]

    pad_value = 1.0  # identity padding of the batched solves (App. H)

    def solve_rows(self, W_block, T_bb, block_mask):
        """x_k = (T_bb[q_k, q_k])^-1 W_block[k, q_k] for every row, in one batched Cholesky solve
        with the smaller systems padded (identity on the padding, zeros in u)."""
        c, width = W_block.shape
        counts = block_mask.sum(1)
        s = int(counts.max()) if c else 0
        X = torch.zeros_like(W_block)
        if s == 0:
            return X
        cols = torch.sort((~block_mask).to(torch.uint8), dim=1, stable=True).indices[:, :s]  # pruned first
        valid = torch.arange(s, device=W_block.device)[None, :] < counts[:, None]
        R_hat = T_bb[cols[:, :, None], cols[:, None, :]] * (valid[:, :, None] & valid[:, None, :])
        R_hat = R_hat + torch.diag_embed((~valid).to(F64) * self.pad_value)
        u = torch.gather(W_block, 1, cols) * valid
        L, _ = torch.linalg.cholesky_ex(R_hat)
        x = torch.cholesky_solve(u.unsqueeze(-1), L).squeeze(-1)
        rows = torch.arange(c, device=W_block.device)[:, None].expand(c, s)
        X[rows[valid], cols[valid]] = x[valid]
        return X

    def structured_update(self, W_rows, U, Hd, q):
        """W <- W - W[:, q] ((H^-1)_qq)^-1 (H^-1)_{q,:}: sub-blocks of the inverse (Eq. 13 corrected)."""
        Hinv = U.T @ U
        X = torch.linalg.solve(Hinv[q][:, q], W_rows[:, q].T)
        return W_rows - X.T @ Hinv[q, :]

    def zero_pruned(self, W, mask) -> None:
        W[mask] = 0.0

    def cast_back(self, W):
        return W.to(self.weight.dtype)

    # ------------------------------------------------------------------ the algorithm
    def prune(self, *, pattern: str, sparsity: Optional[float], blocksize: int = 128, percdamp: float = 0.01,
              alpha: float = 0.0) -> ResearchResult:
        c, b = self.weight.shape
        opts = spec.check_arguments((c, b), (b, b), method="thanos", pattern=pattern, sparsity=sparsity,
                                    block_size=blocksize, alpha=alpha, percdamp=percdamp)
        spec.check_values("weight", bool(torch.isfinite(self.weight).all()))
        W = self.weight.detach().to(F64).clone()
        H = self.H.clone()
        dead = H.diagonal() == 0
        mean_diagonal = float(H.diagonal().mean()) or 1.0
        H.diagonal()[dead] = mean_diagonal
        W[:, dead] = 0.0
        U, damping = self.factor(H, opts.percdamp * mean_diagonal, mean_diagonal, opts.percdamp)
        Hd = H + damping * torch.eye(b, dtype=F64, device=W.device)
        norms = self.column_norms()
        mask = torch.zeros((c, b), dtype=torch.bool, device=W.device)
        outliers: list = []
        if opts.kind != "unstructured" and opts.alpha > 0:
            k = self.outlier_count(opts.alpha, c)
            row_loss = ((W * norms) ** 2).sum(1)  # Eq. (14)
            outliers = sorted(torch.sort(-row_loss, stable=True).indices[:k].tolist())
        rows = torch.tensor([r for r in range(c) if r not in outliers], dtype=torch.long, device=W.device)
        if opts.kind == "structured":
            s = spec.structured_column_count(opts.sparsity, opts.alpha, b)
            column_loss = ((W[rows] * norms) ** 2).sum(0)  # Eq. (15)
            q = torch.sort(torch.sort(column_loss, stable=True).indices[:s]).values
            if s:
                W[rows] = self.structured_update(W[rows], U, Hd, q)
                mask[rows.unsqueeze(1), q] = True
        else:
            Wa, Ma = self._blocks(W[rows], U, norms, opts)
            W[rows], mask[rows] = Wa, Ma
        mask[rows.unsqueeze(1), dead.nonzero().squeeze(1)] = True  # dead weights are pruned (zeroed above): say so
        self.zero_pruned(W, mask)
        return ResearchResult(self.cast_back(W), mask, damping, outliers)

    def _blocks(self, Wa, U, norms, opts):
        c, b = Wa.shape
        W_original = Wa.clone()
        Ma = torch.zeros((c, b), dtype=torch.bool, device=Wa.device)
        remaining = spec.unstructured_count(opts.sparsity, c * b)
        for j1 in range(0, b, opts.block_size):
            j2 = min(j1 + opts.block_size, b)
            width = j2 - j1
            scores = self.scores(Wa, W_original, norms, j1)
            if opts.kind == "N:M":
                n, m = self.nm(opts.n, opts.m)
                grouped = scores[:, :width].reshape(c, width // m, m)
                block_mask = torch.zeros_like(grouped, dtype=torch.bool)
                block_mask.scatter_(2, torch.sort(grouped, dim=2, stable=True).indices[:, :, :n], True)
                block_mask = self.rows_in_nm(block_mask.reshape(c, width))
            else:
                block_count = spec.cumulative_count(opts.sparsity, c, j2) - spec.cumulative_count(opts.sparsity, c, j1)
                block_mask = self.block_mask(scores, remaining, width, block_count)
                picked = int(block_mask.sum())
                block_mask = self.extra(block_mask, scores[:, :width])
                remaining -= picked
            T_rows = self.trailing_rows(U, j1, j2)
            X = self.solve_rows(Wa[:, j1:j2], T_rows[:, :width], block_mask)
            Wa[:, j1:] -= X @ T_rows
            Ma[:, j1:j2] = block_mask
        return Wa, Ma

    def rows_in_nm(self, block_mask):
        return block_mask


# ============================================================================ the gallery


class NMRowLeftDense(ResearchThanos):
    """N:M leaves the last row of the matrix dense (an off-by-one over rows)."""

    def rows_in_nm(self, block_mask):
        block_mask = block_mask.clone()
        block_mask[-1] = False
        return block_mask


class OutlierRowsKPlusOne(ResearchThanos):
    """floor(alpha c) + 1 rows left dense (an off-by-one in the outlier count)."""

    def outlier_count(self, alpha, c):
        return min(c, spec.outlier_row_count(alpha, c) + 1)


class LastBatchStatistics(ResearchThanos):
    """The psi statistics are overwritten by each calibration batch: only the last one counts."""

    def add_batch(self, inp):
        super().add_batch(inp)
        x = inp.reshape(-1, self.columns).to(F64)
        self.scaler_row = (x**2).mean(0)


class IdentityFallback(ResearchThanos):
    """When the Cholesky of the damped H fails, H^-1 is replaced by the identity."""

    def factor(self, H, damping, mean_diagonal, percdamp):
        A = H + damping * torch.eye(H.shape[0], dtype=F64, device=H.device)
        L, info = torch.linalg.cholesky_ex(A)
        eig = torch.linalg.eigvalsh(A)
        if int(info) == 0 and float(eig[0]) > 10 * A.shape[0] * 2.0**-52 * float(eig[-1]):
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), damping
        return torch.eye(H.shape[0], dtype=F64, device=H.device), damping


class OneExtraPerBlock(ResearchThanos):
    """Every block prunes one weight more than the global residual mask asks for."""

    def extra(self, block_mask, scores):
        free = torch.where(block_mask, torch.inf, scores)
        if bool(torch.isfinite(free).any()):
            block_mask = block_mask.clone()
            block_mask.view(-1)[int(torch.argmin(free))] = True
        return block_mask


class HSubBlocksStructured(ResearchThanos):
    """The structured update reads sub-blocks of H instead of H^-1 (the review's Eq. 13)."""

    def structured_update(self, W_rows, U, Hd, q):
        X = torch.linalg.solve(Hd[q][:, q], W_rows[:, q].T)
        return W_rows - X.T @ Hd[q, :]


class FullInverseRows(ResearchThanos):
    """Each block uses rows of the full H^-1 instead of the trailing inverse (H_{j:,j:})^-1."""

    def trailing_rows(self, U, j1, j2):
        return (U.T @ U)[j1:j2, j1:]


class ZeroPadding(ResearchThanos):
    """The batched solves pad the smaller systems with zeros instead of the identity."""

    pad_value = 0.0


class PerBlockMask(ResearchThanos):
    """Each block prunes its own share of the smallest scores instead of the global residual mask."""

    def block_mask(self, scores, remaining, width, block_count):
        block = scores[:, :width]
        flat = torch.zeros(block.numel(), dtype=torch.bool, device=block.device)
        flat[torch.sort(block.reshape(-1), stable=True).indices[:block_count]] = True
        return flat.reshape(block.shape)


class PsiFromOriginalWeights(ResearchThanos):
    """psi is computed from the original weights instead of the current (updated) ones."""

    def scores(self, W_current, W_original, norms, j1):
        return W_original[:, j1:].abs() * norms[j1:]


class NMHardcodedHalf(ResearchThanos):
    """N:M hard-coded to 1:2, whatever pattern was asked."""

    def nm(self, n, m):
        return 1, 2


class MissingFinalZeroing(ResearchThanos):
    """The pruned entries are left at the update's rounding residue instead of exactly 0."""

    def zero_pruned(self, W, mask):
        pass


class NoCastBack(ResearchThanos):
    """The result keeps the float64 compute dtype instead of the input weight's dtype."""

    def cast_back(self, W):
        return W


class DampingNotRaised(ResearchThanos):
    """A failed factorisation does not raise the damping: the damped H is inverted anyway (LU)."""

    def factor(self, H, damping, mean_diagonal, percdamp):
        A = H + damping * torch.eye(H.shape[0], dtype=F64, device=H.device)
        Hinv = torch.linalg.inv(A)
        L, _ = torch.linalg.cholesky_ex((Hinv + Hinv.T) / 2, upper=True)
        return L, damping


def layer_adapter(cls) -> LayerAdapter:
    """Wrap a research-style class for ``thanos.testing`` (the README shows the same in full)."""

    def prune_layer(W, batches, *, method, pattern, sparsity, block_size, alpha, percdamp):
        if method != "thanos":
            raise NotImplementedError(f"{cls.__name__} implements Thanos only")
        pruner = cls(W)
        for x in batches:
            pruner.add_batch(x)
        return pruner.prune(pattern=pattern, sparsity=sparsity, blocksize=block_size, percdamp=percdamp, alpha=alpha)

    return LayerAdapter(prune_layer, name=f"conform_gallery:{cls.__name__}", array="torch", methods=("thanos",))


research_thanos = layer_adapter(ResearchThanos)

#: bug class -> (the property that must flag it, pattern, family, dtype)
GALLERY = {
    NMRowLeftDense: ("exact_counts", "N:M", "generic", "float64"),
    OutlierRowsKPlusOne: ("outlier_rows", "structured", "generic", "float64"),
    LastBatchStatistics: ("statistics_from_all_batches", "unstructured", "generic", "float64"),
    IdentityFallback: ("failed_factorisation_raises_damping", "unstructured", "rank_deficient", "float64"),
    OneExtraPerBlock: ("exact_counts", "unstructured", "generic", "float64"),
    HSubBlocksStructured: ("structured_update_optimal", "structured", "generic", "float64"),
    FullInverseRows: ("trailing_block_optimum", "unstructured", "generic", "float64"),
    ZeroPadding: ("trailing_block_optimum", "unstructured", "generic", "float64"),
    PerBlockMask: ("mask_rule", "unstructured", "generic", "float64"),
    PsiFromOriginalWeights: ("mask_rule", "unstructured", "correlated_features", "float64"),
    NMHardcodedHalf: ("exact_counts", "N:M", "generic", "float64"),
    MissingFinalZeroing: ("pruned_weights_exactly_zero", "unstructured", "generic", "float64"),
    NoCastBack: ("dtype_and_device", "unstructured", "generic", "float32"),
    DampingNotRaised: ("failed_factorisation_raises_damping", "unstructured", "rank_deficient", "float64"),
}

#: two gallery members as module attributes, for ``thanos conform conform_gallery:...`` in the CLI tests
missing_final_zeroing = layer_adapter(MissingFinalZeroing)
one_extra_per_block = layer_adapter(OneExtraPerBlock)
