"""OpenRLHF 0.11.2's own reward path against a live R^3 service.

``openrlhf.utils.agent.SingleTurnAgentExecutor.execute`` runs unmodified: it tokenises the
rendered prompt, cuts it from the left when it is too long, decodes prompt + response and
calls its own ``_fetch_rewards_via_http`` (``/openrlhf/reward``) or, when the remote URL is
a ``.py`` file, ``_fetch_rewards_via_func`` with ``r3_client/integrations/openrlhf.py``. Only
the generation engine is scripted (vLLM does not run here): it returns a fixed response.
OpenRLHF is installed with ``--no-deps``; ``utils/agent.py`` needs aiohttp, torch,
transformers, sympy and pylatexenc (scripts/install.sh).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from tests_support import poll_until

pytest.importorskip("torch")
agent = pytest.importorskip("openrlhf.utils.agent")

from adapters_support import (  # noqa: E402
    GatedEncoder,
    InProcessServer,
    byte_bpe_tokenizer,
    metric,
)

import r3_client.integrations.openrlhf as r3_openrlhf  # noqa: E402
from r3_client import Client  # noqa: E402

pytestmark = pytest.mark.integration

FUNC_PATH = str(Path(r3_openrlhf.__file__).resolve())
LONG = "Please read the following notes carefully before answering. " * 12
# (question, response, label as in the dataset, reference and qtype that label means)
SAMPLES: list[tuple[str, str, Any, str | None, str | None]] = [
    ("What is the capital of France?", "Paris is the capital.", "Paris", "Paris", None),
    (
        "Name the capital of Italy.",
        "Rome.",
        json.dumps({"reference": "Rome", "qtype": "constrained"}),
        "Rome",
        "CONSTRAINED",
    ),
    ("What is 2+2?", "It is 4.", {"reference": "4", "qtype": "CONSTRAINED"}, "4", "CONSTRAINED"),
    ("How many legs has a spider?", "Eight legs.", 8, "8", None),
    ("Write a short poem about rain.", "Rain taps the roof, soft and grey.", None, None, None),
    (LONG + "Now: write one line about autumn.", "Leaves fall slowly.", None, None, "OPENENDED"),
]
MAX_LENGTH = 64  # prompt + response tokens: the long prompt is cut from the left


def chat_prompt(tokenizer: Any, question: str) -> str:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


@pytest.fixture(autouse=True)
def fresh_reward_func() -> Any:
    """Each test's environment applies: the reward function rebuilds its client and batcher."""
    r3_openrlhf.set_client(None)
    yield
    r3_openrlhf.set_client(None)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    corpus = [s[0] + " " + s[1] for s in SAMPLES] + [LONG, "Be brief. system user assistant"]
    return byte_bpe_tokenizer(corpus)


class ScriptedEngine:
    """Stands in for vLLM: returns one fixed response, then the end-of-turn token."""

    def __init__(self, tokenizer: Any, response: str) -> None:
        ids = tokenizer(response + "<|im_end|>", add_special_tokens=False)["input_ids"]
        self.output = SimpleNamespace(
            token_ids=ids, text=response, finish_reason="stop", logprobs=None
        )

    async def generate(self, prompt_token_ids: list[int], params: Any, **_: Any) -> Any:
        return SimpleNamespace(outputs=[self.output])


async def run_samples(
    executor: Any, tokenizer: Any, samples: list[tuple[str, str, Any, Any, Any]]
) -> list[dict[str, Any]]:
    """OpenRLHF's per-sample executions, all at once, as its rollout does."""
    params = SimpleNamespace(max_tokens=16, logprobs=None)
    return list(
        await asyncio.gather(
            *(
                executor.execute(
                    chat_prompt(tokenizer, q),
                    label,
                    params,
                    MAX_LENGTH,
                    tokenizer,
                    ScriptedEngine(tokenizer, response),
                )
                for q, response, label, _, _ in samples
            )
        )
    )


def expected(url: str, samples: list[tuple[str, str, Any, Any, Any]]) -> list[float]:
    """/reward on each sample with the reference and qtype its label means."""
    with Client(base_url=url, max_items_per_request=1) as client:
        return client.reward(
            query=[s[0] for s in samples],
            response=[s[1] for s in samples],
            reference=[s[3] for s in samples],
            qtype=[s[4] for s in samples],
        ).rewards


def check(outputs: list[dict[str, Any]], rewards: list[float], tokenizer: Any) -> None:
    long_prompt = chat_prompt(tokenizer, SAMPLES[-1][0])
    assert len(tokenizer(long_prompt)["input_ids"]) > MAX_LENGTH  # OpenRLHF did cut it
    for output, reward in zip(outputs, rewards):
        assert output["reward"] is not None
        assert output["reward"] == pytest.approx([reward], abs=1e-5)
        assert output["scores"] == pytest.approx([min(1.0, max(0.0, reward / 5.12))], abs=1e-5)
        assert set(output["extra_logs"]) >= {"r3_relevance", "r3_length_incentive"}


def test_fetch_rewards_via_http(live_server: str, tokenizer: Any) -> None:
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=live_server + "/openrlhf/reward")
    outputs = asyncio.run(run_samples(executor, tokenizer, SAMPLES))
    check(outputs, expected(live_server, SAMPLES), tokenizer)


