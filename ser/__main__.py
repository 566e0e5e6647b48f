"""``python -m ser predict ...`` / ``python -m ser serve ...`` (same as the ``ser`` command)."""

import sys

from ser.cli import main

sys.exit(main())
