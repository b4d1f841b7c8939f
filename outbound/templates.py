"""Local Jinja templates: rendered once per campaign into subject, HTML and text.

Per-recipient values are not rendered here: `{{ r.first_name }}` becomes the SendGrid
substitution tag `-first_name-`, filled per personalization, so one request can carry up
to 1000 recipients. Staff digests are rendered in full (they go to staff, not patients).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jinja2

from outbound.campaigns import TEMPLATES_DIR, Campaign, LocalTemplate, WhatsAppTemplate
from outbound.channels import Content, substitution_tag

# Fields a template may use per recipient (`r.<field>`); the sender fills each one.
RECIPIENT_FIELDS = (
    "first_name",
    "case_name",
    "expiry_date",
    "days_until_expiry",
    "sessions_left",
    "invoiceable_left",
    "balance_due",
    "oldest_open_invoice_days",
    "last_appointment_type",
    # The patient's one-click unsubscribe link (empty when the web app's address is unset).
    "unsubscribe_url",
    # The slot a waitlist offer is about (empty for other campaigns): outbound/slots.py.
    "slot_starts_at",
    "slot_type",
    "slot_practitioner",
    "slot_location",
)


class TemplateError(ValueError):
    pass


def _environment(folder: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        keep_trailing_newline=False,
    )


def _render(template: LocalTemplate, context: Mapping[str, object], where: str) -> Content:
    env = _environment(TEMPLATES_DIR / template.local)
    parts = {}
    for part, file in (("subject", "subject.txt"), ("html", "body.html"), ("text", "body.txt")):
        try:
            parts[part] = env.get_template(file).render(**context).strip()
        except jinja2.TemplateError as e:
            raise TemplateError(
                f"outbound/templates/{template.local}/{file} ({where}): {e}; "
                f"per-recipient fields are r.{', r.'.join(RECIPIENT_FIELDS)}"
            ) from None
    return Content(subject=parts["subject"], html=parts["html"], text=parts["text"])


# The line every patient email ends with when unsubscribe links are on (whatever the
# template says), with the patient's own link.
UNSUBSCRIBE_TEXT = "To stop these emails: " + substitution_tag("unsubscribe_url")
UNSUBSCRIBE_HTML = (f'<p><a href="{substitution_tag("unsubscribe_url")}">Unsubscribe</a> '
                    "from these emails.</p>")  # fmt: skip


def campaign_content(
    campaign: Campaign, unsubscribe_link: bool = False, clinic_name: str | None = None
) -> Content:
    """What every message of the campaign shares; per-recipient fields as substitution
    tags. `unsubscribe_link`: end every email with the patient's unsubscribe link;
    `clinic_name` (CLINIC_NAME) is how a commercial SMS identifies the clinic."""
    if campaign.channel == "sms":
        return sms_content(campaign, clinic_name)
    if isinstance(campaign.template, WhatsAppTemplate):
        return Content(template_id=campaign.template.whatsapp_content_sid,
                       variables=dict(campaign.template.variables))  # fmt: skip
    if not isinstance(campaign.template, LocalTemplate):
        return Content(template_id=campaign.template.sendgrid_template_id)
    tags = {f: jinja2.utils.markupsafe.Markup(substitution_tag(f)) for f in RECIPIENT_FIELDS}
    content = _render(
        campaign.template,
        {"campaign": campaign, "r": tags},
        f"campaign {campaign.slug}",
    )
    if not unsubscribe_link:
        return content
    return Content(subject=content.subject, html=f"{content.html}\n{UNSUBSCRIBE_HTML}",
                   text=f"{content.text}\n\n{UNSUBSCRIBE_TEXT}")  # fmt: skip


OPT_OUT_INSTRUCTION = "Reply STOP to opt out."


def sms_content(campaign: Campaign, clinic_name: str | None) -> Content:
    """An SMS campaign's text (`sms.txt`, per-recipient fields as substitution tags).

    A commercial message names the clinic first (`CLINIC_NAME: ` before the text unless
    the text starts with the name) and tells the patient how to stop (OPT_OUT_INSTRUCTION
    after it unless the text already says to reply or text STOP, or how to opt out or
    unsubscribe).
    """
    from outbound.phones import OPT_OUT_INSTRUCTIONS

    assert isinstance(campaign.template, LocalTemplate)
    where = f"outbound/templates/{campaign.template.local}/sms.txt (campaign {campaign.slug})"
    tags = {f: substitution_tag(f) for f in RECIPIENT_FIELDS}
    env = _environment(TEMPLATES_DIR / campaign.template.local)
    try:
        text = env.get_template("sms.txt").render(campaign=campaign, r=tags).strip()
    except jinja2.TemplateError as e:
        raise TemplateError(
            f"{where}: {e}; per-recipient fields are r.{', r.'.join(RECIPIENT_FIELDS)}"
        ) from None
    if not text:
        raise TemplateError(f"{where}: the message is empty")
    if campaign.purpose == "commercial":
        if not clinic_name:
            raise TemplateError(
                f"campaign {campaign.slug} is a commercial SMS, which must name the clinic: "
                "set CLINIC_NAME to the name patients know the clinic by"
            )
        # The clinic is named first, as the sender of the message.
        if not text.lower().startswith(clinic_name.lower()):
            text = f"{clinic_name}: {text}"
        if not OPT_OUT_INSTRUCTIONS.search(text):
            text = f"{text} {OPT_OUT_INSTRUCTION}"
    return Content(text=text)


def fill(text: str, data: Mapping[str, str]) -> str:
    """A message's text for one recipient: each substitution tag replaced by its value,
    in one pass (a value that looks like a tag stays as written)."""
    import re

    names = "|".join(re.escape(n) for n in sorted(data, key=len, reverse=True))
    if not names:
        return text
    # substitution_tag(name) is -name-.
    pattern = re.compile(f"-({names})-")
    return pattern.sub(lambda m: data[m.group(1)], text)


def digest_content(campaign: Campaign, cases: list[dict[str, object]]) -> Content:
    """The staff digest listing the campaign's cases (ids and case facts, no contact details)."""
    assert campaign.staff_digest is not None
    return _render(
        campaign.staff_digest.template,
        {"campaign": campaign, "cases": cases},
        f"staff digest of {campaign.slug}",
    )
