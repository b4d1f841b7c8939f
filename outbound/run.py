"""One outbound run: load campaigns, read the warehouse, plan, and (with a key) send.

The CLI and the Dagster assets both call these functions; they hold no business rules of
their own (those are in `selection`), only the reading, writing and ledger bookkeeping.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
from sqlalchemy.engine import Engine

from core.days import parse_as_of, validate_timezone
from core.settings import SenderAccess, Settings, TwilioAccess
from core.state_store import connect_state, migrate
from core.warehouse import built_for, connect, require_built_for
from outbound import ledger as ledger_mod
from outbound.campaigns import (
    CAMPAIGNS_DIR,
    Campaign,
    CampaignSet,
    FrequencyCap,
    KnownSegments,
    load_campaigns,
)
from outbound.categories import parse_group_ids
from outbound.channels import (
    DEFAULT_SENDGRID_HOST,
    DEFAULT_TWILIO_BASE_URL,
    BatchOutcome,
    Channel,
    Content,
    DeliveryUnknown,
    NotSent,
    Recipient,
    SendGridEmail,
    TwilioSms,
    TwilioWhatsApp,
    check_api_host,
)
from outbound.pauses import pause_states
from outbound.selection import (
    SEND,
    STAFF_CHANNEL,
    ChannelRules,
    RunClock,
    address_keys,
    build_candidates,
    channel_rules,
    due_campaigns,
    hours_hold,
    plan_sends,
)
from outbound.slots import (
    OFFER_SCHEMA,
    SLOT_SCHEMA,
    WAITLIST_SCHEMA,
    claim_offers,
    match_offers,
    read_freed_slots,
    read_offered,
    read_waitlist,
    release_offers,
    slot_details,
)
from outbound.templates import RECIPIENT_FIELDS, TemplateError, campaign_content, digest_content
from outbound.twilio_events import UNSUBSCRIBED_SOURCE, read_refused_addresses, refuse_number
from outbound.warehouse_io import (
    read_contacts,
    read_extract_opt_outs,
    read_recipient_data,
    table_exists,
)
from segments.members import read_members

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboundSettings:
    duckdb_path: str
    state_db_url: str
    timezone: str
    segments_path: Path | None = None
    campaigns_dir: Path = CAMPAIGNS_DIR
    cap: FrequencyCap = field(default_factory=FrequencyCap)
    memory_limit: str | None = None
    # HH:MM clinic time plans are made at (reproducible dry runs); None: the real time.
    run_time: str | None = None
    # The web app's address and the secret its unsubscribe links are signed with.
    web_app_url: str | None = None
    unsubscribe_secret: str | None = field(default=None, repr=False)
    # How a commercial SMS names the clinic; how numbers are read and the hours
    # commercial SMS keeps (CLINIC_COUNTRY, OUTBOUND_RECIPIENT_HOURS).
    clinic_name: str | None = None
    rules: ChannelRules = field(default_factory=ChannelRules)
    # Unsubscribe category → SendGrid suppression group (SENDGRID_GROUP_IDS).
    group_ids: dict[str, int] = field(default_factory=dict)
    # Where staff tasks are posted, and their signing secret (TASKS_WEBHOOK_*).
    tasks_webhook_url: str | None = None
    tasks_webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, s: Settings) -> OutboundSettings:
        return cls(
            clinic_name=s.clinic_name,
            rules=channel_rules(s.clinic_country, s.recipient_hours),
            group_ids=parse_group_ids(s.sendgrid_group_ids),
            tasks_webhook_url=s.tasks_webhook_url,
            tasks_webhook_secret=s.tasks_webhook_secret,
            duckdb_path=str(s.duckdb_path),
            state_db_url=s.state_db_url,
            timezone=s.clinic_timezone,
            segments_path=s.segments_path,
            campaigns_dir=s.campaigns_path or CAMPAIGNS_DIR,
            cap=frequency_cap(s.cap_max_messages, s.cap_window_days),
            memory_limit=s.duckdb_memory_limit,
            run_time=s.outbound_run_time,
            web_app_url=s.web_app_url,
            unsubscribe_secret=s.unsubscribe_secret,
        )

    def connect(self, read_only: bool = False):
        return connect(self.duckdb_path, read_only=read_only, memory_limit=self.memory_limit)


def frequency_cap(max_messages: int, window_days: int) -> FrequencyCap:
    """The global frequency cap: OUTBOUND_CAP_MAX_MESSAGES per OUTBOUND_CAP_WINDOW_DAYS."""
    from pydantic import ValidationError

    try:
        return FrequencyCap(max_messages=max_messages, window_days=window_days)
    except ValidationError as e:
        problems = "; ".join(
            f"OUTBOUND_CAP_{str(err['loc'][0]).upper()}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(
            f"the frequency cap is invalid ({problems}); at most N messages (N >= 1) per "
            "D days (1 <= D <= 366)"
        ) from None


@dataclass(frozen=True)
class SenderSettings:
    """The SendGrid key is only ever in the environment, never in a file or a log."""

    api_key: str | None = field(repr=False)
    host: str
    from_email: str | None
    from_name: str | None
    sandbox: bool

    @classmethod
    def of(cls, access: SenderAccess) -> SenderSettings:
        # OUTBOUND_SEND_DISABLED (demos, staging copies of production data) wins over a
        # key that happens to be in the environment: the run stays a dry run.
        return cls(
            api_key=None if access.disabled else access.api_key,
            host=check_api_host(access.host or DEFAULT_SENDGRID_HOST),
            from_email=access.from_email,
            from_name=access.from_name,
            sandbox=access.sandbox,
        )

    def channel(self, **overrides) -> SendGridEmail:
        if not self.api_key:
            raise ValueError("SENDGRID_API_KEY is not set")
        if not self.from_email:
            raise ValueError(
                "OUTBOUND_FROM_EMAIL is not set; set it to the clinic's verified sender address"
            )
        return SendGridEmail(
            api_key=self.api_key,
            from_email=self.from_email,
            from_name=self.from_name,
            host=self.host,
            sandbox=self.sandbox,
            **overrides,
        )


_ACCOUNT_SID = r"AC[0-9a-fA-F]{32}"
_SERVICE_SID = r"MG[0-9a-fA-F]{32}"


@dataclass(frozen=True)
class SmsSenderSettings:
    """Twilio's account and sender; the auth token only ever from the environment."""

    account_sid: str | None
    auth_token: str | None = field(repr=False)
    messaging_service_sid: str | None
    from_number: str | None
    base_url: str
    # The WhatsApp sender (E.164): with it, WhatsApp campaigns are sent.
    whatsapp_from: str | None = None

    @classmethod
    def of(cls, access: TwilioAccess) -> SmsSenderSettings:
        # OUTBOUND_SEND_DISABLED keeps SMS a dry run too, whatever is configured.
        return cls(
            account_sid=None if access.disabled else access.account_sid,
            auth_token=access.auth_token,
            messaging_service_sid=access.messaging_service_sid,
            from_number=access.from_number,
            base_url=check_api_host(access.base_url or DEFAULT_TWILIO_BASE_URL,
                                    "TWILIO_API_BASE_URL"),
            whatsapp_from=access.whatsapp_from,
        )  # fmt: skip

    def channel(self, web_app_url: str | None = None, **overrides) -> TwilioSms:
        import re

        if not self.account_sid:
            raise ValueError("TWILIO_ACCOUNT_SID is not set")
        if not re.fullmatch(_ACCOUNT_SID, self.account_sid):
            raise ValueError(
                "TWILIO_ACCOUNT_SID is not an account SID (AC followed by 32 hex digits, as "
                "the Twilio console shows it)"
            )
        if not self.auth_token:
            raise ValueError("TWILIO_AUTH_TOKEN is not set (the account's auth token)")
        service, number = self.messaging_service_sid, self.from_number
        if service and not re.fullmatch(_SERVICE_SID, service):
            raise ValueError(
                "TWILIO_MESSAGING_SERVICE_SID is not a Messaging Service SID (MG followed by "
                "32 hex digits)"
            )
        if not service and not (number and re.fullmatch(r"\+[1-9][0-9]{7,14}", number)):
            raise ValueError(
                "set TWILIO_MESSAGING_SERVICE_SID (MG...), or TWILIO_FROM_NUMBER as an "
                "E.164 number such as +61412345678"
            )
        callback = f"{web_app_url}/webhooks/twilio/status" if web_app_url else None
        return TwilioSms(account_sid=self.account_sid, auth_token=self.auth_token,
                         messaging_service_sid=service, from_number=None if service else number,
                         base_url=self.base_url, status_callback=callback, **overrides)  # fmt: skip

    def whatsapp_channel(self, web_app_url: str | None = None, **overrides) -> TwilioWhatsApp:
        """WhatsApp from TWILIO_WHATSAPP_FROM, with the account SMS uses."""
        import re

        base = self.channel(web_app_url)
        number = self.whatsapp_from or ""
        if not re.fullmatch(r"\+[1-9][0-9]{7,14}", number):
            raise ValueError("TWILIO_WHATSAPP_FROM is not an E.164 number such as "
                             "+61412345678 (the WhatsApp sender of the Twilio account)")
        return TwilioWhatsApp(account_sid=base.account_sid, auth_token=base.auth_token,
                              from_number=number, base_url=base.base_url,
                              status_callback=base.status_callback, **overrides)  # fmt: skip


