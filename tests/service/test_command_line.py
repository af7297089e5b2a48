"""The ``syncsnapd`` command line as a new user meets it (issue 16): global options before or after the
command, ``latest`` in the offline commands, offline prune's refusals, flags for the common settings,
unknown options and commands, TCP addresses out of range, the start-up hint on a terminal. Every test runs
``python -m syncsnapd`` as a subprocess and asserts what it prints and its exit status.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from helpers.daemon import make_env, make_tree, write_config
from helpers.store import snapshot, write_files
from syncsnapd.store import Store


def syncsnapd(base: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncsnapd", *args], env=make_env(base), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def two_projects(short_tmp: Path) -> Iterator[tuple[Path, Store]]:
    """A config whose store has snapshots of two projects, docs (two) and code (one); the store is held
    open for writing, as by a running daemon (its lock is taken)."""
    write_files(short_tmp / "docs", {"readme.txt": b"hello\n"})
    write_files(short_tmp / "code", {"main.py": b"print('hi')\n"})
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs", "code": short_tmp / "code"})
    store = Store.open(short_tmp / "store", writable=True)
    trio.run(snapshot, store, short_tmp / "docs", "docs")
    (short_tmp / "docs/new.txt").write_bytes(b"new\n")
    trio.run(snapshot, store, short_tmp / "docs", "docs")
    trio.run(snapshot, store, short_tmp / "code", "code")
    yield cfg, store
    store.close()


# --- item 1: global options before the command ------------------------------------------------------------

def test_config_before_the_command_is_used_as_after_it(two_projects: tuple[Path, Store], short_tmp: Path) -> None:
    cfg, store = two_projects
    before = syncsnapd(short_tmp, "--config", str(cfg), "snapshots")
    after = syncsnapd(short_tmp, "snapshots", "--config", str(cfg))
    assert before.returncode == 0, before.stderr
    assert before.stdout == after.stdout
    assert [line.split()[0] for line in before.stdout.splitlines()[1:]] == [s.id for s in store.list_snapshots()]
    # --store too, in either place, and the later one wins.
    other = syncsnapd(short_tmp, "--store", str(short_tmp / "nowhere"), "snapshots", "--store",
                      str(short_tmp / "store"))
    assert other.stdout == before.stdout


# --- item 2: `latest` in the offline diff and restore ----------------------------------------------------

def test_offline_diff_and_restore_accept_latest(two_projects: tuple[Path, Store], short_tmp: Path) -> None:
    cfg, store = two_projects
    docs_old, docs_new = store.list_snapshots("docs")
    diff = syncsnapd(short_tmp, "--config", str(cfg), "diff", docs_old.id, "latest", "--project", "docs")
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert diff.stdout.splitlines()[0] == "+ new.txt  (4 B)"
    assert f"({docs_old.id} -> {docs_new.id})" in diff.stdout
    live = syncsnapd(short_tmp, "--config", str(cfg), "diff", "latest", "--project", "code")
    assert live.returncode == 0 and live.stdout.startswith("0 added, 0 removed, 0 modified, 1 unchanged"), live.stdout
    restored = syncsnapd(short_tmp, "--config", str(cfg), "restore", "latest", str(short_tmp / "out"),
                         "--project", "docs")
    assert restored.returncode == 0, restored.stdout
    assert sorted(p.name for p in (short_tmp / "out").iterdir()) == ["new.txt", "readme.txt"]


def test_latest_with_several_projects_and_no_project_names_the_choice(two_projects: tuple[Path, Store],
                                                                      short_tmp: Path) -> None:
    """The config names both projects, the store has both: nothing tells which one is meant."""
    cfg, _ = two_projects
    for args in (["diff", "latest"], ["restore", "latest", str(short_tmp / "out")]):
        r = syncsnapd(short_tmp, "--config", str(cfg), *args)
        assert (r.returncode, r.stdout) == (2, "`latest` of which project? The store has snapshots of code, docs: "
                                               "add --project code (or docs).\n"), args
    assert not (short_tmp / "out").exists()
    none = syncsnapd(short_tmp, "--config", str(cfg), "diff", "latest", "--project", "gone")
    assert (none.returncode, none.stdout) == (2, "There is no `latest` snapshot of project 'gone'; `syncsnapd "
                                                 "snapshots` lists the snapshots.\n")


def test_latest_of_the_only_project_needs_no_project(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=2)
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    with Store.open(short_tmp / "store", writable=True) as store:
        trio.run(snapshot, store, short_tmp / "docs", "docs")
    r = syncsnapd(short_tmp, "--config", str(cfg), "restore", "latest", str(short_tmp / "out"))
    assert r.returncode == 0, r.stdout
    assert (short_tmp / "out/d0/sub0/f0.txt").read_bytes() == (short_tmp / "docs/d0/sub0/f0.txt").read_bytes()


# --- item 3: offline prune while the daemon runs, and on S3 ----------------------------------------------

def test_offline_prune_points_to_syncsnap_prune_and_a_dry_run_only_reads(two_projects: tuple[Path, Store],
                                                                         short_tmp: Path) -> None:
    cfg, store = two_projects
    r = syncsnapd(short_tmp, "--config", str(cfg), "prune")
    assert r.returncode == 2
    assert r.stdout == (f"Cannot open the store: store {store.root} is in use by another syncsnapd (pid "
                        f"{os.getpid()}). Prune through the daemon instead: `syncsnap prune`.\n")
    dry = syncsnapd(short_tmp, "--config", str(cfg), "prune", "--dry-run")
    assert dry.returncode == 0, dry.stdout
    assert len(store.list_snapshots()) == 3


def test_offline_prune_on_an_s3_store_it_cannot_use_says_why(short_tmp: Path) -> None:
    """Pruning an S3 store works (tests/store/test_s3_prune.py); one that cannot be opened is named."""
    make_tree(short_tmp / "docs", files=1)
    cfg = short_tmp / "s3.toml"
    cfg.write_text(f'[daemon]\nstore = "s3://bucket/prefix"\nstate_dir = "{short_tmp}/state"\n'
                   f'[daemon.s3]\nendpoint = "http://127.0.0.1:9"\n'
                   f'[[projects]]\nid = "docs"\npath = "{short_tmp}/docs"\nkeep = {{ last = 1 }}\n')
    r = syncsnapd(short_tmp, "--config", str(cfg), "prune")
    assert r.returncode == 2
    assert r.stdout.startswith("Cannot open the store: no credentials for s3://bucket/prefix at http://127.0.0.1:9")
    assert "/api/" not in r.stdout + r.stderr


def test_a_commands_words_may_follow_its_options(two_projects: tuple[Path, Store], short_tmp: Path) -> None:
    """``diff OLD --json NEW``: argparse alone takes a command's words in one run and leaves NEW over."""
    cfg, store = two_projects
    old, new = store.list_snapshots("docs")
    r = syncsnapd(short_tmp, "diff", old.id, "--json", new.id, "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["from"], doc["to"], [a["path"] for a in doc["added"]]) == (old.id, new.id, ["new.txt"])


# --- item 6: unknown options and commands -------------------------------------------------------------------

@pytest.mark.parametrize(("args", "said"), [
    (["--bogus", "x"], "unknown option --bogus; `syncsnapd --help` lists the options"),
    (["--bogus"], "unknown option --bogus; `syncsnapd --help` lists the options"),
    (["snapshots", "--bogus=1"], "unknown option --bogus of `syncsnapd snapshots`; `syncsnapd snapshots --help` "
                                 "lists the options"),
    (["snapshot"], "unknown command 'snapshot'; the commands are snapshots, diff, restore, check, prune, unlock, init, key, mount (none: "
                   "run the daemon)"),
])
def test_an_unknown_option_or_command_is_named(short_tmp: Path, args: list[str], said: str) -> None:
    r = syncsnapd(short_tmp, *args)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"syncsnapd: {said}\n")


