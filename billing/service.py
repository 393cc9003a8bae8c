"""Billing: payments from confirmed quotes, charge outcomes, webhook reconciliation, refunds, caps.

Whatever must happen once (the balance dropping and the receipt, a refund going back on the
balance, a card being saved) is decided by a conditional UPDATE whose row count says who won.
The charge job, a retry of it, the Stripe webhook and the payer's browser can therefore all
report the same outcome, in any order, and it is applied exactly once.

A conditional UPDATE is also each transaction's first statement where it matters: PostgreSQL
then locks the row and SQLite takes its write lock before anything is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from billing import cards, links
from billing.cycles import over_balance
from billing.gateway import (
    MINIMUM_CHARGE_CENTS,
    CardSetup,
    ChargeResult,
    ChargeStatus,
    DisputeResult,
    PaymentError,
    PaymentGateway,
    PaymentNotFound,
    RefundResult,
    RefundStatus,
    TransientPaymentError,
    WebhookEvent,
)
from bot.dialogue import ChargeQuote, case_ending
from bot.messages import Reply, render_reply
from bot.outbound import may_text, queue_text
from jobs.schedule import case_zone, resolve_timezone
from models import (
    CardOnFile,
    Case,
    CaseStatus,
    Conversation,
    ConversationTurn,
    Enrollment,
    EnrollmentStatus,
    Payment,
    PaymentStatus,
    Refund,
    utcnow,
)
from models import WebhookEvent as WebhookEventRow
from money import format_cents, parse_dollars

log = logging.getLogger(__name__)

IN_FLIGHT = (PaymentStatus.PENDING, PaymentStatus.PROCESSING, PaymentStatus.REQUIRES_ACTION)
"""Confirmed payments whose money has not moved yet; they hold their share of balance and cap."""

COUNTED = (*IN_FLIGHT, PaymentStatus.SUCCEEDED)
"""Payments that count against the monthly cap."""

CAPTURED = (PaymentStatus.SUCCEEDED, PaymentStatus.DISPUTED, PaymentStatus.DISPUTE_LOST)
"""Payments whose money the processor took: their refunds are followed whatever a dispute does."""

GAVE_UP = (PaymentStatus.FAILED, PaymentStatus.CANCELED)
"""Payments the payer was told did not go through; the processor may still take the money."""

LATE_SUCCESS = "succeeded_after_failure"
"""review_reason of a payment the processor took after the payer was told it had failed: it is
on the balance, and staff check whether the payer paid again (Payment.review_reason)."""

STALE_AFTER = timedelta(minutes=10)
"""A pending or processing payment untouched this long has lost its job (worker or Redis died)."""

APPROVAL_WINDOW = links.AUTH_LINK_TTL
"""How long a payment waits for the payer's bank approval: as long as the approval link works.
Then it is canceled, so it stops holding its share of the balance and the monthly cap."""

APPROVAL_EXPIRED = "approval_expired"
"""failure_code of a payment canceled because its approval window closed (staff see it)."""

CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
"""Confirmation code characters: no 0/O, 1/I/L, so a code read aloud on the phone is unambiguous."""

CODE_LENGTH = 8
_CODE_BITS = 39  # 31**8 > 2**39, so every 39-bit number has its own 8-character code
_CODE_MASK = (1 << _CODE_BITS) - 1


class RefundState:
    """Refund.status values (a plain string column)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class PaymentRefused(Exception):
    """The quote cannot be charged now; nothing was created.

    `reply` is the text that tells the payer why (render it with bot.messages.render_reply in
    the payer's language) and `reason` a short code for logs.
    """

    def __init__(self, reason: str, reply: Reply):
        super().__init__(reason)
        self.reason = reason
        self.reply = reply


class RefundRefused(Exception):
    """A refund staff asked for that cannot be made; the message says why, for staff."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code


# -- pure rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """How much may be paid by text: per payment and per calendar month."""

    per_payment_cents: int
    monthly_cents: int


def limits(config: Mapping[str, Any]) -> Limits:
    """The caps from settings (MAX_PAYMENT, MONTHLY_PAYMENT_CAP, in dollars)."""
    return Limits(
        per_payment_cents=parse_dollars(config["MAX_PAYMENT"]),
        monthly_cents=parse_dollars(config["MONTHLY_PAYMENT_CAP"]),
    )


def charge_problem(
    *,
    amount_cents: int,
    balance_cents: int,
    in_flight_cents: int,
    month_paid_cents: int,
    limits: Limits,
) -> tuple[str, dict[str, int]] | None:
    """Why this amount may not be charged now, as (message key, params); None when it may.

    Payments already confirmed but not yet settled hold their share of the balance, so two
    quick PAY/YES rounds cannot pay more than is owed.
    """
    if balance_cents <= 0:
        return "nothing_owed", {}
    if amount_cents < MINIMUM_CHARGE_CENTS:
        return "amount_too_small", {"minimum": MINIMUM_CHARGE_CENTS}
    if amount_cents > balance_cents - in_flight_cents:
        return over_balance(balance_cents, in_flight_cents)
    if amount_cents > limits.per_payment_cents:
        return "amount_over_cap", {"cap": limits.per_payment_cents}
    remaining = limits.monthly_cents - month_paid_cents
    if amount_cents > remaining:
        if remaining < MINIMUM_CHARGE_CENTS:
            return "monthly_limit_reached", {"cap": limits.monthly_cents}
        return "amount_over_monthly", {"cap": limits.monthly_cents, "remaining": remaining}
    return None


def confirmation_code(payment_id: int) -> str:
    """The payment's receipt code: 8 characters, distinct for every payment id, not sequential."""
    if not 0 < payment_id <= _CODE_MASK:
        raise ValueError(f"payment id {payment_id} is out of range for a confirmation code")
    # Multiplying by an odd number and xor-shifting are both invertible modulo 2**39, so
    # different ids can never share a code, yet neighbouring ids look unrelated.
    value = (payment_id * 0x5DEECE66D) & _CODE_MASK
    value ^= value >> 19
    value = (value * 0x2545F491) & _CODE_MASK
    chars = []
    for _ in range(CODE_LENGTH):
        value, digit = divmod(value, len(CODE_ALPHABET))
        chars.append(CODE_ALPHABET[digit])
    return "".join(reversed(chars))


