"""Billing with the sandbox processor (real Redis, real databases): payments, outcomes, pages."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

import db
from billing import links, service
from billing.jobs import charge_payment, resume_payments
from billing.links import LinkKind
from billing.service import PaymentRefused, RefundRefused
from bot import outbound
from models import (
    CardOnFile,
    Case,
    Conversation,
    ConversationTurn,
    Payment,
    PaymentStatus,
    Refund,
    utcnow,
)
from tests.billing_helpers import (
    AUTHENTICATION,
    DECLINED,
    EXPIRED,
    INSUFFICIENT,
    VISA,
    add_card,
    after_approval_window,
    confirmed_payment,
    csrf_field,
    path_of,
    payment,
    quote_for,
    received,
    reload,
    texts,
)
from tests.factories import make_case, make_enrollment


@pytest.fixture
def payer(app, session):
    """An English-speaking payer owing $1,000.00 with a Visa on file."""
    case = make_case(session)
    enrollment = make_enrollment(session, case)
    card = add_card(app, session, case)
    return case, enrollment, card


def charged(app, session, case, card, amount=25_000):
    """A confirmed payment, charged by the job (inline, as RQ_ASYNC=False runs it)."""
    created = confirmed_payment(app, session, case, card, amount)
    with app.app_context():
        service.enqueue_charge(payment_id=created.id)
    return payment(session, created.id)


# -- payments from quotes ---------------------------------------------------------------------


def test_a_confirmed_quote_creates_one_pending_payment_keyed_by_the_quote(app, session, payer):
    case, _, card = payer
    quote = quote_for(case, card, 25_000, quote_id="q-1")
    with app.app_context():
        created = service.payment_for_quote(session=session, quote=quote, authorized_turn_id=None)
        session.commit()
        again = service.payment_for_quote(session=session, quote=quote, authorized_turn_id=None)
    assert again.id == created.id
    assert created.idempotency_key == "paytext-quote-q-1"
    assert (created.status, created.amount_cents, created.card_id) == ("pending", 25_000, card.id)
    assert len(session.exec(select(Payment)).all()) == 1


def test_racing_yes_replies_for_one_quote_create_one_payment(app, payer):
    case, _, card = payer
    quote = quote_for(case, card, 25_000)
    ids, errors = [], []
    start = threading.Barrier(8)

    def confirm():
        try:
            with app.app_context(), Session(db.engine(app), expire_on_commit=False) as own:
                start.wait()
                created = service.payment_for_quote(
                    session=own, quote=quote, authorized_turn_id=None
                )
                own.commit()
                ids.append(created.id)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=confirm) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(ids)) == 1 and len(ids) == 8


def test_a_quote_over_the_balance_is_refused_before_anything_is_created(app, session):
    case = make_case(session, balance_cents=10_000)
    card = add_card(app, session, case)
    with app.app_context(), pytest.raises(PaymentRefused) as refused:
        service.payment_for_quote(
            session=session, quote=quote_for(case, card, 10_001), authorized_turn_id=None
        )
    assert refused.value.reply.key == "amount_over_balance"
    assert refused.value.reply.params["balance"] == 10_000
    session.rollback()
    assert session.exec(select(Payment)).all() == []


def test_a_second_quote_cannot_pay_balance_a_first_one_already_holds(app, session):
    case = make_case(session, balance_cents=30_000)
    card = add_card(app, session, case)
    confirmed_payment(app, session, case, card, 25_000)
    with app.app_context(), pytest.raises(PaymentRefused) as refused:
        service.payment_for_quote(
            session=session, quote=quote_for(case, card, 25_000), authorized_turn_id=None
        )
    # The $250.00 held is named: "$50.00 of your $300.00 balance is left to pay".
    assert refused.value.reason == "amount_over_available"
    params = refused.value.reply.params
    assert (params["amount"], params["balance"], params["available"]) == (25_000, 30_000, 5_000)


@pytest.fixture
def low_caps(config):
    config.update(MAX_PAYMENT="300.00", MONTHLY_PAYMENT_CAP="500.00")


def test_a_quote_over_the_per_payment_cap_is_refused(low_caps, app, session, payer):
    case, _, card = payer
    with app.app_context(), pytest.raises(PaymentRefused) as refused:
        service.payment_for_quote(
            session=session, quote=quote_for(case, card, 30_001), authorized_turn_id=None
        )
    assert (refused.value.reply.key, refused.value.reply.params["cap"]) == (
        "amount_over_cap",
        30_000,
    )


def test_a_quote_over_what_is_left_of_the_monthly_cap_is_refused(low_caps, app, session, payer):
    case, _, card = payer
    charged(app, session, case, card, 30_000)
    with app.app_context(), pytest.raises(PaymentRefused) as refused:
        service.payment_for_quote(
            session=session, quote=quote_for(case, card, 25_000), authorized_turn_id=None
        )
    assert refused.value.reply.key == "amount_over_monthly"
    assert refused.value.reply.params["remaining"] == 20_000


def test_a_quote_on_a_case_without_a_card_is_answered_with_a_card_link(app, session):
    case = make_case(session)
    fake_card = CardOnFile(
        case_id=case.id,
        processor="sandbox",
        customer_id="cus_x",
        payment_method_id="pm_x",
        brand="visa",
        last4="4242",
        exp_month=1,
        exp_year=2040,
    )
    with app.app_context(), pytest.raises(PaymentRefused) as refused:
        service.payment_for_quote(
            session=session, quote=quote_for(case, fake_card, 5_000), authorized_turn_id=None
        )
    assert refused.value.reply.key == "card_link"
    assert refused.value.reply.params["url"].startswith("http://paytext.test/pay/card/")


def test_month_paid_counts_this_months_payments_net_of_refunds(app, session, payer):
    case, _, card = payer
    first = charged(app, session, case, card, 20_000)
    confirmed_payment(app, session, case, card, 5_000)  # confirmed, not yet charged: counts
    last_month = Payment(
        case_id=case.id,
        amount_cents=70_000,
        status=PaymentStatus.SUCCEEDED,
        idempotency_key="old",
        created_at=utcnow() - timedelta(days=40),
    )
    session.add(last_month)
    session.commit()
    with app.app_context():
        service.refund_payment(
            session=session, payment_id=first.id, amount_cents=2_500, admin_user_id=None
        )
        assert service.month_paid_cents(session=session, case_id=case.id, now=utcnow()) == 22_500


def test_a_case_whose_stored_zone_is_no_zone_counts_its_month_in_the_agencys(app, session, payer):
    """Its page already falls back to the agency's zone; a YES to a quote raised instead."""
    case, _, card = payer
    case.timezone = "America"  # a folder of zone files, stored before imports checked zones
    session.add(case)
    session.commit()
    charged(app, session, case, card, 20_000)
    with app.app_context():
        assert service.month_paid_cents(session=session, case_id=case.id, now=utcnow()) == 20_000
        created = service.payment_for_quote(
            session=session, quote=quote_for(case, card, 5_000), authorized_turn_id=None
        )
    assert created.amount_cents == 5_000


