"""Card and Social Security numbers a payer texts are cut out before the text is stored.

Payers do text them ("my card is 4111 1111 1111 1111"), and an inbound text is kept on the case,
shown to staff and may reach the logs. Nothing PayText answers needs them: a card is saved only
through the card page, and nobody is asked for an SSN.
"""

from __future__ import annotations

import re

CARD_PLACEHOLDER = "[card number removed]"
SSN_PLACEHOLDER = "[SSN removed]"

# 13 to 19 digits, maybe grouped by single spaces or dashes: every card number, typed right or
# not. A run of more digits (two phone numbers in a row, say) is not a card number.
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
# 123-45-6789 or 123 45 6789, anywhere.
_SSN = re.compile(r"(?<![\d])\d{3}([ -])\d{2}\1\d{4}(?![ -]?\d)")
# Nine digits in a row only right after the words for them ("ssn: 123456789"): alone, nine
# digits may be a case number.
_NAMED_SSN = re.compile(r"\b(ssn|social|seguro|security)\b(\W{0,3})\d{9}(?!\d)", re.IGNORECASE)


def sensitive_numbers_removed(body: str) -> str:
    """The body with anything that looks like a card number or an SSN replaced by a placeholder."""
    if sum(ch.isdigit() for ch in body) < 9:
        return body  # most texts: nothing long enough to look for
    body = _CARD.sub(CARD_PLACEHOLDER, body)
    body = _SSN.sub(SSN_PLACEHOLDER, body)
    return _NAMED_SSN.sub(rf"\1\2{SSN_PLACEHOLDER}", body)
