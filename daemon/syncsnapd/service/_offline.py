"""The offline store commands behind ``syncsnapd snapshots|diff|restore|check|prune``.

All but ``prune`` open the store read-only (no lock, no clean-up), so they work while the daemon runs.
``prune`` deletes data and takes the store's lock, so it refuses while a daemon holds the store (prune
through the daemon then: ``syncsnap prune``); ``prune --dry-run`` only reads, so it runs then too. A
snapshot may be named ``latest``: the newest snapshot of the project (see :func:`resolve_latest`). Each returns the process exit code: 0 success, 1
problems found in the store (``check``; ``restore`` and ``diff`` of a damaged snapshot, ``restore`` of
damaged data), 2 the command could not do its job (no store, unknown snapshot id, target not empty...);
the reason is printed as one sentence. Snapshot files and lists of entries are input like any other:
whatever they hold, the answer is a sentence and an exit code, never a traceback.

An encrypted store is opened with the key the configuration gives (:func:`store_key`: ``key_file``, else
``SYNCSNAP_PASSWORD_FILE``, else systemd's credential ``syncsnap-password``; the CLI asks on a terminal when
there is none); a wrong or missing key is exit 2. ``init`` creates the store (:func:`run_init`: encrypted by
default on S3, not locally) and ``key`` manages its key files (:func:`run_key`, like restic's); both work
on the daemon's store or, with ``--project P``, on P's own (with its ``s3`` settings and ``key_file``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import tzinfo
from pathlib import Path
from typing import TextIO

from ..core import KeepPolicy, ProjectConfig, count_of, human_bytes
from ..engine import Diff, DiffError, RestoreError, diff_entries, restore_snapshot, scan_live
from ..store import (
    CorruptDataError,
    Entry,
    GarbageCollector,
    MasterKey,
    NewStore,
    Passphrase,
    Store,
    StoreError,
    StoreKey,
    StoreKeyError,
    StoreLocked,
    UnknownSnapshotError,
    passphrase_source,
    plan_forget,
    pruning_lock,
    read_master_key_file,
    write_master_key_file,
)

__all__ = ["NO_KEY_FOR_S3", "daemon_new_store", "is_encrypted", "run_check", "run_diff", "run_init", "run_key",
           "run_prune", "run_restore", "run_snapshots", "store_key"]

LATEST = "latest"


def _open(store_root: Path, out: TextIO, key: StoreKey | None = None) -> Store | None:
    try:
        return Store.open(Path(store_root), writable=False, key=key)
    except StoreError as exc:
        print(f"Cannot open the store: {exc}.", file=out)
        return None


def display_path(path: str) -> str:
    """A path as printed on a terminal: control characters and undecodable bytes escaped."""
    if path.isprintable():
        return path
    return repr(path)[1:-1]


def run_snapshots(store_root: Path, out: TextIO, *, project: str | None = None, key: StoreKey | None = None) -> int:
    """Print a table of the snapshots (oldest first): id, project, host ("-": not recorded), time, files,
    bytes."""
    store = _open(store_root, out, key)
    if store is None:
        return 2
    with store:
        snaps = store.list_snapshots(project)
    if not snaps:
        print("No snapshots" + (f" of project {project!r}." if project is not None else "."), file=out)
        return 0
    rows = [("ID", "PROJECT", "HOST", "TIME", "FILES", "BYTES")]
    rows += [(s.id, s.project, s.host or "-", s.time, f"{s.files:,}", human_bytes(s.bytes)) for s in snaps]
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for r in rows:
        left = "  ".join(c.ljust(w) for c, w in zip(r[:4], widths[:4], strict=True))
        right = "  ".join(c.rjust(w) for c, w in zip(r[4:], widths[4:], strict=True))
        print(f"{left}  {right}", file=out)
    return 0


# Restore errors that are problems of the store (exit 1) rather than of the request (exit 2).
_DAMAGE_CODES = frozenset({"snapshot_damaged", "data_damaged", "target_outside"})


def _unknown(snapshot_id: str, store_root: Path) -> str:
    return f"There is no snapshot {snapshot_id!r} in {store_root}; `syncsnapd snapshots` lists them."


class _Ambiguous(Exception):
    """``latest`` cannot be resolved; the message is the sentence to print."""


def resolve_latest(store: Store, snapshot_id: str, project: str | None, configured: Sequence[str] = ()) -> str:
    """``snapshot_id``, or for ``latest`` the id of the newest snapshot of ``project``. Without
    ``project``: of the only project that has snapshots, else of the only configured one that has.

    Raises:
        _Ambiguous: no project given and several have snapshots, or the project has none.
    """
    if snapshot_id != LATEST:
        return snapshot_id
    if project is None:
        have = sorted({s.project for s in store.list_snapshots()})
        mine = [p for p in have if p in configured]
        if len(have) == 1 or len(mine) == 1:
            project = have[0] if len(have) == 1 else mine[0]
        elif not have:
            raise _Ambiguous(f"There is no `latest` snapshot: {store.root} has no snapshots yet.")
        else:
            raise _Ambiguous(f"`latest` of which project? The store has snapshots of {', '.join(have)}: add "
                             f"--project {have[0]}" + (f" (or {', '.join(have[1:])})." if len(have) > 1 else "."))
    info = store.latest(project)
    if info is None:
        raise _Ambiguous(f"There is no `latest` snapshot of project {project!r}; `syncsnapd snapshots` lists "
                         "the snapshots.")
    return info.id


def run_restore(store_root: Path, snapshot_id: str, target: Path, out: TextIO, *, paths: Sequence[str] = (),
                overwrite: bool = False, latest_of: str | None = None, configured: Sequence[str] = (),
                key: StoreKey | None = None) -> int:
    """Restore ``snapshot_id`` (or ``paths`` inside it) into ``target`` (new or empty directory, unless
    ``overwrite``). ``latest`` (of project ``latest_of``): see :func:`resolve_latest`."""
    store = _open(store_root, out, key)
    if store is None:
        return 2
    with store:
        try:
            snapshot_id = resolve_latest(store, snapshot_id, latest_of, configured)
            stats = restore_snapshot(store, snapshot_id, Path(target), paths=paths, overwrite=overwrite)
        except _Ambiguous as exc:
            print(exc, file=out)
            return 2
        except UnknownSnapshotError:
            print(_unknown(snapshot_id, store_root), file=out)
            return 2
        except RestoreError as exc:
            print(f"Cannot restore: {exc}.", file=out)
            return 1 if exc.code in _DAMAGE_CODES else 2
    print(f"Restored snapshot {snapshot_id} into {target}: {count_of(stats.files, 'file')} "
          f"({human_bytes(stats.bytes)}), {count_of(stats.dirs, 'directory', 'directories')}, "
          f"{count_of(stats.symlinks, 'symlink')}.", file=out)
    return 0


def print_diff(diff: Diff, out: TextIO) -> None:
    """The readable form: one line per change (``+`` added, ``-`` removed, ``M`` modified), then a summary."""
    def name(path: str, kind: str) -> str:
        return display_path(path) + ("/" if kind == "dir" else "@" if kind == "symlink" else "")

    lines: list[tuple[str, str]] = []
    for s in diff.added:
        lines.append((s.path, f"+ {name(s.path, s.kind)}" + (f"  ({human_bytes(s.size)})" if s.kind == "file" else "")))
    for s in diff.removed:
        lines.append((s.path, f"- {name(s.path, s.kind)}" + (f"  ({human_bytes(s.size)})" if s.kind == "file" else "")))
    for m in diff.modified:
        what: list[str] = []
        if "type" in m.change:
            what.append(f"type {m.kind_before} -> {m.kind_after}")
        if "content" in m.change:
            what.append("content" + (f" {human_bytes(m.size_before)} -> {human_bytes(m.size_after)}"
                                     if m.kind_after == "file" else ""))
        if "mode" in m.change:
            what.append(f"mode {m.mode_before:04o} -> {m.mode_after:04o}")
        lines.append((m.path, f"M {name(m.path, m.kind_after)}  ({', '.join(what)})"))
    for _, line in sorted(lines):
        print(line, file=out)
    sm = diff.summary()
    print(f"{sm['added']:,} added, {sm['removed']:,} removed, {sm['modified']:,} modified, {sm['unchanged']:,} "
          f"unchanged ({diff.from_} -> {diff.to}); files {human_bytes(sm['size_before'])} -> "
          f"{human_bytes(sm['size_after'])}.", file=out)


class _Unknown(Exception):
    def __init__(self, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id


def _load(store: Store, snapshot_id: str) -> list[Entry]:
    try:
        return store.load_entries(snapshot_id)
    except UnknownSnapshotError:
        raise _Unknown(snapshot_id) from None


def run_diff(store_root: Path, before: str, after: str | None, out: TextIO, *, as_json: bool = False,
             projects: Sequence[ProjectConfig] = (), exclude: tuple[Path, ...] = (), latest_of: str | None = None,
             key: StoreKey | None = None) -> int:
    """Print what changed from snapshot ``before`` to snapshot ``after``, or to the live folder when
    ``after`` is None: the folder of the project in ``projects`` (with its ignore rules), else the folder
    the snapshot was taken of. ``latest`` (of project ``latest_of``): see :func:`resolve_latest`."""
    store = _open(store_root, out, key)
    if store is None:
        return 2
    with store:
        try:
            configured = [p.id for p in projects]
            before = resolve_latest(store, before, latest_of, configured)
            if after is not None and after != "live":
                after = resolve_latest(store, after, latest_of, configured)
            old = _load(store, before)
            if after is not None and after != "live":
                diff = diff_entries(old, _load(store, after), from_=before, to=after)
            else:
                project = next((p for p in projects if p.id == store.catalog.record(before).info.project), None)
                if project is not None:
                    root, ignore = str(project.path), project.ignore_fn(exclude)
                else:
                    root, ignore = store.snapshot_root(before), None
                reference = {e.path: e for e in old}
                live = scan_live(root, reference, chunker=store.chunker, ignore=ignore, chunk_id=store.chunk_id)
                diff = diff_entries(old, live, from_=before, to="live")
        except _Unknown as exc:
            print(_unknown(exc.snapshot_id, store_root), file=out)
            return 2
        except _Ambiguous as exc:
            print(exc, file=out)
            return 2
        except DiffError as exc:
            print(f"Cannot compare with the live folder: {exc}", file=out)
            return 2
        except CorruptDataError as exc:
            print(f"Cannot compare: {exc}.", file=out)
            return 1
        except StoreError as exc:
            print(f"Cannot read the snapshots: {exc}.", file=out)
            return 2
    if as_json:
        print(json.dumps(diff.to_json(limit=len(diff.added) + len(diff.removed) + len(diff.modified))), file=out)
    else:
        print_diff(diff, out)
    return 0


def print_check(report_json: Mapping[str, object], out: TextIO) -> None:
    """Print a check report (its JSON form, as the daemon's check run carries it in ``result``)."""
    problems = report_json["problems"]
    damaged = report_json["damaged"]
    assert isinstance(problems, list) and isinstance(damaged, list)
    for p in problems:
        where = f" in pack {p['pack']}" if p["pack"] else ""
        detail = f" ({p['detail']})" if p["detail"] else ""
        print(f"{p['kind']}: {p['object']} {p['id']}{where}{detail}", file=out)
        for d in p["damages"]:
            if d["listing"]:
                print(f"  damages snapshot {d['snapshot']}: part of its list of files is lost", file=out)
            if d["files"]:
                more = f" and {d['files'] - len(d['paths'])} more" if d["files"] > len(d["paths"]) else ""
                print(f"  damages snapshot {d['snapshot']}: {d['files']} file(s): "
                      f"{', '.join(repr(x) for x in d['paths'])}{more}", file=out)
    for d in damaged:
        more = f" and {d['files'] - len(d['paths'])} more" if d["files"] > len(d["paths"]) else ""
        lost = "; part of its list of files is lost" if d["listing"] else ""
        print(f"damaged: snapshot {d['snapshot']}: {d['files']} file(s) cannot be fully restored"
              + (f": {', '.join(repr(x) for x in d['paths'])}{more}" if d["files"] else "") + lost, file=out)
    read = (f" ({human_bytes(int(str(report_json['bytes_read'])))} read)" if report_json["read_data"]
            else " (data not read; --read-data re-hashes it)")
    summary = (f"Checked {count_of(int(str(report_json['snapshots'])), 'snapshot')}, "
               f"{count_of(int(str(report_json['packs'])), 'pack')}, "
               f"{count_of(int(str(report_json['chunks'])), 'chunk')}{read}")
    if report_json["ok"]:
        print(f"{summary}: no problems found.", file=out)
    else:
        print(f"{summary}: {count_of(len(problems), 'problem')}, {count_of(len(damaged), 'damaged snapshot')}.",
              file=out)


def run_check(store_root: Path, out: TextIO, *, read_data: bool = False, key: StoreKey | None = None) -> int:
    """Verify the store; print each problem with what it damages. Exit code 0 when clean, 1 when problems
    were found. Without ``read_data`` only the structure is checked (see :class:`StoreCheck`)."""
    store = _open(store_root, out, key)
    if store is None:
        return 2
    with store:
        try:
            report = store.check(read_data=read_data)
        except StoreLocked as exc:  # a prune runs elsewhere: what it deletes would look missing
            print(f"Cannot check: {exc}.", file=out)
            return 2
    print_check(report.to_json(), out)
    return 0 if report.ok else 1


def run_prune(store_root: Path, out: TextIO, *, policies: Mapping[str, KeepPolicy | None], dry_run: bool = False,
              tz: tzinfo | None = None, remote: str | None = None, key: StoreKey | None = None) -> int:
    """Forget snapshots as the projects' ``keep`` policies say, then delete the data no snapshot needs.

    Opens the store for writing: refused while the daemon runs (prune through the daemon then, with
    ``syncsnap prune``). A dry run only reads: it works while the daemon runs. An S3 store (``remote``: its
    URL) is pruned under its exclusive lock, refused while another machine writes a snapshot.
    """
    try:
        store = Store.open(Path(store_root), writable=not dry_run, key=key)
    except StoreError as exc:
        hint = " Prune through the daemon instead: `syncsnap prune`." if "in use" in str(exc) else ""
        print(f"Cannot open the store: {exc}.{hint}", file=out)
        return 2
    with store:
        decisions = plan_forget(store.list_snapshots(), policies, tz=tz)
        forget = [sid for d in decisions.values() for sid in d.forget]
        verb = "would forget" if dry_run else "forgetting"
        for project, d in decisions.items():
            print(f"{project}: keeping {len(d.keep)}, {verb} {len(d.forget)}", file=out)
            for sid in d.forget:
                print(f"  - {sid}", file=out)
        try:
            with contextlib.ExitStack() as lock:
                if not dry_run:
                    lock.enter_context(pruning_lock(store))  # S3: one exclusive lock for forget and prune
                    forget = store.forget(forget)
                with GarbageCollector(store, dry_run=dry_run, exclude=forget if dry_run else ()) as gc:
                    gc.mark()
                    gc.plan()
                    gc.repack()
                    gc.delete()
                    stats = gc.stats
        except StoreError as exc:
            print(f"Cannot prune: {exc}.", file=out)
            return 2
    verb2 = "Would delete" if dry_run else "Deleted"
    print(f"{verb2} {stats.packs_deleted} unused packs and repack {stats.packs_repacked} partly used ones "
          f"({human_bytes(stats.bytes_repacked)} copied); {'would free' if dry_run else 'freed'} "
          f"{human_bytes(max(0, stats.bytes_freed))}.", file=out)
    return 0


# --- encryption: the key of a store, `init`, `key` ------------------------------------------------------

NO_KEY_FOR_S3 = ("a new S3 store is encrypted by default, and no passphrase was given: set SYNCSNAP_PASSWORD_FILE "
                 "to a file holding one (or give systemd's credential syncsnap-password, or key_file = ... in "
                 "[daemon]), or create the store first with `syncsnapd init` (it asks for a passphrase), or "
                 "with `syncsnapd init --no-encrypt` for a store that is not encrypted")


def store_key(key_file: Path | None, env: Mapping[str, str] = os.environ) -> StoreKey | None:
    """The key the configuration gives: the master key in ``key_file`` when set, else a passphrase from
    ``SYNCSNAP_PASSWORD_FILE`` or systemd's credential ``syncsnap-password``; None when there is none.

    Raises:
        StoreKeyError: the key file or passphrase file is set but unusable (the message says why).
    """
    if key_file is not None:
        return read_master_key_file(key_file)
    return passphrase_source(env)


def daemon_new_store(key: StoreKey | None, *, s3: bool) -> NewStore:
    """What the daemon's store is if its start creates it: on S3 encrypted (refused when there is no key:
    :data:`NO_KEY_FOR_S3`), locally not encrypted (``syncsnapd init --encrypt`` makes an encrypted one)."""
    if not s3:
        return NewStore()
    if key is None:
        return NewStore(refuse=NO_KEY_FOR_S3)
    if isinstance(key, MasterKey):
        return NewStore(master=key)
    return NewStore(master=MasterKey.generate(), passphrase=key)


def is_encrypted(store_root: Path) -> bool:
    """Whether the store's (for S3: cached) config.json names a cipher."""
    try:
        doc = json.loads((Path(store_root) / "config.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("encryption", "none") != "none"


def _exists(store_root: Path, s3: bool) -> bool:
    if not s3:
        return (Path(store_root) / "config.json").exists()
    try:
        Store.open(Path(store_root), writable=False).close()
    except StoreKeyError:
        return True  # an encrypted store
    except StoreError:
        return False  # none (or the bucket cannot be reached: creating it says so)
    return True


def run_init(store_root: Path, out: TextIO, *, where: str, s3: bool, encrypt: bool | None = None,
             key_file: Path | None = None, passphrase: Passphrase | None = None,
             ask: Callable[[], Passphrase] | None = None, shared_key_file: bool = False) -> int:
    """Create the store: encrypted when ``encrypt`` (default: on S3 only), with a first key file opened by
    ``passphrase`` (else one from ``ask()``, else none) and the master key written to ``key_file`` when
    configured. ``shared_key_file``: ``key_file`` is the daemon's, which a project without one of its own
    shares; when it exists, the new store is encrypted with the master key it holds (as the daemon does
    when it makes that project's store itself). Never touches an existing store."""
    encrypt = s3 if encrypt is None else encrypt
    nothing = "Nothing was changed."
    if _exists(store_root, s3):
        print(f"There is already a store at {where}. {nothing}", file=out)
        return 2
    master = None
    if encrypt and shared_key_file and key_file is not None and key_file.exists():
        try:
            master = read_master_key_file(key_file)
        except StoreKeyError as exc:
            print(f"Cannot create the store: {exc}. {nothing}", file=out)
            return 2
        passphrase = None
    elif encrypt:
        if key_file is not None and key_file.exists():
            print(f"Cannot create the store: key_file {key_file} exists (the key of another store?); move it away "
                  f"or configure a new path. {nothing}", file=out)
            return 2
        try:
            if passphrase is None and ask is not None:
                passphrase = ask()
        except StoreKeyError as exc:
            print(f"Cannot create the store: {exc}.", file=out)
            return 2
        if passphrase is None and key_file is None:
            print("Cannot create an encrypted store without a passphrase: set SYNCSNAP_PASSWORD_FILE to a file "
                  "holding one, run `syncsnapd init` on a terminal to type one, or set key_file = ... in [daemon] "
                  f"(or `syncsnapd init --no-encrypt`). {nothing}", file=out)
            return 2
        master = MasterKey.generate()
    try:
        with Store.open(Path(store_root), writable=True, key=master,
                        create=NewStore(master=master, passphrase=passphrase)) as store:
            created, cipher, key_id = store.created, store.config.encryption, store.list_keys() if master else []
    except StoreError as exc:
        print(f"Cannot create the store: {exc}.", file=out)
        return 2
    if not created:
        print(f"There is already a store at {where}. {nothing}", file=out)
        return 2
    if master is None:
        print(f"Created a store at {where} (not encrypted).", file=out)
        return 0
    print(f"Created an encrypted store at {where} ({cipher}).", file=out)
    if key_id:
        print(f"Key {key_id[0].id[:8]} opens it with {passphrase.source if passphrase else 'the passphrase'}: "
              "without that passphrase (or another key) its data cannot be read.", file=out)
    if shared_key_file and key_file is not None and not key_id:
        print(f"Its master key is the one in key_file {key_file}, which the daemon's store shares (this project "
              "has no key_file of its own).", file=out)
        return 0
    if key_file is not None:
        try:
            write_master_key_file(key_file, master)
        except StoreKeyError as exc:
            print(f"Cannot write the key file: {exc}.", file=out)
            return 2
        print(f"Wrote its master key to {key_file} (0600): keep a copy in a safe place.", file=out)
    return 0


KEY_ACTIONS = ("list", "add", "remove", "passwd", "export")


def run_key(store_root: Path, out: TextIO, action: str, arg: str | None = None, *, key: StoreKey | None = None,
            where: str | None = None, key_file_in: str = "[daemon]",
            new_passphrase: Callable[[], Passphrase] | None = None) -> int:
    """``syncsnapd key list|add|remove ID|passwd|export FILE`` on the store's key files. ``where``: the
    store as the user knows it (its URL for S3; default ``store_root``); ``key_file_in``: the table whose
    ``key_file`` would open the store (named by ``export``).

    ``add`` and ``passwd`` take the new passphrase from ``new_passphrase()``. They and ``remove`` work
    while the daemon runs (key files are written once, never changed: no lock is needed).
    """
    try:
        new = new_passphrase() if action in ("add", "passwd") and new_passphrase is not None else None
    except StoreKeyError as exc:
        print(f"Cannot {action} a key: {exc}.", file=out)
        return 2
    if action in ("add", "passwd") and new is None:
        print("No new passphrase: give --new-password-file FILE, or run on a terminal to type it.", file=out)
        return 2
    store = _open(store_root, out, key)
    if store is None:
        return 2
    with store:
        if not store.encrypted:
            print(f"The store at {where or store_root} is not encrypted: it has no keys.", file=out)
            return 2
        try:
            if action == "list":
                rows = [("ID", "USER", "HOST", "CREATED", "SCRYPT N")]
                rows += [(("*" if k.id == store.key_id else " ") + k.id[:8], k.user, k.host, k.created,
                          f"2^{k.scrypt_n.bit_length() - 1}") for k in store.list_keys()]
                widths = [max(len(r[i]) for r in rows) for i in range(5)]
                for r in rows:
                    print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
                if store.key_id is None:
                    print("(opened with the master key of key_file)", file=out)
            elif action == "add":
                assert new is not None
                print(f"Added key {store.add_key(new)[:8]}.", file=out)
            elif action == "remove":
                print(f"Removed key {store.remove_key(arg or '')[:8]}.", file=out)
            elif action == "passwd":
                assert new is not None
                old = store.key_id
                print(f"Changed the passphrase: key {(old or '')[:8]} is replaced by key "
                      f"{store.change_passphrase(new)[:8]}.", file=out)
            else:
                crypto = store.files.crypto
                assert crypto is not None and arg is not None
                write_master_key_file(Path(arg), crypto.key)
                print(f"Wrote the master key to {arg} (0600); `key_file = \"{arg}\"` in {key_file_in} opens "
                      "the store with it. Anyone holding the file can read the store.", file=out)
        except StoreError as exc:
            print(f"Cannot {action} the key: {exc}.", file=out)
            return 2
    return 0
