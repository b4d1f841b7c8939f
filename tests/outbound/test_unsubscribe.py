"""One-click unsubscribe links: signed, expiring, and carried by every patient email."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

SECRET = "s" * 40
SENT = date(2026, 11, 26)


def test_a_token_says_who_and_which_channel_until_it_expires_and_nothing_forged_passes():
    from outbound.unsubscribe import VALID_DAYS, BadToken, ExpiredToken, make_token, read_token

    token = make_token(SECRET, "p00042", "email", SENT)
    found = read_token(SECRET, token, SENT + timedelta(days=VALID_DAYS))
    assert (found.patient_id, found.channel) == ("p00042", "email")
    with pytest.raises(ExpiredToken):
        read_token(SECRET, token, SENT + timedelta(days=VALID_DAYS + 1))
    payload, signature = token.split(".")
    other = make_token(SECRET, "p00043", "email", SENT).split(".")[0]
    for forged in (f"{other}.{signature}", f"{payload}.{signature[:-2]}", payload, "",
                   f"{payload}.{signature}x", "é.é", make_token("t" * 40, "p00042", "email",
                                                             SENT)):  # fmt: skip
        with pytest.raises(BadToken):
            read_token(SECRET, forged, SENT)
    # The token carries no address and no name.
    assert "@" not in token and "p00042" not in token


def test_every_patient_email_carries_its_own_one_click_link(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    from dataclasses import replace

    from outbound.unsubscribe import read_token
    from tests.outbound.test_sending import camp, channel, run, setup

    settings = replace(setup(make_warehouse, tmp_path, state_url, 3),
                       web_app_url="https://app.clinic.example", unsubscribe_secret=SECRET)
    run(settings, [camp("reactivate", "seg", 50)], engine, channel(fake_sendgrid))
    (request,) = fake_sendgrid.requests
    seen = {}
    for p in request["personalizations"]:
        url = p["headers"]["List-Unsubscribe"].strip("<>")
        assert p["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert url.startswith("https://app.clinic.example/unsubscribe/")
        assert p["substitutions"]["-unsubscribe_url-"] == url
        seen[p["to"][0]["email"]] = read_token(SECRET, url.rsplit("/", 1)[1], SENT).patient_id
    assert seen == {"p0@clinic.example": "p00000", "p1@clinic.example": "p00001",
                    "p2@clinic.example": "p00002"}  # fmt: skip
    # And it is visible in the message itself, in both parts.
    parts = {c["type"]: c["value"] for c in request["content"]}
    assert parts["text/plain"].endswith("To stop these emails: -unsubscribe_url-")
    assert '<a href="-unsubscribe_url-">Unsubscribe</a>' in parts["text/html"]


def test_without_the_web_apps_address_emails_carry_no_link(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    from tests.outbound.test_sending import camp, channel, run, setup

    settings = setup(make_warehouse, tmp_path, state_url, 1)
    run(settings, [camp("reactivate", "seg", 50)], engine, channel(fake_sendgrid))
    (p,) = fake_sendgrid.requests[0]["personalizations"]
    assert "headers" not in p and p["substitutions"]["-unsubscribe_url-"] == ""
    assert all("unsubscribe" not in c["value"].lower()
               for c in fake_sendgrid.requests[0]["content"])


def test_the_settings_refuse_a_short_secret_and_an_address_that_is_not_one():
    from core.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="shorter than 32"):
        Settings.from_environ({"UNSUBSCRIBE_SECRET": "short"})
    with pytest.raises(SettingsError, match="WEB_APP_URL"):
        Settings.from_environ({"WEB_APP_URL": "app.clinic.example/x?y"})
    ok = Settings.from_environ({"WEB_APP_URL": "https://app.clinic.example/",
                                "UNSUBSCRIBE_SECRET": SECRET})  # fmt: skip
    assert ok.web_app_url == "https://app.clinic.example" and SECRET not in repr(ok)
