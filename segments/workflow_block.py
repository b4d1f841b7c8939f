"""The `workflow:` block a segment (or a named work list) carries, and what a work list is.

`WorkflowSpec` is the one model of the block (docs/workflow.md). The segment model
reuses it for its optional `workflow:` field so a segment file is validated in one pass,
with errors that name the file and the path inside it (`workflow.terminal[0]`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class WorkflowSpec(BaseModel):
    """Ordered stages a team works members through.

    ```yaml
    workflow:
      stages: [To call, Left voicemail, Booked, Not interested]
      terminal: [Booked, Not interested]
      department: front-desk
      default_assignee: sam@clinic.example
      on_booking: Booked
    ```
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[str] = Field(min_length=1)
    terminal: list[str] = Field(default_factory=list)
    department: str | None = None
    default_assignee: str | None = None
    on_booking: str | None = None

    @field_validator("stages")
    @classmethod
    def _stages_named_once(cls, stages: list[str]) -> list[str]:
        cleaned = [s.strip() for s in stages]
        for i, name in enumerate(cleaned):
            if not name:
                raise ValueError(f"stages[{i}] is blank; give every stage a name")
        seen: set[str] = set()
        for name in cleaned:
            # Stage names are matched case-insensitively on the CLI, so they must differ
            # by more than case to stay unambiguous.
            if name.casefold() in seen:
                raise ValueError(f"stage {name!r} is listed twice; stage names must be unique")
            seen.add(name.casefold())
        return cleaned

    @field_validator("department", "default_assignee", "on_booking")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        return value or None

    @model_validator(mode="after")
    def _references_known_stages(self) -> WorkflowSpec:
        for i, name in enumerate(self.terminal):
            if name not in self.stages:
                raise ValueError(
                    f"terminal[{i}] {name!r} is not one of the stages {self.stages}; "
                    "terminal stages must be listed in `stages` too"
                )
        if self.on_booking is not None and self.on_booking not in self.stages:
            raise ValueError(
                f"on_booking {self.on_booking!r} is not one of the stages {self.stages}; "
                "name the stage a member who books should move to"
            )
        return self

    @property
    def first_stage(self) -> str:
        return self.stages[0]

    def resolve_stage(self, name: str) -> str:
        """The stage called `name` (case and surrounding spaces ignored), or a clear error."""
        wanted = name.strip().casefold()
        for stage in self.stages:
            if stage.casefold() == wanted:
                return stage
        raise UnknownStageError(
            f"stage {name!r} does not exist; the stages are: " + ", ".join(self.stages)
        )


class UnknownStageError(ValueError):
    """A stage name that is not in the work list's `stages`."""


class WorkListInfo(BaseModel):
    """A work list: the members of one segment worked through one `WorkflowSpec`.

    `slug` is the work list's key (the segment slug when the block sits in the segment
    file; the file name of a named work list otherwise); `segment_slug` is where its
    members come from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    slug: str
    segment_slug: str
    owner: str | None = None
    visibility: Literal["shared", "private"] = "shared"
    mode: Literal["dynamic", "snapshot"] = "dynamic"
    entity: Literal["patient", "case"] = "patient"
    spec: WorkflowSpec

    @model_validator(mode="after")
    def _private_needs_owner(self) -> WorkListInfo:
        if self.visibility == "private" and not self.owner:
            raise ValueError(
                f"work list {self.slug!r} is private but has no owner; set `owner:` "
                "to the user who may see it, or make it `visibility: shared`"
            )
        return self
