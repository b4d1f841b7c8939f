"""Unsubscribe categories: what a patient may stop hearing about, one at a time.

Every campaign names one (`unsubscribe_category`). A patient opts out of a category, or of
every commercial one (`all`), from the email's preference page, a one-click unsubscribe
or a SendGrid suppression group; that stops the campaigns of the category on every
channel, and nothing else. Transactional categories (appointment and case administration)
cannot be opted out of this way: only an opt-out of the channel stops them. Each category
may map to a SendGrid suppression group (`SENDGRID_GROUP_IDS`), sent as `asm.group_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every commercial category at once.
ALL = "all"


@dataclass(frozen=True)
class Category:
    slug: str
    label: str  # as the preference page shows it to patients
    transactional: bool = False


CATEGORIES: dict[str, Category] = {c.slug: c for c in (
    Category("reactivation", "Invitations to come back"),
    Category("recalls", "Check-up and recall reminders"),
    Category("follow-ups", "Follow-ups after a visit"),
    Category("birthdays", "Birthday greetings"),
    Category("billing", "Reminders about invoices"),
    Category("case-updates", "Updates about your referral or treatment plan"),
    Category("waitlist", "Offers of an earlier appointment"),
    Category("general", "News from the clinic"),
    Category("appointments", "Appointment administration", transactional=True),
    Category("case-admin", "Referral and treatment plan administration", transactional=True),
)}  # fmt: skip


def check_category(slug: str, transactional: bool) -> str:
    """`slug` if it is a category a campaign of that purpose may name; else a ValueError
    saying which ones it may."""
    known = CATEGORIES.get(slug)
    fitting = sorted(c.slug for c in CATEGORIES.values() if c.transactional == transactional)
    kind = "transactional" if transactional else "commercial"
    if known is None:
        raise ValueError(f"unknown unsubscribe category {slug!r}; a {kind} campaign names one "
                         f"of {', '.join(fitting)}")  # fmt: skip
    if known.transactional != transactional:
        other = "purpose: transactional" if known.transactional else "purpose: commercial"
        raise ValueError(
            f"unsubscribe category {slug!r} is for {other} campaigns; a {kind} campaign "
            f"names one of {', '.join(fitting)}"
        )
    return slug


def commercial() -> list[Category]:
    """The categories a patient may opt out of, as the preference page lists them."""
    return [c for c in CATEGORIES.values() if not c.transactional]


def parse_group_ids(value: str | None) -> dict[str, int]:
    """SENDGRID_GROUP_IDS: `category=group id` pairs, comma separated; each category a
    commercial one (a transactional message has no group a patient may leave), named
    once, with a group id of its own (a whole number from 1)."""
    groups: dict[str, int] = {}
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, number = (x.strip() for x in part.partition("="))
        known = CATEGORIES.get(name)
        if not sep or known is None or not (number.isascii() and number.isdigit()) or not (
                0 < int(number) < 2**31):  # fmt: skip
            raise ValueError(
                f"SENDGRID_GROUP_IDS: {part!r} is not `category=group id` with a commercial "
                f"category ({', '.join(c.slug for c in commercial())}) and a group id from 1, "
                "e.g. reactivation=1234"
            )
        if known.transactional:
            raise ValueError(f"SENDGRID_GROUP_IDS: {name!r} is transactional: its messages "
                             "cannot be left, so they belong to no suppression group")  # fmt: skip
        if name in groups:
            raise ValueError(f"SENDGRID_GROUP_IDS: {name!r} is named twice")
        groups[name] = int(number)
    if len(set(groups.values())) != len(groups):
        raise ValueError("SENDGRID_GROUP_IDS: two categories name the same suppression group")
    return groups
