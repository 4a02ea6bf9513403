"""The errata ledger: one ``LedgerItem`` per checked equation or erratum, and its text form."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Callable, Optional

VERDICTS = ("proved", "refuted", "corrected")


@dataclass
class LedgerItem:
    """One settled claim.

    id: "Eq. 10", "errata (a)", ...; equation: the paper's equation / algorithm step and the
    reference function checked; verdict: "proved" (the claim holds as stated), "refuted" (it is
    wrong and the evidence shows how), "corrected" (wrong or ambiguous as printed; the ledger
    states and proves the right form); max_error: the largest error seen (a relative error unless
    the detail says otherwise), None where the check is not numeric; detail: the evidence;
    passed: the check ran and its verdict held as expected; bound: the largest max_error the
    tolerance model allows (same units), None where not numeric.
    """

    id: str
    equation: str
    verdict: str
    max_error: Optional[float]
    detail: str
    passed: bool
    bound: Optional[float] = None


def _opposite(verdict: str) -> str:
    return "proved" if verdict == "refuted" else "refuted"


def settle(id: str, equation: str, expected: str, holds: bool, max_error, bound, detail: str) -> LedgerItem:
    """The item for a check whose evidence either supports the expected verdict (``holds``) or not."""
    if expected not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {expected!r}")
    verdict = expected if holds else _opposite(expected)
    if max_error is not None and bound is not None and not max_error <= bound:
        holds, verdict = False, _opposite(expected)
    return LedgerItem(id, equation, verdict, None if max_error is None else float(max_error), detail,
                      bool(holds), None if bound is None else float(bound))


def run_check(check: Callable[[], LedgerItem], id: str, equation: str) -> LedgerItem:
    """Run one check; an exception is a failed check (the ledger still prints), never a crash."""
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - any failure of a check is reported in the ledger
        return LedgerItem(id, equation, "refuted", None, f"the check raised {type(exc).__name__}: {exc}", False)


def format_ledger(items) -> str:
    """The ledger as text: a summary table, then each item's evidence."""
    items = list(items)
    def err(x):
        return "-" if x is None else f"{x:.2e}"
    rows = [("item", "verdict", "max error", "bound", "ok", "equation")]
    rows += [(it.id, it.verdict, err(it.max_error), err(it.bound), "PASS" if it.passed else "FAIL", it.equation)
             for it in items]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
        if n == 0:
            lines.append("-" * (sum(widths) + 10 + len("equation")))
    failed = sum(not it.passed for it in items)
    lines.append("")
    lines.append(f"{len(items)} items, {len(items) - failed} passed, {failed} failed")
    lines.append("")
    for it in items:
        lines.append(f"[{it.id}] {it.verdict} - {it.equation}")
        for para in it.detail.split("\n"):
            if para.startswith("|") or para.startswith("  "):
                lines.append("    " + para)
            else:
                lines.extend(textwrap.wrap(para, 100, initial_indent="    ", subsequent_indent="    ") or [""])
        lines.append("")
    return "\n".join(lines)
