"""Attention sinks in a causal model: window + global_tokens equals the explicit mask, and the
SinkCache equals recomputation with the same visibility at every step."""

from __future__ import annotations

import pytest
import torch

from qkv.functional import attention
from qkv.functional.api import build_spec
from qkv.functional.tiled import tiled_attention
from qkv.models.config import LlamaConfig
from qkv.models.llama import LlamaForCausalLM
from qkv.nn import SinkCache

VOCAB = 61


def tiny_decoder(layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    """A random Llama-family decoder in float64: 6 query heads, 2 key/value heads, odd widths."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=36, intermediate_size=37, num_hidden_layers=layers,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():  # norms away from one, so that every weight matters
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_final.weight"):
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def sink_mask(nq: int, nk: int, window: int, sinks: int) -> torch.Tensor:
    """(Nq, Nk) bool: query at position p sees key j when j <= p and (j > p - window or j < sinks)."""
    positions = torch.arange(nk - nq, nk)[:, None]
    keys = torch.arange(nk)[None, :]
    return (keys <= positions) & ((keys > positions - window) | (keys < sinks))


@pytest.mark.parametrize("nq, nk", [(17, 17), (5, 17), (1, 17), (97, 97)])
@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled", "sliding"])
def test_causal_window_with_sinks_equals_the_explicit_mask(backend: str, nq: int, nk: int) -> None:
    """A sink is seen by every later query and sees only what causality allows (outputs and gradients)."""
    generator = torch.Generator().manual_seed(nq * 1000 + nk)
    window, sinks = 5, 3

    def inputs() -> list[torch.Tensor]:
        shapes = [(2, 4, nq, 7), (2, 2, nk, 7), (2, 2, nk, 7)]
        return [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_() for s in shapes]

    q, k, v = inputs()
    expected = attention(q, k, v, mask=sink_mask(nq, nk, window, sinks), backend="reference")
    grad_out = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    options = {"causal": True, "window": (window - 1, 0), "global_tokens": list(range(sinks))}
    if backend == "tiled":  # blocks that do not divide N, so that the sink block is visited on its own
        spec, scale = build_spec(q, k, v, mask=None, key_padding_mask=None, scale=None, **options)
        out = tiled_attention(q, k, v, spec, scale, False, block_q=4, block_k=6)
    else:
        out = attention(q, k, v, backend=backend, **options)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    assert (out - expected).abs().max().item() < 1e-12
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max().item() < 1e-12


@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "sliding"])
def test_a_decoder_with_window_and_sinks_equals_the_explicit_mask_through_its_scores(backend: str) -> None:
    """The whole decoder: logits and parameter gradients equal the model whose scores are masked by hand."""
    window, sinks, n = 4, 2, 19
    ids = torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(3))
    visible = sink_mask(n, n, window, sinks)

    def loss_and_grads(model: LlamaForCausalLM) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = model(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        return logits, torch.autograd.grad(loss, list(model.parameters()))

    reference = tiny_decoder()
    hide = lambda scores, point: scores.masked_fill(~visible, float("-inf"))  # noqa: E731
    with reference.hooks([("blocks.*.attn.scores", hide)]):
        expected_logits, expected_grads = loss_and_grads(reference)
    model = tiny_decoder()
    model.set_attention(backend, window=(window - 1, 0), global_tokens=list(range(sinks)))
    logits, grads = loss_and_grads(model)
    assert (logits - expected_logits).abs().max().item() < 1e-12
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad - expected_grad).abs().max().item() < 1e-11


def kept(t: int, sinks: int, window: int) -> list[int]:
    """The positions a SinkCache holds while position t is decoded: the sinks, then the last window."""
    return sorted(set(range(min(sinks, t + 1))) | set(range(max(0, t - window + 1), t + 1)))


@pytest.mark.parametrize("sinks, window", [(2, 5), (4, 3), (0, 4), (1, 1)])
def test_sink_cache_equals_recomputation_on_the_kept_positions_at_every_step(sinks: int, window: int) -> None:
    """One layer, rotary: each step's logits equal a fresh forward on the positions the cache holds, numbered
    0 .. S-1 (positions within the cache), so eviction, sinks and rotary positions are all checked, over
    enough steps for the cache to compact its buffers several times."""
    model = tiny_decoder(layers=1)
    length = 61
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(5))
    cache = SinkCache(sinks, window)
    prefill = min(3, sinks + window)
    steps = [model(ids[:, :prefill], kv_cache=cache).logits[:, -1]]
    steps += [model(ids[:, t:t + 1], kv_cache=cache).logits[:, -1] for t in range(prefill, length)]
    for t, logits in zip(range(prefill - 1, length), steps):
        expected = model(ids[:, kept(t, sinks, window)]).logits[:, -1]
        assert (logits - expected).abs().max().item() < 1e-12, t
    assert len(cache) == length and cache.stored(0) == sinks + window
    assert length - prefill > 2 * cache.slack  # the buffers were compacted on the way
    assert (model(ids).logits[:, -1] - steps[-1]).abs().max().item() > 1e-3  # the evicted positions mattered


@pytest.mark.parametrize("chunks", [[1] * 61, [9, 1, 3, 1, 1, 6, 1, 1, 30, 1, 1, 1, 2, 1, 1, 1], [61]])
def test_sink_cache_in_a_deep_model_equals_one_forward_with_the_same_visibility(chunks: list[int]) -> None:
    """Three layers without positions: what each token stored was computed with the visibility it had
    then, which one forward with window (W - 1, 0) and global_tokens [0..k-1] gives every token at once.
    Chunks of several new tokens (a prompt, longer than the cache or not) are checked too."""
    sinks, window = 2, 4
    model = tiny_decoder(layers=3)
    for block in model.blocks:
        block.attn.rotary = None
    ids = torch.randint(0, VOCAB, (2, 61), generator=torch.Generator().manual_seed(6))
    model.set_attention("auto", window=(window - 1, 0), global_tokens=list(range(sinks)))
    expected = model(ids).logits
    model.set_attention("auto")
    cache, start, parts = SinkCache(sinks, window), 0, []
    for size in chunks:
        parts.append(model(ids[:, start:start + size], kv_cache=cache).logits)
        start += size
    assert (torch.cat(parts, dim=1) - expected).abs().max().item() < 1e-12
    assert all(cache.stored(layer) <= sinks + window - 1 + chunks[-1] for layer in range(3))


def test_generate_with_a_sink_cache_holds_constant_memory_and_follows_recomputation() -> None:
    sinks, window = 2, 5
    model = tiny_decoder(layers=1)
    prompt = torch.randint(0, VOCAB, (1, 4), generator=torch.Generator().manual_seed(7))
    cache = SinkCache(sinks, window)
    generated = model.generate(prompt, 30, cache=cache, do_sample=True, seed=11)
    ids, generator = prompt, torch.Generator().manual_seed(11)
    for _ in range(30):  # sampling by recomputation on the kept positions
        logits = model(ids[:, kept(ids.shape[1] - 1, sinks, window)]).logits[:, -1].float()
        ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)], dim=1)
    assert torch.equal(generated, ids)
    assert len(cache) == 33 and cache.stored(0) == sinks + window  # the last token is chosen, not yet fed


def test_sink_cache_refuses_what_it_cannot_honour() -> None:
    model = tiny_decoder(layers=1)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(8))
    with pytest.raises(ValueError, match="padding"):
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]).bool(), kv_cache=SinkCache(1, 3))
    model.set_attention("auto", window=(3, 0))
    with pytest.raises(ValueError, match="window"):
        model(ids, kv_cache=SinkCache(1, 3))
    model.set_attention("auto")
    used = SinkCache(1, 3)
    model(ids, kv_cache=used)
    with pytest.raises(ValueError, match="empty cache"):
        model.generate(ids, 2, cache=used)
    with pytest.raises(ValueError, match="window must be"):
        SinkCache(4, 0)


def test_a_sink_cache_holds_constant_memory_where_a_full_cache_grows() -> None:
    from qkv.bench.streaming import decode_cost
    from qkv.nn import KVCache

    model = tiny_decoder(layers=2)
    prompt = torch.randint(0, VOCAB, (1, 3), generator=torch.Generator().manual_seed(9))
    cache = SinkCache(2, 8)
    sink = decode_cost(model, prompt, 200, cache, checkpoints=[50, 100, 200])
    full = decode_cost(model, prompt, 200, KVCache(), checkpoints=[50, 100, 200])
    assert [row["tokens"] for row in sink] == [50, 100, 200]
    assert len({row["cache_bytes"] for row in sink}) == 1
    # 2 layers x (k, v) x (2 + 8 positions and the room for `slack` steps) x 2 kv heads of width 6, float64
    assert sink[0]["cache_bytes"] == 2 * 2 * (2 + 8 + cache.slack) * 2 * 6 * 8
    assert all(cache.stored(layer) == 2 + 8 for layer in range(2))
    assert full[0]["cache_bytes"] < full[1]["cache_bytes"] < full[2]["cache_bytes"]


def test_reading_a_text_through_a_sink_cache_scores_it_as_streaming_evaluation() -> None:
    from qkv.bench.streaming import decode_cost
    from qkv.inspect.perplexity import streaming_losses

    model = tiny_decoder(layers=2)
    ids = torch.randint(0, VOCAB, (60,), generator=torch.Generator().manual_seed(10))
    points = decode_cost(model, ids[None, :3], 57, SinkCache(2, 8), checkpoints=[20, 57], text=ids[3:])
    expected = streaming_losses(model, ids, 2, 8)[2:]  # tokens 3 .. 59
    assert points[-1]["perplexity"] == pytest.approx(torch.exp(expected.mean()).item(), rel=1e-6)
    assert points[0]["perplexity"] == pytest.approx(torch.exp(expected[:20].mean()).item(), rel=1e-6)
