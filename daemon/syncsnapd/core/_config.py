"""Configuration: TOML file or command-line folders, XDG defaults, validation that names the culprit.

A bad value raises :class:`ConfigError` whose message starts with the key at fault
(``daemon.tcp: ...``, ``projects[2].path: ...``); the CLI prints it and exits 2 before writing anything.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._ignore import IgnoreRules, ignore_pattern_error
from ._s3 import S3Options, parse_s3_url, staging_dir, store_location
from ._store_config import S3_KEYS, check_shared, check_staging, parse_s3, project_s3

DEFAULT_TCP_PORT = 8473
DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_CONFIG_NAME = "config.toml"
# The embedded default project when no config file and no --folder is given.
DEFAULT_FOLDER = "~/Sync"

# Matched with fullmatch, never match: "$" also matches before a final newline ("docs\n" is no id).
_PROJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DAEMON_KEYS = {"s3", "socket", "tcp", "store", "state_dir", "token_file", "heartbeat", "settle", "max_delay",
                "interval", "watch", "max_concurrent", "retry_attempts", "retry_backoff", "max_connections",
                "max_streams", "history_keep_days", "history_keep_runs", "request_rate", "request_burst",
                "host", "refresh_age", "key_file"}
_PROJECT_KEYS = {"id", "path", "ignore", "settle", "max_delay", "interval", "watch", "syncthing", "keep", "store",
                 "s3", "key_file"}
_KEEP_KEYS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_SYNCTHING_KEYS = {"url", "api_key", "api_key_file", "folder"}
# Every key the loader accepts, by table: docs/config.md's reference table is tested against this.
CONFIG_KEYS: Mapping[str, frozenset[str]] = {
    "daemon": frozenset(_DAEMON_KEYS), "daemon.s3": frozenset(S3_KEYS), "projects": frozenset(_PROJECT_KEYS),
    "projects.s3": frozenset(S3_KEYS), "projects.keep": frozenset(_KEEP_KEYS), "projects.syncthing": frozenset(_SYNCTHING_KEYS)}
# Debounce defaults: a folder is snapshotted once it has been quiet for SETTLE seconds, and at the latest
# MAX_DELAY seconds after the first change of a burst (a folder that never stops changing).
DEFAULT_SETTLE_SECONDS = 5.0
DEFAULT_MAX_DELAY_SECONDS = 60.0
# History retention: a finished run (its row and its progress log) is kept while it is among the newest
# DEFAULT_HISTORY_KEEP_RUNS finished runs of its project and younger than DEFAULT_HISTORY_KEEP_DAYS days
# (runs/_history.py: History.trim). A run costs about 4 KB plus 2.2 KB per second it ran, so 1,000 short
# runs are a few MB; a quarter of hourly snapshots is 2,160 runs, so for them the count binds first. The
# progress log is also capped per project (runs/_history.py EVENTS_KEPT), whatever the runs' length.
DEFAULT_HISTORY_KEEP_DAYS = 90
DEFAULT_HISTORY_KEEP_RUNS = 1000
_DURATION = re.compile(r"[ \t]*(\d+(?:\.\d+)?)[ \t]*(ms|s|m|h|d)?[ \t]*", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


# Sync tools' own metadata and temporary files are not user content: never snapshotted, never a reason
# to snapshot (Syncthing's `.stignore` is user content, so it is not listed).
SYNC_TOOL_IGNORES = (".stfolder", ".stversions", ".syncthing.*.tmp", "~syncthing~*.tmp")


@dataclass(frozen=True)
class SyncthingConfig:
    """The Syncthing folder a project follows (``syncthing = {url, api_key | api_key_file, folder}``)."""

    url: str
    api_key: str = field(repr=False)
    folder: str


@dataclass(frozen=True)
class KeepPolicy:
    """Which snapshots of a project a prune keeps (``keep = { last = 10, daily = 7, ... }``), as restic's
    ``forget --keep-*``: the newest ``last`` snapshots, and the newest snapshot of each of the newest
    ``hourly`` hours, ``daily`` days, ``weekly`` ISO weeks, ``monthly`` months and ``yearly`` years that
    have one (local time). A snapshot kept by any rule is kept. At least one count is above 0, so the
    newest snapshot is always kept."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0


