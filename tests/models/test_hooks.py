"""Looking inside: named activations, replacing them, and swapping attention backends."""

from __future__ import annotations

import pytest
import torch

import qkv

TEXT = "She deposited her check at the bank."


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return qkv.load(minilm_folder)


def test_run_with_cache_names_and_shapes(minilm):
    model, tokenizer = minilm
    output, cache = model.run_with_cache(TEXT)
    n = len(tokenizer(TEXT).tokens[0])
    assert cache.batch.tokens[0][0] == "[CLS]"
    assert cache["blocks.3.attn.weights"].shape == (1, 12, n, n)
    assert cache["blocks.3.attn.scores"].shape == (1, 12, n, n)
    assert cache["blocks.3.attn.q"].shape == (1, 12, n, 32)
    assert cache["blocks.3.attn.z"].shape == (1, 12, n, 32)
    assert cache["blocks.3.attn.out"].shape == (1, n, 384)
    assert cache["blocks.0.resid_pre"].shape == (1, n, 384)
    assert torch.equal(cache["blocks.5.resid_post"], output.last_hidden_state)
    assert torch.equal(cache["blocks.0.resid_pre"], cache["embed.embed"])
    weights = cache.stack("attn.weights")  # (L, B, H, N, N)
    assert weights.shape == (6, 1, 12, n, n)
    assert torch.allclose(weights.sum(-1), torch.ones(6, 1, 12, n))
    # The weights are the softmax of the scores, and z is the weighted average of values.
    assert torch.allclose(torch.softmax(cache["blocks.2.attn.scores"], -1), cache["blocks.2.attn.weights"])
    assert torch.allclose(cache["blocks.2.attn.weights"] @ cache["blocks.2.attn.v"], cache["blocks.2.attn.z"],
                          atol=1e-6)


def test_capturing_only_some_names_keeps_other_layers_fast(minilm):
    model, _ = minilm
    output_all, _ = model.run_with_cache(TEXT)
    output, cache = model.run_with_cache(TEXT, names="blocks.1.attn.weights")
    assert cache.names() == ["blocks.1.attn.weights"]
    assert torch.allclose(output.last_hidden_state, output_all.last_hidden_state, atol=1e-5)
    with pytest.raises(KeyError, match="was not captured"):
        cache["blocks.2.attn.weights"]
    with pytest.raises(KeyError, match="no hook point matches"):
        model.run_with_cache(TEXT, names="blocks.*.attn.nonsense")


def test_hooks_replace_activations_ablation_and_patching(minilm):
    model, tokenizer = minilm
    batch = tokenizer(TEXT)
    with torch.no_grad():
        clean = model(batch.input_ids).last_hidden_state

        def zero_head(z, point):
            z = z.clone()
            z[:, 4] = 0.0  # head 4's weighted average of values
            return z

        with model.hooks([("blocks.2.attn.z", zero_head)]):
            ablated = model(batch.input_ids).last_hidden_state
        assert (ablated - clean).abs().max() > 1e-3
        with model.hooks([("blocks.2.attn.z", lambda z, point: None)]):
            assert torch.equal(model(batch.input_ids).last_hidden_state, clean)
        # Uniform attention in every layer: replacing the weights really reaches the output.
        with model.hooks([("blocks.*.attn.weights", lambda w, p: torch.full_like(w, 1.0 / w.shape[-1]))]):
            uniform = model(batch.input_ids).last_hidden_state
        assert (uniform - clean).abs().max() > 1e-2
    assert model(batch.input_ids).last_hidden_state.allclose(clean)  # hooks are gone again


def test_hook_returning_a_wrong_shape_is_refused(minilm):
    model, tokenizer = minilm
    with model.hooks([("blocks.0.attn.z", lambda z, p: z[:, :3])]), pytest.raises(ValueError, match="must return"):
        model(tokenizer(TEXT).input_ids)


