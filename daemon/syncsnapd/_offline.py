"""The offline store commands behind ``syncsnapd snapshots|restore|check``.

They open the store read-only (no lock, no clean-up), so they work while the daemon runs. Each returns
the process exit code: 0 success, 1 problems found (``check``), 2 the command could not do its job (no
store, unknown snapshot id, target not empty...); the reason is printed as one sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ._progress import human_bytes
from ._restore import RestoreError, restore_snapshot
from ._store import Store, StoreError, UnknownSnapshotError

__all__ = ["run_check", "run_restore", "run_snapshots"]


def _open(store_root: Path, out: TextIO) -> Store | None:
    try:
        return Store.open(Path(store_root), writable=False)
    except StoreError as exc:
        print(f"Cannot open the store: {exc}.", file=out)
        return None


def run_snapshots(store_root: Path, out: TextIO, *, project: str | None = None) -> int:
    """Print a table of the snapshots (oldest first): id, project, time, files, bytes."""
    store = _open(store_root, out)
    if store is None:
        return 2
    with store:
        snaps = store.list_snapshots(project)
    if not snaps:
        print("No snapshots" + (f" of project {project!r}." if project is not None else "."), file=out)
        return 0
    rows = [("ID", "PROJECT", "TIME", "FILES", "BYTES")]
    rows += [(s.id, s.project, s.time, f"{s.files:,}", human_bytes(s.bytes)) for s in snaps]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        left = "  ".join(c.ljust(w) for c, w in zip(r[:3], widths[:3], strict=True))
        right = "  ".join(c.rjust(w) for c, w in zip(r[3:], widths[3:], strict=True))
        print(f"{left}  {right}", file=out)
    return 0


def run_restore(store_root: Path, snapshot_id: str, target: Path, out: TextIO) -> int:
    """Restore ``snapshot_id`` into ``target`` (new or empty directory)."""
    store = _open(store_root, out)
    if store is None:
        return 2
    with store:
        try:
            stats = restore_snapshot(store, snapshot_id, Path(target))
        except UnknownSnapshotError:
            print(f"There is no snapshot {snapshot_id!r} in {store_root}; "
                  "`syncsnapd snapshots` lists them.", file=out)
            return 2
        except RestoreError as exc:
            print(f"Cannot restore: {exc}.", file=out)
            return 2
    print(f"Restored snapshot {snapshot_id} into {target}: {stats.files:,} files "
          f"({human_bytes(stats.bytes)}), {stats.dirs:,} directories, {stats.symlinks:,} symlinks.", file=out)
    return 0


def run_check(store_root: Path, out: TextIO, *, read_data: bool = True) -> int:
    """Verify the store; print each problem. Exit code 0 when clean, 1 when problems were found."""
    store = _open(store_root, out)
    if store is None:
        return 2
    with store:
        report = store.check(read_data=read_data)
    for problem in report.problems:
        print(problem, file=out)
    for d in report.damaged:
        more = f" and {d.files - len(d.paths)} more" if d.files > len(d.paths) else ""
        print(f"damaged: snapshot {d.id}: {d.files} file(s) cannot be fully restored: "
              f"{', '.join(repr(p) for p in d.paths)}{more}", file=out)
    summary = (f"Checked {report.snapshots} snapshots, {report.packs} packs, {report.chunks:,} chunks"
               + (f" ({human_bytes(report.bytes_read)} read)" if read_data else " (data not read)"))
    if report.ok:
        print(f"{summary}: no problems found.", file=out)
        return 0
    print(f"{summary}: {len(report.problems)} problem(s), {len(report.damaged)} damaged snapshot(s).",
          file=out)
    return 1