def month_start(now: datetime, zone: ZoneInfo) -> datetime:
    """Midnight on the first of `now`'s month in `zone`, as an aware datetime."""
    local = now.astimezone(zone)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def quote_idempotency_key(quote_id: str) -> str:
    """The Payment (and processor) idempotency key of a confirmed quote."""
    return f"paytext-quote-{quote_id}"


# -- creating payments ------------------------------------------------------------------------


def payment_for_quote(
    *, session: Session, quote: ChargeQuote, authorized_turn_id: int | None
) -> Payment:
    """The Payment for a confirmed quote, created once however many YES replies race for it.

    Caps and balance are checked again here, with the case row locked; when they no longer
    allow the charge, PaymentRefused is raised (carrying the reply for the payer) and nothing
    is created. The caller commits, then calls enqueue_charge(payment_id=...).
    """
    key = quote_idempotency_key(quote.quote_id)
    if (existing := _payment_by_key(session, key)) is not None:
        return existing
    _lock(session, Case, quote.case_id)
    # The winner of a race may have committed while this request waited for the lock.
    if (existing := _payment_by_key(session, key)) is not None:
        return existing
    case = session.get(Case, quote.case_id, populate_existing=True)
    if case is None or case.status != CaseStatus.OPEN:
        raise PaymentRefused("case_closed", _reply("nothing_to_confirm"))
    card = cards.active_card(session=session, case_id=case.id)
    if card is None:
        url = links.card_link_url(case_id=case.id)
        raise PaymentRefused("no_card", _reply("card_link", url=url))
    if card.last4 != quote.card_last4:
        raise PaymentRefused("card_changed", _reply("quote_expired"))
    now = utcnow()
    problem = charge_problem(
        amount_cents=quote.amount_cents,
        balance_cents=case.balance_cents,
        in_flight_cents=_in_flight_cents(session, case.id),
        month_paid_cents=month_paid_cents(session=session, case_id=case.id, now=now),
        limits=limits(current_app.config),
    )
    if problem is not None:
        key_name, params = problem
        raise PaymentRefused(key_name, _reply(key_name, case_last4=case_last4(case), **params))

    payment = Payment(
        case_id=case.id,
        card_id=card.id,
        amount_cents=quote.amount_cents,
        currency="usd",
        status=PaymentStatus.PENDING,
        idempotency_key=key,
        processor=_gateway().name,
        authorized_turn_id=authorized_turn_id,
        created_at=now,
        updated_at=now,
    )
    savepoint = session.begin_nested()
    try:
        session.add(payment)
        session.flush()
        savepoint.commit()
    except IntegrityError:
        # Another process inserted the same key between our check and our insert.
        savepoint.rollback()
        winner = _payment_by_key(session, key)
        if winner is None:
            raise
        return winner
    return payment


def enqueue_charge(*, payment_id: int) -> None:
    """Queue the charge job for a committed payment, once; transient failures retry with backoff."""
    from rq.exceptions import DuplicateJobError

    from billing import jobs

    queue = current_app.extensions["queues"]["payments"]
    try:
        queue.enqueue_call(
            jobs.charge_payment,
            kwargs={"payment_id": payment_id},
            job_id=jobs.charge_job_id(payment_id),
            retry=jobs.charge_retry(),
            timeout=jobs.CHARGE_TIMEOUT_SECONDS,
            unique=True,
        )
    except DuplicateJobError:
        log.info("charge of payment %s is already queued", payment_id)


_MONTH_PAID = (
    sa.select(sa.func.coalesce(sa.func.sum(Payment.amount_cents - Payment.refunded_cents), 0))
    .where(Payment.case_id == sa.bindparam("case_id"))
    .where(Payment.status.in_(COUNTED))
    .where(Payment.created_at >= sa.bindparam("start", type_=Payment.__table__.c.created_at.type))
)


def month_paid_cents(
    *, session: Session, case_id: int, now: datetime, timezone: str | None = None
) -> int:
    """What the case has paid, or confirmed and not yet settled, this calendar month (net).

    `timezone` is the case's (its month boundary); when omitted the case is loaded to find it.
    """
    if timezone is None:
        case = session.get(Case, case_id)
        if case is None:
            return 0
        timezone = case.timezone
    start = month_start(now, case_zone(timezone, current_app.config["DEFAULT_TIMEZONE"]))
    return int(session.execute(_MONTH_PAID, {"case_id": case_id, "start": start}).scalar_one())


# -- charging ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeRequest:
    """Everything the charge job sends to the processor, read from the payment and its card."""

    payment_id: int
    attempt: int
    customer_id: str
    payment_method_id: str
    amount_cents: int
    currency: str
    idempotency_key: str
    case_number: str

    @property
    def metadata(self) -> dict[str, str]:
        """What the processor keeps with the charge, so a retry can find it (find_payment)."""
        return {"case_number": self.case_number, "payment_id": str(self.payment_id)}


def begin_charge(*, session: Session, payment_id: int) -> ChargeRequest | None:
    """Count one more attempt on a payment that still needs charging; None if none is needed."""
    now = utcnow()
    claimed = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id)
        .where(Payment.status.in_((PaymentStatus.PENDING, PaymentStatus.PROCESSING)))
        .values(status=PaymentStatus.PROCESSING, attempts=Payment.attempts + 1, updated_at=now),
    )
    if not claimed:
        return None
    request = charge_request(session=session, payment_id=payment_id)
    if request is None:
        fail_payment(session=session, payment_id=payment_id, code="no_card", message="No card")
    return request


def charge_request(*, session: Session, payment_id: int) -> ChargeRequest | None:
    """What to send the processor for a payment, from the row and the card the payer confirmed."""
    payment = session.get(Payment, payment_id, populate_existing=True)
    card = session.get(CardOnFile, payment.card_id) if payment and payment.card_id else None
    if card is None:
        return None
    return ChargeRequest(
        payment_id=payment_id,
        attempt=payment.attempts,
        customer_id=card.customer_id,
        payment_method_id=card.payment_method_id,
        amount_cents=payment.amount_cents,
        currency=payment.currency,
        idempotency_key=payment.idempotency_key,
        case_number=session.get(Case, payment.case_id).case_number,
    )


