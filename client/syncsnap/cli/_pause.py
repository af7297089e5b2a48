"""``syncsnap pause PROJECT`` and ``syncsnap resume PROJECT``."""

from __future__ import annotations

import argparse

from .._client import AsyncClient
from ..models import Project
from ._commands import project_json
from ._output import EXIT_OK, print_json


async def cmd_pause(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    project = await client.pause(args.project)
    return _report(project, as_json, "Paused {id}: no snapshot starts until `syncsnap resume {id}`")


async def cmd_resume(client: AsyncClient, args: argparse.Namespace, as_json: bool) -> int:
    project = await client.resume(args.project)
    return _report(project, as_json, "Resumed {id}")


def _report(project: Project, as_json: bool, text: str) -> int:
    if as_json:
        print_json(project_json(project))
        return EXIT_OK
    line = text.format(id=project.id)
    p = project.progress
    if not p.terminal and p.state != "idle":
        line += (f"; its snapshot {p.run} is held at step {p.step}/{p.steps} ({p.percent:.1f}%)" if project.paused
                 else f"; its snapshot {p.run} goes on")
    print(line + ".")
    return EXIT_OK
