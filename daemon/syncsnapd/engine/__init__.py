"""The work on folders: the snapshot engine (walk, hash, compress into the store; ``_reconnect``: step 5
while an S3 store's bucket is unreachable), diff and restore.

Writes progress into a ``core.RunProgress``; knows nothing of scheduling or HTTP.
"""

from ._diff import Diff as Diff
from ._diff import DiffError as DiffError
from ._diff import Modified as Modified
from ._diff import Side as Side
from ._diff import diff_entries as diff_entries
from ._diff import scan_live as scan_live
from ._dirs import SnapshotError as SnapshotError
from ._malloc import tune_allocator as tune_allocator
from ._reconnect import RETRY_FIRST_SECONDS as RETRY_FIRST_SECONDS
from ._reconnect import RETRY_MAX_SECONDS as RETRY_MAX_SECONDS
from ._reconnect import retry_delay as retry_delay
from ._restore import TEMP_PREFIX as TEMP_PREFIX
from ._restore import Restore as Restore
from ._restore import RestoreError as RestoreError
from ._restore import check_target as check_target
from ._restore import normalize_path as normalize_path
from ._restore import restore_snapshot as restore_snapshot
from ._restore_version import FoundVersion as FoundVersion
from ._restore_version import find_version as find_version
from ._restore_version import restore_version as restore_version
from ._restore_version import version_name as version_name
from ._snapshot import take_snapshot as take_snapshot