# --- item 10: a port out of range --------------------------------------------------------------------------

def test_a_tcp_port_out_of_range_is_said_to_be_out_of_range(short_tmp: Path) -> None:
    make_tree(short_tmp / "docs", files=1)
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"}, tcp="127.0.0.1:99999")
    r = syncsnapd(short_tmp, "--config", str(cfg))
    assert (r.returncode, r.stderr) == (2, "syncsnapd: configuration error: daemon.tcp: port 99999 in "
                                           "'127.0.0.1:99999' is out of range (0 to 65535; 0 picks a free one)\n")
    flag = syncsnapd(short_tmp, "--config", str(cfg), "--tcp", "[::1]:70000")
    assert "--tcp: port 70000 in '[::1]:70000' is out of range" in flag.stderr
    assert not (short_tmp / "store").exists()


# --- item 11: the hint on a terminal -----------------------------------------------------------------------

def _start_hint(short_tmp: Path, env: dict[str, str]) -> list[str]:
    """The lines the daemon prints on a terminal after its first, up to Ctrl-C."""
    make_tree(short_tmp / "docs", files=1)
    cfg = write_config(short_tmp, {"docs": short_tmp / "docs"})
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sub)
    os.close(sub)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"Ctrl-C" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                seen += os.read(main, 4096)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        os.close(main)
    lines = seen.decode().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("syncsnapd "))
    return [line.split(":", 1)[1].strip() for line in lines[start + 1:start + 7]]


def test_the_start_hint_on_a_terminal_names_syncsnap_before_curl(short_tmp: Path) -> None:
    env = make_env(short_tmp)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    hint = _start_hint(short_tmp, env)
    assert hint[:4] == ["syncsnap status", "syncsnap follow", "syncsnap snapshot docs", "syncsnap open"]
    assert hint[4].startswith("curl -N --unix-socket")


def test_the_start_hint_names_the_venv_script_when_syncsnap_is_not_on_path(short_tmp: Path) -> None:
    """`make run` starts .venv/bin/syncsnapd without activating the venv: a bare `syncsnap` would be
    "command not found". The hint names the script beside the daemon's Python, and it runs."""
    env = make_env(short_tmp)
    env["PATH"] = "/usr/bin:/bin"
    hint = _start_hint(short_tmp, env)
    script = str(Path(sys.executable).parent / "syncsnap")
    assert hint[0] in (f"{script} status", f"{os.path.relpath(script)} status")
    assert hint[3].endswith("syncsnap open") and hint[3] != "syncsnap open"
    assert Path(hint[0].split()[0]).resolve() == Path(script).resolve()
