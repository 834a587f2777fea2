"""Run a function on P local processes joined by a gloo process group (tests, benchmarks, demos).

On a cluster, launch with ``torchrun`` and call :func:`torch.distributed.init_process_group`
yourself; on one machine :func:`run_local` does both::

    def work(n):
        q = k = v = torch.randn(1, 4, n, 32)  # this rank's slice
        return qkv.distributed.ring_attention(q, k, v, causal=True).shape

    run_local(work, 4, args=(1000,))  # one result per rank

The processes are started with "spawn" (``fn`` must be importable: a module-level
function), rendezvous through a file store in a temporary folder (no port to pick),
and hand back what ``fn`` returns (tensors, numbers, strings, None, or lists, tuples and
dicts of them: results come back through ``torch.load(weights_only=True)``, never a
general unpickler). A rank that raises, dies or outlives ``timeout``
makes :func:`run_local` raise :class:`LocalRunError` with every rank's outcome.
"""

from __future__ import annotations

import datetime
import io
import multiprocessing
import multiprocessing.connection
import os
import queue
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["run_local", "RankOutcome", "LocalRunError"]


@dataclass
class RankOutcome:
    """What one rank of :func:`run_local` ended with."""

    rank: int
    value: object = None  # fn's return value
    error: str | None = None  # "ExceptionType: message" if fn raised, died or timed out
    traceback: str | None = None
    seconds: float | None = None  # wall time of fn in that rank

    @property
    def ok(self) -> bool:
        return self.error is None


class LocalRunError(RuntimeError):
    """Some rank of :func:`run_local` failed; ``outcomes`` holds every rank's :class:`RankOutcome`."""

    def __init__(self, outcomes: list[RankOutcome]) -> None:
        self.outcomes = outcomes
        failed = [f"rank {o.rank}: {o.error}" for o in outcomes if not o.ok]
        super().__init__("run_local: " + "; ".join(failed))


def _exit_with_parent() -> None:
    """Leave at once if the parent process dies (killed, interrupted): no orphaned ranks."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="qkv-run-local-parent-watch", daemon=True).start()


def _serialise(outcome: RankOutcome) -> bytes:
    """``outcome`` as torch.save bytes of plain containers, readable with ``weights_only=True``.

    The parent never unpickles arbitrary objects: a value of another type (not tensors,
    numbers, strings, None, or lists, tuples and dicts of them) is reported as an error.
    """
    fields = {"rank": outcome.rank, "value": outcome.value, "error": outcome.error,
              "traceback": outcome.traceback, "seconds": outcome.seconds}
    buffer = io.BytesIO()
    torch.save(fields, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    except Exception as error:  # any refusal is reported the same way
        fields.update(value=None, error=(
            f"TypeError: run_local's function must return tensors, numbers, strings, None, or lists, "
            f"tuples and dicts of them; weights-only loading refused its value: {error}"))
        buffer = io.BytesIO()
        torch.save(fields, buffer)
    return buffer.getvalue()


def _child(fn: Callable, rank: int, world_size: int, args: tuple, kwargs: dict, store: str,
           backend: str, threads: int | None, group_timeout: float, results) -> None:
    import torch.distributed as dist

    _exit_with_parent()
    if threads is not None:
        torch.set_num_threads(threads)
    outcome = RankOutcome(rank)
    failed = False
    try:
        dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=group_timeout))
        start = time.perf_counter()
        outcome.value = fn(*args, **kwargs)
        outcome.seconds = time.perf_counter() - start
    except BaseException as error:  # reported to the parent, which decides
        failed = True
        outcome.error = f"{type(error).__name__}: {error}"
        outcome.traceback = traceback.format_exc()
        outcome.value = None
    results.put(_serialise(outcome))
    results.close()
    results.join_thread()
    if not failed and dist.is_initialized():
        dist.destroy_process_group()
    # A failed rank leaves at once: its closed connections tell the peers.
    os._exit(0)


def run_local(
    fn: Callable,
    world_size: int,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    backend: str = "gloo",
    timeout: float = 300.0,
    group_timeout: float = 60.0,
    threads: int | None = None,
    raise_on_error: bool = True,
) -> list:
    """Run ``fn(*args, **kwargs)`` on ``world_size`` spawned processes in one process group.

    Args:
        fn: a module-level function; inside it ``torch.distributed`` is initialised
            (the default group spans the processes; ``dist.get_rank()`` is the rank).
        world_size: number of processes.
        args, kwargs: passed to ``fn`` (picklable).
        backend: "gloo" (CPU) or "nccl".
        timeout: seconds to wait for every rank before killing the stragglers.
        group_timeout: the process group's timeout (seconds) for collectives and waits.
        threads: torch threads per process (None: torch's default).
        raise_on_error: raise :class:`LocalRunError` when a rank fails; False returns
            the :class:`RankOutcome` of every rank instead of the values.

    Returns:
        fn's return value per rank, in rank order (or the outcomes, see ``raise_on_error``).
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch")
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("this build of torch has no gloo backend; pass backend='nccl' on GPUs")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory(prefix="qkv-run-local-") as folder:
        store = str(Path(folder) / "store")
        processes = [
            context.Process(target=_child, args=(fn, rank, world_size, tuple(args), dict(kwargs or {}), store,
                                                 backend, threads, group_timeout, results), daemon=True)
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        outcomes: dict[int, RankOutcome] = {}
        deadline = time.monotonic() + timeout
        while len(outcomes) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                fields = torch.load(io.BytesIO(results.get(timeout=min(remaining, 1.0))), weights_only=True)
                outcomes[fields["rank"]] = RankOutcome(**fields)
            except queue.Empty:
                silent = [p for rank, p in enumerate(processes) if rank not in outcomes]
                if all(p.exitcode is not None for p in silent) and results.empty():
                    break  # the ranks that have not answered are dead
        for rank, process in enumerate(processes):
            process.join(timeout=5 if rank in outcomes else 0.1)
            if process.is_alive():
                process.kill()
                process.join()
            if rank not in outcomes:
                reason = (f"timed out after {timeout:g} s (killed)" if process.exitcode in (None, -9)
                          else f"process died with exit code {process.exitcode}")
                outcomes[rank] = RankOutcome(rank, error=f"RuntimeError: {reason}")
    ordered = [outcomes[rank] for rank in range(world_size)]
    if not raise_on_error:
        return ordered
    if not all(o.ok for o in ordered):
        raise LocalRunError(ordered)
    return [o.value for o in ordered]
