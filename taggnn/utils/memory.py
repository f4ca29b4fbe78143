"""The machine's memory, and byte counts for people."""
from __future__ import annotations

import os

#: The memory assumed where the machine's cannot be read (1 TiB).
MEMORY_CEILING = 1 << 40


def machine_memory() -> int:
    """Bytes of physical memory of this machine: ``psutil`` when installed, else ``os.sysconf``,
    else :data:`MEMORY_CEILING`."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return MEMORY_CEILING


def format_bytes(count: float) -> str:
    """``count`` bytes as ``"812 B"``, ``"1.5 KiB"``, ... ``"2.0 PiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} PiB"  # pragma: no cover
