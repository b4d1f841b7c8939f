"""Mobile numbers as SMS providers need them (E.164), and where a patient's clock is.

A number is written many ways in a practice-management system: `0412 345 678`,
`+61 412 345 678`, `0061412345678`, `(02) 9876-5432`. Each is turned into its E.164 form
(`+61412345678`) by one rule, used alike by the plan (who shares a number, who opted
out) and by the webhooks (who replied STOP):

- only digits, spaces, `-`, `.`, `(`, `)` and one leading `+` may appear; anything else
  (letters, `ext`, two numbers in one field) is not a usable number;
- `+`, or the international prefix of the clinic's country (`0011` or `00` in Australia,
  `011` in the US and Canada, `00` elsewhere), starts an international number; a trunk
  `0` written after the country code (`+61 0412 ...`) is taken out;
- otherwise the number is national, read in the clinic's country (CLINIC_COUNTRY): a
  leading trunk `0` is replaced by the country code (AU, NZ, GB, IE), or for the US and
  Canada ten digits (or eleven starting with 1) take `+1`;
- the result has 8 to 15 digits after the `+` (exactly 11 for `+1`), or the number is not
  usable. Fullwidth digits, no-break spaces, invisible marks and odd dashes are read as
  the plain characters they look like.

A number that cannot be read so is never guessed at: the patient has no usable SMS
address (`no_address`), and the plan says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from core.countries import COUNTRIES

# How the country column of an extract spells them.
COUNTRY_NAMES: dict[str, str] = {
    "australia": "AU", "au": "AU", "aus": "AU",
    "new zealand": "NZ", "nz": "NZ", "nzl": "NZ", "aotearoa": "NZ",
    "united kingdom": "GB", "uk": "GB", "gb": "GB", "gbr": "GB", "england": "GB",
    "scotland": "GB", "wales": "GB", "northern ireland": "GB",
    "ireland": "IE", "ie": "IE", "irl": "IE",
    "united states": "US", "united states of america": "US", "usa": "US", "us": "US",
    "america": "US",
    "canada": "CA", "ca": "CA", "can": "CA",
}  # fmt: skip

_WRITTEN = r"^\+?[0-9 ().\-]+$"


def check_country(code: str, setting: str = "CLINIC_COUNTRY") -> str:
    upper = code.strip().upper()
    if upper not in COUNTRIES:
        raise ValueError(
            f"{setting}={code!r} is not a country this knows; use one of "
            f"{', '.join(sorted(COUNTRIES))} (ISO 3166 codes)"
        )
    return upper


def e164_expr(column: str | pl.Expr, country: str) -> pl.Expr:
    """The E.164 form of a written number, or null when it cannot be read (see above).

    Built in stages of one struct, so that each step (the cleaned text, its digits) is
    computed once for the column rather than once for every rule that reads it."""
    code = check_country(country)
    calling, trunk = COUNTRIES[code]
    written = pl.col(column) if isinstance(column, str) else column
    f = pl.field
    # Fullwidth digits, no-break and other odd spaces as plain ones; invisible marks
    # (zero-width space, byte-order mark) dropped; dashes of every kind as `-`. All of
    # them are outside ASCII: a text of ASCII alone is left as it is (most numbers),
    # and the rest is only worked on where it is not null.
    unusual = pl.when(f("written").str.len_bytes() != f("written").str.len_chars()).then(
        f("written"))
    cleaned = (
        unusual.str.normalize("NFKC")
        .str.replace_all(r"[\u200b-\u200d\u2060\ufeff]", "")
        .str.replace_all(r"[\u2010-\u2015\u2212]", "-")
    )
    staged = (
        pl.struct(written.alias("written"))
        .struct.with_fields(pl.coalesce(cleaned, f("written")).str.strip_chars().alias("raw"))
        .struct.with_fields(
            f("raw").str.replace_all(r"[^0-9]", "").alias("digits"),
            # "+44 (0)20 ..." writes the trunk prefix an international number drops.
            f("raw").str.replace_all(r"\(0\)", "").str.replace_all(r"[^0-9]", "")
            .alias("international"),
        )  # fmt: skip
    )
    raw, digits, international = f("raw"), f("digits"), f("international")
    national = digits.str.slice(len(trunk)) if trunk else digits
    if trunk:
        from_national = (
            pl.when(digits.str.starts_with(trunk) & ~digits.str.starts_with(trunk + trunk))
            .then(pl.lit("+" + calling) + national)
            .otherwise(None)
        )
    else:  # NANP: ten digits, or eleven starting with the country code
        from_national = (
            pl.when(digits.str.len_chars() == 10)
            .then(pl.lit("+" + calling) + digits)
            .when((digits.str.len_chars() == 11) & digits.str.starts_with(calling))
            .then(pl.lit("+") + digits)
            .otherwise(None)
        )
    dialled = pl.when(raw.str.starts_with("+")).then(international)
    for prefix in INTERNATIONAL_PREFIXES[code]:  # the longest first
        dialled = dialled.when(digits.str.starts_with(prefix)).then(
            international.str.slice(len(prefix)))
    staged = staged.struct.with_fields(dialled.alias("dialled"), from_national.alias("national"))
    number = (
        pl.when(~raw.str.contains(_WRITTEN).fill_null(False))
        .then(None)
        .otherwise(
            pl.when(f("dialled").is_not_null())
            .then(pl.lit("+") + _without_trunk(f("dialled")))
            .otherwise(f("national"))
        )
    )
    staged = staged.struct.with_fields(number.alias("number"))
    # E.164: 8 to 15 digits; a NANP number (+1) has exactly 11.
    valid = f("number").str.contains(r"^\+(1[0-9]{10}|[2-9][0-9]{7,14})$").fill_null(False)
    return staged.struct.with_fields(pl.when(valid).then(f("number")).alias("e164")).struct.field(
        "e164")


# How a number dialled abroad starts, by the country it is written in (the longest first).
INTERNATIONAL_PREFIXES = {"AU": ("0011", "00"), "US": ("011", "00"), "CA": ("011", "00")}
INTERNATIONAL_PREFIXES |= {c: ("00",) for c in COUNTRIES if c not in INTERNATIONAL_PREFIXES}


def _without_trunk(digits: pl.Expr) -> pl.Expr:
    """International digits with a national trunk 0 written after the country code
    (`+61 0412 ...`) taken out: no number of these countries has a 0 there."""
    out = digits
    for calling, trunk in {v for v in COUNTRIES.values() if v[1]}:
        out = pl.when(digits.str.starts_with(calling + trunk)).then(
            pl.lit(calling) + digits.str.slice(len(calling) + len(trunk))).otherwise(out)
    return out


def e164(number: str | None, country: str) -> str | None:
    """`e164_expr` for one number (the same rule, applied to a frame of one)."""
    if number is None:
        return None
    frame = pl.DataFrame({"n": [number]}, schema={"n": pl.String})
    return frame.select(e164_expr("n", country).alias("n"))["n"][0]


# Where a patient's clock is, from the state (or region) and country of their address.
# A country with one zone needs no state; an address not found here is on the clinic's.
# A state that spans several zones names them all (`|`): hours hold in every one of them.
_NY, _CHI = "America/New_York", "America/Chicago"
_DEN, _LA = "America/Denver", "America/Los_Angeles"
_US_STATES = {
    # code: (name, zones)
    "al": ("alabama", _CHI), "ak": ("alaska", "America/Anchorage|America/Adak"),
    "az": ("arizona", "America/Phoenix|America/Denver"), "ar": ("arkansas", _CHI),
    "ca": ("california", _LA), "co": ("colorado", _DEN), "ct": ("connecticut", _NY),
    "de": ("delaware", _NY), "dc": ("district of columbia", _NY),
    "fl": ("florida", f"{_NY}|{_CHI}"), "ga": ("georgia", _NY),
    "hi": ("hawaii", "Pacific/Honolulu"), "id": ("idaho", f"{_DEN}|{_LA}"),
    "il": ("illinois", _CHI), "in": ("indiana", f"{_NY}|{_CHI}"), "ia": ("iowa", _CHI),
    "ks": ("kansas", f"{_CHI}|{_DEN}"), "ky": ("kentucky", f"{_NY}|{_CHI}"),
    "la": ("louisiana", _CHI), "me": ("maine", _NY), "md": ("maryland", _NY),
    "ma": ("massachusetts", _NY), "mi": ("michigan", f"{_NY}|{_CHI}"),
    "mn": ("minnesota", _CHI), "ms": ("mississippi", _CHI), "mo": ("missouri", _CHI),
    "mt": ("montana", _DEN), "ne": ("nebraska", f"{_CHI}|{_DEN}"), "nv": ("nevada", _LA),
    "nh": ("new hampshire", _NY), "nj": ("new jersey", _NY), "nm": ("new mexico", _DEN),
    "ny": ("new york", _NY), "nc": ("north carolina", _NY),
    "nd": ("north dakota", f"{_CHI}|{_DEN}"), "oh": ("ohio", _NY),
    "ok": ("oklahoma", _CHI), "or": ("oregon", f"{_LA}|{_DEN}"),
    "pa": ("pennsylvania", _NY), "ri": ("rhode island", _NY),
    "sc": ("south carolina", _NY), "sd": ("south dakota", f"{_CHI}|{_DEN}"),
    "tn": ("tennessee", f"{_CHI}|{_NY}"), "tx": ("texas", f"{_CHI}|{_DEN}"),
    "ut": ("utah", _DEN), "vt": ("vermont", _NY), "va": ("virginia", _NY),
    "wa": ("washington", _LA), "wv": ("west virginia", _NY), "wi": ("wisconsin", _CHI),
    "wy": ("wyoming", _DEN), "pr": ("puerto rico", "America/Puerto_Rico"),
}  # fmt: skip
_ZONES_BY_STATE = {
    "AU": {
        "nsw": "Australia/Sydney|Australia/Broken_Hill",
        "new south wales": "Australia/Sydney|Australia/Broken_Hill",
        "act": "Australia/Sydney", "australian capital territory": "Australia/Sydney",
        "vic": "Australia/Melbourne", "victoria": "Australia/Melbourne",
        "qld": "Australia/Brisbane", "queensland": "Australia/Brisbane",
        "sa": "Australia/Adelaide", "south australia": "Australia/Adelaide",
        "wa": "Australia/Perth", "western australia": "Australia/Perth",
        "tas": "Australia/Hobart", "tasmania": "Australia/Hobart",
        "nt": "Australia/Darwin", "northern territory": "Australia/Darwin",
    },
    "US": {k: z for code, (name, z) in _US_STATES.items() for k in (code, name)},
}  # fmt: skip
_ZONE_OF_COUNTRY = {"NZ": "Pacific/Auckland", "GB": "Europe/London", "IE": "Europe/Dublin"}


def zone_table() -> pl.DataFrame:
    """(country, state, zone) rows: the lookup `with_patient_zone` joins against."""
    rows = [(c, s, z) for c, states in _ZONES_BY_STATE.items() for s, z in states.items()]
    rows += [(c, "", z) for c, z in _ZONE_OF_COUNTRY.items()]
    return pl.DataFrame(
        rows, schema={"zone_country": pl.String, "zone_state": pl.String, "zone": pl.String},
        orient="row",
    )  # fmt: skip


def _key(column: str) -> pl.Expr:
    """A place name as looked up: any case, dots dropped, spaces collapsed."""
    return (pl.col(column).str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\.", "")
            .str.replace_all(r"\s+", " ").str.strip_chars())  # fmt: skip


def with_patient_zone(frame: pl.LazyFrame, clinic_zone: str, clinic_country: str = "AU"
                      ) -> pl.LazyFrame:  # fmt: skip
    """`frame` (with `country` and `state` columns) plus `zone`: the patient's time zone
    (several, `|`-separated, for a state that spans them), the clinic's when the address
    does not say. An address with a state and no country is in the clinic's country.
    Each distinct (country, state) is looked up once: a clinic's patients live in a few
    places, and reading a place name costs several passes over its text."""
    names = pl.DataFrame(
        list(COUNTRY_NAMES.items()), schema={"country_key": pl.String, "zone_country": pl.String},
        orient="row",
    ).lazy()  # fmt: skip
    table = zone_table().lazy()
    places = frame.select("country", "state").unique()
    keyed = places.with_columns(
        _key("country").fill_null("").alias("country_key"),
        _key("state").fill_null("").alias("zone_state"),
    ).join(names, on="country_key", how="left").with_columns(
        pl.when(pl.col("country_key") == "").then(pl.lit(clinic_country))
        .otherwise(pl.col("zone_country")).alias("zone_country")
    )  # fmt: skip
    by_state = table.filter(pl.col("zone_state") != "")
    by_country = table.filter(pl.col("zone_state") == "").select(
        "zone_country", pl.col("zone").alias("country_zone")
    )
    zoned = (
        keyed.join(by_state, on=["zone_country", "zone_state"], how="left")
        .join(by_country, on="zone_country", how="left")
        .select("country", "state",
                pl.coalesce("zone", "country_zone", pl.lit(clinic_zone)).alias("zone"))
    )  # fmt: skip
    return frame.join(zoned, on=["country", "state"], how="left", nulls_equal=True)


@dataclass(frozen=True)
class Encoded:
    """How an SMS goes over the air: its encoding and the parts it is billed as."""

    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


# GSM 03.38: the basic set (one septet each) and the extension set (escape + one).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def _pack(units: list[int], single: int, multi: int) -> int:
    """Parts needed for characters of `units` sizes: one part holds `single`; a message
    of several parts holds `multi` each, and no character is split across two."""
    total = sum(units)
    if total <= single:
        return 1
    parts, used = 1, 0
    for u in units:
        if used + u > multi:
            parts, used = parts + 1, 0
        used += u
    return parts


def encode(text: str) -> Encoded:
    """GSM-7 when every character is in the GSM set (160 septets, 153 per part when
    split; an extension character takes two), else UCS-2 (70 code units, 67 per part;
    a character outside the BMP, such as an emoji, takes two)."""
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENDED for ch in text):
        units = [2 if ch in _GSM_EXTENDED else 1 for ch in text]
        return Encoded("GSM-7", sum(units), _pack(units, 160, 153))
    units = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return Encoded("UCS-2", sum(units), _pack(units, 70, 67))


# What counts as telling the patient how to stop: "reply STOP", "text STOP to ...",
# "to opt out ...", "unsubscribe ..." (a bare "stop" in "don't stop your exercises" does not).
OPT_OUT_INSTRUCTIONS = re.compile(
    r"\b(reply|text|send|sms)\s+[\"'“‘]?(STOP|UNSUBSCRIBE|OPT ?OUT)\b|\bopt[ -]?out\b|"
    r"\bunsubscribe\b", re.IGNORECASE)
