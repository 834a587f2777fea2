"""A stack of transformer blocks between embeddings and a final norm, with hooks.

:class:`TransformerStack` is the skeleton every model shares (BERT, GPT-2 and the
models built from scratch): it runs the blocks, collects hidden states, swaps the
attention backend of chosen layers, and captures named activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from qkv.nn.attention import KVCache, MultiHeadAttention, RotaryEmbedding
from qkv.nn.generation import GenerationMixin
from qkv.nn.hooks import ActivationCache, HookedModule, HookPoint, matches
from qkv.nn.layers import MLP, Embeddings, TransformerBlock
from qkv.text import Batch

__all__ = ["TransformerOutput", "TransformerStack", "TransformerEncoder", "TransformerDecoder"]


@dataclass
class TransformerOutput:
    """What a forward pass returns."""

    last_hidden_state: Tensor  # (B, N, d_model), after the final norm if the model has one
    hidden_states: list[Tensor] | None = None  # L + 1 of (B, N, d_model): embeddings, then blocks
    logits: Tensor | None = None  # (B, N, vocab) for language models
    pooler_output: Tensor | None = None  # (B, d_model) for BERT with a pooler
    attentions: tuple[Tensor, ...] | None = None  # L of (B, H, Nq, Nk), with output_attentions=True


class TransformerStack(HookedModule):
    """Embeddings, blocks and an optional final LayerNorm.

    Args:
        embed: the embedding layer.
        blocks: the transformer blocks, in order.
        norm_final: LayerNorm after the last block (pre-LN models), or None.
    """

    def __init__(
        self, embed: Embeddings, blocks: Sequence[TransformerBlock], norm_final: nn.LayerNorm | None
    ) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.norm_final = norm_final
        self.tokenizer = None  # set by qkv.load so that text can be passed directly
        self.name: str | None = None  # set by qkv.load: "all-MiniLM-L6-v2" or the folder name
        for index, block in enumerate(self.blocks):
            block.attn.layer_index = index

    @property
    def device(self) -> torch.device:
        return self.embed.tokens.weight.device

    def run_blocks(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        positions: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> TransformerOutput:
        """Embed and run every block.

        Args:
            input_ids: (B, N) token ids.
            attention_mask: (B, Nk) bool or 0/1, True for real tokens; Nk counts cached
                positions too. None: every token is real.
            positions: (B, N) or (N,) position ids (default: after the cached ones).
            token_type_ids: (B, N) segment ids.
            kv_cache: keys and values of earlier positions, extended in place.
            output_hidden_states: also return the embeddings and every block's output.
            output_attentions: also return every layer's attention weights, as ``transformers``
                does: ``attentions``, a tuple of L tensors (B, H, Nq, Nk), read at the
                ``blocks.i.attn.weights`` hook points (gradients flow through them).

        Raises:
            ValueError: ``output_attentions`` with a layer whose backend computes no weights.
        """
        self.check_input_ids(input_ids)
        if output_attentions:
            return self._with_attentions(input_ids, attention_mask, positions=positions,
                                         token_type_ids=token_type_ids, kv_cache=kv_cache,
                                         output_hidden_states=output_hidden_states)
        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = attention_mask.to(torch.bool)
            expected = (input_ids.shape[0], (len(kv_cache) if kv_cache is not None else 0) + input_ids.shape[1])
            if tuple(key_padding_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask must be (B, Nk) = {expected}: one entry per token, the cached ones "
                    f"included; got {tuple(key_padding_mask.shape)}"
                )
            if bool(key_padding_mask.all()):
                key_padding_mask = None  # nothing to hide: lets the backend take its fastest path
        if positions is None and kv_cache is not None and len(kv_cache):
            start = len(kv_cache)
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids, positions=positions, token_type_ids=token_type_ids)
        hidden_states = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x, key_padding_mask=key_padding_mask, kv_cache=kv_cache, positions=positions)
            if hidden_states is not None:
                hidden_states.append(x)
        if self.norm_final is not None:
            x = self.norm_final(x)
            if hidden_states is not None:
                hidden_states[-1] = x  # as Hugging Face: the last hidden state is normalised
        return TransformerOutput(last_hidden_state=x, hidden_states=hidden_states)

    def _with_attentions(self, *args: object, **kwargs: object) -> TransformerOutput:
        """:meth:`run_blocks` that also keeps each layer's attention weights (kept, not detached)."""
        refused = {
            f"layer {block.attn.layer_index} ({block.attn.backend!r}): {reason}"
            for block in self.blocks for point, reason in block.attn.unavailable_hooks().items()
            if point is block.attn.hook_weights
        }
        if refused:
            raise ValueError(
                f"output_attentions=True needs each layer's attention weights, which these layers do not compute: "
                f"{'; '.join(sorted(refused))}. Call set_attention('auto') first, or read what the layers "
                f"produce with run_with_cache"
            )
        kept: dict[str, Tensor] = {}

        def keep(weights: Tensor, point: HookPoint) -> None:
            kept[point.name] = weights

        with self.hooks([("blocks.*.attn.weights", keep)]):
            output = self.run_blocks(*args, **kwargs)
        output.attentions = tuple(kept[f"blocks.{i}.attn.weights"] for i in range(len(self.blocks)))
        return output

    def check_input_ids(self, input_ids: object) -> None:
        """Refuse anything but a (B, N) integer tensor of token ids, saying how to get one."""
        if isinstance(input_ids, Tensor):
            if input_ids.dtype.is_floating_point or input_ids.is_complex() or input_ids.dtype == torch.bool:
                raise TypeError(
                    f"input_ids must be an integer tensor (B, N) of token ids; got dtype {input_ids.dtype}. "
                    f"Cast it with input_ids.long()"
                )
            if input_ids.dim() != 2:
                one = ". For one sequence use input_ids.unsqueeze(0)" if input_ids.dim() == 1 else ""
                raise ValueError(f"input_ids must be (B, N) token ids; got shape {tuple(input_ids.shape)}{one}")
            if input_ids.shape[1] == 0:
                raise ValueError(f"input_ids has no tokens (shape {tuple(input_ids.shape)}); give at least one")
            return
        if self.tokenizer is None:
            fix = "this model has no tokenizer (models from qkv.load have one), so tokenize the text yourself"
        else:
            fix = ("tokenize it first, batch = model.tokenizer(text), and call model(batch.input_ids, "
                   "batch.attention_mask); or pass the text to model.run_with_cache(text), which tokenizes it")
        raise TypeError(
            f"input_ids must be an integer tensor (B, N) of token ids; got {type(input_ids).__name__}. "
            f"For text, {fix}"
        )

    def set_attention(self, backend: str, layers: Iterable[int] | None = None, **options: object) -> None:
        """Use ``backend`` (with ``qkv.attention`` options such as ``window``) in some layers.

        Args:
            backend: a :func:`qkv.available_backends` name or "auto".
            layers: layer indices (negative ones count from the end); None: all.
            **options: fixed keyword arguments for :func:`qkv.attention`, or fields of the
                backend's options: ``set_attention("ring", group=group)`` runs the model
                sequence-parallel (each rank passes its slice of the tokens and their global
                ``positions=``; see :mod:`qkv.distributed`).

        Raises:
            ValueError: bad ``layers``, an unknown backend or option, or a backend that
                cannot honour what these layers need (causal masking in a decoder, the
                ``window``/``global_tokens`` given); the message names the backends that can.
        """
        count = len(self.blocks)
        chosen = range(count) if layers is None else list(layers)
        for index in chosen:
            if not isinstance(index, int) or not -count <= index < count:
                raise ValueError(f"layers must be ints in -{count} .. {count - 1}; got {index!r}")
        for index in chosen:
            self.blocks[index].attn.set_backend(backend, **options)

    def attention_backends(self) -> list[tuple[str, dict]]:
        """(backend, options) of every layer."""
        return [(block.attn.backend, dict(block.attn.options)) for block in self.blocks]

    def prepare(self, inputs: str | list[str] | Tensor | object, padding_side: str = "right") -> dict:
        """Model keyword arguments from text (through the tokenizer), a Batch or ids."""
        batch = None
        if isinstance(inputs, (str, list)):
            if self.tokenizer is None:
                raise ValueError(
                    "this model has no tokenizer (models from qkv.load have one); pass token "
                    "ids (B, N) instead of text"
                )
            inputs = self.tokenizer(inputs, padding_side=padding_side)
        if isinstance(inputs, Batch):
            batch = inputs.to(self.device)
            kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        elif isinstance(inputs, Tensor):
            ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
            kwargs = {"input_ids": ids.to(self.device)}
        else:
            raise TypeError(
                f"inputs must be text, a list of texts, a qkv Batch or a (B, N) tensor of ids; "
                f"got {type(inputs).__name__}"
            )
        return {"batch": batch, **kwargs}

    def run_with_cache(
        self,
        inputs: str | list[str] | Tensor | object,
        names: str | Iterable[str] | None = None,
        **forward_kwargs: object,
    ) -> tuple[TransformerOutput, ActivationCache]:
        """Run the model under ``torch.no_grad()`` and capture activations by name.

        For gradients through activations (attribution), add a hook that keeps the tensor,
        ``with self.hooks([(name, fn)]):``, around your own forward and backward instead
        (``capture`` stores detached copies).

        Args:
            inputs: text, a list of texts (tokenised and padded), a Batch, or ids (B, N).
            names: names or glob patterns to capture, e.g. ``"blocks.*.attn.weights"``.
                None: every hook point that the layers' backends can produce; an
                approximate backend has no ``attn.scores`` (its ``attn.weights`` are its
                mixing matrix), "ring" neither scores nor weights, and the cache says so
                when asked for one. Capturing scores or weights makes those layers
                compute them explicitly; other layers keep their fast backend.
            **forward_kwargs: passed to the model's forward.

        Returns:
            (output, cache); ``cache.batch`` is the tokenised Batch when text was given.

        Raises:
            KeyError: ``names`` matches no hook point.
            ValueError: ``names`` asks for scores or weights that a layer's backend
                cannot produce (the message names them and the fix).
        """
        prepared = self.prepare(inputs)
        batch = prepared.pop("batch")
        patterns = [names] if isinstance(names, str) else names
        chosen = [name for name in self.hook_points() if matches(name, patterns)]
        if not chosen:
            raise KeyError(f"no hook point matches {patterns}; names look like {list(self.hook_points())[:6]}")
        unavailable = {
            point.name: reason for module in self.modules() if isinstance(module, MultiHeadAttention)
            for point, reason in module.unavailable_hooks().items()
        }
        if patterns is None:
            chosen = [name for name in chosen if name not in unavailable]
        else:
            refused: dict[str, list[str]] = {}  # reason -> hook point names
            for name in chosen:
                if name in unavailable:
                    refused.setdefault(unavailable[name], []).append(name)
            if refused:
                raise ValueError(
                    f"names={names!r} asks for activations these layers cannot produce: "
                    + "; ".join(f"{found}: {reason}" for reason, found in refused.items())
                    + ". Leave them out of names= (names=None captures everything the layers can produce), "
                    "or set_attention('auto') first to capture exact scores and weights"
                )
        with torch.no_grad(), self.capture(chosen) as store:
            output = self(**prepared, **forward_kwargs)
        return output, ActivationCache(store, batch=batch, complete=patterns is None, unavailable=unavailable)


