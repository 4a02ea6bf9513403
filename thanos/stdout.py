"""What ``thanos`` and ``python -m benchmarks`` do when stdout's reader goes away (``... | head``).

No side effects on import (``thanos.cli`` sets OpenMP's wait policy when imported; the benchmarks'
entry point must not inherit that)."""

from __future__ import annotations

import os
import select
import signal
import sys


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``thanos ... | head``): poll reports POLLERR."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll on this platform, or stdout is not a file
        return False


def exit_quietly_if_reader_gone(command) -> int:
    """Run ``command()`` and flush stdout. If stdout's reader went away (``... | head``), stop with
    128 + SIGPIPE, what a shell reports for a writer that SIGPIPE ended, instead of a traceback; a
    BrokenPipeError from anything but stdout propagates. Used by ``thanos`` and ``python -m benchmarks``."""
    try:
        code = command()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # the interpreter flushes stdout again at exit: point it at /dev/null so that flush succeeds
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE  # reached only where poll exists, so on POSIX, where SIGPIPE does
