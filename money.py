"""Money is integer cents everywhere; these turn it into and out of text."""

from __future__ import annotations

import re

MAX_AMOUNT_CENTS = 1_000_000_000
"""$10,000,000.00: no case owes more; anything larger is a typing mistake (and a much larger one
does not fit the database's integer column)."""

_AMOUNT = re.compile(r"^\$?\s*(?P<whole>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d*))?$")


class AmountError(ValueError):
    """A piece of text that is not a dollar amount we accept."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def parse_dollars(text: str, *, allow_zero: bool = True) -> int:
    """Parse '1,250.00', '$40.5' or '125' into cents; raise AmountError with a reason."""
    cleaned = (text or "").strip().replace(" ", "")
    negative = cleaned.startswith("-")
    if negative:
        cleaned = cleaned[1:]
    match = _AMOUNT.match(cleaned)
    if not cleaned or not match or (match["whole"] is None and not match["frac"]):
        raise AmountError("not_a_number", f"{text!r} is not a dollar amount like 125.00")
    frac = match["frac"] or ""
    if len(frac) > 2:
        raise AmountError("too_many_decimals", f"{text!r} has more than two decimals")
    cents = int((match["whole"] or "0").replace(",", "")) * 100 + int(frac.ljust(2, "0"))
    if negative and cents:
        raise AmountError("negative", f"{text!r} is negative")
    if cents == 0 and not allow_zero:
        raise AmountError("zero", f"{text!r} is zero")
    return cents


def format_cents(cents: int) -> str:
    """Format cents as US dollars, '$1,234.56' (also the US Spanish usage)."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(int(cents)), 100)
    return f"{sign}${whole:,}.{frac:02d}"
