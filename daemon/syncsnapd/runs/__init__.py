"""Runs and their record: the tracker (event ids, replay, subscriptions), the scheduler of snapshot
runs, the operation runs (restore, check, prune), the lifecycle both kinds of runs share (the executor)
and the SQLite history.
"""

from ._executor import TICK_SECONDS as TICK_SECONDS
from ._executor import Outcome as Outcome
from ._executor import Run as Run
from ._executor import RunExecutor as RunExecutor
from ._executor import RunFailed as RunFailed
from ._history import History as History
from ._history import HistoryStatistics as HistoryStatistics
from ._operations import OperationError as OperationError
from ._operations import Operations as Operations
from ._paused import PAUSED_FILE_NAME as PAUSED_FILE_NAME
from ._scheduler import ProjectPaused as ProjectPaused
from ._scheduler import RetryPolicy as RetryPolicy
from ._scheduler import Scheduler as Scheduler
from ._scheduler import UnknownProject as UnknownProject
from ._stores import Stores as Stores
from ._stores import location_of as location_of
from ._tracker import Event as Event
from ._tracker import Subscription as Subscription
from ._tracker import SubscriptionClosed as SubscriptionClosed
from ._tracker import Tracker as Tracker