# -- charge outcomes --------------------------------------------------------------------------


def test_a_successful_charge_sends_one_receipt_and_lowers_the_balance_once(app, session, payer):
    case, enrollment, card = payer
    paid = charged(app, session, case, card, 25_000)

    assert paid.status == PaymentStatus.SUCCEEDED
    assert paid.balance_applied and paid.processor_payment_id.startswith("pi_")
    assert reload(session, Case, case.id).balance_cents == 75_000
    [receipt] = texts(session, intent="receipt")
    assert receipt.payment_id == paid.id and receipt.phone == enrollment.phone
    body = receipt.body
    assert "$250.00" in body and "card ending 4242" in body
    assert f"Confirmation {paid.confirmation_code}" in body
    assert "New balance: $750.00" in body and "up to 2 business days" in body
    assert utcnow().astimezone(ZoneInfo(case.timezone)).strftime("%b %-d") in body


def test_running_the_charge_job_again_charges_and_texts_nothing_more(app, session, payer):
    case, _, card = payer
    paid = charged(app, session, case, card, 25_000)
    with app.app_context():
        assert charge_payment(paid.id) == "nothing to do"
        service.enqueue_charge(payment_id=paid.id)  # queued once: refused as a duplicate
        result = app.extensions["payments"].retrieve_payment(intent_id=paid.processor_payment_id)
        assert (
            service.apply_charge_result(session=session, payment_id=paid.id, result=result)
            == "unchanged"
        )
        session.commit()
    assert len(texts(session, intent="receipt")) == 1
    assert reload(session, Case, case.id).balance_cents == 75_000


