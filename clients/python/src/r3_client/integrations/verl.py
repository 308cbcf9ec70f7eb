"""veRL adapter: ``custom_reward_function.path`` -> this file, ``name: compute_score``.

Imports are absolute because veRL loads this file by path, outside its package.

A module-level :class:`~r3_client.Client` is built lazily from ``R3_BASE_URL`` /
``R3_API_KEY`` (rebuilt after a fork). The query is read from ``extra_info``
(``"question"``, else ``"prompt"``), the reference is ``ground_truth`` and
``extra_info["qtype"]`` may force the question type.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from r3_client._client import Client
from r3_client.integrations._common import to_qtype, to_query, to_reference

__all__ = ["compute_score", "compute_score_batch", "get_client", "set_client"]

_client: Client | None = None
_client_pid: int | None = None
_lock = threading.Lock()


def get_client() -> Client:
    """The module-level client, built from the environment on first use."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid():
            _client = Client()
            _client_pid = os.getpid()
        return _client


def set_client(client: Client | None) -> None:
    """Replace the module-level client (``None`` rebuilds it from env on next use)."""
    global _client, _client_pid
    with _lock:
        _client = client
        _client_pid = os.getpid() if client is not None else None


def _query(extra_info: Mapping[str, Any] | None) -> str | list[dict[str, str]]:
    info = extra_info or {}
    for key in ("question", "prompt", "query"):
        value = info.get(key)
        if value:
            return to_query(value)
    raise ValueError(
        "r3_client.integrations.verl needs the query in extra_info['question'] "
        "or extra_info['prompt']"
    )


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """R^3 reward of one decoded response (veRL ``NaiveRewardManager`` signature)."""
    return compute_score_batch(
        data_sources=[data_source],
        solution_strs=[solution_str],
        ground_truths=[ground_truth],
        extra_infos=[extra_info],
    )[0]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """R^3 rewards for a batch (veRL ``BatchRewardManager`` signature)."""
    n = len(solution_strs)
    infos: list[Mapping[str, Any] | None] = (
        list(extra_infos) if extra_infos is not None else [None] * n
    )
    if len(ground_truths) != n or len(infos) != n:
        raise ValueError("solution_strs, ground_truths and extra_infos differ in length")
    qtypes = [to_qtype((i or {}).get("qtype")) for i in infos]
    refs = [to_reference(g) for g in ground_truths]
    result = get_client().reward(
        query=[_query(i) for i in infos],
        response=list(solution_strs),
        reference=refs if any(r is not None for r in refs) else None,
        qtype=qtypes if any(q is not None for q in qtypes) else None,
    )
    return result.rewards
