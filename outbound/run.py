"""One outbound run: load campaigns, read the warehouse, plan, and (with a key) send.

The CLI and the Dagster assets both call these functions; they hold no business rules of
their own (those are in `selection`), only the reading, writing and ledger bookkeeping.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
from sqlalchemy.engine import Engine

from clinic_audiences.config import Settings, parse_as_of, validate_timezone
from ingest.warehouse import connect
from outbound import ledger as ledger_mod
from outbound.campaigns import (
    CAMPAIGNS_DIR,
    Campaign,
    FrequencyCap,
    default_segment_folders,
    load_campaigns,
    segment_library,
)
from outbound.channels import (
    DEFAULT_SENDGRID_HOST,
    Channel,
    DeliveryUnknown,
    Recipient,
    SendGridEmail,
)
from outbound.selection import (
    SEND,
    STAFF_CHANNEL,
    RunClock,
    build_candidates,
    due_campaigns,
    plan_sends,
)
from outbound.templates import RECIPIENT_FIELDS, campaign_content, digest_content
from outbound.warehouse import (
    read_contacts,
    read_extract_opt_outs,
    read_members,
    read_recipient_data,
)
from state import connect_state, migrate

log = logging.getLogger(__name__)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number") from None


def _env_bool(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class OutboundSettings:
    duckdb_path: str
    state_db_url: str
    timezone: str
    segments_path: Path | None = None
    campaigns_dir: Path = CAMPAIGNS_DIR
    cap: FrequencyCap = field(default_factory=FrequencyCap)

    @classmethod
    def from_env(cls) -> OutboundSettings:
        s = Settings.from_env()
        return cls(
            duckdb_path=str(s.duckdb_path),
            state_db_url=s.state_db_url,
            timezone=s.clinic_timezone,
            segments_path=s.segments_path,
            campaigns_dir=Path(os.environ.get("CAMPAIGNS_PATH") or CAMPAIGNS_DIR),
            cap=cap_from_env(),
        )


def cap_from_env() -> FrequencyCap:
    """The global frequency cap: OUTBOUND_CAP_MAX_MESSAGES per OUTBOUND_CAP_WINDOW_DAYS."""
    return FrequencyCap(
        max_messages=_env_int("OUTBOUND_CAP_MAX_MESSAGES", 1),
        window_days=_env_int("OUTBOUND_CAP_WINDOW_DAYS", 7),
    )


@dataclass(frozen=True)
class SenderSettings:
    """From the environment only: the key is never in a file or a log."""

    api_key: str | None
    host: str
    from_email: str | None
    from_name: str | None
    sandbox: bool

    @classmethod
    def from_env(cls) -> SenderSettings:
        # OUTBOUND_SEND_DISABLED (demos, staging copies of production data) wins over a
        # key that happens to be in the environment: the run stays a dry run.
        disabled = _env_bool("OUTBOUND_SEND_DISABLED")
        return cls(
            api_key=None if disabled else (os.environ.get("SENDGRID_API_KEY") or None),
            host=os.environ.get("SENDGRID_API_HOST") or DEFAULT_SENDGRID_HOST,
            from_email=os.environ.get("OUTBOUND_FROM_EMAIL") or None,
            from_name=os.environ.get("OUTBOUND_FROM_NAME") or None,
            sandbox=_env_bool("SENDGRID_SANDBOX_MODE"),
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


def campaigns_for(settings: OutboundSettings) -> list[Campaign]:
    known = segment_library(default_segment_folders(settings.segments_path))
    return load_campaigns(settings.campaigns_dir, known)


def state_engine(settings: OutboundSettings) -> Engine:
    """The state store with every registered migration applied (never rebuilt)."""
    engine = connect_state(settings.state_db_url)
    migrate(engine)
    return engine


def run_clock(as_of: str | None, timezone: str) -> RunClock:
    """The as-of date (default today) at the current clinic time, or OUTBOUND_RUN_TIME.

    OUTBOUND_RUN_TIME (HH:MM, clinic time) pins the clock so that a dry run with --as-of
    is reproducible, quiet hours included.
    """
    day = parse_as_of(as_of, timezone)
    pinned = os.environ.get("OUTBOUND_RUN_TIME")
    if not pinned:
        return RunClock.at(datetime.now(UTC), timezone, day)
    try:
        at = time.fromisoformat(pinned)
    except ValueError:
        raise ValueError(f"OUTBOUND_RUN_TIME={pinned!r} is not a time; write HH:MM") from None
    return RunClock.at(datetime.combine(day, at, ZoneInfo(timezone)), timezone, day)


@dataclass
class Planned:
    candidates: pl.DataFrame
    plan: pl.DataFrame
    contacts: pl.DataFrame


def read_candidates(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock
) -> pl.DataFrame:
    """Members of the due campaigns' segments, one row per (campaign, member)."""
    slugs = sorted({c.segment for c in due_campaigns(campaigns, clock.as_of)})
    with connect(settings.duckdb_path, read_only=True) as con:
        members = read_members(con, slugs, clock.as_of)
    return build_candidates(campaigns, members, clock.as_of)


