"""The `workflow:` block: what is accepted and what is refused, with what message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from segments.workflow_block import UnknownStageError, WorkflowSpec, WorkListInfo


def test_full_block_from_the_design_is_accepted() -> None:
    spec = WorkflowSpec.model_validate(
        {
            "stages": ["To call", "Left voicemail", "Booked", "Not interested"],
            "terminal": ["Booked", "Not interested"],
            "department": "front-desk",
            "default_assignee": "sam@clinic.example",
            "on_booking": "Booked",
        }
    )
    assert spec.first_stage == "To call"
    assert spec.terminal == ["Booked", "Not interested"]
    assert spec.on_booking == "Booked"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"stages": []}, "at least 1 item"),
        ({"stages": ["To call", "  "]}, "stages[1] is blank"),
        ({"stages": ["To call", "to call"]}, "listed twice"),
        ({"stages": ["To call"], "terminal": ["Done"]}, "terminal[0] 'Done' is not one of"),
        ({"stages": ["To call"], "on_booking": "Booked"}, "on_booking 'Booked' is not one of"),
        ({"stages": ["To call"], "stage": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_blocks_are_refused_with_a_message_saying_what(block: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        WorkflowSpec.model_validate(block)


def test_stage_names_resolve_ignoring_case_and_unknown_ones_list_the_stages() -> None:
    spec = WorkflowSpec(stages=["To call", "Booked"])
    assert spec.resolve_stage(" booked ") == "Booked"
    with pytest.raises(UnknownStageError) as err:
        spec.resolve_stage("Done")
    assert str(err.value) == "stage 'Done' does not exist; the stages are: To call, Booked"


def test_private_work_list_needs_an_owner() -> None:
    with pytest.raises(ValidationError, match="is private but has no owner"):
        WorkListInfo(
            slug="mine", segment_slug="mine", visibility="private", spec=WorkflowSpec(stages=["A"])
        )
