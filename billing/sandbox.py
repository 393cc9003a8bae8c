"""A Stripe look-alike kept in Redis, so demos and tests charge test cards with no network.

State lives in hashes under ``paytext:sandbox:`` so the web process and the RQ worker share it.
Card numbers are checked and forgotten: only brand, last 4, expiry and the test card's behaviour
are stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from redis import Redis

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
from billing.testcards import DECLINE_MESSAGES, CardBehaviour, check_test_card
from money import format_cents

PREFIX = "paytext:sandbox:"
"""Every sandbox key starts with this, so the sandbox can share a Redis with RQ."""

IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60
"""Stripe keeps idempotency keys for at least 24 hours; so does the sandbox."""

IN_FLIGHT_TTL_SECONDS = 60
"""How long a claimed idempotency key blocks others if the process holding it dies."""


class SandboxGateway:
    """PaymentGateway that behaves like Stripe's test cards, with state in Redis."""

    name = "sandbox"

    def __init__(self, redis: Redis, *, webhook_secret: str):
        if not webhook_secret:
            raise PaymentConfigError("The sandbox webhook signing secret is not set")
        self._redis = redis
        self._webhook_secret = webhook_secret

    def ensure_customer(
        self, *, case_number: str, name: str | None, existing_customer_id: str | None = None
    ) -> str:
        """Return existing_customer_id if given, else create the case's customer (once per case)."""
        if existing_customer_id:
            return existing_customer_id

        def create() -> dict[str, Any]:
            customer_id = _new_id("cus")
            self._redis.hset(
                self._key("customer", customer_id),
                mapping={"case_number": case_number, "name": name or "", "created": _now()},
            )
            return {"id": customer_id}

        params = {"case_number": case_number, "name": name}
        key = f"paytext-customer-{case_number}"
        return self._idempotent(key, "customer", params, create)["id"]

    def create_card_setup(
        self, *, customer_id: str, case_number: str, idempotency_key: str
    ) -> CardSetup:
        """Start a setup that the local card form completes with save_test_card."""

        def create() -> dict[str, Any]:
            if not self._redis.exists(self._key("customer", customer_id)):
                raise PaymentNotFound(f"No such customer: {customer_id}", code="resource_missing")
            setup_id = _new_id("seti")
            client_secret = f"{setup_id}_secret_{secrets.token_hex(12)}"
            self._redis.hset(
                self._key("setup", setup_id),
                mapping={
                    "customer_id": customer_id,
                    "case_number": case_number,
                    "status": "requires_payment_method",
                    "client_secret": client_secret,
                },
            )
            return {"setup_id": setup_id, "client_secret": client_secret}

        params = {"customer": customer_id, "case_number": case_number}
        return CardSetup(**self._idempotent(idempotency_key, "setup", params, create))

    def save_test_card(
        self, *, setup_id: str, card_number: str, exp_month: int, exp_year: int, cvc: str
    ) -> SavedCard:
        """Complete a setup with a Stripe test card (sandbox only); CardError for anything else."""
        setup_key = self._key("setup", setup_id)
        setup = self._load(setup_key)
        if setup is None:
            raise PaymentNotFound(f"No such card setup: {setup_id}", code="resource_missing")
        card, year = check_test_card(
            card_number, exp_month=exp_month, exp_year=exp_year, cvc=cvc, today=_today()
        )
        method_id = _new_id("pm")
        # HSETNX makes a double-submitted form save one card, not two.
        if not self._redis.hsetnx(setup_key, "payment_method_id", method_id):
            raise CardError("This card setup is already complete", code="setup_already_complete")
        saved = SavedCard(
            payment_method_id=method_id,
            brand=card.brand,
            last4=card.last4,
            exp_month=exp_month,
            exp_year=year,
        )
        method = {
            "customer_id": setup["customer_id"],
            "brand": saved.brand,
            "last4": saved.last4,
            "exp_month": saved.exp_month,
            "exp_year": saved.exp_year,
            "behaviour": card.behaviour,
            "decline_code": card.decline_code or "",
        }
        pipe = self._redis.pipeline()
        pipe.hset(self._key("pm", method_id), mapping=method)
        pipe.hset(setup_key, "status", "succeeded")
        pipe.execute()
        return saved

    def card_from_setup(self, *, setup_id: str) -> SavedCard:
        """The card a completed setup saved; CardError if the payer has not finished it."""
        setup = self._load(self._key("setup", setup_id))
        if setup is None:
            raise PaymentNotFound(f"No such card setup: {setup_id}", code="resource_missing")
        method = self._load(self._key("pm", setup.get("payment_method_id", "")))
        if setup["status"] != "succeeded" or method is None:
            raise CardError("The card has not been saved yet", code="setup_incomplete")
        return SavedCard(
            payment_method_id=setup["payment_method_id"],
            brand=method["brand"],
            last4=method["last4"],
            exp_month=int(method["exp_month"]),
            exp_year=int(method["exp_year"]),
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
        """Charge a saved test card off-session; declines come back as results."""
        check_charge_request(amount_cents, metadata)

        def create() -> dict[str, Any]:
            method = self._load(self._key("pm", payment_method_id))
            if method is None or method["customer_id"] != customer_id:
                raise PaymentNotFound(
                    f"No such card for customer {customer_id}: {payment_method_id}",
                    code="resource_missing",
                )
            intent_id = _new_id("pi")
            intent = {
                "customer_id": customer_id,
                "payment_method_id": payment_method_id,
                "amount": amount_cents,
                "currency": currency,
                "metadata": json.dumps(dict(metadata)),
                "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
                "refunded": 0,
                "card_brand": method["brand"],
                "card_last4": method["last4"],
                "created": _now(),
            }
            behaviour = CardBehaviour(method["behaviour"])
            if behaviour is CardBehaviour.SUCCEEDS:
                intent |= {"status": ChargeStatus.SUCCEEDED, "charge_id": _new_id("ch")}
            elif behaviour is CardBehaviour.DECLINES:
                code = method["decline_code"]
                intent |= {
                    "status": ChargeStatus.DECLINED,
                    "decline_code": code,
                    "failure_message": DECLINE_MESSAGES[code],
                }
            else:
                intent |= {
                    "status": ChargeStatus.REQUIRES_ACTION,
                    "failure_message": DECLINE_MESSAGES["authentication_required"],
                }
            pipe = self._redis.pipeline()
            pipe.hset(self._key("pi", intent_id), mapping=intent)
            pipe.hset(self._key("payments", customer_id), metadata["payment_id"], intent_id)
            pipe.execute()
            return asdict(_charge_result(intent_id, self._load(self._key("pi", intent_id)) or {}))

        params = {
            "customer": customer_id,
            "payment_method": payment_method_id,
            "amount": amount_cents,
            "currency": currency,
            "metadata": dict(metadata),
        }
        stored = self._idempotent(idempotency_key, "charge", params, create)
        return ChargeResult(**(stored | {"status": ChargeStatus(stored["status"])}))

    def find_payment(self, *, customer_id: str, payment_id: str) -> ChargeResult | None:
        """The newest charge made for payment_id, or None."""
        intent_id = self._redis.hget(self._key("payments", customer_id), payment_id)
        if intent_id is None:
            return None
        return self.retrieve_payment(intent_id=_text(intent_id))

    def retrieve_payment(self, *, intent_id: str) -> ChargeResult:
        """The current state of a sandbox charge."""
        intent = self._load(self._key("pi", intent_id))
        if intent is None:
            raise PaymentNotFound(f"No such payment: {intent_id}", code="resource_missing")
        return _charge_result(intent_id, intent)

    def confirm_authentication(self, *, intent_id: str, client_secret: str) -> ChargeResult:
        """Finish a charge that required authentication, as Stripe.js would (sandbox only)."""
        key = self._key("pi", intent_id)

        def complete(pipe: Any) -> None:
            intent = _decode(pipe.hgetall(key))
            if not intent or not hmac.compare_digest(intent["client_secret"], client_secret):
                raise PaymentNotFound(f"No such payment: {intent_id}", code="resource_missing")
            if intent["status"] != ChargeStatus.REQUIRES_ACTION:
                return
            pipe.multi()
            pipe.hset(key, mapping={"status": ChargeStatus.SUCCEEDED, "charge_id": _new_id("ch")})
            pipe.hdel(key, "failure_message")

        self._redis.transaction(complete, key)
        return self.retrieve_payment(intent_id=intent_id)

    def cancel_payment(self, *, intent_id: str, idempotency_key: str) -> ChargeResult:
        """Cancel a sandbox charge still waiting for the payer; its state if it is past that."""
        key = self._key("pi", intent_id)

        def cancel(pipe: Any) -> None:
            intent = _decode(pipe.hgetall(key))
            if not intent:
                raise PaymentNotFound(f"No such payment: {intent_id}", code="resource_missing")
            if intent["status"] != ChargeStatus.REQUIRES_ACTION:
                return
            pipe.multi()
            pipe.hset(key, "status", ChargeStatus.CANCELED)

        def create() -> dict[str, Any]:
            self._redis.transaction(cancel, key)
            return asdict(self.retrieve_payment(intent_id=intent_id))

        params = {"payment_intent": intent_id}
        stored = self._idempotent(idempotency_key, "cancel", params, create)
        return ChargeResult(**(stored | {"status": ChargeStatus(stored["status"])}))

    def refund(
        self, *, intent_id: str, amount_cents: int | None, idempotency_key: str
    ) -> RefundResult:
        """Refund part of a charge, or all that is left when amount_cents is None."""
        key = self._key("pi", intent_id)

        def apply(pipe: Any) -> int:
            intent = _decode(pipe.hgetall(key))
            if not intent:
                raise PaymentNotFound(f"No such payment: {intent_id}", code="resource_missing")
            if intent["status"] != ChargeStatus.SUCCEEDED:
                raise RefundError(
                    "This payment has no successful charge", code="charge_not_refundable"
                )
            remaining = int(intent["amount"]) - int(intent["refunded"])
            if remaining <= 0:
                raise RefundError(
                    "This payment is already refunded", code="charge_already_refunded"
                )
            amount = remaining if amount_cents is None else amount_cents
            if amount <= 0:
                raise RefundError("Refund amount must be positive", code="invalid_amount")
            if amount > remaining:
                raise RefundError(
                    f"Refund amount ({format_cents(amount)}) is greater than unrefunded amount"
                    f" on charge ({format_cents(remaining)})",
                    code="amount_too_large",
                )
            pipe.multi()
            pipe.hincrby(key, "refunded", amount)
            return amount

        def create() -> dict[str, Any]:
            # WATCH makes the check and the increment atomic against concurrent refunds.
            amount = self._redis.transaction(apply, key, value_from_callable=True)
            refund_id = _new_id("re")
            refund = {"intent_id": intent_id, "amount": amount, "status": RefundStatus.SUCCEEDED}
            pipe = self._redis.pipeline()
            pipe.hset(self._key("refund", refund_id), mapping=refund)
            pipe.rpush(self._key("refunds", intent_id), refund_id)
            pipe.execute()
            return {
                "refund_id": refund_id,
                "status": RefundStatus.SUCCEEDED,
                "amount_cents": amount,
            }

        params = {"payment_intent": intent_id, "amount": amount_cents}
        stored = self._idempotent(idempotency_key, "refund", params, create)
        return RefundResult(**(stored | {"status": RefundStatus(stored["status"])}))

    def list_refunds(self, *, intent_id: str) -> list[RefundResult]:
        """Every refund of a sandbox charge, newest first (sandbox refunds succeed at once)."""
        refunds = []
        for refund_id in reversed(self._redis.lrange(self._key("refunds", intent_id), 0, -1)):
            refund = self._load(self._key("refund", _text(refund_id))) or {}
            refunds.append(
                RefundResult(
                    refund_id=_text(refund_id),
                    status=RefundStatus(refund["status"]),
                    amount_cents=int(refund["amount"]),
                )
            )
        return refunds

    def retrieve_dispute(self, *, dispute_id: str) -> DisputeResult:
        """Sandbox charges are never disputed: every dispute id is unknown."""
        raise PaymentNotFound(f"No such dispute: {dispute_id}", code="resource_missing")

    def parse_webhook(self, *, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify a Stripe-format signature made with the sandbox secret and return the event."""
        verify_webhook(payload, signature_header, self._webhook_secret, now=time.time())
        try:
            body = json.loads(payload)
        except ValueError as exc:
            raise InvalidWebhook("The webhook body is not JSON") from exc
        if not isinstance(body, dict):
            raise InvalidWebhook("The webhook body is not an event")
        return event_from_payload(body)

    def signed_event(
        self, event_type: str, obj: Mapping[str, Any], *, timestamp: int | None = None
    ) -> tuple[bytes, str]:
        """A Stripe-shaped event and its Stripe-Signature header, for posting to our webhook."""
        created = int(time.time()) if timestamp is None else timestamp
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "type": event_type,
            "created": created,
            "livemode": False,
            "data": {"object": dict(obj)},
        }
        payload = json.dumps(event).encode()
        return payload, sign_webhook(payload, self._webhook_secret, timestamp=created)

    def _key(self, kind: str, object_id: str) -> str:
        return f"{PREFIX}{kind}:{object_id}"

    def _load(self, key: str) -> dict[str, str] | None:
        return _decode(self._redis.hgetall(key)) or None

    def _idempotent(
        self,
        key: str,
        operation: str,
        params: Mapping[str, Any],
        create: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """Run create once per key, as Stripe does: replay its result, refuse other params."""
        redis_key = self._key("idempotency", key)
        blob = json.dumps([operation, params], sort_keys=True, default=str).encode()
        fingerprint = hashlib.sha256(blob).hexdigest()
        claimed = self._redis.set(
            redis_key, json.dumps({"fingerprint": fingerprint}), nx=True, ex=IN_FLIGHT_TTL_SECONDS
        )
        if not claimed:
            raw = self._redis.get(redis_key)
            stored = json.loads(raw) if raw is not None else {"fingerprint": fingerprint}
            if stored["fingerprint"] != fingerprint:
                raise IdempotencyConflict(
                    f"Idempotency key {key!r} was already used with other parameters",
                    code="idempotency_error",
                )
            if "result" not in stored:
                raise TransientPaymentError(
                    f"Another request with idempotency key {key!r} is in progress",
                    code="idempotency_key_in_use",
                )
            return stored["result"]
        try:
            result = create()
        except BaseException:
            # Like Stripe, keep nothing for a request that did not complete, so a retry can run.
            self._redis.delete(redis_key)
            raise
        done = json.dumps({"fingerprint": fingerprint, "result": result})
        self._redis.set(redis_key, done, ex=IDEMPOTENCY_TTL_SECONDS)
        return result


def sign_webhook(payload: bytes, secret: str, *, timestamp: int) -> str:
    """The Stripe-Signature header value (t=...,v1=...) for a body, as Stripe computes it."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_webhook(
    payload: bytes,
    header: str | None,
    secret: str,
    *,
    now: float,
    tolerance: int = WEBHOOK_TOLERANCE_SECONDS,
) -> None:
    """Raise InvalidWebhook unless header holds a v1 signature of payload made within tolerance."""
    if not header:
        raise InvalidWebhook("No Stripe-Signature header")
    pairs = [part.split("=", 1) for part in header.split(",")]
    fields = [(pair[0].strip(), pair[1].strip()) for pair in pairs if len(pair) == 2]
    timestamps = [value for name, value in fields if name == "t"]
    if not timestamps or not timestamps[0].isdigit():
        raise InvalidWebhook("The Stripe-Signature header has no timestamp")
    timestamp = int(timestamps[0])
    expected = sign_webhook(payload, secret, timestamp=timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, value) for name, value in fields if name == "v1"):
        raise InvalidWebhook("No signature matches the payload")
    if timestamp < now - tolerance:
        raise InvalidWebhook("The webhook signature is too old")


def _charge_result(intent_id: str, intent: Mapping[str, str]) -> ChargeResult:
    status = ChargeStatus(intent["status"])
    return ChargeResult(
        intent_id=intent_id,
        status=status,
        amount_cents=int(intent["amount"]),
        charge_id=intent.get("charge_id") if status is ChargeStatus.SUCCEEDED else None,
        client_secret=intent["client_secret"] if status is ChargeStatus.REQUIRES_ACTION else None,
        decline_code=intent.get("decline_code"),
        failure_message=intent.get("failure_message"),
        card_brand=intent.get("card_brand"),
        card_last4=intent.get("card_last4"),
        payment_id=json.loads(intent.get("metadata") or "{}").get("payment_id"),
    )


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _now() -> int:
    return int(time.time())


def _today() -> date:
    return datetime.now(UTC).date()
