"""The veRL adapter inside veRL 0.8's own reward loop, against a live R^3 server.

veRL is installed with ``--no-deps`` plus what ``import verl`` and its reward loop need
(ray, tensordict, codetiming; scripts/install.sh). Nothing of veRL is stubbed:
``RewardLoopWorker`` loads the reward function with veRL's ``get_custom_reward_fn`` (``pkg://``
or a file path) and the manager with ``load_reward_manager``, then scores a ``DataProto``
batch the way veRL's trainer does: one ``run_single`` task per sample, gathered on the
worker's event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("ray")
verl = pytest.importorskip("verl")

import numpy as np  # noqa: E402
import omegaconf  # noqa: E402
import torch  # noqa: E402
from adapters_support import byte_bpe_tokenizer, metric  # noqa: E402
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker  # noqa: E402
from verl.trainer.ppo.reward import get_custom_reward_fn  # noqa: E402

import r3_client.integrations.verl as verl_adapter  # noqa: E402
from r3_client import Client  # noqa: E402

pytestmark = pytest.mark.integration

ADAPTER_FILE = str(Path(verl_adapter.__file__).resolve())
# (question, response, ground truth, extra_info qtype) of each sample
SAMPLES: list[tuple[str, str, Any, str | None]] = [
    ("What is the capital of France?", "Paris is the capital of France.", "Paris", None),
    ("Write a poem about the sea.", "The sea is deep and blue, it sings.", None, "openended"),
    ("What is 6 * 7?", "42", "42", "CONSTRAINED"),
    ("Name a primary colour.", "Red is a primary colour.", ["red", "blue"], None),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("verl-tokenizer")
    byte_bpe_tokenizer([" ".join(s[:2]) for s in SAMPLES] + ["system user assistant"], folder)
    return folder


@pytest.fixture
def env_server(live_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The adapter in the worker builds its client from the environment."""
    monkeypatch.setenv("R3_BASE_URL", live_server)
    monkeypatch.setenv("R3_BATCH_WINDOW_MS", "60000")  # batches go out when full: one request
    monkeypatch.setenv("R3_BATCH_MAX_ITEMS", str(len(SAMPLES)))
    verl_adapter.configure()
    yield live_server
    verl_adapter.configure()


def config(tokenizer_dir: Path, fn_path: str | None, manager: dict[str, Any]) -> Any:
    """The parts of veRL's trainer config the reward loop reads (veRL >= 0.7 layout)."""
    return omegaconf.OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(tokenizer_dir), "tokenizer_path": None}},
            "reward": {
                "num_workers": 1,
                "reward_model": {"enable": False},
                "custom_reward_function": {
                    "path": fn_path,
                    "name": "compute_score",
                    "reward_kwargs": {},
                },
                "reward_manager": {"source": "register", "name": "naive", **manager},
            },
        }
    )


def batch(tokenizer: Any, *, with_question: bool, raw_prompt: bool = True) -> Any:
    """A veRL batch: left-padded prompts, right-padded responses, the non-tensor columns."""
    from verl import DataProto

    prompts, responses, infos, raws = [], [], [], []
    for question, response, _, qtype in SAMPLES:
        messages = [{"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        responses.append(tokenizer(response + "<|im_end|>", add_special_tokens=False)["input_ids"])
        info: dict[str, Any] = {"index": len(infos)} | ({"qtype": qtype} if qtype else {})
        infos.append(info | ({"question": question} if with_question else {}))
        raws.append(messages)
    p_len, r_len = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (p_len - len(p)) + p for p in prompts])
    response_ids = torch.tensor([r + [pad] * (r_len - len(r)) for r in responses])
    mask = torch.tensor(
        [
            [0] * (p_len - len(p)) + [1] * (len(p) + len(r)) + [0] * (r_len - len(r))
            for p, r in zip(prompts, responses)
        ]
    )

    def column(values: list[Any]) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    non_tensors = {
        "data_source": column(["r3"] * len(SAMPLES)),
        "reward_model": column([{"ground_truth": s[2], "style": "model"} for s in SAMPLES]),
        "extra_info": column(infos),
    }
    if raw_prompt:
        non_tensors["raw_prompt"] = column(raws)
    return DataProto.from_dict(
        tensors={
            "prompts": prompt_ids,
            "responses": response_ids,
            "attention_mask": mask,
            "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
        },
        non_tensors=non_tensors,
    )


def direct(url: str, queries: list[Any] | None = None) -> Any:
    with Client(base_url=url) as client:
        return client.reward(
            query=queries or [s[0] for s in SAMPLES],
            response=[s[1] for s in SAMPLES],
            reference=[s[2] if not isinstance(s[2], list) else s[2][0] for s in SAMPLES],
            qtype=[s[3].upper() if s[3] else None for s in SAMPLES],
        )


def run_worker(cfg: Any, data: Any) -> list[dict[str, Any]]:
    """veRL's RewardLoopWorker on its own event loop, as its Ray actor runs it."""
    worker = RewardLoopWorker(cfg)
    return list(worker.loop.run_until_complete(worker.compute_score_batch(data)))


