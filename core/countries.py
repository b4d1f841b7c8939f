"""The countries the product knows: how their phone numbers are written (E.164 calling
code and national trunk prefix). CLINIC_COUNTRY names one of them."""

from __future__ import annotations

# ISO 3166 code → (country calling code, national trunk prefix).
COUNTRIES: dict[str, tuple[str, str]] = {
    "AU": ("61", "0"),
    "NZ": ("64", "0"),
    "GB": ("44", "0"),
    "IE": ("353", "0"),
    "US": ("1", ""),
    "CA": ("1", ""),
}