def charge(gateway: PaymentGateway, request: ChargeRequest) -> ChargeResult:
    """Find the processor's charge for this payment, or make it; idempotent end to end."""
    found = gateway.find_payment(
        customer_id=request.customer_id, payment_id=str(request.payment_id)
    )
    if found is not None:
        return found
    return gateway.charge(
        customer_id=request.customer_id,
        payment_method_id=request.payment_method_id,
        amount_cents=request.amount_cents,
        currency=request.currency,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
    )


def apply_charge_result(*, session: Session, payment_id: int, result: ChargeResult) -> str:
    """Record what the processor says about a payment and text the payer once; the caller commits.

    Returns what happened, for logs: succeeded, declined, requires_action, processing,
    canceled, or unchanged when this outcome was already recorded (or is stale).
    """
    payment = session.get(Payment, payment_id)
    if payment is None:
        return "unchanged"
    if result.amount_cents != payment.amount_cents:
        log.error(
            "payment %s: processor charge %s is for %s cents, not %s; not applied",
            payment_id,
            result.intent_id,
            result.amount_cents,
            payment.amount_cents,
        )
        return "unchanged"
    handler = _OUTCOMES.get(result.status)
    if handler is None:
        return "unchanged"
    return handler(session, payment_id, result)


def fail_payment(*, session: Session, payment_id: int, code: str, message: str) -> bool:
    """Mark a payment that never charged as failed and tell the payer; False if already settled."""
    now = utcnow()
    failed = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id)
        .where(Payment.status.in_((PaymentStatus.PENDING, PaymentStatus.PROCESSING)))
        .values(
            status=PaymentStatus.FAILED,
            failure_code=(code or "unknown")[:48],
            failure_message=message[:300],
            updated_at=now,
        ),
    )
    if failed:
        payment = session.get(Payment, payment_id, populate_existing=True)
        _notify(session, payment, "payment_failed", "payment_failed", amount=payment.amount_cents)
    return failed


def _succeeded(session: Session, payment_id: int, result: ChargeResult) -> str:
    now = utcnow()
    values = {
        "status": PaymentStatus.SUCCEEDED,
        "balance_applied": True,
        "processor_payment_id": result.intent_id,
        "processor_charge_id": result.charge_id,
        "confirmation_code": confirmation_code(payment_id),
        "succeeded_at": now,
        "updated_at": now,
    }
    # balance_applied is the once-only switch: whoever flips it lowers the balance and sends
    # the receipt; everyone else (a second job, the webhook) finds it flipped.
    won = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.balance_applied.is_(False))
        .where(Payment.status.in_(IN_FLIGHT))
        .values(**values, failure_code=None, failure_message=None),
    )
    late = False
    if not won:
        # The payer was told it failed (the last retry found no charge while the request was
        # still in flight, or the bank approved after Stripe reported a failure), yet the money
        # was taken: it goes on the balance all the same, the failure stays on the record, and
        # staff are asked to check for a second payment.
        won = late = bool(
            _update(
                session,
                sa.update(Payment)
                .where(Payment.id == payment_id, Payment.balance_applied.is_(False))
                .where(Payment.status.in_(GAVE_UP))
                .values(**values, review_reason=LATE_SUCCESS),
            )
        )
    if not won:
        return "unchanged"
    payment = session.get(Payment, payment_id, populate_existing=True)
    # Never clamped: a payer who paid again meanwhile is left with a credit, which staff see.
    _update(
        session,
        sa.update(Case)
        .where(Case.id == payment.case_id)
        .values(balance_cents=Case.balance_cents - payment.amount_cents, updated_at=now),
    )
    case = session.get(Case, payment.case_id, populate_existing=True)
    last4 = _card_last4(session, payment, result)
    if late:
        log.error(
            "payment %s (%s) succeeded after the payer was told it failed (%s): %s cents kept"
            " on the balance, now %s; flagged for staff",
            payment_id,
            result.intent_id,
            payment.failure_code,
            payment.amount_cents,
            case.balance_cents,
        )
        # Not the usual receipt: it says the earlier text was wrong, and no balance that a
        # second payment may have made a credit.
        _notify(
            session,
            payment,
            "late_receipt",
            "late_receipt",
            amount=payment.amount_cents,
            date=payment.created_at,
            last4=last4,
            code=payment.confirmation_code,
        )
        return LATE_SUCCESS
    _notify(
        session,
        payment,
        "receipt",
        "receipt",
        amount=payment.amount_cents,
        date=now,
        last4=last4,
        code=payment.confirmation_code,
        balance=case.balance_cents,
    )
    return "succeeded"


def _declined(session: Session, payment_id: int, result: ChargeResult) -> str:
    now = utcnow()
    changed = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(IN_FLIGHT))
        .values(
            status=PaymentStatus.FAILED,
            processor_payment_id=result.intent_id,
            failure_code=(result.decline_code or "declined")[:48],
            failure_message=(result.failure_message or "")[:300] or None,
            updated_at=now,
        ),
    )
    if not changed:
        return "unchanged"
    payment = session.get(Payment, payment_id, populate_existing=True)
    _notify(
        session,
        payment,
        "declined",
        "declined",
        amount=payment.amount_cents,
        reason=result.decline_code or "other",
        url=links.card_link_url(case_id=payment.case_id),
    )
    return "declined"


def _requires_action(session: Session, payment_id: int, result: ChargeResult) -> str:
    changed = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id)
        .where(Payment.status.in_((PaymentStatus.PENDING, PaymentStatus.PROCESSING)))
        .values(
            status=PaymentStatus.REQUIRES_ACTION,
            processor_payment_id=result.intent_id,
            failure_code="authentication_required",
            updated_at=utcnow(),
        ),
    )
    if not changed:
        return "unchanged"
    payment = session.get(Payment, payment_id, populate_existing=True)
    url = links.auth_link_url(payment_id=payment_id)
    _notify(
        session, payment, "auth_required", "auth_required", amount=payment.amount_cents, url=url
    )
    return "requires_action"


