"""Phone numbers: one E.164 form in the database, validated with phonenumbers."""

from __future__ import annotations

import functools

import phonenumbers
from phonenumbers import timezone as phone_timezone

DEFAULT_REGION = "US"


class PhoneError(ValueError):
    """Text that is not a valid, dialable phone number."""


def normalize_phone(text: str, *, region: str = DEFAULT_REGION) -> str:
    """Return the E.164 form of a phone number typed in any common format."""
    return _normalize(text or "", region)


@functools.lru_cache(maxsize=4096)
def _normalize(text: str, region: str) -> str:
    # Every webhook call normalises its From number; parsing one costs more than a query.
    raw = text.strip()
    if not raw:
        raise PhoneError("phone number is empty")
    if len(raw) > 40:
        raise PhoneError("phone number is too long")
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise PhoneError(f"{raw!r} is not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise PhoneError(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def format_phone(e164: str) -> str:
    """Show a stored number the way people write it: national for US, international otherwise."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    if phonenumbers.region_code_for_number(number) == DEFAULT_REGION:
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def timezones_for_phone(e164: str) -> tuple[str, ...]:
    """IANA zones phonenumbers associates with the number (area code); empty when unknown."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = phone_timezone.time_zones_for_number(number)
    return tuple(z for z in zones if z != phone_timezone.UNKNOWN_TIMEZONE)


def region_for_phone(e164: str) -> str | None:
    """US state (two-letter) is not in phonenumbers; this returns the ISO region, e.g. 'US'."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None
