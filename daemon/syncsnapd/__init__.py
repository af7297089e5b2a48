"""syncsnapd: the snapshot daemon for synced folders.

The public surface is small: run it with ``syncsnapd`` (see ``_cli``), or embed it with
``await nursery.start(serve_daemon, load_config(...))``. Everything else is internal.
"""

__version__ = "0.1.0"

from .core import ConfigError as ConfigError  # noqa: E402
from .core import DaemonConfig as DaemonConfig  # noqa: E402
from .core import Progress as Progress  # noqa: E402
from .core import ProjectConfig as ProjectConfig  # noqa: E402
from .core import SnapshotSummary as SnapshotSummary  # noqa: E402
from .core import load_config as load_config  # noqa: E402
