"""Sampling responses, and keeping the tokens that the reward accounted for.

A response ends at the first end-of-turn token (kept: emitting it is the policy's last action)
or where the reward cut it. The reward service strips each response and cuts it at its stop
strings (docs/reward.md, "Text before scoring") and answers with the character offset just
past the stop string that ended it; the tokens kept are the shortest prefix that spells that
much, so the tokens trained on are the text that was scored and the stop string after it.
Generation stops a row early once a stop string appears, only to save time: where a response
ends is the service's answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ALPACA_PREAMBLES",
    "Rollouts",
    "Samples",
    "alpaca_prompt",
    "encode_prompts",
    "format_prompt",
    "prefix_tokens",
    "sample_responses",
]

#: The Alpaca template's opening sentences (the authors' SFT format): with an input block
#: after the instruction, and without.
ALPACA_PREAMBLES = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
)
_ALPACA_INPUT = "### Input:\n"

# What the service strips from both ends of a response before cutting it (docs/reward.md):
# a stop string inside the leading run does not end the response, so generation goes on.
_LEADING = "\n "


def alpaca_prompt(text: str, system_prompt: str | None = None) -> str:
    """``text`` (an instruction, maybe with an ``### Input:`` block) in the Alpaca template.

    ``system_prompt`` replaces the template's opening sentence.
    """
    preamble = system_prompt or ALPACA_PREAMBLES[0 if _ALPACA_INPUT in text else 1]
    return f"{preamble}\n\n### Instruction:\n{text}\n\n### Response:"


def format_prompt(
    tokenizer: Any,
    text: str,
    system_prompt: str | None = None,
    use_chat_template: bool = True,
    alpaca: bool = False,
) -> str:
    """The prompt string for ``text``: the Alpaca template if ``alpaca``; else the chat
    template with a generation prompt, if the tokenizer has one and ``use_chat_template``;
    else the text (after the system prompt)."""
    if alpaca:
        return alpaca_prompt(text, system_prompt)
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], max_length: int, templated: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of ``prompts``, left-padded; longer prompts keep their end.

    A templated prompt already holds its special tokens, so none are added.
    """
    rows = [
        tokenizer(p, add_special_tokens=not templated)["input_ids"][-max_length:] for p in prompts
    ]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(
        tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


def prefix_tokens(tokenizer: Any, ids: Sequence[int], n_chars: int) -> int:
    """The fewest leading tokens of ``ids`` (at least one) whose text has ``n_chars`` characters."""
    lo, hi = 1, max(len(ids), 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(_decode(tokenizer, ids[:mid])) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


@dataclass
class Rollouts:
    """A batch of prompts and sampled responses.

    ``input_ids`` is ``[left-padded prompt | response, right-padded]``; responses start at
    column ``response_start``. ``response_mask`` marks the kept response tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: int
    response_mask: torch.Tensor
    texts: list[str]

    @property
    def lengths(self) -> torch.Tensor:
        """Kept response tokens of each rollout."""
        return self.response_mask.sum(1)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, index: torch.Tensor | list[int]) -> Rollouts:
        """The rollouts at ``index``, trimmed to their longest prompt and longest response.

        Prompts are left-padded to the widest prompt of the whole batch; the columns that are
        padding in every selected row are dropped (positions count from each row's first real
        token, so log-probs and values do not change), which saves their compute.
        """
        idx = torch.as_tensor(index, dtype=torch.long)
        mask = self.response_mask[idx]
        width = self.response_start + max(int(mask.sum(1).max()), 1)
        prompt_mask = self.attention_mask[idx, : self.response_start]
        real = prompt_mask.any(0).nonzero()
        lead = min(int(real[0]) if len(real) else self.response_start, self.response_start - 1)
        return Rollouts(
            self.input_ids[idx, lead:width],
            self.attention_mask[idx, lead:width],
            self.response_start - lead,
            mask[:, : width - self.response_start],
            [self.texts[i] for i in idx.tolist()],
        )


@dataclass
class Samples:
    """Prompts and the responses sampled for them, before the reward has read them.

    ``responses[i]``: the tokens generated for row i, up to and including an end-of-turn
    token, without padding. ``texts[i]``: their text without the end-of-turn token, as sent
    to the reward; ``text_tokens[i]`` leading tokens spell it.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    responses: list[list[int]]
    texts: list[str]
    text_tokens: list[int]

    def keep(self, tokenizer: Any, stop_end: Sequence[int] | None) -> list[int]:
        """Tokens of each response to train on.

        Those that spell ``texts[i][:stop_end[i]]``; the whole response (with its end-of-turn
        token) when the reward read all of it or ``stop_end`` is None.
        """
        keep = []
        for i, response in enumerate(self.responses):
            end = None if stop_end is None else stop_end[i]
            if end is None or end >= len(self.texts[i]):
                keep.append(max(len(response), 1))
            else:
                keep.append(prefix_tokens(tokenizer, response[: self.text_tokens[i]], end))
        return keep

    def to_rollouts(self, keep: Sequence[int], pad_id: int, texts: Sequence[str]) -> Rollouts:
        """The rollouts made of the first ``keep[i]`` tokens of each response."""
        n = len(self.responses)
        width = max(keep)
        response_ids = torch.full((n, width), pad_id, dtype=torch.long)
        response_mask = torch.zeros((n, width), dtype=torch.long)
        for i, (response, k) in enumerate(zip(self.responses, keep)):
            tokens = (response or [pad_id])[:k]
            response_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            response_mask[i, : len(tokens)] = 1
        device = self.prompt_ids.device
        response_ids, response_mask = response_ids.to(device), response_mask.to(device)
        return Rollouts(
            input_ids=torch.cat([self.prompt_ids, response_ids], dim=1),
            attention_mask=torch.cat([self.prompt_mask, response_mask], dim=1),
            response_start=self.prompt_ids.shape[1],
            response_mask=response_mask,
            texts=list(texts),
        )


class _StopOnStrings:
    """Stopping criterion: a row is done once its text, leading newlines and spaces aside,
    contains a stop string; ``stopped_at[i]`` records how many tokens row i had then.

    Decodes the last tokens of each row (enough for the longest stop string) and, only when
    they hold a stop string, the whole response.
    """

    def __init__(
        self, tokenizer: Any, stop_strings: Sequence[str], prompt_width: int, rows: int
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.prompt_width = prompt_width
        self.window = max((len(s) for s in self.stop_strings), default=0) + 2
        self.stopped_at: list[int | None] = [None] * rows

    def _stops(self, ids: list[int]) -> bool:
        text = _decode(self.tokenizer, ids).lstrip(_LEADING)
        return any(s in text for s in self.stop_strings)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids[:, self.prompt_width :]
        if self.stop_strings:
            for i, tail in enumerate(generated[:, -self.window :].tolist()):
                if self.stopped_at[i] is not None:
                    continue
                text = _decode(self.tokenizer, tail)
                if any(s in text for s in self.stop_strings) and self._stops(generated[i].tolist()):
                    self.stopped_at[i] = generated.shape[1]
        done = [at is not None for at in self.stopped_at]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _trim(
    tokenizer: Any, ids: list[int], end_ids: set[int], stopped_at: int | None
) -> tuple[list[int], str, int]:
    """(tokens generated, text sent to the reward, tokens spelling it) of one row."""
    n = len(ids) if stopped_at is None else stopped_at
    for i, token in enumerate(ids[:n]):
        if token in end_ids:
            return ids[: i + 1], _decode(tokenizer, ids[:i]), i
    return ids[:n], _decode(tokenizer, ids[:n]), n


@torch.no_grad()
def sample_responses(
    model: Any,
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    end_ids: Sequence[int],
    stop_strings: Sequence[str],
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    chunk_size: int | None = None,
) -> Samples:
    """Sample one response per prompt (``model.generate``) in chunks of ``chunk_size`` prompts.

    ``prompt_ids`` are left-padded. A row ends at an end-of-turn token, after
    ``max_new_tokens``, or once it holds one of ``stop_strings``.
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    # A full config, so that no sampling setting of the model's own generation_config applies:
    # the sampling distribution must be softmax(logits / temperature), as scored in training.
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        if do_sample
        else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=list(end_ids),
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    n = prompt_ids.shape[0]
    chunk = chunk_size or n
    rows: list[tuple[list[int], str, int]] = []
    for start in range(0, n, chunk):
        ids = prompt_ids[start : start + chunk]
        stop = _StopOnStrings(tokenizer, stop_strings, ids.shape[1], ids.shape[0])
        out = model.generate(
            input_ids=ids,
            attention_mask=prompt_mask[start : start + chunk],
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        for i, generated in enumerate(out[:, ids.shape[1] :].tolist()):
            rows.append(_trim(tokenizer, generated, set(end_ids), stop.stopped_at[i]))
    return Samples(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        responses=[r[0] for r in rows],
        texts=[r[1] for r in rows],
        text_tokens=[r[2] for r in rows],
    )
