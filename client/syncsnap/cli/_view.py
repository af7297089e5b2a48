"""How ``syncsnap`` shows progress: a live bar on a terminal (rich), NDJSON everywhere else.

rich is imported only when a terminal view is made: importing ``rich.progress`` takes about 35 ms here,
which scripts reading NDJSON should not pay.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

from .._errors import ProtocolError
from ..models import CheckResult, Progress, PruneResult, RestoreResult
from ._format import human_bytes, plural, short_duration

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress


class View(Protocol):
    def note(self, text: str) -> None: ...
    def show(self, p: Progress) -> None: ...
    def __enter__(self) -> View: ...
    def __exit__(self, *exc: object) -> None: ...


def final_line(p: Progress) -> str:
    """One sentence for a run's end: what the daemon said, with the project (or ``store``) in front."""
    return f"{p.label}: {end_sentence(p)}"


def end_sentence(p: Progress) -> str:
    """How a run ended, composed here from what it produced (its snapshot, its ``result``) so that counts
    read right ("1 file", "2 files"); the daemon's message when there is nothing to compose from."""
    if p.state == "completed" and p.snapshot is not None:
        s = p.snapshot
        line = (f"snapshot {s.id} completed: {plural(s.files, 'file')} ({human_bytes(s.bytes)}), "
                f"{human_bytes(s.bytes_added)} added in {s.duration_seconds:.1f} s")
        if s.warnings:
            line += f", {plural(s.warnings, 'warning')}"
        return line
    if p.kind != "snapshot" and p.result is not None:
        sentence = _operation_sentence(p)
        if sentence:
            return sentence
    if p.error is not None:
        return f"{p.kind} {p.state}: {p.error.message}"
    return p.message


def _operation_sentence(p: Progress) -> str:
    """The end of a restore, check or prune from its ``result`` ("" if it is not one this client knows)."""
    try:
        if p.kind == "restore" and p.state == "completed":
            rr = RestoreResult.from_json(p.result)
            return (f"restored snapshot {rr.snapshot} into {rr.target}: {plural(rr.files, 'file')} "
                    f"({human_bytes(rr.bytes)}), {plural(rr.dirs, 'directory', 'directories')}, "
                    f"{plural(rr.symlinks, 'symlink')}" + (f" (only {', '.join(rr.paths)})" if rr.paths else ""))
        if p.kind == "check" and p.state in ("completed", "failed"):
            cr = CheckResult.from_json(p.result)
            level = "data re-hashed" if cr.read_data else "structure and references"
            scope = (f"{plural(cr.snapshots, 'snapshot')}, {plural(cr.packs, 'pack')}, "
                     f"{plural(cr.chunks, 'chunk')} ({level})")
            if cr.ok:
                return f"check found no problem in {scope}"
            return (f"check failed: {plural(len(cr.problems), 'problem')}, "
                    f"{plural(len(cr.damaged), 'damaged snapshot')} in {scope}")
        if p.kind == "prune" and p.state == "completed":
            pr = PruneResult.from_json(p.result)
            freed = human_bytes(max(0, pr.bytes_freed))
            packs = f"{plural(pr.packs_deleted, 'unused pack')}, {pr.packs_repacked:,} repacked"
            if pr.dry_run:
                return (f"prune (dry run) would remove {plural(len(pr.snapshots_removed), 'snapshot')} and "
                        f"{packs}, and free {freed}")
            return f"prune removed {plural(len(pr.snapshots_removed), 'snapshot')} and {packs}; freed {freed}"
    except ProtocolError:
        pass  # another daemon's result: its message says it
    return ""


def _operation_summary(p: Progress) -> tuple[str, str, str]:
    """The counters shown at the end of a restore, check or prune: what it did, from its ``result``."""
    r = p.result or {}
    try:
        if p.kind == "restore" and "files" in r:
            return f"{plural(r['files'], 'file')} restored", human_bytes(r["bytes"]), ""
        if p.kind == "check" and "snapshots" in r:
            return f"{plural(r['snapshots'], 'snapshot')} · {plural(r['packs'], 'pack')} checked", "", ""
        if p.kind == "prune" and "snapshots_removed" in r:
            verb = "to remove" if r.get("dry_run") else "removed"
            return (f"{plural(len(r['snapshots_removed']), 'snapshot')} {verb}",
                    f"{human_bytes(max(0, r['bytes_freed']))} {'to free' if r.get('dry_run') else 'freed'}", "")
    except (KeyError, TypeError, ValueError):
        pass  # another daemon's result: the message below says it
    return "", "", ""


