"""Body-level checks of a JSON request, before any route parses it.

Whatever the route: the body is UTF-8 (not UTF-16 or UTF-32), nested at most
``max_depth`` arrays/objects deep, and every string in it, in any field, is at most
``max_chars`` characters and valid Unicode (no lone surrogate escapes such as
``"\\ud800"``). Cheap C-level scans run on every body; only a body they flag is parsed
here, to name the field and item index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_HIGH = r"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
#: A high surrogate escape not followed by a low one, or a low one not after a high one.
_LONE_ESCAPE = re.compile(rf"{_HIGH}(?!{_LOW})|(?<!{_HIGH}){_LOW}".encode())
_SURROGATE = re.compile("[\ud800-\udfff]")
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))
_COMMA = ord(",")


@dataclass(frozen=True)
class BodyProblem:
    """Why a body is refused: status, message, and the field and item index when known."""

    status: int
    message: str
    field: str = "body"
    index: int | None = None


def _string_quotes(data: np.ndarray) -> np.ndarray:
    """Positions of the quotes that delimit strings (those not escaped by a backslash)."""
    quotes = np.flatnonzero(data == _QUOTE)
    slashes = np.flatnonzero(data == _BACKSLASH)
    if slashes.size == 0 or quotes.size == 0:
        return quotes
    # Start of the backslash run each backslash belongs to.
    starts = np.ones(slashes.size, dtype=bool)
    starts[1:] = slashes[1:] != slashes[:-1] + 1
    run_start = np.maximum.accumulate(np.where(starts, slashes, 0))
    before = quotes - 1
    k = np.clip(np.searchsorted(slashes, before), 0, slashes.size - 1)
    after_slash = (quotes > 0) & (slashes[k] == before)
    run = np.where(after_slash, before - run_start[k] + 1, 0)
    return quotes[run % 2 == 0]


@dataclass(frozen=True)
class ElementLimits:
    """How many elements a body may hold, checked before it is parsed (``json.loads``
    and validation hold the GIL: 512 chats of 1,000 messages stalled the server 3.1 s)."""

    #: Elements of a list or object at the top of the body (a column: query, labels).
    max_items: int
    #: Elements of a list or object inside an item (a chat's messages, a label's list).
    max_item_elements: int
    #: Values in the whole body.
    max_values: int


def check_elements(raw: bytes, limits: ElementLimits, max_depth: int) -> BodyProblem | None:
    """The first element limit ``raw`` JSON breaks, found from its bytes (vectorised).

    A container's elements are its commas plus one (an empty one counts one); the body's
    values are its commas plus its containers plus one. The values are counted on byte
    masks, so a body of millions of commas costs a few bytes per byte of body, not eight
    per comma; positions are taken only within the limit. Containers are counted level
    by level up to ``max_depth``; deeper bodies are left to the depth check.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    quote_marks = np.zeros(data.size, dtype=np.uint8)
    quotes = _string_quotes(data)
    quote_marks[quotes] = 1
    outside = np.bitwise_xor.accumulate(quote_marks) == 0  # a string's quote opens it
    del quote_marks
    comma_mask = (data == _COMMA) & outside
    open_mask = ((data == _OPENERS[0]) | (data == _OPENERS[1])) & outside
    values = int(np.count_nonzero(comma_mask)) + int(np.count_nonzero(open_mask)) + 1
    if values > limits.max_values:
        return BodyProblem(
            413,
            f"body holds {values} JSON values; at most {limits.max_values} (R3_MAX_JSON_VALUES)",
        )
    close_mask = ((data == _CLOSERS[0]) | (data == _CLOSERS[1])) & outside
    commas = np.flatnonzero(comma_mask)
    brackets = np.flatnonzero(open_mask | close_mask)
    opens = open_mask[brackets]
    # depth after each bracket; a comma's container is the last opener at its depth
    depth_after = np.cumsum(np.where(opens, 1, -1))
    if int(depth_after.max(initial=0)) > max_depth:
        return None
    comma_depth = np.zeros(commas.size, np.int64)
    if brackets.size:
        before = np.searchsorted(brackets, commas) - 1
        comma_depth = np.where(before >= 0, depth_after[np.maximum(before, 0)], 0)
    for level in range(2, int(depth_after.max(initial=0)) + 1):
        openers = brackets[opens & (depth_after == level)]
        inside = commas[comma_depth == level]
        if inside.size == 0:
            continue
        owner = np.searchsorted(openers, inside) - 1
        counts = np.bincount(owner, minlength=openers.size) + 1
        worst = int(counts.argmax())
        limit = limits.max_items if level == 2 else limits.max_item_elements
        if counts[worst] > limit:
            return _too_many(
                raw,
                quotes,
                brackets,
                opens,
                depth_after,
                commas,
                comma_depth,
                int(openers[worst]),
                int(counts[worst]),
                level,
                limit,
            )
    return None


