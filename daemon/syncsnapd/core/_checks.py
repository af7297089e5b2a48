"""Start-up checks on a configuration: the runtime directory is ours alone, and which projects snapshot
the same files. Apart from ``_config.py``, which loads and validates; these look at the disk."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ._config import ProjectConfig
from ._errors import ConfigError
from ._ignore import ignored_at_or_above


def check_private_dir(path: Path, what: str) -> None:
    """Make sure ``path`` is a directory only we can use, creating it (0700) if missing.

    The runtime directory holds the socket and the discovery file that clients trust, and
    ``/tmp/syncsnap-UID`` can be created first by anyone. tmux's check is the model: the directory must
    not be a symlink, must be a directory, owned by us, without any permission for group or others.

    Raises:
        ConfigError: a sentence starting with ``what`` (the directory's role) that says what is wrong and
            what to do; nothing is changed in a directory that fails the check.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create it: {exc.strerror}") from None
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.getuid():
        why = f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    elif st.st_mode & 0o077:
        why = f"has mode {stat.S_IMODE(st.st_mode):04o}: other users may use it"
    if why is not None:
        raise ConfigError(f"{what} {path} {why}, so another user could replace the socket or the discovery "
                          f"file there; remove it (or make it yours with mode 0700) and start again")


def overlap_warnings(projects: Sequence[ProjectConfig]) -> list[str]:
    """One sentence per pair of projects that snapshot the same files: the same folder configured twice,
    or a folder inside another project's folder (and not ignored there). Not an error: it may be meant,
    but every change there is stored twice and starts two snapshots."""
    known = [(p, p.path.resolve()) for p in projects if p.path_known]
    out: list[str] = []
    for i, (a, root_a) in enumerate(known):
        for b, root_b in known[i + 1:]:
            if root_a == root_b:
                out.append(f"projects {a.id!r} and {b.id!r} both snapshot {root_a}: every file there is "
                           "snapshotted twice")
                continue
            for outer, root_o, inner, root_i in ((a, root_a, b, root_b), (b, root_b, a, root_a)):
                if root_i.is_relative_to(root_o):
                    rel = root_i.relative_to(root_o).as_posix()
                    if not ignored_at_or_above(outer.ignore_fn(), rel + "/"):
                        out.append(f"projects {outer.id!r} and {inner.id!r} overlap: {outer.id!r} snapshots "
                                   f"{root_o} including {root_i}, which {inner.id!r} snapshots too")
    return out
