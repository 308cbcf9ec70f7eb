"""Pure R^3 reward math: no I/O, no model. The method: docs/reward.md."""

from r3_service.reward.formula import (
    Branch,
    QueryType,
    RewardOptions,
    choose_branch,
    interpolate_relevance,
    length_incentive,
    r3_reward,
    repetition_penalty,
)
from r3_service.reward.text import (
    DEFAULT_STOP_STRINGS,
    Cut,
    alpaca_query,
    cut_at_stop_strings,
    cut_response,
    query_text,
    trigrams,
    wordpunct_tokenize,
)

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "Branch",
    "Cut",
    "QueryType",
    "RewardOptions",
    "alpaca_query",
    "choose_branch",
    "cut_at_stop_strings",
    "cut_response",
    "interpolate_relevance",
    "length_incentive",
    "query_text",
    "r3_reward",
    "repetition_penalty",
    "trigrams",
    "wordpunct_tokenize",
]