class Killed(BaseException):
    """What a worker killed mid-job (SIGKILL, a lost database connection) leaves behind."""


def receipts_sent(app) -> list[str]:
    return [m.body for m in app.extensions["sms"].sent if "Payment received" in m.body]


def test_a_job_killed_before_its_commit_texts_the_receipt_once_when_run_again(
    app, session, payer, monkeypatch
):
    case, _, card = payer
    created = confirmed_payment(app, session, case, card, 25_000)
    real_apply = service.apply_charge_result

    def apply_then_die(**kwargs):
        monkeypatch.setattr(service, "apply_charge_result", real_apply)
        real_apply(**kwargs)
        raise Killed("after recording the outcome, before the commit")

    monkeypatch.setattr(service, "apply_charge_result", apply_then_die)
    with app.app_context():
        with pytest.raises(Killed):
            charge_payment(created.id)
        assert receipts_sent(app) == []
        assert payment(session, created.id).status == PaymentStatus.PROCESSING
        assert charge_payment(created.id) == "succeeded"  # what resume_payments leads to

    [sent] = receipts_sent(app)
    [turn] = texts(session, intent="receipt")
    assert (turn.body, turn.delivery_status) == (sent, "sent")
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_a_text_goes_only_once_the_transaction_recording_it_commits(app, session, payer):
    case, enrollment, _ = payer
    sms = app.extensions["sms"]
    before = len(sms.sent)
    with app.app_context():
        outbound.queue_text(
            session=session, phone=enrollment.phone, body="rolled back", case_id=case.id
        )
        assert len(sms.sent) == before
        session.rollback()
        outbound.queue_text(
            session=session, phone=enrollment.phone, body="committed", case_id=case.id
        )
        session.commit()

    assert [m.body for m in list(sms.sent)[before:]] == ["committed"]
    assert [(t.body, t.delivery_status) for t in texts(session)][-1] == ("committed", "sent")


def age_texts(session, minutes: int) -> None:
    """Make every text look recorded (and claimed) `minutes` ago."""
    table = ConversationTurn.__table__
    earlier = utcnow() - timedelta(minutes=minutes)
    session.execute(sa.update(table).values(created_at=earlier, updated_at=earlier))
    session.commit()


def test_a_receipt_left_unsent_by_a_crash_after_the_commit_goes_with_the_next_sweep(
    app, session, payer, monkeypatch
):
    case, _, card = payer
    with monkeypatch.context() as crashed:
        crashed.setattr(outbound, "send_queued", lambda turn_ids: 0)  # died right after commit
        paid = charged(app, session, case, card, 25_000)
    assert paid.status == PaymentStatus.SUCCEEDED
    [turn] = texts(session, intent="receipt")
    assert turn.delivery_status == outbound.TO_SEND and receipts_sent(app) == []

    with app.app_context():
        resume_payments()  # too soon: its own process may still be sending it
    assert receipts_sent(app) == []
    age_texts(session, minutes=3)
    with app.app_context():
        resume_payments()
        resume_payments()

    [sent] = receipts_sent(app)
    [turn] = texts(session, intent="receipt")
    assert (turn.body, turn.delivery_status) == (sent, "sent")


def test_a_receipt_whose_send_was_cut_short_is_not_sent_again(app, session, payer, monkeypatch):
    case, _, card = payer
    sms = app.extensions["sms"]

    def cut_short(**kwargs):
        raise ConnectionError("connection to the gateway lost mid-request")

    with monkeypatch.context() as crashed:
        crashed.setattr(sms, "send", cut_short)
        assert charged(app, session, case, card, 25_000).status == PaymentStatus.SUCCEEDED
    [turn] = texts(session, intent="receipt")
    assert turn.delivery_status == outbound.CLAIMED

    age_texts(session, minutes=3)
    with app.app_context():
        resume_payments()

    assert receipts_sent(app) == []
    [turn] = texts(session, intent="receipt")
    assert turn.delivery_status == outbound.UNKNOWN
    assert reload(session, Case, case.id).balance_cents == 75_000


