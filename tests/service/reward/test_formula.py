from __future__ import annotations

import pytest

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
from r3_service.reward.text import wordpunct_tokenize

CONTRIEVER_RANGE = (0.0, 3.5)


def test_length_incentive_counts_wordpunct_tokens() -> None:
    tokens = wordpunct_tokenize("Hello, world!")  # Hello , world !
    assert length_incentive(tokens) == pytest.approx(0.04)


def test_repetition_penalty_hand_values() -> None:
    # a b a b a b: trigrams aba, bab, aba, bab -> 2 unique of 4
    assert repetition_penalty("a b a b a b".split()) == pytest.approx(0.5)
    assert repetition_penalty("a b c d".split()) == pytest.approx(1.0)
    assert repetition_penalty(["a", "b"]) == 1.0
    assert repetition_penalty([]) == 1.0
    # x x x x x: trigrams "x x x" three times -> 1/3
    assert repetition_penalty(["x"] * 5) == pytest.approx(1 / 3)


def test_interpolation_hand_values() -> None:
    assert interpolate_relevance(0.0, CONTRIEVER_RANGE, 512) == 0.0
    assert interpolate_relevance(3.5, CONTRIEVER_RANGE, 512) == pytest.approx(5.12)
    assert interpolate_relevance(1.75, CONTRIEVER_RANGE, 512) == pytest.approx(2.56)
    # not clipped on either side
    assert interpolate_relevance(7.0, CONTRIEVER_RANGE, 512) == pytest.approx(10.24)
    assert interpolate_relevance(-0.35, CONTRIEVER_RANGE, 512) == pytest.approx(-0.512)
    assert interpolate_relevance(0.5, (0.0, 1.0), 256) == pytest.approx(1.28)
    with pytest.raises(ValueError):
        interpolate_relevance(1.0, (1.0, 1.0), 512)


def test_choose_branch() -> None:
    on = RewardOptions()
    off = RewardOptions(reward_branching=False)
    assert choose_branch(QueryType.OPENENDED, True, on) is Branch.OPENENDED
    assert choose_branch(QueryType.CONSTRAINED, True, on) is Branch.CONSTRAINED
    assert choose_branch(QueryType.CONSTRAINED, False, on) is Branch.CONSTRAINED_NO_REFERENCE
    assert choose_branch(QueryType.CONSTRAINED, True, off) is Branch.UNBRANCHED


def test_relevance_off_means_no_branching() -> None:
    """The CONSTRAINED formula is a relevance, so without relevance every item is LI * RP."""
    no_rel = RewardOptions(relevance=False)
    assert not no_rel.branching and RewardOptions().branching
    for qtype in QueryType:
        for has_reference in (True, False):
            assert choose_branch(qtype, has_reference, no_rel) is Branch.UNBRANCHED


def _tokens(n_unique: int) -> list[str]:
    return [f"w{i}" for i in range(n_unique)]


def test_openended_reward_is_rx_times_li_times_rp() -> None:
    tokens = ["a", "b", "a", "b", "a", "b"] + _tokens(4)  # 10 tokens, 8 trigrams
    rp = len(set(tokens_tri := [" ".join(tokens[i : i + 3]) for i in range(8)])) / len(tokens_tri)
    parts = r3_reward(
        branch=Branch.OPENENDED,
        relevance=1.2,
        response_tokens=tokens,
        options=RewardOptions(),
        relevance_range=CONTRIEVER_RANGE,
    )
    assert rp == pytest.approx(6 / 8)
    assert parts.reward == pytest.approx(1.2 * 0.10 * 0.75)
    assert (parts.relevance, parts.length_incentive, parts.repetition_penalty) == (
        1.2,
        pytest.approx(0.1),
        pytest.approx(0.75),
    )


def test_constrained_reward_is_f_of_ry_times_rp() -> None:
    parts = r3_reward(
        branch=Branch.CONSTRAINED,
        relevance=1.75,
        response_tokens=["x"] * 5,
        options=RewardOptions(),
        relevance_range=CONTRIEVER_RANGE,
    )
    assert parts.reward == pytest.approx(2.56 / 3)


@pytest.mark.parametrize("branch", [Branch.CONSTRAINED_NO_REFERENCE, Branch.UNBRANCHED])
def test_fallback_branches_use_openended_formula(branch: Branch) -> None:
    parts = r3_reward(
        branch=branch,
        relevance=2.0,
        response_tokens=_tokens(50),
        options=RewardOptions(),
        relevance_range=CONTRIEVER_RANGE,
    )
    assert parts.reward == pytest.approx(2.0 * 0.5 * 1.0)
    assert parts.branch is branch


def test_ablation_switches() -> None:
    tokens = ["x"] * 5 + _tokens(5)  # 10 tokens
    kwargs = {"response_tokens": tokens, "relevance_range": CONTRIEVER_RANGE}
    rp = repetition_penalty(tokens)
    no_li = r3_reward(
        branch=Branch.OPENENDED,
        relevance=2.0,
        options=RewardOptions(length_incentive=False),
        **kwargs,
    )
    assert no_li.reward == pytest.approx(2.0 * rp)
    no_rp = r3_reward(
        branch=Branch.OPENENDED,
        relevance=2.0,
        options=RewardOptions(repetition_penalty=False),
        **kwargs,
    )
    assert no_rp.reward == pytest.approx(2.0 * 0.1)
    no_rel = r3_reward(
        branch=Branch.OPENENDED, relevance=2.0, options=RewardOptions(relevance=False), **kwargs
    )
    assert no_rel.reward == pytest.approx(0.1 * rp)
    li_only = RewardOptions(relevance=False, repetition_penalty=False)
    assert r3_reward(
        branch=Branch.OPENENDED, relevance=2.0, options=li_only, **kwargs
    ).reward == pytest.approx(0.1)
    # Even if a caller hands it the CONSTRAINED branch, relevance off is LI * RP (not F(1) * RP).
    constrained_no_rel = r3_reward(
        branch=Branch.CONSTRAINED, relevance=2.0, options=RewardOptions(relevance=False), **kwargs
    )
    assert constrained_no_rel.reward == pytest.approx(0.1 * rp)
    # The paper's "LI only": relevance and RP off give LI = 10 / 100 for every query type.
    for qtype in QueryType:
        branch = choose_branch(qtype, True, li_only)
        parts = r3_reward(branch=branch, relevance=2.0, options=li_only, **kwargs)
        assert (parts.reward, parts.branch) == (pytest.approx(0.1), Branch.UNBRANCHED)


def test_max_sequence_length_scales_f() -> None:
    parts = r3_reward(
        branch=Branch.CONSTRAINED,
        relevance=3.5,
        response_tokens=_tokens(3),
        options=RewardOptions(max_sequence_length=1024),
        relevance_range=CONTRIEVER_RANGE,
    )
    assert parts.reward == pytest.approx(10.24)