def configured_channels(
    settings: OutboundSettings, email: SenderSettings, sms: SmsSenderSettings
) -> dict[str, Channel]:
    """The channels that can send now (a ValueError names a setting that is wrong); a
    channel left out keeps its campaigns a dry run."""
    channels: dict[str, Channel] = {}
    if email.api_key:
        channels["email"] = email.channel()
    if sms.account_sid:
        channels["sms"] = sms.channel(settings.web_app_url)
        if sms.whatsapp_from:
            channels["whatsapp"] = sms.whatsapp_channel(settings.web_app_url)
    return channels


def task_webhook(settings: OutboundSettings, campaigns: list[Campaign]):  # noqa: ANN201
    """The task system's webhook (outbound.tasks.TaskWebhook), or None when not set. A
    URL without its secret is an error: tasks are never posted unsigned."""
    from outbound.tasks import TaskWebhook

    if not settings.tasks_webhook_url:
        return None
    if not settings.tasks_webhook_secret:
        raise ValueError("TASKS_WEBHOOK_URL is set without TASKS_WEBHOOK_SECRET; tasks are "
                         "signed, so set the secret the task system checks")  # fmt: skip
    return TaskWebhook(settings.tasks_webhook_url, settings.tasks_webhook_secret,
                       web_app_url=settings.web_app_url,
                       titles={c.slug: c.name for c in campaigns})  # fmt: skip


def known_segments(settings: OutboundSettings) -> KnownSegments:
    """The segment library as campaigns see it: valid segments with their entity,
    visibility and owner, and the problems of the invalid ones."""
    from segments.library import default_catalogue, library_folders
    from segments.validation import read_library

    catalogue = default_catalogue(Path(settings.duckdb_path))
    return KnownSegments.of(read_library(library_folders(settings.segments_path), catalogue))


def campaign_set(settings: OutboundSettings) -> CampaignSet:
    """Every campaign file: those that can run, and the problems of the others (a bad
    file, an unknown or invalid segment, someone else's private segment, a template that
    does not render)."""
    loaded = load_campaigns(settings.campaigns_dir, known_segments(settings))
    campaigns, problems = [], list(loaded.problems)
    paused = paused_campaigns(settings)
    for campaign in loaded.campaigns:
        if campaign.slug in paused:
            # Paused by staff: left out of plans as if its file said `enabled: false`.
            campaign = campaign.model_copy(update={"enabled": False})
        try:
            campaign_content(campaign, clinic_name=settings.clinic_name)
            if campaign.staff_digest is not None:
                digest_content(campaign, [])
        except TemplateError as e:
            problems.append(f"{settings.campaigns_dir / (campaign.slug + '.yaml')}: template: {e}")
            continue
        campaigns.append(campaign)
    return CampaignSet(campaigns, problems)


