"""The R^3 formula (docs/reward.md, "The reward").

    R3(x, y, y_hat) = r_x * LI(y_hat) * RP(y_hat)   if T(x) = OPENENDED
                    = F(r_y) * RP(y_hat)            otherwise

with LI = #tokens / 100, RP = #unique trigrams / #trigrams (1.0 with no trigram)
and F the linear map from the encoder's relevance range onto
[0, max_sequence_length / 100], not clipped. With relevance off there is no
branching: every item is r * LI * RP with r = 1 (docs/reward.md, "Ablations").
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from r3_service.reward.text import trigrams


class QueryType(str, enum.Enum):
    """T(x): the query type R^3 branches on."""

    OPENENDED = "OPENENDED"
    CONSTRAINED = "CONSTRAINED"


class Branch(str, enum.Enum):
    """Which formula scored an item."""

    OPENENDED = "OPENENDED"
    CONSTRAINED = "CONSTRAINED"
    #: A CONSTRAINED query without a reference answer: scored by the OPENENDED formula.
    CONSTRAINED_NO_REFERENCE = "CONSTRAINED_NO_REFERENCE"
    #: reward_branching or relevance is off: every query is scored by the OPENENDED
    #: formula (R_OE; with relevance off, LI * RP).
    UNBRANCHED = "UNBRANCHED"

    @property
    def uses_reference(self) -> bool:
        """True when the relevance is taken against the reference answer."""
        return self is Branch.CONSTRAINED


@dataclass(frozen=True)
class RewardOptions:
    """The paper's ablation switches and F's output scale."""

    length_incentive: bool = True
    repetition_penalty: bool = True
    relevance: bool = True
    reward_branching: bool = True
    max_sequence_length: int = 512

    @property
    def branching(self) -> bool:
        """Whether the query type picks the formula: needs both branching and relevance.

        The CONSTRAINED formula is a relevance (to the reference), so with relevance off
        every item is scored LI * RP, as in the reference implementation.
        """
        return self.reward_branching and self.relevance


def length_incentive(tokens: Sequence[str]) -> float:
    """LI = #tokens / 100."""
    return len(tokens) / 100.0


def repetition_penalty(tokens: Sequence[str]) -> float:
    """RP = #unique trigrams / #trigrams; 1.0 when there is no trigram."""
    grams = trigrams(tokens)
    if not grams:
        return 1.0
    return len(set(grams)) / len(grams)


def interpolate_relevance(
    relevance: float, relevance_range: tuple[float, float], max_sequence_length: int
) -> float:
    """F: map ``relevance_range`` linearly onto [0, max_sequence_length / 100], unclipped."""
    low, high = relevance_range
    if high <= low:
        raise ValueError(f"relevance_range must be increasing, got {relevance_range}")
    return (relevance - low) / (high - low) * (max_sequence_length / 100.0)


def choose_branch(qtype: QueryType, has_reference: bool, options: RewardOptions) -> Branch:
    """Pick the formula for one item before any relevance is computed."""
    if not options.branching:
        return Branch.UNBRANCHED
    if qtype is QueryType.OPENENDED:
        return Branch.OPENENDED
    return Branch.CONSTRAINED if has_reference else Branch.CONSTRAINED_NO_REFERENCE


@dataclass(frozen=True)
class RewardParts:
    """One item's reward and the factors it was made of."""

    reward: float
    relevance: float
    length_incentive: float
    repetition_penalty: float
    branch: Branch


def r3_reward(
    *,
    branch: Branch,
    relevance: float,
    response_tokens: Sequence[str],
    options: RewardOptions,
    relevance_range: tuple[float, float],
) -> RewardParts:
    """R^3 for one item.

    ``relevance`` is r_y for the CONSTRAINED branch and r_x otherwise. Switched-off
    factors are 1: relevance off sets r = 1 and scores every item r * LI * RP, whatever
    its branch (docs/reward.md, "Ablations"). The returned ``length_incentive`` is
    LI(y_hat) for every branch, although only the OPENENDED formula multiplies by it.
    """
    r = relevance if options.relevance else 1.0
    rp = repetition_penalty(response_tokens) if options.repetition_penalty else 1.0
    li = length_incentive(response_tokens) if options.length_incentive else 1.0
    if branch.uses_reference and options.relevance:
        reward = interpolate_relevance(r, relevance_range, options.max_sequence_length) * rp
    else:
        reward = r * li * rp
    return RewardParts(
        reward=reward, relevance=r, length_incentive=li, repetition_penalty=rp, branch=branch
    )
