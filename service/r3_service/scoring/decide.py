"""Untyped items get their query type from the classifier; uncertain ones a blended reward.

Rule: an item whose calibrated P(OPENENDED) = p lies in the classifier's abstain
band is *uncertain*. If it has a reference (and relevance is on), it is scored by
both formulas and its reward is ``p * R_OPENENDED + (1 - p) * R_CONSTRAINED``, the
reward expected under the classifier's belief; its reported ``qtype``, ``branch``
and components are those of the side of the threshold p falls on. Outside the
band, and for uncertain items without a reference (whose CONSTRAINED branch is
the OPENENDED formula anyway), the type is ``p >= threshold``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from r3_service.reward.formula import QueryType, RewardOptions

if TYPE_CHECKING:
    from r3_service.classifier.runtime import Embedder, QueryClassifier
    from r3_service.scoring.scorer import RewardBatch, RewardItem


@dataclass
class Plan:
    """Typed items to score (originals first, then CONSTRAINED twins of blended items)."""

    items: list[RewardItem]
    n: int
    #: (item index, twin index, p) of each blended item.
    blends: list[tuple[int, int, float]] = field(default_factory=list)
    decided: int = 0
    uncertain: int = 0


async def plan_qtypes(
    classifier: QueryClassifier,
    embedder: Embedder,
    items: Sequence[RewardItem],
    options: RewardOptions,
) -> Plan:
    """Type every untyped item; add a CONSTRAINED twin for each uncertain one to blend."""
    rows = [i for i, item in enumerate(items) if item.qtype is None]
    typed = list(items)
    plan = Plan(items=typed, n=len(items))
    if not rows:
        return plan
    unique = list(dict.fromkeys(items[i].query for i in rows))
    proba_of = dict(zip(unique, await classifier.probabilities(unique, embedder)))
    for i in rows:
        p = float(proba_of[items[i].query])
        openended = bool(classifier.is_openended(np.array([p]))[0])
        qtype = QueryType.OPENENDED if openended else QueryType.CONSTRAINED
        typed[i] = dataclasses.replace(items[i], qtype=qtype)
        plan.decided += 1
        uncertain = bool(classifier.uncertain(np.array([p]))[0])
        classifier.record(qtype.value, uncertain)
        if uncertain:
            plan.uncertain += 1
            if items[i].reference and options.relevance:
                twin = QueryType.CONSTRAINED if openended else QueryType.OPENENDED
                plan.blends.append((i, len(typed), p))
                typed.append(dataclasses.replace(items[i], qtype=twin))
    return plan


def fold(result: RewardBatch, plan: Plan) -> RewardBatch:
    """Blend each uncertain item's two rewards and drop the twins."""
    for index, twin, p in plan.blends:
        mine, other = result.rewards[index], result.rewards[twin]
        if result.qtype[index] is QueryType.OPENENDED:
            result.rewards[index] = p * mine + (1.0 - p) * other
        else:
            result.rewards[index] = p * other + (1.0 - p) * mine
    for f in dataclasses.fields(result):
        value: Any = getattr(result, f.name)
        if isinstance(value, list) and len(value) == len(plan.items):
            del value[plan.n :]
    return result
