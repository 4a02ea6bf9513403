"""``python -m proofs``: print the ledger; exit status 1 if any check failed."""

import os

# One BLAS thread: the ledger is specified to run on one core, and an oversubscribed OpenBLAS
# pool is orders of magnitude slower on these small matrices. Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import sys  # noqa: E402
import time  # noqa: E402


def main() -> int:
    from proofs import build_ledger, format_ledger

    start = time.perf_counter()
    items = build_ledger()
    print(format_ledger(items))
    print(f"ledger built in {time.perf_counter() - start:.1f} s")
    return 0 if items and all(it.passed for it in items) else 1


if __name__ == "__main__":
    sys.exit(main())
