"""Request option types and typed results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from ._exceptions import APIResponseValidationError

__all__ = [
    "ClassifyResult",
    "Info",
    "Limits",
    "Message",
    "Profile",
    "Query",
    "RelevanceResult",
    "ResponseCuts",
    "RewardComponents",
    "RewardOptions",
    "RewardResult",
]

Message = Mapping[str, Any]
"""A chat message, ``{"role": str, "content": str}``."""

Query = str | Sequence[Message]
"""A query: plain text or a list of chat messages."""


class RewardOptions(TypedDict, total=False):
    """Per-request switches for ``POST /reward``."""

    length_incentive: bool
    repetition_penalty: bool
    relevance: bool
    reward_branching: bool
    stop_strings: list[str] | None
    max_sequence_length: int
    query_format: str


def _field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise APIResponseValidationError(f"{where}: missing field {key!r}")
    return data[key]


def _floats(data: Mapping[str, Any], key: str, where: str) -> list[float]:
    value = _field(data, key, where)
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise APIResponseValidationError(f"{where}: {key!r} is not a list of numbers")
    return [float(v) for v in value]


def _strs(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = _field(data, key, where)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise APIResponseValidationError(f"{where}: {key!r} is not a list of strings")
    return list(value)


def _obj(data: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise APIResponseValidationError(f"{where}: expected a JSON object")
    return data


def _check_len(where: str, expected: int, **columns: list[Any]) -> None:
    for name, col in columns.items():
        if len(col) != expected:
            raise APIResponseValidationError(
                f"{where}: {name!r} has {len(col)} items, expected {expected}"
            )


@dataclass
class RewardComponents:
    """Per-item reward components."""

    relevance: list[float]
    length_incentive: list[float]
    repetition_penalty: list[float]
    branch: list[str]


def _ints(data: Mapping[str, Any], key: str, where: str) -> list[int]:
    value = _field(data, key, where)
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise APIResponseValidationError(f"{where}: {key!r} is not a list of integers")
    return list(value)


def _bools(data: Mapping[str, Any], key: str, where: str) -> list[bool]:
    value = _field(data, key, where)
    if not isinstance(value, list) or not all(isinstance(v, bool) for v in value):
        raise APIResponseValidationError(f"{where}: {key!r} is not a list of booleans")
    return list(value)


@dataclass
class ResponseCuts:
    """Where the service cut each response, in characters of the response as sent.

    The reward saw ``response[start[i]:end[i]]``; ``stop_end[i]`` is just past the stop
    string that ended the response (its length when none did): train on
    ``response[:stop_end[i]]``.
    """

    start: list[int]
    end: list[int]
    stop_end: list[int]

    @classmethod
    def from_json(cls, data: Any, where: str) -> ResponseCuts:
        d = _obj(data, where)
        return cls(
            start=_ints(d, "start", where),
            end=_ints(d, "end", where),
            stop_end=_ints(d, "stop_end", where),
        )

    def scored(self, responses: Sequence[str]) -> list[str]:
        """The part of each response the reward saw."""
        return [r[a:b] for r, a, b in zip(responses, self.start, self.end)]


@dataclass
class RewardResult:
    """Result of ``reward()``; all lists are aligned with the input order.

    ``cut`` and ``copies_query`` are None when the server does not send them.
    """

    rewards: list[float]
    qtype: list[str]
    components: RewardComponents
    model: str
    cut: ResponseCuts | None = None
    copies_query: list[bool] | None = None

    @classmethod
    def from_json(cls, data: Any, n: int | None = None) -> RewardResult:
        """Parse a ``POST /reward`` answer, checking it has ``n`` items."""
        where = "/reward response"
        d = _obj(data, where)
        c = _obj(_field(d, "components", where), where + " components")
        res = cls(
            rewards=_floats(d, "rewards", where),
            qtype=_strs(d, "qtype", where),
            components=RewardComponents(
                relevance=_floats(c, "relevance", where),
                length_incentive=_floats(c, "length_incentive", where),
                repetition_penalty=_floats(c, "repetition_penalty", where),
                branch=_strs(c, "branch", where),
            ),
            model=str(d.get("model", "")),
        )
        if d.get("cut") is not None:
            res.cut = ResponseCuts.from_json(d["cut"], where + " cut")
        if d.get("copies_query") is not None:
            res.copies_query = _bools(d, "copies_query", where)
        if n is not None:
            _check_len(
                where,
                n,
                rewards=res.rewards,
                qtype=res.qtype,
                relevance=res.components.relevance,
                length_incentive=res.components.length_incentive,
                repetition_penalty=res.components.repetition_penalty,
                branch=res.components.branch,
                **({"copies_query": res.copies_query} if res.copies_query is not None else {}),
                **(
                    {"start": res.cut.start, "end": res.cut.end, "stop_end": res.cut.stop_end}
                    if res.cut is not None
                    else {}
                ),
            )
        return res

    @classmethod
    def concat(cls, parts: Sequence[RewardResult], model: str = "") -> RewardResult:
        """Join chunk results in order."""
        return cls(
            rewards=[x for p in parts for x in p.rewards],
            qtype=[x for p in parts for x in p.qtype],
            components=RewardComponents(
                relevance=[x for p in parts for x in p.components.relevance],
                length_incentive=[x for p in parts for x in p.components.length_incentive],
                repetition_penalty=[x for p in parts for x in p.components.repetition_penalty],
                branch=[x for p in parts for x in p.components.branch],
            ),
            model=parts[0].model if parts else model,
            cut=(
                ResponseCuts(
                    start=[x for p in parts if p.cut for x in p.cut.start],
                    end=[x for p in parts if p.cut for x in p.cut.end],
                    stop_end=[x for p in parts if p.cut for x in p.cut.stop_end],
                )
                if parts and all(p.cut is not None for p in parts)
                else None
            ),
            copies_query=(
                [x for p in parts for x in p.copies_query or []]
                if parts and all(p.copies_query is not None for p in parts)
                else None
            ),
        )


@dataclass
class RelevanceResult:
    """Result of ``relevance()``."""

    relevance: list[float]
    model: str

    @classmethod
    def from_json(cls, data: Any, n: int | None = None) -> RelevanceResult:
        """Parse a ``POST /relevance`` answer, checking it has ``n`` items."""
        where = "/relevance response"
        d = _obj(data, where)
        res = cls(relevance=_floats(d, "relevance", where), model=str(d.get("model", "")))
        if n is not None:
            _check_len(where, n, relevance=res.relevance)
        return res

    @classmethod
    def concat(cls, parts: Sequence[RelevanceResult], model: str = "") -> RelevanceResult:
        """Join chunk results in order."""
        return cls(
            relevance=[x for p in parts for x in p.relevance],
            model=parts[0].model if parts else model,
        )


@dataclass
class ClassifyResult:
    """Result of ``classify()``."""

    qtype: list[str]
    prob_openended: list[float]
    model: str = ""
    #: P(OPENENDED) inside the server's abstain band (None from servers that don't say).
    uncertain: list[bool] | None = None

    @classmethod
    def from_json(cls, data: Any, n: int | None = None) -> ClassifyResult:
        """Parse a ``POST /classify`` answer, checking it has ``n`` items."""
        where = "/classify response"
        d = _obj(data, where)
        res = cls(
            qtype=_strs(d, "qtype", where),
            prob_openended=_floats(d, "prob_openended", where),
            model=str(d.get("model", "")),
        )
        if "uncertain" in d:
            res.uncertain = _bools(d, "uncertain", where)
        if n is not None:
            _check_len(where, n, qtype=res.qtype, prob_openended=res.prob_openended)
            if res.uncertain is not None:
                _check_len(where, n, uncertain=res.uncertain)
        return res

    @classmethod
    def concat(cls, parts: Sequence[ClassifyResult], model: str = "") -> ClassifyResult:
        """Join chunk results in order."""
        flags = [p.uncertain for p in parts]
        uncertain = None if any(f is None for f in flags) else [x for f in flags for x in f or []]
        return cls(
            qtype=[x for p in parts for x in p.qtype],
            prob_openended=[x for p in parts for x in p.prob_openended],
            model=parts[0].model if parts else model,
            uncertain=uncertain,
        )


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _opt_strs(d: Mapping[str, Any], key: str) -> list[str] | None:
    v = d.get(key)
    return list(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


@dataclass
class Limits:
    """Server request limits; ``None`` where the server does not state one."""

    max_items_per_request: int | None = None
    max_chars_per_text: int | None = None
    max_body_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Profile:
    """Scoring profile of the served model."""

    similarity: str | None = None
    relevance_range: tuple[float, float] | None = None
    max_sequence_length: int | None = None
    pooling: str | None = None
    truncation: str | None = None
    dtype: str | None = None


@dataclass
class Info:
    """``GET /v1/info``; ``raw`` keeps the full JSON."""

    model: str
    version: str
    device: str
    profile: Profile
    limits: Limits
    classifier: dict[str, Any] | None
    raw: dict[str, Any]
    #: The stop strings ``/reward`` applies when a request sets none (None: not stated).
    stop_strings: list[str] | None = None

    @classmethod
    def from_json(cls, data: Any) -> Info:
        """Parse a ``GET /v1/info`` answer; unknown fields are kept in ``raw``."""
        d = _obj(data, "/v1/info response")
        p_raw, lim_raw = d.get("profile"), d.get("limits")
        p: Mapping[str, Any] = p_raw if isinstance(p_raw, Mapping) else {}
        lim: Mapping[str, Any] = lim_raw if isinstance(lim_raw, Mapping) else {}
        rr = p.get("relevance_range")
        rrange: tuple[float, float] | None = None
        if (
            isinstance(rr, (list, tuple))
            and len(rr) == 2
            and all(isinstance(v, (int, float)) for v in rr)
        ):
            rrange = (float(rr[0]), float(rr[1]))
        known = {"max_items_per_request", "max_chars_per_text", "max_body_bytes"}
        clf = d.get("classifier")
        return cls(
            model=str(d.get("model", "")),
            version=str(d.get("version", "")),
            device=str(d.get("device", "")),
            profile=Profile(
                similarity=_opt_str(p, "similarity"),
                relevance_range=rrange,
                max_sequence_length=_opt_int(p, "max_sequence_length"),
                pooling=_opt_str(p, "pooling"),
                truncation=_opt_str(p, "truncation"),
                dtype=_opt_str(p, "dtype"),
            ),
            limits=Limits(
                max_items_per_request=_opt_int(lim, "max_items_per_request"),
                max_chars_per_text=_opt_int(lim, "max_chars_per_text"),
                max_body_bytes=_opt_int(lim, "max_body_bytes"),
                extra={k: v for k, v in lim.items() if k not in known},
            ),
            classifier=dict(clf) if isinstance(clf, Mapping) else None,
            raw=dict(d),
            stop_strings=_opt_strs(d, "stop_strings"),
        )
