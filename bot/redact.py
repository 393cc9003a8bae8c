"""What is cut out of a text before it is stored or logged: card numbers, SSNs, link tokens.

Payers do text card and Social Security numbers ("my card is 4111 1111 1111 1111"), and an
inbound text is kept on the case, shown to staff and may reach the logs. Nothing PayText answers
needs them: a card is saved only through the card page, and nobody is asked for an SSN.

The token of a card or approval link (billing.links) lets whoever holds it save a card on the
case or approve a payment: the stored and logged copy of a text keeps the link's address and
kind with the token replaced by LINK_MARKER. Only the payer's phone gets the real link.
"""

from __future__ import annotations

import re

CARD_PLACEHOLDER = "[card number removed]"
SSN_PLACEHOLDER = "[SSN removed]"
LINK_MARKER = "[redacted]"
"""Where a link's token was, in stored texts and in the access log (accesslog.py) alike."""

# 13 to 19 digits, maybe grouped by single spaces or dashes: every card number, typed right or
# not. A run of more digits (two phone numbers in a row, say) is not a card number.
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
# 123-45-6789 or 123 45 6789, anywhere.
_SSN = re.compile(r"(?<![\d])\d{3}([ -])\d{2}\1\d{4}(?![ -]?\d)")
# Nine digits in a row only right after the words for them ("ssn: 123456789"): alone, nine
# digits may be a case number.
_NAMED_SSN = re.compile(r"\b(ssn|social|seguro|security)\b(\W{0,3})\d{9}(?!\d)", re.IGNORECASE)
# A token is URL-safe base64 (billing.links); '%' and '=' too for one mangled on the way. Stops
# at the punctuation a text puts after a link, which the stored copy keeps.
_LINK_TOKEN = re.compile(r"(/pay/(?:card|auth)/)[A-Za-z0-9_%=-]+")


def sensitive_numbers_removed(body: str) -> str:
    """The body with anything that looks like a card number or an SSN replaced by a placeholder."""
    if sum(ch.isdigit() for ch in body) < 9:
        return body  # most texts: nothing long enough to look for
    body = _CARD.sub(CARD_PLACEHOLDER, body)
    body = _SSN.sub(SSN_PLACEHOLDER, body)
    return _NAMED_SSN.sub(rf"\1\2{SSN_PLACEHOLDER}", body)


def link_tokens_masked(text: str) -> str:
    """The text with the token of every card or approval link replaced by LINK_MARKER."""
    if "/pay/" not in text:
        return text  # most texts: no link
    return _LINK_TOKEN.sub(rf"\g<1>{LINK_MARKER}", text)