def paused_campaigns(settings: OutboundSettings) -> set[str]:
    """The campaigns staff have paused (and not resumed since), from the state store (none
    without one, e.g. a file check). A state store that cannot be read is an error: a
    paused campaign must not run because its pause could not be seen."""
    if not settings.state_db_url:
        return set()
    engine = connect_state(settings.state_db_url)
    try:
        return {slug for slug, s in pause_states(engine).items() if s.paused}
    finally:
        engine.dispose()


def campaigns_for(settings: OutboundSettings) -> list[Campaign]:
    """The campaigns that can run (their problems are `campaign_set`'s to report)."""
    return campaign_set(settings).campaigns


def state_engine(settings: OutboundSettings) -> Engine:
    """The state store with every registered migration applied (never rebuilt)."""
    engine = connect_state(settings.state_db_url)
    migrate(engine)
    return engine


def run_clock(
    as_of: str | date | None, timezone: str, now: datetime | None = None,
    run_time: str | None = None,
) -> RunClock:  # fmt: skip
    """The as-of date (default today) at the current clinic time, or at `run_time`.

    `run_time` (HH:MM clinic time, OUTBOUND_RUN_TIME) pins the clock time a plan is made
    at, so that a dry run with --as-of is reproducible, quiet hours included; the real time
    still decides what "today" is and what the frequency cap counts.
    """
    real_now = now or datetime.now(UTC)
    day = parse_as_of(as_of, timezone) if as_of else real_now.astimezone(ZoneInfo(timezone)).date()
    if not run_time:
        return RunClock.at(real_now, timezone, day)
    try:
        at = time.fromisoformat(run_time)
    except ValueError:
        raise ValueError(f"OUTBOUND_RUN_TIME={run_time!r} is not a time; write HH:MM") from None
    pinned_at = datetime.combine(day, at).replace(tzinfo=ZoneInfo(timezone))
    return RunClock.at(pinned_at, timezone, day, real_now=real_now)


@dataclass
class Planned:
    candidates: pl.DataFrame
    plan: pl.DataFrame
    contacts: pl.DataFrame
    # The slot each waitlist offer is about: (campaign, patient_id, appointment_id).
    slots: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=OFFER_SCHEMA))


def read_candidates(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock
) -> pl.DataFrame:
    """Members of the due campaigns' segments, one row per (campaign, member)."""
    slugs = sorted({c.segment for c in due_campaigns(campaigns, clock.as_of)})
    with settings.connect(read_only=True) as con:
        # The plan's fields (names, balances, expiry dates) come from the marts: of its day.
        day, zone = built_for(con)
        require_built_for(day, clock.as_of, "a send plan", settings.timezone, zone)
        members = read_members(con, slugs, clock.as_of)
    return build_candidates(campaigns, members, clock.as_of)


def read_history(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock, engine: Engine
) -> pl.DataFrame:
    """Ledger rows requested recently enough to matter for the longest cap window in use."""
    windows = [settings.cap.window_days] + [
        c.frequency_cap.window_days for c in campaigns if c.frequency_cap
    ]
    return ledger_mod.read_history(engine, since=clock.cap_start(max(windows)))


def read_opt_outs(settings: OutboundSettings, engine: Engine | None) -> pl.DataFrame:
    """Every opt-out known now: the extract's, whatever date it carries (rejected rows
    included), and the kept ones. Consent is the latest known at the moment of sending.

    The extract's opt-outs are kept in the state store as they are seen (with `engine`), so
    an export that later leaves one out does not opt the patient back in; only
    `audiences campaigns lift-opt-out` forgets one. Without `engine`: the extract's alone.
    """
    with settings.connect(read_only=True) as con:
        extract, _ = read_extract_opt_outs(con)
    if engine is None:
        return extract.unique()
    named = extract.filter(pl.col("patient_id").str.strip_chars().str.len_chars() > 0)
    ledger_mod.remember_opt_outs(engine, named.rows(), source="extract")
    return pl.concat([extract, ledger_mod.read_learned_opt_outs(engine)]).unique()


def unreadable_opt_outs(settings: OutboundSettings) -> str | None:
    """Why nothing may be sent while the extract holds opt-out rows naming no readable
    patient (any of them may be someone who opted out), or None."""
    with settings.connect(read_only=True) as con:
        _, unreadable = read_extract_opt_outs(con)
    if not unreadable:
        return None
    return (
        f"{unreadable} opt-out row(s) of the extract could not be read at all (see "
        "raw.opt_outs__rejected); any of them may be a patient who opted out, so nothing is "
        "sent until the extract is fixed"
    )


def records_sharing_an_address(keys: pl.DataFrame, channel: str) -> dict[str, list[str]]:
    """patient id → the other patient records with the same address on `channel` (only
    for addresses that more than one record has); `keys` is `address_keys`' frame."""
    keyed = keys.select("patient_id", pl.col(f"{channel}_key").alias("key")).drop_nulls()
    groups = keyed.group_by("key").agg("patient_id").filter(pl.col("patient_id").list.len() > 1)
    return {
        pid: [other for other in ids if other != pid]
        for ids in groups["patient_id"].to_list()
        for pid in ids
    }


