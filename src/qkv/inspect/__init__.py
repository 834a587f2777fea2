"""Tools that look inside attention, from pure functions on weights to whole reports.

* :mod:`qkv.inspect.explain`: the ``qkv explain`` report, every step of attention on a
  real model for one word (tokens, one head step by step, every layer and head, sense
  trajectory, rollout and flow, head importance, head roles).
* :mod:`qkv.inspect.rollout`: attention rollout and attention flow (Abnar & Zuidema,
  2020) — which input tokens a position draws on, through all the layers.
* :mod:`qkv.inspect.heads`: head roles (Clark et al., 2019) and the share of a row of
  attention that [CLS], [SEP] or punctuation take.
* :mod:`qkv.inspect.ablation`: head importance by zeroing one head at a time.
* :mod:`qkv.inspect.senses`: a word's vector against sense prototypes, layer by layer.
* :mod:`qkv.inspect.wsd`, :mod:`qkv.inspect.probe`: word-sense disambiguation per layer
  (1-NN on sense centroids, logistic-regression probe) in the CoarseWSD-20 format.
* :mod:`qkv.inspect.contextuality`: Ethayarajh's (2019) self-similarity,
  intra-sentence similarity and anisotropy per layer.

Weights are probabilities of one sequence, queries on dimension -2 and keys on -1:
(L, H, N, N) for L layers of H heads over N tokens.
"""

from qkv.inspect.explain import explain
from qkv.inspect.heads import HEAD_ROLES, AttentionShare, attention_share, head_roles
from qkv.inspect.rollout import FLOW_MAX_WORK, attention_flow, attention_rollout, max_flow, residual_attention

__all__ = [
    "explain",
    "residual_attention",
    "attention_rollout",
    "attention_flow",
    "max_flow",
    "FLOW_MAX_WORK",
    "head_roles",
    "HEAD_ROLES",
    "attention_share",
    "AttentionShare",
]
