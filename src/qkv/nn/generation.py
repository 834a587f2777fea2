"""Autoregressive generation for causal language models, with or without a KV cache."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from qkv.nn.attention import KVCache

__all__ = ["GenerationMixin", "positions_from_mask"]


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids that skip left padding: (B, N) bool -> (B, N) int64 (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class GenerationMixin:
    """``generate()`` for a model whose ``forward(input_ids, attention_mask, positions,
    kv_cache)`` returns an output with ``logits`` (B, N, vocab)."""

    eos_token_id: int | None = None

    @torch.no_grad()
    def generate(
        self,
        inputs: str | list[str] | Tensor,
        max_new_tokens: int = 20,
        *,
        attention_mask: Tensor | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        use_cache: bool = True,
        stop_at_eos: bool = False,
        on_token: Callable[[Tensor], None] | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """Continue each sequence by ``max_new_tokens`` tokens.

        Args:
            inputs: text, texts (left-padded) or ids (B, N).
            max_new_tokens: how many tokens to add.
            attention_mask: (B, N) bool for ids with left padding (True = real token).
            do_sample: sample from the softmax (else greedy argmax).
            temperature: divides the logits before sampling.
            top_k: sample among the k most likely tokens only.
            seed: seeds the sampler.
            use_cache: keep past keys and values (one new token per step) instead of
                recomputing the whole sequence each step.
            stop_at_eos: stop once every sequence has produced the end-of-sequence token
                (later tokens of finished sequences are the EOS token).
            on_token: called with each step's new tokens (B,) as soon as they are chosen
                (streaming).
            cache: the (empty) cache to decode with; None: a :class:`KVCache` that keeps
                every position. ``SinkCache(sinks=4, window=1024)`` keeps the first 4 and the
                last 1024 positions: constant memory at any length (needs ``use_cache=True``).

        Returns:
            (B, N + new) ids: the inputs followed by the generated tokens.
        """
        if isinstance(inputs, Tensor):
            prepared = {"input_ids": inputs if inputs.dim() == 2 else inputs.unsqueeze(0)}
            if attention_mask is not None:
                prepared["attention_mask"] = attention_mask
        else:
            prepared = self.prepare(inputs, padding_side="left")
            prepared.pop("batch")
        ids = prepared["input_ids"].to(self.device)
        mask = prepared.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(self.device, torch.bool)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a whole number >= 0; got {max_new_tokens!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a whole number >= 1 (or None: every token); got {top_k!r}")
        if stop_at_eos and self.eos_token_id is None:
            raise ValueError("stop_at_eos=True, but this model has no eos_token_id; set model.eos_token_id, "
                             "or leave stop_at_eos off")
        generator = torch.Generator(device=ids.device).manual_seed(seed) if seed is not None else None
        if cache is not None and (not use_cache or len(cache)):
            raise ValueError(f"cache={cache!r} needs use_cache=True and an empty cache (a new one per call); "
                             f"got use_cache={use_cache}, {len(cache)} positions already cached")
        if cache is None and use_cache:
            cache = KVCache()
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        step_ids, step_positions = ids, positions_from_mask(mask)
        for _ in range(max_new_tokens):
            logits = self(step_ids, attention_mask=mask, positions=step_positions, kv_cache=cache).logits
            next_logits = logits[:, -1, :].float()  # (B, vocab)
            if do_sample:
                next_logits = next_logits / temperature
                if top_k is not None:
                    kth = next_logits.topk(min(top_k, next_logits.shape[-1]), dim=-1).values[:, -1:]
                    next_logits = next_logits.masked_fill(next_logits < kth, float("-inf"))
                probs = torch.softmax(next_logits, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                next_token = next_logits.argmax(dim=-1)
            if stop_at_eos:
                next_token = next_token.masked_fill(finished, self.eos_token_id)
                finished |= next_token == self.eos_token_id
            ids = torch.cat([ids, next_token[:, None]], dim=1)
            if on_token is not None:
                on_token(next_token)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions_from_mask(mask)
            if cache is not None:
                step_ids, step_positions = next_token[:, None], positions[:, -1:]
            else:
                step_ids, step_positions = ids, positions
            if stop_at_eos and bool(finished.all()):
                break
        return ids