def make_plan(
    settings: OutboundSettings,
    campaigns: list[Campaign],
    clock: RunClock,
    engine: Engine,
    candidates: pl.DataFrame | None = None,
) -> Planned:
    validate_timezone(settings.timezone)
    if candidates is None:
        candidates = read_candidates(settings, campaigns, clock)
    with settings.connect(read_only=True) as con:
        contacts = read_contacts(con)
    opt_outs = read_opt_outs(settings, engine)
    history = read_history(settings, campaigns, clock, engine)
    consent = (read_refused_addresses(engine), ledger_mod.read_category_opt_outs(engine),
               ledger_mod.read_opt_ins(engine))  # fmt: skip

    def plan_of(cands: pl.DataFrame) -> pl.DataFrame:
        return plan_sends(campaigns, cands, contacts, opt_outs, history, clock, settings.cap,
                          settings.rules, *consent)  # fmt: skip

    plan = plan_of(candidates)
    # A slot is offered only to who can be messaged now: the plan of the whole segment
    # says who that is; then the plan again with the offered patients alone.
    candidates, slots = with_slot_offers(settings, campaigns, clock, engine, candidates, plan)
    if slots.height or any(c.slot_offers for c in due_campaigns(campaigns, clock.as_of)):
        plan = plan_of(candidates)
    return Planned(candidates=candidates, plan=plan, contacts=contacts, slots=slots)


def with_slot_offers(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock, engine: Engine,
    candidates: pl.DataFrame, plan: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """The candidates with each slot-offer campaign's segment members narrowed to the
    patients offered a freed slot now (outbound/slots.py), and those offers. Only who
    `plan` (of the whole segment) would message, now or later today, is offered one."""
    due = [c for c in due_campaigns(campaigns, clock.as_of) if c.slot_offers is not None]
    if not due:
        return candidates, pl.DataFrame(schema=OFFER_SCHEMA)
    moment = clock.now() if clock.is_today else clock.local_now
    with settings.connect(read_only=True) as con:
        if not (table_exists(con, "raw", "appointments") and table_exists(con, "raw", "waitlist")):
            freed, waiting = pl.DataFrame(schema=SLOT_SCHEMA), pl.DataFrame(schema=WAITLIST_SCHEMA)
        else:
            freed, waiting = read_freed_slots(con, moment), read_waitlist(con)
    offered = read_offered(engine)
    # Who this campaign already messaged today is not offered another slot today (the
    # ledger holds one message per campaign, patient and day).
    today = ledger_mod.existing_keys(engine, clock.as_of)
    matched = []
    for c in due:
        reachable = plan.filter(pl.col("campaign") == c.slug, pl.col("channel") == c.channel,
                                pl.col("decision") != "suppressed")
        members = reachable.filter(
            ~pl.col("patient_id").is_in([p for slug, p in today if slug == c.slug])
        )["patient_id"].unique()
        assert c.slot_offers is not None
        matched.append(match_offers(c.slug, freed, waiting, members.to_list(), offered,
                                    c.slot_offers.per_slot))  # fmt: skip
    offers = pl.concat(matched)
    slugs = [c.slug for c in due]
    kept = candidates.filter(~pl.col("campaign").is_in(slugs))
    chosen = candidates.filter(pl.col("campaign").is_in(slugs)).join(
        offers.select("campaign", "patient_id"), on=["campaign", "patient_id"], how="semi")
    return pl.concat([kept, chosen]), offers


def candidates_of(plan: pl.DataFrame) -> pl.DataFrame:
    """The candidate rows a plan was made from (every patient row and staff-digest case)."""
    columns = ["campaign", "segment_slug", "patient_id", "case_id", "channel", "priority"]
    patients = plan.filter(pl.col("channel") != STAFF_CHANNEL).select(columns)
    cases = plan.filter(pl.col("channel") == STAFF_CHANNEL).select(columns)
    # A staff-digest case is a candidate of its campaign whatever the patient channel is.
    by_campaign = plan.filter(pl.col("channel") != STAFF_CHANNEL).select("campaign", "channel")
    cases = cases.drop("channel").join(by_campaign.unique(), on="campaign", how="left")
    cases = cases.with_columns(pl.col("channel").fill_null("email")).select(columns)
    return pl.concat([patients, cases]).unique()


@dataclass
class CampaignSendReport:
    campaign: str
    planned: int = 0
    already_in_ledger: int = 0
    sent: int = 0
    failed: int = 0
    requests: int = 0
    # Planned but not sent, because consent or the cap changed before the request.
    withheld: int = 0
    retried: int = 0
    digest: str = ""
    # Why the campaign's messages were not sent (no sender for its channel), or "".
    not_sent: str = ""
    # Left for a later run: the send window closed, or a recipient's hours did, meanwhile.
    deferred: int = 0
    # Staff tasks made by this run (outbound/tasks.py).
    tasks: int = 0


@dataclass
class SendReport:
    send_date: date
    run_id: str
    dry_run: bool
    sandbox: bool = False
    unknown: int = 0
    stopped: str | None = None
    # Why nothing was sent, for a dry run.
    dry_run_reason: str = ""
    campaigns: dict[str, CampaignSendReport] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.campaigns.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.campaigns.values())

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.campaigns.values())


REPORT_SCHEMA = {
    "send_date": pl.Date,
    "run_id": pl.String,
    "dry_run": pl.Boolean,
    "dry_run_reason": pl.String,
    "stopped": pl.String,
    "campaign": pl.String,
    "planned": pl.Int64,
    "already_in_ledger": pl.Int64,
    "sent": pl.Int64,
    "failed": pl.Int64,
    "withheld": pl.Int64,
    "retried": pl.Int64,
    "requests": pl.Int64,
    "staff_digest": pl.String,
}


def report_frame(report: SendReport) -> pl.DataFrame:
    """One row per campaign of a send run (counts only), for the warehouse and the UI."""
    rows = [
        (report.send_date, report.run_id, report.dry_run, report.dry_run_reason,
         report.stopped or "", c.campaign, c.planned, c.already_in_ledger, c.sent, c.failed,
         c.withheld, c.retried, c.requests, c.digest)
        for c in report.campaigns.values()
    ]  # fmt: skip
    return pl.DataFrame(rows, schema=REPORT_SCHEMA, orient="row")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def today_only(clock: RunClock, timezone: str) -> str:
    return (
        f"sending is for the clinic's today only ({clock.today.isoformat()} in {timezone}); "
        f"the plan for {clock.as_of.isoformat()} is a dry run"
    )


@dataclass
class _Batch:
    campaign: Campaign
    rows: list[dict]
    retry_ids: dict[str, str]  # patient_id → failed ledger row to try again


