"""Typed results: frozen dataclasses built from the daemon's JSON (docs/api.md). No I/O.

Parsing is strict about the fields this client uses (a missing or mistyped one raises
:class:`~syncsnap.ProtocolError`) and ignores fields it does not know, so a newer daemon still works.

- ``_progress``: progress events, projects, snapshots, health, a started run (what ``follow`` yields);
- ``_runs``: the daemon's history of runs, statistics, cancels;
- ``_results``: diff, and what restore, check and prune runs produce;
- ``_login``: the dashboard's one-time login code;
- ``_parse``: the strict field readers they share.
"""

from ._login import LoginCode as LoginCode
from ._parse import parse_list as parse_list
from ._progress import COUNTED as COUNTED
from ._progress import OPERATION_STEP_NAMES as OPERATION_STEP_NAMES
from ._progress import STEP_NAMES as STEP_NAMES
from ._progress import TERMINAL_STATES as TERMINAL_STATES
from ._progress import ErrorInfo as ErrorInfo
from ._progress import Health as Health
from ._progress import Progress as Progress
from ._progress import Project as Project
from ._progress import RunStarted as RunStarted
from ._progress import SnapshotInfo as SnapshotInfo
from ._progress import SnapshotSummary as SnapshotSummary
from ._progress import step_names as step_names
from ._results import CheckResult as CheckResult
from ._results import DamagedSnapshot as DamagedSnapshot
from ._results import Diff as Diff
from ._results import DiffChange as DiffChange
from ._results import DiffEntry as DiffEntry
from ._results import DiffSummary as DiffSummary
from ._results import PruneResult as PruneResult
from ._results import RestoreResult as RestoreResult
from ._results import StoreProblem as StoreProblem
from ._runs import Cancelling as Cancelling
from ._runs import ProjectStats as ProjectStats
from ._runs import RunInfo as RunInfo
from ._runs import RunList as RunList
