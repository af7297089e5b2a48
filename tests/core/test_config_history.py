"""The history's retention keys: defaults, values, and a bad value named."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncsnapd.core import ConfigError, DaemonConfig, load_config


def load(tmp_path: Path, daemon: str) -> DaemonConfig:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[daemon]\n{daemon}\n")
    return load_config(cfg, [], {"HOME": str(tmp_path)})


def test_defaults_keep_90_days_and_1000_runs(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert (config.history_keep_days, config.history_keep_runs) == (90, 1000)


def test_values_and_zero_for_no_limit(tmp_path: Path) -> None:
    config = load(tmp_path, "history_keep_days = 0\nhistory_keep_runs = 50")
    assert (config.history_keep_days, config.history_keep_runs) == (0, 50)


@pytest.mark.parametrize("line", ["history_keep_days = -1", 'history_keep_days = "90d"', "history_keep_runs = 1.5",
                                  "history_keep_runs = true", "history_keep_days = 36501"])
def test_a_bad_value_names_the_key(tmp_path: Path, line: str) -> None:
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=f"^daemon.{key}: expected a whole number from 0 to"):
        load(tmp_path, line)
