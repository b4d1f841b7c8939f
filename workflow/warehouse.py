"""What a sync reads from the warehouse: a segment's members and patients' bookings."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from ingest.warehouse import connect
from workflow.engine import Member

APPOINTMENT_COLUMNS = ("patient_id", "starts_at", "created_at", "cancelled_at")


def _table_columns(con, schema: str, table: str) -> set[str]:  # noqa: ANN001 - duckdb con
    rows = con.execute(
        "select column_name from information_schema.columns "
        "where table_schema = ? and table_name = ?",
        [schema, table],
    ).fetchall()
    return {r[0] for r in rows}


def read_segment_members(duckdb_path: str | Path, segment_slug: str, entity: str) -> list[Member]:
    """Current members of a segment from `segments.membership` (its latest `as_of`).

    For a case segment the member is the case (`case_id`); for a patient segment, the
    patient. A missing `segments.membership` table is an error rather than an empty list,
    so that a warehouse without segment runs cannot mark every member as having left.
    """
    with connect(duckdb_path, read_only=True) as con:
        if not _table_columns(con, "segments", "membership"):
            raise LookupError(
                f"{duckdb_path}: table segments.membership does not exist; materialise "
                f"the segment {segment_slug!r} before its work list"
            )
        rows = con.execute(
            """
            select patient_id, case_id
            from segments.membership
            where segment_slug = ?
              and as_of = (select max(as_of) from segments.membership where segment_slug = ?)
            """,
            [segment_slug, segment_slug],
        ).fetchall()
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

    Upcoming (DESIGN.md section 4): starts on or after the as-of date in the clinic time
    zone and not cancelled. Appointments without `created_at` cannot say when they were
    booked and are left out.
    """
    with connect(duckdb_path, read_only=True) as con:
        have = _table_columns(con, "marts", "appointments")
        missing = [c for c in APPOINTMENT_COLUMNS if c not in have]
        if missing:
            raise LookupError(
                f"{duckdb_path}: marts.appointments lacks {missing} (has {sorted(have)}); "
                "on_booking needs patient_id, starts_at, created_at and cancelled_at"
            )
        rows = con.execute(
            """
            select patient_id, max(created_at)
            from marts.appointments
            where cancelled_at is null
              and created_at is not null
              and cast(timezone(?, starts_at) as date) >= ?
            group by patient_id
            """,
            [clinic_timezone, as_of],
        ).fetchall()
    # TIMESTAMPTZ comes back aware; a plain TIMESTAMP column is taken to be UTC.
    return {
        str(pid): created if created.tzinfo else created.replace(tzinfo=UTC)
        for pid, created in rows
    }
