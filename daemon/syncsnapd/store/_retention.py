"""Retention policies: which snapshots of a project a prune keeps (restic's ``forget --keep-*`` rules).

Pure functions over snapshot listings; no I/O. See :class:`~syncsnapd.core.KeepPolicy`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from ..core import KeepPolicy
from ._format import SnapshotInfo

__all__ = ["Decision", "apply_policy", "plan_forget", "snapshot_time"]


@dataclass(frozen=True)
class Decision:
    """The outcome of a policy for one project: ``keep`` maps each kept snapshot id to the rules that
    keep it (``"last"``, ``"daily"``...); ``forget`` lists the others, oldest first."""

    keep: dict[str, tuple[str, ...]] = field(default_factory=dict)
    forget: tuple[str, ...] = ()


def snapshot_time(info: SnapshotInfo) -> datetime:
    """When the snapshot was started (UTC, from its id)."""
    return datetime.strptime(info.id[:19], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)


def _buckets(policy: KeepPolicy) -> list[tuple[str, int, Callable[[datetime, int], object]]]:
    return [
        ("last", policy.last, lambda t, i: i),  # every snapshot is its own bucket
        ("hourly", policy.hourly, lambda t, i: (t.year, t.month, t.day, t.hour)),
        ("daily", policy.daily, lambda t, i: (t.year, t.month, t.day)),
        ("weekly", policy.weekly, lambda t, i: t.isocalendar()[:2]),
        ("monthly", policy.monthly, lambda t, i: (t.year, t.month)),
        ("yearly", policy.yearly, lambda t, i: t.year),
    ]


def apply_policy(snapshots: Sequence[SnapshotInfo], policy: KeepPolicy, *, tz: tzinfo | None = None
                 ) -> Decision:
    """Decide which of one project's ``snapshots`` to keep.

    Walks the snapshots newest first; each rule with a count ``n`` keeps the first snapshot it meets in
    each new bucket (hour, day, ISO week, month, year in ``tz``, the local time zone by default) until it
    has kept ``n``. ``last`` keeps the newest ``n``. The newest snapshot is kept by every rule with a
    count above 0.
    """
    rules = [(name, n, key) for name, n, key in _buckets(policy) if n > 0]
    remaining = {name: n for name, n, _ in rules}
    last_bucket: dict[str, object] = {}
    keep: dict[str, tuple[str, ...]] = {}
    forget: list[str] = []
    for i, info in enumerate(sorted(snapshots, key=lambda s: s.id, reverse=True)):
        when = snapshot_time(info).astimezone(tz)
        reasons: list[str] = []
        for name, _, key in rules:
            if remaining[name] == 0:
                continue
            bucket = key(when, i)
            if name in last_bucket and last_bucket[name] == bucket:
                continue
            last_bucket[name] = bucket
            remaining[name] -= 1
            reasons.append(name)
        if reasons:
            keep[info.id] = tuple(reasons)
        else:
            forget.append(info.id)
    return Decision(keep=keep, forget=tuple(sorted(forget)))


def plan_forget(snapshots: Sequence[SnapshotInfo], policies: Mapping[str, KeepPolicy | None], *,
                tz: tzinfo | None = None) -> dict[str, Decision]:
    """Apply each project's policy to its snapshots. Projects without a policy (None, or not in
    ``policies``: no longer configured) keep every snapshot."""
    by_project: dict[str, list[SnapshotInfo]] = {}
    for s in snapshots:
        by_project.setdefault(s.project, []).append(s)
    out: dict[str, Decision] = {}
    for project, snaps in sorted(by_project.items()):
        policy = policies.get(project)
        if policy is None:
            out[project] = Decision(keep={s.id: ("no policy",) for s in snaps})
        else:
            out[project] = apply_policy(snaps, policy, tz=tz)
    return out
