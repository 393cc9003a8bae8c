"""Stripe's published test cards, which the sandbox accepts and the Stripe fake imitates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from billing.gateway import CardError


class CardBehaviour(StrEnum):
    """What happens when a test card is charged off-session."""

    SUCCEEDS = "succeeds"
    DECLINES = "declines"
    REQUIRES_AUTHENTICATION = "requires_authentication"


@dataclass(frozen=True)
class StripeTestCard:
    """One of Stripe's test cards and the ready-made PaymentMethod id Stripe offers for it."""

    number: str
    brand: str
    behaviour: CardBehaviour
    token: str
    decline_code: str | None = None

    @property
    def last4(self) -> str:
        """The last four digits, the only part of the number we ever keep."""
        return self.number[-4:]


TEST_CARDS: tuple[StripeTestCard, ...] = (
    StripeTestCard("4242424242424242", "visa", CardBehaviour.SUCCEEDS, "pm_card_visa"),
    StripeTestCard("5555555555554444", "mastercard", CardBehaviour.SUCCEEDS, "pm_card_mastercard"),
    StripeTestCard("378282246310005", "amex", CardBehaviour.SUCCEEDS, "pm_card_amex"),
    StripeTestCard(
        "4000000000000002",
        "visa",
        CardBehaviour.DECLINES,
        "pm_card_chargeDeclined",
        "generic_decline",
    ),
    StripeTestCard(
        "4000000000009995",
        "visa",
        CardBehaviour.DECLINES,
        "pm_card_chargeDeclinedInsufficientFunds",
        "insufficient_funds",
    ),
    StripeTestCard(
        "4000000000000069",
        "visa",
        CardBehaviour.DECLINES,
        "pm_card_chargeDeclinedExpiredCard",
        "expired_card",
    ),
    StripeTestCard(
        "4000002760003184",
        "visa",
        CardBehaviour.REQUIRES_AUTHENTICATION,
        "pm_card_authenticationRequired",
    ),
)

CARDS_BY_NUMBER = {card.number: card for card in TEST_CARDS}
CARDS_BY_TOKEN = {card.token: card for card in TEST_CARDS}

DECLINE_MESSAGES = {
    "generic_decline": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
"""Stripe's own English wording, so both gateways report the same failure_message."""


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn checksum every card number carries."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def check_test_card(
    card_number: str, *, exp_month: int, exp_year: int, cvc: str, today: date
) -> tuple[StripeTestCard, int]:
    """Validate what a payer typed; return the test card and the four-digit expiry year."""
    digits = "".join(ch for ch in card_number if ch not in " -")
    if not 12 <= len(digits) <= 19 or not luhn_valid(digits):
        raise CardError("That card number is not valid.", code="invalid_number")
    card = CARDS_BY_NUMBER.get(digits)
    if card is None:
        raise CardError("Only Stripe test card numbers work in the sandbox.", code="not_test_card")
    if not 1 <= exp_month <= 12:
        raise CardError("The expiry month is not valid.", code="invalid_expiry_month")
    year = exp_year + 2000 if exp_year < 100 else exp_year
    if (year, exp_month) < (today.year, today.month) or year > today.year + 50:
        raise CardError("The expiry year is not valid.", code="invalid_expiry_year")
    cvc_length = 4 if card.brand == "amex" else 3
    if not (cvc.isdigit() and len(cvc) == cvc_length):
        raise CardError("The security code is not valid.", code="invalid_cvc")
    return card, year