# The ``path`` of a Syncthing project whose configuration gives none, until the daemon has asked Syncthing
# (when the project starts: loading the configuration does no network I/O). No folder has this path, and
# ``ProjectConfig.path_known`` is False while it stands; the daemon fails such a project's runs with
# ``folder_path_unknown`` before anything could use it, and replaces it once Syncthing has answered.
PATH_FROM_SYNCTHING = Path("/nonexistent/syncsnap-path-from-syncthing")


@dataclass(frozen=True)
class ProjectConfig:
    """One watched folder.

    ``path`` is :data:`PATH_FROM_SYNCTHING` for a Syncthing project configured without a path, until the
    daemon has resolved it (see :attr:`path_known`).
    """

    id: str
    path: Path
    ignore: tuple[str, ...] = ()
    settle: float = DEFAULT_SETTLE_SECONDS
    max_delay: float = DEFAULT_MAX_DELAY_SECONDS
    interval: float | None = None
    watch: bool = True
    syncthing: SyncthingConfig | None = None
    # Retention for prune; None keeps every snapshot of the project.
    keep: KeepPolicy | None = None
    # The project's own store (``store = ...`` in its table), as DaemonConfig's ``store`` / ``store_url``:
    # a directory, or an S3 store's URL and its local directory. None: the daemon's store.
    store: Path | None = None
    store_url: str | None = None
    # How its own store is reached and opened (``s3 = {...}`` and ``key_file`` in its table; only with a
    # store of its own, an S3 one for ``s3``). None: the daemon's (``[daemon.s3]``, ``daemon.key_file``).
    s3: S3Options | None = None
    key_file: Path | None = None

    def store_location(self, default: DaemonConfig) -> str:
        """Where this project's snapshots go: its store's URL or directory (the daemon's without its own)."""
        if self.store is None:
            return store_location(default.store, default.store_url)
        return store_location(self.store, self.store_url)

    def store_s3(self, default: DaemonConfig) -> S3Options | None:
        """How this project's store is reached when it is a bucket: its own ``s3`` table, else the daemon's."""
        return self.s3 if self.s3 is not None else default.s3

    def store_key_file(self, default: DaemonConfig) -> Path | None:
        """The master key file that opens this project's store: its own ``key_file``, else the daemon's."""
        return self.key_file if self.key_file is not None else default.key_file

    @property
    def path_known(self) -> bool:
        """False for a Syncthing project whose path Syncthing has not told yet."""
        return self.path != PATH_FROM_SYNCTHING

    def ignore_fn(self, exclude: tuple[Path, ...] = ()) -> IgnoreRules:
        """The project's ignore rules (gitignore semantics, see ``core/_ignore.py``): sync tools' files,
        the ``ignore`` patterns, and ``exclude`` (the daemon's own store and state directories when they
        lie inside the folder). The snapshot engine, diff, the watcher and the start-up check all use it.
        """
        root = self.path.resolve()
        excluded = [e.resolve().relative_to(root).as_posix() for e in exclude if e.resolve().is_relative_to(root)]
        return IgnoreRules(self.ignore, always=SYNC_TOOL_IGNORES, excluded=excluded)


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs to start; paths are absolute."""

    socket: Path
    tcp: str | None
    store: Path
    state_dir: Path
    token_file: Path
    runtime_dir: Path
    heartbeat: float = DEFAULT_HEARTBEAT_SECONDS
    # Snapshots running at once across projects; failed runs are retried (attempts in all, doubling backoff).
    max_concurrent: int = 2
    # Open HTTP connections served at once (beyond: 503). Each SSE subscriber holds one; 4,096 covers the
    # 1,000-subscriber fan-out we benchmark with room to spare. The start-up raises RLIMIT_NOFILE to match.
    max_connections: int = 4096
    # Open SSE streams (/events, /progress/stream) at once; a new one beyond gets 503 + Retry-After and
    # its client polls meanwhile. Well above the handful a person's browsers and followers open.
    max_streams: int = 256
    # Requests one connection may sustain per second, and make at once before that rate applies (beyond:
    # 429 rate_limited). The HTTP layer's own defaults (http/_config.py DEFAULT_REQUEST_*) are the same
    # figures, chosen there (fairness: one client must not starve the engine's threads).
    request_rate: int = 500
    request_burst: int = 100
    retry_attempts: int = 3
    # An S3-compatible store (``store = "s3://bucket/prefix"``, ``[daemon.s3]``): then ``store`` is its
    # local staging and cache directory, under the state directory (see _remote.py).
    store_url: str | None = None
    s3: S3Options | None = None
    retry_backoff: float = 30.0
    # History retention (see DEFAULT_HISTORY_KEEP_*); 0 turns that limit off.
    history_keep_days: int = DEFAULT_HISTORY_KEEP_DAYS
    history_keep_runs: int = DEFAULT_HISTORY_KEEP_RUNS
    projects: tuple[ProjectConfig, ...] = field(default=())
    source: str = "embedded default"
    host: str | None = None  # the machine name snapshots record (None: the system's hostname)
    refresh_age: float = 60.0  # seconds an S3 store's lists serve GET /snapshots (docs/config.md)
    # An encrypted store's master key, in a file only its owner may read (docs/encryption.md); None: the
    # passphrase comes from SYNCSNAP_PASSWORD_FILE or systemd's credential syncsnap-password. ``s3`` and
    # ``key_file`` serve every store except a project's own that has its own (ProjectConfig.store_s3 and
    # store_key_file).
    key_file: Path | None = None

    @property
    def discovery_file(self) -> Path:
        return self.runtime_dir / "syncsnapd.json"


# --- XDG -----------------------------------------------------------------------------------------------

def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Path:
    value = env.get(var, "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path(env.get("HOME") or os.path.expanduser("~")) / fallback


def runtime_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_RUNTIME_DIR/syncsnap``, or ``/tmp/syncsnap-UID`` where no runtime dir is set (as tmux does)."""
    base = env.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return Path(base) / "syncsnap"
    return Path(f"/tmp/syncsnap-{os.getuid()}")


