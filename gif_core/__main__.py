"""``python -m gif_core`` runs the ``gif`` command."""

import sys

from gif_core.cli import main

sys.exit(main())
