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


# Chat templates whose rendered prompts we can take apart. Every prompt is request text, so
# the parsing below is linear in its length: markers are found with ``str.find`` and the
# only regexes match at one place (a role name), never a lazy ``.*?`` up to a closing marker
# that may be missing (``\[INST\](.*?)\[/INST\]`` on ``"[INST]" * 8333`` took 9 s).
_CHATML_ROLE = re.compile(r"(\w+)\n")
_LLAMA3_ROLE = re.compile(r"(\w+)<\|end_header_id\|>\n*")
_TULU_MARKER = re.compile(r"<\|(user|assistant|system)\|>\n?")
_SPECIAL = re.compile(r"<s>|</s>|<\|begin_of_text\|>|<\|endoftext\|>")
# Special tokens other than "</s>", which the Alpaca normalisation removes itself.
_SPECIAL_BUT_EOS = re.compile(r"<s>|<\|begin_of_text\|>|<\|endoftext\|>")


def _headed_turns(
    prompt: str, opener: str, role: re.Pattern[str], closer: str
) -> list[tuple[str, str]]:
    """(role, content) of each ``opener`` + ``role`` + content + ``closer`` (or the end).

    ChatML (``<|im_start|>user\\n...<|im_end|>``) and Llama 3
    (``<|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>``). An opener whose role
    does not parse is skipped. Linear: each character is looked at a bounded number of times.
    """
    turns = []
    position = prompt.find(opener)
    while position >= 0:
        head = role.match(prompt, position + len(opener))
        if head is None:
            position = prompt.find(opener, position + 1)
            continue
        end = prompt.find(closer, head.end())
        if end < 0:
            turns.append((head.group(1), prompt[head.end() :]))
            break
        turns.append((head.group(1), prompt[head.end() : end]))
        position = prompt.find(opener, end + len(closer))
    return turns


def _tulu_turns(prompt: str) -> list[tuple[str, str]]:
    """Tulu / Zephyr: ``<|user|>\\n...`` up to the next role marker or the end."""
    markers = list(_TULU_MARKER.finditer(prompt))
    ends = [m.start() for m in markers[1:]] + [len(prompt)]
    return [(m.group(1), prompt[m.end() : end]) for m, end in zip(markers, ends)]


def _enclosed(text: str, opener: str, closer: str) -> list[tuple[int, int]]:
    """(start, end) of each ``opener ... closer`` block, the shortest from each opener, left
    to right; an opener without a closer after it ends the search (so does every later one)."""
    blocks = []
    start = text.find(opener)
    while start >= 0:
        end = text.find(closer, start + len(opener))
        if end < 0:
            break
        blocks.append((start, end + len(closer)))
        start = text.find(opener, end + len(closer))
    return blocks


def _llama2_turns(prompt: str) -> list[str]:
    """The content of each ``[INST] ... [/INST]`` block."""
    return [prompt[start + 6 : end - 7] for start, end in _enclosed(prompt, "[INST]", "[/INST]")]


def _drop_sys_blocks(text: str) -> str:
    """Each ``<<SYS>> ... <</SYS>>`` block replaced by a space."""
    pieces, last = [], 0
    for start, end in _enclosed(text, "<<SYS>>", "<</SYS>>"):
        pieces += [text[last:start], " "]
        last = end
    return "".join(pieces) + text[last:]


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
    templates = (
        lambda: _headed_turns(prompt, "<|im_start|>", _CHATML_ROLE, "<|im_end|>"),
        lambda: _headed_turns(prompt, "<|start_header_id|>", _LLAMA3_ROLE, "<|eot_id|>"),
        lambda: _tulu_turns(prompt),
    )
    for parse in templates:
        turns = parse()
        if turns:
            return query_text(
                [{"role": r, "content": _user_turn(c) if r == "user" else c} for r, c in turns]
            )
    inst = _llama2_turns(prompt)
    if inst:
        return collapse_whitespace(" ".join(_user_turn(_drop_sys_blocks(t)) for t in inst))
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
