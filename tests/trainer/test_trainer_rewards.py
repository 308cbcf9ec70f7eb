"""Rewards over HTTP and the patient retries that pause training during an outage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from r3_client import APIConnectionError, BadRequestError, ServiceUnavailableError
from r3_trainer.rewards import (
    HTTPReward,
    PatientReward,
    RewardUnavailableError,
    Scores,
    is_transient,
)

LI_ONLY = {"relevance": False, "repetition_penalty": False, "reward_branching": False}


class Flaky:
    """A local reward function that fails ``failures`` times, then scores by word count."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error or APIConnectionError("connection refused")

    def __call__(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str | None],
        qtypes: Sequence[str | None],
    ) -> list[float]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return [len(r.split()) / 10 for r in responses]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_patient_reward_waits_out_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    fn = PatientReward(Flaky(5), backoff_initial=1, backoff_max=4, sleep=clock.sleep, clock=clock)
    with caplog.at_level("WARNING", logger="r3_trainer.rewards"):
        assert fn(["q", "q"], ["a b", "a"], [None, None], [None, None]) == Scores([0.2, 0.1])
    assert clock.sleeps == [1, 2, 4, 4, 4]
    assert fn.failures == 5 and fn.waited_s == 15
    assert sum("training paused" in r.message for r in caplog.records) == 5


def test_patient_reward_gives_up_after_patience() -> None:
    clock = FakeClock()
    fn = PatientReward(Flaky(100), patience=10, backoff_initial=1, sleep=clock.sleep, clock=clock)
    with pytest.raises(RewardUnavailableError, match="unavailable"):
        fn(["q"], ["a"], [None], [None])
    assert sum(clock.sleeps) >= 10


def test_patient_reward_does_not_retry_bad_requests() -> None:
    request = httpx.Request("POST", "http://x/reward")
    bad = BadRequestError("bad", response=httpx.Response(400, request=request), body={})
    flaky = Flaky(1, bad)
    with pytest.raises(BadRequestError):
        PatientReward(flaky, sleep=lambda s: None)(["q"], ["a"], [None], [None])
    assert flaky.calls == 1
    unavailable = ServiceUnavailableError(
        "busy", response=httpx.Response(503, request=request), body={}
    )
    assert is_transient(unavailable) and is_transient(ConnectionError())
    assert not is_transient(bad) and not is_transient(ValueError())


def test_patient_reward_checks_answers() -> None:
    def wrong(*args: object) -> list[float]:
        return [1.0]

    def nan(*args: object) -> list[float]:
        return [float("nan"), 1.0]

    def cut_outside(*args: object) -> Scores:
        return Scores([1.0, 1.0], stop_end=[1, 2])  # "b" has 1 character

    def short_column(*args: object) -> Scores:
        return Scores([1.0, 1.0], copies_query=[False])

    for fn in (wrong, nan, cut_outside, short_column):
        with pytest.raises(ValueError):
            PatientReward(fn)(["q", "q"], ["a", "b"], [None, None], [None, None])
    good = Scores([1.0, 2.0], stop_end=[0, 1], scored=["", "b"], copies_query=[True, False])
    assert (
        PatientReward(lambda *a: good)(["q", "q"], ["a", "b"], [None, None], [None, None]) == good
    )


@pytest.mark.integration
def test_http_reward_scores_through_the_service(live_server: str) -> None:
    fn = HTTPReward(live_server, options=LI_ONLY)
    try:
        rewards = fn(
            ["What is a cat?", "Name a colour."],
            ["A cat is a small animal.", "Red"],
            [None, "Blue"],
            ["OPENENDED", None],
        )
    finally:
        fn.close()
    # LI only: #wordpunct tokens / 100
    assert isinstance(rewards, Scores) and rewards.rewards == pytest.approx([0.07, 0.01])
    assert rewards.stop_end == [24, 3] and rewards.copies_query == [False, False]


@pytest.mark.integration
def test_http_reward_reports_where_the_service_cut(live_server: str) -> None:
    """The trainer learns the cut from the service, for default and custom stop strings."""
    responses = ["\n\nA cat.\n### Response:\nmore", "what is a cat", "x STOP y"]
    default = HTTPReward(live_server, options={**LI_ONLY, "query_format": "alpaca"})
    custom = HTTPReward(live_server, options={**LI_ONLY, "stop_strings": ["STOP"]})
    try:
        got = default(["What is a cat?"] * 3, responses, [None] * 3, [None] * 3)
        mine = custom(["q"], responses[2:], [None], [None])
        assert default.stop_strings() is not None and "### Response:" in default.stop_strings()
        assert custom.stop_strings() == ["STOP"]
    finally:
        default.close()
        custom.close()
    assert got.scored == ["A cat.\n", "what is a cat", "x STOP y"]
    assert got.stop_end == [2 + 7 + 13, 13, 8]  # just past "### Response:"
    assert got.rewards == pytest.approx([0.03, 0.04, 0.03])
    assert got.copies_query == [False, True, False]
    assert mine.scored == ["x "] and mine.stop_end == [6] and mine.rewards == pytest.approx([0.01])


@pytest.mark.integration
def test_http_reward_waits_for_a_service_that_comes_up(
    minilm_dir: Path, server_factory: type
) -> None:
    server = server_factory(minilm_dir)  # starting: refuses connections for a few seconds
    fn = PatientReward(HTTPReward(server.url, options=LI_ONLY, max_retries=0), backoff_initial=0.2)
    try:
        assert fn(["q"], ["one two three"], [None], ["OPENENDED"]).rewards == pytest.approx([0.03])
    finally:
        fn.fn.close()  # type: ignore[attr-defined]
    assert fn.failures >= 1