def test_the_receipt_is_in_the_language_the_payer_chose(app, session, payer):
    case, enrollment, card = payer
    session.add(Conversation(phone=enrollment.phone, state={"case_id": case.id}, language="es"))
    session.commit()
    charged(app, session, case, card, 25_000)
    [receipt] = texts(session, intent="receipt")
    assert "Recibimos su pago de $250.00" in receipt.body
    assert "Nuevo saldo: $750.00" in receipt.body


def test_the_receipt_date_is_the_payer_local_date_when_the_case_names_no_zone(
    app, session, monkeypatch
):
    # 05:00 UTC on Oct 1 is still Sep 30 in Los Angeles, where the number (213) is.
    case = make_case(session, timezone=None)
    make_enrollment(session, case, "+12135550134")
    card = add_card(app, session, case)
    monkeypatch.setattr(service, "utcnow", lambda: datetime(2025, 10, 1, 5, 0, tzinfo=UTC))
    charged(app, session, case, card, 25_000)
    [receipt] = texts(session, intent="receipt")
    assert "$250.00 on Sep 30," in receipt.body


@pytest.mark.parametrize(
    ("number", "code", "reason"),
    [
        (DECLINED, "generic_decline", "Your bank did not approve it."),
        (INSUFFICIENT, "insufficient_funds", "The card doesn't have enough funds."),
        (EXPIRED, "expired_card", "The card has expired."),
    ],
)
def test_a_declined_card_gets_a_plain_reason_and_a_link_to_update_it(
    app, session, number, code, reason
):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, number)
    failed = charged(app, session, case, card)

    assert (failed.status, failed.failure_code) == (PaymentStatus.FAILED, code)
    assert reload(session, Case, case.id).balance_cents == 100_000
    [declined] = texts(session, intent="declined")
    assert reason in declined.body and "Nothing was charged" in declined.body
    url = received(app, declined).rsplit(" ", 1)[1]
    page = app.test_client().get(path_of(url))
    assert page.status_code == 200 and "Add a card" in page.text


def test_a_card_needing_authentication_gets_a_link_and_approving_sends_the_receipt(app, session):
    case = make_case(session)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charged(app, session, case, card)
    assert held.status == PaymentStatus.REQUIRES_ACTION
    [asked] = texts(session, intent="auth_required")
    assert "approve the payment of $250.00" in asked.body
    assert texts(session, intent="receipt") == []

    client = app.test_client()
    path = path_of(received(app, asked).split("finish: ", 1)[1].split(" ", 1)[0])
    page = client.get(path)
    assert page.status_code == 200 and "Approve payment" in page.text
    done = client.post(path, data=csrf_field(page.text))

    assert done.status_code == 200 and "went through" in done.text
    assert payment(session, held.id).status == PaymentStatus.SUCCEEDED
    assert reload(session, Case, case.id).balance_cents == 75_000
    assert len(texts(session, intent="receipt")) == 1
    again = client.post(path, data=csrf_field(page.text))
    assert "went through" in again.text
    assert len(texts(session, intent="receipt")) == 1


@pytest.mark.parametrize(
    ("language", "words"),
    [("en", "approve your payment of $250.00 has run out"), ("es", "vencido")],
)
def test_a_payment_still_waiting_for_approval_when_the_link_expires_is_canceled(
    app, session, monkeypatch, language, words
):
    case = make_case(session, language=language)
    make_enrollment(session, case)
    card = add_card(app, session, case, AUTHENTICATION)
    held = charged(app, session, case, card)
    [asked] = texts(session, intent="auth_required")
    with app.app_context():
        resume_payments()  # the payer still has time
        assert payment(session, held.id).status == PaymentStatus.REQUIRES_ACTION
        with pytest.raises(PaymentRefused):  # it holds $250.00 of the $1,000.00 owed
            service.payment_for_quote(
                session=session, quote=quote_for(case, card, 100_000), authorized_turn_id=None
            )
        session.rollback()

    after_approval_window(monkeypatch)
    with app.app_context():
        resume_payments()
        resume_payments()

    expired = payment(session, held.id)
    assert (expired.status, expired.failure_code) == (PaymentStatus.CANCELED, "approval_expired")
    gateway = app.extensions["payments"]
    assert gateway.retrieve_payment(intent_id=held.processor_payment_id).status == "canceled"
    [told] = texts(session, intent="approval_expired")
    assert words in told.body and texts(session, intent="payment_failed") == []
    assert reload(session, Case, case.id).balance_cents == 100_000
    link = app.test_client().get(path_of(re.search(r"http\S+", received(app, asked)).group()))
    assert link.status_code == 410
    with app.app_context():
        service.payment_for_quote(
            session=session, quote=quote_for(case, card, 100_000), authorized_turn_id=None
        )
    session.rollback()


