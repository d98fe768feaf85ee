"""``python -m simulator.backoffice``: the same as the ``unionterm-backoffice`` command."""

import sys

from .cli import main

sys.exit(main())
