"""The client with idle states sent without an SSE ``id:`` line (docs/api.md, "Streams"): its parser keeps
the last id as the WHATWG parser does, and ``follow`` on a real daemon yields each never-run project's
idle state once, then the run's events in id order, over both transports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import syncsnap
from helpers.daemon import DaemonProcess, make_tree
from syncsnap.protocol import SseEvent, SseParser

FAST = syncsnap.FollowPolicy(jitter=0.0, backoff_initial=0.1, stall_timeout=0.5)


def test_an_event_without_an_id_line_keeps_the_last_id() -> None:
    parser = SseParser()
    out = parser.feed(b"event: progress\ndata: {}\n\nid: 7\nevent: progress\ndata: {}\n\n"
                      b"event: progress\ndata: {}\n\n")
    assert out == [SseEvent("progress", "{}", None), SseEvent("progress", "{}", "7"),
                   SseEvent("progress", "{}", "7")]


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_follow_yields_each_idle_project_once_then_the_run(daemon_factory: Any, short_tmp: Path,
                                                                 transport: str) -> None:
    folders = {name: short_tmp / name for name in ("docs", "pics", "mail")}
    for folder in folders.values():
        make_tree(folder, files=3)
    d: DaemonProcess = await trio.to_thread.run_sync(lambda: daemon_factory(folders, heartbeat=0.2))
    async with syncsnap.open_client(socket=d.socket, policy=FAST) as c:
        seen: list[syncsnap.Progress] = []
        with trio.fail_after(30):
            async with c.follow(transport=transport) as follower:  # type: ignore[arg-type]
                async for p in follower:
                    seen.append(p)
                    if len(seen) == 3:
                        started = await c.start_snapshot("pics")
                    if p.run is not None and p.terminal:
                        break
    idle, run = seen[:3], seen[3:]
    assert sorted(p.project for p in idle) == ["docs", "mail", "pics"]
    assert {(p.event_id, p.state) for p in idle} == {(0, "idle")}
    assert {p.run for p in run} == {started.run} and run[-1].state == "completed"
    assert [p.event_id for p in run] == sorted({p.event_id for p in run}) and run[0].event_id > 0
