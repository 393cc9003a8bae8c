"""Billing through the real stripe SDK against the local Stripe fake: charges, retries, webhook."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
import stripe
from rq import SimpleWorker
from sqlmodel import select

from billing import links, service
from billing.gateway import TransientPaymentError
from billing.jobs import (
    MAX_ATTEMPTS,
    RETRY_INTERVALS,
    charge_job_id,
    charge_payment,
    resume_payments,
)
from models import CardOnFile, Case, Payment, PaymentStatus, Refund
from models import WebhookEvent as WebhookEventRow
from tests.admin_helpers import signed_in
from tests.billing_helpers import (
    AUTHENTICATION,
    INSUFFICIENT,
    WEBHOOK_SECRET,
    add_card,
    after_approval_window,
    confirmed_payment,
    csrf_field,
    path_of,
    payment,
    received,
    reload,
    stripe_config,
    texts,
)
from tests.factories import make_case, make_enrollment
from tests.fakes.stripe_api import FakeStripe


@pytest.fixture
def fake():
    with FakeStripe() as running:
        yield running


@pytest.fixture
def config(config, fake):
    return stripe_config(config, fake)


@pytest.fixture
def payer(app, session):
    case = make_case(session)
    make_enrollment(session, case)
    return case, add_card(app, session, case)


def charge_now(app, session, case, card, amount=25_000):
    created = confirmed_payment(app, session, case, card, amount)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    return payment(session, created.id)


def post_event(app, fake, event_type, obj, *, secret=WEBHOOK_SECRET, age=0):
    payload, header = fake.signed_event(event_type, obj, secret, int(time.time()) - age)
    response = app.test_client().post(
        "/stripe/webhook",
        data=payload,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
    return response, payload, header


def browser(app) -> stripe.StripeClient:
    """What the payer's browser (Stripe.js) or the Stripe dashboard does, through the SDK."""
    return stripe.StripeClient(
        app.config["STRIPE_SECRET_KEY"], base_addresses={"api": app.config["STRIPE_API_BASE_URL"]}
    )


# -- charging ---------------------------------------------------------------------------------


def test_a_charge_is_one_confirmed_off_session_payment_intent_carrying_the_payment(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)

    assert paid.status == PaymentStatus.SUCCEEDED
    assert fake.payment_intents_created == 1 and fake.charges_created == 1
    intent = fake.get(paid.processor_payment_id)
    assert (intent["amount"], intent["currency"], intent["status"]) == (25_000, "usd", "succeeded")
    assert (intent["customer"], intent["payment_method"]) == (
        card.customer_id,
        card.payment_method_id,
    )
    assert intent["metadata"] == {"case_number": case.case_number, "payment_id": str(paid.id)}
    assert paid.processor_charge_id == intent["latest_charge"]
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert len(texts(session, intent="receipt")) == 1