def read_history(
    settings: OutboundSettings, campaigns: list[Campaign], clock: RunClock, engine: Engine
) -> pl.DataFrame:
    """Ledger rows recent enough to matter for the longest cap window in use."""
    windows = [settings.cap.window_days] + [
        c.frequency_cap.window_days for c in campaigns if c.frequency_cap
    ]
    return ledger_mod.read_history(engine, since=clock.as_of - timedelta(days=max(windows + [1])))


def read_opt_outs(settings: OutboundSettings, clock: RunClock, engine: Engine) -> pl.DataFrame:
    """Opt-outs in force: the extract's (dated on or before the as-of date) and learned ones."""
    with connect(settings.duckdb_path, read_only=True) as con:
        extract = read_extract_opt_outs(con, clock.as_of, settings.timezone)
    return pl.concat([extract, ledger_mod.read_learned_opt_outs(engine)]).unique()


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
    with connect(settings.duckdb_path, read_only=True) as con:
        contacts = read_contacts(con)
    opt_outs = read_opt_outs(settings, clock, engine)
    history = read_history(settings, campaigns, clock, engine)
    plan = plan_sends(campaigns, candidates, contacts, opt_outs, history, clock, settings.cap)
    return Planned(candidates=candidates, plan=plan, contacts=contacts)


@dataclass
class CampaignSendReport:
    campaign: str
    planned: int = 0
    already_in_ledger: int = 0
    sent: int = 0
    failed: int = 0
    requests: int = 0
    digest: str = ""


