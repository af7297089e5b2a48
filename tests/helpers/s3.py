"""An S3-compatible server on loopback for tests: ``moto`` in server mode.

moto is an **emulator** of S3 (state in memory; ``POST /moto-api/reset`` clears it), not S3 itself: it
speaks the same HTTP API (path-style addressing, SigV4, multipart, ranges, listing), which is what the
backend depends on. One server runs per test module on a free port; every test starts from an empty
server with one bucket. Credentials are moto's dummy ones, passed through the environment as a user's
would be.

:class:`ThrottlingProxy` sits in front of moto when a test needs S3's throttling answers (503 SlowDown)
or a slow link: moto never throttles, so the proxy is a test double for exactly that and forwards every
other request untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "syncsnap-test"
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    exe = Path(sys.executable).parent / "moto_server"
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    found = shutil.which("moto_server")
    if found is None:
        pytest.skip('moto_server not installed (pip install "moto[server]")')
    return [found, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """``moto_server`` as a subprocess on ``127.0.0.1:port``; can be stopped and started again on the
    same port (a store that goes away and comes back)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self._proc = subprocess.Popen(_moto_command(self.port), stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _post(self, path: str, body: bytes = b"") -> None:
        req = urllib.request.Request(self.url + path, data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def reset(self) -> None:
        """Forget every bucket and object, and accept any credentials again."""
        self._post("/moto-api/reset-auth", b"inf")
        self._post("/moto-api/reset")

    def accept_any_credentials(self) -> None:
        self._post("/moto-api/reset-auth", b"inf")

    def enforce_auth(self) -> None:
        """From now on, refuse credentials moto's IAM does not know (every key the tests use)."""
        self._post("/moto-api/reset-auth", b"0")

    def issue_credentials(self, user: str) -> tuple[str, str]:
        """A user of this server's IAM allowed every S3 action, and its (access key id, secret key): after
        :meth:`enforce_auth`, the only credentials this server accepts, and no other server does."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
        try:
            iam.create_user(UserName=user)
            policy = iam.create_policy(PolicyName=f"{user}-s3", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
            iam.attach_user_policy(UserName=user, PolicyArn=policy["Policy"]["Arn"])
            key = iam.create_access_key(UserName=user)["AccessKey"]
        finally:
            iam.close()
        return key["AccessKeyId"], key["SecretAccessKey"]


def create_bucket(endpoint: str, bucket: str = BUCKET) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    client.create_bucket(Bucket=bucket)
    client.close()


def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials as a user sets them: the environment (no config or credentials file of the host); and a
    passphrase for the store."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # New S3 stores are encrypted by default (issue 15): daemons and commands a test starts get a
    # passphrase, with a cheap key derivation. Tests of the refusal without one build their own environment.
    passphrase = tmp_path / "syncsnap-passphrase"
    passphrase.write_text("a passphrase for tests\n")
    monkeypatch.setenv("SYNCSNAP_PASSWORD_FILE", str(passphrase))
    monkeypatch.setenv("SYNCSNAP_SCRYPT_N", "1024")


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _error_body(code: str) -> bytes:
    return (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + code.encode()
            + b"</Code><Message>" + code.encode() + b" (injected by the test proxy)</Message></Error>")


class ThrottlingProxy:
    """A loopback HTTP proxy in front of moto (test double for throttling and slow links only).

    ``throttle(n)``: the next ``n`` requests are answered ``503 SlowDown`` as S3 does under load (or
    another error answer moto cannot produce, such as 507 for a full store).
    ``delay``: seconds each forwarded request is held (a slow link). ``requests``: (method, path) of
    every request forwarded to moto. Every forwarded request is sent with ``Connection: close`` and the
    answer relayed until moto closes, so no HTTP parsing of responses is needed.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._lock = threading.Lock()
        self._to_throttle = 0
        self.throttled = 0
        self.delay = 0.0
        self.requests: list[tuple[str, str]] = []
        self._answer = (b"503 Slow Down", _error_body("SlowDown"))
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Listen (again, on the same port after :meth:`down`)."""
        self._closed = False
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: connections are refused, as by a server that is down."""
        self.close()

    def throttle(self, n: int, status: str = "503 Slow Down", code: str = "SlowDown") -> None:
        """Answer the next ``n`` requests with this error (default: S3's throttling answer)."""
        with self._lock:
            self._to_throttle = n
            self._answer = (status.encode(), _error_body(code))

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    block = conn.recv(65536)
                    if not block:
                        return
                    head += block
                head, _, rest = head.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                with self._lock:
                    throttle = self._to_throttle > 0
                    if throttle:
                        self._to_throttle -= 1
                        self.throttled += 1
                    else:
                        self.requests.append((method.decode(), path.decode()))
                if throttle:
                    if headers.get(b"expect", b"").lower() != b"100-continue":
                        length = int(headers.get(b"content-length", b"0"))
                        while len(rest) < length:
                            block = conn.recv(65536)
                            if not block:
                                return
                            rest += block
                    status, body = self._answer
                    conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
                    return
                if self.delay:
                    time.sleep(self.delay)
                kept = [line for line in lines[1:] if not line.lower().startswith(b"connection:")]
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                with upstream:
                    upstream.sendall(b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n" + rest)
                    pump = threading.Thread(target=_pipe, args=(conn, upstream), daemon=True)
                    pump.start()
                    _pipe(upstream, conn)
            except OSError:
                return


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            block = src.recv(65536)
            if not block:
                break
            dst.sendall(block)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def plaintext_store(base: Path, config: Path) -> None:
    """Make the S3 store of ``config`` not encrypted, as a user opts out (``syncsnapd init --no-encrypt``),
    for tests of other things than encryption that read the bucket's objects. A store already there is
    left as it is."""
    import subprocess
    import sys

    from helpers.daemon import make_env

    r = subprocess.run([sys.executable, "-m", "syncsnapd", "init", "--no-encrypt", "--config", str(config)],
                       env=make_env(base), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 or "There is already a store" in r.stdout, r.stdout + r.stderr


def ready_bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """``moto`` emptied, the test bucket created, and the S3 environment of :func:`s3_env` set."""
    moto.reset()
    create_bucket(moto.url)
    s3_env(monkeypatch, tmp_path)
    return moto


def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed S3 request gives up within a second or two instead of about a minute."""
    from syncsnapd.core import _s3 as s3_settings

    monkeypatch.setattr(s3_settings, "BOTOCORE_ATTEMPTS", 2)
    monkeypatch.setattr(s3_settings, "RETRY_DELAYS", (0.2,))
    monkeypatch.setattr(s3_settings, "CONNECT_TIMEOUT", 2.0)
