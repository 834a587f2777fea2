"""Gradient attributions on functions whose attributions are known, and every method on tiny models."""

from __future__ import annotations

import pytest
import torch

from qkv.inspect.attribution import (
    IG_STEPS,
    METHODS,
    attribute,
    attribute_sentence,
    gauss_legendre,
    gradient_x_input,
    integrated_gradients,
)
from qkv.inspect.patching import LogitDifference
from qkv.inspect.rollout import attention_rollout


def _inputs(batch=3, n=7, d=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, d, generator=generator, dtype=torch.float64), \
        torch.randn(n, d, generator=generator, dtype=torch.float64)


def test_gradient_x_input_is_exact_for_a_linear_function():
    x, w = _inputs()
    got = gradient_x_input(lambda e: (e * w).sum(dim=(1, 2)), x)
    torch.testing.assert_close(got, (x * w).sum(-1), rtol=0, atol=1e-12)


def test_integrated_gradients_on_a_quadratic_is_exact_and_differs_from_gradient_x_input():
    x, w = _inputs()
    fn = lambda e: (w * e**2).sum(dim=(1, 2))  # noqa: E731  IG from 0: w x^2; gradient x input: 2 w x^2
    ig, at_x, at_baseline = integrated_gradients(fn, x, torch.zeros_like(x), steps=2)
    torch.testing.assert_close(ig, (w * x**2).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient_x_input(fn, x), 2 * (w * x**2).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(at_x, fn(x))
    assert torch.equal(at_baseline, torch.zeros(3, dtype=torch.float64))


def test_integrated_gradients_completeness_on_a_nonlinear_function_improves_with_steps():
    x, w = _inputs(seed=1)
    baseline = torch.randn_like(x) * 0.1
    fn = lambda e: torch.tanh((w * e).sum(-1)).sum(-1) + (e**3).mean(dim=(1, 2))  # noqa: E731
    errors = []
    for steps in (1, 4, IG_STEPS):
        ig, at_x, at_baseline = integrated_gradients(fn, x, baseline, steps=steps, batch_size=3 * 2)
        errors.append(float(((ig.sum(-1) - (at_x - at_baseline)).abs() / (at_x - at_baseline).abs()).max()))
    assert errors[-1] < 1e-6 < errors[0]
    assert errors[1] < errors[0]


def test_gauss_legendre_integrates_polynomials_on_the_unit_interval():
    nodes, weights = gauss_legendre(3)
    assert float(nodes.min()) > 0 and float(nodes.max()) < 1
    for degree in range(6):  # exact up to degree 2 * 3 - 1
        assert abs(float((weights * nodes**degree).sum()) - 1 / (degree + 1)) < 1e-12
    with pytest.raises(ValueError, match="steps"):
        gauss_legendre(0)


def _planted():
    from test_patching import ANSWER, SOURCE, WRONG, planted_decoder

    return planted_decoder(), ANSWER, WRONG, SOURCE


def test_every_gradient_method_finds_the_copied_token_of_the_planted_head():
    model, answer, wrong, source = _planted()
    ids = torch.tensor([[3, 5, answer, 4, 1, 6], [2, 9, answer, 1, 1, 0]])
    metric = LogitDifference(answer, wrong, str(answer), str(wrong))
    read = torch.zeros(2, 6)
    read[:, -1] = 1.0
    baseline = ids.clone()
    baseline[:, :-1] = 0  # token 0 everywhere but the read position: the path keeps the positions
    result = attribute(model, ids, None, read, lambda out, rows: metric(out, [5]), baseline=baseline)
    for method in ("grad_x_input", "integrated_gradients"):
        assert result.scores[method].argmax(dim=-1).tolist() == [source, source], method
    # the planted head looks at the source in the last layer, so attention from the last token puts weight there
    assert (result.scores["attention"][:, source] > 0.25).all()
    assert float(result.completeness_error().max()) < 0.01
    assert set(result.scores) == set(METHODS)


def test_attributions_of_a_padded_batch_equal_those_of_each_input_alone():
    model, answer, wrong, _ = _planted()
    metric = LogitDifference(answer, wrong, str(answer), str(wrong))
    long, short = [3, 5, answer, 4, 1, 6], [2, 9, answer, 1]
    ids = torch.tensor([long, short + [0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    read = torch.zeros(2, 6)
    read[0, 5] = read[1, 3] = 1.0
    last = torch.tensor([5, 3])

    def score(out, rows):  # each row's last real token
        logits = out.logits[torch.arange(len(rows)), last[rows]]
        return logits[:, answer] - logits[:, wrong]

    together = attribute(model, ids, mask, read, score)
    alone = attribute(model, torch.tensor([short]), None, read[1:, :4], lambda out, rows: metric(out, [3]))
    for method in METHODS:
        torch.testing.assert_close(together.scores[method][1, :4], alone.scores[method][0], rtol=1e-4, atol=1e-5)
        assert not together.scores[method][1, 4:].any()
    weights = torch.stack([w[0] for w in _weights(model, torch.tensor([short]))])  # (L, H, N, N)
    torch.testing.assert_close(alone.scores["rollout"][0], attention_rollout(weights)[-1, 3], rtol=1e-5, atol=1e-6)


def _weights(model, ids):
    with torch.no_grad(), model.capture("blocks.*.attn.weights") as store:
        model(ids)
    return [store[f"blocks.{i}.attn.weights"] for i in range(len(model.blocks))]


def test_integrated_gradients_completeness_on_minilm(minilm):
    from qkv.inspect.patching import sense_cosine
    from qkv.inspect.senses import DEFAULT_SENSES

    model, tokenizer = minilm
    metric = sense_cosine(model, tokenizer, "bank", DEFAULT_SENSES["bank"], "money")
    tokens, result = attribute_sentence(model, tokenizer, "She deposited her check at the bank.", metric,
                                        focus="bank", methods=("integrated_gradients", "grad_x_input"))
    assert result.baseline == "mask" and result.steps == IG_STEPS
    difference = float(result.metric - result.baseline_metric)
    assert abs(difference) > 0.05
    assert float(result.completeness_error()[0]) < 0.01
    # the kept tokens ([CLS], [SEP], the focus word) are the same in the baseline: no attribution
    for token in ("[CLS]", "bank", "[SEP]"):
        assert float(result.scores["integrated_gradients"][0, tokens.index(token)]) == 0.0


def test_unknown_methods_are_refused():
    model = _planted()[0]
    with pytest.raises(ValueError, match="not among"):
        attribute(model, torch.tensor([[1, 2]]), None, torch.tensor([[0.0, 1.0]]),
                  lambda out, rows: out.logits[:, -1, 0], methods=("saliency",))