def config_home(env: Mapping[str, str] = os.environ) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "syncsnap"


def default_config_file(env: Mapping[str, str] = os.environ) -> Path:
    return config_home(env) / DEFAULT_CONFIG_NAME


def _defaults(env: Mapping[str, str]) -> dict[str, Any]:
    run = runtime_dir(env)
    return {
        "socket": run / "syncsnapd.sock",
        "tcp": f"127.0.0.1:{DEFAULT_TCP_PORT}",
        "store": _xdg(env, "XDG_DATA_HOME", ".local/share") / "syncsnap" / "store",
        "state_dir": _xdg(env, "XDG_STATE_HOME", ".local/state") / "syncsnap",
        "token_file": config_home(env) / "token",
        "heartbeat": DEFAULT_HEARTBEAT_SECONDS,
    }


# --- loading -------------------------------------------------------------------------------------------

def load_config(config_file: Path | None = None, folders: list[str] | None = None,
                env: Mapping[str, str] = os.environ, overrides: Mapping[str, str] | None = None) -> DaemonConfig:
    """Build the daemon configuration.

    Args:
        config_file: a TOML file; if None, the default file is used when it exists.
        folders: ``--folder`` paths; projects named after each folder. Ids do not depend on the order of
            the flags: a name used twice gets ``-2``, ``-3``... in the order of the sorted paths. They are
            added to the file's projects, or replace the embedded default project.
        env: the environment (XDG variables, HOME).
        overrides: ``tcp``, ``socket``, ``store``, ``state_dir`` given as flags (``--state-dir``...): they
            win over the file; relative paths are relative to the working directory.

    Raises:
        ConfigError: naming the key or flag at fault.
    """
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    source = "embedded default"
    if config_file is None and default_config_file(env).exists():
        config_file = default_config_file(env)
    if config_file is not None:
        try:
            with open(config_file, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"--config: {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {config_file} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {config_file}: {exc.strerror}") from None
        base_dir = config_file.resolve().parent
        source = str(config_file)

    unknown = set(data) - {"daemon", "projects"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section (expected [daemon] and [[projects]])")
    daemon = data.get("daemon", {})
    if not isinstance(daemon, dict):
        raise ConfigError("daemon: must be a table ([daemon])")
    if extra := sorted(set(daemon) - _DAEMON_KEYS):
        raise ConfigError(f"daemon.{extra[0]}: unknown key (known: {', '.join(sorted(_DAEMON_KEYS))})")

    settings = _defaults(env)
    flags = dict(overrides or {})
    store = flags.get("store", daemon.get("store"))
    if isinstance(store, str) and store.startswith("s3://"):
        try:
            parse_s3_url(store)
        except ValueError as exc:
            raise ConfigError(f"daemon.store: {exc}") from None
        settings["store_url"] = store
        daemon.pop("store", None)
        flags.pop("store", None)
    elif "s3" in daemon and "store" not in flags and not project_s3(data.get("projects")):
        # --store DIR: the file's S3 settings do not apply (unless a project's store is a bucket)
        raise ConfigError('daemon.s3: only for an S3 store (store = "s3://bucket/prefix")')
    for key in ("socket", "store", "state_dir", "token_file", "key_file"):
        if key in flags:
            settings[key] = _path(flags[key], "--" + key.replace("_", "-"), Path.cwd())
        elif key in daemon:
            settings[key] = _path(daemon[key], f"daemon.{key}", base_dir)
    if "store_url" in settings or project_s3(data.get("projects")):
        settings["s3"] = parse_s3(daemon.get("s3", {}), "daemon.s3")
    if "store_url" in settings:
        settings["store"] = staging_dir(settings["state_dir"], settings["store_url"])
    if "tcp" in flags or "tcp" in daemon:
        settings["tcp"] = _tcp(flags["tcp"], "--tcp") if "tcp" in flags else _tcp(daemon["tcp"], "daemon.tcp")
    if "heartbeat" in daemon:
        hb = daemon["heartbeat"]
        if isinstance(hb, bool) or not isinstance(hb, int | float) or not 0.1 <= hb <= 3600:
            raise ConfigError(f"daemon.heartbeat: expected seconds between 0.1 and 3600, got {hb!r}")
        settings["heartbeat"] = float(hb)
    for key, lo, hi in (("max_concurrent", 1, 64), ("retry_attempts", 1, 100), ("max_connections", 8, 65536),
                         ("max_streams", 1, 65536), ("history_keep_days", 0, 36500),
                         ("history_keep_runs", 0, 10_000_000), ("request_rate", 1, 1_000_000),
                         ("request_burst", 1, 1_000_000)):
        if key in daemon:
            v = daemon[key]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"daemon.{key}: expected a whole number from {lo} to {hi}, got {v!r}")
            settings[key] = v
    settings.update({k: _duration(daemon[k], f"daemon.{k}") for k in ("retry_backoff", "refresh_age") if k in daemon})
    if (h := daemon.get("host")) is not None and not (isinstance(h, str) and 0 < len(h) <= 255 and h.isprintable()):
        raise ConfigError(f"daemon.host: expected a machine name of 1 to 255 printable characters, got {h!r:.60}")

    timing: dict[str, Any] = {
        "settle": _duration(daemon.get("settle", DEFAULT_SETTLE_SECONDS), "daemon.settle"),
        "max_delay": _duration(daemon.get("max_delay", DEFAULT_MAX_DELAY_SECONDS), "daemon.max_delay"),
        "interval": _duration(daemon["interval"], "daemon.interval") if "interval" in daemon else None,
        "watch": _bool(daemon.get("watch", True), "daemon.watch"),
    }
    projects = _projects(data.get("projects", []), base_dir, timing, settings["state_dir"])
    check_staging(projects, settings.get("store_url"))
    check_shared(projects, settings)
    if "s3" in daemon and "store_url" not in settings and all(p.s3 is not None for p in projects if p.store_url):
        raise ConfigError("daemon.s3: applies to no store: the daemon's store is a directory and every project "
                          "whose store is a bucket has an s3 table of its own")
    paths: dict[Path, str] = {}  # in the order given; ids given in the order of the sorted paths
    for folder in folders or []:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--folder: {folder} is not a directory")
        paths[path.resolve()] = ""
    for path in sorted(paths):
        paths[path] = _unique_id(_slug(path.name), [*projects, *(ProjectConfig(i, p) for p, i in paths.items())])
    projects += [ProjectConfig(id=pid, path=path, **timing) for path, pid in paths.items()]
    if paths:
        source = "--folder" if config_file is None else f"{source} and --folder"
    if not projects and config_file is None:
        default = Path(DEFAULT_FOLDER.replace("~", env.get("HOME") or os.path.expanduser("~"), 1))
        projects.append(ProjectConfig(id=_slug(default.name), path=default, **timing))
    return DaemonConfig(runtime_dir=runtime_dir(env), projects=tuple(projects), source=source, host=h, **settings)


