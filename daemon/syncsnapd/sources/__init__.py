"""Sources of change: the folder watcher (inotify, polling), debounce, start-up and interval checks,
and Syncthing (its event stream, and step 1's wait for sync).
"""

from ._status import WatchStatus as WatchStatus
from ._syncthing import ScanProgress as ScanProgress
from ._syncthing import describe_status as describe_status
from ._syncthing import read_events as read_events
from ._syncthing import serve_syncthing_changes as serve_syncthing_changes
from ._syncthing import wait_for_sync as wait_for_sync
from ._syncthing_rest import SyncthingChange as SyncthingChange
from ._syncthing_rest import SyncthingError as SyncthingError
from ._syncthing_rest import folder_path as folder_path
from ._watch import FolderSummary as FolderSummary
from ._watch import folder_fingerprint as folder_fingerprint
from ._watch import make_filter as make_filter
from ._watch import serve_debounce as serve_debounce
from ._watch import serve_folder_watch as serve_folder_watch
from ._watch import serve_project_source as serve_project_source
from ._watch import serve_project_watch as serve_project_watch
from ._watch import summarize_folder as summarize_folder
from ._watch import summary_of_entries as summary_of_entries
from ._watch import wait_until_ready as wait_until_ready
