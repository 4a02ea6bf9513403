"""Float64 NumPy/SciPy reference of Thanos and its baselines, written straight from the equations.

Never imports torch. ``reference.prune`` mirrors ``thanos.prune``; every equation of DESIGN.md is
one function in ``reference.equations``; the argument contract shared with production is
``reference.spec``.
"""

from .algorithms import prepare_hessian, prune
from .equations import (
    closed_form_update,
    column_loss,
    column_norms,
    fixed_mask_optimum,
    global_residual_mask,
    hessian,
    inverse_cholesky_factor,
    kkt_solve,
    layer_loss,
    n_m_mask,
    obd_loss,
    obs_update,
    psi_metric,
    row_change_loss,
    row_loss,
    smallest_per_row,
    sparsegpt_metric,
    structured_update,
    trailing_inverse,
)
from .spec import PruneResult

__all__ = [
    "PruneResult", "closed_form_update", "column_loss", "column_norms", "fixed_mask_optimum",
    "global_residual_mask", "hessian", "inverse_cholesky_factor", "kkt_solve", "layer_loss",
    "n_m_mask", "obd_loss", "obs_update", "prepare_hessian", "prune", "psi_metric",
    "row_change_loss", "row_loss", "smallest_per_row", "sparsegpt_metric", "structured_update", "trailing_inverse",
]