def test_an_approval_link_for_someone_elses_payment_cannot_be_made_up(app, session):
    response = app.test_client().get("/pay/auth/" + "A" * 35)
    assert response.status_code == 404
    assert "not valid" in response.text


def test_no_text_goes_to_a_number_that_opted_out_but_the_payment_is_recorded(app, session):
    case = make_case(session)
    make_enrollment(session, case, status="opted_out")
    make_enrollment(session, case, phone="+16175550199", status="opted_out")
    card = add_card(app, session, case)
    paid = charged(app, session, case, card)
    assert paid.status == PaymentStatus.SUCCEEDED
    assert texts(session) == []


# -- the card page ----------------------------------------------------------------------------


def open_card_page(app, case):
    with app.app_context():
        url = links.card_link_url(case_id=case.id)
    client = app.test_client()
    return client, path_of(url), client.get(path_of(url))


def card_form(page, number=VISA, **fields):
    return {
        **csrf_field(page.text),
        "number": number,
        "exp_month": "12",
        "exp_year": "34",
        "cvc": "123",
        **fields,
    }


def test_the_card_page_saves_a_test_card_and_texts_the_payer(app, session):
    case = make_case(session)
    make_enrollment(session, case)
    client, path, page = open_card_page(app, case)
    assert page.status_code == 200 and "ending 1" in page.text.replace(case.case_number[-4:], "1")

    saved = client.post(path, data=card_form(page, "4242 4242 4242 4242"))

    assert saved.status_code == 200 and "Visa card ending 4242 is saved" in saved.text
    card = session.exec(select(CardOnFile)).one()
    assert (card.brand, card.last4, card.exp_month, card.exp_year) == ("visa", "4242", 12, 2034)
    assert card.payment_method_id.startswith("pm_") and card.active
    [text] = texts(session, intent="card_saved")
    assert "card ending 4242 is saved" in text.body


def test_a_card_link_works_only_once(app, session):
    case = make_case(session)
    client, path, page = open_card_page(app, case)
    client.post(path, data=card_form(page))
    again = client.post(path, data=card_form(page, "5555555555554444"))
    assert again.status_code == 410 and "expired or was already used" in again.text
    assert client.get(path).status_code == 410
    assert [c.last4 for c in session.exec(select(CardOnFile)).all()] == ["4242"]


def test_an_expired_card_link_is_refused(app, session):
    case = make_case(session)
    with app.app_context():
        token = links.make_token(
            secret=app.config["SECRET_KEY"],
            kind=LinkKind.CARD,
            subject_id=case.id,
            expires_at=utcnow() - timedelta(seconds=1),
        )
    response = app.test_client().get(f"/pay/card/{token}")
    assert response.status_code == 410 and "expired" in response.text


