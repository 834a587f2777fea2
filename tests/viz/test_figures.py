"""The PNG figures: sized for their tokens, every colour scale labelled, no figure left out silently."""

from __future__ import annotations

import warnings

import pytest

from qkv.inspect.heads import ROLE_NAMES
from qkv.viz import figures


def drawn(report: dict, out, monkeypatch) -> dict:
    """File name -> the matplotlib figure saved there (kept open to look at)."""
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    paths = figures.save_figures(report, out)
    assert len(kept) == len(paths)
    return {path.name: figure for path, figure in zip(paths, kept)}


def pixels(path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_figures_grow_with_the_tokens(long_report, tmp_path):
    count = len(long_report["tokens"])
    paths = {p.name: p for p in figures.save_figures(long_report, tmp_path)}
    # One 8-point line (8/72 inch at 130 dpi) a token at least, so that labels do not overlap.
    width, height = pixels(paths["heatmap_head.png"])
    assert height >= count * 8 / 72 * 130 and width >= height
    assert "focus_attention.png" in paths  # no longer left out above 40 tokens
    assert pixels(paths["focus_attention.png"])[0] >= count * 8 / 72 * 130
    assert figures.skipped_figures(long_report) == {}


def test_every_colour_scale_is_labelled_in_one_unit(report, tmp_path, monkeypatch):
    shown = drawn(report, tmp_path, monkeypatch)
    labels = {name: [axis.get_ylabel() for axis in figure.axes] for name, figure in shown.items()}
    assert "share of attention (0 to 1)" in labels["head_roles.png"]
    titles = [axis.get_title() for axis in shown["head_roles.png"].axes]
    assert all(ROLE_NAMES[name] in titles for name in report["head_roles"])  # every role the page shows
    assert "(1 - cos) x 1000" in labels["head_ablation.png"]
    image = shown["head_ablation.png"].axes[0].images[0]
    assert image.get_array().max() == pytest.approx(max(max(row) for row in report["ablation"]) * 1000)
    assert any("attention weight" in label for label in labels["heatmap_head.png"])
    sense_axis = shown["sense_trajectory.png"].axes[0]
    assert sense_axis.get_ylim()[1] <= 1.0  # a cosine is at most 1


def test_skipped_figures_are_named_with_the_reason(model_and_tokenizer, tmp_path):
    from qkv.inspect.explain import explain

    report = explain(*model_and_tokenizer, "The fisherman sat on the bank of the river.", "river", long_view=True)
    skipped = figures.skipped_figures(report)
    assert set(skipped) == {"heatmap_head.png", "rollout_flow.png", "sense_trajectory.png"}
    assert "--senses" in skipped["sense_trajectory.png"]
    written = {p.name for p in figures.save_figures(report, tmp_path)}
    assert written.isdisjoint(skipped) and "focus_attention.png" in written


def test_emoji_draw_without_a_warning_per_glyph(model_and_tokenizer, tmp_path):
    from qkv.inspect.explain import explain

    report = explain(*model_and_tokenizer, "I love the bank 🏦 on the corner 😀.", "bank")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.save_figures(report, tmp_path)
    assert [str(w.message) for w in caught if "Glyph" in str(w.message)] == []
