"""The daemon as a service: ``serve_daemon`` (start order, supervision, reload, graceful stop), systemd
glue, the ``syncsnapd`` command line and its offline commands.
"""

from ._cli import main as main
from ._daemon import ServiceWrapper as ServiceWrapper
from ._daemon import serve_daemon as serve_daemon
from ._listening import DaemonInfo as DaemonInfo
from ._offline import run_check as run_check
from ._offline import run_diff as run_diff
from ._offline import run_prune as run_prune
from ._offline import run_restore as run_restore
from ._offline import run_snapshots as run_snapshots
from ._systemd import Notifier as Notifier
from ._systemd import serve_watchdog as serve_watchdog
from ._systemd import watchdog_interval as watchdog_interval
