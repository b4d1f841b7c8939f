"""Campaign files: the strict model of `outbound/campaigns/*.yaml` and its loader.

A campaign names a segment, a channel, a template, a priority, a schedule, its send
window / quiet hours (clinic time zone), a batch size and whether it is enabled. Errors
name the file and the path inside it, like segment errors do.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from core.yaml_files import YamlFileError, read_yaml_file

if TYPE_CHECKING:
    from segments.validation import SegmentLibrary

CAMPAIGNS_DIR = Path(__file__).parent / "campaigns"
TEMPLATES_DIR = Path(__file__).parent / "templates"

# SendGrid accepts at most 1000 personalizations in one mail/send request.
MAX_PERSONALIZATIONS = 1000

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class CampaignError(ValueError):
    """A campaign file that cannot be used, with where it went wrong and how to fix it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Daily(_Strict):
    every: Literal["day"]


class Weekly(_Strict):
    every: Literal["week"]
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)


class Once(_Strict):
    every: Literal["once"]
    on: date

    @field_validator("on", mode="before")
    @classmethod
    def _a_day(cls, v: object) -> object:
        # A day as written, YYYY-MM-DD: a number (a Unix time) is not a day.
        if isinstance(v, date) or (isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v)):
            return v
        raise ValueError(f"{v!r} is not a day; write it as YYYY-MM-DD, e.g. 2026-12-01")


Schedule = Annotated[Daily | Weekly | Once, Field(discriminator="every")]


class TimeRange(_Strict):
    """A daily range of clock times in the clinic time zone; may wrap past midnight."""

    start: time
    end: time

    @field_validator("start", "end")
    @classmethod
    def _clinic_clock(cls, v: time) -> time:
        if v.tzinfo is not None:
            raise ValueError(
                f"{v.isoformat()!r} has a time zone; send windows and quiet hours are times "
                "on the clinic's clock (CLINIC_TIMEZONE): write e.g. '12:00'"
            )
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> TimeRange:
        if self.start == self.end:
            raise ValueError("start and end are equal, which makes an empty range")
        return self

    def contains(self, t: time) -> bool:
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


_TEMPLATE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


# The files a local template needs, by what it is sent as.
EMAIL_PARTS = ("subject.txt", "body.html", "body.txt")
SMS_PARTS = ("sms.txt",)


class LocalTemplate(_Strict):
    """A folder under `outbound/templates/`: subject.txt, body.html and body.txt for
    email, sms.txt for SMS (the campaign's channel says which it needs)."""

    local: str

    @field_validator("local")
    @classmethod
    def _exists(cls, v: str) -> str:
        # A name, never a path: a template is one of the folders of outbound/templates/.
        if not _TEMPLATE_NAME.match(v):
            raise ValueError(
                f"local template {v!r} is not a template name; name one of the folders of "
                "outbound/templates/ (lowercase letters, digits, '-' and '_', no '/' or '..')"
            )
        if not (TEMPLATES_DIR / v).is_dir():
            raise ValueError(f"local template {v!r} does not exist; {_known_templates()}")
        return v

    def missing(self, parts: tuple[str, ...]) -> str | None:
        """Why this template cannot be sent as `parts` need, or None."""
        folder = TEMPLATES_DIR / self.local
        missing = [f for f in parts if not (folder / f).is_file()]
        if not missing:
            return None
        return (
            f"local template {self.local!r} needs {', '.join(missing)} in "
            f"outbound/templates/{self.local}/; {_known_templates()}"
        )


def _known_templates() -> str:
    known = sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir())
    return f"known templates: {', '.join(known) or 'none'}"


class SendGridTemplate(_Strict):
    """A SendGrid dynamic template, filled from `dynamic_template_data`."""

    sendgrid_template_id: str = Field(pattern=r"^d-[0-9a-f]{32}$")


