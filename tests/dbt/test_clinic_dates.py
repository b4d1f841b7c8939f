"""`before_local_day`, the fast form of `local_date(ts) < day`, against Python's own time
zones: every quarter hour from three days before the day to three days after, in zones
far east and far west of UTC, with offsets of 45 minutes, and with daylight time that
starts or ends at midnight (where the day itself begins at another hour)."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import duckdb
import pytest

pytestmark = pytest.mark.dbt

# (zone, day): the day is one on which the zone changes its clocks where it has a rule.
CASES = [
    ("Australia/Sydney", date(2024, 4, 7)),  # daylight time ends at 03:00
    ("Australia/Sydney", date(2024, 10, 6)),  # daylight time starts at 02:00
    ("Pacific/Kiritimati", date(2024, 3, 1)),  # UTC+14
    ("Etc/GMT+12", date(2024, 3, 1)),  # UTC-12
    ("Asia/Kathmandu", date(2024, 3, 1)),  # UTC+5:45
    ("America/Santiago", date(2024, 9, 8)),  # the clocks go from 00:00 to 01:00
    ("America/Havana", date(2024, 11, 3)),  # 01:00 comes twice, after midnight
    ("Australia/Lord_Howe", date(2024, 4, 7)),  # half an hour back
]


def compiled(dbt_cli, path, zone: str, day: date) -> str:
    sql = (
        "select ts, {{ before_local_day('ts', as_of_date()) }} as before, "
        "{{ local_date('ts') }} < {{ as_of_date() }} as converted from grid"
    )
    done = dbt_cli(["compile", "--inline", sql, "--output", "json", "--quiet"], path,
                   {"as_of": day.isoformat(), "clinic_timezone": zone})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(re.search(r"\{.*\}", done.stdout, re.S).group(0))["compiled"]


def test_before_local_day_is_the_local_date_compared(dbt_cli, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    # Compiled once; each case puts its own zone and day where the first case's stand.
    first_zone, first_day = CASES[0]
    template = compiled(dbt_cli, path, first_zone, first_day)
    assert f"'{first_zone}'" in template and f"date '{first_day}'" in template
    for zone, day in CASES:
        query = template.replace(f"'{first_zone}'", f"'{zone}'").replace(
            f"date '{first_day}'", f"date '{day}'")
        start = datetime.combine(day, datetime.min.time(), UTC) - timedelta(days=3)
        moments = [start + timedelta(minutes=15 * i) for i in range(6 * 24 * 4)]
        con = duckdb.connect()
        con.execute("set TimeZone = 'UTC'")
        con.execute("create table grid (ts timestamptz)")
        con.executemany("insert into grid values (?)", [[m] for m in moments] + [[None]])
        rows = {r[0]: (r[1], r[2]) for r in con.execute(query).fetchall()}
        con.close()
        zoneinfo = ZoneInfo(zone)
        for moment in moments:
            expected = moment.astimezone(zoneinfo).date() < day
            assert rows[moment] == (expected, expected), (zone, day, moment, rows[moment])
        assert rows[None] == (None, None)
