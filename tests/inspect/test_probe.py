"""The logistic-regression probe: accuracy, label ids, C chosen on training data only, edge cases.

The optimum is checked independently of the solver: at the returned weights the gradient
of ``sum_i CE + ||W||^2 / (2C)``, taken by autograd on the raw features, must vanish.
"""

from __future__ import annotations

import pytest
import torch

from qkv.inspect.probe import Probe, _stratified_folds, fit_probe

IDS = torch.tensor([3, 7, 11])


def blobs(sizes: tuple[int, ...], d: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs (sum(sizes), d) float32 with labels IDS[k], centres ``spread`` apart on average."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), d, generator=generator) * spread
    labels = torch.cat([torch.full((m,), k) for k, m in enumerate(sizes)])
    features = centres[labels] + torch.randn(len(labels), d, generator=generator)
    order = torch.randperm(len(labels), generator=generator)
    return features[order], IDS[labels[order]]


def noisy_high_dimensional(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """120 examples in 96 dimensions, a weak signal spread over all of them, 10% labels flipped.

    The training folds (96 examples) sit at the interpolation threshold, where a weakly
    regularised fit chases the noise; a strongly regularised one stays near the centroid
    direction. Over 40 seeds C = 0.01 wins every time, by 3 to 15 points of accuracy.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.zeros(61, dtype=torch.long), torch.ones(59, dtype=torch.long)])
    features = torch.randn(120, 96, generator=generator) + 0.2 * (2 * labels[:, None] - 1)
    flipped = torch.rand(120, generator=generator) < 0.1
    labels = torch.where(flipped, 1 - labels, labels)
    return features, labels * 5 + 2


def clean_correlated(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """131 examples, three classes, exactly separable along x1 - x2 but not along any one feature.

    x1 and x2 share a large common factor; the classes differ by steps of 0.5 in x1 only,
    with noise 0.03. Strong regularisation keeps the weights near the class-mean direction
    (mostly x1, buried in the common factor: about 40% accuracy); weak regularisation finds
    x1 - x2 (100%). Over 40 seeds C = 10 or 100 wins every time.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((m,), k) for k, m in enumerate((41, 53, 37))])
    common = 3.0 * torch.randn(len(labels), generator=generator)
    x1 = common + 0.5 * labels + 0.03 * torch.randn(len(labels), generator=generator)
    x2 = common + 0.03 * torch.randn(len(labels), generator=generator)
    x3 = torch.randn(len(labels), generator=generator)
    return torch.stack([x1, x2, x3], dim=1), IDS[labels]


def objective_gradient(probe: Probe, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd gradient of sum_i CE + ||W||^2 / (2C) at the probe's weights, on raw features."""
    weight = probe.weight.clone().requires_grad_(True)
    bias = probe.bias.clone().requires_grad_(True)
    z = (features.double() - probe.mean) / probe.std
    targets = torch.searchsorted(probe.classes, labels)
    loss = torch.nn.functional.cross_entropy(z @ weight + bias, targets, reduction="sum")
    loss = loss + (weight * weight).sum() / (2 * probe.c)
    loss.backward()
    return weight.grad, bias.grad


def test_separable_blobs_with_odd_sizes_and_label_ids():
    features, labels = blobs((37, 52, 41), d=17, spread=6.0, seed=1)
    train, test = slice(0, 90), slice(90, None)
    probe = fit_probe(features[train], labels[train], seed=0)
    predicted = probe.predict(features[test])
    assert predicted.dtype == torch.int64 and predicted.shape == (40,)
    assert set(predicted.tolist()) <= {3, 7, 11}
    assert torch.equal(probe.classes, IDS)
    assert (predicted == labels[test]).double().mean() == 1.0
    assert (probe.predict(features[train]) == labels[train]).all()
    assert probe.selection == "cv" and probe.folds == 5
    assert set(probe.cv_scores) == {0.01, 0.1, 1.0, 10.0, 100.0} and probe.c in probe.cv_scores


def test_predict_proba_rows_sum_to_one_and_match_predict():
    features, labels = blobs((23, 31, 19), d=9, spread=1.5, seed=2)
    probe = fit_probe(features, labels)
    probabilities = probe.predict_proba(features)
    assert probabilities.shape == (73, 3)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(73, dtype=probabilities.dtype), atol=1e-12)
    assert (probabilities >= 0).all()
    assert torch.equal(probe.classes[probabilities.argmax(dim=1)], probe.predict(features))


