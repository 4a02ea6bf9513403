"""Executable checks of the Thanos paper's equations and the errata ledger.

``build_ledger()`` runs every check (``proofs.equations``: one per equation of DESIGN.md;
``proofs.errata``: the review's items (a)-(f)) and returns a list of ``LedgerItem``;
``format_ledger(items)`` renders it; ``python -m proofs`` prints it and exits non-zero if any
check failed. Deterministic (fixed seeds), float64 reference against mpmath oracles.
"""

from __future__ import annotations

from .ledger import LedgerItem, format_ledger, run_check

__all__ = ["LedgerItem", "build_ledger", "format_ledger"]


def build_ledger() -> list[LedgerItem]:
    """Run every check, equations first, then errata (a)-(f); one ``LedgerItem`` each."""
    from . import equations, errata

    return [run_check(check, id, equation) for id, equation, check in equations.CHECKS + errata.CHECKS]
