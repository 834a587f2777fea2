"""How every benchmark measures: medians of interleaved runs, and one definition of peak memory.

Timing runs the candidates round-robin (A, B, C, A, B, C, ...) after a warm-up, so that
a noisy neighbour slows all of them alike, and reports medians.

Peak memory (:func:`peak_tensor_bytes`): the peak of the bytes held by tensors that one call
allocates, beyond those alive before it: on a GPU ``torch.cuda.max_memory_allocated``; on the
CPU the same quantity summed from the allocation and free events of ``torch.profiler``
(``profile_memory``). Deterministic, and the same definition on both devices and in every
process of a distributed run; memory outside PyTorch's allocator (e.g. a BLAS library's own
buffers) is not counted.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

__all__ = [
    "time_round_robin",
    "peak_tensor_bytes",
    "machine_info",
    "available_memory_bytes",
]


def synchronize(device: str) -> None:
    """Wait for queued GPU work so that wall-clock time covers it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_round_robin(
    workloads: Mapping[str, Callable[[], object]],
    repeats: int | Mapping[str, int],
    warmup: int = 1,
    device: str = "cpu",
    on_run: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per run of each workload, measured in interleaved rounds.

    Args:
        workloads: name -> a callable doing one complete run.
        repeats: timed rounds, for all or per name (round r runs the workloads that
            have more than r rounds, still interleaved).
        warmup: untimed rounds first.
        device: "cpu" or "cuda" (synchronised around each run).
        on_run: called after every timed run (e.g. to advance a progress bar).

    Returns:
        name -> list of that workload's durations in seconds, one per round.
    """
    rounds = repeats if isinstance(repeats, Mapping) else dict.fromkeys(workloads, repeats)
    for _ in range(warmup):
        for run in workloads.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for round_index in range(max(rounds.values(), default=0)):
        for name, run in workloads.items():
            if rounds[name] <= round_index:
                continue
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
    """Current resident set size of this process (Linux): what a long-running program holds,
    model and caches included, as opposed to :func:`peak_tensor_bytes` of one call."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """High-water mark of this process's RSS since start or the last :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop lines), then restore it."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiled_peak(run: Callable[[], object]) -> tuple[int, object]:
    """CPU: peak bytes of the tensors ``run`` allocates, from torch.profiler's memory events."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    host = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)  # as torch.autograd.profiler counts it
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:  # + bytes on allocation, - on free; the CPU's own tensors only
        if event.device_type() in host:
            held += event.nbytes()
            peak = max(peak, held)
    return peak, result


def peak_tensor_bytes(run: Callable[[], object], device: str = "cpu") -> tuple[int, object]:
    """Peak bytes held by tensors that one ``run()`` allocates beyond those alive before it.

    On a GPU: ``torch.cuda.max_memory_allocated`` after a reset, minus what was allocated
    before. On the CPU: the running sum of torch.profiler's allocation (+) and free (-)
    events during the call, its maximum (the same quantity; PyTorch keeps no CPU
    counter). Returns ``(peak_bytes, what run returned)``.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        result = run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - baseline, result
    return _profiled_peak(run)


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
        "gpu": None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cuda"] = torch.version.cuda
    return info
