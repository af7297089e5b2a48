"""``python -m bench``: the side-by-side run, see :mod:`bench._main`. ``python -m bench store-bench ...`` and
``python -m bench prune-bench ...``: the store's own benchmarks, see :mod:`bench._store_bench`."""

import sys

from . import _store_bench
from ._main import main

if len(sys.argv) > 1:
    if sys.argv[1] not in _store_bench.COMMANDS:
        print(f"usage: python -m bench [{' | '.join(c for c in _store_bench.COMMANDS if 'phase' not in c)} ...]",
              file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_store_bench.main(sys.argv[1:]))
raise SystemExit(main())
