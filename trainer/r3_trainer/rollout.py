"""Sampling rollouts and cutting them where the scored text ends.

A response ends at the first end-of-turn token (kept: emitting it is the policy's last action)
or just after the first stop string (the tokens that spell it are kept). The text sent for
scoring is the decoded response cut before the stop string and stripped of surrounding
newlines and spaces, as the service does, so the tokens trained on match what was scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Rollouts",
    "cut_response",
    "encode_prompts",
    "find_stop",
    "format_prompt",
    "generate_rollouts",
]

_STRIP_CHARS = "\n "


def format_prompt(
    tokenizer: Any, text: str, system_prompt: str | None = None, use_chat_template: bool = True
) -> str:
    """The prompt string for ``text``: the chat template with a generation prompt, if the
    tokenizer has one and ``use_chat_template``; else the text (after the system prompt)."""
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


def find_stop(text: str, stop_strings: Sequence[str]) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest stop string in ``text``, or None."""
    best: tuple[int, int] | None = None
    for stop in stop_strings:
        if not stop:
            continue
        pos = text.find(stop)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, pos + len(stop))
    return best


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return str(
        tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    )


def cut_response(
    tokenizer: Any,
    ids: Sequence[int],
    end_ids: Sequence[int],
    stop_strings: Sequence[str],
) -> tuple[int, str]:
    """``(tokens kept, text to score)`` of one sampled response.

    Kept: up to and including the first end-of-turn token, or the shortest prefix whose text
    contains the first stop string. The text is cut before that stop string (end-of-turn tokens
    count as stop strings) and stripped of newlines and spaces.
    """
    ends = set(end_ids)
    n = len(ids)
    for i, token in enumerate(ids):
        if token in ends:
            n = i + 1
            break
    text = _decode(tokenizer, ids[:n])
    end_texts = [_decode(tokenizer, [t]) for t in end_ids]
    stop = find_stop(text, [*stop_strings, *end_texts])
    if stop is None:
        return max(n, 1), text.strip(_STRIP_CHARS)
    start, end = stop
    lo, hi = 1, n
    while lo < hi:  # shortest prefix whose text reaches the end of the stop string
        mid = (lo + hi) // 2
        if len(_decode(tokenizer, ids[:mid])) >= end:
            hi = mid
        else:
            lo = mid + 1
    return lo, text[:start].strip(_STRIP_CHARS)


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
        """The rollouts at ``index``, trimmed to their longest response."""
        idx = torch.as_tensor(index, dtype=torch.long)
        mask = self.response_mask[idx]
        width = self.response_start + max(int(mask.sum(1).max()), 1)
        return Rollouts(
            self.input_ids[idx, :width],
            self.attention_mask[idx, :width],
            self.response_start,
            mask[:, : width - self.response_start],
            [self.texts[i] for i in idx.tolist()],
        )


class _StopOnStrings:
    """Stopping criterion: a row is done once its generated text contains a stop string.

    Decodes only the last tokens of each row's response (enough for the longest stop string).
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = [s for s in stop_strings if s]
        self.prompt_width = prompt_width
        self.window = max((len(s) for s in self.stop_strings), default=0) + 2

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, self.prompt_width :][:, -self.window :].tolist()
        done = [find_stop(_decode(self.tokenizer, t), self.stop_strings) is not None for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_rollouts(
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
) -> Rollouts:
    """Sample one response per prompt (``model.generate``) and cut each one.

    ``prompt_ids`` are left-padded; generation runs in chunks of ``chunk_size`` prompts.
    """
    device = prompt_ids.device
    n = prompt_ids.shape[0]
    chunk = chunk_size or n
    pad = tokenizer.pad_token_id
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
        pad_token_id=pad,
        **sampling,
    )
    responses: list[list[int]] = []
    for start in range(0, n, chunk):
        ids = prompt_ids[start : start + chunk]
        stopping = StoppingCriteriaList([_StopOnStrings(tokenizer, stop_strings, ids.shape[1])])
        out = model.generate(
            input_ids=ids,
            attention_mask=prompt_mask[start : start + chunk],
            generation_config=config,
            stopping_criteria=stopping,
        )
        responses.extend(out[:, ids.shape[1] :].tolist())
    kept: list[int] = []
    texts: list[str] = []
    for resp in responses:
        k, text = cut_response(tokenizer, resp, end_ids, stop_strings)
        kept.append(k)
        texts.append(text)
    width = max(kept)
    response_ids = torch.full((n, width), pad, dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.long)
    for i, (resp, k) in enumerate(zip(responses, kept)):
        response_ids[i, :k] = torch.tensor(resp[:k], dtype=torch.long)
        response_mask[i, :k] = 1
    response_ids, response_mask = response_ids.to(device), response_mask.to(device)
    return Rollouts(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        response_start=prompt_ids.shape[1],
        response_mask=response_mask,
        texts=texts,
    )
