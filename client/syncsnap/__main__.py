"""``python -m syncsnap``: the same as the ``syncsnap`` command."""

import sys

from .cli import main

sys.exit(main())