def _processing(session: Session, payment_id: int, result: ChargeResult) -> str:
    # The processor is still working on it (bank transfers, rare for cards): the webhook ends it.
    _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(IN_FLIGHT))
        .where(Payment.processor_payment_id.is_(None))
        .values(processor_payment_id=result.intent_id, updated_at=utcnow()),
    )
    return "processing"


def _canceled(session: Session, payment_id: int, result: ChargeResult) -> str:
    expired = Payment.failure_code == APPROVAL_EXPIRED
    changed = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.status.in_(IN_FLIGHT))
        .values(
            status=PaymentStatus.CANCELED,
            processor_payment_id=result.intent_id,
            failure_code=sa.case((expired, APPROVAL_EXPIRED), else_="canceled"),
            updated_at=utcnow(),
        ),
    )
    if not changed:
        return "unchanged"
    payment = session.get(Payment, payment_id, populate_existing=True)
    # Expiry (ours, or Stripe's webhook for it arriving first) gets its own text.
    key = APPROVAL_EXPIRED if payment.failure_code == APPROVAL_EXPIRED else "payment_failed"
    _notify(session, payment, key, key, amount=payment.amount_cents)
    return "canceled"


_OUTCOMES: dict[ChargeStatus, Callable[[Session, int, ChargeResult], str]] = {
    ChargeStatus.SUCCEEDED: _succeeded,
    ChargeStatus.DECLINED: _declined,
    ChargeStatus.REQUIRES_ACTION: _requires_action,
    ChargeStatus.PROCESSING: _processing,
    ChargeStatus.CANCELED: _canceled,
}


def unfinished_payment_ids(*, session: Session, idle_since: datetime) -> list[int]:
    """Payments still pending or processing that nothing has touched since `idle_since`."""
    return list(
        session.exec(
            select(Payment.id)
            .where(Payment.status.in_((PaymentStatus.PENDING, PaymentStatus.PROCESSING)))
            .where(Payment.updated_at < idle_since)
            .order_by(Payment.id)
        ).all()
    )


def expired_approval_ids(*, session: Session, now: datetime) -> list[int]:
    """Payments still waiting for the payer's bank approval after the approval window closed."""
    return list(
        session.exec(
            select(Payment.id)
            .where(Payment.status == PaymentStatus.REQUIRES_ACTION)
            .where(Payment.updated_at < now - APPROVAL_WINDOW)
            .order_by(Payment.id)
        ).all()
    )


def begin_expiry(*, session: Session, payment_id: int, now: datetime) -> str | None:
    """Mark a payment whose approval window closed as expiring; the intent to cancel, or None.

    Marked before the processor is asked, so whichever records the cancellation (the sweep,
    or Stripe's payment_intent.canceled webhook) tells the payer why.
    """
    marked = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment_id, Payment.status == PaymentStatus.REQUIRES_ACTION)
        .where(Payment.updated_at < now - APPROVAL_WINDOW)
        .values(failure_code=APPROVAL_EXPIRED),
    )
    if not marked:
        return None
    return session.get(Payment, payment_id, populate_existing=True).processor_payment_id


def cancel_idempotency_key(payment_id: int) -> str:
    """The processor idempotency key of canceling a payment whose approval window closed."""
    return f"paytext-cancel-{payment_id}"


def requires_action_result(*, payment: Payment) -> ChargeResult | None:
    """The processor's current view of a payment waiting for the payer to approve it."""
    if payment.status != PaymentStatus.REQUIRES_ACTION or not payment.processor_payment_id:
        return None
    return _gateway().retrieve_payment(intent_id=payment.processor_payment_id)


# -- the Stripe webhook -----------------------------------------------------------------------


REFUND_EVENTS = frozenset(
    {
        "charge.refunded",
        "charge.refund.updated",
        "refund.created",
        "refund.updated",
        "refund.failed",
    }
)
"""Events about refunds (their object a charge or a refund); each reconciles the payment's."""


DISPUTE_EVENTS = frozenset(
    {
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    }
)
"""Events about a dispute (chargeback) on a charge; each reconciles the payment with it."""


def handle_event(*, session: Session, gateway: PaymentGateway, event: WebhookEvent) -> str:
    """Apply a verified processor event once; a replayed event id changes nothing.

    Payment events are reconciled against the processor's current state rather than the
    event's copy, so events that arrive out of order still leave the right final state.
    The caller commits; on an exception it rolls back, which also forgets the event id, so
    the processor's redelivery is handled afresh.

    The event id is written last, in the same transaction: on SQLite the first write takes the
    whole database's write lock, which must not be held while the processor is asked (every
    text, STOP included, would wait on it). Two deliveries of one event at once may both be
    handled; every handler reconciles with the processor by conditional updates, so the second
    changes nothing, and it is reported as the duplicate.
    """
    if _delivered_before(session, event):
        return "duplicate"
    outcome = _apply_event(session, gateway, event)
    return outcome if _first_delivery(session, event) else "duplicate"


def _apply_event(session: Session, gateway: PaymentGateway, event: WebhookEvent) -> str:
    if event.type.startswith("payment_intent."):
        return _reconcile_intent(session, gateway, event.data)
    if event.type in REFUND_EVENTS:
        return _reconcile_refunds(session, gateway, event.data)
    if event.type in DISPUTE_EVENTS:
        return _reconcile_dispute(session, gateway, event.data)
    if event.type == "setup_intent.succeeded":
        return _setup_succeeded(session, gateway, event.data)
    return "ignored"


def _delivered_before(session: Session, event: WebhookEvent) -> bool:
    return (
        session.exec(
            select(WebhookEventRow.id).where(
                WebhookEventRow.source == "stripe", WebhookEventRow.event_id == event.id[:80]
            )
        ).first()
        is not None
    )


def _first_delivery(session: Session, event: WebhookEvent) -> bool:
    """Record the event id in the transaction that applies it; False if it is recorded already.

    A plain INSERT that skips a duplicate, not a savepoint: on SQLite a savepoint that opens
    the transaction commits when released, which kept the id of an event whose handling then
    failed, and Stripe's redelivery found it "duplicate".
    """
    statement = _insert_ignoring_duplicates(session, WebhookEventRow, ["source", "event_id"])
    values = {"source": "stripe", "event_id": event.id[:80], "event_type": event.type[:64]}
    return _inserted_id(session, statement.values(**values, received_at=utcnow())) is not None