def _render_all(
    settings: OutboundSettings, campaigns: list[Campaign], to_send: pl.DataFrame
) -> tuple[dict[str, Content], dict[str, Content]]:
    """Every message and staff digest of the plan rendered, before any request is made:
    a template that fails stops the run with nothing sent."""
    slugs = set(to_send["campaign"].to_list())
    links = bool(settings.web_app_url and settings.unsubscribe_secret)
    contents = {c.slug: campaign_content(c, links, settings.clinic_name)
                for c in campaigns if c.slug in slugs}  # fmt: skip
    for c in campaigns:
        group = settings.group_ids.get(c.category)
        if c.slug in contents and c.channel == "email" and group is not None:
            contents[c.slug] = dataclasses.replace(contents[c.slug], asm_group_id=group)
    digests: dict[str, Content] = {}
    staff = to_send.filter(pl.col("channel") == STAFF_CHANNEL)
    if staff.height:
        with settings.connect(read_only=True) as con:
            data = read_recipient_data(con, staff.select("patient_id", "case_id").unique())
        for c in campaigns:
            cases = staff.filter(pl.col("campaign") == c.slug)
            if c.staff_digest is None or cases.is_empty():
                continue
            listed = data.join(cases.select("patient_id", "case_id"), on=["patient_id", "case_id"],
                               nulls_equal=True).sort("case_id", "patient_id", nulls_last=True)
            digests[c.slug] = digest_content(c, listed.to_dicts())  # fmt: skip
    return contents, digests


def send_planned(
    settings: OutboundSettings,
    campaigns: list[Campaign],
    planned: Planned,
    clock: RunClock,
    engine: Engine,
    channel: Channel | Mapping[str, Channel] | None,
    sandbox: bool = False,
    after_batch: Callable[[str, int], None] | None = None,
) -> SendReport:
    """Send today's plan: what the ledger does not hold yet, for the clinic's real today.

    `channel` is the channel, or the channels by name (`email`, `sms`), that can send;
    a campaign whose channel is not among them is left unsent (its report says so). None
    or an empty mapping, or a plan for another day, is a dry run: nothing is written to
    the ledger. Otherwise, holding the send lock (one send run at a time), the plan is made
    again from its candidates with the consent and ledger of this moment; every message is
    rendered before the first request; and just before each batch the patients' consent is
    read once more. A batch whose outcome is unknowable (connection lost mid-request) stops
    the run with its rows left `pending`.
    """
    channels = _as_channels(channel)
    channel = channels or None
    run_id = ledger_mod.new_run_id()
    report = SendReport(
        send_date=clock.as_of, run_id=run_id, dry_run=channel is None, sandbox=sandbox
    )
    to_send = planned.plan.filter(pl.col("decision") == SEND)
    by_slug = {c.slug: c for c in campaigns}
    blocked = None if channel is None or not clock.is_today else unreadable_opt_outs(settings)
    if channel is None or not clock.is_today or blocked:
        report.dry_run = True
        if channel is not None:
            report.dry_run_reason = blocked or today_only(clock, settings.timezone)
        for slug in sorted(set(to_send["campaign"].to_list())):
            report.campaigns[slug] = CampaignSendReport(
                slug, planned=to_send.filter(pl.col("campaign") == slug).height
            )
        return report

    # From here on the real clock: send windows and quiet hours as it is now.
    clock = clock.sending(settings.timezone)
    ledger_mod.acquire_send_lock(engine, run_id, clock.now())
    try:
        # The plan again, now, under the lock: what others sent and who opted out since the
        # plan was made count.
        candidates = planned.candidates if planned.candidates.height else candidates_of(
            planned.plan
        )
        fresh = make_plan(settings, campaigns, clock, engine, candidates=candidates)
        to_send = fresh.plan.filter(pl.col("decision") == SEND)
        order = sorted(set(to_send["campaign"].to_list()), key=lambda s: (-by_slug[s].priority, s))
        for slug in order:
            report.campaigns[slug] = CampaignSendReport(
                slug, planned=to_send.filter(pl.col("campaign") == slug).height
            )
        contents, digests = _render_all(settings, campaigns, to_send)
        report.unknown = ledger_mod.mark_abandoned_unknown(engine, run_id, clock.now())
        _send_rows(settings, by_slug, order, to_send, fresh, clock, engine, channels, run_id,
                   report, contents, digests, sandbox, after_batch)  # fmt: skip
        _make_tasks(settings, campaigns, clock, engine, report)
    except DeliveryUnknown as e:
        report.stopped = str(e)
    finally:
        ledger_mod.release_send_lock(engine, run_id)
    return report


def _make_tasks(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock, engine: Engine,
    report: SendReport,
) -> None:  # fmt: skip
    """The staff tasks of the due campaigns with `tasks`, in their send window: one per
    member of the segment, made once a day (outbound/tasks.py)."""
    from outbound.tasks import create_tasks, tasks_for

    local = clock.now().astimezone(ZoneInfo(settings.timezone)).time()
    due = [c for c in due_campaigns(campaigns, clock.as_of)
           if c.tasks is not None and c.in_window(local)]  # fmt: skip
    if not due:
        return
    members = read_candidates(settings, due, clock)
    for c in due:
        mine = members.filter(pl.col("campaign") == c.slug).select("patient_id", "case_id")
        made = create_tasks(engine, tasks_for(c, mine.unique().sort("patient_id", "case_id",
                                                               nulls_last=True).rows(),
                                              clock.as_of), clock.now())  # fmt: skip
        rep = report.campaigns.setdefault(c.slug, CampaignSendReport(c.slug))
        rep.tasks += len(made)


def _as_channels(channel: Channel | Mapping[str, Channel] | None) -> dict[str, Channel]:
    if channel is None:
        return {}
    if isinstance(channel, Mapping):
        return dict(channel)
    return {channel.name: channel}


