"""A project's ignore rules, with gitignore semantics (``pathspec``'s ``GitIgnoreSpec``).

Every place that decides what belongs to a folder asks one :class:`IgnoreRules`: the snapshot walk,
the live walk of ``diff``, the start-up and interval checks, and the watcher (which directories get an
inotify watch, which events count). Paths are relative to the folder, POSIX, and **a directory's path
ends in ``/``** (``"build/"``), as in ``pathspec`` and git itself: that is how ``build/`` matches the
directory ``build`` and not a file of that name.

The rules, as in ``.gitignore`` (git's gitignore(5)):

- ``build`` (no ``/`` except at the end) matches a file or directory of that name at any depth;
  ``build/`` matches only directories.
- A pattern with a ``/`` at the start or in the middle (``/build``, ``docs/*.tmp``) is anchored at
  the folder: ``/build`` is the top-level ``build`` only, ``docs/*.tmp`` is not ``x/docs/a.tmp``.
- ``*`` and ``?`` never match ``/``; ``**`` matches any number of directories (``**/cache``,
  ``logs/**``, ``a/**/b``).
- ``!pattern`` re-includes what an earlier pattern ignored; the last matching pattern wins. As in
  git, a file below an ignored directory cannot be re-included: the directory is never entered.

Sync tools' own files (``SYNC_TOOL_IGNORES`` in the configuration) and the daemon's store and state
directories inside the folder are ignored whatever the patterns say.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import pathspec
from pathspec.patterns.gitignore import GitIgnorePatternError

__all__ = ["IgnoreRules", "ignore_pattern_error", "ignored_at_or_above", "walked_path"]


def ignore_pattern_error(patterns: Sequence[str]) -> str | None:
    """A sentence naming the first pattern gitignore cannot read (``!`` alone, a trailing ``\\``), or
    None when all are valid."""
    for pattern in patterns:
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except (GitIgnorePatternError, ValueError) as exc:
            return f"{pattern!r} is not a gitignore pattern ({exc})"
    return None


class IgnoreRules:
    """``rules(rel)`` is True when the relative path ``rel`` (a directory's ends in ``/``) is ignored.

    It answers for the path itself; walks never enter an ignored directory, and
    :func:`ignored_at_or_above` answers for a path whose parents were not checked (a watcher event).

    Args:
        patterns: the project's ``ignore`` list, gitignore patterns in order.
        always: patterns ignored whatever ``patterns`` say (sync tools' metadata); a ``!`` there does
            not re-include them.
        excluded: relative paths (no trailing ``/``) of directories that are never part of the folder
            (the daemon's own store and state directories when they lie inside it).

    Raises:
        ValueError: a pattern is not a gitignore pattern (the configuration loader checks this first,
            with :func:`ignore_pattern_error`).
    """

    def __init__(self, patterns: Sequence[str], *, always: Sequence[str] = (),
                 excluded: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._user = pathspec.GitIgnoreSpec.from_lines(self.patterns) if self.patterns else None
        self._always = pathspec.GitIgnoreSpec.from_lines(always) if always else None
        self._excluded = frozenset(excluded) - {"", "."}

    def __call__(self, rel: str) -> bool:
        if self._excluded and rel.rstrip("/") in self._excluded:
            return True
        if self._always is not None and self._always.match_file(rel):
            return True
        return self._user is not None and self._user.match_file(rel)

    def __repr__(self) -> str:
        return f"IgnoreRules({list(self.patterns)!r})"


def ignored_at_or_above(ignore: Callable[[str], bool], rel: str) -> bool:
    """True when ``rel`` (a directory's ends in ``/``) or any directory above it is ignored: what a walk
    that never enters an ignored directory would say about a path it was given out of the blue."""
    parts = rel.rstrip("/").split("/")
    for i in range(1, len(parts)):
        if ignore("/".join(parts[:i]) + "/"):
            return True
    return ignore(rel)


def walked_path(path: str, entry: os.DirEntry[str]) -> str:
    """``path`` (relative or absolute) of a listed ``entry`` as the rules want it: with a trailing ``/``
    when the entry is a directory itself (a symlink to one is not). One that cannot be examined counts
    as no directory; the walk that asked reports it."""
    try:
        return f"{path}/" if entry.is_dir(follow_symlinks=False) else path
    except OSError:
        return path