class WhatsAppTemplate(_Strict):
    """A WhatsApp message template approved by WhatsApp, as Twilio's Content API holds it
    (`HX...`), and which recipient field fills each of its numbered variables."""

    whatsapp_content_sid: str = Field(pattern=r"^HX[0-9a-f]{32}$")
    variables: dict[str, str] = Field(default_factory=dict)

    @field_validator("variables")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        from outbound.templates import RECIPIENT_FIELDS

        for key, name in v.items():
            if not key.isdigit() or key.startswith("0"):
                raise ValueError(f"variable {key!r} is not a template variable number (1, 2, ...)")
            if name not in RECIPIENT_FIELDS:
                raise ValueError(f"variable {key} names {name!r}, which is not a recipient "
                                 f"field; use one of {', '.join(RECIPIENT_FIELDS)}")  # fmt: skip
        return v


def _template_kind(value: object) -> str:
    if isinstance(value, dict):
        if "whatsapp_content_sid" in value:
            return "whatsapp-template"
        return "sendgrid-template" if "sendgrid_template_id" in value else "local-template"
    if isinstance(value, WhatsAppTemplate):
        return "whatsapp-template"
    return "sendgrid-template" if isinstance(value, SendGridTemplate) else "local-template"


Template = Annotated[
    Annotated[LocalTemplate, Tag("local-template")]
    | Annotated[SendGridTemplate, Tag("sendgrid-template")]
    | Annotated[WhatsAppTemplate, Tag("whatsapp-template")],
    Discriminator(_template_kind),
]
# Union tags pydantic puts in error locations; users only know the key path.
_UNION_TAGS = {"day", "week", "once", "local-template", "sendgrid-template", "whatsapp-template"}


class FrequencyCap(_Strict):
    """At most `max_messages` per patient within `window_days` days (today included)."""

    max_messages: int = Field(default=1, ge=1)
    # At least a day: a zero-day window would turn the cap off.
    window_days: int = Field(default=7, ge=1, le=366)


class StaffDigest(_Strict):
    """One email to staff listing the campaign's cases (does not count toward patient caps)."""

    to: list[str] = Field(min_length=1)
    template: LocalTemplate = LocalTemplate(local="staff_digest")

    @field_validator("template")
    @classmethod
    def _an_email(cls, v: LocalTemplate) -> LocalTemplate:
        problem = v.missing(EMAIL_PARTS)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("to")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", a)]
        if bad:
            raise ValueError(f"not email addresses: {bad}")
        return v


class StaffTasks(_Strict):
    """A task for staff per member of the segment (outbound/tasks.py): on the member's
    work-list card, and posted to a task system when TASKS_WEBHOOK_URL is set."""

    # Who works it (an account's e-mail); empty: whoever picks it up.
    assignee: str | None = None
    due_in_days: int = Field(default=1, ge=0, le=365)
    note: str | None = Field(default=None, max_length=2000)

    @field_validator("assignee")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", v):
            raise ValueError(f"{v!r} is not an e-mail address (an account of the web app)")
        return v


class SlotOffers(_Strict):
    """Offer freed appointment slots to the waitlist (outbound/slots.py) instead of
    messaging the whole segment: each run, each slot to the next `per_slot` patients."""

    per_slot: int = Field(default=1, ge=1, le=5)


