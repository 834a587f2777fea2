"""Head roles on hand-made heads whose habit is known, and attention shares."""

from __future__ import annotations

import math

import pytest
import torch

from qkv.inspect import HEAD_ROLES, AttentionShare, attention_share, head_roles

# [CLS] the cat , sat . [SEP]
N = 7
SPECIAL = torch.tensor([True, False, False, False, False, False, True])
PUNCTUATION = torch.tensor([False, False, False, True, False, True, False])


def one_hot_rows(targets: list[int], n: int = N) -> torch.Tensor:
    """(n, n) attention where query i puts all its weight on key targets[i]."""
    return torch.nn.functional.one_hot(torch.tensor(targets), n).double()


def habit_heads() -> torch.Tensor:
    """(1, 6, N, N): heads that attend to the previous token, the next, themselves,
    [CLS], [SEP], and punctuation (half on each of the two marks)."""
    previous = one_hot_rows([0] + list(range(N - 1)))
    following = one_hot_rows([*range(1, N), N - 1])
    itself = torch.eye(N, dtype=torch.float64)
    cls = one_hot_rows([0] * N)
    sep = one_hot_rows([N - 1] * N)
    punctuation = (one_hot_rows([3] * N) + one_hot_rows([5] * N)) / 2
    return torch.stack([previous, following, itself, cls, sep, punctuation]).unsqueeze(0)


def test_habit_heads_score_one_on_their_role() -> None:
    roles = head_roles(habit_heads(), SPECIAL, PUNCTUATION)
    assert tuple(roles) == HEAD_ROLES
    for head, role in enumerate(["previous", "next", "self", "cls", "sep", "punctuation"]):
        assert roles[role][0, head].item() == pytest.approx(1.0), role
    assert roles["special"][0, 3].item() == pytest.approx(1.0)  # [CLS] and [SEP] are special
    assert roles["special"][0, 4].item() == pytest.approx(1.0)
    # Cross-checks counted by hand: query 0 of the previous-token head looks at itself (and [CLS]).
    assert roles["self"][0, 0].item() == pytest.approx(1 / N)
    assert roles["cls"][0, 0].item() == pytest.approx(2 / N)
    assert roles["previous"][0, 2].item() == 0.0
    assert roles["self"][0, 1].item() == pytest.approx(1 / N)  # the next-token head's last query
    assert roles["sep"][0, 1].item() == pytest.approx(2 / N)  # queries 5 and 6 look at [SEP]
    assert roles["punctuation"][0, 0].item() == pytest.approx(2 / N)  # queries 4 and 6


def test_shapes_ranges_and_layers() -> None:
    weights = torch.softmax(torch.randn(3, 5, N, N), dim=-1)  # float32
    weights[1] = habit_heads()[0, :5].float()
    roles = head_roles(weights, SPECIAL, PUNCTUATION)
    for name, value in roles.items():
        assert value.shape == (3, 5), name
        assert value.dtype == torch.float32
        assert ((value >= 0) & (value <= 1 + 1e-6)).all(), name
    assert roles["previous"][1, 0].item() == pytest.approx(1.0)
    assert roles["cls"][1, 3].item() == pytest.approx(1.0)
    # The special tokens are [CLS] and, by default the rest of them, [SEP].
    assert torch.allclose(roles["special"], roles["cls"] + roles["sep"], atol=1e-6)


def test_query_mask_leaves_padding_out() -> None:
    padded = torch.zeros(1, 6, N + 2, N + 2, dtype=torch.float64)
    padded[..., :N, :N] = habit_heads()
    padded[..., N:, 0] = 1.0  # padding queries attend to [CLS] (as if unmasked)
    pad = torch.tensor([False] * 2)
    special, punctuation = torch.cat([SPECIAL, pad]), torch.cat([PUNCTUATION, pad])
    real = torch.tensor([True] * N + [False] * 2)
    roles = head_roles(padded, special, punctuation, query_mask=real)
    for head, role in enumerate(["previous", "next", "self", "cls", "sep", "punctuation"]):
        assert roles[role][0, head].item() == pytest.approx(1.0), role
    unmasked = head_roles(padded, special, punctuation)
    assert unmasked["previous"][0, 0].item() < 1.0  # padding queries count without the mask
    assert unmasked["cls"][0, 0].item() > roles["cls"][0, 0].item()


def test_sep_mask_and_cls_index() -> None:
    weights = habit_heads()
    default = head_roles(weights, SPECIAL, PUNCTUATION)
    explicit = head_roles(weights, SPECIAL, PUNCTUATION, sep_mask=torch.arange(N) == N - 1)
    assert torch.equal(default["sep"], explicit["sep"])
    # Calling the last position [CLS] (as XLNet does) moves [SEP]'s score to "cls".
    last = head_roles(weights, SPECIAL, PUNCTUATION, cls_index=-1, sep_mask=torch.arange(N) == 0)
    assert last["cls"][0, 4].item() == pytest.approx(1.0)
    assert last["sep"][0, 3].item() == pytest.approx(1.0)