def _too_many(
    raw: bytes,
    quotes: np.ndarray,
    brackets: np.ndarray,
    opens: np.ndarray,
    depth_after: np.ndarray,
    commas: np.ndarray,
    comma_depth: np.ndarray,
    position: int,
    count: int,
    level: int,
    limit: int,
) -> BodyProblem:
    """422 naming the container at ``position`` (opened at depth ``level``) and its item."""
    # the top-level member holding it: the last opener at depth 2 up to ``position``
    column = int(brackets[opens & (depth_after == 2) & (brackets <= position)].max())
    field = _key_before(raw, quotes, column) or "body"
    if level == 2:
        return BodyProblem(422, f"too many items ({count}); at most {limit}", field, limit)
    index = None
    if raw[column : column + 1] == b"[":  # a column: the item is the commas before it
        item_commas = commas[(comma_depth == 2) & (commas > column) & (commas < position)]
        index = int(item_commas.size)
    else:  # an object (options): name its member
        field = f"{field}.{_key_before(raw, quotes, position) or '?'}"
    message = (
        f"too many elements ({count}) in one list or object; at most {limit} (R3_MAX_ITEM_ELEMENTS)"
    )
    return BodyProblem(422, message, field, index)


def _key_before(raw: bytes, quotes: np.ndarray, position: int) -> str | None:
    """The object key just before ``position`` (``"key": [``), or None."""
    k = int(np.searchsorted(quotes, position))
    if k < 2 or raw[int(quotes[k - 1]) + 1 : position].strip() != b":":
        return None
    try:
        key = json.loads(raw[int(quotes[k - 2]) : int(quotes[k - 1]) + 1])
    except ValueError:
        return None
    return key if isinstance(key, str) else None


def scan_json(raw: bytes) -> tuple[int, int]:
    """(deepest nesting of arrays and objects, longest string in bytes) of ``raw`` JSON.

    Vectorised over the bytes; brackets inside strings are ignored. A string's byte
    length is at least its length in characters.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    quotes = _string_quotes(data)
    longest = int((quotes[1::2] - quotes[0:-1:2][: quotes[1::2].size] - 1).max(initial=0))
    opens = np.flatnonzero((data == _OPENERS[0]) | (data == _OPENERS[1]))
    closes = np.flatnonzero((data == _CLOSERS[0]) | (data == _CLOSERS[1]))
    brackets = np.concatenate([opens, closes])
    steps = np.concatenate([np.ones(opens.size, np.int64), -np.ones(closes.size, np.int64)])
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of quotes before
    order = np.argsort(brackets[outside], kind="stable")
    depth = int(np.cumsum(steps[outside][order]).max(initial=0))
    return depth, longest


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in ``raw`` JSON (brackets in strings ignored)."""
    return scan_json(raw)[0]


#: Smaller bodies are parsed and walked (cheaper than the vectorised scan's set-up).
SMALL_BODY = 4096