def _payment_for_intent(session: Session, intent: Mapping[str, Any]) -> Payment | None:
    """Our payment for a processor PaymentIntent: by its metadata, else by its id."""
    intent_id = intent.get("id")
    reference = str((intent.get("metadata") or {}).get("payment_id") or "")
    payment = session.get(Payment, int(reference)) if reference.isdigit() else None
    if payment is not None and payment.processor_payment_id in (None, intent_id):
        return payment
    if not intent_id:
        return None
    return session.exec(select(Payment).where(Payment.processor_payment_id == intent_id)).first()


def _reconcile_intent(session: Session, gateway: PaymentGateway, intent: Mapping[str, Any]) -> str:
    payment = _payment_for_intent(session, intent)
    if payment is None:
        return "ignored"
    try:
        result = gateway.retrieve_payment(intent_id=intent["id"])
    except PaymentNotFound:
        # The id only: the event's copy of the intent carries its client secret.
        log.warning(
            "webhook names payment intent %s, which the processor does not know", intent.get("id")
        )
        return "ignored"
    return apply_charge_result(session=session, payment_id=payment.id, result=result)


def _reconcile_refunds(session: Session, gateway: PaymentGateway, charge: Mapping[str, Any]) -> str:
    """Bring a payment's refunds in line with the processor's; `charge` is a charge or a refund.

    Like payment events, refund events are settled against the processor's current list of
    the payment's refunds, not the event's copy: a refund goes back on the balance once it
    has succeeded, never while pending, and not at all if it failed. A dispute opened while a
    refund was pending does not stop it: the refund is its own money movement, and the
    dispute's amount at the processor already leaves out what the refund took.
    """
    intent_id = charge.get("payment_intent")
    if not intent_id:
        return "ignored"
    payment = session.exec(select(Payment).where(Payment.processor_payment_id == intent_id)).first()
    if payment is None:
        # The job may have died before it stored the intent id: settle the payment first.
        reference = str((charge.get("metadata") or {}).get("payment_id") or "")
        if not reference.isdigit() or session.get(Payment, int(reference)) is None:
            return "ignored"
        _reconcile_intent(session, gateway, {"id": intent_id, "metadata": charge["metadata"]})
        payment = session.get(Payment, int(reference), populate_existing=True)
    elif payment.status not in CAPTURED:
        _reconcile_intent(session, gateway, {"id": intent_id})
        session.refresh(payment)
    if payment.status not in CAPTURED:
        return "ignored"
    # Asked before the lock below: on SQLite it is the whole database's write lock.
    processor_refunds = gateway.list_refunds(intent_id=intent_id)
    # Two deliveries handled at once would each see refunds the other is recording as new,
    # and both credit them: the second waits here for the first.
    _lock(session, Payment, payment.id)
    unnamed = [
        r
        for r in _refunds(session, payment.id, RefundState.PENDING)
        if r.processor_refund_id is None
    ]
    for pending in unnamed:
        _finish_refund(session, gateway, payment, pending)
    if unnamed:  # rare (a refund job that died): the list asked above may not have them yet
        processor_refunds = gateway.list_refunds(intent_id=intent_id)
    pending = _refunds(session, payment.id, RefundState.PENDING)
    if any(r.processor_refund_id is None for r in pending):
        # Until the processor has named our refund, it would look like one made elsewhere.
        raise TransientPaymentError("a refund of ours is not yet known to the processor")
    known = {r.processor_refund_id: r for r in _refunds(session, payment.id)}
    changed = False
    for result in processor_refunds:
        refund = known.get(result.refund_id)
        if refund is None:
            # Refunded at the processor (its dashboard, say) without going through PayText.
            refund = _external_refund(session, payment, result)
            changed = True
        changed = _settle_refund(session, refund, result) is not None or changed
    return "refunds_updated" if changed else "refunds_up_to_date"


def _external_refund(session: Session, payment: Payment, result: RefundResult) -> Refund:
    """Record, as pending, a refund the processor made without PayText asking."""
    now = utcnow()
    session.execute(
        _insert_ignoring_duplicates(session, Refund, ["processor_refund_id"]).values(
            payment_id=payment.id,
            amount_cents=result.amount_cents,
            status=RefundState.PENDING,
            idempotency_key=f"paytext-external-{result.refund_id}"[:80],
            processor_refund_id=result.refund_id,
            balance_applied=False,
            created_at=now,
            updated_at=now,
        )
    )
    return session.exec(
        select(Refund)
        .where(Refund.processor_refund_id == result.refund_id)
        .execution_options(populate_existing=True)
    ).one()


def _reconcile_dispute(
    session: Session, gateway: PaymentGateway, dispute: Mapping[str, Any]
) -> str:
    """Follow a dispute (chargeback) on a payment as the processor has it now, whatever the event.

    While the bank has taken the money back the payment is disputed (or dispute_lost) and its
    amount is owed again; when the agency wins, it is succeeded again and off the balance once
    more. Staff see the status on the case page; the payer is not texted.
    """
    intent_id = dispute.get("payment_intent")
    if isinstance(intent_id, Mapping):
        intent_id = intent_id.get("id")
    payment = None
    if intent_id:
        payment = session.exec(
            select(Payment).where(Payment.processor_payment_id == intent_id)
        ).first()
    if payment is None and dispute.get("charge"):
        payment = session.exec(
            select(Payment).where(Payment.processor_charge_id == dispute["charge"])
        ).first()
    if payment is None and intent_id:
        # A charge request that timed out and was reported failed, then landed: PayText never
        # learnt the intent's id, which its metadata ties to our payment. Settle that first.
        try:
            reference = gateway.retrieve_payment(intent_id=intent_id).payment_id or ""
        except PaymentNotFound:
            reference = ""
        if reference.isdigit() and session.get(Payment, int(reference)) is not None:
            _reconcile_intent(
                session, gateway, {"id": intent_id, "metadata": {"payment_id": reference}}
            )
            payment = session.exec(
                select(Payment).where(Payment.processor_payment_id == intent_id)
            ).first()
    if payment is None:
        return "ignored"
    if payment.status in (*IN_FLIGHT, *GAVE_UP) and payment.processor_payment_id:
        # The job may have died before it recorded the charge, or the charge went through
        # after it was reported failed and its event is still to come: settle the payment first.
        _reconcile_intent(session, gateway, {"id": payment.processor_payment_id})
    try:
        result = gateway.retrieve_dispute(dispute_id=dispute["id"])
    except PaymentNotFound:
        log.warning("webhook names dispute %s, which the processor does not know", dispute["id"])
        return "ignored"
    _lock(session, Payment, payment.id)
    payment = session.get(Payment, payment.id, populate_existing=True)
    if result.funds_withdrawn:
        lost = result.status == "lost"
        return _dispute_withdrawn(session, payment, result, lost=lost)
    if result.status == "won":
        return _dispute_won(session, payment)
    return "unchanged"  # an inquiry (warning_*): no money moved