def test_set_attention_swaps_backends(minilm):
    model, tokenizer = minilm
    batch = tokenizer([TEXT, "The river bank was muddy."])
    with torch.no_grad():
        expected = model(batch.input_ids, batch.attention_mask).last_hidden_state
        model.set_attention("tiled", layers=[0, -1])
        assert [b for b, _ in model.attention_backends()] == ["tiled", "auto", "auto", "auto", "auto", "tiled"]
        swapped = model(batch.input_ids, batch.attention_mask).last_hidden_state
        assert (swapped - expected)[batch.attention_mask].abs().max() < 1e-5
        model.set_attention("reference", window=(2, 2))
        windowed = model(batch.input_ids, batch.attention_mask).last_hidden_state
        assert (windowed - expected)[batch.attention_mask].abs().max() > 1e-3
        model.set_attention("auto")
    with pytest.raises(ValueError, match="unknown backend"):
        model.set_attention("flash-please")
    with pytest.raises(ValueError, match="unknown attention options"):
        model.set_attention("sdpa", windw=3)
    with pytest.raises(ValueError, match="layers must be ints"):
        model.set_attention("sdpa", layers=[6])


def test_from_scratch_modules_gqa_and_rotary():
    attn = qkv.nn.MultiHeadAttention(48, num_heads=6, num_kv_heads=2, causal=True,
                                     rotary=qkv.nn.RotaryEmbedding(8))
    x = torch.randn(2, 10, 48)
    full = attn(x)
    cache = qkv.nn.KVCache()
    steps = torch.cat([attn(x[:, :4], kv_cache=cache)] + [attn(x[:, i:i + 1], kv_cache=cache)
                                                         for i in range(4, 10)], dim=1)
    assert torch.allclose(steps, full, atol=1e-5)
    assert attn.k_proj.out_features == 2 * 8  # two key/value heads of width 8
    mqa = qkv.nn.MultiHeadAttention(48, num_heads=6, num_kv_heads=1, fused_qkv=True)
    assert mqa(x).shape == (2, 10, 48)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        qkv.nn.MultiHeadAttention(48, num_heads=6, num_kv_heads=4)


