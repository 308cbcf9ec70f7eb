"""Text handling for R^3: tokens, trigrams, stop strings, query extraction.

The rules are stated in docs/reward.md ("Text before scoring").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import regex

# NLTK's WordPunctTokenizer pattern: runs of word characters, or runs of
# characters that are neither word characters nor whitespace. Compiled with the
# ``regex`` engine and NLTK's flags, as NLTK (>= 3.10) does: its ``\w`` is
# Unicode's word class, which differs from ``re``'s on a few characters (``²``).
_WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)
_WHITESPACE = re.compile(r"\s+")

#: The markers of the Alpaca prompt template (the authors' SFT format).
ALPACA_INSTRUCTION = "### Instruction:"
ALPACA_INPUT = "### Input:"
ALPACA_RESPONSE = "### Response:"
#: The Alpaca template's opening sentences, with and without an input block.
ALPACA_PREAMBLES: tuple[str, ...] = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
)

#: Stop strings applied to a rollout before scoring: role markers of common chat
#: templates, the Alpaca template's markers, and the paragraph-break markers of the
#: reference implementation.
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
    ALPACA_INSTRUCTION,
    ALPACA_RESPONSE,
)

# Characters stripped around a rollout before it is cut: newlines and spaces, as the
# reference does.
_STRIP_CHARS = "\n "


def wordpunct_tokenize(text: str) -> list[str]:
    """Split ``text`` like NLTK's ``wordpunct_tokenize`` (``\\w+|[^\\w\\s]+``)."""
    return _WORDPUNCT.findall(text)


def trigrams(tokens: Sequence[str]) -> list[str]:
    """Consecutive token triples joined by a single space."""
    return [" ".join(tokens[i : i + 3]) for i in range(len(tokens) - 2)]


@dataclass(frozen=True)
class Cut:
    """Where a response was cut, as character offsets into the response as sent.

    The reward sees ``response[start:end]``. ``stop_end`` is just past the stop string
    that ended the response, or ``len(response)`` when none occurs: a trainer keeps the
    tokens of ``response[:stop_end]``, so the tokens it trains on spell the text scored
    and the stop string that ended it.
    """

    start: int
    end: int
    stop_end: int

    def text(self, response: str) -> str:
        """The part of ``response`` the reward sees."""
        return response[self.start : self.end]


def find_stop(text: str, stop_strings: Iterable[str]) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest stop string in ``text`` (the longest on a tie), or None."""
    best: tuple[int, int] | None = None
    for stop in stop_strings:
        if not stop:
            continue
        pos = text.find(stop)
        if pos < 0:
            continue
        if best is None or pos < best[0] or (pos == best[0] and pos + len(stop) > best[1]):
            best = (pos, pos + len(stop))
    return best


def cut_response(response: str, stop_strings: Iterable[str] = DEFAULT_STOP_STRINGS) -> Cut:
    """Strip surrounding newlines and spaces, then cut at the earliest stop string.

    The order is the reference implementation's: a response that starts with a stop
    string made of newlines (``"\\n\\n\\n\\nText"``) keeps its text.
    """
    start = len(response) - len(response.lstrip(_STRIP_CHARS))
    stripped = response.strip(_STRIP_CHARS)
    stop = find_stop(stripped, stop_strings)
    if stop is None:
        return Cut(start, start + len(stripped), len(response))
    return Cut(start, start + stop[0], start + stop[1])


def cut_at_stop_strings(text: str, stop_strings: Iterable[str] = DEFAULT_STOP_STRINGS) -> str:
    """The text of ``text`` the reward sees (see :func:`cut_response`)."""
    return cut_response(text, stop_strings).text(text)


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
# Special tokens other than "</s>", which the Alpaca normalisation removes itself.
_SPECIAL_BUT_EOS = re.compile(r"<s>|<\|begin_of_text\|>|<\|endoftext\|>")


def is_alpaca(text: str) -> bool:
    """Whether ``text`` carries the Alpaca template: an instruction marker or an input block."""
    return ALPACA_INSTRUCTION in text or ALPACA_INPUT + "\n" in text


def alpaca_query(text: str) -> str:
    """The query of an Alpaca prompt, normalised exactly as the reference implementation does.

    In this order: the template (its opening sentence, ``### Instruction:`` and
    ``### Response:``) is dropped; ``"### Input:\\n"`` becomes a space; ``"</s>"`` and
    ``" : "`` are removed; newlines, colons and spaces are stripped from both ends; runs
    of whitespace become one space. It applies to any text, template or not, so
    ``"Sort these.\\n\\n### Input:\\n3, 1, 2"`` becomes ``"Sort these. 3, 1, 2"``.
    """
    for marker in (*ALPACA_PREAMBLES, ALPACA_INSTRUCTION, ALPACA_RESPONSE):
        text = text.replace(marker, "")
    text = text.replace(ALPACA_INPUT + "\n", " ")
    text = text.replace("</s>", "").replace(" : ", "")
    return collapse_whitespace(text.strip("\n: "))


def _user_turn(text: str) -> str:
    return alpaca_query(text) if is_alpaca(text) else text


def user_text_from_prompt(prompt: str) -> str:
    """The user turns of a rendered prompt, joined by spaces, whitespace collapsed.

    Knows ChatML, Llama 3, Tulu/Zephyr, Llama 2 ``[INST]`` and Alpaca. A user turn (or a
    prompt in none of the chat templates) that carries the Alpaca template is normalised
    by :func:`alpaca_query`; any other prompt is returned with whitespace collapsed.
    """
    for pattern, role_group, content_group in _TEMPLATES:
        turns = [(m.group(role_group), m.group(content_group)) for m in pattern.finditer(prompt)]
        if turns:
            return query_text(
                [{"role": r, "content": _user_turn(c) if r == "user" else c} for r, c in turns]
            )
    inst = _LLAMA2.findall(prompt)
    if inst:
        return collapse_whitespace(" ".join(_user_turn(_SYS_BLOCK.sub(" ", t)) for t in inst))
    if is_alpaca(prompt):
        return alpaca_query(_SPECIAL_BUT_EOS.sub(" ", prompt))
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
