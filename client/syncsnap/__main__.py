"""``python -m syncsnap``: the same as the ``syncsnap`` command."""

import sys

from ._cli import main

sys.exit(main())
