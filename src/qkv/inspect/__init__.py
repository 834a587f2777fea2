"""Tools that look inside attention: pure functions on attention-weight tensors.

* :mod:`qkv.inspect.rollout`: attention rollout and attention flow (Abnar & Zuidema,
  2020) — which input tokens a position draws on, through all the layers.
* :mod:`qkv.inspect.heads`: head roles (Clark et al., 2019) — which heads attend to the
  previous or next token, to themselves, to [CLS], [SEP] or punctuation — and the share
  of a row of attention that such tokens take.

Weights are probabilities of one sequence, queries on dimension -2 and keys on -1:
(L, H, N, N) for L layers of H heads over N tokens.
"""

from qkv.inspect.heads import HEAD_ROLES, AttentionShare, attention_share, head_roles
from qkv.inspect.rollout import FLOW_MAX_WORK, attention_flow, attention_rollout, max_flow, residual_attention

__all__ = [
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
