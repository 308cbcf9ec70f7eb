"""Element limits counted on a body's bytes, before it is parsed (``api/body.py``)."""

from __future__ import annotations

import json

import pytest

from r3_service.api.body import ElementLimits, check_json_body

LIMITS = ElementLimits(max_items=64, max_item_elements=256, max_values=32_768)
CHAT = [{"role": "user", "content": "hi, there"}]


def problem_of(body: object) -> tuple[int, str, int | None] | None:
    problem = check_json_body(json.dumps(body).encode(), 32, 50_000, LIMITS)
    return None if problem is None else (problem.status, problem.field, problem.index)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"query": ["q", CHAT * 257], "response": ["a", "b"]}, (422, "query", 1)),
        ({"query": ["q", CHAT * 256], "response": ["a", "b"]}, None),  # exactly the limit
        ({"query": ["a"] * 3, "prompts": ["a"] * 3, "labels": [0, 1, [0] * 300]},
         (422, "labels", 2)),
        ({"query": ["q"], "response": ["a"], "options": {"stop_strings": ["s"] * 300}},
         (422, "options.stop_strings", None)),
        ({"query": ["q"] * 65, "response": ["a"] * 65}, (422, "query", 64)),
        ({"query": ["q"] * 64, "response": ["a"] * 64}, None),
        ({"query": [CHAT * 200] * 64, "response": ["a"] * 64}, (413, "body", None)),
        # commas and brackets inside strings are text, not elements
        ({"query": [", [ { ," * 5_000] * 64, "response": ["a"] * 64}, None),
    ],
)  # fmt: skip
def test_element_limits_name_the_field_and_item(
    body: object, expected: tuple[int, str, int | None] | None
) -> None:
    assert problem_of(body) == expected


def test_deep_nesting_is_still_400_whatever_its_size() -> None:
    problem = check_json_body(b"[" * 100_000 + b"]" * 100_000, 32, 50_000, LIMITS)
    assert problem is not None and problem.status == 400
