"""docs/config.md's reference table against the loader, both ways: every key the loader accepts is
documented, every documented key is accepted. A key added to the loader without a row fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from syncsnapd.core import CONFIG_KEYS, ConfigError, load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def documented_keys() -> set[str]:
    rows = re.findall(r"^\| `([a-z0-9_.]+)` \|", DOC.read_text(), re.MULTILINE)
    assert len(rows) == len(set(rows)), "a key has two rows"
    return set(rows)


def loader_keys() -> set[str]:
    return {f"{table}.{key}" for table, keys in CONFIG_KEYS.items() for key in keys}


def test_every_key_the_loader_accepts_is_documented_and_no_other() -> None:
    assert documented_keys() == loader_keys()


def test_every_documented_key_is_accepted_by_the_loader(tmp_path: Path) -> None:
    """Not only the schema's sets: a file with each documented key is loaded without 'unknown key'."""
    (tmp_path / "docs").mkdir()
    for key in sorted(documented_keys()):
        table, _, name = key.rpartition(".")
        cfg = tmp_path / "c.toml"
        if table == "daemon":
            body = f"[daemon]\n{name} = 0\n"
        elif table == "daemon.s3":
            body = f'[daemon]\nstore = "s3://bucket/p"\n[daemon.s3]\n{name} = 0\n'
        elif table == "projects":
            body = f'[[projects]]\npath = "{tmp_path}/docs"\n{name} = 0\n'
        else:
            sub = table.split(".")[1]
            body = f'[[projects]]\npath = "{tmp_path}/docs"\n[projects.{sub}]\n{name} = 0\n'
        cfg.write_text(body)
        try:
            load_config(cfg, [], {"HOME": str(tmp_path)})
        except ConfigError as exc:
            assert "unknown key" not in str(exc), (key, str(exc))


def test_the_example_in_config_md_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # `~` in the example
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert example is not None
    (tmp_path / "Documents").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(example.group(1))
    config = load_config(cfg, [], {"HOME": str(tmp_path)})
    assert [p.id for p in config.projects] == ["docs", "shared"]
