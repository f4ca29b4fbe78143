"""Shared helpers of the benchmarks: environment record, timing, tables, JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


def pick_device(name: Optional[str] = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device) -> Dict[str, object]:
    """What a reader needs to judge a figure: device, versions, threads."""
    import torch_geometric

    from taggnn.utils import has_torch_scatter, has_torch_sparse

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "torch_sparse": has_torch_sparse(),
        "torch_scatter": has_torch_scatter(),
    }
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, repeats: int = 10,
              warmup: int = 2, max_seconds: float = 20.0) -> Dict[str, float]:
    """Median (and spread) of wall-clock times of ``fn`` in milliseconds.

    Synchronises CUDA around each call. Stops early after ``max_seconds`` of
    measured time (at least 3 runs), so slow reference paths stay bounded.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: List[float] = []
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1e3)
        spent += elapsed
        if spent > max_seconds and len(times) >= 3:
            break
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "runs": len(times),
    }


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak CUDA memory of one call above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def format_table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    """A plain Markdown table (also readable in a terminal)."""
    def fmt(value):
        if value is None:
            return "n/a"
        if isinstance(value, float):
            if value == 0:
                return "0"
            if abs(value) >= 100:
                return f"{value:.0f}"
            if abs(value) >= 1:
                return f"{value:.2f}"
            return f"{value:.3g}"
        return str(value)

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def write_json(path: Path, payload: Dict[str, object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def describe_environment(env: Dict[str, object]) -> str:
    return (
        f"device: {env['device']} ({env['device_name']}), threads: {env['torch_threads']}, "
        f"torch {env['torch']}, torch_geometric {env['torch_geometric']}, "
        f"torch-sparse: {'yes' if env['torch_sparse'] else 'no'}, date: {env['date']}"
    )
