"""The OpenRLHF reward function behind ``openrlhf.py`` (see that file)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from r3_client._base import Batch
from r3_client._client import Client
from r3_client._exceptions import (
    BadRequestError,
    InvalidInputError,
    R3Error,
    UnprocessableEntityError,
)
from r3_client.integrations._batching import ThreadBatcher
from r3_client.integrations._common import (
    BATCH_MAX_ENV,
    BATCH_WINDOW_ENV,
    ClientPerProcess,
    client_options,
    env_float,
    env_on_error,
    logger,
)

__all__ = ["PATH", "reward_func", "set_client"]

PATH = "/openrlhf/reward"
EXTRA_LOGS_ENV = "R3_OPENRLHF_EXTRA_LOGS"
#: The top of F at the default max_sequence_length (512): ``scores`` = reward / 5.12.
SCORE_SCALE = 5.12

_clients = ClientPerProcess(lambda: Client(**client_options()))
_batcher: ThreadBatcher[tuple[Any, Any, Any], _Item] | None = None
_batcher_pid: int | None = None


@dataclass
class _Item:
    reward: float
    score: float
    logs: dict[str, float] = field(default_factory=dict)


def set_client(client: Client | None) -> None:
    """Use ``client`` in this process (``None``: build one from the environment); the batching
    settings are read from the environment again."""
    global _batcher
    _clients.set(client)
    _batcher = None


def _post(client: Client, items: Sequence[tuple[Any, Any, Any]]) -> list[_Item]:
    """One chunked ``/openrlhf/reward`` call through the client's retrying transport."""
    info = client._info or client.info()
    batch = Batch(
        PATH,
        {
            "query": [q for q, _, _ in items],
            "prompts": [p for _, p, _ in items],
            "labels": [label for _, _, label in items],
        },
        {},
        len(items),
    )
    out: list[_Item] = []
    for start, end in batch.plan(info.limits.max_items_per_request, info.limits.max_body_bytes):
        data = client._request("POST", PATH, batch.payload(start, end))
        logs = data.get("extra_logs") or {}
        for i in range(end - start):
            item_logs = {k: float(v[i]) for k, v in logs.items()}
            out.append(_Item(float(data["rewards"][i]), float(data["scores"][i]), item_logs))
    return out


def _failed(exc: R3Error, n: int) -> list[_Item]:
    on_error = env_on_error()
    if not isinstance(on_error, float):  # OpenRLHF has no missing reward: the call fails
        raise exc
    logger.warning("openrlhf: %d sample(s) not scored, reward %r stands in: %s", n, on_error, exc)
    score = min(1.0, max(0.0, on_error / SCORE_SCALE))
    return [_Item(on_error, score, {"r3_failed": 1.0}) for _ in range(n)]


def _send(items: Sequence[tuple[Any, Any, Any]]) -> list[_Item]:
    """Score a batch; a refused batch is retried sample by sample so only the bad one fails."""
    try:
        return _post(_clients.get(), items)
    except (BadRequestError, UnprocessableEntityError) as exc:
        if len(items) == 1:
            return _failed(exc, 1)
        return [one for item in items for one in _send([item])]
    except InvalidInputError:  # a local mistake, not a service failure
        raise
    except R3Error as exc:
        return _failed(exc, len(items))


def _get_batcher() -> ThreadBatcher[tuple[Any, Any, Any], _Item]:
    global _batcher, _batcher_pid
    if _batcher is None or _batcher_pid != os.getpid():
        window_s = env_float(BATCH_WINDOW_ENV, 20.0) / 1000.0
        _batcher = ThreadBatcher(_send, window_s, int(env_float(BATCH_MAX_ENV, 256)))
        _batcher_pid = os.getpid()
    return _batcher


def reward_func(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None
) -> dict[str, Any]:
    """OpenRLHF's reward function: ``rewards`` (raw R^3), ``scores`` in [0, 1], ``extra_logs``."""
    n = len(queries)
    label_list = list(labels) if labels is not None else [None] * n
    if len(prompts) != n or len(label_list) != n:
        raise ValueError(f"got {n} queries, {len(prompts)} prompts, {len(label_list)} labels")
    rows = list(zip(queries, prompts, label_list))
    items = [_get_batcher().submit(rows[0])] if n == 1 else _send(rows)
    result: dict[str, Any] = {
        "rewards": [i.reward for i in items],
        "scores": [i.score for i in items],
    }
    if os.environ.get(EXTRA_LOGS_ENV, "1").strip().lower() not in ("0", "false", "no", "off"):
        keys = sorted({k for i in items for k in i.logs} | {"r3_failed"})
        result["extra_logs"] = {k: [i.logs.get(k, 0.0) for i in items] for k in keys}
    return result
