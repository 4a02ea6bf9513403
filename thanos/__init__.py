"""Thanos: block-wise post-training pruning of LLM linear layers (Ilin & Richtarik, 2025).

``thanos.prune`` mirrors ``reference.prune`` on torch tensors (any device, fp16/bf16/fp32/fp64
weights, solved in float32 or float64); ``thanos.HessianAccumulator`` streams calibration
activations into H; ``thanos.prune_model`` prunes a Hugging Face causal LM block by block.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from reference.spec import PruneResult, default_alpha, default_block_size

try:
    __version__ = version("thanos")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "prune": "thanos.solver",
    "HessianAccumulator": "thanos.hessian",
    "prune_model": "thanos.model",
}

__all__ = ["PruneResult", "__version__", "default_alpha", "default_block_size", *_LAZY]


def __getattr__(name):  # import torch-heavy modules on first use only
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thanos' has no attribute {name!r}")
