"""``python -m thanos``: the command line (``thanos.cli``)."""

import sys

from thanos.cli import main

sys.exit(main())
