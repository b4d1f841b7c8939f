"""Screenshots of the web app for docs/webapp.md: the builder, an explanation, a segment's
trend and a work-list board, taken in headless Chromium on a generated demo clinic.

    .venv/bin/python scripts/screenshots.py [--out docs/images] [--patients 3000]

Builds the clinic in a temporary folder (nothing of var/ is touched), serves the app on a
free port of 127.0.0.1, signs in with an account made for the run, and writes PNGs.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"))
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--days", type=int, default=10, help="days of history to build")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    day = date.today() - timedelta(days=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ.update(
            DUCKDB_PATH=str(folder / "w.duckdb"), STATE_DB_URL=f"sqlite:///{folder / 's.db'}",
            CLINIC_TIMEZONE="Australia/Sydney", OUTBOUND_SEND_DISABLED="1",
            OUTBOUND_RUN_TIME="10:00",
        )  # fmt: skip
        os.environ.pop("DAGSTER_HOME", None)
        from clinic_audiences.cli import main as audiences
        from extract.synthetic import generate_clinic

        generate_clinic(args.patients, folder / "x", seed=42, fmt="csv", as_of=day)
        # A week of days, so that the segment's trend has days to show.
        first = day - timedelta(days=args.days - 1)
        if audiences(["run", "--extracts", str(folder / "x"), "--from", first.isoformat(),
                      "--to", day.isoformat()]):  # fmt: skip
            print("the pipeline run failed", file=sys.stderr)
            return 1
        return shoot(out, args.chromium, day)


def shoot(out: Path, chromium: str, day: date) -> int:
    import uvicorn
    from playwright.sync_api import sync_playwright

    from core.settings import Settings
    from webapp import accounts
    from webapp.app import create_app

    settings = Settings.from_environ(os.environ)
    password = secrets.token_urlsafe(16)
    engine = accounts.open_accounts(settings.state_db_url)
    accounts.add_user(engine, "desk@clinic.example", "Front desk", "staff", password)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{base}/signin")
        page.fill("input[name=email]", "desk@clinic.example")
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/segments")
        page.goto(f"{base}/builder?start=seminar-attendees-never-booked")
        page.wait_for_selector("#builder:not([data-pending])", state="attached")
        page.wait_for_selector("#count")
        page.screenshot(path=str(out / "builder.png"), full_page=True)
        page.goto(f"{base}/segments/lapsed-physio-6-12mo")
        page.screenshot(path=str(out / "segment-trend.png"))
        member = page.locator("table.list tbody tr td").first.inner_text().split()[0]
        page.goto(f"{base}/segments/lapsed-physio-6-12mo/explain?q={member}")
        page.wait_for_selector("#verdict")
        page.screenshot(path=str(out / "explanation.png"), full_page=True)
        page.goto(f"{base}/worklists/lapsed-physio-6-12mo")
        # Work a few cards as the front desk would: two called, one booked, a note.
        cards = page.locator(".column[aria-label='To call'] .card input[name=member]")
        for n in range(3):
            cards.nth(n).check()
        page.select_option("#bulk select[name=stage]", "Left voicemail")
        page.click("#bulk button[value=move]")
        page.wait_for_selector("#bulk-result")
        page.locator(".column[aria-label='Left voicemail'] .card a").first.click()
        page.fill("textarea[name=note]", "Left a message about a follow-up; try after 5pm")
        page.click("button:has-text('Add note')")
        page.wait_for_selector("#timeline li")
        page.screenshot(path=str(out / "card.png"), full_page=True)
        page.goto(f"{base}/worklists/lapsed-physio-6-12mo")
        page.screenshot(path=str(out / "board.png"))
        browser.close()
    server.should_exit = True
    for name in ("builder", "segment-trend", "explanation", "board", "card"):
        print(f"wrote {out / (name + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