def not_utf8(raw: bytes) -> BodyProblem | None:
    """400 for a body that is not UTF-8 text, UTF-16 and UTF-32 included.

    Python's ``json.loads`` would guess those from the NUL bytes and read them; JSON text
    never holds a raw NUL (not even in a string), so one means another encoding.
    """
    nul = raw.find(b"\x00")
    if nul >= 0:
        reason = f"not UTF-8 (a NUL byte at offset {nul}: UTF-16 or UTF-32?)"
    elif raw.isascii():
        return None
    else:
        try:
            raw.decode("utf-8")
            return None
        except UnicodeDecodeError as err:
            reason = f"not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})"
    return BodyProblem(400, f"body is not valid JSON: {reason}; send UTF-8 JSON")


def check_json_body(
    raw: bytes, max_depth: int, max_chars: int, limits: ElementLimits | None = None
) -> BodyProblem | None:
    """The first problem of a JSON body, or None (a body that is not JSON is left alone)."""
    problem = not_utf8(raw)
    if problem is not None:
        return problem
    if len(raw) <= SMALL_BODY:
        problem = _check_small(raw, max_depth, max_chars)
        if problem is None and limits is not None:
            fewest = min(limits.max_items, limits.max_item_elements, limits.max_values // 2)
            if raw.count(b",") >= fewest:  # else no limit can be reached
                problem = check_elements(raw, limits, max_depth)
        return problem
    depth, longest = scan_json(raw)
    if depth > max_depth:
        return BodyProblem(400, f"JSON nested {depth} deep; at most {max_depth}")
    if limits is not None and (problem := check_elements(raw, limits, max_depth)) is not None:
        return problem
    suspicious = longest > max_chars or (
        _SURROGATE_ESCAPE.search(raw) is not None and _LONE_ESCAPE.search(raw) is not None
    )
    if not suspicious:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # not JSON: the route answers that
    return first_bad_string(data, max_chars)


def _check_small(raw: bytes, max_depth: int, max_chars: int) -> BodyProblem | None:
    try:
        data = json.loads(raw)
    except RecursionError:
        return BodyProblem(400, f"JSON nested too deep; at most {max_depth}")
    except ValueError:
        return None  # not JSON: the route answers that
    depth = _depth(data)
    if depth > max_depth:
        return BodyProblem(400, f"JSON nested {depth} deep; at most {max_depth}")
    return first_bad_string(data, max_chars)


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (list, dict)):
            level += 1
            deepest = max(deepest, level)
            stack.extend(
                (item, level) for item in (node.values() if isinstance(node, dict) else node)
            )
    return deepest


def first_bad_string(data: Any, max_chars: int) -> BodyProblem | None:
    """The first string in ``data`` that is too long or holds a lone surrogate."""
    for path, value in _strings(data, ()):
        if len(value) > max_chars:
            message = f"text too long ({len(value)} characters); at most {max_chars}"
        elif _SURROGATE.search(value):
            message = "text is not valid Unicode (lone surrogate)"
        else:
            continue
        keys = [p for p in path if isinstance(p, str)] or ["body"]
        # As the schema errors name them: "query.content", "options.stop_strings", "labels".
        field = ".".join(keys[:2]) if keys[0] in ("query", "options") else keys[0]
        index = next((p for p in path if isinstance(p, int)), None)
        return BodyProblem(422, message, field, index)
    return None


def _strings(
    value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in a parsed JSON value (keys included), with its path; iterative."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            yield where, node
        elif isinstance(node, dict):
            for key, item in reversed(list(node.items())):
                yield (*where, key), key
                stack.append(((*where, key), item))
        elif isinstance(node, list):
            stack.extend(((*where, i), item) for i, item in reversed(list(enumerate(node))))


def check_json_text(field: str, index: int | None, text: str, max_depth: int) -> None:
    """Raise a 422 for ``field[index]`` when ``text``, about to be parsed as JSON (an
    OpenRLHF label, say), nests deeper than ``max_depth``; call it before ``json.loads``."""
    from r3_service.api.errors import validation_error

    depth = scan_json(text.encode("utf-8", "surrogatepass"))[0]
    if depth > max_depth:
        raise validation_error(field, index, f"JSON nested {depth} deep; at most {max_depth}")
