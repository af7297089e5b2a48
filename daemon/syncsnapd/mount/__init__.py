"""The snapshots as a read-only filesystem (FUSE, pyfuse3 on Trio): ``syncsnapd mount DIR`` and, through
the daemon, ``syncsnap mount DIR`` (docs/mount.md).

Modules: ``_inodes`` (the nodes of the tree and their inode numbers), ``_catalog`` (the projects and
snapshots shown, listed again as snapshots are added), ``_tree`` (one snapshot's tree, a few kept),
``_chunks`` (file contents from the store's chunks, a small bounded cache), ``_ops`` (the filesystem
operations), ``_runner`` (mounting, serving until a signal or an unmount, checking the mount point).
Reads the store only; knows nothing of runs or HTTP.
"""

from ._runner import STALE_HINT as STALE_HINT
from ._runner import mountpoint_problem as mountpoint_problem
from ._runner import serve_mount as serve_mount
