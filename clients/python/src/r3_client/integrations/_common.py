"""Helpers to turn framework prompt/completion formats into service inputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def content_text(content: Any) -> str:
    """Text of a message ``content``: a str or a list of ``{"type": "text", ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    return str(content)


def to_query(prompt: Any) -> str | list[dict[str, str]]:
    """A prompt as a service query: text, or ``[{"role", "content"}]`` messages."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        prompt = [prompt]
    if isinstance(prompt, (list, tuple)):
        return [
            {"role": str(m.get("role", "user")), "content": content_text(m.get("content"))}
            for m in prompt
            if isinstance(m, Mapping)
        ]
    raise TypeError(f"unsupported prompt type {type(prompt).__name__}")


def to_response(completion: Any) -> str:
    """A completion as text; for messages, the assistant contents joined by newlines."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "\n".join(content_text(m.get("content")) for m in assistant)
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def to_reference(value: Any) -> str | None:
    """A reference answer as text, or ``None`` when missing/empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        return to_reference(value)
    text = value if isinstance(value, str) else str(value)
    return text or None


def to_qtype(value: Any) -> str | None:
    """A qtype label upper-cased, or ``None`` to let the server classify."""
    if isinstance(value, str) and value.strip():
        return value.strip().upper()
    return None
