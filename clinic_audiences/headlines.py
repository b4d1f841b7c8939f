"""Headline figures of a built feature warehouse, for the end of a run or a demo.

Plain SQL over the marts (no dbt, no Dagster) so any caller with a DuckDB connection to
the warehouse can print them.
"""

from __future__ import annotations

from decimal import Decimal

import duckdb

# Lapsed = last visit between 12 and 6 calendar months before D (inclusive), the
# reactivation cohort of the shipped segment library.
HEADLINES_SQL = """
with run as (
    select as_of from marts.warehouse_as_of
),
patients as (
    select
        count(*) as patients,
        count(*) filter (where status = 'active') as active_patients,
        count(*) filter (
            where last_visit_date between cast(run.as_of - interval 12 month as date)
                and cast(run.as_of - interval 6 month as date)
        ) as lapsed_6_12_months,
        coalesce(sum(balance_due), 0) as total_balance_due
    from marts.patient_features, run
    group by all
),
cases as (
    select count(*) as open_cases_expiring_30d
    from marts.case_features
    where status = 'open' and days_until_expiry between 0 and 30
)
select run.as_of, patients.*, cases.*
from run, patients, cases
"""


def headline_figures(con: duckdb.DuckDBPyConnection) -> dict[str, object]:
    """as_of, patients, active_patients (status active), lapsed_6_12_months,
    total_balance_due and open_cases_expiring_30d (open cases expiring within 30 days of
    D, D included)."""
    try:
        result = con.sql(HEADLINES_SQL)
    except duckdb.CatalogException as exc:
        raise RuntimeError(
            "the feature warehouse is not built yet (marts.* missing): run `dbt build` in "
            f"dbt_project/ or materialise the marts assets ({exc})"
        ) from None
    (row,) = result.fetchall()
    figures = dict(zip(result.columns, row, strict=True))
    figures["total_balance_due"] = Decimal(figures["total_balance_due"])
    return figures
