"""What the spawned ranks of tests/distributed run (importable, no pytest), and the shared inputs.

The parent and every rank build the same whole-sequence inputs from a case's seed; each
rank keeps its own positions, runs the ring and sends back its slices of the output,
the LSE and the gradients.
"""

from __future__ import annotations

import time

import torch

import qkv
from qkv.distributed import RingOptions, RingStats, ring_attention, slice_lengths, slice_positions

UNEVEN = {1: [37], 2: [25, 12], 3: [20, 5, 12], 4: [7, 15, 3, 12]}  # sums to 37


def make_cases(world: int) -> list[dict]:
    """The cases every process count runs: odd and uneven lengths, causal or not, a window, padding."""
    cases = []
    index = 0
    for causal in (False, True):
        for window in (None, (5, 3)):
            for padding in (False, True):
                lengths = UNEVEN[world] if index % 2 else slice_lengths(37, world)
                cases.append(dict(lengths=lengths, causal=causal, window=window, padding=padding))
                index += 1
    cases += [
        dict(lengths=slice_lengths(37, world, "zigzag"), causal=True, layout="zigzag"),
        dict(lengths=UNEVEN[world], causal=True, layout="zigzag", padding=True, window=(9, 0)),
        dict(lengths=UNEVEN[world], causal=True, q_heads=4, kv_heads=2, window=(6, None)),  # GQA
        dict(lengths=UNEVEN[world], causal=False, padding=True, chunk_size=4),  # several messages per slice
        dict(lengths=UNEVEN[world], causal=True, window=(0, 0), padding=True, chunk_size=5),
        dict(lengths=slice_lengths(37, world), causal=True, entry="attention", padding=True),  # backend="ring"
    ]
    for causal in (False, True):
        cases.append(dict(lengths=slice_lengths(61, world), causal=causal, padding=causal, dtype="float32",
                          window=None if causal else (20, 11)))
    for case_index, case in enumerate(cases):
        case.setdefault("layout", "contiguous")
        case.setdefault("window", None)
        case.setdefault("padding", False)
        case.setdefault("dtype", "float64")
        case.setdefault("chunk_size", 2048)
        case.setdefault("entry", "ring_attention")
        case["seed"] = case_index
    return cases


def make_inputs(case: dict) -> dict[str, torch.Tensor]:
    """Whole-sequence float64 inputs of a case: q, k, v, padding, and the output/LSE gradients."""
    n = sum(case["lengths"])
    batch, q_heads, kv_heads, dim = 2, case.get("q_heads", 2), case.get("kv_heads", 2), 8
    generator = torch.Generator().manual_seed(1000 + case["seed"])
    q = torch.randn(batch, q_heads, n, dim, generator=generator, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, n, dim, generator=generator, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n, dim, generator=generator, dtype=torch.float64)
    grad_out = torch.randn(batch, q_heads, n, dim, generator=generator, dtype=torch.float64)
    grad_lse = torch.randn(batch, q_heads, n, generator=generator, dtype=torch.float64)
    inputs = dict(q=q, k=k, v=v, grad_out=grad_out, grad_lse=grad_lse, pad=None)
    if case["padding"]:
        pad = torch.rand(batch, n, generator=generator) > 0.3
        pad[0, 0] = False  # with causal, query 0 of batch 0 sees no key at all
        pad[1, -3:] = False  # right padding
        poison = (~pad)[:, None, :, None]
        inputs["k"] = k.masked_fill(poison, float("nan"))  # padding must never be read
        inputs["v"] = v.masked_fill(poison, float("nan"))
        inputs["pad"] = pad
    return inputs


