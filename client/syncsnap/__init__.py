"""syncsnap: the client library, CLI and notifier of the syncsnapd snapshot daemon.

Trio API::

    async with syncsnap.open_client() as c:
        run = await c.start_snapshot("docs")
        async for progress in c.follow("docs", run=run.run):
            print(progress.step, progress.percent, progress.message)

Blocking API: ``with syncsnap.Client() as c: ...`` with the same methods. See docs/client.md.

Layers, top to bottom (each imports only those below it; pyproject.toml ``[tool.importlinter]``):

- ``syncsnap.cli``: the ``syncsnap`` command and its notifier (the library never imports it);
- ``_blocking``, ``_client``: :class:`Client` and :class:`AsyncClient`;
- ``_follow``: :class:`Follower`, the driver of the protocol's schedule and ordering, with Trio;
- ``syncsnap.transport``: the I/O (discovery, h11 over the socket, wsproto, streams, polling);
- ``syncsnap.protocol``: sans-I/O (SSE, error answers, messages, ordering, the reconnect schedule);
- ``syncsnap.models``, ``_endpoint``, ``_errors``: typed results, the daemon's address, the exceptions.
"""

from ._blocking import Client as Client
from ._client import AsyncClient as AsyncClient
from ._client import open_client as open_client
from ._endpoint import Endpoint as Endpoint
from ._errors import ConnectionLost as ConnectionLost
from ._errors import DaemonError as DaemonError
from ._errors import DaemonNotRunning as DaemonNotRunning
from ._errors import NotFound as NotFound
from ._errors import ProtocolError as ProtocolError
from ._errors import RunLost as RunLost
from ._errors import SyncsnapError as SyncsnapError
from ._errors import Unauthorized as Unauthorized
from ._follow import Follower as Follower
from .models import Cancelling as Cancelling
from .models import CheckResult as CheckResult
from .models import DamagedSnapshot as DamagedSnapshot
from .models import Diff as Diff
from .models import DiffChange as DiffChange
from .models import DiffEntry as DiffEntry
from .models import DiffSummary as DiffSummary
from .models import ErrorInfo as ErrorInfo
from .models import Health as Health
from .models import LoginCode as LoginCode
from .models import Progress as Progress
from .models import Project as Project
from .models import ProjectStats as ProjectStats
from .models import PruneResult as PruneResult
from .models import RestoreResult as RestoreResult
from .models import RunInfo as RunInfo
from .models import RunList as RunList
from .models import RunStarted as RunStarted
from .models import SnapshotInfo as SnapshotInfo
from .models import SnapshotSummary as SnapshotSummary
from .models import StoreProblem as StoreProblem
from .protocol import FollowPolicy as FollowPolicy
from .protocol import FollowStatistics as FollowStatistics
from .transport import find_endpoint as find_endpoint

__version__ = "0.1.0"