def _dispute_withdrawn(
    session: Session, payment: Payment, result: DisputeResult, *, lost: bool
) -> str:
    now = utcnow()
    status = PaymentStatus.DISPUTE_LOST if lost else PaymentStatus.DISPUTED
    # What Stripe took back, whatever was refunded before: a bank may dispute a charge in full
    # after a refund, and Stripe's amount already leaves out refunds it knows of. Taking our own
    # refunds off again would depend on which webhook came first.
    amount = min(result.amount_cents, payment.amount_cents)
    opened = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment.id, Payment.status == PaymentStatus.SUCCEEDED)
        .values(status=status, disputed_cents=amount, updated_at=now),
    )
    if opened:
        _update(
            session,
            sa.update(Case)
            .where(Case.id == payment.case_id)
            .values(balance_cents=Case.balance_cents + amount, updated_at=now),
        )
        log.warning(
            "payment %s disputed (%s, %s): %s cents owed again",
            payment.id,
            result.dispute_id,
            result.status,
            amount,
        )
        return str(status)
    if not lost:
        return "unchanged"
    moved = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment.id, Payment.status == PaymentStatus.DISPUTED)
        .values(status=status, updated_at=now),
    )
    return str(status) if moved else "unchanged"


def _dispute_won(session: Session, payment: Payment) -> str:
    now = utcnow()
    won = _update(
        session,
        sa.update(Payment)
        .where(Payment.id == payment.id)
        .where(Payment.status.in_((PaymentStatus.DISPUTED, PaymentStatus.DISPUTE_LOST)))
        .values(status=PaymentStatus.SUCCEEDED, disputed_cents=0, updated_at=now),
    )
    if not won:
        return "unchanged"
    # `payment` was read under the lock: disputed_cents is what the dispute put back.
    _update(
        session,
        sa.update(Case)
        .where(Case.id == payment.case_id)
        .values(balance_cents=Case.balance_cents - payment.disputed_cents, updated_at=now),
    )
    log.warning("payment %s: dispute won, %s cents paid again", payment.id, payment.disputed_cents)
    return "dispute_won"


def _setup_succeeded(session: Session, gateway: PaymentGateway, setup: Mapping[str, Any]) -> str:
    case_number = (setup.get("metadata") or {}).get("case_number")
    case = session.exec(select(Case).where(Case.case_number == case_number)).first()
    if case is None or case.processor_customer_id != setup.get("customer"):
        log.warning("setup intent %s names no case of ours", setup.get("id"))
        return "ignored"
    save_card_from_setup(session=session, gateway=gateway, case_id=case.id, setup_id=setup["id"])
    return "card_saved"


# -- cards ------------------------------------------------------------------------------------


def card_setup_for_link(
    *, session: Session, gateway: PaymentGateway, case_id: int, nonce: str
) -> CardSetup:
    """The card setup behind one card link: the same one however often the page is opened."""
    case = session.get(Case, case_id)
    customer_id = cards.ensure_customer(session=session, gateway=gateway, case=case)
    return gateway.create_card_setup(
        customer_id=customer_id,
        case_number=case.case_number,
        idempotency_key=f"paytext-setup-{case.case_number}-{nonce}",
    )


def save_card_from_setup(
    *, session: Session, gateway: PaymentGateway, case_id: int, setup_id: str
) -> CardOnFile:
    """Keep the card a finished setup saved as the case's card; text the payer the first time.

    The card page and the setup_intent.succeeded webhook both call this; the case row lock
    makes the second one find the card already stored. The caller commits; the text goes then.
    """
    saved = gateway.card_from_setup(setup_id=setup_id)
    _lock(session, Case, case_id)
    case = session.get(Case, case_id, populate_existing=True)
    known = session.exec(
        select(CardOnFile).where(
            CardOnFile.case_id == case_id,
            CardOnFile.payment_method_id == saved.payment_method_id,
        )
    ).first()
    if known is not None:
        return known
    customer_id = cards.ensure_customer(session=session, gateway=gateway, case=case)
    stored = cards.store_card(
        session=session, case=case, customer_id=customer_id, card=saved, processor=gateway.name
    )
    contact = payer_contact(session=session, case=case)
    if contact is not None:
        body = render_reply(_reply("card_saved", last4=stored.last4), contact.language)
        queue_text(
            session=session,
            phone=contact.phone,
            body=body,
            case_id=case.id,
            enrollment_id=contact.enrollment_id,
            intent="card_saved",
        )
    return stored


# -- refunds ----------------------------------------------------------------------------------


