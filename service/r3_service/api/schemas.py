"""Request and response bodies. Families: ``*Request`` in, ``*Response`` out."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from r3_service.reward.formula import Branch, QueryType, RewardOptions
from r3_service.reward.text import DEFAULT_STOP_STRINGS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(_Strict):
    """One turn of a chat conversation."""

    role: Annotated[str, Field(max_length=64)]
    content: str


#: A query: plain text, or a conversation whose user turns make the query.
Query = str | list[ChatMessage]


def qtype_name(value: object) -> object:
    """A query type's name as sent, in upper case: ``"constrained"`` is ``CONSTRAINED``.

    Only ASCII text is folded (and stripped): Unicode case folding maps look-alikes onto
    the names (``"conſtrained"``, ``"constraıned"``, ``"conﬆrained"``), so anything else
    is returned as it is and fails as an unknown type.
    """
    if isinstance(value, str) and value.isascii():
        return value.strip().upper()
    return value


#: A query type as sent by callers: OPENENDED or CONSTRAINED, in any ASCII case.
QTypeIn = Annotated[QueryType, BeforeValidator(qtype_name)]


#: The defaults live in :class:`RewardOptions`; the schema shows the same values.
_DEFAULT_OPTIONS = RewardOptions()


class RewardOptionsModel(_Strict):
    """The paper's ablation switches, stop strings and F's scale."""

    # Strict types: a switch is true or false (not 0, 1, "off"), the length an integer (not
    # true, "512" or 512.0); anything else is a 422 naming the option.
    length_incentive: StrictBool = _DEFAULT_OPTIONS.length_incentive
    repetition_penalty: StrictBool = _DEFAULT_OPTIONS.repetition_penalty
    relevance: StrictBool = _DEFAULT_OPTIONS.relevance
    reward_branching: StrictBool = _DEFAULT_OPTIONS.reward_branching
    stop_strings: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=64)]
        | None
    ) = Field(default=None, description="Replaces the default stop strings when given.")
    max_sequence_length: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = (
        _DEFAULT_OPTIONS.max_sequence_length
    )
    query_format: Literal["text", "alpaca"] = Field(
        default="text",
        description=(
            "How each query's text is read. `text`: as given (a chat's user turns joined). "
            "`alpaca`: normalised as the R^3 authors did for their Alpaca prompts: the "
            'template dropped, "### Input:\\n" turned into a space, "</s>" and " : " '
            'removed, "\\n", ":" and " " stripped from both ends, whitespace collapsed '
            "(docs/reward.md)."
        ),
    )

    def to_options(self) -> RewardOptions:
        """The switches as the engine takes them (stop strings and query format apart)."""
        return RewardOptions(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(RewardOptions)}
        )


class RewardRequest(_Strict):
    """Columnar batch: item i is (query[i], response[i], reference[i], qtype[i])."""

    query: list[Query]
    response: list[str]
    reference: list[str | None] | None = None
    qtype: list[QTypeIn | None] | None = Field(
        default=None, description="OPENENDED or CONSTRAINED, any case; null lets the server decide."
    )
    options: RewardOptionsModel | None = None


class RewardComponents(BaseModel):
    """The factors of each reward."""

    relevance: list[float]
    length_incentive: list[float]
    repetition_penalty: list[float]
    branch: list[Branch]


class ResponseCuts(BaseModel):
    """Where each response was cut, in characters (Unicode code points) of the response sent.

    The reward saw ``response[start:end]``; ``stop_end`` is just past the stop string that
    ended the response, or its length when none did: train on ``response[:stop_end]``.
    """

    start: list[int]
    end: list[int]
    stop_end: list[int]


class RewardResponse(BaseModel):
    rewards: list[float]
    qtype: list[QueryType]
    components: RewardComponents
    cut: ResponseCuts
    copies_query: list[bool] = Field(
        description="Whether each scored response mostly repeats its query (the reward hack "
        "of relevance alone: most of its word trigrams occur in the query)."
    )
    model: str


class RelevanceRequest(_Strict):
    anchor: list[str]
    text: list[str]


class RelevanceResponse(BaseModel):
    relevance: list[float]
    model: str


class ClassifyRequest(_Strict):
    query: list[Query]


class ClassifyResponse(BaseModel):
    qtype: list[QueryType]
    prob_openended: list[float]
    #: P(OPENENDED) inside the classifier's abstain band: /reward blends both formulas.
    uncertain: list[bool]
    model: str


class ProfileInfo(BaseModel):
    similarity: Literal["dot", "cosine"]
    relevance_range: tuple[float, float]
    max_sequence_length: int
    pooling: str
    truncation: str
    dtype: str


class LimitsInfo(BaseModel):
    max_items_per_request: int
    max_chars_per_text: int
    max_body_bytes: int
    max_batch_tokens: int
    max_batch_size: int
    max_queue_texts: int
    request_timeout_s: float


class InfoResponse(BaseModel):
    model: str
    version: str
    device: str
    backend: str = Field(description="Inference engine of the reward encoder (R3_BACKEND).")
    precision: str = Field(
        description="Precision it runs at: the export's dtype on onnxruntime, "
        "R3_INFERENCE_PRECISION on openvino."
    )
    profile: ProfileInfo
    limits: LimitsInfo
    classifier: dict[str, object] | None = None
    stop_strings: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STOP_STRINGS),
        description="The stop strings /reward cuts responses at when a request sets none.",
    )


class ErrorDetail(BaseModel):
    field: str
    index: int | None = None
    message: str


class ErrorBody(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one error shape of every non-2xx answer."""

    error: ErrorBody


class OpenRLHFRequest(BaseModel):
    """The body OpenRLHF's remote reward client POSTs (openrlhf 0.11.2,
    ``openrlhf/utils/agent.py``, ``SingleTurnAgentExecutor._fetch_rewards_via_http``):
    ``query`` is prompt + response as decoded, ``prompts`` the rendered prompts,
    ``labels`` the dataset's label column, any JSON type (see docs/integrations.md)."""

    query: list[str]
    prompts: list[str]
    labels: list[Any] | None = Field(
        default=None,
        description="Per item: null, a reference answer (string or number), an object "
        '{"reference", "qtype"} (or that object as JSON text), or a list (its first element).',
    )


class OpenRLHFResponse(BaseModel):
    """The shape OpenRLHF reads: ``rewards`` (raw R^3), ``scores`` in [0, 1], ``extra_logs``."""

    rewards: list[float]
    scores: list[float] = Field(
        description="reward / (max_sequence_length / 100), the top of F, clipped to [0, 1]."
    )
    extra_logs: dict[str, list[float]] | None = Field(
        default=None, description="Reward components; left out with ?extra_logs=false."
    )