def test_a_job_rerun_after_stripe_answered_finds_the_charge_instead_of_charging_again(
    app, session, fake, payer
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        # The first run got as far as Stripe and died before recording anything.
        request = service.charge_request(session=session, payment_id=created.id)
        service.charge(app.extensions["payments"], request)
        service.enqueue_charge(payment_id=created.id)
    assert fake.payment_intents_created == 1
    assert payment(session, created.id).status == PaymentStatus.SUCCEEDED
    assert len(texts(session, intent="receipt")) == 1


def test_stripe_keeps_the_payments_idempotency_key_so_a_retried_request_charges_once(
    app, session, fake, payer
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    gateway = app.extensions["payments"]
    with app.app_context():
        request = service.charge_request(session=session, payment_id=created.id)
    first = gateway.charge(
        customer_id=request.customer_id,
        payment_method_id=request.payment_method_id,
        amount_cents=request.amount_cents,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
    )
    replay = gateway.charge(
        customer_id=request.customer_id,
        payment_method_id=request.payment_method_id,
        amount_cents=request.amount_cents,
        idempotency_key=request.idempotency_key,
        metadata=request.metadata,
    )
    assert request.idempotency_key == created.idempotency_key
    assert replay.intent_id == first.intent_id and fake.payment_intents_created == 1


def test_a_stripe_decline_reaches_the_payer_in_plain_words_with_a_card_link(app, session, fake):
    case = make_case(session, language="es")
    make_enrollment(session, case)
    card = add_card(app, session, case, INSUFFICIENT)
    failed = charge_now(app, session, case, card)
    assert (failed.status, failed.failure_code) == (PaymentStatus.FAILED, "insufficient_funds")
    [declined] = texts(session, intent="declined")
    assert "La tarjeta no tiene fondos suficientes." in declined.body
    assert "http://paytext.test/pay/card/" in declined.body
    assert reload(session, Case, case.id).balance_cents == 100_000


def test_authentication_is_finished_on_a_stripe_js_page_with_the_client_secret(app, session, fake):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    assert held.status == PaymentStatus.REQUIRES_ACTION
    intent = fake.get(held.processor_payment_id)
    [asked] = texts(session, intent="auth_required")
    path = path_of(received(app, asked).split("finish: ", 1)[1].split(" ", 1)[0])

    client = app.test_client()
    page = client.get(path)
    assert page.status_code == 200
    assert '<script src="https://js.stripe.com/v3/"' in page.text
    assert intent["client_secret"] in page.text and card.payment_method_id in page.text
    assert "js.stripe.com" in page.headers["Content-Security-Policy"]

    fake.complete_authentication(held.processor_payment_id)  # what confirmCardPayment does
    done = client.post(path, data=csrf_field(page.text))
    assert "went through" in done.text
    assert payment(session, held.id).status == PaymentStatus.SUCCEEDED
    assert len(texts(session, intent="receipt")) == 1
    assert fake.payment_intents_created == 1


# -- retries ----------------------------------------------------------------------------------


@pytest.fixture
def queued(config):
    """Jobs go to Redis and a worker runs them, as in production."""
    config["RQ_ASYNC"] = True


def work(app):
    """Run the payments queue until it is empty, in this process."""
    queue = app.extensions["queues"]["payments"]
    with app.app_context():
        SimpleWorker([queue], connection=queue.connection).work(burst=True)


def retry_now(app):
    """Move retries waiting for their backoff into the queue (the RQ scheduler's job)."""
    registry = app.extensions["queues"]["payments"].scheduled_job_registry
    ids = registry.get_job_ids()
    for job_id in ids:
        registry.requeue(job_id)
    return ids


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_outages_are_retried_with_backoff_until_the_charge_goes_through(
    queued, app, session, fake, payer, status
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    fake.fail_next(status)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    before = time.time()
    work(app)

    waiting = payment(session, created.id)
    assert (waiting.status, waiting.attempts) == (PaymentStatus.PROCESSING, 1)
    assert texts(session, payment_id=created.id) == []
    registry = app.extensions["queues"]["payments"].scheduled_job_registry
    when = registry.get_scheduled_time(charge_job_id(created.id)).timestamp()
    assert before + RETRY_INTERVALS[0] - 2 <= when <= time.time() + RETRY_INTERVALS[0] + 2

    assert retry_now(app) == [charge_job_id(created.id)]
    work(app)
    paid = payment(session, created.id)
    assert (paid.status, paid.attempts) == (PaymentStatus.SUCCEEDED, 2)
    assert fake.payment_intents_created == 1
    assert len(texts(session, intent="receipt")) == 1


def test_after_the_last_retry_the_payer_is_told_nothing_was_charged(
    queued, app, session, fake, payer
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    fake.fail_next(503, times=MAX_ATTEMPTS)  # each attempt's look-up; the last check gets through
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    work(app)
    rounds = 1
    while retry_now(app):
        work(app)
        rounds += 1

    failed = payment(session, created.id)
    assert rounds == MAX_ATTEMPTS == failed.attempts
    assert failed.status == PaymentStatus.FAILED and failed.failure_code
    [told] = texts(session, intent="payment_failed")
    assert "did not go through, and nothing was charged" in told.body
    assert fake.payment_intents_created == 0
    assert reload(session, Case, case.id).balance_cents == 100_000


def test_when_stripe_cannot_say_whether_the_last_attempt_charged_the_payer_is_not_told_it_failed(
    app, session, fake, payer, monkeypatch, caplog
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    gateway = app.extensions["payments"]
    real_charge, real_find = gateway.charge, gateway.find_payment
    finds = []

    def charge_and_lose_the_answer(**kwargs):
        real_charge(**kwargs)  # Stripe charged the card...
        raise TransientPaymentError("Connection reset", code=None)  # ...the answer was lost

    def find_then_outage(**kwargs):
        finds.append(kwargs)
        if len(finds) == 1:
            return real_find(**kwargs)  # before charging: nothing yet
        raise TransientPaymentError("Stripe is unreachable", code=None)

    monkeypatch.setattr(gateway, "charge", charge_and_lose_the_answer)
    monkeypatch.setattr(gateway, "find_payment", find_then_outage)
    with app.app_context():  # inline: no retry left, as on the last attempt
        assert charge_payment(payment_id=created.id) == "unconfirmed"

    assert payment(session, created.id).status == PaymentStatus.PROCESSING
    assert texts(session, payment_id=created.id) == []
    assert "could not ask the processor whether it was charged" in caplog.text
    with app.app_context(), pytest.raises(service.PaymentRefused):
        confirmed_payment(app, session, case, card, 100_000)  # it still holds its $250
    session.rollback()

    [intent] = [i for i in fake._objects.values() if i["object"] == "payment_intent"]
    assert post_event(app, fake, "payment_intent.succeeded", intent)[0].json["outcome"] == (
        "succeeded"
    )
    assert payment(session, created.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert [t.intent for t in texts(session, payment_id=created.id)] == ["receipt"]


def test_a_charge_queued_twice_runs_once(queued, app, session, fake, payer):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
        service.enqueue_charge(payment_id=created.id)
    assert app.extensions["queues"]["payments"].count == 1
    work(app)
    assert fake.payment_intents_created == 1


# -- the webhook ------------------------------------------------------------------------------


def died_after_stripe_answered(app, session, case, card, amount=25_000):
    """A payment whose job charged at Stripe and died before recording the outcome."""
    created = confirmed_payment(app, session, case, card, amount)
    with app.app_context():
        request = service.begin_charge(session=session, payment_id=created.id)
        session.commit()
        result = service.charge(app.extensions["payments"], request)
    return created, result


def test_the_webhook_settles_a_payment_whose_job_died_after_stripe_answered(
    app, session, fake, payer
):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    assert payment(session, created.id).status == PaymentStatus.PROCESSING

    response, _, _ = post_event(app, fake, "payment_intent.succeeded", fake.get(result.intent_id))

    assert response.status_code == 200 and response.json["outcome"] == "succeeded"
    assert payment(session, created.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)  # the retried job now finds it settled
    assert len(texts(session, intent="receipt")) == 1
    assert fake.payment_intents_created == 1


def test_a_forged_signature_is_rejected_and_changes_nothing(app, session, fake, payer):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    response, _, _ = post_event(
        app, fake, "payment_intent.succeeded", fake.get(result.intent_id), secret="whsec_forged"
    )
    assert response.status_code == 400
    assert payment(session, created.id).status == PaymentStatus.PROCESSING
    assert session.exec(select(WebhookEventRow)).all() == []


def test_a_stale_signature_is_rejected_and_changes_nothing(app, session, fake, payer):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    response, _, _ = post_event(
        app, fake, "payment_intent.succeeded", fake.get(result.intent_id), age=301
    )
    assert response.status_code == 400
    assert payment(session, created.id).status == PaymentStatus.PROCESSING


def test_a_body_changed_after_signing_or_sent_unsigned_is_rejected(app, session, fake, payer):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    payload, header = fake.signed_event(
        "payment_intent.succeeded", fake.get(result.intent_id), WEBHOOK_SECRET
    )
    client = app.test_client()
    tampered = payload.replace(b'"livemode": false', b'"livemode": true')
    assert tampered != payload
    changed = client.post("/stripe/webhook", data=tampered, headers={"Stripe-Signature": header})
    assert changed.status_code == 400
    assert client.post("/stripe/webhook", data=payload).status_code == 400
    assert payment(session, created.id).status == PaymentStatus.PROCESSING


def test_a_replayed_event_changes_nothing(app, session, fake, payer):
    case, card = payer
    _, result = died_after_stripe_answered(app, session, case, card)
    first, payload, header = post_event(
        app, fake, "payment_intent.succeeded", fake.get(result.intent_id)
    )
    replay = app.test_client().post(
        "/stripe/webhook", data=payload, headers={"Stripe-Signature": header}
    )
    assert (first.json["outcome"], replay.json["outcome"]) == ("succeeded", "duplicate")
    assert len(session.exec(select(WebhookEventRow)).all()) == 1
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert len(texts(session, intent="receipt")) == 1


def test_an_event_that_failed_is_handled_when_stripe_delivers_it_again(app, session, fake, payer):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    fake.fail_next(500)  # Stripe's API blips while the webhook looks the intent up
    first, payload, header = post_event(
        app, fake, "payment_intent.succeeded", fake.get(result.intent_id)
    )
    assert first.status_code == 503
    assert session.exec(select(WebhookEventRow)).all() == []
    assert payment(session, created.id).status == PaymentStatus.PROCESSING

    again = app.test_client().post(
        "/stripe/webhook", data=payload, headers={"Stripe-Signature": header}
    )

    assert (again.status_code, again.json["outcome"]) == (200, "succeeded")
    assert payment(session, created.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert len(texts(session, intent="receipt")) == 1


@pytest.mark.parametrize("order", ["failed_first", "succeeded_first"])
def test_events_out_of_order_end_in_the_right_state(app, session, fake, order):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    failed_event = ("payment_intent.payment_failed", fake.get(held.processor_payment_id))
    succeeded_event = (
        "payment_intent.succeeded",
        fake.complete_authentication(held.processor_payment_id),
    )
    events = [failed_event, succeeded_event]
    if order == "succeeded_first":
        events.reverse()
    for event_type, obj in events:
        assert post_event(app, fake, event_type, obj)[0].status_code == 200

    assert payment(session, held.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert len(texts(session, intent="receipt")) == 1
    assert texts(session, intent="declined") == []


def test_a_refund_event_before_the_success_event_leaves_both_applied(app, session, fake, payer):
    case, card = payer
    created, result = died_after_stripe_answered(app, session, case, card)
    intent = fake.get(result.intent_id)
    browser(app).v1.refunds.create(params={"payment_intent": result.intent_id, "amount": 5_000})
    charge = fake.get(intent["latest_charge"])

    post_event(app, fake, "charge.refunded", charge)
    post_event(app, fake, "payment_intent.succeeded", intent)

    settled = payment(session, created.id)
    assert (settled.status, settled.refunded_cents) == (PaymentStatus.SUCCEEDED, 5_000)
    assert reload(session, Case, case.id).balance_cents == 100_000 - 25_000 + 5_000
    assert len(texts(session, intent="receipt")) == 1
    assert len(texts(session, intent="refund")) == 1


def test_a_refund_made_in_the_stripe_dashboard_goes_back_on_the_balance_once(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    browser(app).v1.refunds.create(params={"payment_intent": paid.processor_payment_id})
    charge = fake.get(paid.processor_charge_id)
    post_event(app, fake, "charge.refunded", charge)
    post_event(app, fake, "charge.refunded", charge)  # a second delivery with a new event id

    [refund] = session.exec(select(Refund)).all()
    assert (refund.amount_cents, refund.status, refund.admin_user_id) == (25_000, "succeeded", None)
    assert reload(session, Case, case.id).balance_cents == 100_000
    assert len(texts(session, intent="refund")) == 1


def test_two_refund_events_handled_at_once_credit_each_refund_once(
    app, session, fake, payer, monkeypatch
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    client = browser(app)
    client.v1.refunds.create(params={"payment_intent": paid.processor_payment_id, "amount": 10_000})
    after_first = fake.get(paid.processor_charge_id)
    client.v1.refunds.create(params={"payment_intent": paid.processor_payment_id, "amount": 5_000})
    after_second = fake.get(paid.processor_charge_id)

    # Hold whichever delivery reads the recorded refunds first until the other has read them
    # too, or until it is plainly waiting for the first to commit.
    other_read = threading.Event()
    readers = []
    real_refunds = service._refunds

    def refunds(session_, payment_id, status=None):
        rows = real_refunds(session_, payment_id, status)
        if status is None:
            readers.append(payment_id)
            if len(readers) == 1:
                other_read.wait(timeout=1)
            else:
                other_read.set()
        return rows

    monkeypatch.setattr(service, "_refunds", refunds)
    answers = []
    threads = [
        threading.Thread(
            target=lambda charge=charge: answers.append(
                post_event(app, fake, "charge.refunded", charge)[0].status_code
            )
        )
        for charge in (after_first, after_second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert answers == [200, 200]
    assert payment(session, paid.id).refunded_cents == 15_000
    assert sum(r.amount_cents for r in session.exec(select(Refund)).all()) == 15_000
    assert reload(session, Case, case.id).balance_cents == 75_000 + 15_000


def test_a_refund_through_paytext_and_its_webhook_put_the_balance_back_once(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    with app.app_context():
        made = service.refund_payment(
            session=session, payment_id=paid.id, amount_cents=10_000, admin_user_id=None
        )
    post_event(app, fake, "charge.refunded", fake.get(paid.processor_charge_id))
    assert fake.refunds_created == 1
    assert made.processor_refund_id.startswith("re_")
    assert reload(session, Case, case.id).balance_cents == 85_000
    assert len(session.exec(select(Refund)).all()) == 1
    assert len(texts(session, intent="refund")) == 1


def refund_through_paytext(app, session, payment_id, amount_cents):
    with app.app_context():
        return service.refund_payment(
            session=session, payment_id=payment_id, amount_cents=amount_cents, admin_user_id=None
        )


def test_a_refund_the_bank_has_not_finished_goes_on_the_balance_when_it_succeeds(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    fake.new_refund_status = "pending"
    made = refund_through_paytext(app, session, paid.id, 10_000)
    post_event(app, fake, "charge.refunded", fake.get(paid.processor_charge_id))

    assert (made.status, made.balance_applied) == ("pending", False)
    assert made.processor_refund_id.startswith("re_")
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert texts(session, intent="refund") == []

    succeeded = fake.settle_refund(made.processor_refund_id, "succeeded")
    for event_type in ("charge.refund.updated", "refund.updated"):
        assert post_event(app, fake, event_type, succeeded)[0].status_code == 200

    assert reload(session, Refund, made.id).status == "succeeded"
    assert payment(session, paid.id).refunded_cents == 10_000
    assert reload(session, Case, case.id).balance_cents == 85_000
    [told] = texts(session, intent="refund")
    assert "We refunded $100.00" in told.body


def test_a_refund_that_fails_is_never_credited_or_announced_and_can_be_made_again(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    fake.new_refund_status = "pending"
    made = refund_through_paytext(app, session, paid.id, 10_000)
    failed = fake.settle_refund(made.processor_refund_id, "failed")
    for event_type in ("refund.failed", "charge.refund.updated", "refund.updated"):
        assert post_event(app, fake, event_type, failed)[0].status_code == 200

    assert reload(session, Refund, made.id).status == "failed"
    assert payment(session, paid.id).refunded_cents == 0
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert texts(session, intent="refund") == []

    fake.new_refund_status = "succeeded"
    again = refund_through_paytext(app, session, paid.id, 25_000)
    assert again.status == "succeeded"
    assert reload(session, Case, case.id).balance_cents == 100_000
    assert len(texts(session, intent="refund")) == 1


def test_a_dashboard_refund_still_pending_is_credited_only_once_it_succeeds(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    fake.new_refund_status = "pending"
    there = browser(app).v1.refunds.create(
        params={"payment_intent": paid.processor_payment_id, "amount": 5_000}
    )
    post_event(app, fake, "charge.refunded", fake.get(paid.processor_charge_id))

    [recorded] = session.exec(select(Refund)).all()
    assert (recorded.status, recorded.processor_refund_id) == ("pending", there.id)
    assert reload(session, Case, case.id).balance_cents == 75_000

    post_event(app, fake, "refund.updated", fake.settle_refund(there.id, "succeeded"))
    post_event(app, fake, "charge.refunded", fake.get(paid.processor_charge_id))

    assert reload(session, Refund, recorded.id).status == "succeeded"
    assert reload(session, Case, case.id).balance_cents == 80_000
    assert len(texts(session, intent="refund")) == 1


def test_a_refund_that_fails_after_it_succeeded_comes_off_the_balance_again(
    app, session, fake, payer, caplog
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    made = refund_through_paytext(app, session, paid.id, 10_000)
    assert reload(session, Case, case.id).balance_cents == 85_000

    failed = fake.settle_refund(made.processor_refund_id, "failed")
    post_event(app, fake, "refund.failed", failed)
    post_event(app, fake, "charge.refund.updated", failed)

    assert reload(session, Refund, made.id).status == "failed"
    assert payment(session, paid.id).refunded_cents == 0
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert "failed after it was credited" in caplog.text


def test_a_dispute_puts_the_payment_back_on_the_balance_and_winning_it_takes_it_off_again(
    app, session, fake, payer
):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    opened = fake.dispute(paid.processor_charge_id)
    for event_type in ("charge.dispute.created", "charge.dispute.funds_withdrawn"):
        assert post_event(app, fake, event_type, opened)[0].status_code == 200

    disputed = payment(session, paid.id)
    assert (disputed.status, disputed.disputed_cents) == (PaymentStatus.DISPUTED, 25_000)
    assert reload(session, Case, case.id).balance_cents == 100_000

    won = fake.close_dispute(opened["id"], "won")
    for event_type in ("charge.dispute.closed", "charge.dispute.funds_reinstated"):
        assert post_event(app, fake, event_type, won)[0].status_code == 200

    assert payment(session, paid.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert [t.intent for t in texts(session, payment_id=paid.id)] == ["receipt"]


def test_a_lost_dispute_leaves_the_payment_owed_and_marked_for_staff(app, session, fake, payer):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    opened = fake.dispute(paid.processor_charge_id)
    post_event(app, fake, "charge.dispute.created", opened)
    lost = fake.close_dispute(opened["id"], "lost")
    post_event(app, fake, "charge.dispute.closed", lost)
    post_event(app, fake, "charge.dispute.closed", lost)  # redelivered with a new event id

    assert payment(session, paid.id).status == PaymentStatus.DISPUTE_LOST
    assert reload(session, Case, case.id).balance_cents == 100_000
    client = app.test_client()
    signed_in(client, session)
    page = client.get(f"/admin/cases/{case.id}")
    assert "dispute lost" in page.text


def test_dispute_events_out_of_order_follow_the_disputes_current_state(app, session, fake, payer):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    opened = fake.dispute(paid.processor_charge_id)
    won = fake.close_dispute(opened["id"], "won")
    post_event(app, fake, "charge.dispute.closed", won)
    post_event(app, fake, "charge.dispute.created", opened)  # arrives late

    assert payment(session, paid.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_an_inquiry_that_takes_no_money_changes_nothing(app, session, fake, payer):
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    inquiry = fake.dispute(paid.processor_charge_id, status="warning_needs_response")
    post_event(app, fake, "charge.dispute.created", inquiry)
    post_event(
        app, fake, "charge.dispute.closed", fake.close_dispute(inquiry["id"], "warning_closed")
    )

    assert payment(session, paid.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_setup_intent_succeeded_saves_the_card_and_texts_the_payer_once(app, session, fake):
    case = make_case(session)
    make_enrollment(session, case)
    with app.app_context():
        url = links.card_link_url(case_id=case.id)
    client = app.test_client()
    page = client.get(path_of(url))
    setup_id = _setup_id_from(page.text)
    browser(app).v1.setup_intents.confirm(setup_id, params={"payment_method": "pm_card_visa"})

    event = post_event(app, fake, "setup_intent.succeeded", fake.get(setup_id))[0]
    back = client.post(path_of(url), data=csrf_field(page.text))  # the browser comes back too

    assert event.json["outcome"] == "card_saved"
    assert back.status_code == 200 and "Visa card ending 4242 is saved" in back.text
    [card] = session.exec(select(CardOnFile)).all()
    assert (card.last4, card.brand, card.customer_id) == (
        "4242",
        "visa",
        fake.get(setup_id)["customer"],
    )
    assert len(texts(session, intent="card_saved")) == 1


def _setup_id_from(html: str) -> str:
    secret = html.split("confirmCardSetup(", 1)[1].split('"', 2)[1]
    return secret.split("_secret_", 1)[0]


def test_the_stripe_card_page_uses_an_off_session_setup_intent_on_the_cases_customer(
    app, session, fake
):
    case = make_case(session)
    with app.app_context():
        url = links.card_link_url(case_id=case.id)
    client = app.test_client()
    page = client.get(path_of(url))
    assert page.status_code == 200
    assert '<script src="https://js.stripe.com/v3/"' in page.text and "pk_test_fake" in page.text
    setup = fake.get(_setup_id_from(page.text))
    assert setup["usage"] == "off_session"
    assert setup["customer"] == reload(session, Case, case.id).processor_customer_id
    assert _setup_id_from(client.get(path_of(url)).text) == setup["id"]  # a reload reuses it


def test_saving_before_stripe_js_finished_says_so_and_keeps_the_link(app, session, fake):
    case = make_case(session)
    with app.app_context():
        url = links.card_link_url(case_id=case.id)
    client = app.test_client()
    page = client.get(path_of(url))
    early = client.post(path_of(url), data=csrf_field(page.text))
    assert early.status_code == 400 and "was not saved" in early.text
    browser(app).v1.setup_intents.confirm(
        _setup_id_from(page.text), params={"payment_method": "pm_card_mastercard"}
    )
    assert "ending 4444 is saved" in client.post(path_of(url), data=csrf_field(page.text)).text


def test_an_event_for_a_payment_intent_paytext_did_not_make_is_ignored(app, session, fake, payer):
    _, card = payer
    foreign = browser(app).v1.payment_intents.create(
        params={
            "amount": 1_000,
            "currency": "usd",
            "customer": card.customer_id,
            "payment_method": card.payment_method_id,
            "confirm": True,
            "off_session": True,
        },
        options={"idempotency_key": str(uuid.uuid4())},
    )
    response = post_event(app, fake, "payment_intent.succeeded", fake.get(foreign.id))[0]
    assert response.json["outcome"] == "ignored"
    assert session.exec(select(Payment)).all() == []


def test_an_expired_approval_cancels_the_payment_intent_once_with_an_idempotency_key(
    app, session, fake, monkeypatch
):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    after_approval_window(monkeypatch)
    with app.app_context():
        resume_payments()
        resume_payments()

    intent = fake.get(held.processor_payment_id)
    assert intent["status"] == "canceled"
    assert service.cancel_idempotency_key(held.id) in fake._idempotency
    assert payment(session, held.id).status == PaymentStatus.CANCELED
    response = post_event(app, fake, "payment_intent.canceled", intent)[0]
    assert response.json["outcome"] == "unchanged"
    assert len(texts(session, intent="approval_expired")) == 1
    assert texts(session, intent="payment_failed") == []
    assert reload(session, Case, case.id).balance_cents == 100_000


def test_a_payer_who_approved_as_the_window_closed_gets_the_receipt_not_a_cancel(
    app, session, fake, monkeypatch
):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    fake.complete_authentication(held.processor_payment_id)  # Stripe.js; no webhook yet
    after_approval_window(monkeypatch)
    with app.app_context():
        resume_payments()

    assert fake.get(held.processor_payment_id)["status"] == "succeeded"
    assert payment(session, held.id).status == PaymentStatus.SUCCEEDED
    assert len(texts(session, intent="receipt")) == 1
    assert texts(session, intent="approval_expired") == []
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_no_client_secret_is_logged(app, session, fake, caplog):
    caplog.set_level(logging.DEBUG)
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    [asked] = texts(session, intent="auth_required")
    approval = app.test_client().get(
        path_of(received(app, asked).split("finish: ", 1)[1].split(" ")[0])
    )
    assert fake.get(held.processor_payment_id)["client_secret"] in approval.text
    unknown = {
        "id": "pi_unknown",
        "object": "payment_intent",
        "amount": 25_000,
        "client_secret": "pi_unknown_secret_never_logged",
        "metadata": {"payment_id": str(confirmed_payment(app, session, case, card, 5_000).id)},
    }
    response = post_event(app, fake, "payment_intent.succeeded", unknown)[0]

    assert response.json["outcome"] == "ignored"
    assert "pi_unknown" in caplog.text  # the event was logged, by its id
    assert "_secret_" not in caplog.text
    assert "client_secret" not in caplog.text


def test_a_refused_api_key_fails_the_payment_at_once_and_tells_the_payer(
    queued, app, session, fake, payer
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    fake.secret_key = "sk_test_rotated"  # the key was revoked: retrying cannot help
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    work(app)
    failed = payment(session, created.id)
    assert (failed.status, failed.attempts) == (PaymentStatus.FAILED, 1)
    assert retry_now(app) == []
    assert len(texts(session, intent="payment_failed")) == 1


def test_a_stop_is_not_held_up_while_a_webhook_waits_for_stripe(app, session, fake, payer):
    """On SQLite the first write takes the database's write lock: asking Stripe comes first."""
    import threading

    from models import Enrollment, EnrollmentStatus
    from tests.test_admin_pages import payer_texts

    case, card = payer
    paid = charge_now(app, session, case, card)
    gateway = app.extensions["payments"]
    asked, release = threading.Event(), threading.Event()
    real = gateway.retrieve_payment

    def slow(**kwargs):
        asked.set()
        release.wait(20)
        return real(**kwargs)

    gateway.retrieve_payment = slow
    obj = fake.get(paid.processor_payment_id)
    webhook = threading.Thread(target=post_event, args=(app, fake, "payment_intent.succeeded", obj))
    webhook.start()
    try:
        assert asked.wait(10)
        started = time.monotonic()
        assert payer_texts(app, app.test_client(), "STOP").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        release.set()
        webhook.join(30)
    session.expire_all()
    assert session.exec(select(Enrollment)).one().status == EnrollmentStatus.OPTED_OUT


# -- money that moves after PayText gave up on it, and events in any order ---------------------


def case_page(app, session, case) -> str:
    client = app.test_client()
    signed_in(client, session)
    return client.get(f"/admin/cases/{case.id}").text


def test_a_charge_that_lands_after_the_payer_was_told_it_failed_is_kept_and_shown_to_staff(
    app, session, fake, payer, monkeypatch
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    gateway = app.extensions["payments"]
    real_charge, in_flight = gateway.charge, []

    def lost_in_flight(**kwargs):
        in_flight.append(kwargs)  # Stripe has the request but has not answered yet
        raise TransientPaymentError("Read timed out", code=None)

    monkeypatch.setattr(gateway, "charge", lost_in_flight)
    with app.app_context():  # inline: no retry left, as on the last attempt
        assert charge_payment(payment_id=created.id) == "failed"
    assert [t.intent for t in texts(session, payment_id=created.id)] == ["payment_failed"]

    monkeypatch.setattr(gateway, "charge", real_charge)
    # The payer believes it and pays the whole balance; then Stripe finishes the first request.
    again = charge_now(app, session, case, card, 100_000)
    assert reload(session, Case, case.id).balance_cents == 0
    landed = real_charge(**in_flight[0])
    event = post_event(app, fake, "payment_intent.succeeded", fake.get(landed.intent_id))[0]
    post_event(app, fake, "payment_intent.succeeded", fake.get(landed.intent_id))  # redelivered

    assert event.json["outcome"] == "succeeded_after_failure"
    late = payment(session, created.id)
    assert (late.status, late.processor_payment_id) == (PaymentStatus.SUCCEEDED, landed.intent_id)
    assert late.review_reason == "succeeded_after_failure"
    assert payment(session, again.id).review_reason is None
    assert reload(session, Case, case.id).balance_cents == -25_000  # a credit, not clamped
    told = texts(session, payment_id=created.id)
    assert [t.intent for t in told] == ["payment_failed", "late_receipt"]
    assert "did go through after all" in told[1].body and "New balance" not in told[1].body
    page = case_page(app, session, case)
    assert "went through after the payer was told it had failed" in page
    assert "$250.00 in credit" in page


def test_a_payment_stripe_declined_then_approved_on_the_open_page_is_kept_once(app, session, fake):
    case = make_case(session, language="es")
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    failed = fake.fail_authentication(held.processor_payment_id)
    assert post_event(app, fake, "payment_intent.payment_failed", failed)[0].json["outcome"] == (
        "declined"
    )
    assert payment(session, held.id).status == PaymentStatus.FAILED

    approved = fake.complete_authentication(held.processor_payment_id)  # Stripe.js, still open
    for _ in range(2):
        post_event(app, fake, "payment_intent.succeeded", approved)

    late = payment(session, held.id)
    assert (late.status, late.review_reason) == (PaymentStatus.SUCCEEDED, "succeeded_after_failure")
    assert reload(session, Case, case.id).balance_cents == 75_000
    told = texts(session, payment_id=held.id)
    assert [t.intent for t in told] == ["auth_required", "declined", "late_receipt"]
    assert "se hizo de todos modos" in told[2].body  # in the payer's language
    assert "went through after the payer was told it had failed" in case_page(app, session, case)


def refund_pending_then_disputed(app, session, fake, payer):
    """A $250 payment with a $100 refund the bank has not finished when the payer disputes it."""
    case, card = payer
    paid = charge_now(app, session, case, card, 25_000)
    fake.new_refund_status = "pending"
    made = refund_through_paytext(app, session, paid.id, 10_000)
    opened = fake.dispute(paid.processor_charge_id)
    assert opened["amount"] == 15_000  # what the refund has not already taken
    return paid, made, opened


@pytest.mark.parametrize(
    ("refund_ends", "dispute_ends", "balance"),
    [
        ("succeeded", "won", 85_000),
        ("succeeded", "lost", 100_000),
        ("failed", "won", 75_000),
        ("failed", "lost", 90_000),
    ],
)
def test_a_refund_that_settles_while_its_payment_is_disputed_is_recorded_once(
    app, session, fake, payer, refund_ends, dispute_ends, balance
):
    case, _ = payer
    paid, made, opened = refund_pending_then_disputed(app, session, fake, payer)
    for event_type in ("charge.dispute.created", "charge.dispute.funds_withdrawn"):
        post_event(app, fake, event_type, opened)
    assert reload(session, Case, case.id).balance_cents == 75_000 + 15_000

    settled = fake.settle_refund(made.processor_refund_id, refund_ends)
    for event_type in ("refund.updated", "charge.refund.updated", "refund.updated"):
        assert post_event(app, fake, event_type, settled)[0].status_code == 200
    assert reload(session, Refund, made.id).status == refund_ends

    closed = fake.close_dispute(opened["id"], dispute_ends)
    for event_type in ("charge.dispute.closed", "charge.dispute.closed"):
        post_event(app, fake, event_type, closed)
    post_event(app, fake, "charge.refunded", fake.get(paid.processor_charge_id))  # late, again

    refunded = 10_000 if refund_ends == "succeeded" else 0
    assert payment(session, paid.id).refunded_cents == refunded
    assert reload(session, Case, case.id).balance_cents == balance
    assert len(texts(session, intent="refund")) == (1 if refunded else 0)


def test_dispute_events_delivered_before_the_refund_events_still_record_both(
    app, session, fake, payer
):
    case, _ = payer
    paid, made, opened = refund_pending_then_disputed(app, session, fake, payer)
    settled = fake.settle_refund(made.processor_refund_id, "succeeded")
    # Stripe's order: the refund succeeded, then the dispute; delivered the other way round.
    post_event(app, fake, "charge.dispute.funds_withdrawn", opened)
    post_event(app, fake, "refund.updated", settled)
    post_event(app, fake, "charge.dispute.created", opened)

    assert payment(session, paid.id).status == PaymentStatus.DISPUTED
    assert payment(session, paid.id).refunded_cents == 10_000
    assert reload(session, Case, case.id).balance_cents == 75_000 + 15_000 + 10_000

    post_event(app, fake, "charge.dispute.closed", fake.close_dispute(opened["id"], "won"))
    assert reload(session, Case, case.id).balance_cents == 75_000 + 10_000


@pytest.mark.parametrize("order", ["refund_first", "dispute_first"])
def test_a_dispute_of_the_whole_charge_after_a_refund_is_recorded_the_same_in_either_order(
    app, session, fake, payer, order
):
    case, _ = payer
    paid = charge_now(app, session, case, payer[1], 25_000)
    browser(app).v1.refunds.create(
        params={"payment_intent": paid.processor_payment_id, "amount": 10_000}
    )
    # The bank disputes the whole $250 all the same: Stripe takes back all of it.
    opened = fake.dispute(paid.processor_charge_id, amount=25_000)
    refunded = ("charge.refunded", fake.get(paid.processor_charge_id))
    withdrawn = ("charge.dispute.funds_withdrawn", opened)
    for event_type, obj in (
        [refunded, withdrawn]
        if order == "refund_first"
        else [
            withdrawn,
            refunded,
        ]
    ):
        assert post_event(app, fake, event_type, obj)[0].status_code == 200

    disputed = payment(session, paid.id)
    assert (disputed.disputed_cents, disputed.refunded_cents) == (25_000, 10_000)
    assert reload(session, Case, case.id).balance_cents == 75_000 + 10_000 + 25_000
    post_event(app, fake, "charge.dispute.closed", fake.close_dispute(opened["id"], "won"))
    assert reload(session, Case, case.id).balance_cents == 75_000 + 10_000


def test_a_dispute_reported_before_a_late_success_is_recorded_with_it(app, session, fake):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charge_now(app, session, case, card)
    post_event(
        app,
        fake,
        "payment_intent.payment_failed",
        fake.fail_authentication(held.processor_payment_id),
    )
    approved = fake.complete_authentication(held.processor_payment_id)
    opened = fake.dispute(approved["latest_charge"])
    post_event(app, fake, "charge.dispute.created", opened)  # before payment_intent.succeeded
    post_event(app, fake, "payment_intent.succeeded", approved)

    disputed = payment(session, held.id)
    assert (disputed.status, disputed.disputed_cents) == (PaymentStatus.DISPUTED, 25_000)
    assert disputed.review_reason == "succeeded_after_failure"
    assert reload(session, Case, case.id).balance_cents == 100_000


def test_a_dispute_reported_before_the_late_success_of_a_timed_out_charge_is_recorded_with_it(
    app, session, fake, payer, monkeypatch
):
    case, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    gateway = app.extensions["payments"]
    real_charge, in_flight = gateway.charge, []

    def lost_in_flight(**kwargs):
        in_flight.append(kwargs)
        raise TransientPaymentError("Read timed out", code=None)

    monkeypatch.setattr(gateway, "charge", lost_in_flight)
    with app.app_context():  # the last attempt: PayText never learns the intent's id
        assert charge_payment(payment_id=created.id) == "failed"
    monkeypatch.setattr(gateway, "charge", real_charge)
    landed = real_charge(**in_flight[0])
    opened = fake.dispute(landed.charge_id)
    post_event(app, fake, "charge.dispute.created", opened)  # before payment_intent.succeeded
    post_event(app, fake, "payment_intent.succeeded", fake.get(landed.intent_id))

    disputed = payment(session, created.id)
    assert (disputed.status, disputed.disputed_cents) == (PaymentStatus.DISPUTED, 25_000)
    assert disputed.review_reason == "succeeded_after_failure"
    assert reload(session, Case, case.id).balance_cents == 100_000


@pytest.mark.parametrize(
    ("language", "says"), [("en", "New balance: $250.00 in credit."), ("es", "$250.00 a su favor")]
)
def test_a_receipt_that_leaves_a_credit_says_so_instead_of_a_negative_balance(
    app, session, fake, monkeypatch, language, says
):
    case = make_case(session, language=language)
    make_enrollment(session, case)
    card = add_card(app, session, case)
    created = confirmed_payment(app, session, case, card, 25_000)
    gateway = app.extensions["payments"]
    real_charge, in_flight = gateway.charge, []

    def lost_in_flight(**kwargs):
        in_flight.append(kwargs)
        raise TransientPaymentError("Read timed out", code=None)

    monkeypatch.setattr(gateway, "charge", lost_in_flight)
    with app.app_context():
        assert charge_payment(payment_id=created.id) == "failed"
    monkeypatch.setattr(gateway, "charge", real_charge)
    # The payer, told it failed, confirms the whole balance; the first charge lands meanwhile.
    again = confirmed_payment(app, session, case, card, 100_000)
    landed = real_charge(**in_flight[0])
    post_event(app, fake, "payment_intent.succeeded", fake.get(landed.intent_id))
    with app.app_context():
        service.enqueue_charge(payment_id=again.id)

    assert reload(session, Case, case.id).balance_cents == -25_000
    (receipt,) = texts(session, intent="receipt")
    assert says in receipt.body and "-$" not in receipt.body
