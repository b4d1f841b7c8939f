"""Who gets which message in a run: candidates, then suppression in a fixed order.

`plan_sends` is pure: frames and campaign objects in, the plan out. Suppression order
(docs/outbound.md), each step seeing only the candidates the earlier steps kept:

1. `opted_out` / `no_consent` — an opt-out for the channel or `all` (extract or learned),
   consent explicitly false, or (campaigns requiring it) consent not explicitly true;
2. `no_address` — no usable address for the channel;
3. `frequency_cap` — messaged by any campaign within the cap window, counted in real time
   by when each request was made, whatever day it was planned for (staff digests and
   failed / sandbox sends do not count);
4. `lower_priority` — a higher-priority campaign claims the patient (or the patient's
   address) in this run (equal priorities: the campaign slug that sorts first wins);
5. `same_address` — another patient record with the same address is messaged by the same
   campaign in this run (the lowest patient id is the one messaged);
6. `quiet_hours` — outside the campaign's send window or inside its quiet hours: decision
   `deferred`, the patient stays a candidate for the next run.

An address is a person: duplicate patient records that share an email address are one
recipient. An opt-out (or consent refused) on any of them suppresses the address for all;
the cap counts the messages of all of them; and one address gets at most one message per
run, whatever the cap allows over the window.
"""

from __future__ import annotations

import time as monotonic_clock
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import polars as pl

from outbound.campaigns import Campaign, FrequencyCap, TimeRange
from outbound.ledger import DELIVERED_OR_MAYBE, HISTORY_SCHEMA, STAFF_RECIPIENT

SEND, SUPPRESSED, DEFERRED = "send", "suppressed", "deferred"
OPTED_OUT, NO_CONSENT, NO_ADDRESS = "opted_out", "no_consent", "no_address"
FREQUENCY_CAP, LOWER_PRIORITY, QUIET_HOURS = "frequency_cap", "lower_priority", "quiet_hours"
SAME_ADDRESS = "same_address"
SUPPRESSION_ORDER = (
    OPTED_OUT, NO_CONSENT, NO_ADDRESS, FREQUENCY_CAP, LOWER_PRIORITY, SAME_ADDRESS, QUIET_HOURS,
)  # fmt: skip
STAFF_CHANNEL = "staff_email"

# has_email in the marts: non-blank and of the form x@y.z.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

# How each channel finds its address and consent column in the patient contacts.
CHANNEL_ADDRESS = {
    "email": ("email", "accepted_email_marketing"),
    "sms": ("mobile", "accepted_sms_marketing"),
    # WhatsApp has no consent column: it needs an opt-in of its own (docs/consent.md).
    "whatsapp": ("mobile", None),
}
PATIENT_CHANNELS = ("email", "sms", "whatsapp")

# The plan is a chain of joins over a few hundred thousand candidates: polars' in-memory
# engine runs it about a fifth faster than the streaming one (benchmarks/bench_outbound.py).
ENGINE = "in-memory"

PLAN_SCHEMA = {
    "campaign": pl.String,
    "segment_slug": pl.String,
    "patient_id": pl.String,
    "case_id": pl.String,
    "channel": pl.String,
    "priority": pl.Int64,
    "decision": pl.String,
    "reason": pl.String,
    "detail": pl.String,
}

MEMBERS_SCHEMA = {"segment_slug": pl.String, "patient_id": pl.String, "case_id": pl.String}
CONTACTS_SCHEMA = {
    "patient_id": pl.String,
    "first_name": pl.String,
    "email": pl.String,
    "mobile": pl.String,
    "accepted_email_marketing": pl.Boolean,
    "accepted_sms_marketing": pl.Boolean,
}
OPT_OUTS_SCHEMA = {"patient_id": pl.String, "channel": pl.String}
# Where a patient's clock is; optional in `contacts` (absent: the clinic's).
ADDRESS_SCHEMA = {"state": pl.String, "country": pl.String, "has_whatsapp": pl.Boolean}


@dataclass(frozen=True)
class ChannelRules:
    """How SMS numbers are read (the clinic's country) and the hours commercial SMS keeps
    in the patient's own time zone (None: only the campaign's own window)."""

    country: str = "AU"
    recipient_hours: TimeRange | None = None
    hours_label: str = ""


# Hours for commercial SMS in the recipient's own time: the US rule is fixed (08:00 to
# 21:00); Australia's is a default the clinic may change (OUTBOUND_RECIPIENT_HOURS).
HOURS_PRESETS = {
    "US": (time(8, 0), time(21, 0), True),
    "AU": (time(9, 0), time(20, 0), False),
}


