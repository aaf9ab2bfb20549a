"""``python -m serac.bench``: the same as ``serac bench``."""

import sys

from serac.bench.cli import main

sys.exit(main())