def _since(updated_at: str | None) -> str:
    """When a past run ended, in local time: ``14:02:11`` today, ``2026-12-06 14:02`` before."""
    try:
        when = datetime.fromisoformat((updated_at or "").replace("Z", "+00:00")).astimezone()
    except ValueError:
        return "earlier"
    if when.date() == datetime.now().astimezone().date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


class JsonView:
    """One JSON object per line (NDJSON); notes go to stderr, so stdout stays machine-readable."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def show(self, p: Progress) -> None:
        self.emit(p.to_json())

    def emit(self, obj: Any) -> None:
        self._out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._out.flush()

    def __enter__(self) -> JsonView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class _Rate:
    step: int
    t0: float
    bytes0: int
    files0: int


class TerminalView:
    """A live display per project, three lines that fit an 80-column terminal::

        docs step 4/6 Compressing            ━━━━━━━━━━━━━━╸━━━━━━━━━   62.4%  ETA 7s
          3,120/5,000 files · 1.9 GiB/3.4 GiB · 212.5 MiB/s
          Compressing 3,120 of 5,000 files (1.9 GiB of 3.4 GiB)

    (the counters of the current step with its rate, then the daemon's message; lines too long for the
    terminal end with an ellipsis rather than wrap). Finished runs leave one summary line above (✔/✘, also
    cut to the terminal's width).

    A project that is idle, or whose last run ended before the view was opened (``mark_past``: following
    everything, the stream starts with each project's current state), is one dim line that says so
    (``docs: idle``, ``docs: idle since 14:02:11 · snapshot ... completed: ...``), never a bar at 0% or a ✔ as
    if it had just ended. Nothing is redrawn unless an event arrives: no refresh loop while idle."""

    def __init__(self, status: Callable[[], str] | None = None, *, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic, drop_finished_operations: bool = False,
                 mark_past: bool = False) -> None:
        from rich.console import Console, Group, RenderableType
        from rich.progress import BarColumn, Progress, TaskID, TextColumn
        from rich.text import Text

        self._Text = Text
        self._status = status
        # Following everything: each restore, check or prune has a display of its own while it runs, gone
        # once its end is printed above (a project keeps one display for all its snapshot runs).
        self._drop_finished = drop_finished_operations
        self._mark_past = mark_past
        self._clock = clock
        self._tasks: dict[str, TaskID] = {}
        self._rates: dict[str, _Rate] = {}
        view = self

        class Bars(Progress):
            def get_renderables(self) -> Any:
                rows: list[RenderableType] = []
                for task in self.tasks:
                    if task.fields["resting"]:  # idle, or a run that ended before: one line, no bar
                        rows.append(Text(task.fields["resting"], style="dim", no_wrap=True, overflow="ellipsis"))
                        continue
                    rows.append(self.make_tasks_table([task]))
                    details = " · ".join(x for x in (task.fields["files"], task.fields["bytes"], task.fields["rate"]) if x)
                    if details:
                        rows.append(Text(f"  {details}", no_wrap=True, overflow="ellipsis"))
                    rows.append(Text(f"  {task.fields['message']}", style="dim", no_wrap=True, overflow="ellipsis"))
                line = view._status() if view._status else ""
                if line:
                    rows.append(Text(line, style="yellow"))
                yield Group(*rows)

        self.console = console or Console(highlight=False)
        self._bars: RichProgress = Bars(
            TextColumn("[bold]{task.fields[project]}"),
            TextColumn("step {task.fields[step]}/{task.fields[steps]} {task.fields[step_name]:<22}"),
            BarColumn(bar_width=20),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("ETA {task.fields[eta]}"),
            # Redrawn by _task() when an event changes it, never by a timer: rich's refresh thread redraws
            # 8 times a second whether anything changed or not (2 % of a CPU while idle).
            console=self.console, auto_refresh=False, transient=False,
        )

    def __enter__(self) -> TerminalView:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def note(self, text: str) -> None:
        self._bars.console.print(self._Text(text, style="dim"))

    def queued(self, project: str, message: str) -> None:
        """Show a project whose followed run has not started yet."""
        self._task(f"project:{project}", label=project, step=0, steps=6, step_name="Queued", percent=0, message=message, files="", bytes="",
                   rate="", eta="-", resting="")

    def show(self, p: Progress) -> None:
        first = p.lane not in self._tasks
        if p.gap:
            self.note(f"{p.label}: some events were missed; showing the current state")
        if p.state == "idle" or (p.terminal and first and self._mark_past):
            # Nothing runs: say so in one line (a past run's end is not news, and idle is not a 0% run).
            resting = f"{p.label}: idle" if p.state == "idle" else \
                f"{p.label}: idle since {_since(p.updated_at)} · {end_sentence(p)}"
            self._task(p.lane, label=p.label, step=p.step, steps=p.steps, step_name=p.step_name, percent=p.percent,
                       message="", files="", bytes="", rate="", eta="-", resting=resting)
            self._rates.pop(p.lane, None)
            return
        unit = p.counted
        files = f"{p.files_done:,}/{p.files_total:,} {unit}" if p.files_total else (
            f"{p.files_done:,} {unit}" if p.files_done else "")
        nbytes = f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}" if p.bytes_total else ""
        eta = "-" if p.eta_seconds is None else short_duration(p.eta_seconds)
        rate = self._rate(p)
        if p.paused and not p.terminal:
            # Held by a pause: no rate to show, and the one after the resume starts afresh.
            eta, rate = "paused", "paused"
            self._rates.pop(p.lane, None)
        if p.terminal and p.kind == "snapshot":
            # The last step's counters are the store's objects; what the run produced says more.
            s = p.snapshot
            files, nbytes, rate = (f"{s.files:,} files", human_bytes(s.bytes), f"{human_bytes(s.bytes_added)} added") \
                if s is not None else ("", "", "")
        elif p.terminal:
            files, nbytes, rate = _operation_summary(p)
        message = end_sentence(p) if p.terminal else p.message
        self._task(p.lane, label=p.label if p.kind == "snapshot" else f"{p.label} {p.kind}", step=p.step, steps=p.steps, step_name=p.step_name, percent=p.percent, message=message,
                   files=files, bytes=nbytes, rate=rate, eta=eta, resting="")
        if p.terminal and p.run is not None:
            style = "green" if p.state == "completed" else "red"
            mark = "✔" if p.state == "completed" else "✘"
            # Cut to the terminal's width like the lines below (the JSON and `syncsnap run` have it whole).
            self._bars.console.print(self._Text(f"{mark} {final_line(p)}", style=style), no_wrap=True,
                                     overflow="ellipsis")
            if self._drop_finished and p.kind != "snapshot":
                self._bars.remove_task(self._tasks.pop(p.lane))
                self._rates.pop(p.lane, None)

    def _task(self, key: str, *, label: str, percent: float, **fields: Any) -> None:
        """Create or update the display of ``key`` (a :attr:`Progress.lane`), titled ``label``."""
        if key not in self._tasks:  # drawn only after the update below (no refresh thread): never at 0% first
            self._tasks[key] = self._bars.add_task(label, total=100, project=label, **fields)
        self._bars.update(self._tasks[key], completed=percent, project=label, **fields)
        self._bars.refresh()

    def _rate(self, p: Progress) -> str:
        now = self._clock()
        r = self._rates.get(p.lane)
        if r is None or r.step != p.step or p.bytes_done < r.bytes0 or p.files_done < r.files0:
            self._rates[p.lane] = _Rate(p.step, now, p.bytes_done, p.files_done)
            return ""
        dt = now - r.t0
        if dt < 0.2 or p.terminal:
            return ""
        if p.bytes_total:
            return f"{human_bytes((p.bytes_done - r.bytes0) / dt)}/s"
        unit = p.counted
        return f"{(p.files_done - r.files0) / dt:,.0f} {'entries' if unit == 'found' else unit}/s"