@pytest.mark.parametrize("kind", [LinkKind.CARD, LinkKind.AUTH])
def test_an_expired_link_is_explained_in_the_payer_language(app, session, kind):
    case = make_case(session, language="es")
    subject_id = case.id
    if kind is LinkKind.AUTH:
        card = add_card(app, session, case)
        subject_id = confirmed_payment(app, session, case, card, 25_000).id
    with app.app_context():
        token = links.make_token(
            secret=app.config["SECRET_KEY"],
            kind=kind,
            subject_id=subject_id,
            expires_at=utcnow() - timedelta(seconds=1),
        )
    response = app.test_client().get(f"/pay/{kind}/{token}")
    assert response.status_code == 410
    assert 'lang="es"' in response.text and "Este enlace venció" in response.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"number": "4242 4242 4242 4241"}, "That card number is not valid"),
        ({"number": "4111111111111111"}, "only the test card numbers below work"),
        ({"exp_month": "13"}, "expiration month is not valid"),
        ({"exp_month": "ab"}, "expiration month is not valid"),
        ({"exp_year": "19"}, "expiration date is not valid or has passed"),
        ({"cvc": "12"}, "security code is not valid"),
    ],
)
def test_a_mistyped_card_gets_a_clear_message_and_the_link_still_works(
    app, session, fields, message
):
    case = make_case(session)
    client, path, page = open_card_page(app, case)
    refused = client.post(path, data=card_form(page, **fields))
    assert refused.status_code == 400 and message in refused.text
    assert "4242424242424242" not in refused.text.replace(" ", "").split("<ul>")[0]
    assert session.exec(select(CardOnFile)).all() == []
    saved = client.post(path, data=card_form(page))
    assert saved.status_code == 200


def test_a_new_card_replaces_the_old_one(app, session, payer):
    case, _, _ = payer
    client, path, page = open_card_page(app, case)
    assert "replaces your Visa card ending 4242" in page.text
    client.post(path, data=card_form(page, "5555555555554444"))
    session.expire_all()
    cards = session.exec(select(CardOnFile).order_by(CardOnFile.id)).all()
    assert [(c.last4, c.active) for c in cards] == [("4242", False), ("4444", True)]


def test_the_card_page_speaks_the_case_language_and_can_switch(app, session):
    case = make_case(session, language="es")
    client, path, page = open_card_page(app, case)
    assert 'lang="es"' in page.text and "Agregar una tarjeta" in page.text
    english = client.get(path + "?lang=en")
    assert "Add a card" in english.text


@pytest.mark.parametrize("kind", [LinkKind.CARD, LinkKind.AUTH])
def test_a_form_sent_without_its_csrf_token_gets_a_payer_page_in_the_payer_language(
    app, session, kind
):
    case = make_case(session, language="es")
    with app.app_context():
        if kind is LinkKind.AUTH:
            card = add_card(app, session, case)
            url = links.auth_link_url(
                payment_id=confirmed_payment(app, session, case, card, 500).id
            )
        else:
            url = links.card_link_url(case_id=case.id)
    # The page was opened in a browser that did not keep its cookie, or left open too long.
    typed = {"number": "5555555555554444", "exp_month": "12", "exp_year": "34", "cvc": "123"}
    refused = app.test_client().post(path_of(url), data=typed)
    assert refused.status_code == 400
    assert 'lang="es"' in refused.text and "no se guardó ni se cobró nada" in refused.text
    assert "CSRF" not in refused.text
    assert session.exec(select(CardOnFile).where(CardOnFile.last4 == "4444")).all() == []


def test_the_card_and_approval_pages_speak_the_language_the_payer_chose_by_text(app, session):
    case = make_case(session, language="en")
    enrollment = make_enrollment(session, case)
    session.add(Conversation(phone=enrollment.phone, state={"case_id": case.id}, language="es"))
    session.commit()
    _, _, page = open_card_page(app, case)
    assert 'lang="es"' in page.text and "Agregar una tarjeta" in page.text

    card = add_card(app, session, case, AUTHENTICATION)
    charged(app, session, case, card)
    [asked] = texts(session, intent="auth_required")
    approval = app.test_client().get(
        path_of(received(app, asked).split("terminar: ", 1)[1].split(" ")[0])
    )
    assert 'lang="es"' in approval.text and "Apruebe su pago" in approval.text


def test_payer_pages_are_not_cached_framed_or_open_to_other_scripts(app, session):
    case = make_case(session)
    _, _, page = open_card_page(app, case)
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "<link" not in page.text and "<script" not in page.text


# -- refunds ----------------------------------------------------------------------------------


def refund(app, session, payment_id, amount=None, **kwargs):
    with app.app_context():
        return service.refund_payment(
            session=session,
            payment_id=payment_id,
            amount_cents=amount,
            admin_user_id=None,
            **kwargs,
        )


