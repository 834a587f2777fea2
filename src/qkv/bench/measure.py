"""How benchmarks measure: medians of interleaved runs, peak memory in a fresh process.

Timing runs the candidates round-robin (A, B, C, A, B, C, ...) after a warm-up, so that
a noisy neighbour slows all of them alike, and reports medians. Peak memory on the CPU is
read in a fresh subprocess from the kernel's resident-set high-water mark (VmHWM), reset
after the inputs are built, so that neither the import of torch nor memory an earlier
run left in the allocator's caches is counted.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["time_round_robin", "peak_memory_in_subprocess", "machine_info", "available_memory_bytes"]


def synchronize(device: str) -> None:
    """Wait for queued GPU work so that wall-clock time covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(
    workloads: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: str = "cpu",
    on_run: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per run of each workload, measured in interleaved rounds.

    Args:
        workloads: name -> a callable doing one complete run.
        repeats: timed rounds.
        warmup: untimed rounds first.
        device: "cpu" or "cuda" (synchronised around each run).
        on_run: called after every timed run (e.g. to advance a progress bar).

    Returns:
        name -> list of ``repeats`` durations in seconds.
    """
    for _ in range(warmup):
        for run in workloads.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, run in workloads.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if on_run is not None:
                on_run()
    return times


def median(values: list[float]) -> float:
    """The median, or NaN for an empty list."""
    return statistics.median(values) if values else float("nan")


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS since start or the last reset."""
    return _status_kib("VmHWM") * 1024


def peak_memory_in_subprocess(module: str, spec: dict, timeout_s: float = 1800) -> dict:
    """Run ``python -m <module> '<json spec>'`` in a fresh process; return its JSON answer.

    The module's ``__main__`` must build its inputs, call :func:`reset_peak_rss`, run the
    workload once and print ``{"peak_bytes": ..., ...}`` as its last line.
    """
    completed = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {"peak_bytes": None, "error": f"exit {completed.returncode}: {' | '.join(tail)}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else total physical memory."""
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo or the platform reports it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """What a reader needs to compare numbers: CPU, threads, memory, versions, GPU."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
