"""``python -m bench``: the side-by-side run, see :mod:`bench._main`. ``python -m bench COMMAND ...`` runs one
of the other benchmarks (each writes its page in docs/):

- ``store-bench``, ``prune-bench``: the store's own benchmarks, :mod:`bench._store_bench`;
- ``torture-report RESULTS.jsonl``: docs/robustness.md, :mod:`bench._torture_report`;
- ``dashboard``: the dashboard's weight and event-to-DOM latency in Chromium, :mod:`bench._dashboard`;
- ``chunking``: fixed against content-defined chunking, docs/chunking.md, :mod:`bench._chunking`;
- ``memory``: index bytes per chunk, peak and idle RSS, docs/memory.md, :mod:`bench._memory`;
- ``history``: what a long history costs, docs/history-costs.md, :mod:`bench._history_costs`;
- ``scale``: 100k/400k-file trees, a 4 GiB file and many snapshots against restic and borg,
  docs/benchmarks-scale.md, :mod:`bench._scale`.
"""

import importlib
import sys

from . import _store_bench
from ._main import main

# command -> module whose main(argv) runs it
COMMANDS = {
    "dashboard": "_dashboard", "chunking": "_chunking", "memory": "_memory", "history": "_history_costs",
    "torture-report": "_torture_report",
}

if len(sys.argv) > 1:
    if sys.argv[1] == "scale":
        from . import _scale
        raise SystemExit(_scale.main())
    if sys.argv[1] in COMMANDS:
        module = importlib.import_module(f".{COMMANDS[sys.argv[1]]}", __package__)
        raise SystemExit(module.main(sys.argv[2:]))
    if sys.argv[1] not in _store_bench.COMMANDS:
        commands = [*(c for c in _store_bench.COMMANDS if "phase" not in c), *COMMANDS, "scale"]
        print(f"usage: python -m bench [{' | '.join(commands)} ...]", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_store_bench.main(sys.argv[1:]))
raise SystemExit(main())
