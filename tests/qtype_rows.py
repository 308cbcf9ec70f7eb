"""Labelled toy prompts for the classifier tests."""

from __future__ import annotations

import random

OPEN = ["Write a {} about {}.", "Compose a {} about {}.", "Tell me a {} about {}."]
CLOSED = [
    "Classify the sentiment of this review about {}: it was {}.",
    "Translate the word {} into French, then {}.",
    "What is the capital of {}? Answer {}.",
]
FORMS = ["story", "poem", "essay", "song"]
TOPICS = ["dragons", "the sea", "a city", "winter", "robots", "friendship"]


def toy_rows(n: int, seed: int) -> list[dict[str, str]]:
    """Alternating OPENENDED / CONSTRAINED template prompts."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            text = rng.choice(OPEN).format(rng.choice(FORMS), rng.choice(TOPICS))
            rows.append({"input": text, "qtype": "OPENENDED"})
        else:
            text = rng.choice(CLOSED).format(rng.choice(TOPICS), rng.choice(["good", "now"]))
            rows.append({"input": text, "qtype": "CONSTRAINED"})
    return rows
