"""Invariants of a send plan, checked independently of the planner that made it.

Both are asset checks on `send_plan` and are used by tests; they recompute from the
inputs rather than trusting the plan's own reasons.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl

from outbound.ledger import DELIVERED_OR_MAYBE, STAFF_RECIPIENT
from outbound.selection import SEND, STAFF_CHANNEL


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    offenders: int
    sample: list[str]


def opted_out_in_plan(
    plan: pl.DataFrame, contacts: pl.DataFrame, opt_outs: pl.DataFrame
) -> CheckResult:
    """Planned patient emails to someone with an email / all opt-out or consent false."""
    refused = pl.concat(
        [
            opt_outs.filter(pl.col("channel").is_in(["email", "all"])).select("patient_id"),
            contacts.filter(pl.col("accepted_email_marketing") == False).select("patient_id"),  # noqa: E712
        ]
    ).unique()
    bad = (
        plan.filter((pl.col("decision") == SEND) & (pl.col("channel") != STAFF_CHANNEL))
        .join(refused, on="patient_id")
        .select("campaign", "patient_id")
        .sort("patient_id")
    )
    return CheckResult(bad.is_empty(), bad.height, bad["patient_id"].head(10).to_list())


def twice_in_cap_window(
    plan: pl.DataFrame,
    history: pl.DataFrame,
    as_of: date,
    since: datetime,
    max_messages: int = 1,
) -> CheckResult:
    """Patients the plan would take past the cap, counting every message of the ledger
    requested at or after `since` (the start of the cap window, in real time).

    A ledger row of the same campaign on the as-of date is the planned message itself
    (a re-run of the day) and is not counted twice.
    """
    planned = plan.filter((pl.col("decision") == SEND) & (pl.col("channel") != STAFF_CHANNEL))
    earlier = history.filter(
        pl.col("status").is_in(list(DELIVERED_OR_MAYBE)),
        pl.col("recipient") != STAFF_RECIPIENT,
        pl.col("attempted_at") >= since.astimezone(UTC),
    ).select(pl.col("recipient").alias("patient_id"), pl.col("campaign"), "send_date")
    same_message = planned.select("campaign", "patient_id").join(
        earlier.filter(pl.col("send_date") == as_of), on=["campaign", "patient_id"], how="semi"
    )
    counted = pl.concat(
        [
            planned.select("patient_id"),
            earlier.select("patient_id"),
        ]
    )
    per_patient = counted.group_by("patient_id").len()
    # Remove one count per planned message already in the ledger (same message twice).
    dup = same_message.group_by("patient_id").len().rename({"len": "dup"})
    bad = (
        per_patient.join(dup, on="patient_id", how="left")
        .with_columns((pl.col("len") - pl.col("dup").fill_null(0)).alias("messages"))
        .filter(pl.col("messages") > max_messages)
        .join(planned.select("patient_id").unique(), on="patient_id", how="semi")
        .sort("patient_id")
    )
    return CheckResult(bad.is_empty(), bad.height, bad["patient_id"].head(10).to_list())
