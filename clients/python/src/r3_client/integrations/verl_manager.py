"""A veRL reward-loop manager that gives R^3 the prompt when ``extra_info`` lacks it.

veRL's own datasets rarely put the question in ``extra_info``. :class:`R3RewardManager`
scores like veRL's ``NaiveRewardManager`` and fills ``extra_info["prompt"]`` from the
batch: the sample's ``raw_prompt`` chat messages when present (veRL >= 0.7 keeps them),
else the prompt tokens decoded without special tokens. Without ``custom_reward_function``
it scores with :func:`r3_client.integrations.verl.compute_score`.

Select it in the trainer config::

    reward:
      reward_manager:
        source: importlib
        name: R3RewardManager
        module:
          path: pkg://r3_client.integrations.verl_manager

or, with ``VERL_USE_EXTERNAL_MODULES=r3_client.integrations.verl_manager``, by its
registered name: ``reward.reward_manager.name: r3``. Needs veRL >= 0.7 installed.
"""

from __future__ import annotations

import inspect
from typing import Any

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from r3_client.integrations import verl as r3_verl
from r3_client.integrations._common import to_plain

__all__ = ["R3RewardManager"]


@register("r3")
class R3RewardManager(RewardManagerBase):
    """``NaiveRewardManager`` with the prompt taken from the batch (see the module docstring)."""

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
    ) -> None:
        super().__init__(config, tokenizer, compute_score)
        custom = config.reward.get("custom_reward_function") or {}
        self.score_fn: Any = compute_score if custom.get("path") else r3_verl.compute_score
        self.is_async_reward_score = inspect.iscoroutinefunction(self.score_fn)

    def _decode(self, ids: Any) -> str:
        tokenizer: Any = self.tokenizer
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    def _prompt(self, item: Any) -> Any:
        """The sample's chat messages, else its prompt tokens decoded (left padding dropped)."""
        raw = to_plain(item.non_tensor_batch.get("raw_prompt"))
        if raw:
            return raw
        prompt_ids = item.batch["prompts"]
        length = int(item.batch["attention_mask"][: prompt_ids.shape[-1]].sum())
        return self._decode(prompt_ids[prompt_ids.shape[-1] - length :])

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        """One sample's reward and its components (``reward_extra_info``)."""
        item = data[-1:][0]
        response_ids = item.batch["responses"]
        length = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        response = await self.loop.run_in_executor(None, self._decode, response_ids[:length])
        extra_info = dict(to_plain(item.non_tensor_batch.get("extra_info")) or {})
        extra_info.update(dict(item.non_tensor_batch.get("tool_extra_fields") or {}))
        if not any(extra_info.get(key) is not None for key in r3_verl.QUERY_KEYS):
            extra_info["prompt"] = self._prompt(item)
        kwargs = {
            "data_source": item.non_tensor_batch.get("data_source"),
            "solution_str": response,
            "ground_truth": item.non_tensor_batch.get("reward_model", {}).get("ground_truth"),
            "extra_info": extra_info,
        }
        if self.is_async_reward_score:
            result = await self.score_fn(**kwargs)
        else:
            result = await self.loop.run_in_executor(None, lambda: self.score_fn(**kwargs))
        if isinstance(result, dict):
            return {"reward_score": result["score"], "reward_extra_info": dict(result)}
        return {"reward_score": result, "reward_extra_info": {"score": result}}