def test_a_full_refund_puts_the_balance_back_once_and_texts_the_payer(app, session, payer):
    case, _, card = payer
    paid = charged(app, session, case, card, 25_000)
    made = refund(app, session, paid.id)
    assert (made.status, made.amount_cents, made.balance_applied) == ("succeeded", 25_000, True)
    assert made.processor_refund_id.startswith("re_")
    assert reload(session, Case, case.id).balance_cents == 100_000
    assert payment(session, paid.id).refunded_cents == 25_000
    [text] = texts(session, intent="refund")
    assert "refunded $250.00 to your card ending 4242. New balance: $1,000.00" in text.body


def test_a_partial_refund_then_the_rest(app, session, payer):
    case, _, card = payer
    paid = charged(app, session, case, card, 25_000)
    refund(app, session, paid.id, 10_000)
    rest = refund(app, session, paid.id)
    assert rest.amount_cents == 15_000
    assert reload(session, Case, case.id).balance_cents == 100_000
    assert len(texts(session, intent="refund")) == 2


def test_a_refund_cannot_take_back_more_than_is_left(app, session, payer):
    case, _, card = payer
    paid = charged(app, session, case, card, 25_000)
    refund(app, session, paid.id, 20_000)
    with pytest.raises(RefundRefused, match=r"Only \$50.00"):
        refund(app, session, paid.id, 5_001)
    with pytest.raises(RefundRefused, match="more than"):
        refund(app, session, paid.id, 0)
    refund(app, session, paid.id, 5_000)
    with pytest.raises(RefundRefused, match="already fully refunded"):
        refund(app, session, paid.id)
    assert reload(session, Case, case.id).balance_cents == 100_000


def test_asking_twice_with_the_same_key_refunds_once(app, session, payer):
    case, _, card = payer
    paid = charged(app, session, case, card, 25_000)
    key = str(uuid.uuid4())
    first = refund(app, session, paid.id, 10_000, idempotency_key=key)
    second = refund(app, session, paid.id, 10_000, idempotency_key=key)
    assert first.id == second.id
    assert len(session.exec(select(Refund)).all()) == 1
    assert reload(session, Case, case.id).balance_cents == 85_000
    assert len(texts(session, intent="refund")) == 1


def test_a_payment_that_did_not_go_through_cannot_be_refunded(app, session):
    case = make_case(session)
    card = add_card(app, session, case, DECLINED)
    failed = charged(app, session, case, card)
    with pytest.raises(RefundRefused, match="went through"):
        refund(app, session, failed.id)


# -- the attach-test command ------------------------------------------------------------------


def test_attach_test_saves_a_test_card_on_a_case(app, runner, session):
    case = make_case(session)
    result = runner.invoke(
        args=["cards", "attach-test", case.case_number, "--number", "5555555555554444"]
    )
    assert result.exit_code == 0, result.output
    assert f"Saved mastercard ending 4444 (exp 12/{utcnow().year + 3})" in result.output
    card = session.exec(select(CardOnFile)).one()
    assert (card.case_id, card.last4, card.processor) == (case.id, "4444", "sandbox")


def test_attach_test_refuses_a_number_that_is_not_a_test_card(app, runner, session):
    case = make_case(session)
    result = runner.invoke(
        args=["cards", "attach-test", case.case_number, "--number", "4111111111111111"]
    )
    assert result.exit_code != 0 and "Only Stripe test card numbers" in result.output
    assert "4111111111111111" not in result.output
    assert session.exec(select(CardOnFile)).all() == []


def test_attach_test_refuses_an_unknown_case(app, runner):
    result = runner.invoke(args=["cards", "attach-test", "NOPE-1", "--number", VISA])
    assert result.exit_code != 0 and "No case 'NOPE-1'" in result.output


def test_attach_test_refuses_to_run_against_stripe(config, database_url):
    from app import create_app

    config.update(STRIPE_SECRET_KEY="sk_test_x", STRIPE_WEBHOOK_SECRET="whsec_x")
    result = (
        create_app(config)
        .test_cli_runner()
        .invoke(args=["cards", "attach-test", "CS-1", "--number", VISA])
    )
    assert result.exit_code != 0 and "only with the sandbox" in result.output
