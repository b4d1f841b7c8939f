"""The conversion analytics models, built by real dbt on a tiny hand-made warehouse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from ingest.raw_tables import create_empty_raw_tables
from outbound.ledger import LEDGER_EXPORT_SCHEMA
from outbound.warehouse_io import export_ledger

pytestmark = pytest.mark.dbt

ROOT = Path(__file__).resolve().parents[2]


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


LEDGER = [
    # id, campaign, recipient, patient_id, segment, send_date, status, created_at
    ("m1", "camp-a", "p1", "p1", "seg-1", date(2026, 11, 2), "sent", ts("2026-11-02 10:00")),
    ("m2", "camp-b", "p1", "p1", "seg-2", date(2026, 11, 10), "sent", ts("2026-11-10 10:00")),
    ("m3", "camp-a", "p2", "p2", "seg-1", date(2026, 11, 3), "sent", ts("2026-11-03 09:00")),
    ("m4", "camp-a", "p3", "p3", "seg-1", date(2026, 11, 4), "sent", ts("2026-11-04 09:00")),
    ("m5", "camp-a", "staff", None, "seg-1", date(2026, 11, 4), "sent", ts("2026-11-04 09:00")),
    ("m6", "camp-a", "p4", "p4", "seg-1", date(2026, 11, 4), "failed", ts("2026-11-04 09:00")),
]
APPOINTMENTS = [
    # id, patient, starts_at, created_at, cancelled_at
    ("a1", "p1", ts("2026-11-20 09:00"), ts("2026-11-12 08:00"), None),
    ("a2", "p1", ts("2026-11-06 09:00"), ts("2026-11-05 08:00"), None),
    ("a3", "p2", ts("2026-12-10 09:00"), ts("2026-12-04 09:00"), None),
    ("a4", "p3", ts("2026-11-10 09:00"), ts("2026-11-05 08:00"), ts("2026-11-06 08:00")),
    ("a5", "p2", ts("2026-11-02 09:00"), ts("2026-11-01 08:00"), None),
    ("a6", "p3", ts("2026-12-08 09:00"), ts("2026-12-04 09:00"), None),
    ("a7", "p4", ts("2026-11-08 09:00"), ts("2026-11-05 09:00"), None),
]
INVOICES = [
    # id, patient, issue_date, total, status, appointment
    ("i1", "p1", date(2026, 11, 20), Decimal("120.00"), "paid", "a1"),
    ("i2", "p1", date(2026, 11, 6), Decimal("80.00"), "void", "a2"),
    ("i3", "p1", date(2026, 11, 6), Decimal("50.00"), "open", "a2"),
]


def build(db: Path, with_ledger: bool) -> None:
    con = duckdb.connect(str(db))
    try:
        con.execute("SET TimeZone = 'UTC'")
        create_empty_raw_tables(con)
        for pid in ("p1", "p2", "p3", "p4"):
            con.execute("insert into raw.patients (patient_id) values (?)", [pid])
        for row in APPOINTMENTS:
            con.execute(
                "insert into raw.appointments (appointment_id, patient_id, starts_at, created_at, "
                "cancelled_at) values (?, ?, ?, ?, ?)",
                list(row),
            )
        for row in INVOICES:
            con.execute(
                "insert into raw.invoices (invoice_id, patient_id, issue_date, total_amount, "
                "status, appointment_id) values (?, ?, ?, ?, ?, ?)",
                list(row),
            )
        if with_ledger:
            frame = pl.DataFrame(
                [
                    {
                        "id": i, "campaign": c, "recipient": r, "patient_id": p, "case_id": None,
                        "segment_slug": s, "channel": "email", "send_date": d, "status": st,
                        "created_at": t, "updated_at": t,
                    }
                    for i, c, r, p, s, d, st, t in LEDGER
                ],
                schema=LEDGER_EXPORT_SCHEMA,
            )  # fmt: skip
            export_ledger(con, frame)
    finally:
        con.close()


def dbt_build(db: Path, target: Path) -> None:
    dbt = Path(sys.executable).parent / "dbt"
    exe = str(dbt) if dbt.exists() else (shutil.which("dbt") or "dbt")
    env = {**os.environ, "DUCKDB_PATH": str(db), "CLINIC_TIMEZONE": "UTC"}
    proc = subprocess.run(
        [
            exe, "build", "--select", "+path:models/analytics", "--indirect-selection", "cautious",
            "--vars", "{as_of: '2026-12-31'}",
            "--project-dir", str(ROOT / "dbt_project"), "--profiles-dir", str(ROOT / "dbt_project"),
            "--target-path", str(target), "--log-path", str(target / "logs"),
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_conversions_by_message_campaign_and_segment(tmp_path):
    db = tmp_path / "wh.duckdb"
    build(db, with_ledger=True)
    dbt_build(db, tmp_path / "target")
    con = duckdb.connect(str(db), read_only=True)
    try:
        messages = con.sql(
            "select message_id, converted, bookings, revenue from analytics.message_conversions "
            "order by message_id"
        ).fetchall()
        campaigns = con.sql(
            "select send_week, campaign, messages, conversions, conversion_rate, bookings, revenue "
            "from analytics.campaign_conversions_weekly order by 1, 2"
        ).fetchall()
        segments = con.sql(
            "select send_week, segment_slug, messages, conversions, bookings, revenue "
            "from analytics.segment_conversions_weekly order by 1, 2"
        ).fetchall()
    finally:
        con.close()
    # m1 (p1, 2 Nov): a2 booked 5 Nov is inside 30 days and m1 is the last message before
    #   it → 1 booking, revenue 50 (the 80 invoice is void). a1 (12 Nov) is also inside
    #   m1's window, so m1 converts, but a1 is credited to the later m2.
    # m2 (p1, 10 Nov): a1 booked 12 Nov → 1 booking, revenue 120.
    # m3 (p2, 3 Nov 09:00): a3 booked 4 Dec 09:00, after the 30 days (3 Dec 09:00);
    #   a5 was booked before the message → not converted.
    # m4 (p3, 4 Nov 09:00): a4 was cancelled; a6 booked exactly 30 days later (4 Dec
    #   09:00) counts → converted, 1 booking, no invoice → revenue 0.
    # m5 is a staff digest and m6 failed: not messages to a patient.
    assert messages == [
        ("m1", True, 1, Decimal("50.00")),
        ("m2", True, 1, Decimal("120.00")),
        ("m3", False, 0, Decimal("0.00")),
        ("m4", True, 1, Decimal("0.00")),
    ]
    # Week of Mon 2 Nov, camp-a: m1, m3, m4 → 2 of 3 converted; week of 9 Nov, camp-b: m2.
    assert campaigns == [
        (date(2026, 11, 2), "camp-a", 3, 2, pytest.approx(0.6667), 2, Decimal("50.00")),
        (date(2026, 11, 9), "camp-b", 1, 1, pytest.approx(1.0), 1, Decimal("120.00")),
    ]
    assert segments == [
        (date(2026, 11, 2), "seg-1", 3, 2, 2, Decimal("50.00")),
        (date(2026, 11, 9), "seg-2", 1, 1, 1, Decimal("120.00")),
    ]


def test_models_build_on_the_empty_ledger_a_first_send_run_exports(tmp_path):
    """The analytics models run after the outbound assets, which export the ledger on
    every run (empty until something is sent): no guard on a missing table is needed."""
    from outbound.ledger import LEDGER_EXPORT_SCHEMA
    from outbound.warehouse_io import export_ledger

    db = tmp_path / "wh.duckdb"
    build(db, with_ledger=False)
    con = duckdb.connect(str(db))
    try:
        export_ledger(con, pl.DataFrame(schema=LEDGER_EXPORT_SCHEMA))
    finally:
        con.close()
    dbt_build(db, tmp_path / "target")
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.sql("select count(*) from analytics.campaign_conversions_weekly").fetchall() == [
            (0,)
        ]
    finally:
        con.close()
