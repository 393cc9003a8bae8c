"""Phone numbers: one E.164 form in the database, validated with phonenumbers."""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from typing import Any

import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers import timezone as phone_timezone

DEFAULT_REGION = "US"

TEXTABLE_COUNTRY_CODE = 1
"""PayText texts North American Numbering Plan numbers only (US, Canada, the US territories)."""

TEXTABLE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
"""Number types that can take texts: phonenumbers calls every US number FIXED_LINE_OR_MOBILE,
since US landline and mobile ranges overlap; a type it names otherwise cannot take them."""

_NOT_TEXTABLE = {
    PhoneNumberType.FIXED_LINE: "a landline",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "an internet (VoIP) number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (follow-me) number",
    PhoneNumberType.PAGER: "a pager",
    PhoneNumberType.UAN: "a company's universal access number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
}

OWN_NUMBER_SETTINGS = ("AGENCY_PHONE", "TWILIO_FROM_NUMBER")
"""Settings holding the agency's own numbers, which are never enrolled."""


class PhoneError(ValueError):
    """Text that is not a valid, dialable phone number."""


class NotTextableError(PhoneError):
    """A real number PayText will not enroll: it cannot receive these texts, or it is ours."""


def normalize_phone(text: str, *, region: str = DEFAULT_REGION) -> str:
    """Return the E.164 form of a phone number typed in any common format."""
    return _normalize(text or "", region)


@functools.lru_cache(maxsize=4096)
def _normalize(text: str, region: str) -> str:
    # Every webhook call normalises its From number; parsing one costs more than a query.
    return phonenumbers.format_number(
        _parse_valid(text, region), phonenumbers.PhoneNumberFormat.E164
    )


def _parse_valid(text: str, region: str) -> phonenumbers.PhoneNumber:
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
    return number


def textable_phone(text: str, *, own: Collection[str] = ()) -> str:
    """The E.164 form of a number that may be enrolled and texted; NotTextableError says why not.

    The one rule for the enroll form, `flask enroll` and the case import: a North American
    number phonenumbers does not class as toll-free, premium-rate, landline and the like, and
    none of the agency's `own` numbers (E.164). Inbound texts are answered from any number.
    """
    number = _parse_valid(text or "", DEFAULT_REGION)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if e164 in own:
        raise NotTextableError(f"{format_phone(e164)} is the agency's own number")
    if number.country_code != TEXTABLE_COUNTRY_CODE:
        raise NotTextableError(
            f"{format_phone(e164)} is not a North American (+1) number; texts go to +1 mobile "
            "numbers only"
        )
    kind = phonenumbers.number_type(number)
    if kind not in TEXTABLE_TYPES:
        what = _NOT_TEXTABLE.get(kind, "not a mobile number")
        raise NotTextableError(f"{format_phone(e164)} is {what}, which cannot receive these texts")
    return e164


def own_numbers(config: Mapping[str, Any]) -> frozenset[str]:
    """The agency's own numbers (E.164) in the settings; one that does not parse is left out."""
    found = set()
    for name in OWN_NUMBER_SETTINGS:
        try:
            found.add(normalize_phone(str(config.get(name) or "")))
        except PhoneError:
            continue
    return frozenset(found)


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