def _path(value: object, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path string, got {value!r}")
    p = Path(os.path.expandvars(value)).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _tcp(value: object, key: str) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(f'{key}: expected "127.0.0.1:PORT" or "" to disable, got {value!r}')
    if value == "":
        return None
    m = re.fullmatch(r"(127\.0\.0\.1|localhost|\[::1\]):(\d+)", value, re.ASCII)
    if m and int(m.group(2)) > 65535:
        raise ConfigError(f"{key}: port {m.group(2)} in {value!r} is out of range (0 to 65535; 0 picks a free one)")
    if not m:
        raise ConfigError(f"{key}: {value!r} is not a loopback address "
                          '(use "127.0.0.1:PORT", "[::1]:PORT" or "localhost:PORT"; port 0 picks one)')
    return value


def _projects(raw: object, base_dir: Path, timing: dict[str, Any], state_dir: Path) -> list[ProjectConfig]:
    if not isinstance(raw, list):
        raise ConfigError("projects: expected an array of tables ([[projects]])")
    out: list[ProjectConfig] = []
    for i, item in enumerate(raw):
        where = f"projects[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected a table")
        for key in item:
            if key not in _PROJECT_KEYS:
                raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(_PROJECT_KEYS))})")
        syncthing = _syncthing(item["syncthing"], f"{where}.syncthing", base_dir) if "syncthing" in item else None
        if "path" in item:
            path = _path(item["path"], f"{where}.path", base_dir).resolve()
            if not path.is_dir():
                raise ConfigError(f"{where}.path: {path} is not a directory")
            default_id = _slug(path.name)
        elif syncthing is not None:
            # Syncthing's own config has the path; the daemon asks it when the project starts.
            path, default_id = PATH_FROM_SYNCTHING, _slug(syncthing.folder)
        else:
            raise ConfigError(f"{where}.path: missing (the folder to snapshot)")
        pid = item.get("id", default_id)
        if not isinstance(pid, str) or not _PROJECT_ID.fullmatch(pid):
            raise ConfigError(f"{where}.id: {pid!r} is not a valid id (letters, digits, '.', '_', '-'; "
                              "at most 64, starting with a letter or digit)")
        if any(p.id == pid for p in out):
            raise ConfigError(f"{where}.id: {pid!r} is used by another project")
        ignore = item.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(x, str) and x for x in ignore):
            raise ConfigError(f"{where}.ignore: expected a list of glob patterns")
        if (bad := ignore_pattern_error(ignore)) is not None:
            raise ConfigError(f"{where}.ignore: {bad}")
        own = dict(timing)
        for key in ("settle", "max_delay", "interval"):
            if key in item:
                own[key] = _duration(item[key], f"{where}.{key}")
        if "watch" in item:
            own["watch"] = _bool(item["watch"], f"{where}.watch")
        if own["max_delay"] < own["settle"]:
            raise ConfigError(f"{where}.max_delay: must be at least settle ({own['settle']:g} s)")
        keep = _keep(item["keep"], f"{where}.keep") if "keep" in item else None
        store = _project_store(item["store"], f"{where}.store", base_dir, state_dir) if "store" in item else {}
        if "s3" in item:
            if store.get("store_url") is None:
                raise ConfigError(f'{where}.s3: only for a project whose own store is a bucket '
                                  f'(store = "s3://bucket/prefix" in its table)')
            store["s3"] = parse_s3(item["s3"], f"{where}.s3")
        if "key_file" in item:
            if not store:
                raise ConfigError(f"{where}.key_file: only for a project with a store of its own (store = ... in "
                                  "its table); the daemon's store is opened with daemon.key_file")
            store["key_file"] = _path(item["key_file"], f"{where}.key_file", base_dir)
        out.append(ProjectConfig(id=pid, path=path, ignore=tuple(ignore), syncthing=syncthing,
                                 keep=keep, **own, **store))
    return out


