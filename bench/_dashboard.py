"""``python -m bench dashboard``: the dashboard's weight and liveness, measured in a real Chromium.

- **Weight**: bytes transferred on the first load after login (every response the page needed: HTML, CSS,
  ES modules, the first API answers; headers included, as Chromium counts them on the wire), and on a
  reload (ETag revalidations answer 304 with no body).
- **Latency**: the time from a progress event leaving the daemon (its ``updated_at``, stamped when the run's
  publisher builds it, just before the tracker hands it out) to the page's DOM showing it (the page pushes
  ``now - updated_at`` onto ``window.syncsnapLatencies`` right after rendering each event). Both clocks
  are this machine's wall clock, in milliseconds. Over :data:`ROUNDS` snapshots of a tree that takes
  seconds to read.

Writes docs/dashboard.md and prints the same table.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/lib/chromium/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
FILES, SIZE = 200, 512 * 1024  # 100 MiB of incompressible data
SPARSE_GIB = 4  # and 4 sparse 1 GiB files: read and hashed in full (seconds), stored as one chunk of zeros
ROUNDS = 3  # snapshots measured; the sparse files are touched between them so that each run reads them


def _start(base: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "SYNCSNAP_"))}
    env.update(HOME=str(base / "home"), XDG_RUNTIME_DIR=str(base / "run"), XDG_CONFIG_HOME=str(base / "cfg"),
               XDG_DATA_HOME=str(base / "data"), XDG_STATE_HOME=str(base / "state"))
    (base / "run").mkdir(mode=0o700)
    tree = base / "tree"
    for i in range(FILES):
        p = tree / f"d{i % 20}" / f"f{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(SIZE))
    for i in range(SPARSE_GIB):
        with open(tree / f"sparse{i}.img", "wb") as f:
            f.truncate(1 << 30)
    config = base / "syncsnapd.toml"
    config.write_text(f'[daemon]\ntcp = "127.0.0.1:0"\nstore = "{base}/store"\nwatch = false\n'
                      f'[[projects]]\nid = "bench"\npath = "{tree}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "syncsnapd", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "daemon.log", "ab"))
    disc = base / "run/syncsnap/syncsnapd.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = json.loads(disc.read_text())
            if info.get("pid") == proc.pid:
                return proc, info, env
        except (OSError, ValueError):
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"daemon did not start: {(base / 'daemon.log').read_text()}")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure() -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    base = Path(tempfile.mkdtemp(prefix="ss-dash-", dir="/tmp"))
    proc, info, env = _start(base)
    try:
        url = subprocess.run([sys.executable, "-m", "syncsnap", "open", "--print"], env=env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            cdp = page.context.new_cdp_session(page)
            cdp.send("Network.enable")
            sizes: dict[str, float] = {}
            cdp.on("Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
            page.goto(url)
            page.get_by_role("status", name="Connection").filter(has_text="Live").wait_for()
            page.wait_for_load_state("networkidle")
            first = sum(sizes.values())
            first_count = len(sizes)
            sizes.clear()
            page.reload()
            page.get_by_role("status", name="Connection").filter(has_text="Live").wait_for()
            page.wait_for_load_state("networkidle")
            reload_bytes = sum(sizes.values())

            lat: list[float] = []
            run_seconds = 0.0
            for _ in range(ROUNDS):
                for sparse in (base / "tree").glob("sparse*.img"):
                    os.utime(sparse)  # changed: the next snapshot reads it again
                page.evaluate("window.syncsnapLatencies.length = 0")
                t0 = time.monotonic()
                page.get_by_role("article", name="bench").get_by_role("button", name="Snapshot now").click()
                dialog = page.get_by_role("dialog", name="Snapshot of bench")
                dialog.wait_for(state="visible")
                dialog.wait_for(state="hidden", timeout=300_000)
                run_seconds += time.monotonic() - t0
                lat += page.evaluate("window.syncsnapLatencies")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return {"first_load_bytes": first, "first_load_requests": first_count, "reload_bytes": reload_bytes,
            "events": len(lat), "run_seconds": run_seconds,
            "p50_ms": _pct(lat, 50) if lat else None, "p99_ms": _pct(lat, 99) if lat else None,
            "max_ms": max(lat) if lat else None, "mean_ms": statistics.fmean(lat) if lat else None}


def report(r: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f} ms"
    rows = [
        ("first load after login, bytes on the wire", f"{r['first_load_bytes'] / 1024:.1f} KiB "
         f"({r['first_load_requests']} responses)", "< 100 KB"),
        ("reload (ETag revalidation), bytes on the wire", f"{r['reload_bytes'] / 1024:.1f} KiB", ""),
        (f"progress events rendered over {ROUNDS} snapshots", f"{r['events']} in {r['run_seconds']:.1f} s", ""),
        ("event leaves the daemon → DOM updated, p50", ms(r["p50_ms"]), ""),
        ("event leaves the daemon → DOM updated, p99", ms(r["p99_ms"]), ""),
        ("event leaves the daemon → DOM updated, max", ms(r["max_ms"]), ""),
    ]
    lines = ["| measure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    out = REPO / "docs" / "dashboard.md"
    r = measure()
    table = report(r)
    print(table)
    out.write_text(
        "# The dashboard, measured\n\n"
        f"`make bench` (`python -m bench dashboard`), {time.strftime('%Y-%m-%d')}, in Debian's Chromium driven by\n"
        f"Playwright, on this machine (2 cores). Each snapshot: {FILES} files of {SIZE // 1024} KiB (random data)\n"
        f"and {SPARSE_GIB} sparse files of 1 GiB (read and hashed in full), {ROUNDS} snapshots.\n"
        "How each figure is taken: the docstring of `bench/_dashboard.py`.\n\n" + table + "\n")
    print(f"written to {out}")
    return 0