def check(outputs: list[dict[str, Any]], url: str, queries: list[Any] | None = None) -> None:
    expected = direct(url, queries)
    assert [o["reward_score"] for o in outputs] == pytest.approx(expected.rewards, abs=1e-6)
    for output, relevance, branch in zip(
        outputs, expected.components.relevance, expected.components.branch
    ):
        info = output["reward_extra_info"]
        assert info["r3_relevance"] == pytest.approx(relevance, abs=1e-6)
        assert info["r3_constrained"] == (1.0 if branch == "CONSTRAINED" else 0.0)
        assert info["r3_failed"] == 0.0
        assert "acc" not in info  # a dict result: veRL logs the components by name


@pytest.mark.parametrize("path", ["pkg://r3_client.integrations.verl", ADAPTER_FILE])
def test_naive_reward_loop(tokenizer_dir: Path, env_server: str, path: str) -> None:
    cfg = config(tokenizer_dir, path, {})
    loaded = get_custom_reward_fn(cfg)
    assert loaded.func.__name__ == "_call_with_kwargs_async"  # veRL saw an async def
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    before = metric(env_server, "r3_requests_total", route="/reward")
    outputs = run_worker(cfg, batch(tokenizer, with_question=True))
    assert metric(env_server, "r3_requests_total", route="/reward") - before == 1
    check(outputs, env_server)


def test_raw_prompt_in_extra_info_is_enough(tokenizer_dir: Path, env_server: str) -> None:
    """veRL >= 0.7 passes the sample's chat messages along as ``extra_info["raw_prompt"]``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = batch(tokenizer, with_question=False)
    for i, info in enumerate(data.non_tensor_batch["extra_info"]):
        info["raw_prompt"] = data.non_tensor_batch["raw_prompt"][i]
    check(
        run_worker(config(tokenizer_dir, "pkg://r3_client.integrations.verl", {}), data), env_server
    )


@pytest.mark.parametrize("raw_prompt", [True, False])
def test_r3_reward_manager_reads_the_prompt_from_the_batch(
    tokenizer_dir: Path, env_server: str, raw_prompt: bool
) -> None:
    """No question in extra_info: the manager takes raw_prompt, else decodes the prompt ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    manager = {
        "source": "importlib",
        "name": "R3RewardManager",
        "module": {"path": "pkg://r3_client.integrations.verl_manager"},
    }
    data = batch(tokenizer, with_question=False, raw_prompt=raw_prompt)
    outputs = run_worker(config(tokenizer_dir, None, manager), data)
    if raw_prompt:
        check(outputs, env_server)
    else:  # the prompt tokens decoded without special tokens (left padding dropped)
        decoded = [
            tokenizer.decode(ids[mask[: len(ids)].bool()], skip_special_tokens=True)
            for ids, mask in zip(data.batch["prompts"], data.batch["attention_mask"])
        ]
        assert "What is 6 * 7?" in decoded[2]
        check(outputs, env_server, decoded)


def test_missing_query_fails_clearly(tokenizer_dir: Path, env_server: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = batch(tokenizer, with_question=False, raw_prompt=False)
    with pytest.raises(ValueError, match="R3RewardManager"):
        run_worker(config(tokenizer_dir, "pkg://r3_client.integrations.verl", {}), data)


@pytest.fixture(scope="module")
def ray_session(live_server: str) -> Any:
    """A local Ray instance; its workers inherit the environment set here."""
    import os

    import ray

    saved = {k: os.environ.get(k) for k in ("R3_BASE_URL", "R3_BATCH_WINDOW_MS")}
    os.environ.update({"R3_BASE_URL": live_server, "R3_BATCH_WINDOW_MS": "20"})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fn_name", "manager"),
    [("compute_score", "naive"), ("compute_score_sync", "remote")],
)
def test_ray_reward_loop_manager(
    tokenizer_dir: Path, live_server: str, ray_session: Any, fn_name: str, manager: str
) -> None:
    """veRL's RewardLoopManager: reward workers are Ray actors that load the adapter by
    ``pkg://`` (the ``remote`` manager also pickles the function into its own actors)."""
    from transformers import AutoTokenizer
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    cfg = config(tokenizer_dir, "pkg://r3_client.integrations.verl", {"name": manager})
    cfg.reward.custom_reward_function.name = fn_name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = batch(tokenizer, with_question=True)
    out = RewardLoopManager(cfg).compute_rm_score(data)
    expected = direct(live_server)
    scores = out.batch["rm_scores"].sum(dim=1).tolist()  # one reward at each last response token
    assert scores == pytest.approx(expected.rewards, abs=1e-5)
    assert out.non_tensor_batch["r3_relevance"].tolist() == pytest.approx(
        expected.components.relevance, abs=1e-6
    )
    assert out.meta_info["reward_extra_keys"][0] == "score"