def channel_rules(country: str, hours: str | None = None) -> ChannelRules:
    """The rules for a clinic in `country` (CLINIC_COUNTRY), with `hours` ("HH:MM-HH:MM",
    OUTBOUND_RECIPIENT_HOURS) instead of the preset. A ValueError says what is wrong."""
    from outbound.phones import check_country

    country = check_country(country)
    preset = HOURS_PRESETS.get(country)
    if hours is None:
        if preset is None:
            return ChannelRules(country)
        start, end, _ = preset
        return ChannelRules(country, TimeRange(start=start, end=end), f"{country} hours")
    try:
        a, b = (time.fromisoformat(x.strip()) for x in hours.split("-"))
        window = TimeRange(start=a, end=b)
    except ValueError:
        raise ValueError(
            f"OUTBOUND_RECIPIENT_HOURS={hours!r} is not a range of clock times; write it "
            "as HH:MM-HH:MM, e.g. 09:00-20:00"
        ) from None
    if preset is not None and preset[2]:
        start, end, _ = preset
        if not (start <= window.start < window.end <= end):
            raise ValueError(
                f"OUTBOUND_RECIPIENT_HOURS={hours!r} is wider than {country} allows for "
                f"commercial SMS ({start:%H:%M}-{end:%H:%M} recipient time); narrow it or "
                "unset it"
            )
    return ChannelRules(country, window, "the clinic's recipient hours")


@dataclass(frozen=True)
class RunClock:
    """The day a plan is for, the clinic clock time it is planned at, and the real moment.

    `local_now` is the moment the plan is evaluated at (the as-of day at `local_time`);
    `real_now` is the actual time. Only a plan for the clinic's real today may be sent.
    """

    as_of: date
    local_time: time
    local_now: datetime
    real_now: datetime
    today: date  # the real date in the clinic time zone
    # When the clock was made (monotonic seconds), so that `now()` moves with real time.
    started: float = field(default_factory=monotonic_clock.monotonic, compare=False, repr=False)

    def now(self) -> datetime:
        """The real time now: `real_now` plus what has passed since the clock was made (so a
        simulated clock in a test moves on from its own start)."""
        return self.real_now + timedelta(seconds=monotonic_clock.monotonic() - self.started)

    def sending(self, timezone: str) -> RunClock:
        """The clock a send goes by: the real time of day, never a pinned one, so send
        windows and quiet hours hold for what is actually sent."""
        return RunClock.at(self.now(), timezone, self.as_of)

    @classmethod
    def at(
        cls,
        run_at: datetime,
        timezone: str,
        as_of: date | None = None,
        real_now: datetime | None = None,
    ) -> RunClock:
        """A clock at `run_at` (the clinic clock time a plan is made at) for day `as_of`
        (default: run_at's day); `real_now` is the actual time (default: run_at)."""
        if run_at.tzinfo is None or (real_now is not None and real_now.tzinfo is None):
            raise ValueError("run_at and real_now must carry a time zone (aware datetimes)")
        zone = ZoneInfo(timezone)
        local = run_at.astimezone(zone)
        day = as_of or local.date()
        # With an explicit as-of date the run is evaluated at the same clock time that day.
        local_now = datetime.combine(day, local.time()).replace(tzinfo=zone)
        real = real_now or run_at
        return cls(
            as_of=day,
            local_time=local.time(),
            local_now=local_now,
            real_now=real,
            today=real.astimezone(zone).date(),
        )

    @property
    def is_today(self) -> bool:
        """Whether the plan is for the clinic's real today: only such a plan is sent."""
        return self.as_of == self.today

    @property
    def cap_moment(self) -> datetime:
        """The moment the frequency cap looks back from: now for today's plan, the plan's
        own moment for a dry run of another day."""
        return self.real_now if self.is_today else self.local_now

    def cap_start(self, window_days: int) -> datetime:
        """Messages requested at or after this (UTC) count toward a cap of `window_days`."""
        return (self.cap_moment - timedelta(days=window_days)).astimezone(UTC)


def next_window_opens(campaign: Campaign, local_now: datetime) -> datetime:
    """The first moment after `local_now` at which the campaign may send."""
    boundaries = [campaign.send_window.start]
    if campaign.quiet_hours is not None:
        boundaries.append(campaign.quiet_hours.end)
    options = []
    for offset in (0, 1, 2):
        day = local_now.date() + timedelta(days=offset)
        for b in boundaries:
            moment = datetime.combine(day, b).replace(tzinfo=local_now.tzinfo)
            if moment > local_now and campaign.in_window(b):
                options.append(moment)
    return min(options)


