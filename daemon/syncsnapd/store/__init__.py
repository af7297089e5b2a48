"""The content-addressed store: packs, indexes, trees and snapshot files, on a local directory or an
S3-compatible bucket; check, forget and prune. Knows nothing of runs, sources or HTTP.

Modules: ``_format`` (the on-disk format), ``_config`` (config.json, checked), ``_chunker`` (cutting
content into chunks), ``_errors``, ``_files`` (the directory, durable writes), ``_index`` (the master
index), ``_snapshots`` (snapshot files), ``_keys`` (the master key of an encrypted store and its copies),
``_crypto`` (sealing, keyed names), ``_repository`` (:class:`Store`), ``_writer``, ``_reader``,
``_browse`` (one directory or entry of a snapshot), ``_check``, ``_prune``, ``_retention``, ``_locks`` (lock
objects of a store shared by several processes, kept where ``_lockdirs`` says), and for S3 ``_remote`` over
``_backend`` (``_reachability``: whether the bucket answers, and opening while it does not);
``_versions`` (every version of a path: the per-store cache behind ``/versions`` and ``/find``).
"""

from ._backend import S3Backend as S3Backend
from ._browse import find_entry as find_entry
from ._browse import iter_entries as iter_entries
from ._browse import list_directory as list_directory
from ._check import CheckReport as CheckReport
from ._check import Damage as Damage
from ._check import DamagedSnapshot as DamagedSnapshot
from ._check import Problem as Problem
from ._check import StoreCheck as StoreCheck
from ._chunker import Chunker as Chunker
from ._chunker import FastCDC2020 as FastCDC2020
from ._chunker import FixedChunker as FixedChunker
from ._content import CONTENT_ID_LENGTH as CONTENT_ID_LENGTH
from ._content import content_id as content_id
from ._crypto import CIPHERS as CIPHERS
from ._crypto import NewStore as NewStore
from ._crypto import default_cipher as default_cipher
from ._errors import BackendError as BackendError
from ._errors import CorruptDataError as CorruptDataError
from ._errors import ObjectMissing as ObjectMissing
from ._errors import StoreError as StoreError
from ._errors import StoreLocked as StoreLocked
from ._errors import UnknownSnapshotError as UnknownSnapshotError
from ._errors import error_code as error_code
from ._files import StoreFiles as StoreFiles
from ._format import SNAPSHOT_ID_RE as SNAPSHOT_ID_RE
from ._format import ChunkLocation as ChunkLocation
from ._format import Entry as Entry
from ._format import SnapshotInfo as SnapshotInfo
from ._format import SnapshotStats as SnapshotStats
from ._format import hash_bytes as hash_bytes
from ._format import make_snapshot_id as make_snapshot_id
from ._keys import KeyInfo as KeyInfo
from ._keys import MasterKey as MasterKey
from ._keys import Passphrase as Passphrase
from ._keys import StoreKey as StoreKey
from ._keys import StoreKeyError as StoreKeyError
from ._keys import passphrase_source as passphrase_source
from ._keys import prompt_passphrase as prompt_passphrase
from ._keys import read_master_key_file as read_master_key_file
from ._keys import write_master_key_file as write_master_key_file
from ._locks import LockInfo as LockInfo
from ._locks import StoreLocks as StoreLocks
from ._locks import checking_lock as checking_lock
from ._locks import network_filesystem as network_filesystem
from ._locks import pruning_lock as pruning_lock
from ._locks import writing_lock as writing_lock
from ._prune import GarbageCollector as GarbageCollector
from ._prune import PruneStats as PruneStats
from ._reachability import Reachability as Reachability
from ._reachability import UnreachableWait as UnreachableWait
from ._reader import ChunkReader as ChunkReader
from ._remote import footprint as footprint
from ._remote_spec import RemoteSpec as RemoteSpec
from ._remote_spec import prepare as prepare
from ._remote_spec import prepare_store as prepare_store
from ._remote_spec import spec_from as spec_from
from ._repository import Store as Store
from ._retention import apply_policy as apply_policy
from ._retention import plan_forget as plan_forget
from ._versions import Record as Record
from ._versions import Version as Version
from ._versions import VersionIndex as VersionIndex
from ._versions import merge_lookups as merge_lookups
from ._versions import versions_cache_path as versions_cache_path
from ._versions import versions_of as versions_of
from ._writer import StoreWriter as StoreWriter