def _project_store(value: object, key: str, base_dir: Path, state_dir: Path) -> dict[str, Any]:
    """A project's ``store``: a directory (as ``daemon.store``) or an S3 URL, whose local directory is
    under the state directory as the daemon's is (``[daemon.s3]`` says how to reach the service)."""
    if isinstance(value, str) and value.startswith("s3://"):
        try:
            parse_s3_url(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        return {"store": staging_dir(state_dir, value), "store_url": value}
    return {"store": _path(value, key, base_dir).resolve()}  # one store however it is spelled


def _keep(raw: object, key: str) -> KeepPolicy:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a table such as {{ last = 10, daily = 7, weekly = 4 }}")
    counts: dict[str, int] = {}
    for k, v in raw.items():
        if k not in _KEEP_KEYS:
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(_KEEP_KEYS)})")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1_000_000:
            raise ConfigError(f"{key}.{k}: expected a whole number of snapshots from 0 to 1000000, got {v!r}")
        counts[k] = v
    if not any(counts.values()):
        raise ConfigError(f"{key}: keeps no snapshot at all; set at least one of {', '.join(_KEEP_KEYS)} above 0 "
                          "(leave keep out to keep every snapshot)")
    return KeepPolicy(**counts)


def _syncthing(raw: object, key: str, base_dir: Path) -> SyncthingConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f'{key}: expected a table such as {{ url = "http://127.0.0.1:8384", '
                          'api_key_file = "...", folder = "abcd-1234" }}')
    for k in raw:
        if k not in _SYNCTHING_KEYS:
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(sorted(_SYNCTHING_KEYS))})")
    url = raw.get("url", "http://127.0.0.1:8384")
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^/\s]+/?", url):
        raise ConfigError(f"{key}.url: expected the GUI/REST address such as http://127.0.0.1:8384, got {url!r}")
    folder = raw.get("folder")
    if not isinstance(folder, str) or not folder:
        raise ConfigError(f"{key}.folder: missing (the Syncthing folder id, as shown in its GUI)")
    if ("api_key" in raw) == ("api_key_file" in raw):
        raise ConfigError(f"{key}.api_key: give exactly one of api_key or api_key_file")
    if "api_key" in raw:
        api_key = raw["api_key"]
        if not isinstance(api_key, str) or not api_key:
            raise ConfigError(f"{key}.api_key: expected a non-empty string")
    else:
        key_file = _path(raw["api_key_file"], f"{key}.api_key_file", base_dir)
        try:
            api_key = key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}.api_key_file: cannot read {key_file}: {exc.strerror}") from None
        if not api_key:
            raise ConfigError(f"{key}.api_key_file: {key_file} is empty")
    return SyncthingConfig(url=url.rstrip("/"), api_key=api_key, folder=folder)


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"2s"``, ``"5m"``, ``"1h"``, ``"1d"``.

    Raises:
        ValueError: for anything else, including negative values.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(value)
    if seconds < 0 or seconds != seconds:
        raise ValueError(value)
    return seconds


def _duration(value: object, key: str) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(f'{key}: expected a duration such as 30, "2s", "5m" or "1h", got {value!r}') from None


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "folder"
    if not s[0].isalnum():
        s = "p" + s
    return s[:64]


def _unique_id(base: str, existing: list[ProjectConfig]) -> str:
    taken = {p.id for p in existing}
    return next(c for n in range(1, len(taken) + 2) if (c := base if n == 1 else f"{base}-{n}") not in taken)