def test_single_token_has_no_neighbours() -> None:
    roles = head_roles(torch.ones(2, 3, 1, 1), torch.tensor([True]), torch.tensor([False]))
    assert torch.isnan(roles["previous"]).all() and torch.isnan(roles["next"]).all()
    assert torch.equal(roles["self"], torch.ones(2, 3))


# --------------------------------------------------------------------------- shares


def test_attention_share_splits_rows() -> None:
    rows = torch.softmax(torch.randn(3, 4, N, dtype=torch.float64), dim=-1)  # (3, 4, N)
    share = attention_share(rows, SPECIAL | PUNCTUATION)
    assert isinstance(share, AttentionShare)
    excluded, kept = share
    assert excluded.shape == (3, 4) and kept.shape == (3, 4, N)
    kept_share = rows[..., ~(SPECIAL | PUNCTUATION)].sum(-1)
    assert torch.allclose(excluded + kept_share, torch.ones(3, 4, dtype=torch.float64))
    assert torch.allclose(kept.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert (kept[..., SPECIAL | PUNCTUATION] == 0).all()
    assert torch.allclose(kept * kept_share.unsqueeze(-1), rows.masked_fill(SPECIAL | PUNCTUATION, 0))


def test_attention_share_edge_cases() -> None:
    rows = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    excluded, kept = attention_share(rows, torch.tensor([True, True, False]))
    assert torch.allclose(excluded, torch.tensor([1.0, 0.0, 0.0, 0.75]))
    assert torch.equal(kept[0], torch.zeros(3))  # everything excluded: nothing left to spread
    assert torch.equal(kept[2], torch.zeros(3))  # an empty row stays empty
    assert torch.equal(kept[3], torch.tensor([0.0, 0.0, 1.0]))  # rows need not sum to 1
    # A mask per row, broadcast over the row's batch dimensions.
    per_row = torch.tensor([[True, False, False], [False, False, True], [False] * 3, [False] * 3])
    excluded, _ = attention_share(rows, per_row)
    assert torch.allclose(excluded, torch.tensor([0.5, 1.0, 0.0, 0.0]))


# --------------------------------------------------------------------------- errors


def test_bad_head_roles_input() -> None:
    weights = habit_heads()
    with pytest.raises(ValueError, match="weights must have shape"):
        head_roles(weights[0], SPECIAL, PUNCTUATION)  # (H, N, N): the layer dimension is missing
    with pytest.raises(ValueError, match="sum to 1"):
        head_roles(weights * 2 / 3, SPECIAL, PUNCTUATION)
    with pytest.raises(ValueError, match="special_mask"):
        head_roles(weights, SPECIAL[:-1], PUNCTUATION)
    with pytest.raises(TypeError, match="punctuation_mask"):
        head_roles(weights, SPECIAL, PUNCTUATION.long())
    with pytest.raises(ValueError, match="sep_mask"):
        head_roles(weights, SPECIAL, PUNCTUATION, sep_mask=torch.ones(N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_mask"):
        head_roles(weights, SPECIAL, PUNCTUATION, query_mask=torch.zeros(N, dtype=torch.bool))
    with pytest.raises(ValueError, match="cls_index"):
        head_roles(weights, SPECIAL, PUNCTUATION, cls_index=N)
    with pytest.raises(TypeError, match="cls_index"):
        head_roles(weights, SPECIAL, PUNCTUATION, cls_index=0.0)


def test_bad_attention_share_input() -> None:
    row = torch.full((N,), 1 / N)
    with pytest.raises(ValueError, match="exclude_mask"):
        attention_share(row, SPECIAL[:-1])
    with pytest.raises(TypeError, match="exclude_mask"):
        attention_share(row, SPECIAL.float())
    with pytest.raises(ValueError, match="weights_row"):
        attention_share(-row, SPECIAL)
    with pytest.raises(ValueError, match="weights_row"):
        attention_share(torch.full((N,), math.nan), SPECIAL)
    with pytest.raises(ValueError, match="weights_row"):
        attention_share(torch.tensor(0.5), SPECIAL)
    with pytest.raises(TypeError, match="weights_row"):
        attention_share(row.tolist(), SPECIAL)
    with pytest.raises(ValueError, match="exclude_mask"):  # a mask that would grow the row's shape
        attention_share(row, torch.zeros(2, N, dtype=torch.bool))