@pytest.mark.parametrize("n, d", [(97, 13), (29, 60)])  # more examples than features, and fewer
@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_fit_reaches_the_regularised_optimum(n, d, c):
    features, labels = blobs((n // 3, n - 2 * (n // 3), n // 3), d=d, spread=1.0, seed=n + d)
    features[:, 0] = 2.5  # a constant feature: standardised to zero, its weight must stay zero
    probe = fit_probe(features, labels, c_grid=(c,))
    grad_weight, grad_bias = objective_gradient(probe, features, labels)
    assert probe.c == c
    assert grad_weight.abs().max() < 1e-6 * n and grad_bias.abs().max() < 1e-6 * n  # mean-objective gradient
    assert probe.weight[0].abs().max() < 1e-12


def test_c_is_chosen_on_training_data_only():
    features, labels = noisy_high_dimensional()
    train, test = slice(0, 100), slice(100, None)
    probe = fit_probe(features[train], labels[train], seed=0)
    garbage = 50 * torch.randn(20, 96, generator=torch.Generator().manual_seed(9))
    probe_again = fit_probe(features[train], labels[train], seed=0)
    probe_again.predict(garbage)
    probe.predict(features[test])
    assert probe.c == probe_again.c and probe.cv_scores == probe_again.cv_scores
    assert torch.equal(probe.weight, probe_again.weight)
    # Cross-validation accuracies are averages of fold accuracies on training examples:
    # 100 examples in 5 stratified folds of 20, so every score is a multiple of 1/20 / 5.
    for score in probe.cv_scores.values():
        assert abs(score * 100 - round(score * 100)) < 1e-9


def test_strong_regularisation_wins_on_noise_and_weak_on_clean_data():
    noisy = fit_probe(*noisy_high_dimensional(), seed=0)
    clean = fit_probe(*clean_correlated(), seed=0)
    assert noisy.c <= 0.1, noisy.cv_scores
    assert clean.c >= 10.0, clean.cv_scores
    assert clean.cv_scores[clean.c] == 1.0
    assert noisy.cv_scores[noisy.c] > max(noisy.cv_scores[10.0], noisy.cv_scores[100.0])
    assert clean.cv_scores[clean.c] > max(clean.cv_scores[0.01], clean.cv_scores[0.1])


def test_ties_go_to_the_smaller_c():
    features, labels = blobs((20, 25), d=4, spread=20.0, seed=4)  # every C scores 100%
    probe = fit_probe(features, labels)
    assert set(probe.cv_scores.values()) == {1.0}
    assert probe.c == 0.01


def test_class_with_a_single_example_falls_back_to_the_middle_c():
    features, labels = blobs((30, 27), d=6, spread=4.0, seed=5)
    lonely = torch.full((1, 6), 40.0)
    features, labels = torch.cat([features, lonely]), torch.cat([labels, torch.tensor([11])])
    probe = fit_probe(features, labels, c_grid=(100.0, 0.1, 1.0, 10.0, 0.01))
    assert probe.selection == "fallback" and probe.folds == 0 and probe.cv_scores == {}
    assert probe.c == 1.0
    assert torch.equal(probe.classes, torch.tensor([3, 7, 11]))
    assert probe.predict(lonely).item() == 11
    assert (probe.predict(features[:-1]) == labels[:-1]).double().mean() > 0.95


def test_folds_shrink_to_the_smallest_class():
    features, labels = blobs((3, 40), d=5, spread=5.0, seed=6)
    probe = fit_probe(features, labels, folds=10)
    assert probe.folds == 3 and probe.selection == "cv"
    features, labels = blobs((2, 40), d=5, spread=5.0, seed=6)
    assert fit_probe(features, labels).folds == 2


def test_one_class_predicts_that_class():
    features = torch.randn(12, 4)
    probe = fit_probe(features, torch.full((12,), 7))
    assert probe.selection == "one-class" and probe.c is None and probe.weight is None
    test = torch.randn(5, 4)
    assert torch.equal(probe.predict(test), torch.full((5,), 7))
    assert torch.equal(probe.predict_proba(test), torch.ones(5, 1, dtype=torch.float64))


def test_deterministic_for_a_seed():
    features, labels = blobs((33, 28, 35), d=11, spread=1.0, seed=7)
    first = fit_probe(features, labels, seed=3)
    second = fit_probe(features, labels, seed=3)
    assert first.c == second.c and first.cv_scores == second.cv_scores
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    labels_index = torch.unique(labels, return_inverse=True)[1]
    assert torch.equal(_stratified_folds(labels_index, 5, 3), _stratified_folds(labels_index, 5, 3))
    assert not torch.equal(_stratified_folds(labels_index, 5, 3), _stratified_folds(labels_index, 5, 4))


def test_folds_are_stratified_and_balanced():
    labels = torch.cat([torch.zeros(17), torch.ones(9), torch.full((23,), 2)]).long()
    folds = _stratified_folds(labels, 4, seed=0)
    sizes = torch.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for k, count in enumerate((17, 9, 23)):
        per_fold = torch.bincount(folds[labels == k], minlength=4)
        assert per_fold.min() == count // 4 and per_fold.max() == -(-count // 4)


@pytest.mark.parametrize(
    "features, labels, kwargs, match",
    [
        (torch.randn(10), torch.zeros(10).long(), {}, "features must be 2-D"),
        (torch.randn(0, 3), torch.zeros(0).long(), {}, "features must be non-empty"),
        (torch.randn(10, 0), torch.zeros(10).long(), {}, "features must be non-empty"),
        (torch.randn(10, 3), torch.zeros(10), {}, "labels must be an integer tensor"),
        (torch.randn(10, 3), torch.zeros(10, dtype=torch.bool), {}, "labels must be an integer tensor"),
        (torch.randn(10, 3), [0] * 10, {}, "labels must be a torch.Tensor"),
        (torch.randn(10, 3), torch.zeros(10, 1).long(), {}, "labels must be 1-D"),
        (torch.randn(10, 3), torch.zeros(9).long(), {}, "features and labels must have one row per example"),
        (torch.full((10, 3), float("nan")), torch.zeros(10).long(), {}, "features has NaN"),
        (torch.randn(10, 3), torch.zeros(10).long(), {"c_grid": ()}, "c_grid"),
        (torch.randn(10, 3), torch.zeros(10).long(), {"c_grid": (1.0, -1.0)}, "c_grid"),
        (torch.randn(10, 3), torch.zeros(10).long(), {"c_grid": ("big",)}, "c_grid"),
        (torch.randn(10, 3), torch.zeros(10).long(), {"folds": 1}, "folds"),
        (torch.randn(10, 3), torch.zeros(10).long(), {"max_iter": 0}, "max_iter"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(features, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_probe(features, labels, **kwargs)


def test_predict_checks_its_features():
    features, labels = blobs((10, 12), d=5, spread=3.0, seed=8)
    probe = fit_probe(features, labels)
    with pytest.raises(ValueError, match="features has 4 columns but the probe was trained on 5"):
        probe.predict(torch.randn(3, 4))
    with pytest.raises(ValueError, match="features must be 2-D"):
        probe.predict_proba(torch.randn(5))
