"""End to end through the webhook, on the sandbox: PAY -> quote -> YES -> receipt."""

import pytest
from sqlmodel import select

from billing.cards import attach_test_card
from models import Case, ConversationTurn, Payment, PaymentStatus
from tests.factories import make_case, make_enrollment
from tests.sms_helpers import inbound_params, post_signed, replies


def text(client, body, phone="+16175550134"):
    return replies(post_signed(client, "/sms/inbound", inbound_params(body, phone), None))


@pytest.fixture
def payer(app, session):
    case = make_case(
        session, case_number="CS-004821", amount_due_cents=25_000, balance_cents=100_000
    )
    make_enrollment(session, case, "+16175550134")
    with app.app_context():
        attach_test_card(
            session=session,
            gateway=app.extensions["payments"],
            case=case,
            number="4242424242424242",
            exp_month=12,
            exp_year=2030,
        )
        session.commit()
    return case


def test_pay_quotes_yes_charges_once_and_a_receipt_follows(app, client, session, payer):
    (quote,) = text(client, "PAY")
    assert "$250.00" in quote and "4242" in quote
    (processing,) = text(client, "YES")
    assert "being processed" in processing.lower()
    session.expire_all()
    payment = session.exec(select(Payment)).one()
    assert (payment.status, payment.amount_cents) == (PaymentStatus.SUCCEEDED, 25_000)
    assert session.get(Case, payer.id).balance_cents == 75_000
    receipt = app.extensions["sms"].sent[-1]
    assert "$250.00" in receipt.body and payment.confirmation_code in receipt.body
    assert "$750.00" in receipt.body
    logged = session.exec(
        select(ConversationTurn).where(ConversationTurn.payment_id == payment.id)
    ).all()
    assert receipt.body in {turn.body for turn in logged}
    # A second YES has no live quote: nothing more is charged.
    text(client, "YES")
    session.expire_all()
    assert len(session.exec(select(Payment)).all()) == 1
    assert session.get(Case, payer.id).balance_cents == 75_000


def test_pay_an_amount_over_the_balance_is_refused_before_any_charge(client, session, payer):
    (reply,) = text(client, "PAY 2000")
    assert "$1,000.00" in reply
    text(client, "YES")
    assert session.exec(select(Payment)).all() == []


def test_pay_with_no_card_sends_a_secure_link(client, session):
    case = make_case(session)
    make_enrollment(session, case, "+16175550155")
    (reply,) = text(client, "PAY", phone="+16175550155")
    assert "http://paytext.test/pay/card/" in reply


@pytest.fixture
def queued(config):
    """Charges wait in Redis for a worker instead of running inline."""
    config["RQ_ASYNC"] = True


def test_a_second_quick_payment_over_the_balance_is_refused_with_a_reason(
    queued, app, client, session, payer
):
    text(client, "PAY 600")
    text(client, "YES")
    text(client, "PAY 600")
    (reply,) = text(client, "YES")
    assert "being processed" not in reply.lower()
    assert "$" in reply
    assert len(session.exec(select(Payment)).all()) == 1


@pytest.mark.parametrize("balance", [30, 49])
def test_a_balance_below_the_smallest_charge_is_not_offered_and_the_payer_is_told_whom_to_call(
    client, session, payer, balance
):
    payer.balance_cents = balance
    session.add(payer)
    session.commit()
    (reply,) = text(client, "PAY")
    assert "Reply YES" not in reply  # no quote that YES could never charge
    assert f"$0.{balance}" in reply and "$0.50" in reply and "800-555-0134" in reply
    (again,) = text(client, f"PAY 0.{balance}")
    assert again == reply
    text(client, "YES")
    assert session.exec(select(Payment)).all() == []


def test_a_balance_at_the_smallest_charge_can_still_be_paid_off(client, session, payer):
    payer.balance_cents = 50
    session.add(payer)
    session.commit()
    (quote,) = text(client, "PAY")
    assert "$0.50" in quote
    (processing,) = text(client, "YES")
    assert "being processed" in processing.lower()
    session.expire_all()
    assert session.get(Case, payer.id).balance_cents == 0
