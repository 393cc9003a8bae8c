"""The payment boundary: what billing code may ask of Stripe or the sandbox, and what comes back.

A charge job should run like this, so that it is safe to kill and run again:

1. ``find_payment(customer_id=..., payment_id=...)``; if it returns a result, use it.
2. Otherwise ``charge(..., idempotency_key=payment.idempotency_key,
   metadata={"case_number": ..., "payment_id": ...})``.
3. Act on ``result.status``: SUCCEEDED, DECLINED (see ``decline_code``), REQUIRES_ACTION (send the
   payer to a page that finishes it with ``client_secret``), PROCESSING (wait for the webhook).

Declines are results, not exceptions. ``TransientPaymentError`` means "retry later with the same
idempotency key"; every other ``PaymentError`` needs a person.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

WEBHOOK_TOLERANCE_SECONDS = 300
"""Webhooks signed longer ago than this are refused (Stripe's default), so replays go stale."""

MINIMUM_CHARGE_CENTS = 50
"""Stripe refuses US dollar charges under $0.50; the sandbox refuses them too."""


class ChargeStatus(StrEnum):
    """Where a charge stands, reduced to what billing code acts on."""

    SUCCEEDED = "succeeded"
    REQUIRES_ACTION = "requires_action"
    DECLINED = "declined"
    PROCESSING = "processing"
    CANCELED = "canceled"


class RefundStatus(StrEnum):
    """Stripe's refund statuses; card refunds are mostly succeeded at once, some stay pending."""

    SUCCEEDED = "succeeded"
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class CardSetup:
    """A started card setup; the payer's browser finishes it with the client secret."""

    setup_id: str
    client_secret: str


@dataclass(frozen=True)
class SavedCard:
    """All we keep about a saved card. There is no card number field, on purpose."""

    payment_method_id: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class ChargeResult:
    """The outcome of a charge; client_secret is set only when the payer must authenticate."""

    intent_id: str
    status: ChargeStatus
    amount_cents: int
    charge_id: str | None = None
    client_secret: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None
    payment_id: str | None = None  # our Payment's id, from the charge's metadata


@dataclass(frozen=True)
class RefundResult:
    """A refund as the provider recorded it."""

    refund_id: str
    status: RefundStatus
    amount_cents: int


@dataclass(frozen=True)
class DisputeResult:
    """A dispute (chargeback) on a charge as the provider has it now; status is Stripe's."""

    dispute_id: str
    status: str
    amount_cents: int
    intent_id: str | None

    @property
    def funds_withdrawn(self) -> bool:
        """True while the disputed money is taken back: a dispute (not an inquiry) not won."""
        return self.status in ("needs_response", "under_review", "lost")


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook event; data is the event's data.object as plain dicts."""

    id: str
    type: str
    object_id: str | None
    data: dict[str, Any]


class PaymentError(Exception):
    """Anything the payment gateway raises; code is the provider's error code when there is one."""

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code


class TransientPaymentError(PaymentError):
    """Rate limit, provider outage, lost connection or the same key still in flight: retry later."""


class PaymentConfigError(PaymentError):
    """A key or secret is missing or refused; retrying will not help."""


class IdempotencyConflict(PaymentError):
    """The idempotency key was already used with different parameters."""


class PaymentNotFound(PaymentError):
    """The customer, card, setup or payment id is unknown to the provider."""


class CardError(PaymentError):
    """A card could not be saved: invalid, not a test card in the sandbox, or setup unfinished."""


class RefundError(PaymentError):
    """A refund was refused: more than is left, already refunded, or nothing was charged."""


class InvalidWebhook(PaymentError):
    """A webhook with a missing, forged or stale signature, or a body that is not an event."""


class PaymentGateway(Protocol):
    """What billing code may call; StripeGateway and SandboxGateway implement it."""

    name: str

    def ensure_customer(
        self, *, case_number: str, name: str | None, existing_customer_id: str | None = None
    ) -> str:
        """Return existing_customer_id if given, else create the case's customer (once per case)."""
        ...

    def create_card_setup(
        self, *, customer_id: str, case_number: str, idempotency_key: str
    ) -> CardSetup:
        """Start saving a card for off-session charges; the payer's browser completes it."""
        ...

    def card_from_setup(self, *, setup_id: str) -> SavedCard:
        """The card a completed setup saved; CardError if the payer has not finished it."""
        ...

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str = "usd",
        idempotency_key: str,
        metadata: Mapping[str, str],
    ) -> ChargeResult:
        """Charge a saved card off-session; metadata must carry payment_id for find_payment."""
        ...

    def find_payment(self, *, customer_id: str, payment_id: str) -> ChargeResult | None:
        """The newest charge made for payment_id, looked up consistently, or None."""
        ...

    def retrieve_payment(self, *, intent_id: str) -> ChargeResult:
        """The current state of a charge, e.g. after the payer authenticated."""
        ...

    def cancel_payment(self, *, intent_id: str, idempotency_key: str) -> ChargeResult:
        """Cancel a charge still waiting for the payer; its current state if it is past that."""
        ...

    def refund(
        self, *, intent_id: str, amount_cents: int | None, idempotency_key: str
    ) -> RefundResult:
        """Refund part of a charge, or all that is left when amount_cents is None."""
        ...

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        """Every refund of a charge as the provider has it now (pending, succeeded, failed...)."""
        ...

    def retrieve_dispute(self, *, dispute_id: str) -> DisputeResult:
        """The current state of a dispute a cardholder's bank opened on a charge."""
        ...

    def parse_webhook(self, *, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify the Stripe-Signature header over the raw body and return the event."""
        ...


def check_charge_request(amount_cents: int, metadata: Mapping[str, str]) -> None:
    """Refuse a charge no gateway should send: bad amount, or no payment_id to find it by."""
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int):
        raise TypeError("amount_cents must be an int")
    if amount_cents < MINIMUM_CHARGE_CENTS:
        raise PaymentError(
            f"Charges must be at least {MINIMUM_CHARGE_CENTS} cents", code="amount_too_small"
        )
    # Without payment_id a retried job cannot find the first attempt and would charge twice.
    if not metadata.get("payment_id"):
        raise ValueError("metadata must include payment_id")


def event_from_payload(body: Mapping[str, Any]) -> WebhookEvent:
    """Build a WebhookEvent from a verified Stripe-shaped event body."""
    try:
        obj = dict(body["data"]["object"])
        return WebhookEvent(
            id=str(body["id"]), type=str(body["type"]), object_id=obj.get("id"), data=obj
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidWebhook("The webhook body is not an event") from exc
