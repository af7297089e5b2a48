"""``python -m bench``: see :mod:`bench._main`."""

from ._main import main

raise SystemExit(main())
