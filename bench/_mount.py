"""The mount rows: reading the benchmark tree through ``syncsnapd mount`` against the offline restore of the
same snapshot (``syncsnapd restore``) and against ``restic mount`` of the same tree.

Each tool gets its own copy of the data: one syncsnap snapshot of the tree into a store of its own under
``bench/.work/runs/mount`` (taken in-process by the engine, as the daemon would), one ``restic backup`` into a
repository beside it. Then, each timed:

* ``syncsnapd restore SNAPSHOT DIR`` into an empty directory (the rate a mount is held against);
* ``tar -cf - . | cat >/dev/null`` in the mounted snapshot (``syncsnapd mount``), cold then warm;
* the same in ``restic mount``'s ``snapshots/latest/<tree>``, cold then warm.

Cold: the page cache is dropped first (``echo 3 > /proc/sys/vm/drop_caches``, root only; otherwise the
row says "page cache not dropped") and every mount is fresh. Warm: the same read again on that mount.
MiB/s are the tree's bytes over the wall time. Target: the mount's cold rate at least half the restore's.

Environment: ``BENCH_MOUNT_TREE`` reads that directory instead of the bench tree (a small one for a quick
check); ``BENCH_MOUNT_DROP_CACHES=0`` never drops the page cache.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

TARGET_SHARE = 0.5  # the mount's cold MiB/s over the offline restore's
MOUNT_WAIT_SECONDS = 60.0


def _tree_bytes(tree: Path) -> tuple[int, int]:
    files = total = 0
    for d, _, names in os.walk(tree):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files += 1
                total += os.lstat(p).st_size
    return files, total


def _drop_caches(enabled: bool) -> bool:
    if not enabled:
        return False
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _snapshot(store: Path, tree: Path) -> str:
    from syncsnapd.core import RunProgress
    from syncsnapd.engine import take_snapshot
    from syncsnapd.store import Store

    async def take() -> str:
        with Store.open(store, writable=True) as s:
            summary = await take_snapshot(s, "bench", tree, RunProgress("bench", "r-bench", lambda _: None))
            return summary.id

    return trio.run(take)


def _mounted(path: Path) -> bool:
    target = os.fsencode(os.path.abspath(path))
    with open("/proc/self/mounts", "rb") as f:
        return any(line.split(b" ")[1] == target for line in f)


def _serve(argv: list[str], mnt: Path, ready: Path, env: dict[str, str] | None, log: Path) -> subprocess.Popen[bytes]:
    shutil.rmtree(mnt, ignore_errors=True)
    mnt.mkdir(parents=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while not (_mounted(mnt) and ready.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{argv[0]} did not mount: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.05)
    return proc


def _unmount(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if _mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def _tar_seconds(where: Path) -> float:
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", "tar -cf - . | cat >/dev/null"], cwd=where, check=True,
                   capture_output=True)
    return time.monotonic() - started


def run(bench_tree: Path, work: Path, res: dict[str, Any], log: Callable[[str], None]) -> None:
    """Measure the mount rows into ``res["mount"]``."""
    tree = Path(os.environ.get("BENCH_MOUNT_TREE") or bench_tree).resolve()
    drop = os.environ.get("BENCH_MOUNT_DROP_CACHES", "1") != "0"
    base = work / "mount"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    files, nbytes = _tree_bytes(tree)
    mib = nbytes / 2**20
    out: dict[str, Any] = res.setdefault("mount", {})
    out.update({"tree": str(tree), "files": files, "bytes": nbytes})
    log(f"mount: snapshot of {tree} ({files:,} files, {mib:,.0f} MiB)")
    store = base / "store"
    sid = _snapshot(store, tree)
    syncsnapd = [sys.executable, "-m", "syncsnapd", "--store", str(store), "--state-dir", str(base / "state")]

    dropped = _drop_caches(drop)
    out["caches_dropped"] = dropped
    target = base / "restored"
    started = time.monotonic()
    subprocess.run([*syncsnapd, "restore", sid, str(target)], check=True, capture_output=True)
    out["restore_mib_s"] = mib / (time.monotonic() - started)
    shutil.rmtree(target, ignore_errors=True)
    log(f"mount: offline restore {out['restore_mib_s']:,.0f} MiB/s")

    mnt = base / "mnt"
    _drop_caches(drop)
    proc = _serve([*syncsnapd, "mount", str(mnt)], mnt, mnt / "bench" / sid, None, base / "mount.log")
    try:
        out["mount_cold_mib_s"] = mib / _tar_seconds(mnt / "bench" / sid)
        out["mount_warm_mib_s"] = mib / _tar_seconds(mnt / "bench" / sid)
    finally:
        _unmount(proc, mnt)
    log(f"mount: syncsnapd mount cold {out['mount_cold_mib_s']:,.0f}, warm {out['mount_warm_mib_s']:,.0f} MiB/s")

    if shutil.which("restic") is None:
        res["errors"].append("mount: restic is not installed (no restic mount row)")
        return
    env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=str(base / "restic"),
               RESTIC_CACHE_DIR=str(base / "restic-cache"), HOME=str(base))
    subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)
    subprocess.run(["restic", "backup", "--quiet", str(tree)], env=env, check=True, capture_output=True)
    rmnt = base / "restic-mnt"
    _drop_caches(drop)
    inside = rmnt / "snapshots" / "latest" / str(tree).lstrip("/")
    rproc = _serve(["restic", "mount", "--allow-other=false", str(rmnt)], rmnt, inside, env, base / "restic-mount.log")
    try:
        out["restic_cold_mib_s"] = mib / _tar_seconds(inside)
        out["restic_warm_mib_s"] = mib / _tar_seconds(inside)
    finally:
        _unmount(rproc, rmnt)
    log(f"mount: restic mount cold {out['restic_cold_mib_s']:,.0f}, warm {out['restic_warm_mib_s']:,.0f} MiB/s")
    shutil.rmtree(base, ignore_errors=True)


def _rate(v: Any) -> str:
    return f"{v:,.0f} MiB/s" if isinstance(v, (int, float)) else "n/a"


def summary_rows(res: dict[str, Any]) -> list[list[str]]:
    """The summary table's mount rows (measure, syncsnap, baseline, ratio, target, result)."""
    m = res.get("mount")
    if not m:
        return []
    cold, restore, restic = m.get("mount_cold_mib_s"), m.get("restore_mib_s"), m.get("restic_cold_mib_s")
    share = cold / restore if isinstance(cold, float) and isinstance(restore, float) and restore else None
    vs_restic = cold / restic if isinstance(cold, float) and isinstance(restic, float) and restic else None
    verdict = "n/a" if share is None else "PASS" if share >= TARGET_SHARE else "MISS"
    return [[f"mount read (tar), cold{'' if m.get('caches_dropped') else ' (page cache not dropped)'}",
             _rate(cold), f"restore {_rate(restore)}", f"{share:.2f}x" if share is not None else "n/a",
             f">= {TARGET_SHARE:g}x of restore", verdict],
            ["mount read (tar), cold, vs restic mount", _rate(cold), f"restic {_rate(restic)}",
             f"{vs_restic:.2f}x" if vs_restic is not None else "n/a", "", ""]]


def markdown(res: dict[str, Any]) -> str:
    """The mount section of docs/benchmarks.md ('' when not measured)."""
    m = res.get("mount")
    if not m or "mount_cold_mib_s" not in m:
        return ""
    return "\n".join([
        "", "## Reading a mounted snapshot (`syncsnapd mount`)", "",
        f"`tar -cf - . | cat >/dev/null` in the mounted snapshot of {m['files']:,} files "
        f"({m['bytes'] / 2**30:.2f} GiB), against `syncsnapd restore` of the same snapshot into an empty "
        "directory and against `restic mount` of the same tree (docs/mount.md). Cold: page cache dropped "
        f"({'yes' if m.get('caches_dropped') else 'no: not root'}) and a fresh mount; warm: the same read again.",
        "", "| | cold | warm |", "|---|---:|---:|",
        f"| syncsnapd restore (offline) | {_rate(m.get('restore_mib_s'))} | |",
        f"| syncsnapd mount | {_rate(m.get('mount_cold_mib_s'))} | {_rate(m.get('mount_warm_mib_s'))} |",
        f"| restic mount | {_rate(m.get('restic_cold_mib_s'))} | {_rate(m.get('restic_warm_mib_s'))} |", ""])