class Campaign(_Strict):
    name: str
    description: str = ""
    # Who the campaign belongs to (an e-mail); needed to target a private segment, which
    # only its owner's campaigns may.
    owner: str | None = None
    segment: str
    channel: Literal["email", "sms", "whatsapp"] = "email"
    # Commercial (marketing: reactivation, birthdays) or transactional (appointment and
    # case administration). Commercial SMS identifies the clinic, carries an opt-out
    # instruction and keeps the jurisdiction's hours in the patient's own time zone.
    purpose: Literal["commercial", "transactional"] = "commercial"
    # What a patient opts out of to stop it (outbound/categories.py): default `general`
    # for a commercial campaign; a transactional one names its own.
    unsubscribe_category: str | None = None
    template: Template
    # Higher wins when several campaigns claim the same patient in one run.
    priority: int = Field(ge=0, le=1000)
    schedule: Schedule
    send_window: TimeRange = TimeRange(start=time(8, 0), end=time(20, 0))
    quiet_hours: TimeRange | None = None
    batch_size: int = Field(default=MAX_PERSONALIZATIONS, ge=1, le=MAX_PERSONALIZATIONS)
    enabled: bool = True
    frequency_cap: FrequencyCap | None = None
    # Patients get the message (false: staff digest only).
    notify_patient: bool = True
    staff_digest: StaffDigest | None = None
    # Birthday-style messages need an explicit yes, not just the absence of a no.
    requires_explicit_consent: bool = False
    # Freed slots offered to the segment's waitlist patients (None: the whole segment).
    slot_offers: SlotOffers | None = None
    # A task for staff per member, instead of (notify_patient: false) or beside messages.
    tasks: StaffTasks | None = None
    # SendGrid takes at most 10 categories; three are added (clinic-audiences,
    # campaign:<slug>, staff-digest for digests).
    categories: list[str] = Field(default_factory=list, max_length=7)
    # Filled from the file name by the loader.
    slug: str = ""

    @model_validator(mode="after")
    def _someone_to_tell(self) -> Campaign:
        if not self.notify_patient and self.staff_digest is None and self.tasks is None:
            raise ValueError("notify_patient is false and there is no staff_digest or tasks: "
                             "nobody to tell")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _category_fits_purpose(self) -> Campaign:
        from outbound.categories import check_category

        transactional = self.purpose == "transactional"
        if self.unsubscribe_category is None:
            if transactional:
                raise ValueError(
                    "unsubscribe_category: a transactional campaign names its category "
                    "explicitly (appointments or case-admin), since opt-outs of marketing do "
                    "not stop it"
                )
            object.__setattr__(self, "unsubscribe_category", "general")
            return self
        try:
            check_category(self.unsubscribe_category, transactional)
        except ValueError as e:
            raise ValueError(f"unsubscribe_category: {e}") from None
        return self

    @model_validator(mode="after")
    def _template_fits_channel(self) -> Campaign:
        t = self.template
        if (self.channel == "whatsapp") != isinstance(t, WhatsAppTemplate):
            raise ValueError(
                "template: a WhatsApp campaign needs an approved WhatsApp template "
                "({whatsapp_content_sid: HX..., variables: {'1': first_name}}), and only a "
                "WhatsApp campaign can use one"
            )
        if self.channel == "whatsapp":
            return self
        if self.channel == "sms":
            if not isinstance(t, LocalTemplate):
                raise ValueError(
                    "template: an SMS campaign needs a local template with sms.txt "
                    "(a SendGrid template is for email)"
                )
            problem = t.missing(SMS_PARTS)
        else:
            problem = t.missing(EMAIL_PARTS) if isinstance(t, LocalTemplate) else None
        if problem:
            raise ValueError(f"template: {problem}")
        return self

    def runs_on(self, day: date) -> bool:
        s = self.schedule
        if isinstance(s, Daily):
            return True
        if isinstance(s, Weekly):
            return WEEKDAYS[day.weekday()] in s.days
        return s.on == day

    def in_window(self, t: time) -> bool:
        if not self.send_window.contains(t):
            return False
        return not (self.quiet_hours and self.quiet_hours.contains(t))

    @property
    def category(self) -> str:
        """The unsubscribe category (filled by validation)."""
        return self.unsubscribe_category or "general"

    @property
    def sendgrid_categories(self) -> list[str]:
        return list(dict.fromkeys(["clinic-audiences", f"campaign:{self.slug}", *self.categories]))


def _location(loc: tuple) -> str:
    out = ""
    previous = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS and previous in ("schedule", "template"):
            pass
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(top level)"


@dataclass(frozen=True)
class SegmentFacts:
    """What a campaign needs to know of the segment it targets."""

    entity: str
    visibility: str = "shared"
    owner: str | None = None


@dataclass(frozen=True)
class KnownSegments:
    """The segments campaigns may name: the valid ones, and the problems of the others."""

    valid: dict[str, SegmentFacts]
    invalid: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, library: SegmentLibrary) -> KnownSegments:
        valid = {
            s.slug: SegmentFacts(s.definition.entity, s.definition.visibility, s.definition.owner)
            for s in library.segments
        }
        invalid = {slug: [str(i) for i in issues] for slug, issues in library.invalid.items()}
        return cls(valid, invalid)


