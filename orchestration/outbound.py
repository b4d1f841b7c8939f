"""Outbound assets: campaign candidates → send plan (dry-run table) → sent messages.

Only wiring: planning lives in `outbound.selection`, reading / writing in `outbound.run`
and `outbound.warehouse_io`. Without SENDGRID_API_KEY `sent_messages` is a dry run.
"""

from pathlib import Path

import dagster as dg
import polars as pl

from orchestration.resources import (
    ClinicSettingsResource,
    SegmentLibraryResource,
    SendGridResource,
    StateStoreResource,
    TwilioResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
)
from orchestration.schedules import todays_partition_schedule
from orchestration.tasks import after_send
from outbound import ledger as ledger_mod
from outbound.campaigns import CAMPAIGNS_DIR, Campaign, CampaignError
from outbound.categories import parse_group_ids
from outbound.checks import opted_out_in_plan, twice_in_cap_window
from outbound.run import (
    OutboundSettings,
    Planned,
    SenderSettings,
    SmsSenderSettings,
    campaign_set,
    campaigns_for,
    candidates_of,
    channel_rules,
    configured_channels,
    frequency_cap,
    make_plan,
    read_candidates,
    read_history,
    read_opt_outs,
    report_frame,
    run_clock,
    send_planned,
    task_webhook,
)
from outbound.selection import PLAN_SCHEMA, RunClock, summarise
from outbound.templates import TemplateError
from outbound.warehouse_io import export_ledger, read_contacts, write_table

CANDIDATES = dg.AssetKey(["outbound", "campaign_candidates"])
SEND_PLAN = dg.AssetKey(["outbound", "send_plan"])
SENT = dg.AssetKey(["outbound", "sent_messages"])
# The ledger exported to the warehouse: the dbt source `outbound.send_ledger`, keyed the
# way the dbt translator keys sources, so the analytics models run after it.
LEDGER_TABLE = dg.AssetKey(["outbound", "send_ledger"])
GROUP = "outbound"


def _settings(
    warehouse: WarehouseResource,
    settings: ClinicSettingsResource,
    state_store: StateStoreResource,
    segment_library: SegmentLibraryResource,
) -> OutboundSettings:
    try:
        return OutboundSettings(
            duckdb_path=warehouse.duckdb_path,
            state_db_url=state_store.url,
            timezone=settings.clinic_timezone,
            segments_path=Path(segment_library.segments_path) if segment_library.segments_path
            else None,
            campaigns_dir=Path(settings.campaigns_path) if settings.campaigns_path
            else CAMPAIGNS_DIR,
            cap=frequency_cap(settings.cap_max_messages, settings.cap_window_days),
            memory_limit=warehouse.memory_limit or None,
            run_time=settings.outbound_run_time or None,
            web_app_url=settings.web_app_url or None,
            unsubscribe_secret=settings.unsubscribe_secret or None,
            clinic_name=settings.clinic_name or None,
            rules=channel_rules(settings.clinic_country, settings.recipient_hours or None),
            group_ids=parse_group_ids(settings.sendgrid_group_ids or None),
            tasks_webhook_url=settings.tasks_webhook_url or None,
            tasks_webhook_secret=settings.tasks_webhook_secret or None,
        )
    except ValueError as e:
        raise dg.Failure(description=str(e)) from None


def _campaigns(s: OutboundSettings) -> list[Campaign]:
    """The campaigns that can run; a bad campaign file is reported by its own check and
    never stops the others."""
    try:
        return campaign_set(s).campaigns
    except (CampaignError, ValueError, OSError) as e:
        raise dg.Failure(description=str(e)) from None


def _clock(context, s: OutboundSettings) -> RunClock:
    return run_clock(as_of_day(context), s.timezone, run_time=s.run_time)


def _markdown(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return "(empty)"
    cols = frame.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.rows()]
    return "\n".join(lines)


