"""The unsubscribe link's page in a real headless Chromium: stop the email's kind, then
choose what to keep, with nobody signed in."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.webapp.test_browser import CHROMIUM, browser, server  # noqa: F401 - fixtures

SECRET = "p" * 40
pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(),
                                reason="no Chromium on this machine")  # fmt: skip


@pytest.fixture
def app(settings):
    from webapp.app import create_app

    return create_app(replace(settings, web_app_url="https://app.clinic.example",
                              unsubscribe_secret=SECRET))  # fmt: skip


def left_categories(settings, patient: str) -> dict[str, str]:
    from outbound.ledger import category_opt_outs
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    with engine.connect() as conn:
        return {r.category: r.source for r in conn.execute(
            category_opt_outs.select().where(category_opt_outs.c.patient_id == patient))}


def test_a_patient_stops_one_kind_and_keeps_what_they_tick(browser, server, settings):  # noqa: F811
    from core.days import today_in
    from outbound.unsubscribe import make_token

    patient = "browser-patient-1"
    token = make_token(SECRET, patient, "email", today_in(settings.clinic_timezone),
                       "reactivation")  # fmt: skip
    page = browser.new_page()
    page.goto(f"{server}/unsubscribe/{token}")
    assert page.inner_text("h1") == "Stop invitations to come back from the clinic?"
    page.click("button:has-text('Unsubscribe')")
    assert "no more invitations to come back" in page.inner_text("#unsubscribed")
    assert left_categories(settings, patient) == {"reactivation": "one-click unsubscribe"}
    # Reactivation is unticked now; the patient takes it back and drops invoices.
    assert not page.is_checked("input[value=reactivation]")
    page.check("input[value=reactivation]")
    page.uncheck("input[value=billing]")
    page.click("#preferences button[type=submit]")
    assert page.inner_text("h1") == "Saved"
    assert left_categories(settings, patient) == {"billing": "preference page"}
    assert page.is_checked("input[value=reactivation]")
    assert not page.is_checked("input[value=billing]")
    page.close()
