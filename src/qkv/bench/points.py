"""One row per measured point, for every ``qkv bench`` subcommand; FLOP counts; scaling fits.

Every subcommand (attention, model, ring) writes rows with the same fields,
:data:`ROW_FIELDS`, made by :func:`point_row`:

- ``backend``: the contender's name; ``mode``: "fwd", "fwd+bwd", "stats" (attention),
  "forward", "generate, KV cache", ... (model); ``n``: the sequence length.
- ``causal``, ``window`` ([left, right] or None), ``device``, ``dtype``, ``options``
  (the backend's options as a dict, or None).
- ``time_s``: median seconds per run (``times_s``: every timed run); ``peak_bytes``;
  ``max_error``: max |out - exact| against exact attention (None where not measured,
  and for model rows); ``flops_per_s``; ``skipped``: why the point was not run, else None.

FLOPs (:func:`attention_flops`): a forward pass does two matrix products per visible
(query, key) pair and head, q.k over D and p.v over Dv: ``4 * pairs * D * H`` for B=1
with D = Dv, where ``pairs`` is counted exactly by :func:`visible_pairs` (N^2 without a
mask, N(N+1)/2 causal, the band's pairs with a window). Every contender at a point is
credited the same useful work, so a kernel that also computes masked pairs shows a lower
rate. Forward + backward counts 3.5 times the forward (the backward's five products
against the forward's two: FlashAttention's convention).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

from qkv.functional.masks import normalize_window

__all__ = [
    "ROW_FIELDS",
    "point_row",
    "label",
    "variant_rows",
    "visible_pairs",
    "attention_flops",
    "loglog_slope",
    "scaling_exponents",
]

ROW_FIELDS = ("backend", "mode", "n", "causal", "window", "device", "dtype", "options",
              "time_s", "peak_bytes", "max_error", "flops_per_s", "skipped")
BACKWARD_FLOPS_FACTOR = 3.5  # forward + backward FLOPs / forward FLOPs
SCALING_SIZES = 4  # the exponent is fitted over (at most) this many of the largest sizes run
SCALING_MIN_SIZES = 3  # ... and needs at least this many


def point_row(backend: str, mode: str, n: int, *, causal: bool = False, window: Sequence[int] | None = None,
              device: str = "cpu", dtype: str = "float32", options: dict | None = None,
              time_s: float | None = None, peak_bytes: int | None = None, max_error: float | None = None,
              flops_per_s: float | None = None, skipped: str | None = None, **extra) -> dict:
    """A row with every field of :data:`ROW_FIELDS` (in that order), then ``extra``."""
    return {"backend": backend, "mode": mode, "n": n, "causal": causal,
            "window": None if window is None else list(window), "device": device, "dtype": dtype,
            "options": options, "time_s": time_s, "peak_bytes": peak_bytes, "max_error": max_error,
            "flops_per_s": flops_per_s, "skipped": skipped, **extra}


def label(name: str, mode: str) -> str:
    """A contender's name and mode, as tables show it: the mode only where it is not implied."""
    return name if mode in ("fwd", "stats") else f"{name}, {mode}"


def variant_rows(rows: Iterable[dict], variant: str) -> dict[str, dict[int, dict]]:
    """label -> N -> row, for one masking variant, in the rows' order."""
    table: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row["variant"] == variant:
            table.setdefault(label(row["backend"], row["mode"]), {})[row["n"]] = row
    return table


@functools.lru_cache(maxsize=256)
def _visible_pairs(n_q: int, n_k: int, left: int | None, right: int | None) -> int:
    offset = n_k - n_q  # query i sits at key position i + offset (bottom-right alignment)
    total = 0
    for i in range(n_q):
        position = i + offset
        lowest = 0 if left is None else max(0, position - left)
        highest = n_k - 1 if right is None else min(n_k - 1, position + right)
        total += max(0, highest - lowest + 1)
    return total


def visible_pairs(n_q: int, n_k: int | None = None, causal: bool = False,
                  window: int | Sequence[int | None] | None = None) -> int:
    """How many (query, key) pairs attention computes under ``causal`` and ``window``.

    Same conventions as :func:`qkv.attention`: causal is bottom-right aligned (query i sits
    at position i + Nk - Nq and sees keys up to it), ``window=(left, right)`` lets the query
    at position p see keys p - left .. p + right (an int w means (w, w); causal sets right
    to 0). Exact, not the N^2 / 2 approximation: N(N+1)/2 for causal with Nq = Nk.
    """
    n_k = n_q if n_k is None else n_k
    left, right = normalize_window(window, causal)
    return _visible_pairs(n_q, n_k, left, right)


def attention_flops(n: int, head_dim: int, heads: int, causal: bool = False,
                    window: int | Sequence[int | None] | None = None, mode: str = "fwd", batch: int = 1) -> int:
    """FLOPs of exact attention over the visible pairs: ``4 * pairs * D * H * B`` forward,
    3.5 times that forward + backward (see the module docstring)."""
    forward = 4 * visible_pairs(n, n, causal, window) * head_dim * heads * batch
    if mode == "fwd":
        return forward
    if mode == "fwd+bwd":
        return int(forward * BACKWARD_FLOPS_FACTOR)
    raise ValueError(f"FLOPs are counted for mode 'fwd' or 'fwd+bwd'; got {mode!r}")


def loglog_slope(points: Iterable[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(time) against log(N); None with fewer than 2 sizes."""
    points = list(points)
    if len({n for n, _ in points}) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return covariance / sum((x - mean_x) ** 2 for x in xs)


SCALING_KEYS = ("backend", "mode", "variant", "device")


def scaling_exponents(rows: Iterable[dict], largest: int = SCALING_SIZES,
                      minimum: int = SCALING_MIN_SIZES) -> list[dict]:
    """Per (backend, mode, variant, device): the log-log slope of time against N over the
    ``largest`` largest sizes that ran (None when fewer than ``minimum`` ran)."""
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in SCALING_KEYS)
        points = groups.setdefault(key, [])
        if row.get("time_s"):
            points.append((row["n"], row["time_s"]))
    fits = []
    for key, points in groups.items():
        used = sorted(points)[-largest:]
        exponent = loglog_slope(used) if len(used) >= minimum else None
        fits.append({**dict(zip(SCALING_KEYS, key)), "exponent": exponent, "sizes": [n for n, _ in used]})
    return fits
