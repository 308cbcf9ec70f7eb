"""The request schema takes its defaults from the engine's options (one source each)."""

from __future__ import annotations

import dataclasses

from r3_service.api.schemas import RewardOptionsModel
from r3_service.reward.formula import RewardOptions


def test_schema_defaults_are_the_engine_defaults() -> None:
    assert RewardOptionsModel().to_options() == RewardOptions()
    schema = RewardOptionsModel.model_json_schema()["properties"]
    for field in dataclasses.fields(RewardOptions):
        assert schema[field.name]["default"] == field.default, field.name


def test_every_switch_reaches_the_engine() -> None:
    flipped = RewardOptionsModel(
        length_incentive=False,
        repetition_penalty=False,
        relevance=False,
        reward_branching=False,
        max_sequence_length=77,
        stop_strings=["END"],
    )
    assert flipped.to_options() == RewardOptions(
        length_incentive=False,
        repetition_penalty=False,
        relevance=False,
        reward_branching=False,
        max_sequence_length=77,
    )
