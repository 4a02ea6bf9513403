"""``python -m thanos``: the ``thanos`` command (``thanos.cli.main``)."""

import sys

from thanos.cli import main

if __name__ == "__main__":
    sys.exit(main())