def _send_rows(
    settings: OutboundSettings,
    by_slug: dict[str, Campaign],
    order: list[str],
    to_send: pl.DataFrame,
    planned: Planned,
    clock: RunClock,
    engine: Engine,
    channels: dict[str, Channel],
    run_id: str,
    report: SendReport,
    contents: dict[str, Content],
    digests: dict[str, Content],
    sandbox: bool,
    after_batch: Callable[[str, int], None] | None,
) -> None:
    existing = ledger_mod.existing_keys(engine, clock.as_of)
    retryable = ledger_mod.retryable_rows(engine, clock.as_of)
    patient_rows = to_send.filter(pl.col("channel") != STAFF_CHANNEL)
    with settings.connect(read_only=True) as con:
        data = read_recipient_data(con, patient_rows.select("patient_id", "case_id").unique())
    keys = address_keys(planned.contacts, settings.rules, settings.timezone)
    addresses = planned.contacts.select("patient_id", "email").join(
        keys.select("patient_id", "sms_number", "zone"), on="patient_id", how="left")  # fmt: skip
    # The address keys are worked out once, for the recipients and for who shares them.
    sharing = {ch: records_sharing_an_address(keys, ch) for ch in ("email", "sms", "whatsapp")}
    patient_rows = patient_rows.join(addresses, on="patient_id", how="left").join(
        data, on=["patient_id", "case_id"], how="left", nulls_equal=True
    )
    if planned.slots.height:
        with settings.connect(read_only=True) as con:
            details = slot_details(con, planned.slots, settings.timezone)
        patient_rows = patient_rows.join(planned.slots, on=["campaign", "patient_id"],
                                         how="left").join(
            details, on=["campaign", "patient_id"], how="left")  # fmt: skip
    ok_status = ledger_mod.SANDBOX if sandbox else ledger_mod.SENT
    batch_no = 0
    for slug in order:
        campaign = by_slug[slug]
        rep = report.campaigns[slug]
        channel = channels.get(campaign.channel)
        rows = patient_rows.filter(pl.col("campaign") == slug).to_dicts()
        if channel is None:
            # Nothing of this campaign goes out, and nothing is written for it.
            rep.not_sent = (f"no {campaign.channel} sender is configured "
                            f"({_HOW_TO_SEND[campaign.channel]})")  # fmt: skip
            rows = []
        todo = [r for r in rows if (slug, r["patient_id"]) not in existing
                or (slug, r["patient_id"]) in retryable]  # fmt: skip
        rep.already_in_ledger = len(rows) - len(todo)
        shared = sharing.get(campaign.channel, {})
        chunks = _chunks(todo, min(campaign.batch_size, getattr(channel, "max_batch", 1)))
        for n, chunk in enumerate(chunks):
            # The hours as they are now: a long run stops at the end of the send window
            # and keeps each recipient's hours; what is left goes in a later run.
            now = clock.now()
            if not campaign.in_window(now.astimezone(ZoneInfo(settings.timezone)).time()):
                rep.deferred += sum(len(c) for c in chunks[n:])
                break
            if campaign.purpose == "commercial" and campaign.channel in ("sms", "whatsapp"):
                outside = [r for r in chunk
                           if not hours_hold(settings.rules, r.get("zone") or settings.timezone,
                                             now)[0]]  # fmt: skip
                rep.deferred += len(outside)
                chunk = [r for r in chunk if r not in outside]
            # Consent once more, just before the request: an opt-out learned a moment ago
            # is honoured. An opt-out on any record sharing the address counts.
            mine = [r["patient_id"] for r in chunk]
            checked = mine + [other for i in mine for other in shared.get(i, ())]
            refused_ids = set(
                ledger_mod.read_learned_opt_outs(engine, checked)
                .filter(pl.col("channel").is_in([campaign.channel, "all"]))["patient_id"]
                .to_list()
            )
            if campaign.purpose == "commercial":
                left = ledger_mod.read_category_opt_outs(engine, checked).filter(
                    pl.col("category").is_in([campaign.category, "all"]))
                refused_ids |= set(left["patient_id"].to_list())
            refused = {
                i for i in mine if i in refused_ids or refused_ids & set(shared.get(i, ()))
            }
            chunk = [r for r in chunk if r["patient_id"] not in refused]
            rep.withheld += len(refused)
            if campaign.slot_offers is not None:
                # The offer is recorded before the message is requested: a slot is never
                # offered to the same patient twice, whatever happens to the request.
                wanted = [(r["slot_key"], r["patient_id"], r["appointment_id"]) for r in chunk]
                claimed = claim_offers(engine, slug, wanted, clock.now())
                rep.withheld += len(wanted) - len(claimed)
                chunk = [r for r in chunk if (r["slot_key"], r["patient_id"]) in claimed]
            ids = _ledger_rows(engine, slug, chunk, retryable, clock, run_id, rep)
            sending = [(i, r) for i, r in zip(ids, chunk, strict=True) if i is not None]
            if not sending:
                continue
            recipients = [_recipient(settings, campaign, i, r, clock.as_of) for i, r in sending]
            sent_ids = [i for i, _ in sending]
            rep.requests += 1
            batch_no += 1
            try:
                outcome = channel.send_batch(
                    recipients,
                    contents[slug],
                    campaign.sendgrid_categories,
                    {"campaign": slug, "send_date": clock.as_of.isoformat()},
                )
            except NotSent as stopped:
                # Stopped between two attempts: nothing is in flight, so these messages
                # were not sent and a later run may try them.
                ledger_mod.set_status(engine, sent_ids, ledger_mod.FAILED, error=str(stopped),
                                      retryable=True)  # fmt: skip
                raise stopped.cause from None
            if outcome.ok:
                ledger_mod.set_status(engine, sent_ids, ok_status,
                                      provider_message_id=outcome.provider_message_id)  # fmt: skip
                rep.sent += len(sent_ids)
            else:
                ledger_mod.set_status(engine, sent_ids, ledger_mod.FAILED, error=outcome.error,
                                      retryable=outcome.retryable)  # fmt: skip
                rep.failed += len(sent_ids)
                if campaign.slot_offers is not None and outcome.retryable:
                    # Never taken by the provider: the slot may be offered again.
                    release_offers(engine, [(r["slot_key"], r["patient_id"])
                                            for _, r in sending])  # fmt: skip
                if outcome.opted_out:
                    _learn_provider_opt_out(engine, campaign, sending, clock)
                log.warning(
                    "campaign %s: batch of %d failed (%s)",
                    slug,
                    len(sent_ids),
                    f"HTTP {outcome.status_code}" if outcome.status_code else "not sent",
                )
            ledger_mod.heartbeat_send_lock(engine, run_id)
            if after_batch is not None:
                after_batch(slug, batch_no)
        if slug in digests:
            email = channels.get("email")
            if email is None:
                rep.digest = f"not sent: no email sender is configured ({_HOW_TO_SEND['email']})"
                continue
            _send_digest(campaign, to_send, clock, engine, email, existing, run_id, rep,
                         ok_status, digests[slug])  # fmt: skip


