"""Human-readable numbers for the CLI and the notifier. No I/O."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; exact bytes below 1 KiB (the daemon's own format)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """4.24 -> '4.2 s', 125 -> '2 min 5 s', 7260 -> '2 h 1 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def short_duration(seconds: float) -> str:
    """For narrow columns: '12s', '3m05s', '1h02m'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def plural(n: int, word: str, many: str | None = None) -> str:
    """1 -> '1 file', 3 -> '3 files' (``many``: the plural when it is not word + s)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def precise_duration(seconds: float) -> str:
    """For timings that may be tiny: '3 ms', '0.42 s', '4.2 s', then as :func:`human_duration`."""
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 1:
        return f"{seconds:.2f} s"
    return human_duration(seconds)


def percent(fraction: float) -> str:
    """0.9091 -> '90.9%'."""
    return f"{fraction * 100:.1f}%"


def display_path(path: str) -> str:
    """A file name as printed on a terminal: control characters escaped (``\\x1b``, ``\\n``), and the
    bytes that were not UTF-8 (the daemon sends them as lone surrogates) as ``\\xff``, so that a name can
    neither move the cursor nor recolour the terminal; a backslash is doubled only in a name so escaped.
    As the offline ``syncsnapd diff`` does."""
    if path.isprintable():
        return path
    out = []
    for ch in path:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)
