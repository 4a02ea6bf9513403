"""``python -m benchmarks speed|quality|scale|breakdown|study|layerloss [options]``: run one benchmark, write JSON (and PNG)."""

import sys
from importlib import import_module

_BENCHMARKS = {"speed": "benchmarks.speed", "quality": "benchmarks.quality", "scale": "benchmarks.scale",
               "breakdown": "benchmarks.breakdown", "study": "benchmarks.study",
               "layerloss": "benchmarks.layerloss"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in _BENCHMARKS:
        print(f"usage: python -m benchmarks {{{'|'.join(_BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return import_module(_BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    from thanos.stdout import exit_quietly_if_reader_gone

    sys.exit(exit_quietly_if_reader_gone(main))
