"""What every command shares: exit codes, JSON and table output, the chosen transport."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..protocol import Transport
from ._view import JsonView

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: what a shell shows for a standard tool whose reader went away (`ls | head -1`).
EXIT_STDOUT_CLOSED = 141


def print_json(obj: Any) -> None:
    JsonView().emit(obj)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def transport_of(args: argparse.Namespace) -> Transport:
    t: Transport = getattr(args, "transport", "sse")
    return t


def positive(text: str) -> int:
    """An argparse type: a whole number from 1 up (a count or a limit)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 up (got {text!r})")
    return n
