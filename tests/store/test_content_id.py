"""Content ids: equal exactly when a path's content is, whatever its mtime or mode."""

from __future__ import annotations

from syncsnapd.store import CONTENT_ID_LENGTH, Entry, content_id


def entry(kind: str, data: list[str] | str | None, mtime_ns: int = 1, mode: int = 0o644) -> Entry:
    return Entry("a/b.txt", kind, 3, mtime_ns, mode, 0, data)


def test_equal_content_has_one_id_and_other_content_another() -> None:
    a = content_id(entry("file", ["aa" * 32, "bb" * 32]))
    assert a is not None and len(a) == CONTENT_ID_LENGTH
    assert content_id(entry("file", ["aa" * 32, "bb" * 32], mtime_ns=99, mode=0o600)) == a
    assert content_id(entry("file", ["bb" * 32, "aa" * 32])) != a
    assert content_id(entry("file", [])) != a  # the empty file
    # A symlink whose target is spelled like a chunk list is another content.
    assert content_id(entry("symlink", "aa" * 32 + " " + "bb" * 32)) != a
    assert content_id(entry("symlink", "x\udcff")) != content_id(entry("symlink", "x"))  # undecodable bytes
    assert content_id(entry("dir", None)) is None