def refund_payment(
    *,
    session: Session,
    payment_id: int,
    amount_cents: int | None,
    admin_user_id: int | None,
    idempotency_key: str | None = None,
) -> Refund:
    """Refund part of a payment, or all that is left (amount_cents None); staff only.

    Idempotent: a refund already under way on the payment (a double-click, a crash after the
    processor answered) is finished rather than repeated, and passing the same idempotency_key
    (say, a nonce in the admin form) returns the same refund. The balance goes back up once
    and the payer gets a text. Commits: the pending refund is saved before the processor is
    asked, so a crash leaves a record that the next attempt or the webhook finishes.
    Returns the Refund (status pending if the processor could not be reached, or has not
    finished it: the next attempt or the refund webhooks finish it; the balance goes back up
    only once it succeeded); raises RefundRefused when it cannot be made.
    """
    gateway = _gateway()
    _lock(session, Payment, payment_id)
    payment = session.get(Payment, payment_id, populate_existing=True)
    if payment is None:
        raise RefundRefused("There is no such payment.", code="not_found")
    refund = None
    if idempotency_key:
        refund = session.exec(
            select(Refund).where(Refund.idempotency_key == idempotency_key)
        ).first()
        if refund is not None and refund.payment_id != payment_id:
            raise RefundRefused("That refund belongs to another payment.", code="key_reused")
    if refund is None:
        # One the processor has not named yet may have been made: finish it, never repeat it.
        pending = _refunds(session, payment_id, RefundState.PENDING)
        refund = next((r for r in pending if r.processor_refund_id is None), None)
    if refund is None:
        refund = _new_refund(session, payment, amount_cents, admin_user_id, idempotency_key)
    session.commit()
    problem = None
    if refund.status == RefundState.PENDING:
        problem = _finish_refund(session, gateway, payment, refund)
        session.commit()
    session.refresh(refund)
    if refund.status == RefundState.FAILED:
        reason = problem or "it was refused earlier"
        raise RefundRefused(f"The processor refused the refund: {reason}", code="refused")
    return refund


def _new_refund(
    session: Session,
    payment: Payment,
    amount_cents: int | None,
    admin_user_id: int | None,
    idempotency_key: str | None,
) -> Refund:
    if payment.status != PaymentStatus.SUCCEEDED or not payment.processor_payment_id:
        raise RefundRefused("Only a payment that went through can be refunded.", code="not_paid")
    existing = _refunds(session, payment.id)
    taken = sum(r.amount_cents for r in existing if r.status != RefundState.FAILED)
    left = payment.amount_cents - taken
    if left <= 0:
        raise RefundRefused("This payment is already fully refunded.", code="nothing_left")
    amount = left if amount_cents is None else amount_cents
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise RefundRefused("The refund amount must be more than $0.00.", code="invalid_amount")
    if amount > left:
        raise RefundRefused(
            f"Only {format_cents(left)} of this payment is left to refund.", code="too_much"
        )
    now = utcnow()
    refund = Refund(
        payment_id=payment.id,
        amount_cents=amount,
        status=RefundState.PENDING,
        idempotency_key=idempotency_key or f"paytext-refund-{payment.id}-{len(existing) + 1}",
        admin_user_id=admin_user_id,
        created_at=now,
        updated_at=now,
    )
    session.add(refund)
    session.flush()
    return refund


def _finish_refund(
    session: Session, gateway: PaymentGateway, payment: Payment, refund: Refund
) -> str | None:
    """Ask the processor for a pending refund (again: its idempotency key makes that safe).

    Returns the processor's reason when it refused the refund, else None. A refund the
    processor accepted but has not finished stays pending; the refund webhooks settle it.
    """
    try:
        result: RefundResult = gateway.refund(
            intent_id=payment.processor_payment_id,
            amount_cents=refund.amount_cents,
            idempotency_key=refund.idempotency_key,
        )
    except TransientPaymentError as exc:
        log.warning("refund %s stays pending: %s", refund.id, exc)
        return None
    except PaymentError as exc:
        log.warning("refund %s refused by the processor: %s (%s)", refund.id, exc, exc.code)
        _update(
            session,
            sa.update(Refund)
            .where(Refund.id == refund.id, Refund.status == RefundState.PENDING)
            .values(status=RefundState.FAILED, updated_at=utcnow()),
        )
        return str(exc)
    return _settle_refund(session, refund, result)


def _settle_refund(session: Session, refund: Refund, result: RefundResult) -> str | None:
    """Apply where the processor says a refund stands; returns what changed, for logs.

    Only a succeeded refund goes back on the balance (and is texted to the payer); a failed
    or canceled one never does, and one that failed after succeeding is taken off again.
    """
    if result.status == RefundStatus.SUCCEEDED:
        won = _refund_issued(session, refund.id, processor_refund_id=result.refund_id)
        return "succeeded" if won else None
    if result.status in (RefundStatus.FAILED, RefundStatus.CANCELED):
        return _refund_failed(session, refund.id, processor_refund_id=result.refund_id)
    # pending or requires_action: the processor has it; its refund events will say how it ends.
    _update(
        session,
        sa.update(Refund)
        .where(Refund.id == refund.id, Refund.processor_refund_id.is_(None))
        .values(processor_refund_id=result.refund_id, updated_at=utcnow()),
    )
    return None


def _refund_failed(session: Session, refund_id: int, *, processor_refund_id: str) -> str | None:
    """Mark a refund failed, once; if it had gone back on the balance, take it off again."""
    now = utcnow()
    failed = _update(
        session,
        sa.update(Refund)
        .where(Refund.id == refund_id, Refund.status != RefundState.FAILED)
        .values(status=RefundState.FAILED, processor_refund_id=processor_refund_id, updated_at=now),
    )
    if not failed:
        return None
    reversed_ = _update(
        session,
        sa.update(Refund)
        .where(Refund.id == refund_id, Refund.balance_applied.is_(True))
        .values(balance_applied=False),
    )
    refund = session.get(Refund, refund_id, populate_existing=True)
    if reversed_:
        # The money never reached the payer: what they owe goes back up.
        _update(
            session,
            sa.update(Payment)
            .where(Payment.id == refund.payment_id)
            .values(refunded_cents=Payment.refunded_cents - refund.amount_cents, updated_at=now),
        )
        payment = session.get(Payment, refund.payment_id, populate_existing=True)
        _update(
            session,
            sa.update(Case)
            .where(Case.id == payment.case_id)
            .values(balance_cents=Case.balance_cents - refund.amount_cents, updated_at=now),
        )
        log.error(
            "refund %s (%s) failed after it was credited: balance of payment %s's case"
            " lowered again by %s cents; the payer was told it was refunded",
            refund_id,
            processor_refund_id,
            refund.payment_id,
            refund.amount_cents,
        )
    return "failed"


