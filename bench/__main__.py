"""``python -m bench``: the side-by-side run, see :mod:`bench._main`. ``python -m bench store-bench ...`` and
``python -m bench prune-bench ...``: the store's own benchmarks, see :mod:`bench._store_bench`.
``python -m bench torture-report RESULTS.jsonl``: docs/robustness.md, see :mod:`bench._torture_report`.
``python -m bench dashboard``: the dashboard's weight and event-to-DOM latency in Chromium, docs/dashboard.md,
see :mod:`bench._dashboard`. ``python -m bench scale``: 100k/400k-file trees, a 4 GiB file and many
snapshots against restic and borg, docs/benchmarks-scale.md, see :mod:`bench._scale`."""

import sys

from . import _store_bench
from ._main import main

if len(sys.argv) > 1:
    if sys.argv[1] == "dashboard":
        from . import _dashboard
        raise SystemExit(_dashboard.main(sys.argv[2:]))
    if sys.argv[1] == "scale":
        from . import _scale
        raise SystemExit(_scale.main())
    if sys.argv[1] == "torture-report":
        from . import _torture_report
        raise SystemExit(_torture_report.main(sys.argv[2:]))
    if sys.argv[1] not in _store_bench.COMMANDS:
        commands = [*(c for c in _store_bench.COMMANDS if "phase" not in c), "torture-report", "dashboard", "scale"]
        print(f"usage: python -m bench [{' | '.join(commands)} ...]",
              file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_store_bench.main(sys.argv[1:]))
raise SystemExit(main())
