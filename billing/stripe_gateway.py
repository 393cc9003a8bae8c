"""The real payment gateway, and the only module in PayText that imports stripe."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import stripe

from billing.gateway import (
    WEBHOOK_TOLERANCE_SECONDS,
    CardError,
    CardSetup,
    ChargeResult,
    ChargeStatus,
    DisputeResult,
    IdempotencyConflict,
    InvalidWebhook,
    PaymentConfigError,
    PaymentError,
    PaymentNotFound,
    RefundError,
    RefundResult,
    RefundStatus,
    SavedCard,
    TransientPaymentError,
    WebhookEvent,
    check_charge_request,
    event_from_payload,
)

LIST_PAGE_SIZE = 100
"""Stripe's largest page; find_payment walks a customer's history newest first, list_refunds a
charge's refunds."""


class StripeGateway:
    """PaymentGateway backed by the Stripe API (or anything that speaks it, given base_url)."""

    name = "stripe"

    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str,
        base_url: str | None = None,
        max_network_retries: int = 0,
    ):
        if not secret_key:
            raise PaymentConfigError("The Stripe secret key is not set")
        # Never fall back to trusting unsigned webhooks.
        if not webhook_secret:
            raise PaymentConfigError("The Stripe webhook signing secret is not set")
        self._webhook_secret = webhook_secret
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": base_url} if base_url else None,
            max_network_retries=max_network_retries,
        )

    def ensure_customer(
        self, *, case_number: str, name: str | None, existing_customer_id: str | None = None
    ) -> str:
        """Return existing_customer_id if given, else create the case's customer (once per case)."""
        if existing_customer_id:
            return existing_customer_id
        params: dict[str, Any] = {"metadata": {"case_number": case_number}}
        if name:
            params["name"] = name
        with _translated_errors():
            customer = self._client.v1.customers.create(
                params=params,
                # A crash between creating and storing the id must not leave two customers.
                options={"idempotency_key": f"paytext-customer-{case_number}"},
            )
        return customer.id

    def create_card_setup(
        self, *, customer_id: str, case_number: str, idempotency_key: str
    ) -> CardSetup:
        """Start a SetupIntent for off-session use; Stripe.js confirms it with the client secret."""
        with _translated_errors():
            intent = self._client.v1.setup_intents.create(
                params={
                    "customer": customer_id,
                    "usage": "off_session",
                    "payment_method_types": ["card"],
                    "metadata": {"case_number": case_number},
                },
                options={"idempotency_key": idempotency_key},
            )
        return CardSetup(setup_id=intent.id, client_secret=intent.client_secret or "")

    def card_from_setup(self, *, setup_id: str) -> SavedCard:
        """The card a succeeded SetupIntent saved; CardError if the payer has not finished it."""
        with _translated_errors():
            intent = self._client.v1.setup_intents.retrieve(
                setup_id, params={"expand": ["payment_method"]}
            )
        data = intent.to_dict()
        method = data.get("payment_method")
        if data.get("status") != "succeeded" or not isinstance(method, Mapping):
            raise CardError("The card has not been saved yet", code="setup_incomplete")
        card = method.get("card") or {}
        return SavedCard(
            payment_method_id=method["id"],
            brand=card.get("brand", "unknown"),
            last4=card.get("last4", ""),
            exp_month=int(card.get("exp_month", 0)),
            exp_year=int(card.get("exp_year", 0)),
        )

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
        """Create and confirm an off-session PaymentIntent; declines come back as results."""
        check_charge_request(amount_cents, metadata)
        try:
            intent = self._client.v1.payment_intents.create(
                params={
                    "amount": amount_cents,
                    "currency": currency,
                    "customer": customer_id,
                    "payment_method": payment_method_id,
                    "confirm": True,
                    "off_session": True,
                    "metadata": dict(metadata),
                    "expand": ["payment_method"],
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            return _charge_from_card_error(exc)
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _charge_from_intent(intent.to_dict())

    def find_payment(self, *, customer_id: str, payment_id: str) -> ChargeResult | None:
        """The newest PaymentIntent whose metadata names payment_id, or None."""
        # Listing is read-after-write consistent; the search API can miss a charge made seconds ago.
        with _translated_errors():
            page = self._client.v1.payment_intents.list(
                params={
                    "customer": customer_id,
                    "limit": LIST_PAGE_SIZE,
                    "expand": ["data.payment_method"],
                }
            )
            for intent in page.auto_paging_iter():
                data = intent.to_dict()
                if (data.get("metadata") or {}).get("payment_id") == payment_id:
                    return _charge_from_intent(data)
        return None

    def retrieve_payment(self, *, intent_id: str) -> ChargeResult:
        """The current state of a PaymentIntent."""
        with _translated_errors():
            intent = self._client.v1.payment_intents.retrieve(
                intent_id, params={"expand": ["payment_method"]}
            )
        return _charge_from_intent(intent.to_dict())

    def cancel_payment(self, *, intent_id: str, idempotency_key: str) -> ChargeResult:
        """Cancel a PaymentIntent still waiting for the payer; its current state if it is past
        that (the payer approved it first, or it was canceled already)."""
        try:
            intent = self._client.v1.payment_intents.cancel(
                intent_id,
                params={"expand": ["payment_method"]},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "payment_intent_unexpected_state":
                return self.retrieve_payment(intent_id=intent_id)
            raise _translate(exc) from exc
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _charge_from_intent(intent.to_dict())

    def refund(
        self, *, intent_id: str, amount_cents: int | None, idempotency_key: str
    ) -> RefundResult:
        """Refund part of a PaymentIntent, or all that is left when amount_cents is None."""
        params: dict[str, Any] = {"payment_intent": intent_id}
        if amount_cents is not None:
            params["amount"] = amount_cents
        try:
            refund = self._client.v1.refunds.create(
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                raise PaymentNotFound(_message(exc), code=exc.code) from exc
            raise RefundError(_message(exc), code=exc.code) from exc
        except stripe.StripeError as exc:
            raise _translate(exc) from exc
        return _refund_result(refund.to_dict())

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        """Every refund of a PaymentIntent, newest first."""
        with _translated_errors():
            page = self._client.v1.refunds.list(
                params={"payment_intent": intent_id, "limit": LIST_PAGE_SIZE}
            )
            return [_refund_result(refund.to_dict()) for refund in page.auto_paging_iter()]

    def retrieve_dispute(self, *, dispute_id: str) -> DisputeResult:
        """The current state of a Stripe dispute."""
        with _translated_errors():
            dispute = self._client.v1.disputes.retrieve(dispute_id).to_dict()
        intent = dispute.get("payment_intent")
        return DisputeResult(
            dispute_id=dispute["id"],
            status=str(dispute["status"]),
            amount_cents=int(dispute["amount"]),
            intent_id=intent.get("id") if isinstance(intent, Mapping) else intent,
        )

    def parse_webhook(self, *, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify Stripe-Signature with the SDK (300 s tolerance) and return the event."""
        try:
            event = self._client.construct_event(
                payload,
                signature_header,
                self._webhook_secret,
                tolerance=WEBHOOK_TOLERANCE_SECONDS,
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhook(_message(exc)) from exc
        except ValueError as exc:
            raise InvalidWebhook("The webhook body is not a Stripe event") from exc
        return event_from_payload(event.to_dict())


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Turn SDK exceptions raised inside the block into the gateway's own."""
    try:
        yield
    except stripe.StripeError as exc:
        raise _translate(exc) from exc


def _translate(exc: stripe.StripeError) -> PaymentError:
    """Map an SDK exception to retry-later, a configuration fault, or a permanent failure."""
    message, code = _message(exc), exc.code
    # APIError covers 5xx and the 409 "key still in flight" lock; both go away on retry.
    if isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError | stripe.APIError):
        return TransientPaymentError(message, code=code)
    if isinstance(exc, stripe.IdempotencyError):
        return IdempotencyConflict(message, code=code)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentConfigError(message, code=code)
    if isinstance(exc, stripe.CardError):
        return CardError(message, code=code)
    if isinstance(exc, stripe.InvalidRequestError) and code == "resource_missing":
        return PaymentNotFound(message, code=code)
    return PaymentError(message, code=code)


def _message(exc: stripe.StripeError) -> str:
    return exc.user_message or str(exc) or type(exc).__name__


def _refund_result(refund: Mapping[str, Any]) -> RefundResult:
    return RefundResult(
        refund_id=refund["id"],
        status=RefundStatus(refund["status"]),
        amount_cents=int(refund["amount"]),
    )


def _charge_from_card_error(exc: stripe.CardError) -> ChargeResult:
    """A 402 on an off-session charge: a decline or a request for authentication."""
    body = (exc.json_body or {}).get("error") or {}
    intent = body.get("payment_intent")
    if not isinstance(intent, Mapping):
        raise CardError(_message(exc), code=exc.code) from exc
    return _charge_from_intent(intent, payment_method=body.get("payment_method"))


def _charge_from_intent(
    intent: Mapping[str, Any], *, payment_method: Mapping[str, Any] | None = None
) -> ChargeResult:
    """Reduce a PaymentIntent (plain dict) to a ChargeResult."""
    error = intent.get("last_payment_error") or {}
    method = intent.get("payment_method")
    if not isinstance(method, Mapping):
        # After a failure Stripe clears payment_method and keeps the card on the error.
        method = payment_method or error.get("payment_method") or {}
    card = method.get("card") or {}

    stripe_status = intent.get("status")
    if stripe_status == "succeeded":
        status = ChargeStatus.SUCCEEDED
    elif stripe_status == "canceled":
        # Before the error check: a canceled intent keeps its last authentication error.
        status = ChargeStatus.CANCELED
    elif stripe_status == "requires_action" or "authentication_required" in (
        error.get("code"),
        error.get("decline_code"),
    ):
        # Off-session, Stripe fails the intent instead of asking; the payer can still
        # confirm it on-session with the client secret. An issuer's soft decline asking for
        # it comes as card_declined with that decline_code: the card is fine, it needs approval.
        status = ChargeStatus.REQUIRES_ACTION
    elif stripe_status == "requires_payment_method":
        status = ChargeStatus.DECLINED
    else:
        status = ChargeStatus.PROCESSING

    latest_charge = intent.get("latest_charge")
    if isinstance(latest_charge, Mapping):
        latest_charge = latest_charge.get("id")
    requires_action = status is ChargeStatus.REQUIRES_ACTION
    declined = status is ChargeStatus.DECLINED
    return ChargeResult(
        intent_id=intent["id"],
        status=status,
        amount_cents=int(intent["amount"]),
        charge_id=latest_charge if status is ChargeStatus.SUCCEEDED else None,
        client_secret=intent.get("client_secret") if requires_action else None,
        decline_code=(error.get("decline_code") or error.get("code")) if declined else None,
        failure_message=error.get("message") if declined or requires_action else None,
        card_brand=card.get("brand"),
        card_last4=card.get("last4"),
        payment_id=(intent.get("metadata") or {}).get("payment_id"),
    )
