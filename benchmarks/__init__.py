"""Speed, memory, scaling and quality measurements (outside test collection)."""

import platform
from pathlib import Path


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name (BLAS picks its kernels by it, so results recorded on two processors
    can differ in the last bits): the first ``model name`` line of ``cpuinfo``, else what ``platform``
    knows."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