def _empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def _campaign_table(campaigns: list[Campaign], clock: RunClock, cap: FrequencyCap) -> pl.DataFrame:
    rows = []
    for c in campaigns:
        cc = c.frequency_cap or cap
        open_now = c.in_window(clock.local_time)
        rows.append(
            {
                "campaign": c.slug,
                "segment_slug": c.segment,
                "priority": c.priority,
                "channel": c.channel,
                "notify_patient": c.notify_patient,
                "staff_digest": c.staff_digest is not None,
                "requires_explicit_consent": c.requires_explicit_consent,
                "restricted_hours": c.purpose == "commercial",
                "transactional": c.purpose == "transactional",
                "category": c.category,
                "cap_max": cc.max_messages,
                "cap_window": cc.window_days,
                "open_now": open_now,
                "next_window": None
                if open_now
                else next_window_opens(c, clock.local_now).isoformat(timespec="minutes"),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "campaign": pl.String,
            "segment_slug": pl.String,
            "priority": pl.Int64,
            "channel": pl.String,
            "notify_patient": pl.Boolean,
            "staff_digest": pl.Boolean,
            "requires_explicit_consent": pl.Boolean,
            "restricted_hours": pl.Boolean,
            "transactional": pl.Boolean,
            "category": pl.String,
            "cap_max": pl.Int64,
            "cap_window": pl.Int64,
            "open_now": pl.Boolean,
            "next_window": pl.String,
        },
    )


def due_campaigns(campaigns: list[Campaign], as_of: date) -> list[Campaign]:
    """Enabled campaigns whose schedule includes the as-of date."""
    return [c for c in campaigns if c.enabled and c.runs_on(as_of)]


