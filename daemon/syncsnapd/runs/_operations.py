"""Snapshot operations inside the daemon: restore, check and prune runs with live progress, and diffs.

A run of an operation is published through the tracker like a snapshot run, with its own steps
(``kind`` ``restore``, ``check`` or ``prune``) and a ``result`` in its terminal event. Restores belong
to a project (their events go out on its stream); check and prune are store-wide (project ``""``, shown
as null) and cover every store of the daemon (``_stores.py``), one after the other within each step,
with a ``stores`` list in their result. Several restores may run at once, beside snapshots of any project; one check or prune at a
time. Disk and CPU work runs in worker threads under a limiter of its own, so the snapshot runs' threads
are never taken. Every run can be cancelled and ends in exactly one terminal event (the lifecycle shared
with snapshot runs: ``_executor.py``, which records each run in the history before its body; the API
awaits :meth:`Operations.wait_recorded` before it answers 202). Requests are refused with :class:`OperationError` codes; no HTTP
here: the API maps codes to statuses (``syncsnapd.api``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import trio

from ..core import Plan, Progress, RunProgress, Step, SyncsnapdError, count_of, human_bytes
from ..engine import DiffError, Restore, RestoreError, check_target, diff_entries, normalize_path, scan_live
from ..store import (
    CheckReport,
    GarbageCollector,
    PruneStats,
    Store,
    StoreCheck,
    StoreError,
    UnknownSnapshotError,
    checking_lock,
    error_code,
    plan_forget,
    pruning_lock,
)
from ._executor import Body, Outcome, Recorder, Run, RunExecutor, RunFailed
from ._restore_version import restore_one_version
from ._scheduler import Scheduler, UnknownProject, new_run_id
from ._stores import location_of
from ._tracker import Tracker

log = logging.getLogger("syncsnapd.operations")

RESTORE_PLAN = Plan("restore", (
    Step("reading", "Reading the snapshot", (0.0, 5.0)),
    Step("restoring", "Restoring files", (5.0, 95.0)),
    Step("finishing", "Setting directory metadata", (95.0, 100.0)),
))
# The fast level spends its time in step 3 (reading the lists of entries); --read-data in step 2.
CHECK_PLAN = Plan("check", (
    Step("checking", "Reading snapshots and indexes", (0.0, 5.0)),
    Step("checking", "Checking packs", (5.0, 80.0)),
    Step("checking", "Checking snapshots' references", (80.0, 100.0)),
))
PRUNE_PLAN = Plan("prune", (
    Step("forgetting", "Applying retention policies", (0.0, 5.0)),
    Step("marking", "Finding the data in use", (5.0, 40.0)),
    Step("repacking", "Repacking partly used packs", (40.0, 90.0)),
    Step("deleting", "Deleting unused packs", (90.0, 100.0)),
))
# Finished operations whose final state GET /api/v1/operations/{run} still answers (older ones are in
# the run history: GET /api/v1/runs/{run}).
RECENT_OPERATIONS = 32
# Worker threads for operations (restore, check, prune, diff), apart from the snapshot runs' threads.
OPERATION_THREADS = 2


class OperationError(SyncsnapdError):
    """A request for an operation is refused before any run starts; ``code`` says why (docs/api.md). What
    a code means in HTTP is the API's business (``syncsnapd.api``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(eq=False)
class _Op:
    kind: str
    run: Run
    last: Progress | None = None
    cleanup: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


def _check_fn(progress: RunProgress) -> Callable[[], None]:
    def check() -> None:
        progress.check_cancelled()
        trio.from_thread.check_cancelled()

    return check