def _segment_problem(path: Path, campaign: Campaign, known: KnownSegments) -> str | None:
    slug = campaign.segment
    if slug in known.invalid:
        listed = "; ".join(known.invalid[slug])
        return (
            f"{path}: segment: segment {slug!r} cannot be used until its definition is fixed "
            f"({listed})"
        )
    facts = known.valid.get(slug)
    if facts is None:
        # Only segments this campaign may target are suggested: no private one of another.
        usable = [s for s, f in known.valid.items() if f.visibility != "private" or (
            campaign.owner and f.owner and campaign.owner.lower() == f.owner.lower())]
        close = difflib.get_close_matches(slug, usable, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return (
            f"{path}: segment: unknown segment {slug!r}{hint} "
            f"(segments are the YAML files of segments/definitions/ and SEGMENTS_PATH)"
        )
    if facts.visibility == "private":
        mine = campaign.owner and facts.owner and campaign.owner.lower() == facts.owner.lower()
        if not mine:
            return (
                f"{path}: segment: segment {slug!r} is private, and only a campaign of its "
                "owner may target it; set `owner:` to the segment's owner (if that is who "
                "this campaign is for) or target a shared segment"
            )
    if campaign.slot_offers and facts.entity != "patient":
        return (
            f"{path}: slot_offers: offers slots to waitlist patients, so segment {slug!r} "
            "must be an `entity: patient` segment"
        )
    if campaign.staff_digest and facts.entity != "case":
        return (
            f"{path}: staff_digest: lists cases, so segment {slug!r} "
            "must be an `entity: case` segment"
        )
    return None


def parse_campaign(path: Path, data: object, known_segments: KnownSegments | None) -> Campaign:
    """Validate one campaign read from `path`; `known_segments` None skips the segment check."""
    if not isinstance(data, dict):
        raise CampaignError(f"{path}: expected a mapping of campaign fields at the top level")
    if "slug" in data:
        raise CampaignError(f"{path}: slug: the slug is the file name; remove this key")
    slug = path.name.removesuffix(".yaml").removesuffix(".yml")
    if not _SLUG.match(slug) or path.suffix not in (".yaml", ".yml"):
        raise CampaignError(
            f"{path}: file name must be a slug (lowercase letters, digits, dashes) + .yaml"
        )
    try:
        campaign = Campaign.model_validate({**data, "slug": slug})
    except ValidationError as e:
        lines = [f"{path}: {_location(err['loc'])}: {err['msg']}" for err in e.errors()]
        raise CampaignError("invalid campaign\n  " + "\n  ".join(lines)) from None
    if known_segments is not None:
        problem = _segment_problem(path, campaign, known_segments)
        if problem:
            raise CampaignError(problem)
    return campaign


def read_campaign(path: Path, known_segments: KnownSegments | None) -> Campaign:
    try:
        data = read_yaml_file(path)
    except YamlFileError as e:
        raise CampaignError(str(e)) from None
    return parse_campaign(path, data, known_segments)


def campaign_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


@dataclass(frozen=True)
class CampaignSet:
    """The campaigns of a folder that can run, and the problems of the others (each naming
    its file). One bad file never stops the other campaigns."""

    campaigns: list[Campaign]
    problems: list[str]


def load_campaigns(
    folder: Path = CAMPAIGNS_DIR, known_segments: KnownSegments | None = None
) -> CampaignSet:
    """All campaigns of a folder, sorted by slug, with every problem reported."""
    campaigns: list[Campaign] = []
    problems: list[str] = []
    if not folder.is_dir():
        return CampaignSet([], [f"{folder}: the campaigns folder does not exist (CAMPAIGNS_PATH)"])
    seen: dict[str, Path] = {}
    for f in campaign_files(folder):
        try:
            campaign = read_campaign(f, known_segments)
        except CampaignError as e:
            problems.append(str(e))
            continue
        if campaign.slug in seen:
            problems.append(f"{f}: slug {campaign.slug!r} is already used by {seen[campaign.slug]}")
            continue
        seen[campaign.slug] = f
        campaigns.append(campaign)
    return CampaignSet(campaigns, problems)