def _segment_deps(s: OutboundSettings) -> list[dg.AssetKey]:
    """The segment assets the campaigns read; none when the campaign files are broken
    (the asset then fails with the file's errors instead of taking the code location down)."""
    try:
        campaigns = campaigns_for(s)
    except (CampaignError, ValueError):
        return []
    return [dg.AssetKey(["segments", slug]) for slug in sorted({c.segment for c in campaigns})]


def build_outbound_defs(
    settings: OutboundSettings, partitions: dg.PartitionsDefinition | None = None
) -> dg.Definitions:
    """The outbound assets for the campaigns `settings` name, partitioned by as-of day."""
    partitions = partitions or daily_partitions(settings.timezone)
    deps = [
        *_segment_deps(settings),
        dg.AssetKey(["raw", "patients"]),
        dg.AssetKey(["raw", "opt_outs"]),
    ]

    @dg.asset(
        key=CANDIDATES,
        deps=deps,
        group_name=GROUP,
        kinds={"polars", "duckdb"},
        partitions_def=partitions,
        pool="warehouse",
        description="Members of the segments of today's campaigns: one row per (campaign, member).",
    )
    def campaign_candidates(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
    ) -> dg.MaterializeResult:
        s = _settings(warehouse, settings, state_store, segment_library)
        clock = _clock(context, s)
        try:
            candidates = read_candidates(s, _campaigns(s), clock)
        except LookupError as e:
            # Not that day's marts or membership (WrongDay): no plan from another day's.
            raise dg.Failure(description=str(e)) from None
        with s.connect() as con:
            write_table(
                con,
                "campaign_candidates",
                candidates.with_columns(pl.lit(clock.as_of).alias("as_of")),
            )
        per_campaign = (
            candidates.group_by("campaign").agg(pl.len().alias("candidates")).sort("campaign")
        )
        context.log.info(
            f"{candidates.height} candidate row(s) for {per_campaign.height} campaign(s)"
        )
        return dg.MaterializeResult(
            metadata={
                "rows": dg.MetadataValue.int(candidates.height),
                "as_of": dg.MetadataValue.text(clock.as_of.isoformat()),
                "per_campaign": dg.MetadataValue.md(_markdown(per_campaign)),
            }
        )

    @dg.asset(
        key=SEND_PLAN,
        deps=[CANDIDATES],
        group_name=GROUP,
        kinds={"polars", "duckdb"},
        partitions_def=partitions,
        pool="warehouse",
        description="The dry-run table: each candidate with its decision and reason.",
    )
    def send_plan(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
    ) -> dg.MaterializeResult:
        s = _settings(warehouse, settings, state_store, segment_library)
        clock = _clock(context, s)
        campaigns = _campaigns(s)
        with s.connect(read_only=True) as con:
            candidates = con.sql(
                "select campaign, segment_slug, patient_id, case_id, channel, priority "
                "from outbound.campaign_candidates"
            ).pl()
        planned = make_plan(s, campaigns, clock, state_store.engine(), candidates=candidates)
        with s.connect() as con:
            write_table(
                con,
                "send_plan",
                planned.plan.with_columns(
                    pl.lit(clock.as_of).alias("as_of"),
                    pl.lit(clock.local_now.isoformat(timespec="minutes")).alias("planned_at"),
                ),
            )
        summary = summarise(planned.plan)
        by_decision = dict(planned.plan.group_by("decision").len().iter_rows())
        context.log.info(f"send plan: {by_decision}")
        return dg.MaterializeResult(
            metadata={
                "rows": dg.MetadataValue.int(planned.plan.height),
                "to_send": dg.MetadataValue.int(by_decision.get("send", 0)),
                "suppressed": dg.MetadataValue.int(by_decision.get("suppressed", 0)),
                "deferred": dg.MetadataValue.int(by_decision.get("deferred", 0)),
                "as_of": dg.MetadataValue.text(clock.as_of.isoformat()),
                "summary": dg.MetadataValue.md(_markdown(summary)),
            }
        )

    def _plan_and_inputs(warehouse, settings, state_store, segment_library, context=None):
        """The plan and what it was made from; the clock is the step's day, or for a
        check, the plan's own day (a check validates the plan that exists)."""
        s = _settings(warehouse, settings, state_store, segment_library)
        with s.connect(read_only=True) as con:
            plan = con.sql(f"select {', '.join(PLAN_SCHEMA)} from outbound.send_plan").pl()
            day = con.execute("select max(as_of) from outbound.send_plan").fetchall()[0][0]
            contacts = read_contacts(con)
        if isinstance(context, dg.AssetExecutionContext):
            clock = _clock(context, s)
        else:
            clock = run_clock(day, s.timezone, run_time=s.run_time)
        return s, clock, state_store.engine(), plan.cast(PLAN_SCHEMA), contacts

    @dg.asset_check(
        asset=SEND_PLAN, description="Nobody opted out (extract, consent or learned) is planned."
    )
    def no_opted_out_patients_in_plan(
        context: dg.AssetCheckExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
    ) -> dg.AssetCheckResult:
        s, clock, engine, plan, contacts = _plan_and_inputs(
            warehouse, settings, state_store, segment_library, context
        )
        result = opted_out_in_plan(plan, contacts, read_opt_outs(s, engine))
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata={
                "offenders": result.offenders,
                "sample_patient_ids": ", ".join(result.sample),
            },
        )

    @dg.asset_check(
        asset=SEND_PLAN, description="Nobody gets two messages inside the frequency-cap window."
    )
    def nobody_twice_in_cap_window(
        context: dg.AssetCheckExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
    ) -> dg.AssetCheckResult:
        s, clock, engine, plan, _ = _plan_and_inputs(
            warehouse, settings, state_store, segment_library, context
        )
        history = read_history(s, _campaigns(s), clock, engine)
        result = twice_in_cap_window(
            plan, history, clock.as_of, clock.cap_start(s.cap.window_days), s.cap.max_messages
        )
        return dg.AssetCheckResult(
            passed=result.passed,
            metadata={
                "offenders": result.offenders,
                "sample_patient_ids": ", ".join(result.sample),
            },
        )

    @dg.asset_check(
        asset=SEND_PLAN,
        description="Every campaign file can run: valid YAML and fields, a known and valid "
        "segment (a private one only for its owner's campaigns), a template that renders. "
        "A bad file is left out of the plan; the others run.",
    )
    def campaign_files_can_run(
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
    ) -> dg.AssetCheckResult:
        s = _settings(warehouse, settings, state_store, segment_library)
        problems = campaign_set(s).problems
        return dg.AssetCheckResult(
            passed=not problems,
            metadata={
                "problems": dg.MetadataValue.md(
                    "\n".join(f"- {p}" for p in problems) or "none"
                )
            },
            description="\n".join(problems) or None,
        )

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                SENT,
                deps=[SEND_PLAN],
                group_name=GROUP,
                kinds={"sendgrid"},
                description=(
                    "Sends today's plan through SendGrid (a dry run without SENDGRID_API_KEY); "
                    "the ledger in the state store makes re-runs send nothing twice."
                ),
            ),
            dg.AssetSpec(
                LEDGER_TABLE,
                deps=[SENT],
                group_name=GROUP,
                kinds={"duckdb"},
                description="The send ledger exported for the analytics models (ids, no texts).",
            ),
        ],
        partitions_def=partitions,
        pool="warehouse",
    )
    def sent_messages(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
        segment_library: SegmentLibraryResource,
        sendgrid: SendGridResource,
        twilio: TwilioResource,
    ):
        s, clock, engine, plan, contacts = _plan_and_inputs(
            warehouse, settings, state_store, segment_library, context
        )
        campaigns = _campaigns(s)
        try:
            sender = SenderSettings.of(sendgrid.access())
            sms = SmsSenderSettings.of(twilio.access())
            channel = configured_channels(s, sender, sms) or None
        except ValueError as e:
            raise dg.Failure(description=str(e)) from None
        planned = Planned(candidates=candidates_of(plan), plan=plan, contacts=contacts)
        try:
            webhook = task_webhook(s, campaigns)
            report = send_planned(
                s, campaigns, planned, clock, engine, channel, sandbox=sender.sandbox
            )
        except (TemplateError, ledger_mod.SendLockHeld, ValueError) as e:
            raise dg.Failure(description=str(e)) from None
        ledger = ledger_mod.read_ledger(engine)
        with s.connect() as con:
            export_ledger(con, ledger)
            write_table(con, "send_report", report_frame(report))
        # Staff tasks onto cards and out to the task system, once the sends are recorded.
        tasks_done = None if report.dry_run else after_send(engine, webhook)
        if report.dry_run:
            why = report.dry_run_reason or (
                "no sender configured (SENDGRID_API_KEY, TWILIO_ACCOUNT_SID) or "
                "OUTBOUND_SEND_DISABLED set"
            )
            context.log.warning(f"dry run, nothing was sent ({why})")
        rows = [
            (r.campaign, r.planned, r.already_in_ledger, r.sent, r.failed, r.requests, r.digest)
            for r in report.campaigns.values()
        ]
        table = pl.DataFrame(
            rows,
            schema=[
                "campaign",
                "planned",
                "already_in_ledger",
                "sent",
                "failed",
                "requests",
                "staff_digest",
            ],
            orient="row",
        )
        metadata = {
            "dry_run": dg.MetadataValue.bool(report.dry_run),
            "dry_run_reason": dg.MetadataValue.text(report.dry_run_reason or "-"),
            "sandbox": dg.MetadataValue.bool(report.sandbox),
            "sent": dg.MetadataValue.int(report.sent),
            "failed": dg.MetadataValue.int(report.failed),
            "requests": dg.MetadataValue.int(report.requests),
            "unknown_from_earlier_runs": dg.MetadataValue.int(report.unknown),
            "staff_tasks_on_cards": dg.MetadataValue.int(tasks_done.cards.put if tasks_done
                                                         else 0),
            "staff_tasks_delivered": dg.MetadataValue.int(
                tasks_done.webhook.delivered if tasks_done and tasks_done.webhook else 0),
            "per_campaign": dg.MetadataValue.md(_markdown(table)),
        }
        if report.stopped:
            raise dg.Failure(
                description=(
                    f"send run stopped: {report.stopped}; the batch in flight stays pending and "
                    "is reported as unknown next run, never resent automatically"
                ),
                metadata=metadata,
            )
        yield dg.MaterializeResult(asset_key=SENT, metadata=metadata)
        yield dg.MaterializeResult(
            asset_key=LEDGER_TABLE,
            metadata={
                "rows": dg.MetadataValue.int(ledger.height),
                "by_status": dg.MetadataValue.md(
                    _markdown(ledger.group_by("status").len().sort("status"))
                ),
            },
        )

    # The daily refresh may run outside the send windows (it is timed for the extract), so
    # deferred messages would wait for a later run: this job re-plans and sends every hour
    # of the working day on the clinic clock. The ledger makes repeated runs harmless.
    send_job = dg.define_asset_job(
        "outbound_send",
        partitions_def=partitions,
        selection=dg.AssetSelection.assets(CANDIDATES, SEND_PLAN, SENT, LEDGER_TABLE),
        description="Re-plan from the current segment membership and send what is due.",
    )
    send_schedule = todays_partition_schedule(
        "outbound_send_hourly", send_job, "5 8-19 * * *", settings.timezone,
        "Hourly 08:05-19:05 clinic time, for today's partition, so deferred messages go out "
        "when due.",
    )  # fmt: skip
    return dg.Definitions(
        assets=[campaign_candidates, send_plan, sent_messages],
        asset_checks=[
            no_opted_out_patients_in_plan, nobody_twice_in_cap_window, campaign_files_can_run,
        ],  # fmt: skip
        jobs=[send_job],
        schedules=[send_schedule],
    )