@dataclass
class SendReport:
    send_date: date
    run_id: str
    dry_run: bool
    sandbox: bool = False
    unknown: int = 0
    stopped: str | None = None
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


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def send_planned(
    settings: OutboundSettings,
    campaigns: list[Campaign],
    planned: Planned,
    clock: RunClock,
    engine: Engine,
    channel: Channel | None,
    sandbox: bool = False,
    after_batch: Callable[[str, int], None] | None = None,
) -> SendReport:
    """Send the plan's `send` rows that the ledger does not hold yet for the as-of date.

    `channel=None` is a dry run: nothing is written to the ledger. A batch whose outcome is
    unknowable (connection lost mid-request) stops the run with its rows left `pending`.
    """
    run_id = ledger_mod.new_run_id()
    report = SendReport(
        send_date=clock.as_of, run_id=run_id, dry_run=channel is None, sandbox=sandbox
    )
    to_send = planned.plan.filter(pl.col("decision") == SEND)
    by_slug = {c.slug: c for c in campaigns}
    order = sorted({*to_send["campaign"].to_list()}, key=lambda s: (-by_slug[s].priority, s))
    for slug in order:
        report.campaigns[slug] = CampaignSendReport(
            slug, planned=to_send.filter(pl.col("campaign") == slug).height
        )
    if channel is None:
        return report

    report.unknown = ledger_mod.mark_abandoned_unknown(engine, clock.as_of, run_id)
    existing = ledger_mod.existing_keys(engine, clock.as_of)
    patient_rows = to_send.filter(pl.col("channel") != STAFF_CHANNEL)
    with connect(settings.duckdb_path, read_only=True) as con:
        data = read_recipient_data(con, to_send.select("patient_id", "case_id").unique())
    addresses = planned.contacts.select("patient_id", "email")
    patient_rows = patient_rows.join(addresses, on="patient_id", how="left").join(
        data, on=["patient_id", "case_id"], how="left", nulls_equal=True
    )
    ok_status = ledger_mod.SANDBOX if sandbox else ledger_mod.SENT
    batch_no = 0
    try:
        for slug in order:
            campaign = by_slug[slug]
            rep = report.campaigns[slug]
            rows = [
                r
                for r in patient_rows.filter(pl.col("campaign") == slug).iter_rows(named=True)
                if (slug, r["patient_id"]) not in existing
            ]
            rep.already_in_ledger = patient_rows.filter(pl.col("campaign") == slug).height - len(
                rows
            )
            if rows:
                content = campaign_content(campaign)
            for chunk in _chunks(rows, campaign.batch_size):
                entries = [
                    ledger_mod.LedgerEntry(
                        campaign=slug,
                        recipient=r["patient_id"],
                        patient_id=r["patient_id"],
                        case_id=r["case_id"],
                        segment_slug=r["segment_slug"],
                        channel=r["channel"],
                    )
                    for r in chunk
                ]
                ids = ledger_mod.insert_pending(engine, entries, clock.as_of, run_id)
                recipients = [
                    Recipient(
                        ledger_id=i,
                        address=r["email"].strip(),
                        data={f: r.get(f) or "" for f in RECIPIENT_FIELDS},
                    )
                    for i, r in zip(ids, chunk, strict=True)
                ]
                rep.requests += 1
                batch_no += 1
                outcome = channel.send_batch(
                    recipients,
                    content,
                    campaign.sendgrid_categories,
                    {"campaign": slug, "send_date": clock.as_of.isoformat()},
                )
                if outcome.ok:
                    ledger_mod.set_status(
                        engine, ids, ok_status, provider_message_id=outcome.provider_message_id
                    )
                    rep.sent += len(ids)
                else:
                    ledger_mod.set_status(engine, ids, ledger_mod.FAILED, error=outcome.error)
                    rep.failed += len(ids)
                    log.warning(
                        "campaign %s: batch of %d failed with HTTP %s",
                        slug,
                        len(ids),
                        outcome.status_code,
                    )
                if after_batch is not None:
                    after_batch(slug, batch_no)
            _send_digest(
                settings,
                campaign,
                to_send,
                clock,
                engine,
                channel,
                existing,
                run_id,
                rep,
                ok_status,
            )
    except DeliveryUnknown as e:
        report.stopped = str(e)
    return report


def _send_digest(
    settings: OutboundSettings,
    campaign: Campaign,
    to_send: pl.DataFrame,
    clock: RunClock,
    engine: Engine,
    channel: Channel,
    existing: dict,
    run_id: str,
    rep: CampaignSendReport,
    ok_status: str,
) -> None:
    if campaign.staff_digest is None:
        return
    cases = to_send.filter(
        (pl.col("campaign") == campaign.slug) & (pl.col("channel") == STAFF_CHANNEL)
    )
    if cases.is_empty():
        return
    if (campaign.slug, ledger_mod.STAFF_RECIPIENT) in existing:
        rep.digest = "already sent today"
        return
    with connect(settings.duckdb_path, read_only=True) as con:
        data = read_recipient_data(con, cases.select("patient_id", "case_id").unique())
    listed = data.sort("case_id", "patient_id", nulls_last=True).to_dicts()
    content = digest_content(campaign, listed)
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
    )
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
        rep.digest = f"sent to {len(recipients)} staff address(es), {len(listed)} cases"
    else:
        ledger_mod.set_status(engine, [ledger_id], ledger_mod.FAILED, error=outcome.error)
        rep.digest = f"failed (HTTP {outcome.status_code})"