_HOW_TO_SEND = {
    "email": "set SENDGRID_API_KEY and OUTBOUND_FROM_EMAIL",
    "whatsapp": "set the TWILIO_* settings and TWILIO_WHATSAPP_FROM",
    "sms": "set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_MESSAGING_SERVICE_SID or "
    "TWILIO_FROM_NUMBER",
}


def _recipient(
    settings: OutboundSettings, campaign: Campaign, ledger_id: str, row: dict, sent_on: date
) -> Recipient:
    """One message's recipient: the address on the campaign's channel and its data."""
    fields = {f: row.get(f) or "" for f in RECIPIENT_FIELDS}
    if campaign.channel in ("sms", "whatsapp"):
        # The number in E.164; the WhatsApp channel adds its `whatsapp:` prefix.
        return Recipient(ledger_id=ledger_id, address=row["sms_number"], data=fields)
    link = unsubscribe_link(settings, row["patient_id"], sent_on, campaign.category)
    return Recipient(ledger_id=ledger_id, address=row["email"].strip(),
                     data=fields | link["data"], headers=link["headers"])  # fmt: skip


def _learn_provider_opt_out(
    engine: Engine, campaign: Campaign, sending: list[tuple[str, dict]], clock: RunClock
) -> None:
    """The provider refused the address because its owner opted out there (Twilio 21610):
    the patient and the number are opted out of the channel from now on."""
    with engine.begin() as conn:
        for _, row in sending:
            refuse_number(conn, row.get("sms_number"), [row["patient_id"]], UNSUBSCRIBED_SOURCE,
                          clock.now(), campaign.channel)  # fmt: skip


# What a test send fills a template with when no patient is named: made up, never a
# patient's.
SAMPLE_RECIPIENT = {
    "first_name": "Alex", "case_name": "Knee rehabilitation", "expiry_date": "2026-12-31",
    "days_until_expiry": "30", "sessions_left": "2", "invoiceable_left": "120.00",
    "balance_due": "85.00", "oldest_open_invoice_days": "45",
    "last_appointment_type": "Initial consultation",
}  # fmt: skip
TEST_LEDGER_ID = "test-send"


def test_send(
    settings: OutboundSettings,
    campaign: Campaign,
    channel: Channel,
    to: str,
    patient_id: str | None = None,
    today: date | None = None,
) -> BatchOutcome:
    """One message of the campaign, marked as a test, to `to` (an email address or a
    mobile number, as the campaign's channel needs), filled with SAMPLE_RECIPIENT or
    with `patient_id`'s fields. Nothing is written to the ledger: a test is no patient's
    message and counts toward no cap. A ValueError says what is wrong with the request."""
    from outbound.phones import e164

    if campaign.channel in ("sms", "whatsapp"):
        address = e164(to.removeprefix("whatsapp:"), settings.rules.country)
        if address is None:
            raise ValueError(f"--to {to!r} is not a mobile number this can read (e.g. "
                             "+61412345678, or a national number of CLINIC_COUNTRY)")  # fmt: skip
    else:
        import re

        address = to.strip()
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
            raise ValueError(f"--to {to!r} is not an email address")
    data = dict(SAMPLE_RECIPIENT)
    if patient_id is not None:
        with settings.connect(read_only=True) as con:
            (known,) = con.execute("select count(*) from raw.patients where patient_id = ?",
                                   [patient_id]).fetchall()[0]  # fmt: skip
            found = read_recipient_data(con, pl.DataFrame(
                {"patient_id": [patient_id], "case_id": [None]},
                schema={"patient_id": pl.String, "case_id": pl.String}))  # fmt: skip
        if not known:
            raise ValueError(f"no patient {patient_id!r} in the warehouse")
        data = {f: str(v or "") for f, v in found.row(0, named=True).items()
                if f in RECIPIENT_FIELDS}  # fmt: skip
    content = campaign_content(campaign, bool(settings.web_app_url and settings.unsubscribe_secret),
                               settings.clinic_name)  # fmt: skip
    if campaign.channel in ("sms", "whatsapp"):
        if content.text is not None:
            content = dataclasses.replace(content, text=f"[test] {content.text}")
        recipient = Recipient(ledger_id=TEST_LEDGER_ID, address=address, data=data)
    else:
        if content.subject is not None:
            content = dataclasses.replace(content, subject=f"[test] {content.subject}")
        link = unsubscribe_link(settings, TEST_LEDGER_ID, today or date.today(), campaign.category)
        recipient = Recipient(ledger_id=TEST_LEDGER_ID, address=address,
                              data={f: data.get(f, "") for f in RECIPIENT_FIELDS} | link["data"],
                              headers=link["headers"])  # fmt: skip
    return channel.send_batch([recipient], content, [*campaign.sendgrid_categories, "test-send"],
                              {"campaign": campaign.slug, "test": "true"})  # fmt: skip


SMS_PREVIEW_SCHEMA = {
    "campaign": pl.String, "patient_id": pl.String, "encoding": pl.String,
    "characters": pl.Int64, "segments": pl.Int64,
}  # fmt: skip


