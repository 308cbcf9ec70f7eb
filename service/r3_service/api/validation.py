"""Checks pydantic cannot express: equal column lengths, limits, valid Unicode."""

from __future__ import annotations

from collections.abc import Sequence

from r3_service.api.errors import validation_error
from r3_service.api.schemas import ChatMessage, Query
from r3_service.config import Settings
from r3_service.reward.text import query_text


def check_items(field: str, values: Sequence[object], settings: Settings) -> None:
    """The item count of one column is within the limit."""
    if len(values) > settings.max_items_per_request:
        raise validation_error(
            field,
            settings.max_items_per_request,
            f"too many items ({len(values)}); at most {settings.max_items_per_request}",
        )


def check_same_length(
    field: str, values: Sequence[object] | None, expected: int, *, against: str = "query"
) -> None:
    """``values`` has one entry per item of ``against``; the error names an index that exists."""
    if values is None or len(values) == expected:
        return
    if len(values) < expected:
        raise validation_error(
            field,
            None,
            f"has {len(values)} items, {against} has {expected}: {against}[{len(values)}] "
            f"has no {field}; send one {field} per {against} item",
        )
    raise validation_error(
        field,
        expected,
        f"has {len(values)} items, {against} has {expected}: this {field} has no {against}; "
        f"send one {field} per {against} item",
    )


def check_text(field: str, index: int, text: str, settings: Settings) -> None:
    """One text is within the character limit and encodes to UTF-8 (no lone surrogates)."""
    if len(text) > settings.max_chars_per_text:
        raise validation_error(
            field,
            index,
            f"text too long ({len(text)} characters); at most {settings.max_chars_per_text}",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise validation_error(field, index, "text is not valid Unicode (lone surrogate)") from None


def check_texts(field: str, texts: Sequence[str | None], settings: Settings) -> None:
    for index, text in enumerate(texts):
        if text is not None:
            check_text(field, index, text, settings)


def query_texts(queries: Sequence[Query], settings: Settings) -> list[str]:
    """Plain query texts (user turns of conversations), each checked."""
    texts = []
    for index, query in enumerate(queries):
        if isinstance(query, list):
            if not query:
                raise validation_error("query", index, "conversation has no messages")
            if not any(isinstance(m, ChatMessage) and m.role == "user" for m in query):
                roles = sorted({m.role for m in query})
                raise validation_error(
                    "query",
                    index,
                    f"conversation has no message with role 'user' (roles given: {roles}); "
                    "the query is made of the 'user' messages, and 'system', 'assistant' "
                    "and other roles are ignored",
                )
            for message in query:
                check_text("query", index, message.content, settings)
            text = query_text([m.model_dump() for m in query])
        else:
            text = query
        check_text("query", index, text, settings)
        texts.append(text)
    return texts
