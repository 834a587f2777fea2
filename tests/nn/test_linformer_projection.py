"""Learnable Linformer projections in qkv.nn: they train, and training brings them closer to exact."""

from __future__ import annotations

import pytest
import torch

from qkv.nn import LinformerProjection, MultiHeadAttention, TransformerEncoder


def relative_error(module: MultiHeadAttention, x: torch.Tensor, exact: torch.Tensor) -> float:
    with torch.no_grad():
        return ((module(x) - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("init", ["random", "mean"])
def test_distilling_the_projections_lowers_the_error(init):
    torch.manual_seed(0)
    module = MultiHeadAttention(32, 4)
    x = torch.randn(4, 48, 32)
    with torch.no_grad():
        exact = module(x)  # the same weights with exact attention
    module.set_backend("linformer", k=8, learnable=True, max_length=64, init=init)
    before = relative_error(module, x, exact)
    optimizer = torch.optim.Adam(module.linformer.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        loss = (module(x) - exact).pow(2).mean()
        loss.backward()
        optimizer.step()
    after = relative_error(module, x, exact)
    assert after < 0.6 * before, (before, after)


def test_projections_are_parameters_of_the_model_and_receive_gradients():
    encoder = TransformerEncoder(vocab_size=30, d_model=16, num_heads=2, num_layers=2, max_positions=32)
    encoder.set_attention("linformer", k=4, learnable=True, max_length=32)
    names = [name for name, _ in encoder.named_parameters() if "linformer" in name]
    assert len(names) == 2
    ids = torch.randint(0, 30, (2, 20))
    encoder(ids).last_hidden_state.sum().backward()
    for block in encoder.blocks:
        grad = block.attn.linformer.weight.grad
        assert grad is not None and grad[:, :, :20].abs().sum() > 0
        assert grad[:, :, 20:].abs().sum() == 0  # columns past Nk are not used


def test_mean_initialisation_pools_segments():
    projection = LinformerProjection(k=4, max_length=8, init="mean")
    expected = torch.tensor([[0.5, 0.5, 0, 0, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0.5, 0.5, 0, 0], [0, 0, 0, 0, 0, 0, 0.5, 0.5]])
    assert torch.equal(projection(8)[0], expected) and torch.equal(projection(8)[1], expected)
    assert projection(5).shape == (2, 4, 5)


def test_errors_name_the_fix():
    module = MultiHeadAttention(16, 2)
    with pytest.raises(ValueError, match="max_length"):
        module.set_backend("linformer", k=4, learnable=True)
    with pytest.raises(ValueError, match="linformer"):
        module.set_backend("performer", learnable=True, max_length=10)
    with pytest.raises(ValueError, match="learnable=True"):
        module.set_backend("linformer", max_length=10)
    module.set_backend("linformer", k=4, learnable=True, max_length=8)
    with pytest.raises(ValueError, match="max_length=8"):
        module(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="init"):
        LinformerProjection(4, 8, init="zeros")
