"""A project's own ``s3`` table (``[projects.s3]``) and ``key_file``, and the ``profile`` of an ``s3`` table:
parsed as ``[daemon.s3]`` and ``daemon.key_file`` are, bad values named by key, and one store named by two
projects (or a project and the daemon) with different settings refused at load, with exit status 2 from
the command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncsnapd.core import ConfigError, DaemonConfig, load_config
from syncsnapd.core._sizes import DEFAULT_STAGING_MAX


def _load(tmp_path: Path, text: str, store: str = "main") -> DaemonConfig:
    for d in ("work", "home"):
        (tmp_path / d).mkdir(exist_ok=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstore = "{store}"\nstate_dir = "{tmp_path}/st"\n' + text)
    return load_config(cfg, env={"HOME": str(tmp_path)})


def _project(pid: str, *lines: str) -> str:
    return "\n".join(["[[projects]]", f'id = "{pid}"', f'path = "{"work" if pid == "work" else "home"}"', *lines,
                      ""])


def test_a_project_s3_table_and_key_file_replace_the_daemons_for_its_store(tmp_path: Path) -> None:
    c = _load(tmp_path, 'key_file = "daemon.key"\n[daemon.s3]\nendpoint = "http://127.0.0.1:9000"\nprofile = "me"\n'
              + _project("work", 'store = "s3://acme/laptop"', 'key_file = "keys/work.key"', "[projects.s3]",
                         'endpoint = "https://s3.eu-west-1.wasabisys.com/"', 'region = "eu-west-1"',
                         'profile = "acme-sso"', 'staging_max = "1 GiB"', "concurrency = 8")
              + _project("home", 'store = "s3://mine/laptop"'))
    work, home = c.projects
    assert c.s3 is not None and (c.s3.endpoint, c.s3.profile) == ("http://127.0.0.1:9000", "me")
    s3 = work.store_s3(c)
    assert s3 is not None and s3 == work.s3
    assert (s3.endpoint, s3.region, s3.profile, s3.staging_max, s3.concurrency, s3.path_style) == (
        "https://s3.eu-west-1.wasabisys.com", "eu-west-1", "acme-sso", 1 << 30, 8, False)
    assert work.store_key_file(c) == tmp_path / "keys" / "work.key"  # relative to the file's directory
    # Without its own: the daemon's, as a whole.
    assert home.s3 is None and home.store_s3(c) is c.s3
    assert home.store_key_file(c) == c.key_file == tmp_path / "daemon.key"

    # An inline table works the same; keys left out take their defaults, not [daemon.s3]'s.
    c = _load(tmp_path, '[daemon.s3]\nregion = "us-east-1"\n'
              + _project("work", 'store = "s3://acme/laptop"', 's3 = { profile = "work" }')
              + _project("home", 'store = "s3://mine/laptop"'))
    own = c.projects[0].store_s3(c)
    assert own is not None and (own.profile, own.region, own.staging_max) == ("work", None, DEFAULT_STAGING_MAX)


def test_daemon_s3_settings_that_apply_to_no_store_are_refused(tmp_path: Path) -> None:
    """The daemon's store is a directory and the one bucket project has its own table: [daemon.s3] would
    silently do nothing, so the load names it (as it does when no store at all is a bucket)."""
    with pytest.raises(ConfigError, match=r"^daemon\.s3: applies to no store"):
        _load(tmp_path, '[daemon.s3]\nregion = "us-east-1"\n'
              + _project("work", 'store = "s3://acme/laptop"', 's3 = { profile = "work" }'))


def test_a_local_project_store_may_have_its_own_key_file(tmp_path: Path) -> None:
    c = _load(tmp_path, _project("work", 'store = "work-store"', 'key_file = "work.key"'))
    assert c.projects[0].store_key_file(c) == tmp_path / "work.key" and c.key_file is None


@pytest.mark.parametrize(("lines", "message"), [
    (['store = "s3://acme/x"', "[projects.s3]", 'bucket = "x"'],
     "projects[0].s3.bucket: unknown key (known: concurrency, endpoint, path_style, profile, region, staging_max)"),
    (['store = "s3://acme/x"', "[projects.s3]", 'endpoint = "s3.example.com"'],
     "projects[0].s3.endpoint: expected the service's URL such as https://s3.example.com or "
     "http://127.0.0.1:9000, got 's3.example.com'"),
    (['store = "s3://acme/x"', "[projects.s3]", 'profile = "two words"'],
     "projects[0].s3.profile: expected the name of a profile in the AWS credentials or config file, such as "
     "\"work\", got 'two words'"),
    (['store = "s3://acme/x"', "[projects.s3]", "profile = 3"],
     "projects[0].s3.profile: expected the name of a profile in the AWS credentials or config file, such as "
     "\"work\", got 3"),
    (['store = "s3://acme/x"', "[projects.s3]", 'staging_max = "1 MiB"'],
     "projects[0].s3.staging_max: expected a size from 64 MiB to 1024 TiB such as \"4 GiB\" or a number of "
     "bytes, got '1 MiB'"),
    (['store = "s3://acme/x"', "[projects.s3]", 'path_style = "yes"'],
     "projects[0].s3.path_style: expected true or false, got 'yes'"),
    (['store = "s3://acme/x"', "s3 = 5"], "projects[0].s3: expected a table ([daemon.s3] or [projects.s3])"),
    (['store = "work-store"', 's3 = { region = "x" }'],
     'projects[0].s3: only for a project whose own store is a bucket (store = "s3://bucket/prefix" in its table)'),
    (['s3 = { region = "x" }'],
     'projects[0].s3: only for a project whose own store is a bucket (store = "s3://bucket/prefix" in its table)'),
    (['key_file = "k"'], "projects[0].key_file: only for a project with a store of its own (store = ... in its "
                         "table); the daemon's store is opened with daemon.key_file"),
    (['store = "s3://acme/x"', "key_file = 7"], "projects[0].key_file: expected a path string, got 7"),
])
def test_bad_project_s3_and_key_file_name_the_key(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _project("work", *lines))
    assert str(info.value) == message


def test_a_bad_daemon_profile_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.s3\.profile: expected the name of a profile"):
        _load(tmp_path, '[daemon.s3]\nprofile = ""\n' + _project("work", 'store = "s3://acme/x"'))


@pytest.mark.parametrize(("text", "message", "store"), [
    # Two projects, one bucket: their own tables differ, or one has a table and the other the daemon's.
    (_project("work", 'store = "s3://acme/x"', 's3 = { profile = "work" }')
     + _project("home", 'store = "s3://acme/x"', 's3 = { profile = "home" }'),
     "projects[1].s3: the store s3://acme/x is also projects[0]'s, with other S3 settings", "main"),
    ('[daemon.s3]\nregion = "us-east-1"\n' + _project("work", 'store = "s3://acme/x"')
     + _project("home", 'store = "s3://acme/x"', 's3 = { region = "us-east-1", profile = "home" }'),
     "projects[1].s3: the store s3://acme/x is also projects[0]'s, with other S3 settings", "main"),
    # A project naming the daemon's own bucket with other settings.
    ('[daemon.s3]\nregion = "us-east-1"\n' + _project("work", 'store = "s3://acme/d"', 's3 = { region = "eu-1" }'),
     "projects[0].s3: the store s3://acme/d is also the daemon's (daemon.store), with other S3 settings",
     "s3://acme/d"),
    # One store, two master keys (a bucket; a directory however spelled; the daemon's).
    (_project("work", 'store = "s3://acme/x"', 'key_file = "a.key"')
     + _project("home", 'store = "s3://acme/x"', 'key_file = "b.key"'),
     "projects[1].key_file: the store s3://acme/x is also projects[0]'s, with another key file", "main"),
    (_project("work", 'store = "shared"', 'key_file = "a.key"') + _project("home", 'store = "link"'),
     "projects[1].key_file: the store {tmp}/shared is also projects[0]'s, with another key file", "main"),
    (_project("work", 'store = "main"', 'key_file = "a.key"'),
     "projects[0].key_file: the store {tmp}/main is also the daemon's (daemon.store), with another key file",
     "main"),
])
def test_one_store_named_two_ways_is_refused(tmp_path: Path, text: str, message: str, store: str) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "link").symlink_to("shared")
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, store)
    assert str(info.value).startswith(message.format(tmp=tmp_path)), str(info.value)


def test_one_store_named_the_same_way_twice_is_one_store(tmp_path: Path) -> None:
    (tmp_path / "k.key").write_bytes(b"")
    (tmp_path / "link.key").symlink_to("k.key")
    c = _load(tmp_path, _project("work", 'store = "s3://acme/x"', 'key_file = "k.key"', 's3 = { profile = "p" }')
              + _project("home", 'store = "s3://acme/x"', 'key_file = "link.key"', 's3 = { profile = "p" }'))
    work, home = c.projects
    assert work.store_location(c) == home.store_location(c) and work.store_s3(c) == home.store_s3(c)
    # An empty table is [daemon.s3]'s defaults; it equals a [daemon.s3] that sets nothing different.
    c = _load(tmp_path, '[daemon.s3]\n' + _project("work", 'store = "s3://acme/x"', "s3 = {}")
              + _project("home", 'store = "s3://acme/x"'))
    assert c.projects[0].store_s3(c) == c.projects[1].store_s3(c)


def test_the_command_exits_2_naming_the_key_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}/st"\nstore = "{tmp_path}/main"\n'
                   f'[[projects]]\nid = "work"\npath = "{tmp_path}/work"\nstore = "s3://acme/x"\n'
                   '[projects.s3]\nendpoint = "http://127.0.0.1:9"\nprofile = "work"\n'
                   f'[[projects]]\nid = "home"\npath = "{tmp_path}/home"\nstore = "s3://acme/x"\n'
                   '[projects.s3]\nendpoint = "http://127.0.0.1:9"\nprofile = "home"\n')
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    for args in ([], ["snapshots"], ["check", "--project", "home"]):
        r = subprocess.run([sys.executable, "-m", "syncsnapd", *args, "--config", str(cfg)], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 2, (args, r.stderr)
        assert "projects[1].s3: the store s3://acme/x is also projects[0]'s, with other S3 settings" in r.stderr
    assert not (tmp_path / "st").exists() and not (tmp_path / "main").exists()  # nothing written
