"""Byte counts for people."""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """``512 B``, ``2.0 KiB``, ``7.2 MiB``, ``4.3 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
