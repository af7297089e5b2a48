"""syncsnap: the client library, CLI and notifier of the syncsnapd snapshot daemon.

Trio API::

    async with syncsnap.open_client() as c:
        run = await c.start_snapshot("docs")
        async for progress in c.follow("docs", run=run.run):
            print(progress.step, progress.percent, progress.message)

Blocking API: ``with syncsnap.Client() as c: ...`` with the same methods. See docs/client.md.
"""

from ._blocking import Client as Client
from ._client import AsyncClient as AsyncClient
from ._client import open_client as open_client
from ._discovery import Endpoint as Endpoint
from ._discovery import find_endpoint as find_endpoint
from ._errors import ConnectionLost as ConnectionLost
from ._errors import DaemonError as DaemonError
from ._errors import DaemonNotRunning as DaemonNotRunning
from ._errors import NotFound as NotFound
from ._errors import ProtocolError as ProtocolError
from ._errors import RunLost as RunLost
from ._errors import SyncsnapError as SyncsnapError
from ._errors import Unauthorized as Unauthorized
from ._follow import Follower as Follower
from ._follow import FollowPolicy as FollowPolicy
from ._follow import FollowStatistics as FollowStatistics
from ._models import Cancelling as Cancelling
from ._models import CheckResult as CheckResult
from ._models import DamagedSnapshot as DamagedSnapshot
from ._models import Diff as Diff
from ._models import DiffChange as DiffChange
from ._models import DiffEntry as DiffEntry
from ._models import DiffSummary as DiffSummary
from ._models import ErrorInfo as ErrorInfo
from ._models import Health as Health
from ._models import Progress as Progress
from ._models import Project as Project
from ._models import ProjectStats as ProjectStats
from ._models import PruneResult as PruneResult
from ._models import RestoreResult as RestoreResult
from ._models import RunInfo as RunInfo
from ._models import RunList as RunList
from ._models import RunStarted as RunStarted
from ._models import SnapshotInfo as SnapshotInfo
from ._models import SnapshotSummary as SnapshotSummary
from ._models import StoreProblem as StoreProblem

__version__ = "0.1.0"