def test_decoder_from_scratch_learns_and_decodes_with_a_cache():
    torch.manual_seed(0)
    model = qkv.nn.TransformerDecoder(vocab_size=11, d_model=32, num_heads=4, num_layers=2, num_kv_heads=2,
                                      rotary=True)
    # Copy task: the second half repeats the first. One optimiser run must lower the loss.
    ids = torch.randint(1, 11, (16, 6))
    sequence = torch.cat([ids, ids], dim=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_now():
        logits = model(sequence[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 11), sequence[:, 1:].reshape(-1))

    first = loss_now().item()
    for _ in range(40):
        optimiser.zero_grad()
        loss_now().backward()
        optimiser.step()
    assert loss_now().item() < first - 0.3
    model.eval()
    prompt = sequence[:2, :5]
    assert torch.equal(model.generate(prompt, 7), model.generate(prompt, 7, use_cache=False))


def test_encoder_from_scratch_post_ln_and_padding():
    encoder = qkv.nn.TransformerEncoder(vocab_size=50, d_model=24, num_heads=3, num_layers=2, norm_first=False)
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    out = encoder(ids, mask).last_hidden_state
    assert out.shape == (2, 7, 24)
    # Padding is invisible: changing padded tokens leaves the real ones unchanged.
    other = ids.clone()
    other[1, 5:] = 3
    assert torch.allclose(encoder(other, mask).last_hidden_state[1, :5], out[1, :5], atol=1e-6)


@pytest.fixture
def tiny_bert(tiny_bert_folder):
    return qkv.load(tiny_bert_folder)


def test_calling_the_model_with_text_says_how_to_tokenize(tiny_bert):
    model, tokenizer = tiny_bert
    with pytest.raises(TypeError, match=r"(?s)input_ids.*got str.*model\.tokenizer\(text\).*run_with_cache\(text\)"):
        model(TEXT)
    with pytest.raises(TypeError, match=r"input_ids.*got list"):
        model([TEXT])
    with pytest.raises(TypeError, match=r"input_ids.*dtype torch\.float32.*\.long\(\)"):
        model(tokenizer(TEXT).input_ids.float())
    with pytest.raises(ValueError, match=r"input_ids must be \(B, N\).*unsqueeze\(0\)"):
        model(tokenizer(TEXT).input_ids[0])
    batch = tokenizer(TEXT)  # the fix the message gives works
    output, _ = model.run_with_cache(TEXT, names="blocks.0.attn.out")
    assert torch.allclose(model(batch.input_ids, batch.attention_mask).last_hidden_state, output.last_hidden_state)


def test_set_attention_refuses_at_once_what_the_backend_cannot_honour(tiny_bert, tiny_gpt2_folder):
    model, _ = tiny_bert
    with pytest.raises(ValueError, match=r"backend='nystrom' cannot honour window=.*can serve.*'sliding'"):
        model.set_attention("nystrom", window=(2, 2))
    with pytest.raises(ValueError, match=r"window right bound must be >= 0"):
        model.set_attention("reference", window=(2, -1))
    with pytest.raises(ValueError, match=r"global_tokens.*pass window="):
        model.set_attention("sliding", global_tokens=[0])
    assert [backend for backend, _ in model.attention_backends()] == ["auto", "auto"]  # nothing half-set
    decoder, _ = qkv.load(tiny_gpt2_folder)
    with pytest.raises(ValueError, match=r"(?s)backend='linformer' cannot honour causal=True.*decoder.*'performer'"):
        decoder.set_attention("linformer")
    decoder.set_attention("performer")  # causal-capable approximate backends are accepted
    assert decoder.attention_backends()[0][0] == "performer"


def test_run_with_cache_under_an_approximate_backend(tiny_bert):
    model, tokenizer = tiny_bert
    model.set_attention("nystrom", landmarks=2)
    _, cache = model.run_with_cache(TEXT)  # every hook point nystrom can produce
    n = len(tokenizer(TEXT).tokens[0])
    assert cache["blocks.1.attn.weights"].shape == (1, 3, n, n)  # its mixing matrix
    assert "blocks.1.attn.scores" not in cache
    with pytest.raises(KeyError, match=r"'blocks\.1\.attn\.scores' was not captured: backend='nystrom'.*no \(Nq, Nk\)"):
        cache["blocks.1.attn.scores"]
    with pytest.raises(ValueError, match=r"(?s)'blocks\.0\.attn\.scores'.*'nystrom'.*Leave them out of names="):
        model.run_with_cache(TEXT, names="blocks.*.attn.scores")
    with model.hooks([("blocks.1.attn.scores", lambda s, p: None)]):
        with pytest.raises(ValueError, match=r"cannot hook 'blocks\.1\.attn\.scores'.*'nystrom'") as error:
            model(tokenizer(TEXT).input_ids)
        assert "hook_weights" not in str(error.value)


def test_missing_cache_key_hint_fits_what_was_asked(tiny_bert):
    model, _ = tiny_bert
    _, everything = model.run_with_cache(TEXT)
    with pytest.raises(KeyError, match="not one of the model's") as error:
        everything["blocks.0.attn.nonsense"]
    assert "names=None" not in str(error.value)
    _, some = model.run_with_cache(TEXT, names="blocks.0.attn.weights")
    with pytest.raises(KeyError, match=r"add it to names=, or pass names=None"):
        some["blocks.1.attn.weights"]


def test_transformer_lens_keys_are_aliases_of_qkv_names(tiny_bert):
    model, _ = tiny_bert
    _, cache = model.run_with_cache(TEXT)
    assert cache["pattern", 1] is cache["blocks.1.attn.weights"]
    assert cache["attn", -1] is cache["blocks.1.attn.weights"]  # negative layers count from the last
    assert cache["attn_scores", 0] is cache["blocks.0.attn.scores"]
    assert cache["q", 0] is cache["blocks.0.attn.q"] and cache["z", 1] is cache["blocks.1.attn.z"]
    assert cache["resid_post", 1] is cache["blocks.1.resid_post"] and cache["post", 0] is cache["blocks.0.mlp.hidden"]
    assert ("pattern", 1) in cache and ("pattern", 7) not in cache and ("result", 0) not in cache
    with pytest.raises(KeyError, match=r"'blocks\.7\.attn\.weights' was not captured"):
        cache["pattern", 7]
    with pytest.raises(KeyError, match=r"\('result', 1\): .*blocks\.1\.attn\.z.*blocks\.1\.attn\.out"):
        cache["result", 1]
    with pytest.raises(KeyError, match=r"\('mlp_pre', 0\): .*blocks\.0\.mlp\.hidden"):
        cache["mlp_pre", 0]
    with pytest.raises(KeyError, match=r"'nonsense' is not a name qkv knows.*'pattern'"):
        cache["nonsense", 0]
    with pytest.raises(KeyError, match=r"\(name, layer\) pairs"):
        cache["pattern", "1"]


def test_transformer_lens_names_as_strings_say_which_qkv_key_to_use(tiny_bert):
    model, _ = tiny_bert
    _, cache = model.run_with_cache(TEXT)
    with pytest.raises(KeyError, match=r"use 'blocks\.1\.attn\.weights', or cache\['pattern', 1\]"):
        cache["blocks.1.attn.hook_pattern"]
    with pytest.raises(KeyError, match=r"use 'blocks\.0\.resid_pre', or cache\['resid_pre', 0\]"):
        cache["blocks.0.hook_resid_pre"]
    with pytest.raises(KeyError, match=r"'blocks\.i\.attn\.weights'.*cache\.stack\('attn\.weights'\)"):
        cache["pattern"]
    with pytest.raises(KeyError, match=r"embed\.embed"):
        cache["hook_embed"]
    with pytest.raises(KeyError, match="not one of the model's"):  # a qkv-style name gets no TransformerLens hint
        cache["blocks.0.attn.nonsense"]


def test_cache_keys_values_items(tiny_bert):
    model, _ = tiny_bert
    _, cache = model.run_with_cache(TEXT, names="blocks.*.attn.weights")
    assert cache.keys() == cache.names() == ["blocks.0.attn.weights", "blocks.1.attn.weights"]
    assert [v is cache[k] for k, v in zip(cache.keys(), cache.values())] == [True, True]
    assert [name for name, _ in cache.items()] == cache.keys()
    assert dict(cache.items())["blocks.1.attn.weights"] is cache["pattern", 1]


def test_output_attentions_as_transformers(tiny_bert, tiny_bert_folder):
    from hf_reference import transformers

    model, tokenizer = tiny_bert
    batch = tokenizer([TEXT, "The river bank."])
    output = model(batch.input_ids, batch.attention_mask, output_attentions=True)
    assert model(batch.input_ids).attentions is None
    hf = transformers.BertModel.from_pretrained(tiny_bert_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(batch.input_ids, attention_mask=batch.attention_mask.long(), output_attentions=True).attentions
    assert len(output.attentions) == len(expected) == 2
    for ours, theirs in zip(output.attentions, expected):
        assert ours.shape == theirs.shape == (2, 3, batch.input_ids.shape[1], batch.input_ids.shape[1])
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-6, rtol=0)  # the unpadded row
    # Gradients flow through them, as in transformers.
    ids = batch.input_ids[:1]
    model.zero_grad()
    model(ids, output_attentions=True).attentions[1][0, 0, 1, 2].backward()
    assert model.blocks[1].attn.q_proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_output_attentions_on_a_decoder_and_a_layer_without_weights(tiny_gpt2_folder):
    model, tokenizer = qkv.load(tiny_gpt2_folder)
    ids = tokenizer(TEXT).input_ids
    output = model(ids, output_attentions=True)
    assert len(output.attentions) == len(model.blocks) and output.logits is not None
    assert torch.all(output.attentions[0][0, :, 0, 1:] == 0)  # causal: the first token sees only itself
    model.set_attention("tiled", layers=[1])  # computes no weights by itself, but is watched here
    torch.testing.assert_close(model(ids, output_attentions=True).attentions[1], output.attentions[1])
    model.set_attention("linear", layers=[1])
    assert model(ids, output_attentions=True).attentions[1].shape == output.attentions[1].shape


def test_output_attentions_refused_where_a_layer_has_no_weights(tiny_bert, monkeypatch):
    model, tokenizer = tiny_bert
    attn = model.blocks[1].attn
    monkeypatch.setattr(type(attn), "unavailable_hooks", lambda self: (
        {self.hook_scores: "no scores here", self.hook_weights: "no weights here"} if self is attn else {}))
    with pytest.raises(ValueError, match=r"output_attentions=True .*layer 1 \('auto'\): no weights here.*"
                                         r"set_attention\('auto'\).*run_with_cache"):
        model(tokenizer(TEXT).input_ids, output_attentions=True)
