"""Billing's RQ jobs: charge a confirmed payment, and pick up payments whose job was lost.

charge_payment is safe to run twice, to be killed at any point and run again, and to run
after Redis lost its queue: it asks the processor for a charge already made for the payment
before making one, and the processor's idempotency key covers a charge still in flight.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

from flask import current_app
from rq import Retry, get_current_job

from billing import service
from billing.gateway import PaymentError, TransientPaymentError
from bot import outbound
from db import session_scope
from jobs.context import job
from models import utcnow

log = logging.getLogger(__name__)

RETRY_INTERVALS = (15, 60, 300)
"""Seconds before each retry after a rate limit or processor outage: backoff over ~6 minutes."""

MAX_ATTEMPTS = len(RETRY_INTERVALS) + 1
"""Attempts at a charge before the payer is told it did not go through."""

CHARGE_TIMEOUT_SECONDS = 60
"""RQ kills a charge job running longer than this; RQ and resume_payments then retry it."""

CRASH_AFTER_CHARGE_ENV = "PAYTEXT_TEST_CRASH_AFTER_CHARGE"
"""Test hook: a worker whose environment names a payment id here dies like a killed process
right after the processor answered for that payment, before the outcome is committed
(tests/test_billing_worker.py). Unset everywhere else."""


def charge_job_id(payment_id: int) -> str:
    """The RQ job id of a payment's charge, so it is queued once."""
    return f"charge-payment-{payment_id}"


def charge_retry() -> Retry:
    """RQ's retry policy for the charge job."""
    return Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS))


@job
def charge_payment(payment_id: int) -> str:
    """Charge a confirmed payment once and text the payer the outcome."""
    with session_scope() as session:
        request = service.begin_charge(session=session, payment_id=payment_id)
    if request is None:
        return "nothing to do"
    gateway = current_app.extensions["payments"]
    try:
        result = service.charge(gateway, request)
    except TransientPaymentError as exc:
        if request.attempt < MAX_ATTEMPTS and _rq_will_retry():
            log.warning("payment %s attempt %s: %s; will retry", payment_id, request.attempt, exc)
            raise
        return _give_up(
            payment_id, code=exc.code or "processor_unavailable", message=str(exc), refused=False
        )
    except PaymentError as exc:
        log.error("payment %s cannot be charged: %s (%s)", payment_id, exc, exc.code)
        # Refused outright on the first attempt: no request of ours can have charged the card.
        return _give_up(
            payment_id,
            code=exc.code or type(exc).__name__,
            message=str(exc),
            refused=request.attempt == 1,
        )
    _crash_if_testing(payment_id)
    with session_scope() as session:
        outcome = service.apply_charge_result(session=session, payment_id=payment_id, result=result)
    log.info("payment %s: %s (%s)", payment_id, outcome, result.intent_id)
    return outcome


@job
def resume_payments(stale_after_seconds: int | None = None) -> int:
    """Queue the charge again for payments whose job was lost; returns how many were queued.

    Also cancels payments whose bank approval window closed, and sends the payment texts a
    crash left unsent after their transaction committed.
    """
    expire_approvals()
    outbound.send_left_behind()
    stale_after = (
        service.STALE_AFTER
        if stale_after_seconds is None
        else timedelta(seconds=stale_after_seconds)
    )
    queue = current_app.extensions["queues"]["payments"]
    with session_scope() as session:
        ids = service.unfinished_payment_ids(session=session, idle_since=utcnow() - stale_after)
    resumed = 0
    for payment_id in ids:
        existing = queue.fetch_job(charge_job_id(payment_id))
        if existing is not None and existing.get_status() in ("queued", "scheduled", "deferred"):
            continue
        if existing is not None:
            # A job left "started" by a dead worker, or finished/failed: replace it.
            existing.delete()
        service.enqueue_charge(payment_id=payment_id)
        resumed += 1
    if resumed:
        log.warning("resumed %s payment(s) whose charge job was lost", resumed)
    return resumed


def expire_approvals() -> int:
    """Cancel payments the payer's bank still holds after the approval window; how many ended.

    The cancel carries an idempotency key; a payer who approved first gets the receipt
    instead, and a cancel Stripe cannot take now is tried again at the next sweep.
    """
    gateway = current_app.extensions["payments"]
    with session_scope() as session:
        ids = service.expired_approval_ids(session=session, now=utcnow())
    ended = 0
    for payment_id in ids:
        with session_scope() as session:
            intent_id = service.begin_expiry(session=session, payment_id=payment_id, now=utcnow())
        if intent_id is None:
            continue
        try:
            result = gateway.cancel_payment(
                intent_id=intent_id, idempotency_key=service.cancel_idempotency_key(payment_id)
            )
        except PaymentError as exc:
            log.warning(
                "payment %s: approval window closed but the cancel failed: %s (%s)",
                payment_id,
                exc,
                exc.code,
            )
            continue
        with session_scope() as session:
            outcome = service.apply_charge_result(
                session=session, payment_id=payment_id, result=result
            )
        log.info("payment %s: approval window closed: %s", payment_id, outcome)
        ended += outcome in ("canceled", "succeeded", "declined")
    return ended


def _give_up(payment_id: int, *, code: str, message: str, refused: bool) -> str:
    """After the last attempt: settle on what the processor has, else tell the payer it failed.

    "Nothing was charged" is said only when the processor confirms it has no charge for the
    payment, or refused the only request ever sent (`refused`). When it cannot be asked, the
    payment stays processing: resume_payments queues it again and the webhook may settle it.
    """
    with session_scope() as session:
        request = service.charge_request(session=session, payment_id=payment_id)
    found = None
    if request is not None:
        try:
            found = current_app.extensions["payments"].find_payment(
                customer_id=request.customer_id, payment_id=str(payment_id)
            )
        except PaymentError as exc:
            if not refused:
                log.error(
                    "payment %s: gave up charging (%s) and could not ask the processor whether"
                    " it was charged (%s); left processing for resume_payments or the webhook",
                    payment_id,
                    code,
                    exc.code or type(exc).__name__,
                )
                return "unconfirmed"
    with session_scope() as session:
        # A request that timed out may still have charged: never say "nothing was charged"
        # while the processor shows a charge.
        if found is not None:
            return service.apply_charge_result(session=session, payment_id=payment_id, result=found)
        failed = service.fail_payment(
            session=session, payment_id=payment_id, code=code, message=message
        )
    return "failed" if failed else "unchanged"


def _rq_will_retry() -> bool:
    """True when RQ will run this job again (a worker with retries left; never inline)."""
    current = get_current_job()
    return (
        current is not None
        and bool(current_app.config["RQ_ASYNC"])
        and (current.retries_left or 0) > 0
    )


def _crash_if_testing(payment_id: int) -> None:
    if os.environ.get(CRASH_AFTER_CHARGE_ENV) == str(payment_id):
        log.warning("test hook: dying after the processor answered for payment %s", payment_id)
        os._exit(70)
