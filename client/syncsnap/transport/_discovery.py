"""Where the daemon is: explicit arguments, environment variables, the discovery file, or the default socket.

Order (the first that applies wins):

1. ``socket=`` / ``url=`` arguments of :func:`find_endpoint`;
2. ``SYNCSNAP_SOCKET`` (a Unix socket path), then ``SYNCSNAP_URL`` (``http://127.0.0.1:8473``);
3. the daemon's discovery file ``$XDG_RUNTIME_DIR/syncsnap/syncsnapd.json`` (its ``socket``);
4. the default socket ``$XDG_RUNTIME_DIR/syncsnap/syncsnapd.sock`` (``/tmp/syncsnap-$UID/`` without
   ``XDG_RUNTIME_DIR``), the same default the daemon uses.

Over TCP every request carries the bearer token read from ``token_file=``, ``SYNCSNAP_TOKEN_FILE``, the
discovery file's ``token_file``, or ``$XDG_CONFIG_HOME/syncsnap/token``, in that order.

The runtime directory is trusted only when it is ours alone, as the daemon requires (tmux's check: not a
symlink, a directory, owned by us, no permission for group or others), and the discovery file only when
it is a regular file we own: ``/tmp/syncsnap-UID`` can be created by anyone first, to plant a discovery
file or a socket of their own. Otherwise :func:`find_endpoint` refuses with a sentence. Where we connect,
the socket must be a socket we own (``transport/_http.py``).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from .._endpoint import Endpoint
from .._errors import SyncsnapError

DISCOVERY_NAME = "syncsnapd.json"
SOCKET_NAME = "syncsnapd.sock"


def runtime_dir(env: Mapping[str, str]) -> Path:
    """The daemon's runtime directory, computed exactly as the daemon does."""
    base = env.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isabs(base):
        return Path(base) / "syncsnap"
    return Path(f"/tmp/syncsnap-{os.getuid()}")


def _config_home(env: Mapping[str, str]) -> Path:
    value = env.get("XDG_CONFIG_HOME", "")
    if value and os.path.isabs(value):
        return Path(value) / "syncsnap"
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".config" / "syncsnap"


def check_runtime_dir(path: Path) -> bool:
    """False when ``path`` does not exist (no daemon has run); True when it is ours alone.

    Raises:
        SyncsnapError: it exists but is not ours alone (see the module docstring).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SyncsnapError(f"Cannot use the runtime directory {path}: {exc.strerror}.") from None
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        why = "is not a directory"
    elif st.st_uid != os.getuid():
        why = f"belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    elif st.st_mode & 0o077:
        why = f"has mode {stat.S_IMODE(st.st_mode):04o}, so other users may use it"
    if why is not None:
        raise SyncsnapError(f"Refusing the runtime directory {path}: it {why}; another user could put a false "
                            "syncsnapd there. Remove it (or make it yours with mode 0700) and restart syncsnapd.")
    return True


def read_discovery(env: Mapping[str, str]) -> tuple[Path, dict[str, object] | None]:
    """The discovery file's path and content (None when missing or unreadable).

    Raises:
        SyncsnapError: the runtime directory, or the discovery file, is not ours alone.
    """
    path = runtime_dir(env) / DISCOVERY_NAME
    if not check_runtime_dir(path.parent):
        return path, None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return path, None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            raise SyncsnapError(f"Refusing the discovery file {path}: it is not a file of yours (owner uid "
                                f"{st.st_uid}); remove it and restart syncsnapd.")
        try:
            data = json.loads(f.read(1 << 16))
        except (OSError, ValueError):
            return path, None
    return path, data if isinstance(data, dict) else None


def _parse_url(url: str, source: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SyncsnapError(f"{source} must look like http://127.0.0.1:8473 (got {url!r}); "
                            "the daemon only speaks plain HTTP on loopback.")
    try:
        port = parts.port or 80
    except ValueError:
        raise SyncsnapError(f"{source} has a bad port: {url!r}.") from None
    return parts.hostname, port


def _read_token(path: Path) -> tuple[str | None, str]:
    """The token in ``path``, or None and what is wrong with the file."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None, "does not exist"
    except IsADirectoryError:
        return None, "is a directory"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    return (token, "") if token else (None, "is empty")


# What to do when the daemon refuses the token, by who named the token file.
_FIX_ARGUMENT = ("Give --token-file the daemon's token file (its `token_file` setting, named in its discovery "
                 "file), or use the Unix socket.")
_FIX_ENV = "Point SYNCSNAP_TOKEN_FILE at the daemon's token file (its `token_file` setting), or use the Unix socket."
_FIX_DEFAULT = ("Give --token-file (or SYNCSNAP_TOKEN_FILE) the daemon's token file (its `token_file` setting), "
                "or use the Unix socket.")


def find_endpoint(env: Mapping[str, str] | None = None, *, socket: str | os.PathLike[str] | None = None,
                  url: str | None = None, token_file: str | os.PathLike[str] | None = None) -> Endpoint:
    """Work out how to reach the daemon (see the module docstring for the order).

    Raises:
        SyncsnapError: ``SYNCSNAP_URL`` (or ``url``) is not an ``http://host:port`` URL.
    """
    env = os.environ if env is None else env
    if socket is not None:
        return Endpoint("unix", path=os.fspath(socket), source="the socket argument")
    if url is None and env.get("SYNCSNAP_SOCKET"):
        return Endpoint("unix", path=env["SYNCSNAP_SOCKET"], source="SYNCSNAP_SOCKET")
    disc_path, disc = read_discovery(env)
    if url is None and env.get("SYNCSNAP_URL"):
        url, url_source = env["SYNCSNAP_URL"], "SYNCSNAP_URL"
    else:
        url_source = "the url argument"
    if url is not None:
        host, port = _parse_url(url, url_source)
        if token_file is not None:
            # The argument is the command's --token-file (docs/client.md): named as the user typed it.
            tok_path, tok_source, fix = Path(token_file), f"{os.fspath(token_file)} (--token-file)", _FIX_ARGUMENT
        elif env.get("SYNCSNAP_TOKEN_FILE"):
            tok_path, tok_source = Path(env["SYNCSNAP_TOKEN_FILE"]), f"{env['SYNCSNAP_TOKEN_FILE']} (SYNCSNAP_TOKEN_FILE)"
            fix = _FIX_ENV
        elif disc and isinstance(disc.get("token_file"), str):
            tok_path = Path(str(disc["token_file"]))
            tok_source = f"{tok_path} (from the discovery file {disc_path})"
            fix = (f"Is the daemon at {url} the one that wrote {disc_path}? If not, give --token-file its token "
                   "file (its `token_file` setting), or use the Unix socket.")
        else:
            tok_path = _config_home(env) / "token"
            tok_source, fix = f"{tok_path} (the default token file)", _FIX_DEFAULT
        token, problem = _read_token(tok_path)
        return Endpoint("tcp", host=host, port=port, token=token, token_source=tok_source, token_problem=problem,
                        token_fix=fix, source=url_source)
    if disc and isinstance(disc.get("socket"), str):
        return Endpoint("unix", path=str(disc["socket"]), source=f"the discovery file {disc_path}")
    check_runtime_dir(runtime_dir(env))
    return Endpoint("unix", path=str(runtime_dir(env) / SOCKET_NAME), source="the default location")