def build_candidates(campaigns: list[Campaign], members: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """One row per (due campaign, member): the campaigns' segment members, before suppression.

    A patient with several cases in a case segment is one patient candidate (the first
    case id) but every case is listed for the staff digest.
    """
    table = pl.DataFrame(
        [
            {
                "campaign": c.slug,
                "segment_slug": c.segment,
                "priority": c.priority,
                "channel": c.channel,
            }
            for c in due_campaigns(campaigns, as_of)
        ],
        schema={
            "campaign": pl.String,
            "segment_slug": pl.String,
            "priority": pl.Int64,
            "channel": pl.String,
        },
    )
    # Members made unique before the join: a campaign has one segment, so the joined
    # rows are then unique too, and there are fewer rows to compare.
    return (
        members.select(list(MEMBERS_SCHEMA))
        .cast(MEMBERS_SCHEMA)
        .unique()
        .join(table.select("campaign", "segment_slug", "priority", "channel"), on="segment_slug")
        .select("campaign", "segment_slug", "patient_id", "case_id", "channel", "priority")
        .sort("campaign", "patient_id", "case_id", nulls_last=True)
    )


def plan_sends(
    campaigns: list[Campaign],
    candidates: pl.DataFrame,
    contacts: pl.DataFrame,
    opt_outs: pl.DataFrame,
    history: pl.DataFrame,
    clock: RunClock,
    cap: FrequencyCap | None = None,
    rules: ChannelRules | None = None,
    refused_addresses: pl.DataFrame | None = None,
    category_opt_outs: pl.DataFrame | None = None,
    opt_ins: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The plan: one row per patient candidate and per staff-digest case, with a decision.

    `candidates` comes from `build_candidates`; `contacts` holds every patient's address
    and consent (and `state` / `country`, where their clock is); `opt_outs` every
    (patient_id, channel) opt-out known now, whatever its date; `history` the ledger rows
    (campaign, recipient, send_date, status, attempted_at, channel); `rules` how numbers
    are read and the hours commercial SMS keeps; `refused_addresses` recipient keys
    learned to refuse whoever has them (`sms:+61...`, `email:...`);
    `category_opt_outs` (patient_id, category) the unsubscribe categories patients left
    (`all`: every commercial one), which stop commercial campaigns only; `opt_ins`
    (patient_id, channel) the opt-ins WhatsApp needs.
    """
    due = due_campaigns(campaigns, clock.as_of)
    table = _campaign_table(due, clock, cap or FrequencyCap())
    # One lazy query, collected once, so polars can prune and parallelise across steps.
    campaigns_lf = table.lazy()
    cand = (
        candidates.lazy()
        .select("campaign", "patient_id", "case_id")
        .join(campaigns_lf, on="campaign")
    )

    # Patient messages: one candidate per (campaign, patient), first case id.
    patients = (
        cand.filter(pl.col("notify_patient"))
        .group_by("campaign", "patient_id")
        .agg(pl.col("case_id").drop_nulls().min())
        .join(campaigns_lf, on="campaign")
    )
    rules = rules or ChannelRules()
    clinic_zone = str(clock.local_now.tzinfo)
    # Who a message goes to: the channel's normalised address, else the patient alone.
    # Computed once (every channel, the cap and the categories read it).
    # Only the channels the candidates are messaged on: an address key of another
    # channel can match no candidate's (a phone's keys cost E.164 and time zones).
    used = {c.channel for c in due if c.notify_patient}
    people = (
        _people(contacts, rules, clinic_zone, used)
        .select("patient_id", *(c for _, c in CHANNEL_ADDRESS.values() if c),
                *(f"{ch}_key" for ch in CHANNEL_ADDRESS), "zone")
        .collect(engine=ENGINE)
        .lazy()
    )  # fmt: skip
    # One row per candidate from here on: each join below is on a key the other side
    # holds once (checked for the contacts, made so for the rest).
    patients = patients.join(people, on="patient_id", how="left", validate="m:1").with_columns(
        _channel_key().alias("recipient_key"),
        pl.when(pl.col("channel") == "sms")
        .then(pl.col("accepted_sms_marketing"))
        .when(pl.col("channel") == "whatsapp")
        .then(pl.lit(None, dtype=pl.Boolean))
        .otherwise(pl.col("accepted_email_marketing"))
        .alias("consent"),
    )
    # The flags below are tested as membership of a set (one column each) rather than
    # joined on: a join gathers every column of the candidates again.
    def member_of(column: str, values: pl.LazyFrame) -> pl.Expr:
        found = values.select(pl.col(column).cast(pl.String)).drop_nulls().unique()
        return pl.col(column).is_in(found.collect(engine=ENGINE)[column].implode())

    def on_channel(ch: str, ids: pl.LazyFrame) -> pl.Expr:
        return (pl.col("channel") == ch) & member_of("patient_id", ids)

    # WhatsApp is sent only to who opted in to it (and every WhatsApp campaign asks).
    if "whatsapp" in used and opt_ins is not None and not opt_ins.is_empty():
        ins = opt_ins.lazy().filter(pl.col("channel") == "whatsapp")
        opted_in = pl.when(on_channel("whatsapp", ins)).then(True)
    else:
        opted_in = pl.lit(None, dtype=pl.Boolean)
    patients = patients.with_columns(
        pl.when(pl.col("channel") == "whatsapp").then(opted_in)
        .otherwise(pl.col("consent")).alias("consent"),
        (pl.col("requires_explicit_consent") | (pl.col("channel") == "whatsapp"))
        .alias("requires_explicit_consent"),
    )  # fmt: skip
    # Every opt-out as (patient, channel): one for `all` stands for each channel.
    listed = opt_outs.lazy().select("patient_id", "channel").cast(OPT_OUTS_SCHEMA)
    opted = {ch: listed.filter(pl.col("channel").is_in([ch, "all"])).select("patient_id")
             for ch in sorted(used)}  # fmt: skip
    patients = patients.with_columns(
        pl.any_horizontal(pl.lit(False), *(on_channel(ch, ids) for ch, ids in opted.items()))
        .alias("has_opt_out")
    )
    # Addresses refused on any patient record that has them, channel by channel (and
    # addresses learned to refuse, such as a number that replied STOP): by an opt-out,
    # which every message honours, or by a no to marketing, which transactional ones pass.
    none = pl.LazyFrame(schema={"recipient_key": pl.String})
    by_opt_out, by_consent = [none], [none]
    for ch, ids in opted.items():
        key = pl.col(f"{ch}_key").alias("recipient_key")
        # The records with an opt-out for the channel: a few, looked up among everyone.
        by_opt_out.append(ids.join(people, on="patient_id").select(key))
        consent_col = CHANNEL_ADDRESS[ch][1]
        if consent_col is not None:
            by_consent.append(people.filter(pl.col(consent_col) == False).select(key))  # noqa: E712
    if refused_addresses is not None:
        by_opt_out.append(refused_addresses.lazy().select(pl.col("recipient_key").cast(pl.String)))
    patients = patients.with_columns(
        member_of("recipient_key", pl.concat(by_opt_out)).alias("address_refused"),
        member_of("recipient_key", pl.concat(by_consent)).alias("address_said_no"),
    )
    # Collected once here: the category and cap steps below each read the candidates
    # more than once, and a lazy frame read twice is computed twice.
    try:
        collected = patients.collect(engine=ENGINE)
    except pl.exceptions.ComputeError as err:
        if "m:1" not in str(err):
            raise
        raise ValueError(
            "the patient contacts hold more than one row for a patient_id; each patient "
            "record must appear once (raw.patients keeps the last row of a repeated id)"
        ) from None
    patients = _join_category_opt_outs(collected.lazy(), people, category_opt_outs, used)

    patients = patients.join(_prior_messages(patients, people, history, clock),
                             on=["campaign", "patient_id"], how="left")  # fmt: skip

    consent = pl.col("consent")
    marketing_no = (
        (consent == False)  # noqa: E712
        | pl.col("address_said_no").fill_null(False)
        | pl.col("category_opt_out").fill_null(False)
    )
    step = (
        pl.when(
            pl.col("has_opt_out").fill_null(False)
            | pl.col("address_refused").fill_null(False)
            | (~pl.col("transactional") & marketing_no)
        )
        .then(pl.lit(OPTED_OUT))
        .when(pl.col("requires_explicit_consent") & ~consent.fill_null(False))
        .then(pl.lit(NO_CONSENT))
        .when(pl.col("recipient_key").str.starts_with("patient:"))
        .then(pl.lit(NO_ADDRESS))
        .when(pl.col("prior_messages").fill_null(0) >= pl.col("cap_max"))
        .then(pl.lit(FREQUENCY_CAP))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    patients = patients.with_columns(step.alias("reason"))
    patients = patients.join(_recipient_hours(clock, rules, clinic_zone), on="zone", how="left")

    # One message per person per run: of the candidates left that share a patient or an
    # address, the highest priority, then the campaign slug, then the patient id first.
    patients = patients.collect(engine=ENGINE).lazy()
    patients = patients.join(_winners(patients), on=["campaign", "patient_id"], how="left")
    outside = (
        pl.col("restricted_hours")
        & pl.col("channel").is_in(["sms", "whatsapp"])
        & ~pl.col("recipient_open").fill_null(True)
    )
    patients = patients.with_columns(
        pl.when(pl.col("reason").is_null() & (pl.col("winner") != pl.col("campaign")))
        .then(pl.lit(LOWER_PRIORITY))
        .when(pl.col("reason").is_null() & (pl.col("winner_patient") != pl.col("patient_id")))
        .then(pl.lit(SAME_ADDRESS))
        .when(pl.col("reason").is_null() & (~pl.col("open_now") | outside))
        .then(pl.lit(QUIET_HOURS))
        .otherwise(pl.col("reason"))
        .alias("reason"),
        pl.when(pl.col("open_now"))
        .then(pl.lit("outside ") + pl.col("hours_detail"))
        .otherwise(pl.lit("next window ") + pl.col("next_window"))
        .alias("deferred_detail"),
    )
    patient_plan = patients.select(
        "campaign",
        "segment_slug",
        "patient_id",
        "case_id",
        "channel",
        "priority",
        pl.when(pl.col("reason").is_null())
        .then(pl.lit(SEND))
        .when(pl.col("reason") == QUIET_HOURS)
        .then(pl.lit(DEFERRED))
        .otherwise(pl.lit(SUPPRESSED))
        .alias("decision"),
        pl.col("reason").fill_null(""),
        pl.when(pl.col("reason") == LOWER_PRIORITY)
        .then(pl.lit("claimed by ") + pl.col("winner"))
        .when((pl.col("reason") == OPTED_OUT) & ~pl.col("has_opt_out").fill_null(False)
              & ~pl.col("address_refused").fill_null(False)
              & pl.col("category_opt_out").fill_null(False))
        .then(pl.lit("opted out of ") + pl.col("category"))
        .when((pl.col("reason") == OPTED_OUT) & ~pl.col("has_opt_out").fill_null(False)
              & (consent != False).fill_null(True))  # noqa: E712
        .then(pl.lit("the address opted out on another patient record"))
        .when(pl.col("reason") == SAME_ADDRESS)
        .then(pl.lit("the address is messaged for another patient record"))
        .when(pl.col("reason") == QUIET_HOURS)
        .then(pl.col("deferred_detail"))
        .otherwise(pl.lit(""))
        .alias("detail"),
    )

    # Staff digests list every case of the segment; only the send window applies to them.
    staff_plan = cand.filter(pl.col("staff_digest")).select(
        "campaign",
        "segment_slug",
        "patient_id",
        "case_id",
        pl.lit(STAFF_CHANNEL).alias("channel"),
        "priority",
        pl.when(pl.col("open_now"))
        .then(pl.lit(SEND))
        .otherwise(pl.lit(DEFERRED))
        .alias("decision"),
        pl.when(pl.col("open_now")).then(pl.lit("")).otherwise(pl.lit(QUIET_HOURS)).alias("reason"),
        pl.when(pl.col("open_now"))
        .then(pl.lit(""))
        .otherwise(pl.lit("next window ") + pl.col("next_window"))
        .alias("detail"),
    )
    return (
        pl.concat([patient_plan.cast(PLAN_SCHEMA), staff_plan.cast(PLAN_SCHEMA)])
        .sort(*_in_text_order("campaign", [c.slug for c in due]),
              *_in_text_order("channel", [*PATIENT_CHANNELS, STAFF_CHANNEL]),
              "patient_id", "case_id", nulls_last=True)
        .collect(engine=ENGINE)
    )  # fmt: skip


def _in_text_order(column: str, values: list[str]) -> list[pl.Expr]:
    """Sort keys that order `column` as its text sorts, by the place of each of its few
    `values` (a number compares faster than a text); a value not among them (none is
    expected) is ordered by its text after them."""
    place = {v: i for i, v in enumerate(sorted(set(values)))}
    return [
        pl.col(column).replace_strict(place, default=len(place), return_dtype=pl.UInt32),
        pl.when(~pl.col(column).is_in(list(place))).then(pl.col(column)),
    ]


def _people(
    contacts: pl.DataFrame, rules: ChannelRules, clinic_zone: str,
    channels: set[str] | None = None,
) -> pl.LazyFrame:  # fmt: skip
    """Every patient record with the keys of its addresses (`email_key`, `sms_key`: null
    when unusable) and `zone`, where its clock is. With `channels`, only those channels'
    keys: without SMS or WhatsApp the phone keys are null and `zone` is the clinic's
    (where a patient's clock is matters to the hours of texts alone)."""
    from outbound.phones import e164_expr, with_patient_zone

    phones = channels is None or bool(channels & {"sms", "whatsapp"})

    frame = contacts.lazy()
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in ADDRESS_SCHEMA.items()
               if c not in contacts.columns]  # fmt: skip
    frame = frame.with_columns(missing).select(
        [*CONTACTS_SCHEMA, *ADDRESS_SCHEMA]
    ).cast(CONTACTS_SCHEMA | ADDRESS_SCHEMA)
    email = pl.col("email").str.strip_chars().str.to_lowercase()
    frame = frame.with_columns(
        pl.when(email.str.contains(EMAIL_PATTERN).fill_null(False))
        .then(pl.lit("email:") + email)
        .alias("email_key"),
        (pl.lit("sms:") + e164_expr("mobile", rules.country)).alias("sms_key")
        if phones else pl.lit(None, dtype=pl.String).alias("sms_key"),
    ).with_columns(
        pl.when(pl.col("has_whatsapp").fill_null(False))
        .then(pl.lit("whatsapp:") + pl.col("sms_key").str.strip_prefix("sms:"))
        .alias("whatsapp_key"),
    )  # fmt: skip
    if not phones:
        return frame.with_columns(pl.lit(clinic_zone).alias("zone")).drop("state", "country")
    return with_patient_zone(frame, clinic_zone, rules.country).drop("state", "country")


def _join_category_opt_outs(
    patients: pl.LazyFrame, people: pl.LazyFrame, category_opt_outs: pl.DataFrame | None,
    channels: set[str] | None = None,
) -> pl.LazyFrame:  # fmt: skip
    """`patients` plus `category_opt_out`: the patient, or a record with the address the
    candidate would be sent to, opted out of the campaign's category or of `all`
    (`channels`: the channels candidates are messaged on; the addresses of others can
    match no candidate's)."""
    from outbound.categories import ALL

    if category_opt_outs is None or category_opt_outs.is_empty():
        return patients.with_columns(pl.lit(None, dtype=pl.Boolean).alias("category_opt_out"))
    cats = category_opt_outs.lazy().select("patient_id", "category").cast(pl.String)
    keyed = pl.concat([
        cats.join(people.select("patient_id", pl.col(f"{ch}_key").alias("key")), on="patient_id")
        .select("key", "category")
        for ch in CHANNEL_ADDRESS if channels is None or ch in channels
    ] + [cats.select((pl.lit("patient:") + pl.col("patient_id")).alias("key"), "category")])
    # fmt: skip
    keyed = keyed.drop_nulls().unique().collect(engine=ENGINE)
    # A candidate is hit when its address or its patient record opted out of the
    # campaign's category or of `all`: one membership test per category (a few).
    patient_key = pl.lit("patient:") + pl.col("patient_id")
    hit = []
    for category, keys in keyed.group_by("category"):
        found = keys["key"].implode()
        either = pl.col("recipient_key").is_in(found) | patient_key.is_in(found)
        hit.append(either if category[0] == ALL else (pl.col("category") == category[0]) & either)
    return patients.with_columns(pl.any_horizontal(pl.lit(False), *hit).alias("category_opt_out"))


def _channel_key() -> pl.Expr:
    """The key of the candidate's address on its campaign's channel, else the patient."""
    return key_on_channel().fill_null(pl.lit("patient:") + pl.col("patient_id"))


def key_on_channel() -> pl.Expr:
    """The row's address key on the row's `channel` (null: no usable address there)."""
    return (
        pl.when(pl.col("channel") == "sms")
        .then(pl.col("sms_key"))
        .when(pl.col("channel") == "whatsapp")
        .then(pl.col("whatsapp_key"))
        .otherwise(pl.col("email_key"))
    )


def _prior_messages(
    patients: pl.LazyFrame, people: pl.LazyFrame, history: pl.DataFrame, clock: RunClock
) -> pl.LazyFrame:
    """(campaign, patient_id, prior_messages): the messages within each candidate's cap
    window that went to the patient (on any channel) or to the address the candidate
    would be sent to (for any patient record), each counted once."""
    hist = history.lazy()
    if "channel" not in history.columns:
        hist = hist.with_columns(pl.lit("email").alias("channel"))
    if "address_key" not in history.columns:
        hist = hist.with_columns(pl.lit(None, dtype=pl.String).alias("address_key"))
    keys = people.select(pl.col("patient_id").alias("hist_patient"), "email_key", "sms_key",
                         "whatsapp_key")  # fmt: skip
    counted = (
        hist.select(*HISTORY_SCHEMA, "channel", "address_key")
        .cast(HISTORY_SCHEMA | {"channel": pl.String, "address_key": pl.String})
        .filter(
            pl.col("status").is_in(list(DELIVERED_OR_MAYBE)),
            pl.col("recipient") != STAFF_RECIPIENT,
        )
        .with_row_index("row")
        # Numbered once: both joins below read the same numbers.
        .collect(engine=ENGINE)
        .lazy()
        .rename({"recipient": "hist_patient", "campaign": "hist_campaign"})
        # A past message counts for the address it went to (as the contacts give it now).
        .join(keys, on="hist_patient", how="left")
        .with_columns(
            pl.col("hist_patient").alias("match_patient"),
            key_on_channel().fill_null(pl.lit("patient:") + pl.col("hist_patient"))
            .alias("match_key"),
        )
    )  # fmt: skip
    wanted = ["campaign", "patient_id", "cap_window", "row", "hist_campaign", "hist_patient",
              "send_date", "attempted_at"]  # fmt: skip
    cands = patients.select("campaign", "patient_id", "recipient_key", "cap_window")
    by_patient = cands.join(counted, left_on="patient_id", right_on="match_patient")
    by_address = cands.join(counted, left_on="recipient_key", right_on="match_key")
    # And by the address it went to when it was sent, whatever the record says now.
    by_sent_to = cands.join(counted.filter(pl.col("address_key").is_not_null()),
                            left_on="recipient_key", right_on="address_key")  # fmt: skip
    moment = clock.cap_moment.astimezone(UTC)
    return (
        pl.concat([by_patient.select(wanted), by_address.select(wanted),
                   by_sent_to.select(wanted)])  # fmt: skip
        .filter(
            # Every message requested within the window before now, in real time.
            pl.col("attempted_at") >= pl.lit(moment) - pl.duration(days=pl.col("cap_window")),
            # A candidate's own row for the day is this same message (a re-run), not a
            # prior one.
            ~(
                (pl.col("hist_campaign") == pl.col("campaign"))
                & (pl.col("send_date") == clock.as_of)
                & (pl.col("hist_patient") == pl.col("patient_id"))
            ),
        )
        .unique(["campaign", "patient_id", "row"])
        .group_by("campaign", "patient_id")
        .agg(pl.len().alias("prior_messages"))
    )


def _recipient_hours(clock: RunClock, rules: ChannelRules, clinic_zone: str) -> pl.LazyFrame:
    """(zone, recipient_open, hours_detail) for every zone a patient can be in: whether the
    plan's moment is within the hours commercial SMS keeps, on that zone's clock."""
    from outbound.phones import zone_table

    zones = sorted({*zone_table()["zone"].to_list(), clinic_zone})
    rows = []
    hours = rules.recipient_hours
    for zone in zones:
        open_, there = hours_hold(rules, zone, clock.local_now)
        rows.append((
            zone, open_, "" if hours is None else
            f"{hours.start:%H:%M}-{hours.end:%H:%M} ({rules.hours_label}; now {there})",
        ))  # fmt: skip
    return pl.LazyFrame(
        rows, schema={"zone": pl.String, "recipient_open": pl.Boolean,
                      "hours_detail": pl.String}, orient="row",
    )  # fmt: skip


def hours_hold(rules: ChannelRules, zone: str, moment: datetime) -> tuple[bool, str]:
    """Whether `moment` is within the hours commercial SMS keeps in `zone` (several,
    `|`-separated, for a state spanning them: in each), and the time there, for people."""
    clocks = [(z, moment.astimezone(ZoneInfo(z)).time()) for z in zone.split("|")]
    there = ", ".join(f"{t:%H:%M} in {z}" for z, t in clocks)
    hours = rules.recipient_hours
    return (hours is None or all(hours.contains(t) for _, t in clocks)), there


def _winners(patients: pl.LazyFrame) -> pl.LazyFrame:
    """(campaign, patient_id, winner, winner_patient) for the candidates still standing:
    at most one message per patient and per address in a run.

    Candidates are taken in order (priority, then campaign slug, then patient id); a
    candidate wins when no earlier one still standing shares its patient, its address or
    (SMS and WhatsApp) its phone,
    and loses to the first winner it shares one with. Each round settles at least the
    first candidate left, so it ends; the usual plan takes one or two rounds.
    """
    surv = (
        patients.filter(pl.col("reason").is_null())
        .select("campaign", "patient_id", "recipient_key", "priority", "channel", "sms_key")
        .sort(["priority", "campaign", "patient_id"], descending=[True, False, False])
        .with_row_index("rank")
        .collect(engine=ENGINE)
    )
    # A text and a WhatsApp message reach the same phone: one of them a run.
    phone = (pl.when(pl.col("channel").is_in(["sms", "whatsapp"]))
             .then(pl.lit("phone:") + pl.col("sms_key").str.strip_prefix("sms:")))  # fmt: skip
    remaining = pl.concat([
        surv.select("rank", (pl.lit("patient:") + pl.col("patient_id")).alias("key")),
        surv.select("rank", pl.col("recipient_key").alias("key")),
        surv.select("rank", phone.alias("key")).drop_nulls(),
    ]).unique()  # fmt: skip
    # A candidate that shares none of its keys with another is first on all of them: it
    # wins, and claims nobody else. Only the others go through the rounds.
    # (Keys compared by their hash here: two keys sharing a hash only send a candidate
    # through the rounds, which compare the keys themselves.)
    contested = remaining.filter(pl.col("key").hash().is_duplicated())["rank"].unique()
    shared = pl.col("rank").is_in(contested.implode())
    decided = [surv.filter(~shared).select("rank", pl.col("rank").alias("by"))]
    remaining = remaining.filter(shared)
    while remaining.height:
        first = remaining.group_by("key").agg(pl.col("rank").min().alias("first"))
        won = (
            remaining.join(first, on="key")
            .group_by("rank")
            .agg((pl.col("first") == pl.col("rank")).all().alias("won"))
            .filter("won")
            .select("rank")
        )
        claimed = remaining.join(won, on="rank").select("key", pl.col("rank").alias("by"))
        settled = remaining.join(claimed, on="key").group_by("rank").agg(pl.col("by").min())
        decided.append(settled)
        remaining = remaining.join(settled.select("rank"), on="rank", how="anti")
    # A rank is its row in `surv`: names are gathered by it.
    settled = pl.concat(decided)
    names = surv.select("campaign", "patient_id")
    return pl.concat([
        names[settled["rank"]],
        names[settled["by"]].rename({"campaign": "winner", "patient_id": "winner_patient"}),
    ], how="horizontal").lazy()  # fmt: skip


def address_keys(
    contacts: pl.DataFrame, rules: ChannelRules, clinic_zone: str = "UTC"
) -> pl.DataFrame:
    """patient_id, email_key, sms_key, whatsapp_key (and the E.164 `sms_number`, and
    `zone`, where the patient's clock is) of every patient record: the addresses one
    person may have behind several records (null: not usable)."""
    return (
        _people(contacts, rules, clinic_zone)
        .select("patient_id", "email_key", "sms_key", "whatsapp_key", "zone",
                pl.col("sms_key").str.strip_prefix("sms:").alias("sms_number"))
        .collect(engine=ENGINE)
    )  # fmt: skip


def summarise(plan: pl.DataFrame) -> pl.DataFrame:
    """Per campaign and channel: eligible, suppressed by reason, deferred, to send."""
    reasons = [r for r in SUPPRESSION_ORDER if r != QUIET_HOURS]
    return (
        plan.group_by("campaign", "channel")
        .agg(
            pl.len().alias("eligible"),
            *[(pl.col("reason") == r).sum().alias(r) for r in reasons],
            (pl.col("decision") == DEFERRED).sum().alias("deferred"),
            (pl.col("decision") == SEND).sum().alias("to_send"),
        )
        .sort("campaign", "channel")
    )
