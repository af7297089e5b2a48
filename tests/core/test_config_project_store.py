"""A project's own store (``store = ...`` in ``[[projects]]``): parsed as ``daemon.store`` is, and bad
values named by key (exit status 2 from the command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncsnapd.core import ConfigError, load_config


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "home").mkdir(exist_ok=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    return load_config(cfg, env={"HOME": str(tmp_path)})


def _projects(store_lines: str) -> str:
    return ('[[projects]]\nid = "work"\npath = "work"\n' + store_lines +
            '\n[[projects]]\nid = "home"\npath = "home"\n')


def test_a_project_store_is_a_directory_or_a_bucket(tmp_path: Path) -> None:
    c = _load(tmp_path, f'[daemon]\nstore = "main"\nstate_dir = "{tmp_path}/st"\n' + _projects('store = "work-store"'))
    work, home = c.projects
    assert (work.store, work.store_url) == (tmp_path / "work-store", None)  # relative to the file's directory
    assert (home.store, home.store_url) == (None, None)
    assert work.store_location(c) == str(tmp_path / "work-store")
    assert home.store_location(c) == str(tmp_path / "main")

    c = _load(tmp_path, f'[daemon]\nstate_dir = "{tmp_path}/st"\n[daemon.s3]\nendpoint = "http://127.0.0.1:9000"\n'
                        + _projects('store = "s3://acme/laptop/work"'))
    work = c.projects[0]
    assert work.store_url == "s3://acme/laptop/work"
    assert work.store == tmp_path / "st" / "s3" / "acme-laptop-work"  # staging, as the daemon's S3 store's
    assert c.store_url is None and c.s3 is not None and c.s3.endpoint == "http://127.0.0.1:9000"


def test_projects_naming_one_store_share_its_location(tmp_path: Path) -> None:
    text = ('[daemon]\nstore = "main"\n[[projects]]\nid = "a"\npath = "work"\nstore = "shared"\n'
            f'[[projects]]\nid = "b"\npath = "home"\nstore = "{tmp_path}/link"\n'
            '[[projects]]\nid = "c"\npath = "home"\nstore = "main"\n')
    (tmp_path / "link").symlink_to("shared")
    c = _load(tmp_path, text)
    a, b, main = (p.store_location(c) for p in c.projects)
    assert a == b == str(tmp_path / "shared")
    assert main == str(tmp_path / "main")


@pytest.mark.parametrize(("store", "message"), [
    ("store = 5", "projects[0].store: expected a path string, got 5"),
    ('store = ""', "projects[0].store: expected a path string, got ''"),
    ("store = []", "projects[0].store: expected a path string, got []"),
    ('store = "s3://"', "projects[0].store: 's3://' is not an s3://bucket/prefix URL"),
    ('store = "s3://Bad_Bucket/x"', "projects[0].store: 'Bad_Bucket' is not a valid bucket name"),
])
def test_bad_project_store_names_the_key(tmp_path: Path, store: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _projects(store))
    assert str(info.value) == message


def test_two_buckets_that_would_share_staging_are_refused(tmp_path: Path) -> None:
    # staging_dir("s3://a-b") == staging_dir("s3://a/b"): packs of one would be uploaded to the other.
    text = ('[daemon]\nstore = "s3://acme-x"\n[[projects]]\nid = "work"\npath = "work"\nstore = "s3://acme/x"\n')
    with pytest.raises(ConfigError, match=r"^projects\[0\]\.store: 's3://acme/x' and 's3://acme-x' \(daemon\.store\)"):
        _load(tmp_path, text)
    # The same URL twice is one store, not a clash.
    c = _load(tmp_path, '[daemon]\nstore = "s3://acme-x"\n' + _projects('store = "s3://acme-x"'))
    assert c.projects[0].store == c.store


def test_s3_settings_need_some_s3_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.s3: only for an S3 store"):
        _load(tmp_path, '[daemon]\n[daemon.s3]\nregion = "x"\n' + _projects('store = "local"'))


def test_the_command_exits_2_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path}/st"\n[[projects]]\nid = "work"\npath = "{tmp_path}/work"\n'
                   'store = 42\n')
    r = subprocess.run([sys.executable, "-m", "syncsnapd", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                        "PYTHONPATH": ":".join(sys.path)})
    assert r.returncode == 2
    assert "projects[0].store: expected a path string, got 42" in r.stderr
    assert not (tmp_path / "st").exists()  # nothing written
