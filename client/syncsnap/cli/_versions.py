"""``syncsnap versions PROJECT PATH [--depth N]`` and ``syncsnap find PROJECT PATTERN [--since T]``: every
version of a path across the project's snapshots, and the paths matching a pattern with theirs.

Human output is one table per path, newest version first: when the version was first and last seen
(local time of those snapshots), its size, the start of its content id (what ``syncsnap restore
--version`` takes), and how many snapshots hold it; a deletion reads "deleted". ``--json`` prints the
daemon's answer as it is (docs/api.md, "Versions and find").
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from typing import Any

from .._client import AsyncClient
from ._format import display_path, human_bytes, plural
from ._output import EXIT_OK, positive, print_json

__all__ = ["add_versions_parsers", "cmd_find", "cmd_versions", "relative_path"]

# Digits of a content id shown in a table: enough to be unique within a path's history, and what
# `restore --version` accepts (8 at least).
CID_SHOWN = 12


def _local(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def version_rows(versions: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """A path's versions as table rows (header first), in the order given (newest first)."""
    rows: list[tuple[str, ...]] = [("FIRST SEEN", "LAST SEEN", "SIZE", "VERSION", "SNAPSHOTS")]
    for v in versions:
        kind = v["kind"]
        if kind == "deleted":
            size, cid = "deleted", "-"
        elif kind == "dir":
            size, cid = "directory", "-"
        elif kind == "symlink":
            size, cid = f"-> {display_path(str(v['target']))}", str(v["content_id"])[:CID_SHOWN]
        else:
            size, cid = human_bytes(int(v["size"])), str(v["content_id"])[:CID_SHOWN]
        rows.append((_local(v["first_snapshot"]["time"]), _local(v["last_snapshot"]["time"]), size, cid,
                     str(v["count"])))
    return rows


def _print_path(path: str, kind: str, versions: list[dict[str, Any]], indent: str = "") -> None:
    print(f"{indent}{display_path(path)} ({kind}): {plural(len(versions), 'version')}")
    rows = version_rows(versions)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(indent + "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def relative_path(path: str, folder: str | None) -> str:
    """``path`` as the daemon takes it: an absolute path inside the project's ``folder`` relative to it
    (what a user in that folder has at hand); anything else as it is (the daemon refuses an absolute
    path with a clear error)."""
    if not path.startswith("/"):
        return "" if path in ("", ".") else path.rstrip("/")
    if folder:
        rel = os.path.relpath(path, folder)
        if rel == ".":
            return ""
        if rel != ".." and not rel.startswith("../"):
            return rel
    return path


async def cmd_versions(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    path = args.path
    if path.startswith("/"):
        path = relative_path(path, (await client.project(args.project)).path)
    else:
        path = relative_path(path, None)
    doc = await client.versions(args.project, path, args.depth)
    if as_json:
        print_json(doc)
        return EXIT_OK
    if doc["kind"] != "dir":
        _print_path(doc["path"], doc["kind"], doc["versions"])
        print(f"({plural(doc['snapshots'], 'snapshot')} of {args.project} looked at)")
        return EXIT_OK
    entries = doc["entries"]
    shown = display_path(doc["path"]) or "the project's folder"
    print(f"{shown} (directory): {plural(len(entries), 'entry', 'entries')} to depth {doc['depth']}, "
          f"{plural(doc['snapshots'], 'snapshot')} looked at")
    for e in entries:
        _print_path(e["path"], e["kind"], e["versions"], "  ")
    if doc.get("truncated"):
        print("(more entries than shown: ask for a deeper directory, or a smaller --depth)")
    return EXIT_OK


async def cmd_find(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    doc = await client.find(args.project, args.pattern, since=args.since, limit=args.limit)
    if as_json:
        print_json(doc)
        return EXIT_OK
    matches = doc["matches"]
    since = f" since {args.since}" if args.since else ""
    print(f"{plural(len(matches), 'path')} matching {display_path(args.pattern)!r} in "
          f"{plural(doc['snapshots'], 'snapshot')} of {args.project}{since}")
    for m in matches:
        _print_path(m["path"], m.get("kind", ""), m["versions"], "  ")
    if doc.get("truncated"):
        print(f"(only the first {doc['limit']} paths: narrow the pattern, or raise --limit)")
    return EXIT_OK


def add_versions_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         common: argparse.ArgumentParser) -> None:
    """The ``versions`` and ``find`` subcommands."""
    v = sub.add_parser("versions", parents=[common], help="every version of a file (or of a directory's "
                                                          "entries) across a project's snapshots")
    v.add_argument("project")
    v.add_argument("path", help="relative to the project's folder (or absolute, inside it)")
    v.add_argument("--depth", type=positive, default=None, metavar="N",
                   help="for a directory: list entries N levels down (default 1)")
    f = sub.add_parser("find", parents=[common], help="paths matching a pattern in a project's snapshots, "
                                                      "with their versions")
    f.add_argument("project")
    f.add_argument("pattern", help="a glob (* ? [...]) on the path or its name, else a part of the path")
    f.add_argument("--since", metavar="T", help="only snapshots at or after T (ISO 8601: 2026-12-01, "
                                                "2026-12-01T14:00)")
    f.add_argument("-n", "--limit", type=positive, default=None, metavar="N",
                   help="at most N paths (default 1000)")

