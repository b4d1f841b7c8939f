"""What an SMS says and how it goes over the air: numbers, zones, encoding, the text."""

from __future__ import annotations

import polars as pl
import pytest

from outbound.campaigns import Campaign, CampaignError, parse_campaign
from outbound.phones import e164, encode, with_patient_zone
from outbound.templates import TemplateError, campaign_content, fill


@pytest.mark.parametrize(
    ("written", "country", "expected"),
    [
        ("0412 345 678", "AU", "+61412345678"),
        ("0412-345-678", "AU", "+61412345678"),
        ("+61 (0) 412 345 678", "AU", "+61412345678"),
        ("0061 412 345 678", "AU", "+61412345678"),
        ("(02) 9876 5432", "AU", "+61298765432"),
        # No trunk prefix, no country code: which country is not known, so not guessed.
        ("412 345 678", "AU", None),
        ("0412 345 678 ext 2", "AU", None),
        ("0412 345 678 / 0413 000 111", "AU", None),
        ("+61412", "AU", None),
        ("", "AU", None),
        ("(212) 555-0100", "US", "+12125550100"),
        ("1 212 555 0100", "US", "+12125550100"),
        ("555-0100", "US", None),
        ("+44 (0)20 7946 0958", "GB", "+442079460958"),
        ("07700 900123", "GB", "+447700900123"),
        # Written as people paste them: a no-break space, fullwidth digits, a zero-width
        # space, a non-breaking hyphen.
        ("0412\u00a0345\u00a0678", "AU", "+61412345678"),
        ("０４１２３４５６７８", "AU", "+61412345678"),
        ("0412345678\u200b", "AU", "+61412345678"),
        ("0412\u2011345\u2011678", "AU", "+61412345678"),
        # The trunk 0 kept after the country code; Australia's own international prefix.
        ("+61 0412 345 678", "AU", "+61412345678"),
        ("0011 61 412 345 678", "AU", "+61412345678"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        # +1 numbers have exactly ten digits after the 1.
        ("+111111111111111", "AU", None),
    ],
)
def test_numbers_in_e164(written, country, expected):
    assert e164(written, country) == expected


def test_the_patients_zone_from_their_address():
    frame = pl.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
            "country": ["Australia", "AU", "USA", "New Zealand", "Atlantis", None, None, "AU"],
            "state": ["NSW", "western australia", "CA", None, "X", None, "W.A.", "NSW"],
        }
    )
    zones = with_patient_zone(frame.lazy(), "Australia/Brisbane").collect()
    assert zones.height == 8
    assert dict(zones.select("patient_id", "zone").rows()) == {
        "a": "Australia/Sydney|Australia/Broken_Hill",  # NSW holds Broken Hill too
        "b": "Australia/Perth",
        "c": "America/Los_Angeles",
        "d": "Pacific/Auckland",
        "e": "Australia/Brisbane",  # not known: the clinic's zone
        "f": "Australia/Brisbane",  # no address: the clinic's zone
        "g": "Australia/Perth",  # a state alone is in the clinic's country
        "h": "Australia/Sydney|Australia/Broken_Hill",  # the same place written another way
    }


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),  # 153 + 8
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # an extension character takes two septets
        # 152 + € would be 154 > 153: the € opens part 2, whose 76 € fill it: 3 parts
        # where 306 septets alone would make 2.
        ("a" * 152 + "€" * 77, "GSM-7", 306, 3),
        ("ā" * 70, "UCS-2", 70, 1),
        ("ā" * 71, "UCS-2", 71, 2),  # 67 + 4
        ("😀" * 35, "UCS-2", 70, 1),  # outside the BMP: two code units each
        # An emoji is never split across parts: 66 | 33 emoji | 1 emoji.
        ("a" * 66 + "😀" * 34, "UCS-2", 134, 3),
    ],
)
def test_encoding_and_segments(text, encoding, units, segments):
    got = encode(text)
    assert (got.encoding, got.units, got.segments) == (encoding, units, segments)


def sms_campaign(**kw) -> Campaign:
    return Campaign.model_validate({
        "name": "n", "segment": "s", "channel": "sms", "template": {"local": "reactivation"},
        "priority": 1, "schedule": {"every": "day"}, "slug": "recall", **kw,
    })  # fmt: skip


def test_a_commercial_sms_names_the_clinic_and_says_how_to_stop():
    text = campaign_content(sms_campaign(), clinic_name="Harbour Physio").text
    assert text.startswith("Harbour Physio: Hi -first_name-, ")
    assert text.endswith(" Reply STOP to opt out.")
    with pytest.raises(TemplateError, match="set CLINIC_NAME"):
        campaign_content(sms_campaign())
    # A transactional message is sent as written.
    plain = campaign_content(sms_campaign(purpose="transactional",
                                          unsubscribe_category="appointments")).text
    assert plain.startswith("Hi -first_name-, ") and "STOP" not in plain


def test_fill_replaces_each_tag_once():
    # A value that looks like a tag is not filled again.
    data = {"first_name": "-case_name-", "case_name": "Knee"}
    assert fill("Hi -first_name-, -case_name-", data) == "Hi -case_name-, Knee"


def test_an_sms_campaign_needs_an_sms_template(tmp_path):
    base = ("name: n\nsegment: s\nchannel: sms\npriority: 1\nschedule: {every: day}\n")
    with pytest.raises(CampaignError, match="needs a local template with sms.txt"):
        parse_campaign(tmp_path / "a.yaml", _yaml(base + "template: {sendgrid_template_id: d-"
                                                   + "0" * 32 + "}\n"), None)  # fmt: skip
    with pytest.raises(CampaignError, match="'birthday' needs sms.txt"):
        parse_campaign(tmp_path / "a.yaml", _yaml(base + "template: {local: birthday}\n"), None)
    with pytest.raises(CampaignError, match="purpose: Input should be 'commercial' or "):
        parse_campaign(tmp_path / "a.yaml", _yaml(base + "template: {local: reactivation}\n"
                                                   "purpose: marketing\n"), None)  # fmt: skip


def _yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def test_a_bare_stop_or_a_name_inside_a_word_is_not_enough(tmp_path, monkeypatch):
    import outbound.campaigns as campaigns_mod
    import outbound.templates as templates_mod

    folder = tmp_path / "templates"
    (folder / "keep_going").mkdir(parents=True)
    (folder / "keep_going" / "sms.txt").write_text(
        "Don't stop your home exercises, {{ r.first_name }}!")
    monkeypatch.setattr(campaigns_mod, "TEMPLATES_DIR", folder)
    monkeypatch.setattr(templates_mod, "TEMPLATES_DIR", folder)
    c = sms_campaign(template={"local": "keep_going"})
    # "stop" here is no opt-out instruction, and "home" inside the text does not name a
    # clinic called Home: both are added.
    assert campaign_content(c, clinic_name="Home").text == (
        "Home: Don't stop your home exercises, -first_name-! Reply STOP to opt out.")


def test_an_sms_that_fills_to_nothing_is_not_sent():
    from outbound.channels import Content, Recipient, TwilioSms

    ch = TwilioSms(account_sid="AC" + "0" * 32, auth_token="t", from_number="+61400000000",
                   base_url="http://127.0.0.1:9")  # nothing listens: no request may be made
    outcome = ch.send_batch([Recipient("l1", "+61412345678", {"case_name": ""})],
                            Content(text="-case_name-"), [], {})  # fmt: skip
    assert not outcome.ok and outcome.attempts == 0 and "message is empty" in outcome.error