def test_fetch_rewards_via_func(
    live_server: str, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("R3_BASE_URL", live_server)
    # One request once all samples are waiting (no timing window involved).
    monkeypatch.setenv("R3_BATCH_WINDOW_MS", "60000")
    monkeypatch.setenv("R3_BATCH_MAX_ITEMS", str(len(SAMPLES)))
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=FUNC_PATH)
    assert executor.reward_func is r3_openrlhf.reward_func  # loaded by OpenRLHF from the path
    before = metric(live_server, "r3_requests_total", route="/openrlhf/reward")
    loop_executor = _pool(len(SAMPLES))
    outputs = asyncio.run(_with_pool(run_samples(executor, tokenizer, SAMPLES), loop_executor))
    sent = metric(live_server, "r3_requests_total", route="/openrlhf/reward") - before
    check(outputs, expected(live_server, SAMPLES), tokenizer)
    assert sent == 1


@pytest.mark.slow
def test_func_sends_api_key_from_env(
    server_factory: Any, minilm_dir: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = server_factory(minilm_dir, env={"R3_API_KEYS": "k1,k2"})
    server.wait_ready()
    samples = SAMPLES[:2]
    http = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/openrlhf/reward")
    refused = asyncio.run(_fetch_once(http, tokenizer, samples[0]))
    assert refused is None  # OpenRLHF's HTTP client sends no key
    monkeypatch.setenv("R3_BASE_URL", server.url)
    monkeypatch.setenv("R3_API_KEY", "k2")
    func = agent.SingleTurnAgentExecutor(remote_rm_url=FUNC_PATH)
    outputs = asyncio.run(run_samples(func, tokenizer, samples))
    with Client(base_url=server.url, api_key="k1") as client:
        rewards = client.reward(
            query=[s[0] for s in samples],
            response=[s[1] for s in samples],
            reference=[s[3] for s in samples],
            qtype=[s[4] for s in samples],
        ).rewards
    assert [o["reward"] for o in outputs] == [pytest.approx([r], abs=1e-5) for r in rewards]


async def _fetch_once(executor: Any, tokenizer: Any, sample: Any) -> Any:
    """OpenRLHF's own HTTP fetch for one sample; None when it gave up (as execute() would)."""
    prompt = chat_prompt(tokenizer, sample[0])
    try:
        infos = await executor._fetch_rewards_via_http([prompt + sample[1]], [prompt], [sample[2]])
    except RuntimeError:
        return None
    return infos[0]


def _pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers)


async def _with_pool(coro: Any, pool: Any) -> Any:
    """``asyncio.to_thread`` uses the loop's default pool: give it a thread per sample."""
    asyncio.get_running_loop().set_default_executor(pool)
    return await coro


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "timeout_s", "reason"),
    [
        ("http", 60.0, "queue_full_waiting"),  # the route waits for room
        ("func", 60.0, "queue_full_waiting"),
        ("func", 0.5, "queue_full"),  # the route gives up: 503 + Retry-After, the client retries
    ],
)
def test_full_queue_every_sample_gets_its_reward(
    minilm_dir: Path,
    tokenizer: Any,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    timeout_s: float,
    reason: str,
) -> None:
    """The queue is held full; every OpenRLHF sample still ends with its reward."""
    import time

    import r3_client._client
    from r3_service.encoder import load_encoder

    monkeypatch.setattr(r3_client._client, "_sleep", time.sleep)  # Retry-After for real

    encoder = GatedEncoder(load_encoder(minilm_dir))
    settings = {"model": minilm_dir, "max_queue_texts": 4, "request_timeout_s": timeout_s}
    with InProcessServer(encoder, **settings) as server:
        blocker = threading.Thread(
            target=httpx.post,
            args=(server.url + "/relevance",),
            kwargs={"json": {"anchor": ["a b", "c d"], "text": ["e f", "g h"]}, "timeout": 120},
        )
        blocker.start()
        poll_until(lambda: metric(server.url, "r3_queue_size") == 4, "a full queue")
        if path == "http":
            executor = agent.SingleTurnAgentExecutor(remote_rm_url=server.url + "/openrlhf/reward")
        else:
            monkeypatch.setenv("R3_BASE_URL", server.url)
            monkeypatch.setenv("R3_BATCH_WINDOW_MS", "0")
            executor = agent.SingleTurnAgentExecutor(remote_rm_url=FUNC_PATH)
        result: dict[str, Any] = {}

        def rollout() -> None:
            pool = _pool(len(SAMPLES))
            result["outputs"] = asyncio.run(
                _with_pool(run_samples(executor, tokenizer, SAMPLES), pool)
            )

        worker = threading.Thread(target=rollout)
        worker.start()
        poll_until(
            lambda: (
                metric(server.url, "r3_rejected_requests_total", reason="queue_full_waiting") >= 1
            ),
            "a request waiting for room",
        )
        encoder.gate.set()
        worker.join(120)
        blocker.join(120)
        assert not worker.is_alive()
        check(result["outputs"], expected(server.url, SAMPLES), tokenizer)