def _refund_issued(session: Session, refund_id: int, *, processor_refund_id: str) -> bool:
    """Put a refund that succeeded back on the balance and text the payer, once."""
    now = utcnow()
    won = _update(
        session,
        sa.update(Refund)
        .where(Refund.id == refund_id, Refund.balance_applied.is_(False))
        .where(Refund.status != RefundState.FAILED)
        .values(
            status=RefundState.SUCCEEDED,
            balance_applied=True,
            processor_refund_id=processor_refund_id,
            updated_at=now,
        ),
    )
    if not won:
        return False
    refund = session.get(Refund, refund_id, populate_existing=True)
    _update(
        session,
        sa.update(Payment)
        .where(Payment.id == refund.payment_id)
        .values(refunded_cents=Payment.refunded_cents + refund.amount_cents, updated_at=now),
    )
    payment = session.get(Payment, refund.payment_id, populate_existing=True)
    _update(
        session,
        sa.update(Case)
        .where(Case.id == payment.case_id)
        .values(balance_cents=Case.balance_cents + refund.amount_cents, updated_at=now),
    )
    case = session.get(Case, payment.case_id, populate_existing=True)
    _notify(
        session,
        payment,
        "refund",
        "refund",
        amount=refund.amount_cents,
        last4=_card_last4(session, payment, None),
        balance=case.balance_cents,
    )
    return True


def _refunds(session: Session, payment_id: int, status: str | None = None) -> list[Refund]:
    query = select(Refund).where(Refund.payment_id == payment_id).order_by(Refund.id)
    if status is not None:
        query = query.where(Refund.status == status)
    return list(session.exec(query).all())


# -- texting the payer ------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    """Where and in which language to text a case's payer."""

    phone: str
    enrollment_id: int | None
    language: str


def payer_contact(
    *, session: Session, case: Case, preferred_phone: str | None = None
) -> Contact | None:
    """The phone to text about a case: the one that confirmed, else an active enrollment."""
    enrollments = session.exec(
        select(Enrollment)
        .where(Enrollment.case_id == case.id, Enrollment.status == EnrollmentStatus.ACTIVE)
        .order_by(Enrollment.id)
    ).all()
    if not enrollments:
        return None
    chosen = next((e for e in enrollments if e.phone == preferred_phone), enrollments[0])
    if not may_text(session=session, phone=chosen.phone):
        return None
    conversation = session.exec(
        select(Conversation).where(Conversation.phone == chosen.phone)
    ).first()
    # The conversation holds the language the payer last chose (ESPAÑOL / ENGLISH).
    language = conversation.language if conversation and conversation.state else chosen.language
    return Contact(chosen.phone, chosen.id, str(language or case.language))


def _notify(session: Session, payment: Payment, key: str, intent: str, **params: Any) -> None:
    """Text the payer about a payment in their language, once the caller's transaction commits.

    The text is recorded as a turn on the case with the outcome it reports and goes only after
    both are committed (bot.outbound.queue_text), so redoing the work after a crash cannot
    send it twice.
    """
    case = session.get(Case, payment.case_id)
    preferred = None
    if payment.authorized_turn_id:
        turn = session.get(ConversationTurn, payment.authorized_turn_id)
        preferred = turn.phone if turn else None
    contact = payer_contact(session=session, case=case, preferred_phone=preferred)
    if contact is None:
        log.info("payment %s: no phone may be texted about %s", payment.id, key)
        return
    # Dates are the payer's local ones, as in their reminders and replies.
    zone = resolve_timezone(
        case_tz=case.timezone, phone=contact.phone, default=current_app.config["DEFAULT_TIMEZONE"]
    )
    queue_text(
        session=session,
        phone=contact.phone,
        body=render_reply(_reply(key, tz=zone.key, **params), contact.language),
        case_id=case.id,
        enrollment_id=contact.enrollment_id,
        payment_id=payment.id,
        intent=intent,
    )


def _reply(key: str, **params: Any) -> Reply:
    config = current_app.config
    return Reply(
        key, {"agency": config["AGENCY_NAME"], "agency_phone": config["AGENCY_PHONE"], **params}
    )


# -- helpers ----------------------------------------------------------------------------------


def _gateway() -> PaymentGateway:
    return current_app.extensions["payments"]


def _update(session: Session, statement: Any) -> int:
    """Run an UPDATE and return how many rows it changed (the ORM identity map is not synced)."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount


def _insert_ignoring_duplicates(session: Session, model: type, unique: list[str]) -> Any:
    """An INSERT that does nothing when a row with the same unique columns exists already."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(model.__table__).on_conflict_do_nothing(index_elements=unique)


def _inserted_id(session: Session, statement: Any) -> int | None:
    """Run an INSERT built by _insert_ignoring_duplicates: the new row's id, None if it existed.

    Asked with RETURNING: PostgreSQL's row count for an INSERT that returns rows reads -1.
    """
    table = statement.table
    return session.execute(statement.returning(table.c.id)).scalar_one_or_none()


def _lock(session: Session, model: type, row_id: int) -> None:
    """Lock a row until commit (no-op UPDATE): row lock on PostgreSQL, its write lock on SQLite."""
    _update(session, sa.update(model).where(model.id == row_id).values(updated_at=model.updated_at))


def _payment_by_key(session: Session, key: str) -> Payment | None:
    return session.exec(
        select(Payment)
        .where(Payment.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).first()


def _in_flight_cents(session: Session, case_id: int) -> int:
    total = session.exec(
        select(sa.func.coalesce(sa.func.sum(Payment.amount_cents), 0))
        .where(Payment.case_id == case_id)
        .where(Payment.status.in_(IN_FLIGHT))
        .where(Payment.balance_applied.is_(False))
    ).one()
    return int(total)


def _card_last4(session: Session, payment: Payment, result: ChargeResult | None) -> str:
    card = session.get(CardOnFile, payment.card_id) if payment.card_id else None
    if card is not None:
        return card.last4
    return (result.card_last4 if result else None) or "----"


def case_last4(case: Case) -> str:
    """The last 4 digits of the case number, which is how payers know their case."""
    return case_ending(case.case_number)
