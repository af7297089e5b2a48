"""Configuration: XDG defaults, --folder, and errors that name the key and exit 2 without writing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from syncsnapd.core import ConfigError, load_config, overlap_warnings


def _env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_STATE_HOME": str(tmp_path / "state")}


def test_embedded_default_uses_xdg_dirs_and_sync_folder(tmp_path: Path) -> None:
    cfg = load_config(None, [], _env(tmp_path))
    assert cfg.socket == tmp_path / "run/syncsnap/syncsnapd.sock"
    assert cfg.store == tmp_path / "data/syncsnap/store"
    assert cfg.token_file == tmp_path / "cfg/syncsnap/token"
    assert cfg.state_dir == tmp_path / "state/syncsnap"
    assert cfg.tcp == "127.0.0.1:8473"
    assert [(p.id, p.path) for p in cfg.projects] == [("Sync", tmp_path / "home/Sync")]
    assert not (tmp_path / "home").exists()  # loading writes nothing


def test_folders_get_unique_ids(tmp_path: Path) -> None:
    (tmp_path / "a/docs").mkdir(parents=True)
    (tmp_path / "b/docs").mkdir(parents=True)
    (tmp_path / "My Photos").mkdir()
    cfg = load_config(None, [str(tmp_path / "a/docs"), str(tmp_path / "b/docs"), str(tmp_path / "My Photos")],
                      _env(tmp_path))
    assert [p.id for p in cfg.projects] == ["docs", "docs-2", "My-Photos"]


def test_toml_file(tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    f = tmp_path / "c.toml"
    f.write_text('[daemon]\nsocket = "s.sock"\ntcp = ""\nstore = "/x/store"\nheartbeat = 2\n'
                 '[[projects]]\nid = "p1"\npath = "proj"\nignore = ["*.tmp", "build/"]\n')
    cfg = load_config(f, [], _env(tmp_path))
    assert cfg.socket == tmp_path / "s.sock" and cfg.tcp is None and cfg.heartbeat == 2.0
    assert cfg.store == Path("/x/store")
    (p,) = cfg.projects
    assert p.id == "p1" and p.path == tmp_path / "proj"
    ignored = p.ignore_fn()
    assert ignored is not None
    assert ignored("a/b/x.tmp") and ignored("build/") and not ignored("src/build.py")


@pytest.mark.parametrize(("text", "key"), [
    ('[daemon]\nsockett = "x"\n', "daemon.sockett"),
    ('[daemon]\ntcp = "0.0.0.0:80"\n', "daemon.tcp"),
    ('[daemon]\ntcp = 8080\n', "daemon.tcp"),
    ('[daemon]\nheartbeat = "soon"\n', "daemon.heartbeat"),
    ('[[projects]]\nid = "a"\n', "projects[0].path"),
    ('[[projects]]\npath = "/nonexistent/x"\n', "projects[0].path"),
    ('[[projects]]\npath = "."\nid = "../evil"\n', "projects[0].id"),
    # "$" matches before a final newline: ids, durations and ports are matched whole, in ASCII digits.
    ('[[projects]]\npath = "."\nid = "docs\\n"\n', "projects[0].id"),
    ('[daemon]\nsettle = "5s\\n"\n', "daemon.settle"),
    ('[daemon]\nsettle = "\u0663s"\n', "daemon.settle"),
    ('[daemon]\ntcp = "127.0.0.1:\u0663\u0663"\n', "daemon.tcp"),
    ('[daemon]\nstore = "s3://bkt/p"\n[daemon.s3]\nendpoint = "http://x\\n"\n', "daemon.s3.endpoint"),
    ('[[projects]]\npath = "."\nid = "a"\n[[projects]]\npath = "."\nid = "a"\n', "projects[1].id"),
    ('[[projects]]\npath = "."\ncolour = 1\n', "projects[0].colour"),
    ('[daemon]\nmax_streams = 0\n', "daemon.max_streams"),
    ('[daemon]\nmax_streams = "many"\n', "daemon.max_streams"),
    ('[daemon]\nmax_streams = true\n', "daemon.max_streams"),
    ('[extra]\n', "extra"),
    ('not toml [', "--config"),
])
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, [], _env(tmp_path))
    assert str(info.value).startswith(key + ":")


def test_cli_exits_2_on_bad_config_and_writes_nothing(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[daemon]\ntcp = "10.0.0.1:80"\n')
    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(f)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "daemon.tcp" in proc.stderr and "10.0.0.1:80" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_cli_exits_2_on_bad_flag(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--folder", str(tmp_path / "missing")],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--folder" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "syncsnapd", "--bogus"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--bogus" in proc.stderr


def test_a_syncthing_project_without_path_loads_without_asking_syncthing(tmp_path: Path) -> None:
    """Loading the configuration does no network I/O: Syncthing need not be up (nothing listens at this
    address, and a listener would be asked nothing). The daemon resolves the path when the project starts
    (tests/sources/test_syncthing.py)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        (tmp_path / "st.key").write_text("key\n")
        (tmp_path / "plain").mkdir()
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[projects]]\nsyncthing = {{ url = "http://127.0.0.1:{port}", api_key_file = "st.key", '
                       'folder = "abcd-1234" }\n'
                       f'[[projects]]\npath = "plain"\nsyncthing = {{ api_key = "k", folder = "x" }}\n')
        pending, plain = load_config(cfg, env=_env(tmp_path)).projects
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    assert pending.id == "abcd-1234" and not pending.path_known  # id from the Syncthing folder id
    assert pending.syncthing is not None and pending.syncthing.api_key == "key"
    assert plain.path_known and plain.path == (tmp_path / "plain").resolve() and plain.id == "plain"


def test_overlapping_projects_are_named_with_what_each_snapshots(tmp_path: Path) -> None:
    for sub in ("a/b/c", "a/build/x", "z"):
        (tmp_path / sub).mkdir(parents=True)
    f = tmp_path / "c.toml"
    f.write_text('[[projects]]\nid = "a"\npath = "a"\nignore = ["build"]\n'
                 '[[projects]]\nid = "b"\npath = "a/b/c"\n'
                 '[[projects]]\nid = "built"\npath = "a/build"\n'  # ignored by "a": no overlap
                 '[[projects]]\nid = "z"\npath = "z"\n[[projects]]\nid = "z2"\npath = "z/"\n')
    config = load_config(f, [], _env(tmp_path))
    a, c, z = tmp_path / "a", tmp_path / "a/b/c", tmp_path / "z"
    assert overlap_warnings(config.projects) == [
        f"projects 'a' and 'b' overlap: 'a' snapshots {a} including {c}, which 'b' snapshots too",
        f"projects 'z' and 'z2' both snapshot {z}: every file there is snapshotted twice",
    ]


def test_folder_ids_do_not_depend_on_the_order_of_the_flags(tmp_path: Path) -> None:
    """Issue 16: `--folder b/docs --folder a/docs` named b/docs `docs` and a/docs `docs-2`, the other
    order the reverse; ids come from the sorted paths now, and the source says --folder."""
    (tmp_path / "a/docs").mkdir(parents=True)
    (tmp_path / "b/docs").mkdir(parents=True)
    one = load_config(None, [str(tmp_path / "b/docs"), str(tmp_path / "a/docs")], _env(tmp_path))
    two = load_config(None, [str(tmp_path / "a/docs"), str(tmp_path / "b/docs")], _env(tmp_path))
    expected = {tmp_path / "a/docs": "docs", tmp_path / "b/docs": "docs-2"}
    assert {p.path: p.id for p in one.projects} == {p.path: p.id for p in two.projects} == expected
    assert one.source == "--folder"
