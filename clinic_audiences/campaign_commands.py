"""Plain functions behind `audiences campaigns list | dry-run | send | lift-opt-out`.

Each prints to stdout and returns the exit code; the `audiences` argparse dispatch calls
them. Only ids and counts are printed, never names or addresses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from clinic_audiences.environment import current_settings
from core.run_lock import WarehouseBusy
from core.tables import format_table
from outbound import ledger as ledger_mod
from outbound.campaigns import CampaignError, Daily, Weekly
from outbound.channels import DeliveryUnknown
from outbound.run import (
    OutboundSettings,
    Planned,
    SenderSettings,
    SmsSenderSettings,
    campaign_set,
    configured_channels,
    make_plan,
    read_opt_outs,
    run_clock,
    send_planned,
    sms_preview,
    state_engine,
    task_webhook,
    test_send,
    today_only,
)
from outbound.selection import RunClock, summarise
from outbound.templates import TemplateError

CSV_COLUMNS = ["campaign", "patient_id", "channel", "decision", "reason"]


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _schedule_text(schedule) -> str:
    if isinstance(schedule, Daily):
        return "daily"
    if isinstance(schedule, Weekly):
        return "weekly " + ",".join(schedule.days)
    return f"once {schedule.on.isoformat()}"


def _report_problems(problems: list[str]) -> None:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} campaign file(s) cannot run and were left out; the others ran",
            file=sys.stderr,
        )


def cmd_list() -> int:
    try:
        loaded = campaign_set(OutboundSettings.of(current_settings()))
    except (CampaignError, ValueError, OSError, WarehouseBusy) as e:
        return _fail(str(e))
    print(f"{'campaign':<34} {'segment':<34} {'priority':>8}  {'enabled':<7}  schedule")
    for c in sorted(loaded.campaigns, key=lambda c: (-c.priority, c.slug)):
        enabled = "play" if c.enabled else "paused"
        schedule = _schedule_text(c.schedule)
        print(f"{c.slug:<34} {c.segment:<34} {c.priority:>8}  {enabled:<7}  {schedule}")
    _report_problems(loaded.problems)
    return 1 if loaded.problems else 0


def _plan(as_of: str | None):
    settings = OutboundSettings.of(current_settings())
    if not Path(settings.duckdb_path).exists():
        raise LookupError(
            f"the warehouse {settings.duckdb_path} does not exist yet; run the pipeline "
            "first (`audiences run --extracts DIR`), or check DUCKDB_PATH"
        )
    loaded = campaign_set(settings)
    clock = run_clock(as_of, settings.timezone, run_time=settings.run_time)
    engine = state_engine(settings)
    planned = make_plan(settings, loaded.campaigns, clock, engine)
    return settings, loaded, clock, engine, planned


def print_summary(planned: Planned, clock: RunClock) -> None:
    summary = summarise(planned.plan)
    at = clock.local_now.isoformat(timespec="minutes")
    print(f"send plan for {clock.as_of.isoformat()} at {at}")
    if summary.is_empty():
        print("no campaign is due, or no due campaign has members")
        return
    print(format_table(summary))


def cmd_dry_run(as_of: str | None, out: str | None) -> int:
    try:
        settings, loaded, clock, _, planned = _plan(as_of)
        sms = sms_preview(settings, loaded.campaigns, planned.plan)
    except (CampaignError, TemplateError, ValueError, LookupError, OSError, WarehouseBusy) as e:
        return _fail(str(e))
    print_summary(planned, clock)
    if sms.height:
        print("\nSMS as they would go out (GSM-7: 160 a part, 153 when split; UCS-2: 70 / 67):")
        print(format_table(
            sms.group_by("campaign").agg(
                pl.len().alias("messages"),
                (pl.col("encoding") == "GSM-7").sum().alias("gsm_7"),
                (pl.col("encoding") == "UCS-2").sum().alias("ucs_2"),
                pl.col("segments").sum().alias("segments"),
                pl.col("characters").max().alias("longest"),
            ).sort("campaign")
        ))  # fmt: skip
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        planned.plan.join(
            sms.select("campaign", "patient_id", "encoding", "segments"),
            on=["campaign", "patient_id"], how="left",
        ).select(*CSV_COLUMNS, "encoding", "segments").write_csv(path)  # fmt: skip
        print(f"wrote {planned.plan.height} rows to {path}")
    _report_problems(loaded.problems)
    return 1 if loaded.problems else 0


def cmd_send(as_of: str | None) -> int:
    try:
        sender = SenderSettings.of(current_settings().sender)
        sms = SmsSenderSettings.of(current_settings().twilio)
        settings, loaded, clock, engine, planned = _plan(as_of)
        channel = configured_channels(settings, sender, sms) or None
    except (CampaignError, TemplateError, ValueError, LookupError, OSError, WarehouseBusy) as e:
        return _fail(str(e))
    print_summary(planned, clock)
    if channel is None:
        configured = current_settings().sender.api_key or current_settings().twilio.account_sid
        why = (
            "OUTBOUND_SEND_DISABLED is set"
            if configured
            else "no sender is configured (SENDGRID_API_KEY, TWILIO_ACCOUNT_SID)"
        )
        print(f"{why}: dry run, nothing was sent and the ledger is unchanged")
        _report_problems(loaded.problems)
        return 1 if loaded.problems else 0
    if not clock.is_today:
        print(f"{today_only(clock, settings.timezone)}: nothing was sent")
        return 1
    try:
        webhook = task_webhook(settings, loaded.campaigns)
        report = send_planned(
            settings, loaded.campaigns, planned, clock, engine, channel, sandbox=sender.sandbox
        )
    except (TemplateError, ledger_mod.SendLockHeld, ValueError) as e:
        return _fail(str(e))
    if report.dry_run:
        print(f"{report.dry_run_reason}: nothing was sent")
        return 1
    mode = " (SendGrid sandbox mode: nothing delivered)" if sender.sandbox else ""
    print(f"send run {report.run_id}{mode}")
    for rep in report.campaigns.values():
        line = (
            f"  {rep.campaign}: planned {rep.planned}, already in ledger {rep.already_in_ledger}, "
            f"sent {rep.sent}, failed {rep.failed}, requests {rep.requests}"
        )
        if rep.retried:
            line += f", retried {rep.retried}"
        if rep.withheld:
            line += f", withheld {rep.withheld} (opted out since the plan)"
        if rep.digest:
            line += f"; staff digest {rep.digest}"
        if rep.deferred:
            line += f", deferred {rep.deferred} (the hours closed during the run)"
        if rep.tasks:
            line += f", staff tasks {rep.tasks}"
        if rep.not_sent:
            line += f"; not sent: {rep.not_sent}"
        print(line)
    from orchestration.tasks import after_send

    done = after_send(engine, webhook)
    if done.cards.put or done.cards.not_on_a_list:
        print(f"staff tasks: {done.cards.put} on work-list cards, {done.cards.not_on_a_list} "
              "with no card (yet)")  # fmt: skip
    if done.webhook is not None:
        w = done.webhook
        print(f"task webhook: {w.delivered} delivered, {w.waiting} waiting for a later run, "
              f"{w.failed} failed")  # fmt: skip
        for error in w.errors:
            print(f"  {error}")
    if report.unknown:
        print(
            f"{report.unknown} message(s) left pending by an earlier run are now 'unknown': "
            "they may have been delivered and will not be resent automatically"
        )
    if report.failed:
        errors = ledger_mod.ledger_errors(engine, clock.as_of)
        print(f"{len(errors)} ledger row(s) failed today; see outbound_ledger.error by id")
    _report_problems(loaded.problems)
    if report.stopped:
        print(f"run stopped: {report.stopped}; the batch in flight stays pending (unknown)")
        return 1
    return 1 if loaded.problems else 0


def cmd_test_send(slug: str, to: str, patient_id: str | None) -> int:
    """One message of a campaign, marked as a test, to the address given."""
    from core.days import today_in

    try:
        settings = OutboundSettings.of(current_settings())
        loaded = campaign_set(settings)
        by_slug = {c.slug: c for c in loaded.campaigns}
        if slug not in by_slug:
            known = ", ".join(sorted(by_slug)) or "none"
            raise ValueError(f"no campaign {slug!r} that can run (campaigns: {known}); "
                             "`audiences campaigns list` shows them and their problems")
        campaign = by_slug[slug]
        channels = configured_channels(settings, SenderSettings.of(current_settings().sender),
                                       SmsSenderSettings.of(current_settings().twilio))  # fmt: skip
        channel = channels.get(campaign.channel)
        if channel is None:
            raise ValueError(f"no {campaign.channel} sender is configured, so nothing can be "
                             "sent (docs/configuration.md)")  # fmt: skip
        outcome = test_send(settings, campaign, channel, to, patient_id,
                            today_in(settings.timezone))  # fmt: skip
    except (CampaignError, TemplateError, ValueError, LookupError, OSError, WarehouseBusy) as e:
        return _fail(str(e))
    except DeliveryUnknown as e:
        return _fail(f"the test may or may not have gone: {e}")
    if not outcome.ok:
        return _fail(f"the test was not sent: {outcome.error}")
    print(f"sent a test of {slug} by {campaign.channel} to {to.strip()}"
          + (f" (provider id {outcome.provider_message_id})" if outcome.provider_message_id
             else ""))  # fmt: skip
    return 0


def cmd_lift_opt_out(patient_id: str, channel: str) -> int:
    """Forget a kept opt-out. Refused while the extract still lists it: the next plan
    would keep it again, and the extract is the practice-management system's word."""
    try:
        settings = OutboundSettings.of(current_settings())
        ident, kind = ledger_mod.normalise_opt_out(patient_id, channel)
        extract = read_opt_outs(settings, None)
        listed = extract.filter((pl.col("patient_id") == ident) & (pl.col("channel") == kind))
        if not listed.is_empty():
            return _fail(
                f"the extract still lists this opt-out ({kind}); record the opt-in in the "
                "practice-management system first, then run again after the next ingest"
            )
        removed = ledger_mod.forget_opt_out(state_engine(settings), ident, kind)
    except (ValueError, OSError, LookupError, WarehouseBusy) as e:
        return _fail(str(e))
    print(f"opt-out ({kind}) forgotten" if removed else f"no kept opt-out ({kind}) to forget")
    return 0 if removed else 1
