"""What a sync reads from the warehouse: a segment's members and patients' bookings."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from core.warehouse import Warehouse, WrongDay, built_for, connect, require_built_for
from segments.members import latest_day, read_members
from workflow.planning import Member

APPOINTMENT_COLUMNS = ("patient_id", "starts_at", "created_at", "cancelled_at")


def _table_columns(con, schema: str, table: str) -> set[str]:  # noqa: ANN001 - duckdb con
    rows = con.execute(
        "select column_name from information_schema.columns "
        "where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchall()
    return {r[0] for r in rows}


def read_segment_members(
    warehouse: Warehouse | str | Path, segment_slug: str, entity: str, as_of: date
) -> list[Member]:
    """The members of a segment on the as-of day (`segments.members.read_members`).

    For a case segment the member is the case (`case_id`); for a patient segment, the
    patient. A segment not evaluated for that day is an error rather than an empty list,
    so that a warehouse without that day's segment run cannot mark every member as having
    left.
    """
    with Warehouse.at(warehouse).connect(read_only=True) as con:
        latest = latest_day(con, segment_slug)
        if latest is not None and as_of < latest:
            # Syncing an older day would move the list back in time: members of the later
            # day would be marked as having left.
            raise WrongDay(
                f"the work list of segment {segment_slug!r} follows its latest day, "
                f"{latest}; a sync for the earlier {as_of} is refused. Ask for {latest} or "
                "a later day"
            )
        rows = read_members(con, [segment_slug], as_of).select("patient_id", "case_id").rows()
    result = []
    for patient_id, case_id in rows:
        if entity == "case":
            if case_id is None:
                raise ValueError(
                    f"segments.membership row of case segment {segment_slug!r} for patient "
                    f"{patient_id!r} has no case_id; a case segment lists cases"
                )
            result.append(Member(member_id=str(case_id), patient_id=str(patient_id),
                                 case_id=str(case_id)))  # fmt: skip
        else:
            result.append(Member(member_id=str(patient_id), patient_id=str(patient_id)))
    return result


def read_latest_bookings(
    duckdb_path: str | Path, as_of: date, clinic_timezone: str
) -> dict[str, datetime]:
    """Per patient, when their newest upcoming booking was created (`marts.appointments`).

    Upcoming (docs/warehouse.md): starts on or after the as-of date in the clinic time
    zone and not cancelled. Appointments without `created_at` cannot say when they were
    booked and are left out.
    """
    with connect(duckdb_path, read_only=True) as con:
        day, zone = built_for(con)
        require_built_for(day, as_of, "bookings", clinic_timezone, zone)
        have = _table_columns(con, "marts", "appointments")
        missing = [c for c in APPOINTMENT_COLUMNS if c not in have]
        if missing:
            raise LookupError(
                f"{duckdb_path}: marts.appointments lacks {missing} (has {sorted(have)}); "
                "on_booking needs patient_id, starts_at, created_at and cancelled_at"
            )
        # A start on or after the as-of day in the clinic time zone is a start after the
        # instant a day before that day's midnight there (whatever the zone's offsets and
        # changes): that plain comparison drops the past first, and the day in the clinic
        # time zone, which costs a conversion per row, is only worked out for the rest.
        since = datetime.combine(as_of, time(), ZoneInfo(clinic_timezone)) - timedelta(days=1)
        rows = con.execute(
            """
            select patient_id, max(created_at)
            from marts.appointments
            where starts_at >= cast(? as timestamptz)
              and cancelled_at is null
              and created_at is not null
              and cast(timezone(?, starts_at) as date) >= ?
            group by patient_id
            """,
            [since.astimezone(UTC), clinic_timezone, as_of],
        ).fetchall()
    # TIMESTAMPTZ comes back aware; a plain TIMESTAMP column is taken to be UTC.
    return {
        str(pid): created if created.tzinfo else created.replace(tzinfo=UTC)
        for pid, created in rows
    }