def sms_preview(
    settings: OutboundSettings, campaigns: list[Campaign], plan: pl.DataFrame
) -> pl.DataFrame:
    """Each SMS of the plan as it would go out (to send or deferred): its encoding,
    length and the parts it is billed as (GSM-7 160 / 153, UCS-2 70 / 67)."""
    from outbound.phones import encode
    from outbound.templates import fill

    sms = {c.slug: c for c in campaigns if c.channel == "sms"}
    rows = plan.filter(pl.col("campaign").is_in(list(sms)), pl.col("decision") != "suppressed",
                       pl.col("channel") == "sms")  # fmt: skip
    if rows.is_empty():
        return pl.DataFrame(schema=SMS_PREVIEW_SCHEMA)
    with settings.connect(read_only=True) as con:
        data = read_recipient_data(con, rows.select("patient_id", "case_id").unique())
    rows = rows.join(data, on=["patient_id", "case_id"], how="left", nulls_equal=True)
    texts = {slug: campaign_content(c, clinic_name=settings.clinic_name).text or ""
             for slug, c in sms.items()}  # fmt: skip
    out = []
    for r in rows.iter_rows(named=True):
        text = fill(texts[r["campaign"]], {f: str(r.get(f) or "") for f in RECIPIENT_FIELDS})
        e = encode(text)
        out.append((r["campaign"], r["patient_id"], e.encoding, len(text), e.segments))
    return pl.DataFrame(out, schema=SMS_PREVIEW_SCHEMA, orient="row")


def unsubscribe_link(
    settings: OutboundSettings, patient_id: str, sent_on: date, category: str | None = None
) -> dict:
    """A patient's one-click unsubscribe link: its URL for templates (`r.unsubscribe_url`)
    and the RFC 8058 headers; empty when the web app's address or secret is not set."""
    from outbound.unsubscribe import headers_for, make_token, unsubscribe_url

    if not (settings.web_app_url and settings.unsubscribe_secret):
        return {"data": {"unsubscribe_url": ""}, "headers": {}}
    token = make_token(settings.unsubscribe_secret, patient_id, "email", sent_on, category)
    url = unsubscribe_url(settings.web_app_url, token)
    return {"data": {"unsubscribe_url": url}, "headers": headers_for(url)}


def _address_key(channel: str, row: dict) -> str | None:
    """The address a message goes to, keyed as the plan keys addresses."""
    if channel == "email":
        return f"email:{row['email'].strip().lower()}" if row.get("email") else None
    return f"{channel}:{row['sms_number']}" if row.get("sms_number") else None


def _ledger_rows(
    engine: Engine,
    slug: str,
    chunk: list[dict],
    retryable: dict[tuple[str, str], str],
    clock: RunClock,
    run_id: str,
    rep: CampaignSendReport,
) -> list[str | None]:
    """The ledger row each message of the batch goes out under (None: not this run's)."""
    fresh = [r for r in chunk if (slug, r["patient_id"]) not in retryable]
    entries = [
        ledger_mod.LedgerEntry(
            campaign=slug,
            recipient=r["patient_id"],
            patient_id=r["patient_id"],
            case_id=r["case_id"],
            segment_slug=r["segment_slug"],
            channel=r["channel"],
            address_key=_address_key(r["channel"], r),
        )
        for r in fresh
    ]
    # Each row records when its own request is made: that is what the cap counts by.
    inserted = iter(ledger_mod.insert_pending(engine, entries, clock.as_of, run_id, clock.now()))
    keys = [(slug, r["patient_id"]) for r in chunk]
    wanted = [retryable[k] for k in keys if k in retryable]
    claimed = set(ledger_mod.claim_retries(engine, wanted, run_id, clock.now()))
    rep.retried += len(claimed)
    ids: list[str | None] = []
    for r in chunk:
        key = (slug, r["patient_id"])
        if key in retryable:
            ids.append(retryable[key] if retryable[key] in claimed else None)
        else:
            ids.append(next(inserted))
    rep.already_in_ledger += sum(1 for i in ids if i is None)
    return ids


def _send_digest(
    campaign: Campaign,
    to_send: pl.DataFrame,
    clock: RunClock,
    engine: Engine,
    channel: Channel,
    existing: dict,
    run_id: str,
    rep: CampaignSendReport,
    ok_status: str,
    content: Content,
) -> None:
    cases = to_send.filter(
        (pl.col("campaign") == campaign.slug) & (pl.col("channel") == STAFF_CHANNEL)
    )
    if (campaign.slug, ledger_mod.STAFF_RECIPIENT) in existing:
        rep.digest = "already sent today"
        return
    assert campaign.staff_digest is not None
    [ledger_id] = ledger_mod.insert_pending(
        engine,
        [
            ledger_mod.LedgerEntry(
                campaign=campaign.slug,
                recipient=ledger_mod.STAFF_RECIPIENT,
                patient_id=None,
                case_id=None,
                segment_slug=campaign.segment,
                channel=STAFF_CHANNEL,
            )
        ],
        clock.as_of,
        run_id,
        clock.now(),
    )
    if ledger_id is None:
        rep.digest = "already sent today"
        return
    recipients = [Recipient(ledger_id=ledger_id, address=a) for a in campaign.staff_digest.to]
    rep.requests += 1
    outcome = channel.send_batch(
        recipients,
        content,
        [*campaign.sendgrid_categories, "staff-digest"],
        {"campaign": campaign.slug, "send_date": clock.as_of.isoformat()},
    )
    if outcome.ok:
        ledger_mod.set_status(
            engine, [ledger_id], ok_status, provider_message_id=outcome.provider_message_id
        )
        rep.digest = f"sent to {len(recipients)} staff address(es), {cases.height} cases"
    else:
        ledger_mod.set_status(engine, [ledger_id], ledger_mod.FAILED, error=outcome.error,
                              retryable=outcome.retryable)  # fmt: skip
        rep.digest = f"failed ({outcome.error})"
