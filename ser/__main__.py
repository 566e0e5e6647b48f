"""``python -m ser predict ...`` / ``serve`` / ``promote`` / ``tune`` (same as the ``ser`` command)."""

import sys

from ser.cli import main

sys.exit(main())
