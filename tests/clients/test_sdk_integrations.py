"""TRL and veRL adapters against the fake server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from r3_client import Client
from r3_client.integrations import verl
from r3_client.integrations.trl import R3Reward

if TYPE_CHECKING:
    from conftest import FakeServer

BASE = "http://r3.test"  # the fake server in conftest.py


def test_trl_standard_format(server: FakeServer) -> None:
    fn = R3Reward(base_url=BASE, options={"reward_branching": False})
    assert fn.__name__ == "r3_reward"
    out = fn(
        prompts=["p1", "p2"],
        completions=["c-1", "c-2"],
        reference=["ref1", None],
        qtype=["constrained", None],
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    fn.close()
    assert out == [1.0, 2.0]
    assert server.bodies("/reward") == [
        {
            "query": ["p1", "p2"],
            "response": ["c-1", "c-2"],
            "reference": ["ref1", None],
            "qtype": ["CONSTRAINED", None],
            "options": {"reward_branching": False},
        }
    ]


def test_trl_conversational_format(server: FakeServer) -> None:
    prompts = [
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "multi"}, {"type": "image"}]}],
    ]
    completions = [
        [{"role": "assistant", "content": "c-3"}],
        [{"role": "assistant", "content": "c-4"}],
    ]
    with Client(base_url=BASE) as client:
        fn = R3Reward(client, name="relevance_reward")
        assert fn(prompts, completions) == [3.0, 4.0]
        assert fn.__name__ == "relevance_reward"
    (body,) = server.bodies("/reward")
    assert body == {
        "query": [
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            [{"role": "user", "content": "multi"}],
        ],
        "response": ["c-3", "c-4"],
    }


def test_trl_all_none_columns_are_omitted(server: FakeServer) -> None:
    fn = R3Reward(base_url=BASE, reference_column="answer")
    fn(["p"], ["c-0"], answer=[None], qtype=[""])
    fn.close()
    assert server.bodies("/reward") == [{"query": ["p"], "response": ["c-0"]}]


def test_trl_length_checks() -> None:
    fn = R3Reward(base_url=BASE)
    with pytest.raises(ValueError):
        fn(["p1", "p2"], ["c"])
    with pytest.raises(ValueError):
        fn(["p"], ["c"], reference=["a", "b"])
    fn.close()


@pytest.fixture
def verl_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("R3_BASE_URL", BASE)
    verl.set_client(None)
    yield
    verl.get_client().close()
    verl.set_client(None)


def test_verl_compute_score(server: FakeServer, verl_client: None) -> None:
    score = verl.compute_score(
        "gsm8k", "s-7", "42", extra_info={"question": "what?", "qtype": "CONSTRAINED"}
    )
    assert score == 7.0
    assert verl.get_client().base_url == BASE
    assert server.bodies("/reward") == [
        {"query": ["what?"], "response": ["s-7"], "reference": ["42"], "qtype": ["CONSTRAINED"]}
    ]


def test_verl_prompt_messages_and_no_reference(server: FakeServer, verl_client: None) -> None:
    chat = [{"role": "user", "content": "hello"}]
    assert verl.compute_score("src", "s-2", None, extra_info={"prompt": chat}) == 2.0
    assert server.bodies("/reward") == [{"query": [chat], "response": ["s-2"]}]


def test_verl_batch(server: FakeServer, verl_client: None) -> None:
    scores = verl.compute_score_batch(
        data_sources=["a", "b", "c"],
        solution_strs=["s-1", "s-2", "s-3"],
        ground_truths=["x", ["y"], ""],
        extra_infos=[{"question": "q1"}, {"question": "q2"}, {"prompt": "q3"}],
    )
    assert scores == [1.0, 2.0, 3.0]
    (body,) = server.bodies("/reward")
    assert body["reference"] == ["x", "y", None]
    assert body["query"] == ["q1", "q2", "q3"]


def test_verl_missing_query(verl_client: None) -> None:
    with pytest.raises(ValueError, match="question"):
        verl.compute_score("src", "s", "ref", extra_info={})
