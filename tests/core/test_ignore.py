"""The ignore rules have gitignore semantics: a table of cases, each checked against git itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from syncsnapd.core import ConfigError, IgnoreRules, ProjectConfig, ignored_at_or_above, load_config

# (patterns, path, ignored): a directory's path ends in "/". `ignored` is what a walk that never enters
# an ignored directory concludes (ignored_at_or_above), which is what git does too.
CASES: list[tuple[list[str], str, bool]] = [
    # The README's example: a directory rule, at any depth, and only for directories.
    (["build/"], "build/", True),
    (["build/"], "build/out.bin", True),
    (["build/"], "src/build/", True),
    (["build/"], "src/build/x/y.o", True),
    (["build/"], "build", False),  # a file named build
    (["build/"], "src/build.py", False),
    # No slash: a name at any depth, file or directory.
    (["*.log"], "app.log", True),
    (["*.log"], "a/b/app.log", True),
    (["*.log"], "a.log.txt", False),
    (["cache"], "x/cache/", True),
    (["cache"], "x/cache", True),
    # Anchored: a leading slash, or a slash in the middle.
    (["/build"], "build/", True),
    (["/build"], "src/build/", False),
    (["/todo.txt"], "todo.txt", True),
    (["/todo.txt"], "sub/todo.txt", False),
    (["docs/*.tmp"], "docs/a.tmp", True),
    (["docs/*.tmp"], "docs/x/a.tmp", False),  # `*` never crosses a `/`
    (["docs/*.tmp"], "x/docs/a.tmp", False),
    # `**`
    (["**/cache/"], "cache/", True),
    (["**/cache/"], "a/b/cache/f", True),
    (["logs/**"], "logs/a/b.txt", True),
    (["logs/**"], "logs/", False),  # for git the contents, not the directory itself (see below)
    (["a/**/z"], "a/z", True),
    (["a/**/z"], "a/m/n/z", True),
    (["a/**/z"], "b/a/z", False),
    # Negation: the last match wins, and a file under an ignored directory cannot come back.
    (["*.log", "!keep.log"], "keep.log", False),
    (["*.log", "!keep.log"], "d/keep.log", False),
    (["*.log", "!keep.log"], "d/other.log", True),
    (["!keep.log", "*.log"], "keep.log", True),
    (["build/", "!keep.log"], "build/keep.log", True),
    (["build/", "!build/keep.log"], "build/keep.log", True),
    (["build/*", "!build/keep.log"], "build/keep.log", False),
    (["build/*", "!build/keep.log"], "build/other", True),
    # Escapes and specials.
    (["\\!important"], "!important", True),
    (["\\#x"], "#x", True),
    (["#x"], "#x", False),  # a comment
    (["*.[oa]"], "lib.a", True),
    (["*.[oa]"], "lib.c", False),
    (["foo?"], "food", True),
    (["foo?"], "foo/", False),
]


# Where pathspec differs from git. `logs/**` matches the directory `logs/` itself in pathspec: the
# snapshot leaves out an empty `logs` directory that git would keep (git tracks no directories, so for
# files the two agree).
DIFFERENT_FROM_GIT = {("logs/**", "logs/")}


@pytest.mark.parametrize(("patterns", "path", "ignored"), CASES, ids=[f"{p}-{q}" for p, q, _ in CASES])
def test_gitignore_cases(patterns: list[str], path: str, ignored: bool) -> None:
    if (patterns[-1], path) in DIFFERENT_FROM_GIT:
        ignored = not ignored
    assert ignored_at_or_above(IgnoreRules(patterns), path) is ignored


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_table_agrees_with_git(tmp_path: Path) -> None:
    """Every case of the table, asked of `git check-ignore --no-index` in a real repository: the table is
    git's behaviour, not our reading of the manual."""
    for n, (patterns, path, ignored) in enumerate(CASES):
        repo = tmp_path / f"r{n}"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        (repo / ".gitignore").write_text("\n".join(patterns) + "\n")
        target = repo / path.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.endswith("/"):
            target.mkdir(exist_ok=True)
        else:
            target.write_text("x")
        got = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "--no-index", path.rstrip("/")])
        assert got.returncode in (0, 1), got
        assert (got.returncode == 0) is ignored, (patterns, path)


def test_sync_tool_files_and_excluded_dirs_stay_ignored_whatever_the_patterns(tmp_path: Path) -> None:
    rules = ProjectConfig("p", tmp_path, ignore=("!.stfolder", "!.store")).ignore_fn((tmp_path / ".store",))
    assert rules(".stfolder/") and rules("d/.stversions/") and rules("d/~syncthing~a.tmp")
    assert rules(".store/") and not rules("x/.store/")
    assert not rules(".stignore")  # Syncthing's ignore file is user content


def test_a_pattern_git_cannot_read_is_refused_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    f = tmp_path / "c.toml"
    f.write_text('[[projects]]\nid = "p"\npath = "proj"\nignore = ["ok/", "bad\\\\"]\n')
    with pytest.raises(ConfigError, match=r"^projects\[0\]\.ignore: 'bad\\\\' is not a gitignore pattern"):
        load_config(f, [], {"HOME": str(tmp_path)})
