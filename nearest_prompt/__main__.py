"""``python -m nearest_prompt``: the same command as ``nearest-prompt``."""

import sys

from .cli import main

sys.exit(main())
