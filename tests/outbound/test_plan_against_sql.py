"""The planner against the same plan written independently in SQL (the send-planning
benchmark's baseline), row for row, on a synthetic clinic whose records share addresses,
with opt-outs, refused addresses, category opt-outs, a ledger inside the cap window, a
campaign whose window has closed and one keeping quiet hours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_planner_and_the_sql_plan_agree_row_for_row(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_outbound.py"), "--patients", "20000",
         "--repeat", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "agree on every row" in done.stdout
    # Every step of the suppression order is reached in the plan compared.
    counts = {
        tuple(line.split()[:2]): int(line.split()[2].replace(",", ""))
        for line in done.stdout.split("plan rows by decision and reason:")[1].splitlines()
        if line.startswith("  ")
    }
    reached = {reason for (_, reason), n in counts.items() if n > 0}
    assert reached >= {"opted_out", "no_consent", "no_address", "frequency_cap",
                       "lower_priority", "same_address", "quiet_hours", "-"}, counts  # fmt: skip
