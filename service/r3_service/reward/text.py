"""Text handling for R^3: tokens, trigrams, stop strings, query extraction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import regex

# NLTK's WordPunctTokenizer pattern: runs of word characters, or runs of
# characters that are neither word characters nor whitespace. Compiled with the
# ``regex`` engine and NLTK's flags, as NLTK (>= 3.10) does: its ``\w`` is
# Unicode's word class, which differs from ``re``'s on a few characters (``²``).
_WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)
_WHITESPACE = re.compile(r"\s+")

#: Stop strings applied to a rollout before scoring: role markers of common chat
#: templates, and the paragraph-break markers of the reference implementation.
DEFAULT_STOP_STRINGS: tuple[str, ...] = (
    "\n\n\n\n",
    "\n\n--",
    "\n\n____",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "</s>",
    "### Human:",
    "### Assistant:",
    "### Instruction:",
)

# Characters stripped around a cut rollout: newlines and spaces, as the reference does.
_STRIP_CHARS = "\n "


def wordpunct_tokenize(text: str) -> list[str]:
    """Split ``text`` like NLTK's ``wordpunct_tokenize`` (``\\w+|[^\\w\\s]+``)."""
    return _WORDPUNCT.findall(text)


def trigrams(tokens: Sequence[str]) -> list[str]:
    """Consecutive token triples joined by a single space."""
    return [" ".join(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


def cut_at_stop_strings(text: str, stop_strings: Iterable[str] = DEFAULT_STOP_STRINGS) -> str:
    """Cut ``text`` at the earliest stop string, then strip surrounding newlines and spaces."""
    cut = len(text)
    for stop in stop_strings:
        if not stop:
            continue
        pos = text.find(stop)
        if 0 <= pos < cut:
            cut = pos
    return text[:cut].strip(_STRIP_CHARS)


def collapse_whitespace(text: str) -> str:
    """Replace every run of whitespace by one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def query_text(query: str | Sequence[Mapping[str, str]]) -> str:
    """The query as R^3 sees it.

    A plain string is returned unchanged. A chat conversation (a list of
    ``{"role", "content"}`` messages) becomes its user turns joined with single
    spaces, whitespace collapsed; system and assistant turns are dropped.
    """
    if isinstance(query, str):
        return query
    user_turns = [m["content"] for m in query if m.get("role") == "user"]
    return collapse_whitespace(" ".join(user_turns))


# Chat templates whose rendered prompts we can take apart: (pattern of one turn,
# group holding the role, group holding the content).
_TEMPLATES: tuple[tuple[re.Pattern[str], int, int], ...] = (
    # ChatML (Qwen, SmolLM): <|im_start|>user\n...<|im_end|>
    (re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S), 1, 2),
    # Llama 3: <|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>
    (
        re.compile(
            r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n*(.*?)(?:<\|eot_id\|>|$)", re.S
        ),
        1,
        2,
    ),
    # Tulu / Zephyr: <|user|>\n...
    (
        re.compile(
            r"<\|(user|assistant|system)\|>\n?(.*?)(?=<\|(?:user|assistant|system)\|>|$)", re.S
        ),
        1,
        2,
    ),
)
_LLAMA2 = re.compile(r"\[INST\](.*?)\[/INST\]", re.S)
_SYS_BLOCK = re.compile(r"<<SYS>>.*?<</SYS>>", re.S)
_SPECIAL = re.compile(r"<s>|</s>|<\|begin_of_text\|>|<\|endoftext\|>")


def user_text_from_prompt(prompt: str) -> str:
    """The user turns of a prompt rendered with a chat template, joined by spaces.

    Knows ChatML, Llama 3, Tulu/Zephyr and Llama 2 ``[INST]``; a prompt in none
    of them is returned with whitespace collapsed.
    """
    for pattern, role_group, content_group in _TEMPLATES:
        turns = [(m.group(role_group), m.group(content_group)) for m in pattern.finditer(prompt)]
        if turns:
            return query_text([{"role": r, "content": c} for r, c in turns])
    inst = _LLAMA2.findall(prompt)
    if inst:
        return collapse_whitespace(" ".join(_SYS_BLOCK.sub(" ", t) for t in inst))
    return collapse_whitespace(_SPECIAL.sub(" ", prompt))


def split_prompt_response(sequence: str, prompt: str) -> str:
    """The response part of ``sequence`` = prompt + response, as decoded by a trainer.

    The prompt is found as a prefix, after leading special tokens, or as the last
    occurrence of it; failing all that, everything after the common prefix is the response.
    """
    if sequence.startswith(prompt):
        return sequence[len(prompt) :]
    position = sequence.rfind(prompt) if prompt else -1
    if position >= 0:
        return sequence[position + len(prompt) :]
    common = 0
    for a, b in zip(sequence, prompt):
        if a != b:
            break
        common += 1
    return sequence[common:]


def copies_query(query: str, response: str, threshold: float = 0.8) -> bool:
    """True when ``response`` mostly repeats ``query`` (the reward hack of relevance alone).

    At least ``threshold`` of the response's lowercase token trigrams (tokens, when it
    has fewer than three) occur in the query. An empty response copies nothing.
    """
    return copies_query_tokens(wordpunct_tokenize(query), wordpunct_tokenize(response), threshold)


def copies_query_tokens(
    query_tokens: Sequence[str], response_tokens: Sequence[str], threshold: float = 0.8
) -> bool:
    """``copies_query`` on already tokenised texts (wordpunct tokens, any case)."""
    response_tokens = [t.lower() for t in response_tokens]
    if not response_tokens:
        return False
    query_tokens = [t.lower() for t in query_tokens]
    if len(response_tokens) < 3:
        return all(t in query_tokens for t in response_tokens)
    query_grams = set(trigrams(query_tokens))
    response_grams = trigrams(response_tokens)
    shared = sum(1 for gram in response_grams if gram in query_grams)
    return shared / len(response_grams) >= threshold
