"""Reading the outbound inputs from the DuckDB warehouse and writing the outbound tables.

Inputs: `segments.membership`, `raw.patients` (addresses, consent), `raw.opt_outs`, and
for template data `marts.case_features` / `marts.patient_features` when they exist.
Outputs (schema `outbound`): `campaign_candidates`, `send_plan`, `send_ledger`.
"""

from __future__ import annotations

import duckdb
import polars as pl

from outbound.ledger import LEDGER_EXPORT_SCHEMA
from outbound.selection import ADDRESS_SCHEMA, CONTACTS_SCHEMA, OPT_OUTS_SCHEMA

SCHEMA = "outbound"


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    rows = con.execute(
        "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
        [schema, name],
    ).fetchall()
    return bool(rows[0][0])


def _require(con: duckdb.DuckDBPyConnection, schema: str, name: str, produced_by: str) -> None:
    if not table_exists(con, schema, name):
        raise LookupError(
            f"warehouse table {schema}.{name} does not exist yet; it is written by "
            f"{produced_by}: run that step first (or check DUCKDB_PATH)"
        )


def read_contacts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    _require(con, "raw", "patients", "ingest")
    return (
        con.sql(
            "select patient_id, first_name, email, mobile, accepted_email_marketing, "
            "accepted_sms_marketing, state, country, has_whatsapp from raw.patients"
        )
        .pl()
        .cast(CONTACTS_SCHEMA | ADDRESS_SCHEMA)
    )


def read_extract_opt_outs(con: duckdb.DuckDBPyConnection) -> tuple[pl.DataFrame, int]:
    """Every opt-out of the extract, whatever date it carries, and how many opt-out rows
    could not be read at all.

    An opt-out is an opt-out at the moment of sending even when its row was rejected by
    ingest (a date or a channel it could not read): a rejected row that still names a
    patient counts, for every channel when its channel is not one of sms, email, whatsapp
    or all. A rejected record that names no patient (a line the CSV reader could not split)
    is counted as unreadable: the caller must not send while any exists.
    """
    frames = [pl.DataFrame(schema=OPT_OUTS_SCHEMA)]
    unreadable = 0
    if table_exists(con, "raw", "opt_outs"):
        frames.append(
            con.sql("select distinct patient_id, lower(channel) as channel from raw.opt_outs")
            .pl()
            .cast(OPT_OUTS_SCHEMA)
        )
    if table_exists(con, "raw", "opt_outs__rejected"):
        rejected = con.sql(
            """
            select
                nullif(trim(json_extract_string(try_cast(record as json), '$.patient_id')), '')
                    as patient_id,
                lower(trim(json_extract_string(try_cast(record as json), '$.channel')))
                    as channel
            from raw.opt_outs__rejected
            """
        ).pl()
        unreadable = rejected.filter(pl.col("patient_id").is_null()).height
        frames.append(
            rejected.filter(pl.col("patient_id").is_not_null())
            .with_columns(
                pl.when(pl.col("channel").is_in(["sms", "email", "whatsapp", "all"]))
                .then(pl.col("channel"))
                .otherwise(pl.lit("all"))
                .alias("channel")
            )
            .cast(OPT_OUTS_SCHEMA)
        )
    return pl.concat(frames).unique(), unreadable


def read_recipient_data(con: duckdb.DuckDBPyConnection, keys: pl.DataFrame) -> pl.DataFrame:
    """Template fields for (patient_id, case_id) pairs, as text ('' when unknown)."""
    con.register("_recipient_keys", keys.select("patient_id", "case_id").to_arrow())
    try:
        has_cases = table_exists(con, "marts", "case_features")
        has_pf = table_exists(con, "marts", "patient_features")
        case_cols = (
            "cf.name as case_name, cf.expiry_date, cf.days_until_expiry, cf.sessions_left, "
            "cf.invoiceable_left"
            if has_cases
            else "null as case_name, null as expiry_date, null as days_until_expiry, "
            "null as sessions_left, null as invoiceable_left"
        )
        pf_cols = (
            "pf.balance_due, pf.oldest_open_invoice_days, pf.last_appointment_type"
            if has_pf
            else "null as balance_due, null as oldest_open_invoice_days, "
            "null as last_appointment_type"
        )
        joins = ""
        if has_cases:
            joins += " left join marts.case_features cf on cf.case_id = k.case_id"
        if has_pf:
            joins += " left join marts.patient_features pf on pf.patient_id = k.patient_id"
        frame = con.sql(
            f"""
            select k.patient_id, k.case_id, p.first_name, {case_cols}, {pf_cols}
            from _recipient_keys k
            left join raw.patients p on p.patient_id = k.patient_id
            {joins}
            """
        ).pl()
    finally:
        con.unregister("_recipient_keys")
    return frame.with_columns(pl.exclude("patient_id", "case_id").cast(pl.String).fill_null(""))


def write_table(con: duckdb.DuckDBPyConnection, name: str, frame: pl.DataFrame) -> None:
    """Replace `outbound.<name>` with the frame (typed even when the frame is empty)."""
    con.execute(f"create schema if not exists {SCHEMA}")
    con.register("_outbound_frame", frame.to_arrow())
    try:
        con.execute(f"create or replace table {SCHEMA}.{name} as select * from _outbound_frame")
    finally:
        con.unregister("_outbound_frame")


def export_ledger(con: duckdb.DuckDBPyConnection, ledger_frame: pl.DataFrame) -> None:
    """`outbound.send_ledger` for the analytics models; always exists, possibly empty."""
    write_table(con, "send_ledger", ledger_frame.select(list(LEDGER_EXPORT_SCHEMA)))
