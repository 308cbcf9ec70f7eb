"""Handcrafted text features for the query-type head (pure Python + numpy).

They carry what a mean-pooled sentence embedding blurs: whether the query has an
input block after the instruction, question form, the task verb of the
instruction, and asked-for length or format. Every feature is computed from the
instruction part and the input part that :func:`split_query` separates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

# Markers that introduce an input block after an instruction (Alpaca, self-instruct, chat):
# a newline (or the start of the text), whitespace, then "### Input:" or "Input:". The
# regexes match at one place only: a leading ``\s*`` searched at every newline of a long
# run of whitespace is quadratic (:func:`_input_marker`).
_HASH_INPUT = re.compile(r"#{1,4}\s*input\s*:?\s*\n?", re.IGNORECASE)
_PLAIN_INPUT = re.compile(r"input\s*:", re.IGNORECASE)
_SPACE_RUN = re.compile(r"\s+")
# Placeholder inputs that mean "no input" in Alpaca-style data.
_EMPTY_INPUT = re.compile(r"^\W*(?:no\s*input|none|n/?a|empty|nothing)\W*$", re.IGNORECASE)
# "Translate to French: Where is ..." -- an inline input after a short instruction.
_INLINE_COLON = re.compile(r"^[^:\n]{8,160}(:)[ \t]+(?=\S)")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

_WH_FACT = frozenset(("what", "which", "who", "whom", "whose", "when", "where"))
_WH_OPEN = frozenset(("how", "why"))
_AUX = frozenset((
    "is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would",
    "should", "has", "have", "had", "may", "might", "shall",
))  # fmt: skip
# A chat preamble before the actual task ("Hi! Quick question: could you please ..."),
# matched at a position (``match``), one preamble at a time.
_PREAMBLE_RE = re.compile(
    r"(?:(?:hi|hello|hey|yo|ok|okay|so|well|now|alright|dear \w+|greetings)\b[\s!,.:;-]*|"
    r"(?:a )?quick question\b[\s!,.:;-]*|(?:i have|i've got) a (?:quick )?question\b[\s!,.:;-]*|"
    r"i (?:was|am|'m) wondering(?: if| whether)?\b[\s,]*|"
    r"(?:would|do) you mind(?: helping me(?: with this| out)?)?\b[\s!,.:;-]*|"
    r"(?:can|could|would|will) (?:you|u)(?: please| kindly| possibly)?"
    r"(?: help me(?: to)?)?\b[\s,]*|"
    r"(?:you|u) (?:could|can|would|might)(?: please| kindly| possibly)?\b[\s,]*|"
    r"(?:please|pls|plz|kindly)\b[\s,]*|"
    r"i (?:would like|'d like|want|need)(?: you)? to\b\s*|"
    r"i (?:need|want) (?:some )?help(?: with)?\b[\s!,.:;-]*|"
    r"help me(?: to)?\b\s*|let's\b\s*|"
    r"thanks?(?: you)?(?: in advance)?\b[\s!,.:;-]*)",
    re.IGNORECASE,
)
_FILLER = frozenset(("first", "then", "also", "now", "just", "simply", "briefly", "quickly", "and"))
#: One trailing token after a question: a space, ".", "!", ")" or a thanks; matched backwards
#: from the end of the text, at most 9 characters at a time (:func:`_strip_trailer`).
_TRAILER_TOKEN = re.compile(
    r"(?:[\s.!)]|\b(?:thanks|thank you|thx|ty|pls|please)\b)\Z", re.IGNORECASE
)
_TRAILER_SPAN = len("thank you")
_LEADING_SPACE = re.compile(r"\s*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")

# Closed tasks: the answer is determined by the query (and the reference answer).
_CLOSED_VERBS = re.compile(
    r"^(?:classif|categori[sz]|extract|rewrite|re-write|paraphras|translat|correct|convert|"
    r"identif|find|calculat|comput|summari[sz]|solv|determin|detect|select|choos|pick|sort|"
    r"rank|arrang|rearrang|reorder|count|label|tag|match|edit|fix|debug|replac|chang|"
    r"transform|format|reformat|shorten|simplif|spell|punctuat|capitali[sz]|alphabeti[sz]|"
    r"list|enumerat|name|state|output|return|evaluat|check|verify|decid|answer|complet|"
    r"fill|parse|tokeni[sz]|split|merge|combin|reverse|remov|delet|insert|add|subtract|"
    r"multipl|divid|estimat|measur|round|predict|infer|locat|recogni[sz]|distinguish|"
    r"compar|contrast|group|organi[sz]|order|quote|cite|defin|abbreviat|expand|"
    r"conjugat|pluraliz|diagnos|grade|score|rate|assign|map|mark|underline|highlight)"
)
# Open tasks: a fuller, longer answer is better.
_OPEN_VERBS = re.compile(
    r"^(?:writ|compos|describ|explain|generat|creat|suggest|discuss|imagin|brainstorm|"
    r"design|develop|propos|invent|come|draft|tell|recommend|advis|elaborat|narrat|"
    r"pretend|act|roleplay|role-play|plan|outlin|argu|debat|persuad|convinc|reflect|"
    r"share|help|teach|motivat|inspir|encourag|envision|dream|craft|build|construct|"
    r"produc|brainstorm|think|consider|illustrat|portray|depict|express|analy[sz]|"
    r"explor|investigat|elucidat|justify|critiqu|review|assess|recount|sing|rap)"
)
_CREATIVE_NOUNS = re.compile(
    r"\b(?:stor(?:y|ies)|poems?|poetry|essays?|blogs?|blog post|articles?|letters?|emails?|"
    r"speech(?:es)?|songs?|lyrics|dialogues?|conversations?|scripts?|scenes?|tales?|"
    r"fables?|haikus?|limericks?|sonnets?|jokes?|riddles?|toasts?|slogans?|tweets?|"
    r"posts?|ads?|advertisements?|commercials?|pitch(?:es)?|plots?|novels?|characters?|"
    r"diary|journal|monologue|narratives?|descriptions?|reviews?|proposals?|plans?|"
    r"itinerar(?:y|ies)|menus?|recipes?|routines?|strateg(?:y|ies)|campaigns?|"
    r"ideas?|tips|advice|suggestions?|recommendations?|ways|opinions?|thoughts|"
    r"pros and cons|benefits|advantages|importance|impacts?|implications|future)\b"
)
_CLOSED_NOUNS = re.compile(
    r"\b(?:sentiment|synonyms?|antonyms?|grammar|grammatical|spelling|typos?|category|"
    r"categories|class|label|part of speech|pos tag|tense|verb|noun|adjective|adverb|"
    r"pronoun|subject|object|plural|singular|past tense|capital|formula|equation|"
    r"sum|product|average|mean|median|mode|percent|percentage|area|volume|perimeter|"
    r"derivative|integral|square root|prime|factorial|digits?|letters? in|vowels?|"
    r"true or false|yes or no|correct answer|multiple choice|odd one out|"
    r"date|year|abbreviation|acronym|definition|meaning|translation|output|result)\b"
)
_CODE = re.compile(
    r"(?:\b(?:python|java|javascript|typescript|c\+\+|c#|rust|golang|sql|html|css|regex|"
    r"regular expression|json|yaml|xml|bash|shell|function|method|class|code|program|"
    r"algorithm|query|api|compile|compiler|syntax|variable|array|string|integer|"
    r"loop|recursion|script in)\b|[{}\[\];]|==|=>|\bdef\b|\breturn\b)"
)
_MATH = re.compile(
    r"(?:\d\s*[-+*/^x×÷=]\s*\d|\b(?:solve|calculate|compute|equation|how many|how much|"
    r"percent|percentage|sum of|product of|average of|divided by|times|plus|minus|"
    r"square root|derivative|integral|probability)\b|%|\$\d)"
)
_SHORT_FORMAT = re.compile(
    r"\b(?:(?:in|with|using) (?:one|a single|1|two|2|three|3|five|5|a few) "
    r"(?:words?|sentences?|phrases?|letters?)|one[- ]word|single word|one sentence|"
    r"one[- ]line|briefly|brief|short answer|concise(?:ly)?|only (?:the|with|one|a)|"
    r"just (?:the|say|answer|give)|reply only|answer only|yes or no|true or false|"
    r"(?:word|character) limit|no more than|at most|max(?:imum)? \d+)"
)
_LONG_FORMAT = re.compile(
    r"\b(?:in detail|detailed|elaborate|at least \d+|\d{3,} ?-?words?|"
    r"(?:several|multiple|a few|\d+|two|three|four|five) paragraphs?|"
    r"long|lengthy|comprehensive|in depth|in-depth|thorough(?:ly)?|step[- ]by[- ]step|"
    r"essay|full|extensive)\b"
)
_COUNT_REQUEST = re.compile(
    r"\b(?:list|name|give|provide|find|identify|enumerate|state|mention|select)\b.{0,20}?"
    r"\b(?:\d+|two|three|four|five|six|seven|eight|nine|ten|a few|some)\b"
)
_GIVEN_TEXT = re.compile(
    r"\b(?:the following|following|given|this sentence|the sentence|these sentences|"
    r"this text|the text|the passage|this passage|the paragraph|this paragraph|"
    r"below|above|provided|this word|the word|these words|this list|the list|"
    r"this phrase|the phrase|this statement|the statement|this article|the article)\b"
)
_QUOTED = re.compile(r"[\"“”'‘’`][^\"“”'‘’`\n]{2,}[\"“”'‘’`]")
_ROLEPLAY = re.compile(
    r"\b(?:imagine|pretend|act as|acting as|role ?-?play|you are a|you're a|as a[n]? "
    r"\w+,|suppose you|let's play|in the style of|from the perspective of)\b"
)
_ADVICE = re.compile(
    r"\b(?:advice|advise|tips?|recommend\w*|suggest\w*|ideas?|what should i|how should i|"
    r"how can i|how do i|how to|help me|should i|any thoughts|best ways?|ways to|"
    r"strateg(?:y|ies)|improve|better|plan for|prepare)\b"
)
_OPINION = re.compile(
    r"\b(?:do you think|your opinion|your thoughts|your view|you think|in your view|"
    r"pros and cons|debate|argue|argument|should we|is it (?:good|bad|better|ethical|worth)|"
    r"agree|disagree|ethic\w*|implications?|feel about|why do people|what if|"
    r"what would happen|would you)\b"
)
_FIRST_PERSON = re.compile(r"\b(?:i|i'm|im|i've|i'd|my|me|mine|we|our|us)\b")
_POLITE = re.compile(
    r"\b(?:can you|could you|would you|will you|can u|could u|please|pls|plz|help me|i want you to|"
    r"i need you to|i'd like you to|i would like you to|i need|i want)\b"
)
_EXPLAIN = re.compile(r"\b(?:explain|why|describe|discuss|elaborate|tell me about|talk about)\b")
_LISTING = re.compile(r"\b(?:list|enumerate|name|identify|give me)\b")
_OPTIONS = re.compile(
    r"(?:\(\s*[a-dA-D1-4]\s*\)|\b[a-dA-D]\)\s|\boptions?\b|\bchoices?\b|\bwhich of the following\b|"
    r"\bor\b[^.?!\n]{0,40}\?|\bselect\b|\bchoose\b)"
)
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")

#: Bump when a feature's meaning changes; heads record the version they were trained with.
FEATURES_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "has_input",
    "input_words_log",
    "instruction_words_log",
    "sentences_log",
    "ends_with_question",
    "has_question_mark",
    "starts_wh_fact",
    "starts_how_why",
    "starts_aux",
    "polite_request",
    "first_person",
    "lead_closed_verb",
    "lead_open_verb",
    "any_closed_verb",
    "any_open_verb",
    "creative_noun",
    "closed_noun",
    "code",
    "math",
    "short_format",
    "long_format",
    "count_request",
    "given_text",
    "quoted_text",
    "roleplay",
    "advice",
    "opinion",
    "explain",
    "listing",
    "options",
    "has_number",
    "input_is_code_or_numbers",
)


def strip_preamble(text: str) -> str:
    """``text`` without a leading chat preamble ("Hi! Could you please ...", "Quick question:")."""
    # One position moves forward (slicing the text once per preamble was quadratic on
    # "hi hi hi ...").
    position = _skip_space(text, 0)
    while (found := _PREAMBLE_RE.match(text, position)) is not None and found.end() > position:
        position = _skip_space(text, found.end())
    return text[position:] or text


def _skip_space(text: str, position: int) -> int:
    found = _LEADING_SPACE.match(text, position)
    return found.end() if found else position


def _input_marker(text: str) -> tuple[int, int] | None:
    """(start, end) of the first input marker, as the regex
    ``\\n\\s*#{1,4}\\s*input\\s*:?\\s*\\n?|\\n\\s*input\\s*:|^\\s*input\\s*:`` (ignoring case,
    ``^`` at every line start) finds it, in linear time.

    A marker is a run of whitespace followed by ``#`` or ``input``; every start the regex
    could take inside one run of whitespace ends that run at the same place, so each run is
    tried once: from the text's start (``^``), else from its first newline.
    """
    runs = _SPACE_RUN.finditer(text)
    first = next(runs, None)
    if first is None or first.start() > 0:  # the text starts with no whitespace
        found = _PLAIN_INPUT.match(text)
        if found:
            return 0, found.end()
    elif (found := _PLAIN_INPUT.match(text, first.end())) is not None:
        return 0, found.end()
    for run in [first, *runs] if first is not None else []:
        newline = text.find("\n", run.start(), run.end())
        if newline < 0:
            continue
        found = _HASH_INPUT.match(text, run.end()) or _PLAIN_INPUT.match(text, run.end())
        if found:
            return newline, found.end()
    return None


def _strip_trailer(text: str) -> str:
    """``text`` without its trailing spaces, ".", "!", ")" and thanks, removed backwards one
    token at a time (a regex ``(...)*$`` searched forwards was quadratic on long runs)."""
    end = len(text)
    while end > 0:
        found = _TRAILER_TOKEN.search(text, max(0, end - _TRAILER_SPAN), end)
        if found is None:
            break
        end = found.start()
    return text[:end]


def _looks_like_task(paragraph: str) -> bool:
    """Whether a paragraph asks for something: a question, or a task verb at a clause start."""
    if "?" in paragraph:
        return True
    starts = _clause_starts(paragraph)
    return any(
        _CLOSED_VERBS.match(w) or _OPEN_VERBS.match(w) or w in _WH_FACT or w in _WH_OPEN
        for w in starts
    )


def split_query(text: str) -> tuple[str, str]:
    """Split ``text`` into (instruction, input): the input is what follows an input block.

    Recognised, in order: an ``Input:`` / ``### Input:`` marker; paragraphs (a long
    first paragraph followed by a short last one is input + instruction); a line
    ending with a colon; an inline ``instruction: input``; a line break. A chat
    preamble is dropped first. Placeholder inputs such as ``noinput`` count as empty.
    """
    text = strip_preamble(text.strip())
    instruction, rest = text, ""
    marker = _input_marker(text)
    if marker:
        instruction, rest = text[: marker[0]], text[marker[1] :]
    elif "\n\n" in text:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        first, last = paragraphs[0], paragraphs[-1]
        if len(paragraphs) > 1 and len(first.split()) > 60 and len(last.split()) <= 40:
            pick = len(paragraphs) - 1
        else:
            # A short leading paragraph without a task ("Context: ...") is not the instruction.
            pick = next((i for i, p in enumerate(paragraphs[:3]) if _looks_like_task(p)), 0)
        instruction = paragraphs[pick]
        rest = "\n\n".join(paragraphs[:pick] + paragraphs[pick + 1 :])
    else:
        colon = re.search(r"(:)[ \t]*\n", text) or _INLINE_COLON.search(text)
        if colon:
            instruction, rest = text[: colon.start(1) + 1], text[colon.end() :]
        elif "\n" in text:
            instruction, rest = text.split("\n", 1)
    instruction, rest = instruction.strip(), rest.strip()
    if _EMPTY_INPUT.match(rest):
        rest = ""
    if not instruction:
        instruction, rest = rest, ""
    return instruction, rest


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _clause_starts(instruction: str) -> list[str]:
    """The task word of each place a task can start: the instruction, its next two
    sentences, and the clause after a leading "Given ...," or "...:" (preambles dropped)."""
    sentences = [s for s in _SENTENCE.split(instruction) if s.strip()]
    candidates = [instruction, *sentences[1:3]]
    clause = re.split(r"[,:;]", sentences[0] if sentences else instruction, maxsplit=1)
    if len(clause) > 1:
        candidates.append(clause[1])
    starts = []
    for candidate in candidates:
        words = _words(strip_preamble(candidate))[:2]
        if len(words) == 2 and words[0] in _FILLER:
            words = words[1:]
        if words:
            starts.append(words[0])
    return starts


def _flag(pattern: re.Pattern[str], text: str) -> float:
    return 1.0 if pattern.search(text) else 0.0


def _any_word(pattern: re.Pattern[str], words: Sequence[str]) -> float:
    return 1.0 if any(pattern.match(w) for w in words) else 0.0


def query_features(text: str) -> list[float]:
    """Feature values of one query, in :data:`FEATURE_NAMES` order."""
    instruction, given = split_query(text)
    low = instruction.lower()
    words = _words(instruction)
    input_words = _words(given)
    lead_window = _clause_starts(instruction)
    firsts = set(lead_window)
    sentences = [s for s in _SENTENCE.split(instruction) if s.strip()]
    code_or_numbers = bool(given) and (
        bool(_CODE.search(given)) or len(_NUMBER.findall(given)) >= max(2, len(input_words) // 3)
    )
    values = [
        1.0 if given else 0.0,
        math.log1p(len(input_words)) / 5.0,
        math.log1p(len(words)) / 4.0,
        math.log1p(len(sentences)) / 2.0,
        1.0 if _strip_trailer(instruction).endswith("?") else 0.0,
        1.0 if "?" in instruction else 0.0,
        1.0 if firsts & _WH_FACT else 0.0,
        1.0 if firsts & _WH_OPEN else 0.0,
        1.0 if firsts & _AUX else 0.0,
        _flag(_POLITE, text.lower()),
        _flag(_FIRST_PERSON, low),
        _any_word(_CLOSED_VERBS, lead_window),
        _any_word(_OPEN_VERBS, lead_window),
        _any_word(_CLOSED_VERBS, words),
        _any_word(_OPEN_VERBS, words),
        _flag(_CREATIVE_NOUNS, low),
        _flag(_CLOSED_NOUNS, low),
        _flag(_CODE, low),
        _flag(_MATH, low),
        _flag(_SHORT_FORMAT, low),
        _flag(_LONG_FORMAT, low),
        _flag(_COUNT_REQUEST, low),
        _flag(_GIVEN_TEXT, low),
        _flag(_QUOTED, instruction),
        _flag(_ROLEPLAY, low),
        _flag(_ADVICE, low),
        _flag(_OPINION, low),
        _flag(_EXPLAIN, low),
        _flag(_LISTING, " ".join(lead_window)),
        _flag(_OPTIONS, instruction + "\n" + given),
        1.0 if _NUMBER.search(instruction) else 0.0,
        1.0 if code_or_numbers else 0.0,
    ]
    return values


def text_features(texts: Sequence[str]) -> np.ndarray:
    """Feature matrix, float32 of shape (len(texts), len(FEATURE_NAMES))."""
    out = np.zeros((len(texts), len(FEATURE_NAMES)), dtype=np.float32)
    for row, text in enumerate(texts):
        out[row] = query_features(text)
    return out


FeatureFn = Callable[[Sequence[str]], np.ndarray]
