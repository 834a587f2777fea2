"""Sequence parallelism on torch.distributed: one sequence split across processes and machines.

:func:`ring_attention` is exact attention over a sequence whose slices live on the ranks
of a process group (gloo on CPUs, NCCL on GPUs, launched with ``torchrun``); the same
code runs in one process when torch.distributed is not initialised. Importing this
package registers it as ``qkv.attention(..., backend="ring", options=RingOptions(...))``,
so ``model.set_attention("ring", group=group)`` makes a model sequence-parallel.
"""

from qkv.distributed.local import LocalRunError, RankOutcome, run_local
from qkv.distributed.ring import (
    DEFAULT_CHUNK_SIZE,
    LAYOUTS,
    RingOptions,
    RingStats,
    ring_attention,
    slice_lengths,
    slice_positions,
)
from qkv.distributed.sequence import (
    gather_lengths,
    gather_sequence,
    sentence_embedding,
    sequence_mean,
    sequence_parallel,
    sequence_positions,
    split_sequence,
)

__all__ = [
    "ring_attention",
    "RingOptions",
    "RingStats",
    "LAYOUTS",
    "DEFAULT_CHUNK_SIZE",
    "slice_lengths",
    "slice_positions",
    "split_sequence",
    "gather_sequence",
    "gather_lengths",
    "sequence_positions",
    "sequence_parallel",
    "sequence_mean",
    "sentence_embedding",
    "run_local",
    "RankOutcome",
    "LocalRunError",
]
