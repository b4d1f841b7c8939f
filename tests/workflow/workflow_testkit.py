"""Shared test values for the workflow tests (imported by name: tests are not a package)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workflow.spec import WorkflowSpec, WorkListInfo

# A fixed clock: the n-th materialisation of a test happens at T0 + n days.
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def day(n: int, hours: int = 0) -> datetime:
    return T0 + timedelta(days=n, hours=hours)



FRONT_DESK = WorkflowSpec(
    stages=["To call", "Left voicemail", "Booked", "Not interested"],
    terminal=["Booked", "Not interested"],
    department="front-desk",
    default_assignee="sam@clinic.example",
    on_booking="Booked",
)


def worklist(slug: str = "lapsed-physio", **overrides: object) -> WorkListInfo:
    fields: dict[str, object] = {"slug": slug, "segment_slug": slug, "spec": FRONT_DESK}
    fields.update(overrides)
    return WorkListInfo.model_validate(fields)