def _blocks(
    d_model: int, num_heads: int, num_layers: int, d_ff: int | None, num_kv_heads: int | None,
    causal: bool, rotary: bool, activation: str, norm_first: bool, layer_norm_eps: float,
) -> list[TransformerBlock]:
    head_dim = d_model // num_heads
    return [
        TransformerBlock(
            MultiHeadAttention(d_model, num_heads, num_kv_heads, causal=causal,
                               rotary=RotaryEmbedding(head_dim) if rotary else None),
            MLP(d_model, d_ff or 4 * d_model, activation=activation),
            d_model, norm_first=norm_first, layer_norm_eps=layer_norm_eps,
        )
        for _ in range(num_layers)
    ]


class TransformerEncoder(TransformerStack):
    """An encoder built from scratch: bidirectional attention, pre-LN by default.

    Args:
        vocab_size: token ids.
        d_model: width of the token vectors.
        num_heads: query heads per block.
        num_layers: blocks.
        d_ff: MLP hidden width (default 4 * d_model).
        num_kv_heads: key/value heads (grouped-query attention; default num_heads).
        max_positions: learned positions (ignored with ``rotary=True``).
        rotary: rotary position embeddings instead of learned positions.
        norm_first: pre-LN (True) or post-LN as BERT (False).
        activation: MLP activation name.
    """

    def __init__(
        self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, *, d_ff: int | None = None,
        num_kv_heads: int | None = None, max_positions: int = 512, rotary: bool = False,
        norm_first: bool = True, activation: str = "gelu", layer_norm_eps: float = 1e-5,
    ) -> None:
        embed = Embeddings(vocab_size, d_model, max_positions=0 if rotary else max_positions)
        blocks = _blocks(d_model, num_heads, num_layers, d_ff, num_kv_heads, False, rotary, activation,
                         norm_first, layer_norm_eps)
        super().__init__(embed, blocks, nn.LayerNorm(d_model, eps=layer_norm_eps) if norm_first else None)
        self.setup_hooks()

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False) -> TransformerOutput:
        """(B, N) ids -> :class:`TransformerOutput` with ``last_hidden_state`` (B, N, d_model)
        (arguments as :meth:`TransformerStack.run_blocks`)."""
        return self.run_blocks(input_ids, attention_mask, output_hidden_states=output_hidden_states,
                               output_attentions=output_attentions)


