"""The content-addressed store: packs, indexes, trees and snapshot files, on a local directory or an
S3-compatible bucket; check, forget and prune. Knows nothing of runs, sources or HTTP.
"""

from ._backend import BackendError as BackendError
from ._backend import LocalBackend as LocalBackend
from ._backend import ObjectMissing as ObjectMissing
from ._backend import S3Backend as S3Backend
from ._remote import RemoteSpec as RemoteSpec
from ._remote import error_code as error_code
from ._remote import footprint as footprint
from ._remote import prepare as prepare
from ._remote import prepare_store as prepare_store
from ._retention import apply_policy as apply_policy
from ._retention import plan_forget as plan_forget
from ._store import ChunkLocation as ChunkLocation
from ._store import ChunkReader as ChunkReader
from ._store import Damage as Damage
from ._store import DamagedSnapshot as DamagedSnapshot
from ._store import Entry as Entry
from ._store import GarbageCollector as GarbageCollector
from ._store import Problem as Problem
from ._store import SnapshotInfo as SnapshotInfo
from ._store import SnapshotStats as SnapshotStats
from ._store import Store as Store
from ._store import StoreCheck as StoreCheck
from ._store import StoreError as StoreError
from ._store import StoreWriter as StoreWriter
from ._store import UnknownSnapshotError as UnknownSnapshotError
from ._store import hash_bytes as hash_bytes
from ._store import make_snapshot_id as make_snapshot_id