class Operations:
    """Restore, check, prune and diff for one daemon. Start with ``await nursery.start(ops.serve)``.

    Args:
        scheduler: for the projects (their folders, ignore rules and ``keep`` policies).
        exclude: the daemon's own directories (store, state), never restored into and never compared.
        tz: the time zone of the retention policies' days and weeks (local time by default).
        record: writes a new run's row in the history (``History.record_run``), awaited before each run's
            body and by :meth:`wait_recorded`.
        record_end: writes a run's terminal state (``History.record_end``) before it is published.
    """

    def __init__(self, scheduler: Scheduler, tracker: Tracker, *, exclude: tuple[Path, ...] = (),
                 limiter: trio.CapacityLimiter | None = None, tz: tzinfo | None = None,
                 record: Recorder | None = None, record_end: Recorder | None = None) -> None:
        self.store = scheduler.store
        self.stores = scheduler.stores
        self.scheduler = scheduler
        self.tracker = tracker
        self._exclude = exclude
        self._limiter = limiter or trio.CapacityLimiter(OPERATION_THREADS)
        self._tz = tz
        self._running: dict[str, _Op] = {}
        self._recent: OrderedDict[str, Progress] = OrderedDict()
        self._exclusive: _Op | None = None  # the check or prune in progress
        self._record = record
        self._executor = RunExecutor(logger=log, record=record, record_end=record_end)
        self._nursery: trio.Nursery | None = None

    # --- queries -----------------------------------------------------------------------------------

    def busy(self) -> bool:
        return bool(self._running)

    def get(self, run: str) -> Progress | None:
        """The newest published progress of an operation run (running, or among the recent finished)."""
        op = self._running.get(run)
        if op is not None:
            return op.last
        return self._recent.get(run)

    def operations(self) -> list[Progress]:
        """Running operations, then recently finished ones, newest first."""
        running = [op.last for op in self._running.values() if op.last is not None]
        return sorted(running, key=lambda p: p.event_id, reverse=True) + list(reversed(self._recent.values()))

    def cancel(self, run: str, code: str = "cancelled", message: str = "The run was cancelled on request.") -> bool:
        """Cancel a running operation (it ends ``cancelled``). False if no such run is in progress."""
        op = self._running.get(run)
        if op is None:
            return False
        op.run.cancel(code, message)
        return True

    async def wait_recorded(self, run: str) -> None:
        """Wait until the history has ``run``, an operation run just started, before its id is handed to a
        user (bounded by the recorder). Returns at once for a run that has ended, or without a recorder."""
        op = self._running.get(run)
        if op is not None and self._record is not None:
            await self._record(op.run.progress.current())

    # --- serving -----------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run operations until cancelled; those in flight then end ``cancelled`` (code ``shutdown``)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._executor.serve)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def _start(self, kind: str, project: str, plan: Plan, body: Body, cleanup: contextlib.ExitStack | None = None
               ) -> Progress:
        if self._nursery is None:
            raise OperationError("unavailable", "The daemon is starting or stopping.")
        holder: list[_Op] = []

        def publish(progress: Progress) -> None:
            holder[0].last = self.tracker.publish(progress).progress

        op = _Op(kind, Run(RunProgress(project, new_run_id(), publish, plan=plan, trigger="api"), publish))
        holder.append(op)
        if cleanup is not None:
            op.cleanup.push(cleanup.pop_all())
        self._running[op.run.id] = op
        op.run.announce()
        self._nursery.start_soon(self._execute, op, body)
        assert op.last is not None
        return op.last

    async def _execute(self, op: _Op, body: Body) -> None:
        async def run_body(progress: RunProgress) -> Outcome:
            try:
                return await body(progress)
            except StoreError as exc:
                # store_locked (another machine holds the store's lock), store_unreachable..., else store_error.
                raise RunFailed(error_code(exc), str(exc)) from exc

        try:
            await self._executor.execute(op.run, run_body)
        finally:
            op.cleanup.close()  # releases the snapshot a restore pinned
            del self._running[op.run.id]
            if self._exclusive is op:
                self._exclusive = None
            if op.last is not None:
                self._recent[op.run.id] = op.last
                while len(self._recent) > RECENT_OPERATIONS:
                    self._recent.popitem(last=False)

    async def _thread(self, fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    # --- helpers -----------------------------------------------------------------------------------

    def _known(self, project: str) -> None:
        try:
            self.scheduler.project(project)
        except UnknownProject:
            raise OperationError("not_found", f"No project named {project!r}.") from None

    async def _resolve(self, project: str, snapshot: str) -> tuple[str, Store]:
        """A snapshot id of ``project`` (``latest`` is its newest snapshot) and the store holding it."""
        snaps = await self._thread(lambda: self.stores.list_snapshots(project))
        if snapshot == "latest":
            if not snaps:
                raise OperationError("snapshot_unknown", f"Project {project!r} has no snapshot yet.")
            snapshot = str(snaps[-1].id)
        store = await self._thread(lambda: self.stores.find(snapshot, project))
        if store is None and await self._thread(self._refresh_buckets):
            store = await self._thread(lambda: self.stores.find(snapshot, project))
        if store is None:
            raise OperationError("snapshot_unknown", f"Project {project!r} has no snapshot {snapshot!r}.")
        return snapshot, store

    def _refresh_buckets(self) -> bool:
        """An id not seen here may be another machine's snapshot taken since the last refresh: bring every
        S3 store's lists up to date with its bucket (blocking). Whether any of them changed."""
        changed = False
        for store in self.stores.all():
            if store.remote is not None:
                try:
                    changed = store.refresh() or changed
                except StoreError as exc:  # unreachable: the cached lists answer
                    log.warning("cannot refresh the lists of %s: %s", location_of(store), exc)
        return changed

    def _forbidden_target(self, target: Path) -> bool:
        real = Path(os.path.realpath(target))
        for own in (*(s.root for s in self.stores.all()), *self._exclude):
            mine = Path(os.path.realpath(own))
            if real == mine or real.is_relative_to(mine):
                return True
        return False

    # --- diff --------------------------------------------------------------------------------------

    async def diff(self, project: str, before: str, after: str = "live", *, limit: int = 10_000) -> dict[str, Any]:
        """What changed from snapshot ``before`` to snapshot ``after`` or to the live folder (``live``).

        Raises:
            OperationError: unknown project or snapshot (404), folder missing (409), damaged store (500).
        """
        self._known(project)
        before, store = await self._resolve(project, before)
        later = store
        if after != "live":
            after, later = await self._resolve(project, after)
        config = self.scheduler.project(project)
        with store.pinned([before]), later.pinned([] if after == "live" else [after]):

            def work() -> dict[str, Any]:
                check = trio.from_thread.check_cancelled
                old = store.load_entries(before)
                if after == "live":
                    live = scan_live(str(config.path), {e.path: e for e in old}, chunker=store.chunker,
                                     ignore=config.ignore_fn(self._exclude), check=check,
                                     chunk_id=store.chunk_id)
                    return diff_entries(old, live, from_=before, to="live").to_json(limit)
                return diff_entries(old, later.load_entries(after), from_=before, to=after).to_json(limit)

            try:
                result: dict[str, Any] = await self._thread(work)
            except DiffError as exc:
                raise OperationError(exc.code, exc.message) from exc
            except StoreError as exc:
                raise OperationError("store_error", f"The snapshots cannot be read: {exc}") from exc
        return result

    # --- restore -----------------------------------------------------------------------------------

    async def start_restore(self, project: str, snapshot: str, target: str, *, paths: Sequence[str] = (),
                            overwrite: bool = False) -> Progress:
        """Validate a restore request and start its run; returns its first progress event.

        Raises:
            OperationError: ``not_found``, ``snapshot_unknown`` (404), ``target_invalid``,
                ``target_forbidden``, ``path_invalid`` (400), ``target_not_empty`` (409).
        """
        self._known(project)
        if not target or "\0" in target or not target.startswith("/"):
            raise OperationError("target_invalid", "target must be an absolute path.")
        target_path = Path(target)
        try:
            wanted = [normalize_path(p) for p in paths]
        except RestoreError as exc:
            raise OperationError(exc.code, exc.message) from None
        if await self._thread(lambda: self._forbidden_target(target_path)):
            raise OperationError("target_forbidden",
                                 f"{target_path} is inside the daemon's store or state directory.")
        cleanup = contextlib.ExitStack()
        with cleanup:
            sid, store = await self._resolve(project, snapshot)
            # Pinned from now on: a prune cannot forget it before or while it is restored.
            cleanup.enter_context(store.pinned([sid]))
            if not any(s.id == sid for s in await self._thread(lambda: store.list_snapshots(project))):
                raise OperationError("snapshot_unknown", f"Snapshot {sid} was just forgotten by a prune.")
            try:
                await self._thread(lambda: check_target(target_path, overwrite=overwrite))
            except RestoreError as exc:
                raise OperationError(exc.code, exc.message) from None

            async def body(progress: RunProgress) -> Outcome:
                return await self._restore(progress, store, sid, target_path, wanted, overwrite)

            return self._start("restore", project, RESTORE_PLAN, body, cleanup)
        raise AssertionError("unreachable")

    async def _restore(self, progress: RunProgress, store: Store, sid: str, target: Path, paths: list[str],
                       overwrite: bool) -> Outcome:
        restore = Restore(store, sid, target, paths=paths, overwrite=overwrite, check=_check_fn(progress),
                          progress=lambda files, nbytes: progress.add_done(files=files, nbytes=nbytes))
        try:
            try:
                files, nbytes = await self._thread(restore.load)
                progress.set_step(2, files_total=files, bytes_total=nbytes)
                await self._thread(restore.write)
                progress.set_step(3, files_total=sum(1 for e in restore.entries if e.kind == "dir"))
                stats = await self._thread(restore.finish)
            finally:
                restore.close()
        except UnknownSnapshotError as exc:
            raise RunFailed("snapshot_unknown", str(exc)) from exc
        except RestoreError as exc:
            raise RunFailed(exc.code, str(exc)) from exc
        result = {"snapshot": sid, "target": str(target), "paths": paths, "files": stats.files, "dirs": stats.dirs,
                  "symlinks": stats.symlinks, "bytes": stats.bytes}
        return Outcome(f"Restored snapshot {sid} into {target}: {count_of(stats.files, 'file')} "
                       f"({human_bytes(stats.bytes)}), {count_of(stats.dirs, 'directory', 'directories')}, "
                       f"{count_of(stats.symlinks, 'symlink')}",
                       result=result)

    async def restore_version(self, project: str, path: str, version: str, *, to: str | None = None,
                              overwrite: bool = False) -> dict[str, Any]:
        """Restore one version of one path next to the live file, or to ``to`` (``_restore_version.py``)."""
        return await restore_one_version(self, project, path, version, to=to, overwrite=overwrite)

    # --- check and prune ---------------------------------------------------------------------------

    def _claim(self) -> None:
        op = self._exclusive
        if op is not None:
            raise OperationError("busy", f"A {op.kind} run ({op.run.id}) is in progress; one check "
                                              "or prune runs at a time.")

    def start_check(self, *, read_data: bool = False) -> Progress:
        """Start a check run (store-wide). Raises OperationError ``busy`` during a check or prune."""
        self._claim()

        async def body(progress: RunProgress) -> Outcome:
            return await self._check(progress, read_data)

        first = self._start("check", "", CHECK_PLAN, body)
        assert first.run is not None
        self._exclusive = self._running[first.run]
        return first

    async def _check(self, progress: RunProgress, read_data: bool) -> Outcome:
        # Every store shared with other processes under its shared lock (refused, store_locked, naming
        # the holder, while a prune elsewhere holds its exclusive lock): store/_locks.checking_lock.
        locks = contextlib.ExitStack()
        try:
            for shared in self.stores.all():
                if shared.locks is not None:
                    await self._thread(functools.partial(locks.enter_context, checking_lock(shared)))
            return await self._check_locked(progress, read_data)
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(locks.close)

    async def _check_locked(self, progress: RunProgress, read_data: bool) -> Outcome:
        check = _check_fn(progress)
        checkers = [(location_of(store), StoreCheck(store, read_data=read_data)) for store in self.stores.all()]
        scans = [await self._thread(checker.scan) for _, checker in checkers]
        progress.set_step(2, files_total=sum(s[1] for s in scans), bytes_total=sum(s[2] for s in scans))
        def done(p: int, b: int) -> None:
            progress.add_done(files=p, nbytes=b)

        for _, checker in checkers:
            await self._thread(functools.partial(checker.verify_packs, done, check))
        progress.set_step(3, files_total=sum(s[0] for s in scans))
        reports = [(where, await self._thread(functools.partial(checker.verify_snapshots, done, check)))
                   for where, checker in checkers]
        result, report = _merged_checks(reports)
        level = "data re-hashed" if read_data else "structure and references"
        summary = (f"{count_of(report.snapshots, 'snapshot')}, {count_of(report.packs, 'pack')}, "
                   f"{count_of(report.chunks, 'chunk')} ({level})")
        if not report.ok:
            raise RunFailed("problems_found", f"{count_of(len(report.problems), 'problem')}, "
                                            f"{count_of(len(report.damaged), 'damaged snapshot')} in {summary}",
                            result)
        return Outcome(f"Check found no problems in {summary}", result=result)

    def start_prune(self, *, dry_run: bool = False) -> Progress:
        """Start a prune run (store-wide). Raises OperationError ``busy`` during a check or prune."""
        self._claim()

        async def body(progress: RunProgress) -> Outcome:
            return await self._prune(progress, dry_run)

        first = self._start("prune", "", PRUNE_PLAN, body)
        assert first.run is not None
        self._exclusive = self._running[first.run]
        return first

    async def _prune(self, progress: RunProgress, dry_run: bool) -> Outcome:
        # Every store shared with other processes (an S3 store, or one on a network filesystem): its
        # exclusive lock for the whole prune, refused (store_locked, naming the holder) while another process
        # writes a snapshot there. This daemon's own runs go on meanwhile, coordinated in memory.
        locks = contextlib.ExitStack()
        try:
            if not dry_run:
                for shared in self.stores.all():
                    if shared.locks is not None:
                        await self._thread(functools.partial(locks.enter_context, pruning_lock(shared)))
            return await self._prune_locked(progress, dry_run)
        finally:
            with trio.CancelScope(shield=True):
                await self._thread(locks.close)

    async def _prune_locked(self, progress: RunProgress, dry_run: bool) -> Outcome:
        # Every store in turn within each step: each its own retention decisions and garbage collection.
        check = _check_fn(progress)
        policies = {pid: self.scheduler.project(pid).keep for pid in self.scheduler.project_ids()}
        stores = self.stores.all()
        listed = [await self._thread(store.list_snapshots) for store in stores]
        plans = [plan_forget(snapshots, policies, tz=self._tz) for snapshots in listed]
        forgets = [[sid for d in decisions.values() for sid in d.forget] for decisions in plans]
        progress.set_step(1, files_total=sum(map(len, forgets)))
        for i, store in enumerate(stores):
            if not dry_run and forgets[i]:
                forgets[i] = await self._thread(functools.partial(store.forget, forgets[i]))
            progress.add_done(files=len(forgets[i]))
        forget = [sid for f in forgets for sid in f]
        gcs = [GarbageCollector(store, dry_run=dry_run, exclude=f if dry_run else (), check=check)
               for store, f in zip(stores, forgets, strict=True)]
        def done(p: int, b: int = 0) -> None:
            progress.add_done(files=p, nbytes=b)

        try:
            progress.set_step(2, files_total=sum(map(len, listed)) - len(forget))
            for gc in gcs:
                await self._thread(functools.partial(gc.mark, done))
            planned: list[PruneStats] = [await self._thread(gc.plan) for gc in gcs]
            progress.set_step(3, files_total=sum(s.packs_repacked for s in planned),
                              bytes_total=sum(s.bytes_repacked for s in planned))
            for gc in gcs:
                await self._thread(functools.partial(gc.repack, done))
            progress.set_step(4, files_total=sum(s.packs_deleted + s.packs_repacked for s in planned))
            with trio.CancelScope(shield=True):  # a few unlinks; stopping halfway would only leave work
                for gc in gcs:
                    await self._thread(functools.partial(gc.delete, done))
        finally:
            with trio.CancelScope(shield=True):
                for gc in gcs:
                    await self._thread(gc.close)
        result, stats = _merged_prunes(dry_run, stores, forgets, plans, planned)
        if dry_run:
            return Outcome(f"Prune (dry run) would remove {len(forget)} snapshot(s) and "
                           f"{stats.packs_deleted} unused pack(s), repack {stats.packs_repacked}, and free "
                           f"{human_bytes(max(0, stats.bytes_freed))}", result=result)
        return Outcome(f"Prune removed {len(forget)} snapshot(s), {stats.packs_deleted} unused pack(s) and "
                       f"repacked {stats.packs_repacked}; freed {human_bytes(max(0, stats.bytes_freed))}",
                       result=result)


def _merged_checks(reports: list[tuple[str, CheckReport]]) -> tuple[dict[str, Any], CheckReport]:
    """One check result for several stores: the counts summed, each problem and damaged snapshot with
    the ``store`` it is in, and ``stores``: each store's own counts."""
    total = CheckReport(read_data=reports[0][1].read_data)
    problems: list[dict[str, Any]] = []
    damaged: list[dict[str, Any]] = []
    stores: list[dict[str, Any]] = []
    for where, r in reports:
        for name in ("snapshots", "packs", "chunks", "bytes_read", "unindexed_packs", "tree_groups"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.problems += r.problems
        total.damaged += r.damaged
        problems += [{**p.to_json(), "store": where} for p in r.problems]
        damaged += [{**d.to_json(), "store": where} for d in r.damaged]
        own = r.to_json()
        stores.append({"store": where, **{k: own[k] for k in ("ok", "snapshots", "packs", "chunks")},
                       "problems": len(r.problems), "damaged": len(r.damaged)})
    return {**total.to_json(), "problems": problems, "damaged": damaged, "stores": stores}, total


def _merged_prunes(dry_run: bool, stores: list[Store], forgets: list[list[str]], plans: list[dict[str, Any]],
                   planned: list[PruneStats]) -> tuple[dict[str, Any], PruneStats]:
    """One prune result for several stores: the counts summed, and ``stores``: each store's own."""
    total = PruneStats()
    projects: dict[str, dict[str, int]] = {}
    per_store: list[dict[str, Any]] = []
    for store, forget, decisions, stats in zip(stores, forgets, plans, planned, strict=True):
        for name, value in vars(stats).items():
            setattr(total, name, getattr(total, name) + value)
        for p, d in decisions.items():
            counts = projects.setdefault(p, {"kept": 0, "removed": 0})
            counts["kept"] += len(d.keep)
            counts["removed"] += len(d.forget)
        per_store.append({"store": location_of(store), "snapshots_removed": len(forget), **stats.to_json()})
    result = {"dry_run": dry_run, "snapshots_removed": [sid for f in forgets for sid in f], "projects": projects,
              **total.to_json(), "stores": per_store}
    return result, total

