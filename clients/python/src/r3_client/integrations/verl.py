"""veRL adapter: ``custom_reward_function.path: pkg://r3_client.integrations.verl``.

- :func:`compute_score` (``async def``): veRL >= 0.7's reward loop awaits it once per
  sample, all samples of a batch at once on one event loop; the calls are gathered into
  batched ``/reward`` requests. It returns a dict: ``score`` plus the R^3 components
  (``r3_relevance``, ``r3_length_incentive``, ``r3_repetition_penalty``, ``r3_constrained``,
  ``r3_failed``), which veRL logs under those names.
- :func:`compute_score_sync`: the same from threads (``reward_manager: remote``, which
  refuses async functions, and older managers); it returns the same dict.
- :func:`compute_score_batch`: veRL's ``BatchRewardManager`` signature; returns floats.

The query is ``extra_info["question"]``, else ``"prompt"``, ``"query"``, then
``"raw_prompt"`` (the chat messages veRL >= 0.7 keeps with each sample). When none is
there, use :class:`r3_client.integrations.verl_manager.R3RewardManager`, which reads the
prompt from the batch. The reference is ``ground_truth``; ``extra_info["qtype"]`` (any
case) forces the query type.

Configuration comes from the environment, in every reward worker: ``R3_BASE_URL``,
``R3_API_KEY``, ``R3_TIMEOUT`` (seconds per attempt), ``R3_ON_ERROR`` (``raise``, ``none``
or a number; veRL needs a number, so ``none`` gives NaN), ``R3_BATCH_WINDOW_MS`` (default
20) and ``R3_BATCH_MAX_ITEMS`` (default 256). Imports are absolute so the file also loads by
path; ``pkg://`` is preferred (the functions then pickle by reference).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from r3_client._client import AsyncClient, Client
from r3_client.integrations._batching import LoopBatcher, ThreadBatcher
from r3_client.integrations._common import (
    BATCH_MAX_ENV,
    BATCH_WINDOW_ENV,
    AsyncClientPerLoop,
    ClientPerProcess,
    OnError,
    Sample,
    Scored,
    ascore_samples,
    client_options,
    env_float,
    env_on_error,
    parse_on_error,
    score_samples,
    to_plain,
    to_qtype,
    to_query,
    to_reference,
)

__all__ = [
    "compute_score",
    "compute_score_batch",
    "compute_score_sync",
    "configure",
    "get_client",
    "set_client",
]

QUERY_KEYS = ("question", "prompt", "query", "raw_prompt")

_clients = ClientPerProcess(lambda: Client(**client_options()))
_async_clients = AsyncClientPerLoop(lambda: AsyncClient(**client_options()))
_config: dict[str, Any] = {}
_thread_batcher: ThreadBatcher[Sample, Scored] | None = None
_loop_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBatcher[Sample, Scored]]
_loop_batchers = weakref.WeakKeyDictionary()


def get_client() -> Client:
    """This process's blocking client, built from the environment on first use."""
    return _clients.get()


def set_client(client: Client | None) -> None:
    """Use ``client`` for blocking calls (``None``: build one from the environment)."""
    _clients.set(client)


def configure(
    *,
    window_ms: float | None = None,
    max_items: int | None = None,
    on_error: OnError | str | None = None,
) -> None:
    """Override the environment's batching window, batch size and fail-soft policy
    (``None`` leaves a setting to the environment)."""
    global _thread_batcher
    _config.clear()
    if window_ms is not None:
        _config["window_s"] = window_ms / 1000.0
    if max_items is not None:
        _config["max_items"] = max_items
    if on_error is not None:
        _config["on_error"] = parse_on_error(on_error)
    _thread_batcher = None
    _loop_batchers.clear()


def _setting(name: str) -> Any:
    if name in _config:
        return _config[name]
    if name == "window_s":
        return env_float(BATCH_WINDOW_ENV, 20.0) / 1000.0
    if name == "max_items":
        return int(env_float(BATCH_MAX_ENV, 256))
    return env_on_error()


def query_of(extra_info: Mapping[str, Any] | None) -> str | list[dict[str, str]]:
    """The query of one sample from its ``extra_info`` (see the module docstring)."""
    info = extra_info or {}
    for key in QUERY_KEYS:
        value = to_plain(info.get(key))
        if value:
            return to_query(value)
    raise ValueError(
        "r3_client.integrations.verl needs the query in extra_info['question'], 'prompt' or "
        "'raw_prompt', or reward_manager R3RewardManager (r3_client.integrations.verl_manager)"
    )


def sample_of(solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None) -> Sample:
    """One veRL sample in service form; a sample without a query fails here, alone."""
    qtype = to_qtype((extra_info or {}).get("qtype"))
    return Sample(query_of(extra_info), solution_str, to_reference(ground_truth), qtype)


def _result(scored: Scored) -> dict[str, float]:
    score = scored.reward if scored.reward is not None else math.nan
    return {"score": score, **scored.components()}


def _send_sync(samples: Sequence[Sample]) -> list[Scored]:
    return score_samples(get_client(), samples, None, _setting("on_error"), "verl")


async def _send_async(samples: Sequence[Sample]) -> list[Scored]:
    client = _async_clients.get()
    return await ascore_samples(client, samples, None, _setting("on_error"), "verl")


def _loop_batcher() -> LoopBatcher[Sample, Scored]:
    loop = asyncio.get_running_loop()
    batcher = _loop_batchers.get(loop)
    if batcher is None:
        batcher = LoopBatcher(_send_async, _setting("window_s"), _setting("max_items"))
        _loop_batchers[loop] = batcher
    return batcher


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """R^3 of one decoded response, batched with the concurrent calls on this event loop."""
    sample = sample_of(solution_str, ground_truth, extra_info)
    return _result(await _loop_batcher().submit(sample))


def compute_score_sync(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Blocking :func:`compute_score`: concurrent calls from threads share a request."""
    global _thread_batcher
    sample = sample_of(solution_str, ground_truth, extra_info)
    batcher = _thread_batcher
    if batcher is None:
        batcher = ThreadBatcher(_send_sync, _setting("window_s"), _setting("max_items"))
        _thread_batcher = batcher
    return _result(batcher.submit(sample))


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """R^3 for a batch (veRL ``BatchRewardManager`` signature)."""
    n = len(solution_strs)
    infos = list(extra_infos) if extra_infos is not None else [None] * n
    if len(ground_truths) != n or len(infos) != n:
        raise ValueError("solution_strs, ground_truths and extra_infos differ in length")
    samples = [sample_of(s, g, i) for s, g, i in zip(solution_strs, ground_truths, infos)]
    return [s.reward for s in _send_sync(samples)]
