"""``python -m serac COMMAND``: the same as the ``serac`` command."""

import sys

from serac.cli import main

sys.exit(main())
