"""Process memory from ``/proc/<pid>/status`` (Linux; no psutil): current and peak RSS."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["memory", "reset_peak"]


def memory(pid: int | None = None) -> dict[str, int]:
    """Return ``{"rss": VmRSS, "peak": VmHWM}`` in bytes (zeros where ``/proc`` is missing)."""
    path = Path(f"/proc/{pid or os.getpid()}/status")
    found = {"rss": 0, "peak": 0}
    keys = {"VmRSS:": "rss", "VmHWM:": "peak"}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if parts and parts[0] in keys:
            found[keys[parts[0]]] = int(parts[1]) * 1024  # reported in kB
    return found


def reset_peak(pid: int | None = None) -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; returns whether the kernel allowed it."""
    try:
        Path(f"/proc/{pid or os.getpid()}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
