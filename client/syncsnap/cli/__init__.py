"""The ``syncsnap`` command and its notifier, built on the library (which never imports this package).

- ``_main``: the argument parser, ``main`` (the console script) and the dispatch to a command;
- ``_commands``: commands that ask and print (status, projects, snapshots, diff, runs, run, stats);
- ``_runs``: commands that start, follow or cancel runs (snapshot, follow, restore, check, prune, cancel);
- ``_view``: how following shows progress (a live bar on a terminal, NDJSON elsewhere);
- ``_format``: human-readable numbers; ``_output``: exit codes, JSON and tables;
- ``_notify``: ``syncsnap notify``, desktop notifications over D-Bus (jeepney imported only then).
"""

from ._main import main as main
