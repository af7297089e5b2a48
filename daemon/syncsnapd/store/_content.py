"""The content id of a snapshot entry: what tells two versions of one path apart (issue 13).

A file's content id is a hash of its chunk list, a symlink's of its target: two snapshots hold the same
version of a path exactly when its content ids are equal, whatever its mtime or mode (which are shown, but
do not make a new version). Chunk ids are keyed in an encrypted store, so content ids there reveal nothing
a chunk id does not. A directory has none. 24 hex digits (96 bits): short enough to type a prefix of, long
enough never to collide within one path's history.
"""

from __future__ import annotations

import os

from ._format import Entry, hash_bytes

__all__ = ["CONTENT_ID_LENGTH", "content_id"]

CONTENT_ID_LENGTH = 24


def content_id(entry: Entry) -> str | None:
    """The content id of a file or symlink entry; None for a directory."""
    if entry.kind == "file":
        return hash_bytes(b"file\0" + " ".join(entry.chunks).encode())[:CONTENT_ID_LENGTH]
    if entry.kind == "symlink":
        return hash_bytes(b"symlink\0" + os.fsencode(entry.target))[:CONTENT_ID_LENGTH]
    return None