class TransformerDecoder(TransformerStack, GenerationMixin):
    """A causal language model built from scratch: pre-LN, tied LM head, KV-cache generation.

    Arguments as :class:`TransformerEncoder` (always pre-LN, so no ``norm_first``), plus
    ``layer_norm_eps`` and ``eos_token_id``: the end-of-sequence token that
    ``generate(..., stop_at_eos=True)`` stops at (None: generation never stops early).
    """

    def __init__(
        self, vocab_size: int, d_model: int, num_heads: int, num_layers: int, *, d_ff: int | None = None,
        num_kv_heads: int | None = None, max_positions: int = 1024, rotary: bool = False,
        activation: str = "gelu", layer_norm_eps: float = 1e-5, eos_token_id: int | None = None,
    ) -> None:
        embed = Embeddings(vocab_size, d_model, max_positions=0 if rotary else max_positions)
        blocks = _blocks(d_model, num_heads, num_layers, d_ff, num_kv_heads, True, rotary, activation,
                         True, layer_norm_eps)
        super().__init__(embed, blocks, nn.LayerNorm(d_model, eps=layer_norm_eps))
        self.eos_token_id = eos_token_id
        self.setup_hooks()

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, positions: Tensor | None = None,
        kv_cache: KVCache | None = None, output_hidden_states: bool = False, output_attentions: bool = False,
    ) -> TransformerOutput:
        """(B, N) ids -> :class:`TransformerOutput` with ``logits`` (B, N, vocab) from the tied head
        (arguments as :meth:`TransformerStack.run_blocks`)."""
        output = self.run_blocks(input_ids, attention_mask, positions=positions, kv_cache=kv_cache,
                                 output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        output.logits = torch.matmul(output.last_hidden_state, self.embed.tokens.weight.t())
        return output
