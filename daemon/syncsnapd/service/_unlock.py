"""``syncsnapd unlock``: remove the stale lock objects of a store shared by several processes.

A store with lock objects (an S3 store, or a local store on a network filesystem; see
``syncsnapd/store/_locks.py``) keeps the lock of a process that died (SIGKILL, power loss) until it is
stale: at once on the host that took it when that process is gone, else after 30 minutes without refresh.
A stale lock blocks nobody; this command removes them (and unreadable lock objects), and lists the locks
still held. ``--remove-all`` removes every lock, live ones included: only when no syncsnapd on any machine
is using the store, since a prune could then delete data a running snapshot relies on.

Exit codes: 0 no live lock remains (or the store has no lock objects), 1 live locks remain (listed),
2 the store cannot be opened or its locks not read or removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..store import Store, StoreError, StoreKey

__all__ = ["run_unlock"]


def run_unlock(store_root: Path, out: TextIO, *, remove_all: bool = False, key: StoreKey | None = None) -> int:
    """Remove the stale locks of the store at ``store_root`` (every lock with ``remove_all``); print what
    was removed and what is still held. Returns the exit code (see the module docstring)."""
    try:
        store = Store.open(Path(store_root), writable=False, key=key)
    except StoreError as exc:
        print(f"Cannot open the store: {exc}.", file=out)
        return 2
    with store:
        locks = store.locks
        if locks is None:
            print(f"The store {store_root} is on a local disk: it has no lock objects (the daemon's lock on it is "
                  "released by the system when the daemon exits). Nothing to do.", file=out)
            return 0
        if remove_all:
            print("Warning: removing every lock, also those of processes still running. If a syncsnapd on any "
                  "machine is writing a snapshot, a prune could now delete data it relies on.", file=out)
        try:
            removed, kept = locks.remove(everything=remove_all)
        except StoreError as exc:
            print(f"Cannot remove the locks of {locks.dir.description}: {exc}.", file=out)
            return 2
    for what in removed:
        print(f"Removed the {what}.", file=out)
    if kept:
        print(f"Kept {len(kept)} lock{'s' if len(kept) != 1 else ''} still held:", file=out)
        for info in kept:
            print(f"  {info.describe()}", file=out)
        print("They go stale 30 minutes after their holder stops refreshing them; `syncsnapd unlock "
              "--remove-all` removes them now.", file=out)
        return 1
    if not removed:
        print(f"No stale locks in {locks.dir.description}.", file=out)
    return 0