def loss_of(out: torch.Tensor, lse: torch.Tensor, grad_out: torch.Tensor, grad_lse: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient flows into both the output and the (finite) LSE."""
    finite_lse = lse.masked_fill(lse == float("-inf"), 0.0)
    return (out * grad_out.to(out.dtype)).sum() + (finite_lse * grad_lse.to(lse.dtype)).sum()


def run_cases(cases: list[dict]) -> list[dict]:
    """Run every case on this rank: its slices of out, lse, dq, dk, dv, and its RingStats."""
    import torch.distributed as dist

    rank = dist.get_rank()
    results = []
    for case in cases:
        inputs = make_inputs(case)
        positions = slice_positions(case["lengths"], rank, case["layout"])
        dtype = getattr(torch, case["dtype"])
        q, k, v = (inputs[name].index_select(2, positions).to(dtype).requires_grad_(True) for name in "qkv")
        pad = None if inputs["pad"] is None else inputs["pad"].index_select(1, positions)
        stats = RingStats()
        if case["entry"] == "attention":
            out, lse = qkv.attention(q, k, v, causal=case["causal"], window=case["window"], key_padding_mask=pad,
                                     backend="ring", return_lse=True,
                                     options=RingOptions(layout=case["layout"], chunk_size=case["chunk_size"]))
        else:
            out, lse = ring_attention(q, k, v, causal=case["causal"], window=case["window"], key_padding_mask=pad,
                                      return_lse=True, layout=case["layout"], chunk_size=case["chunk_size"],
                                      stats=stats)
        loss = loss_of(out, lse, inputs["grad_out"].index_select(2, positions),
                       inputs["grad_lse"].index_select(2, positions))
        dq, dk, dv = torch.autograd.grad(loss, (q, k, v))
        results.append(dict(out=out.detach(), lse=lse.detach(), dq=dq, dk=dk, dv=dv, stats=vars(stats)))
    return results


def run_faulty(mode: str, timeout: float, hold: float) -> dict:
    """Rank 1 raises in the middle of the ring; the others report how and when they failed."""
    import torch.distributed as dist

    import qkv.distributed.ring as ring

    rank = dist.get_rank()
    if rank == 1:
        calls = []
        attend = ring._attend_chunk

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the own slice went fine; the first received one fails
                raise ValueError("injected failure in the middle of the ring")
            return attend(*args, **kwargs)

        ring._attend_chunk = failing
    generator = torch.Generator().manual_seed(rank)
    q, k, v = (torch.randn(1, 2, 12, 8, generator=generator, requires_grad=True) for _ in range(3))
    start = time.monotonic()
    try:
        out = ring_attention(q, k, v, causal=False, timeout=timeout)
        out.sum().backward()
    except Exception as error:
        if rank == 1 and mode == "exit":
            raise
        if rank == 1:
            time.sleep(hold)  # alive but gone from the ring: the others must time out
        return dict(error=f"{type(error).__name__}: {error}", seconds=time.monotonic() - start)
    return dict(error=None, seconds=time.monotonic() - start)


SENTENCES = [
    "The bank raised its interest rates, so she moved her savings to a credit union across town.",
    "He sat on the river bank.",
]


def run_minilm(layout: str) -> dict:
    """Sequence-parallel all-MiniLM-L6-v2: this rank's sentence embeddings and hidden-state slice."""
    import torch.distributed as dist

    from qkv.distributed import (
        gather_sequence,
        sentence_embedding,
        sequence_parallel,
        sequence_positions,
        split_sequence,
    )

    model, tokenizer = qkv.load("minilm")
    batch = tokenizer(SENTENCES)
    ids = split_sequence(batch.input_ids, dim=1, layout=layout)
    mask = split_sequence(batch.attention_mask, dim=1, layout=layout)
    with torch.no_grad():
        embedding = sentence_embedding(model, ids, mask, layout=layout)
        positions = sequence_positions(ids.shape[1], layout=layout)
        with sequence_parallel(model, layout=layout):
            hidden = model(ids, mask, positions=positions).last_hidden_state
    backends = {block.attn.backend for block in model.blocks}  # restored after the block
    return dict(embedding=embedding, hidden=hidden, positions=positions, rank=dist.get_rank(), backends=backends,
                gathered=gather_sequence(hidden, dim=1, layout=layout))


def mean_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (2, 11, 4) float64, attention_mask (2, 11) with padding, and a weight (2, 4) for the loss."""
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 11, 4, generator=generator, dtype=torch.float64)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 6:] = False
    return hidden, mask, torch.randn(2, 4, generator=generator, dtype=torch.float64)


def run_sequence_mean(layout: str) -> dict:
    """sequence_mean over this rank's slice, and the slice's gradient of a loss split evenly over ranks."""
    import torch.distributed as dist

    from qkv.distributed import sequence_mean, split_sequence

    hidden, mask, weight = mean_inputs()
    piece = split_sequence(hidden, dim=1, layout=layout).clone().requires_grad_(True)
    mean = sequence_mean(piece, split_sequence(mask, dim=1, layout=layout))  # (2, 4), the same on every rank
    ((mean * weight).sum() / dist.get_world_size()).backward()  # the ranks' losses add up to one loss
    return dict(mean=mean.detach(), grad=piece.grad)


def tiny_decoder() -> torch.nn.Module:
    """A small causal language model with rotary positions and grouped-query attention, seeded."""
    torch.manual_seed(0)
    return qkv.nn.TransformerDecoder(vocab_size=50, d_model=32, num_heads=4, num_kv_heads=2, num_layers=2,
                                     rotary=True).double()


def decoder_ids() -> torch.Tensor:
    return torch.randint(0, 50, (2, 23), generator=torch.Generator().manual_seed(5))


def run_decoder(layout: str) -> dict:
    """Sequence-parallel forward and backward of :func:`tiny_decoder`: logits slice and parameter grads."""
    from qkv.distributed import sequence_positions, split_sequence

    model = tiny_decoder()
    ids = split_sequence(decoder_ids(), dim=1, layout=layout)
    positions = sequence_positions(ids.shape[1], layout=layout)
    model.set_attention("ring", layout=layout, chunk_size=4)
    logits = model(ids, positions=positions).logits  # (B, n_r, vocab)
    logits.square().mean(dim=-1).sum().backward()  # this rank's share of a loss summed over tokens
    return dict(logits=logits.detach(), grads={name: p.grad for name, p in model.named_parameters()})


def run_mismatch() -> str:
    """Rank 1 asks for causal attention, the others not: every rank must refuse, none may hang."""
    import torch.distributed as dist

    rank = dist.get_rank()
    q = k = v = torch.randn(1, 2, 6, 4)
    try:
        ring_attention(q, k, v, causal=rank == 1, timeout=10)
    except ValueError as error:
        return str(error)
    return "no error"
